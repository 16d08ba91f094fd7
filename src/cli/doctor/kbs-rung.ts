/**
 * Rung 3: the KBS answers at `kbs.url` over verified TLS, and the protocol dialect it speaks. Probed with the
 * decoder's own first RCAR step (kbs/client.ts `authenticate`: `POST /kbs/v0/auth` and its version fallback),
 * which is harmless (trustee just opens a session that expires); this rung only turns its errors into fixes.
 */
import type { TeeType } from '../../attest/attester.js';
import { DEFAULT_CONFIG_PATH } from '../../config/types.js';
import type { Config } from '../../config/types.js';
import { createDeadline } from '../../kbs/deadline.js';
import { authenticate } from '../../kbs/client.js';
import { KbsError, errorCodes } from '../../kbs/errors.js';
import { KbsHttp } from '../../kbs/http.js';
import { isSupportedProtocol } from '../../kbs/protocol.js';
import type { ProtocolVersion } from '../../kbs/protocol.js';
import { describeError } from '../../util/errors.js';
import { fail, pass } from './rung.js';
import type { RungResult } from './rung.js';

export interface KbsOutcome {
  result: RungResult;
  /** Open transport for the next rungs (close it when done); set whenever the KBS answered. */
  http?: KbsHttp;
  dialect?: ProtocolVersion;
}

const TRUSTEE_RELEASES: Record<ProtocolVersion, string> = { '0.4.0': 'trustee ≥ v0.14', '0.2.0': 'trustee v0.12–v0.13' };

export async function checkKbs(config: Config, tee: TeeType, env: NodeJS.ProcessEnv): Promise<KbsOutcome> {
  const url = config.kbs.url;
  const where = config.source ?? `${DEFAULT_CONFIG_PATH} (create it)`;
  if (url === undefined) {
    return { result: fail('kbs', 'no KBS configured (kbs.url is not set)', `set [kbs] url = "https://…" in ${where}`) };
  }
  let http: KbsHttp;
  try {
    http = await KbsHttp.create({ baseUrl: url, certPath: config.kbs.cert, certOnly: config.kbs.certOnly, timeoutMs: config.kbs.timeoutMs, env });
  } catch (err) {
    return { result: fail('kbs', describeError(err), `make kbs.cert in ${where} name a readable PEM file with the KBS's CA certificate`) };
  }

  // The decoder's own first step (kbs/client.ts `authenticate`): same request, same version fallback, same errors.
  const pinned = config.kbs.protocol;
  let auth;
  try {
    auth = await authenticate({ http, tee, protocol: pinned, teeNames: config.kbs.teeNames, deadline: createDeadline(config.kbs.totalTimeoutMs, url) });
  } catch (err) {
    if (err instanceof KbsError && err.code === 'KBS_VERSION_MISMATCH' && err.expectedVersion !== undefined) {
      const wanted = err.expectedVersion;
      if (!isSupportedProtocol(wanted)) {
        return {
          result: fail('kbs', `${url} speaks KBS protocol ${wanted}, which coco-decoder does not (it speaks 0.4.0 and 0.2.0)`, 'use a trustee KBS from v0.12 on'),
          http,
        };
      }
      if (pinned !== 'auto') {
        return {
          result: fail('kbs', `${url} speaks KBS protocol ${wanted} (${TRUSTEE_RELEASES[wanted]}), but kbs.protocol = "${pinned}"`, `set kbs.protocol = "auto" or "${wanted}" in ${where}`),
          http,
        };
      }
    }
    if (err instanceof KbsError && err.status !== undefined) return { result: fail('kbs', describeError(err), authFix(err, url)), http };
    await http.close();
    return { result: transportFailure(err, config) };
  }
  const { dialect, switchedFrom } = auth;
  const fallback = switchedFrom !== undefined ? ` (after the version-mismatch answer to ${switchedFrom})` : '';
  return {
    result: pass('kbs', `${url} reachable, ${tlsSummary(config)}, protocol ${dialect}${fallback} (${TRUSTEE_RELEASES[dialect]})`),
    http,
    dialect,
  };
}

function tlsSummary(config: Config): string {
  if (config.kbs.url?.startsWith('http:')) return 'plain http without TLS (kbs.allow_http: the token travels unencrypted, development only)';
  return config.kbs.cert ? `TLS verified against kbs.cert ${config.kbs.cert} and the system CAs` : 'TLS verified against the system CAs';
}

function authFix(err: KbsError, url: string): string {
  if (err.status === 404) return `kbs.url must be the KBS base URL (the decoder appends /kbs/v0/…); check ${url}`;
  return 'check that kbs.url points at a trustee KBS and read its log for the refused /kbs/v0/auth request';
}

/** Connection, TLS and timeout failures: the problem in the words of the network, and what to change. */
function transportFailure(err: unknown, config: Config): RungResult {
  const url = config.kbs.url!;
  if (!(err instanceof KbsError)) return fail('kbs', describeError(err), 'check kbs.url and the network');
  const codes = errorCodes(err);
  const code = codes[0];
  switch (err.code) {
    case 'KBS_UNREACHABLE': {
      const fix =
        code === 'ECONNREFUSED'
          ? `nothing listens at ${url}: start the KBS or correct the host/port in kbs.url`
          : code === 'ENOTFOUND' || code === 'EAI_AGAIN'
            ? 'the host name in kbs.url does not resolve: correct it or fix DNS in this VM'
            : 'check kbs.url, routes and firewalls from this VM to the KBS, and HTTPS_PROXY/NO_PROXY';
      return fail('kbs', `cannot connect to ${url}: ${code ?? describeError(err)}`, fix);
    }
    case 'KBS_TLS': {
      const tlsCode = codes.find((c) => !c.startsWith('UND_ERR_')) ?? 'TLS error';
      const fix =
        tlsCode === 'ERR_TLS_CERT_ALTNAME_INVALID' || tlsCode === 'HOSTNAME_MISMATCH'
          ? 'the host name in kbs.url must be one the KBS certificate is issued for'
          : tlsCode === 'CERT_HAS_EXPIRED' || tlsCode === 'CERT_NOT_YET_VALID'
            ? `renew the KBS certificate, or correct this VM's clock (now ${new Date().toISOString()})`
            : config.kbs.cert
              ? `kbs.cert (${config.kbs.cert}) must contain the CA that issued the KBS certificate`
              : 'set kbs.cert to the PEM file of the CA that issued the KBS certificate';
      return fail('kbs', `TLS to ${url} failed: ${tlsCode}`, fix);
    }
    case 'KBS_TIMEOUT':
      return fail('kbs', describeError(err), 'check the KBS is not overloaded and the network path; raise kbs.timeout_ms if it is just slow');
    default:
      return fail('kbs', describeError(err), 'check kbs.url and the KBS log');
  }
}
