/**
 * Rung 4: a full RCAR handshake (`/auth` → evidence → `/attest`) yields an attestation token. The doctor runs its
 * own handshake with G's client (`attest`) rather than the decoder's key source: the token cache is neither read
 * nor written, so a healthy cache keeps serving the next image pull and the check always exercises attestation.
 * Only the token's times are shown; the token itself is a bearer credential and is never printed.
 */
import type { Attester } from '../../attest/attester.js';
import type { Config } from '../../config/types.js';
import { attest } from '../../kbs/client.js';
import type { Attestation } from '../../kbs/client.js';
import { createDeadline } from '../../kbs/deadline.js';
import { KbsError } from '../../kbs/errors.js';
import type { KbsHttp } from '../../kbs/http.js';
import type { ProtocolVersion } from '../../kbs/protocol.js';
import { localExpiry, readTokenTimes } from '../../kbs/token-claims.js';
import { describeError } from '../../util/errors.js';
import { fail, pass } from './rung.js';
import type { RungResult } from './rung.js';

export interface AttestationOutcome {
  result: RungResult;
  attestation?: Attestation;
}

/** A guest clock this far from the KBS's is worth saying: TLS validity and token expiry depend on it. */
const CLOCK_SKEW_NOTE_S = 120;

export async function checkAttestation(
  config: Config,
  http: KbsHttp,
  attester: Attester,
  dialect: ProtocolVersion | undefined,
): Promise<AttestationOutcome> {
  let attestation: Attestation;
  try {
    attestation = await attest({
      http,
      attester,
      keyAlgorithm: config.kbs.teeKeyAlgorithm,
      protocol: config.kbs.protocol,
      dialectHint: dialect,
      deadline: createDeadline(config.kbs.totalTimeoutMs, http.baseUrl),
    });
  } catch (err) {
    return { result: fail('attestation', describeError(err), attestFix(err, attester)) };
  }
  let times;
  try {
    times = readTokenTimes(attestation.token);
  } catch (err) {
    return { result: fail('attestation', describeError(err), 'the KBS issued a token without a JSON payload: check the KBS attestation-service configuration') };
  }
  return { result: pass('attestation', describeToken(config, attester, attestation, times)), attestation };
}

function describeToken(config: Config, attester: Attester, a: Attestation, times: { exp: number | undefined; iat: number | undefined }): string {
  const parts = [`token issued for tee ${attester.tee} (protocol ${a.dialect}, TEE key ${config.kbs.teeKeyAlgorithm})`];
  const expiresAtMs = localExpiry(times, a.receivedAtMs);
  if (times.exp === undefined || expiresAtMs === undefined) {
    parts.push('no exp claim: the token cannot be cached, every layer will attest');
  } else {
    const minutes = Math.floor((expiresAtMs - Date.now()) / 60_000);
    parts.push(`expires ${new Date(times.exp * 1000).toISOString()} (in ${minutes} min)`);
    const lifetimeS = times.iat !== undefined ? times.exp - times.iat : Math.round((expiresAtMs - a.receivedAtMs) / 1000);
    if (lifetimeS <= config.cache.refreshMarginSeconds) {
      parts.push(`its ${lifetimeS} s lifetime is within cache.refresh_margin_seconds (${config.cache.refreshMarginSeconds}): it will never be reused`);
    }
  }
  if (times.iat !== undefined) {
    const skewS = Math.round(times.iat - a.receivedAtMs / 1000);
    if (Math.abs(skewS) >= CLOCK_SKEW_NOTE_S) {
      parts.push(`the KBS clock is ${Math.abs(skewS)} s ${skewS > 0 ? 'ahead of' : 'behind'} this VM's`);
    }
  }
  return parts.join('; ');
}

function attestFix(err: unknown, attester: Attester): string {
  if (!(err instanceof KbsError)) return 'check the TEE rung and the KBS log';
  switch (err.code) {
    case 'KBS_ATTESTATION_FAILED':
      return `the KBS's attestation service rejected the ${attester.tee} evidence: check its attestation policy and reference values; the reason is only in the KBS log`;
    case 'KBS_VERSION_MISMATCH':
      return 'set kbs.protocol = "auto"';
    case 'KBS_MALFORMED':
      return 'kbs.url must point at a trustee KBS (the answer is not RCAR)';
    case 'KBS_TIMEOUT':
    case 'KBS_ABORTED':
      return 'the KBS or its attestation service is too slow: check its load and raise kbs.total_timeout_ms if needed';
    default:
      return 'read the KBS log for this attestation';
  }
}
