/**
 * Reads the timing claims of the attestation token. Like guest-components, the client does not verify the
 * signature (the KBS does, on every use); it only needs `exp`/`iat` to know how long the token may be reused.
 */
import { DecoderError } from '../util/errors.js';

export interface TokenTimes {
  /** Seconds since the epoch (KBS clock). */
  exp: number | undefined;
  iat: number | undefined;
}

export function readTokenTimes(token: string): TokenTimes {
  const payload = token.split('.')[1];
  let claims: unknown;
  try {
    claims = JSON.parse(Buffer.from(payload ?? '', 'base64url').toString('utf8'));
  } catch {
    throw new DecoderError('malformed KBS response from /attest: the token payload is not JSON');
  }
  if (typeof claims !== 'object' || claims === null || Array.isArray(claims)) {
    throw new DecoderError('malformed KBS response from /attest: the token payload is not a JSON object');
  }
  const c = claims as Record<string, unknown>;
  return { exp: numericDate(c['exp']), iat: numericDate(c['iat']) };
}

function numericDate(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : undefined;
}

/**
 * Local wall-clock time (ms) until which the token may be used. The lifetime the KBS granted (`exp - iat`) is
 * measured from when we received it, so a guest clock that is off does not make us use expired tokens or
 * throw away fresh ones; without `iat`, `exp` is taken as is. Undefined: no `exp`, do not reuse.
 */
export function localExpiry(times: TokenTimes, receivedAtMs: number): number | undefined {
  if (times.exp === undefined) return undefined;
  if (times.iat !== undefined && times.exp > times.iat) return receivedAtMs + (times.exp - times.iat) * 1000;
  return times.exp * 1000;
}
