/**
 * The RCAR handshake (`/auth` → `/attest`) and the resource fetch, for KBS protocol 0.4.0 (default) and 0.2.0
 * (trustee v0.12–v0.13, chosen when the KBS answers the version-mismatch 401 and `kbs.protocol = "auto"`).
 * Stateless: the caller (key-source) decides when to attest and keeps the resulting credentials.
 */
import type { Attester } from '../attest/attester.js';
import type { KbsProtocol, TeeKeyAlgorithm, TeeNames } from '../config/types.js';
import type { Deadline } from './deadline.js';
import { KbsError, errorFromResponse } from './errors.js';
import type { KbsEndpoint } from './errors.js';
import type { KbsHttp, KbsResponse } from './http.js';
import {
  buildAttestRequest,
  buildAuthRequest,
  isSupportedProtocol,
  parseAttestResponse,
  parseChallenge,
  parseErrorInformation,
  parseResourceJwe,
  reportDataDigest,
  runtimeDataToHash,
  selectedHashAlgorithm,
} from './protocol.js';
import type { Challenge, ProtocolVersion } from './protocol.js';
import type { ResourceUri } from './resource-uri.js';
import { decryptResourceJwe } from './resource-jwe.js';
import { generateTeeKeyPair, jweAlgorithmFor } from './tee-key.js';
import type { TeeKeyPair } from './tee-key.js';

export const SESSION_COOKIE = 'kbs-session-id';

export interface SessionCookie {
  value: string;
  /** Local ms; trustee's session lifetime (default 5 min) is independent of the token's. */
  expiresAtMs: number | undefined;
}

export interface Attestation {
  token: string;
  /** The key pair bound into this token's runtime data; a fresh one on every attestation. */
  keyPair: TeeKeyPair;
  dialect: ProtocolVersion;
  cookie: SessionCookie | undefined;
  receivedAtMs: number;
}

export interface AttestOptions {
  http: KbsHttp;
  attester: Attester;
  keyAlgorithm: TeeKeyAlgorithm;
  protocol: KbsProtocol;
  /** Dialect remembered in the cache for this KBS (skips the mismatch round trip). */
  dialectHint: ProtocolVersion | undefined;
  deadline: Deadline;
  /** Spelling of the Azure TEE names (`kbs.tee_names`). */
  teeNames?: TeeNames;
}

const MAX_JSON_BYTES = 64 * 1024;
const MAX_TOKEN_RESPONSE_BYTES = 2 * 1024 * 1024;
const MAX_RESOURCE_RESPONSE_BYTES = 1024 * 1024;

export interface AuthOptions {
  http: KbsHttp;
  tee: Attester['tee'];
  protocol: KbsProtocol;
  /** Dialect remembered for this KBS (skips the mismatch round trip). */
  dialectHint?: ProtocolVersion | undefined;
  teeNames?: TeeNames | undefined;
  deadline: Deadline;
}

export interface AuthResult {
  dialect: ProtocolVersion;
  /** The dialect first tried, when trustee's version-mismatch answer made us switch. */
  switchedFrom?: ProtocolVersion;
  cookie: SessionCookie;
  challenge: Challenge;
}

/**
 * The first RCAR step, `POST /kbs/v0/auth`, in the dialect the KBS speaks: with `protocol = "auto"`, a 401
 * naming another supported version (trustee's only negotiation) is retried once in that version. Throws the
 * KbsError of any other answer (the doctor's kbs rung maps the same errors to fixes).
 */
export async function authenticate(o: AuthOptions): Promise<AuthResult> {
  const first: ProtocolVersion = o.protocol === 'auto' ? (o.dialectHint ?? '0.4.0') : o.protocol;
  let dialect = first;
  const kbsUrl = o.http.baseUrl;
  for (let switched = false; ; ) {
    const res = await o.http.send(
      { method: 'POST', path: '/kbs/v0/auth', json: buildAuthRequest(dialect, o.tee, o.teeNames), maxBytes: MAX_JSON_BYTES, what: 'POST /kbs/v0/auth' },
      o.deadline,
    );
    if (res.status !== 200) {
      const err = responseError(res, { endpoint: 'auth', kbsUrl, version: dialect, tee: o.tee });
      const wanted = err.expectedVersion;
      if (err.code === 'KBS_VERSION_MISMATCH' && o.protocol === 'auto' && !switched && wanted !== undefined && wanted !== dialect && isSupportedProtocol(wanted)) {
        dialect = wanted;
        switched = true;
        continue;
      }
      throw err;
    }
    const cookie = sessionCookie(res, Date.now());
    const challenge = parseChallenge(parseJson(res, 'auth'));
    return { dialect, cookie, challenge, ...(dialect !== first ? { switchedFrom: first } : {}) };
  }
}

export async function attest(o: AttestOptions): Promise<Attestation> {
  // Key generation (RSA takes tens of ms) overlaps the /auth round trip.
  const keyPairPromise = generateTeeKeyPair(o.keyAlgorithm);
  keyPairPromise.catch(() => undefined);
  const kbsUrl = o.http.baseUrl;
  const tee = o.attester.tee;
  const { dialect, cookie, challenge } = await authenticate({
    http: o.http,
    tee,
    protocol: o.protocol,
    dialectHint: o.dialectHint,
    teeNames: o.teeNames,
    deadline: o.deadline,
  });
  const hash = selectedHashAlgorithm(challenge);
  const keyPair = await keyPairPromise;

  // Hash exactly the JWK object that is sent; trustee canonicalises both sides.
  const reportData = reportDataDigest(hash, runtimeDataToHash(dialect, challenge.nonce, keyPair.publicJwk));
  const evidence = await o.attester.getEvidence(reportData, o.deadline.signal);
  if (o.deadline.signal.aborted) throw o.deadline.error('attestation');

  const attestRes = await o.http.send(
    {
      method: 'POST',
      path: '/kbs/v0/attest',
      json: buildAttestRequest(dialect, challenge.nonce, keyPair.publicJwk, evidence),
      headers: { cookie: `${SESSION_COOKIE}=${cookie.value}` },
      maxBytes: MAX_TOKEN_RESPONSE_BYTES,
      what: 'POST /kbs/v0/attest',
    },
    o.deadline,
  );
  if (attestRes.status !== 200) throw responseError(attestRes, { endpoint: 'attest', kbsUrl, tee });
  const { token } = parseAttestResponse(parseJson(attestRes, 'attest'));
  return { token, keyPair, dialect, cookie, receivedAtMs: Date.now() };
}

export interface ResourceCredentials {
  token: string;
  /** Sent as well when still valid: trustee checks an attested session first, then falls back to the Bearer token. */
  cookie: string | undefined;
  keyPair: TeeKeyPair;
}

/** GET the resource and decrypt the JWE with the TEE key. The returned Buffer is the caller's to zero. */
export async function fetchResource(http: KbsHttp, uri: ResourceUri, creds: ResourceCredentials, deadline: Deadline): Promise<Buffer> {
  const path = `/kbs/v0/resource/${uri.path}${uri.query}`;
  const headers: Record<string, string> = { authorization: `Bearer ${creds.token}` };
  if (creds.cookie !== undefined) headers['cookie'] = `${SESSION_COOKIE}=${creds.cookie}`;
  const res = await http.send({ method: 'GET', path, headers, maxBytes: MAX_RESOURCE_RESPONSE_BYTES, what: `GET ${path}` }, deadline);
  if (res.status !== 200) throw responseError(res, { endpoint: 'resource', kbsUrl: http.baseUrl, kid: uri.uri });
  const alg = jweAlgorithmFor(creds.keyPair.algorithm);
  const jwe = parseResourceJwe(parseJson(res, 'resource'), alg);
  try {
    return decryptResourceJwe(jwe, alg, creds.keyPair.privateKey);
  } catch (err) {
    // OpenSSL's own words ("unable to authenticate data", "wrap failure"), never key-derived bytes.
    const why = err instanceof Error ? err.message.split('\n')[0]!.slice(0, 120) : 'JWE error';
    throw new KbsError('KBS_DECRYPT_FAILED',
      `cannot decrypt ${uri.uri} from the KBS ${http.baseUrl}: the response is not encrypted to the TEE key bound in the token (${why})`,
      { cause: err },
    );
  }
}

function responseError(res: KbsResponse, ctx: { endpoint: KbsEndpoint; kbsUrl: string; version?: string; tee?: string; kid?: string }): KbsError {
  let info;
  try {
    info = parseErrorInformation(JSON.parse(res.body.toString('utf8')));
  } catch {
    info = undefined;
  }
  const text = info ? '' : res.body.toString('utf8');
  return errorFromResponse(res.status, info, text, ctx);
}

function parseJson(res: KbsResponse, endpoint: KbsEndpoint): unknown {
  try {
    return JSON.parse(res.body.toString('utf8'));
  } catch {
    throw new KbsError('KBS_MALFORMED', `malformed KBS response from /${endpoint}: the body is not JSON`);
  }
}

const COOKIE_VALUE_RE = /^[A-Za-z0-9._~-]{1,256}$/;

/** The `kbs-session-id` from `/auth`'s Set-Cookie (trustee sets only `Expires`). */
function sessionCookie(res: KbsResponse, nowMs: number): SessionCookie {
  const raw = res.headers['set-cookie'];
  const lines = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
  for (const line of lines) {
    const [pair = '', ...attrs] = line.split(';');
    const eq = pair.indexOf('=');
    if (pair.slice(0, eq).trim() !== SESSION_COOKIE) continue;
    const value = pair.slice(eq + 1).trim();
    if (!COOKIE_VALUE_RE.test(value)) break;
    let expiresAtMs: number | undefined;
    for (const attr of attrs) {
      const [k = '', v = ''] = attr.split(/=(.*)/s);
      const key = k.trim().toLowerCase();
      if (key === 'max-age' && /^-?\d+$/.test(v.trim())) expiresAtMs = nowMs + Number(v.trim()) * 1000;
      else if (key === 'expires' && expiresAtMs === undefined) {
        const t = Date.parse(v.trim());
        if (Number.isFinite(t)) expiresAtMs = t;
      }
    }
    return { value, expiresAtMs };
  }
  throw new KbsError('KBS_MALFORMED', 'malformed KBS response from /auth: no valid kbs-session-id cookie');
}
