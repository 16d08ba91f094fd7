/**
 * Turns KBS answers and transport failures into one-line messages an operator can act on. trustee answers almost
 * everything with 401 (policy denial, missing resource, bad token, failed attestation), so the `type` of its
 * ErrorInformation, the endpoint and what we sent decide the message. Server-provided text is shortened and
 * flattened; nothing secret (token, keys, cookie) is ever put into a message.
 */
import type { KbsErrorCode } from '../util/error-codes.js';
import { DecoderError, oneLine } from '../util/errors.js';
import { isSupportedProtocol } from './protocol.js';
import type { ErrorInformation } from './protocol.js';

export type { KbsErrorCode } from '../util/error-codes.js';

export class KbsError extends DecoderError {
  declare readonly code: KbsErrorCode;
  readonly status: number | undefined;
  /** For KBS_VERSION_MISMATCH: the version the KBS wants (`=0.4.0` → `0.4.0`). */
  readonly expectedVersion: string | undefined;
  constructor(code: KbsErrorCode, message: string, opts?: { status?: number; expectedVersion?: string; cause?: unknown }) {
    super(message, opts?.cause === undefined ? { code } : { cause: opts.cause, code });
    this.status = opts?.status;
    this.expectedVersion = opts?.expectedVersion;
  }
}

export type KbsEndpoint = 'auth' | 'attest' | 'resource';

export interface ResponseContext {
  endpoint: KbsEndpoint;
  kbsUrl: string;
  /** Protocol version we sent (auth). */
  version?: string;
  tee?: string;
  /** The kid being fetched (resource). */
  kid?: string;
}

const MISMATCH_RE = /Protocol Version Mismatch: expect =?\s*([0-9]+\.[0-9]+\.[0-9]+) while the request is (\S+)/;

/** Parses trustee's `KBS Client Protocol Version Mismatch: expect =0.4.0 while the request is 0.2.0`. */
export function parseVersionMismatch(detail: string): { expected: string; sent: string } | undefined {
  const m = MISMATCH_RE.exec(detail);
  return m ? { expected: m[1]!, sent: m[2]! } : undefined;
}

export function errorFromResponse(status: number, info: ErrorInformation | undefined, bodyText: string, ctx: ResponseContext): KbsError {
  const why = info ? `${status} ${info.kind}: ${shorten(info.detail)}` : `HTTP ${status}${bodyText ? `: ${shorten(bodyText)}` : ''}`;
  const at = `KBS ${ctx.kbsUrl}`;

  if (ctx.endpoint === 'auth') {
    const mismatch = info ? parseVersionMismatch(info.detail) : undefined;
    if (mismatch) {
      const hint = isSupportedProtocol(mismatch.expected)
        ? `set kbs.protocol = "auto" or "${mismatch.expected}"`
        : 'coco-decoder speaks 0.4.0 (trustee ≥ v0.14) and 0.2.0 (trustee v0.12–v0.13): upgrade the KBS';
      return new KbsError('KBS_VERSION_MISMATCH',
        `KBS protocol version mismatch: ${at} expects ${mismatch.expected}, coco-decoder sent ${mismatch.sent}; ${hint}`,
        { status, expectedVersion: mismatch.expected },
      );
    }
    if (status === 401 && info && /deserialize Request/i.test(info.detail) && ctx.tee?.startsWith('az-')) {
      return new KbsError('KBS_HTTP_STATUS',
        `${at} does not know TEE "${ctx.tee}" (${why}); trustee ≤ v0.15 spells it "${ctx.tee.replaceAll('-', '')}" — upgrade the KBS`,
        { status },
      );
    }
    if (status === 404) {
      return new KbsError('KBS_HTTP_STATUS', `${at} has no /kbs/v0/auth endpoint (${why}); check that kbs.url points at a trustee KBS`, { status });
    }
    return new KbsError('KBS_HTTP_STATUS', `${at} refused the attestation request for TEE "${ctx.tee ?? '?'}" (${why})`, { status });
  }

  if (ctx.endpoint === 'attest') {
    if (status === 401) {
      return new KbsError('KBS_ATTESTATION_FAILED',
        `attestation failed: ${at} rejected the ${ctx.tee ?? ''} evidence (${why}); trustee gives the reason only in its ` +
          `own log — check its attestation policy and reference values for this TEE`,
        { status },
      );
    }
    return new KbsError('KBS_HTTP_STATUS', `attestation failed: ${at} answered /kbs/v0/attest with ${why}`, { status });
  }

  const kid = ctx.kid ?? 'the resource';
  if (status === 401 && info) {
    switch (info.kind) {
      case 'PolicyDeny':
      case 'PolicyReject':
        return new KbsError('KBS_POLICY_DENIED',
          `access to ${kid} denied by the resource policy of ${at} (${why}); allow this resource for this TEE in the KBS resource policy`,
          { status },
        );
      case 'PluginInternalError':
        return new KbsError('KBS_RESOURCE_MISSING',
          `${at} could not provide ${kid} (${why}): trustee reports a resource that does not exist as this 401 ` +
            `(trustee#1419) — check that the key was registered at this KBS under exactly this path`,
          { status },
        );
      case 'TokenVerifierError':
      case 'TokenNotFound':
      case 'ExpiredCookie':
      case 'InvalidCookie':
      case 'MissingCookie':
      case 'UnAuthenticatedCookie':
      case 'TokenParseFailed':
        return new KbsError('KBS_TOKEN_REJECTED', `${at} did not accept the attestation token for ${kid} (${why})`, { status });
      case 'JweError':
      case 'JWEFailed':
        return new KbsError('KBS_TOKEN_REJECTED', `${at} could not encrypt ${kid} to the TEE key bound in the token (${why})`, { status });
    }
  }
  if (status === 401) return new KbsError('KBS_UNAUTHORIZED', `${at} refused ${kid} (${why})`, { status });
  if (status === 404) {
    return new KbsError('KBS_RESOURCE_MISSING', `${kid} does not exist at ${at} (${why})`, { status });
  }
  return new KbsError('KBS_HTTP_STATUS', `${at} answered the request for ${kid} with ${why}`, { status });
}

const TLS_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_REVOKED',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
  'CERT_CHAIN_TOO_LONG',
  'INVALID_CA',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'HOSTNAME_MISMATCH',
]);

/** The error codes along an error's `cause` chain (transport errors may wrap socket errors). */
export function errorCodes(err: unknown): string[] {
  const codes: string[] = [];
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    // Our own errors' codes are classifications, not transport codes.
    const code = e instanceof DecoderError ? undefined : (e as NodeJS.ErrnoException).code;
    if (typeof code === 'string') codes.push(code);
  }
  return codes;
}

export function isTlsFailure(err: unknown): boolean {
  return errorCodes(err).some((c) => TLS_CODES.has(c) || c.startsWith('ERR_SSL_') || c === 'EPROTO');
}

export interface TransportContext {
  kbsUrl: string;
  what: string;
  certPath: string | undefined;
  attempts: number;
}

export function tlsError(err: unknown, ctx: TransportContext): KbsError {
  const codes = errorCodes(err);
  const code = codes.find((c) => TLS_CODES.has(c) || c.startsWith('ERR_SSL_')) ?? codes[0] ?? 'TLS error';
  const detail = err instanceof Error ? shorten(err.message) : String(err);
  const hint =
    code === 'ERR_TLS_CERT_ALTNAME_INVALID' || code === 'HOSTNAME_MISMATCH'
      ? 'the host name in kbs.url must match the KBS certificate'
      : code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID'
        ? 'the KBS certificate is outside its validity period (or the guest clock is wrong)'
        : ctx.certPath
          ? `the KBS certificate is not signed by a CA in kbs.cert (${ctx.certPath}) or the system store`
          : 'set kbs.cert to the PEM file of the CA that signed the KBS certificate';
  return new KbsError('KBS_TLS', `TLS connection to the KBS ${ctx.kbsUrl} failed (${code}: ${detail}); ${hint}`, { cause: err });
}

export function unreachableError(err: unknown, ctx: TransportContext): KbsError {
  const codes = errorCodes(err);
  const detail = err instanceof Error ? shorten(err.message) : String(err);
  const code = codes[0] && !detail.includes(codes[0]) ? ` (${codes[0]})` : '';
  const tries = ctx.attempts > 1 ? ` after ${ctx.attempts} attempts` : '';
  return new KbsError('KBS_UNREACHABLE', `cannot reach the KBS at ${ctx.kbsUrl} (${ctx.what})${tries}: ${detail}${code}; check kbs.url, the network and HTTPS_PROXY/NO_PROXY`, {
    cause: err,
  });
}

export function timeoutError(ctx: TransportContext & { timeoutMs: number; setting: string }): KbsError {
  return new KbsError('KBS_TIMEOUT',
    `the KBS at ${ctx.kbsUrl} did not answer ${ctx.what} within ${ctx.timeoutMs} ms (${ctx.setting})`,
  );
}

function shorten(text: string, max = 200): string {
  const line = oneLine(text);
  return line.length > max ? `${line.slice(0, max)}…` : line;
}
