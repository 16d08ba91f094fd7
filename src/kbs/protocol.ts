/**
 * Typed KBS (RCAR) wire messages for protocol 0.4.0 (trustee ≥ v0.14) and 0.2.0 (trustee v0.12–v0.13), and their
 * validation. Everything the KBS sends is parsed here, at the edge; anything malformed is rejected with a
 * DecoderError before it reaches crypto or the cache.
 */
import { createHash } from 'node:crypto';
import type { TeeType } from '../attest/attester.js';
import type { TeeNames } from '../config/types.js';
import { DecoderError } from '../util/errors.js';
import { canonicalJson } from './canonical-json.js';
import type { CanonicalValue } from './canonical-json.js';
import type { JweKeyAlgorithm, TeeJwk } from './tee-key.js';
import { quoteUntrusted } from '../util/quote.js';
import { isObject } from '../util/is-object.js';

export type ProtocolVersion = '0.4.0' | '0.2.0';
export const SUPPORTED_PROTOCOLS: readonly ProtocolVersion[] = ['0.4.0', '0.2.0'];

export function isSupportedProtocol(v: string): v is ProtocolVersion {
  return (SUPPORTED_PROTOCOLS as readonly string[]).includes(v);
}

/** Hash algorithms we can bind the runtime data with (what we advertise in `supported-hash-algorithms`). */
export type HashAlgorithm = 'sha256' | 'sha384' | 'sha512';
const SUPPORTED_HASHES: readonly HashAlgorithm[] = ['sha256', 'sha384', 'sha512'];

// ---------------------------------------------------------------- /kbs/v0/auth

export interface AuthRequest {
  version: ProtocolVersion;
  tee: string;
  'extra-params': { 'supported-hash-algorithms': HashAlgorithm[] };
}

/** kbs-types before 0.14 (trustee ≤ v0.15) serialised the Azure TEEs lowercase without hyphens, with no alias. */
const LEGACY_TEE_NAMES: Partial<Record<TeeType, string>> = { 'az-snp-vtpm': 'azsnpvtpm', 'az-tdx-vtpm': 'aztdxvtpm' };

/** The `tee` string a KBS of this dialect expects: `auto` takes the legacy names with 0.2.0 (trustee v0.12–v0.13). */
export function teeWireName(tee: TeeType, version: ProtocolVersion, names: TeeNames = 'auto'): string {
  const legacy = names === 'legacy' || (names === 'auto' && version === '0.2.0');
  return (legacy ? LEGACY_TEE_NAMES[tee] : undefined) ?? tee;
}

export function buildAuthRequest(version: ProtocolVersion, tee: TeeType, names: TeeNames = 'auto'): AuthRequest {
  return { version, tee: teeWireName(tee, version, names), 'extra-params': { 'supported-hash-algorithms': [...SUPPORTED_HASHES] } };
}

export interface Challenge {
  /** Echoed verbatim in the runtime data (base64 of 32 random bytes from trustee). */
  nonce: string;
  /** `""` from the builtin AS, or `{"selected-hash-algorithm": …}` (ITA, se). */
  extraParams: unknown;
}

const MAX_NONCE_LENGTH = 4096;

export function parseChallenge(body: unknown): Challenge {
  if (!isObject(body)) throw malformed('/auth', 'the challenge is not a JSON object');
  const nonce = body['nonce'];
  if (typeof nonce !== 'string' || nonce.length === 0 || nonce.length > MAX_NONCE_LENGTH) {
    throw malformed('/auth', 'the challenge has no valid "nonce"');
  }
  return { nonce, extraParams: body['extra-params'] };
}

/** trustee/GC rule: `selected-hash-algorithm` when the KBS names one, else SHA-384. */
export function selectedHashAlgorithm(challenge: Challenge): HashAlgorithm {
  const extra = challenge.extraParams;
  if (!isObject(extra) || extra['selected-hash-algorithm'] === undefined) return 'sha384';
  const chosen = extra['selected-hash-algorithm'];
  const name = typeof chosen === 'string' ? chosen.toLowerCase() : '';
  if (!(SUPPORTED_HASHES as readonly string[]).includes(name)) {
    throw malformed('/auth', `the KBS selected an unsupported hash algorithm ${quoteUntrusted(chosen, 64)}`);
  }
  return name as HashAlgorithm;
}

// ---------------------------------------------------------------- /kbs/v0/attest

/**
 * The exact string whose digest goes into the evidence. 0.4.0 always carries `additional-evidence` (here `""`:
 * no device attesters); 0.2.0 binds only nonce and key. trustee canonicalises both sides, so this is canonical JSON.
 */
export function runtimeDataToHash(version: ProtocolVersion, nonce: string, jwk: TeeJwk, additionalEvidence = ''): string {
  const key = jwk as unknown as CanonicalValue;
  return version === '0.4.0'
    ? canonicalJson({ 'tee-pubkey': key, nonce, 'additional-evidence': additionalEvidence })
    : canonicalJson({ nonce, 'tee-pubkey': key });
}

export function reportDataDigest(hash: HashAlgorithm, runtimeData: string): Buffer {
  return createHash(hash).update(runtimeData, 'utf8').digest();
}

export interface AttestRequest040 {
  'runtime-data': { nonce: string; 'tee-pubkey': TeeJwk };
  'tee-evidence': { primary_evidence: unknown; additional_evidence: string };
}

export interface AttestRequest020 {
  'tee-pubkey': TeeJwk;
  'tee-evidence': unknown;
}

export function buildAttestRequest(
  version: ProtocolVersion,
  nonce: string,
  jwk: TeeJwk,
  evidence: unknown,
  additionalEvidence = '',
): AttestRequest040 | AttestRequest020 {
  return version === '0.4.0'
    ? {
        'runtime-data': { nonce, 'tee-pubkey': jwk },
        'tee-evidence': { primary_evidence: evidence, additional_evidence: additionalEvidence },
      }
    : { 'tee-pubkey': jwk, 'tee-evidence': evidence };
}

export interface AttestResponse {
  token: string;
}

/** Generous: multi-GPU EAR tokens reach ~170 KiB (trustee#1563). */
export const MAX_TOKEN_LENGTH = 1024 * 1024;
const JWT_RE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

export function parseAttestResponse(body: unknown): AttestResponse {
  if (!isObject(body)) throw malformed('/attest', 'the response is not a JSON object');
  const token = body['token'];
  if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH || !JWT_RE.test(token)) {
    throw malformed('/attest', 'the response has no valid JWT "token"');
  }
  return { token };
}

// ---------------------------------------------------------------- errors

/** kbs-types ErrorInformation: `{"type": "https://github.com/confidential-containers/kbs/errors/<Kind>", "detail": …}` */
export interface ErrorInformation {
  type: string;
  detail: string;
  /** The last path segment of `type`, e.g. `PolicyDeny`. */
  kind: string;
}

export function parseErrorInformation(body: unknown): ErrorInformation | undefined {
  if (!isObject(body)) return undefined;
  const type = body['type'];
  const detail = body['detail'];
  if (typeof type !== 'string' || typeof detail !== 'string') return undefined;
  return { type, detail, kind: type.slice(type.lastIndexOf('/') + 1) };
}

// ---------------------------------------------------------------- /kbs/v0/resource

/** RFC 7516 flattened JWE JSON as trustee ≥ v0.12 sends it (no `aad`). */
export interface FlattenedJwe {
  protected: string;
  encrypted_key: string;
  iv: string;
  ciphertext: string;
  tag: string;
}

const B64URL_RE = /^[A-Za-z0-9_-]*$/;

export function parseResourceJwe(body: unknown, expectedAlg: JweKeyAlgorithm): FlattenedJwe {
  if (!isObject(body)) throw malformed('/resource', 'the response is not a JWE JSON object');
  const members = ['protected', 'encrypted_key', 'iv', 'ciphertext', 'tag'] as const;
  const out: Partial<FlattenedJwe> = {};
  for (const m of members) {
    const v = body[m];
    if (typeof v !== 'string' || !B64URL_RE.test(v)) {
      // The 0.1.1 (trustee ≤ v0.11) legacy JWE has a raw-JSON "protected" and an empty tag: name the real cause.
      if (m === 'protected' && typeof v === 'string' && v.startsWith('{')) {
        throw malformed('/resource', 'the KBS sent a legacy (protocol 0.1.x, trustee ≤ v0.11) JWE, which is not supported');
      }
      throw malformed('/resource', `the JWE member "${m}" is missing or not base64url`);
    }
    out[m] = v;
  }
  const jwe = out as FlattenedJwe;
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(jwe.protected, 'base64url').toString('utf8'));
  } catch {
    throw malformed('/resource', 'the JWE protected header is not JSON');
  }
  if (!isObject(header)) throw malformed('/resource', 'the JWE protected header is not a JSON object');
  if (header['alg'] !== expectedAlg) {
    throw malformed('/resource', `the JWE uses alg ${quoteUntrusted(header['alg'], 64)}, expected ${expectedAlg} for our TEE key`);
  }
  if (header['enc'] !== 'A256GCM') {
    throw malformed('/resource', `the JWE uses enc ${quoteUntrusted(header['enc'], 64)}, expected A256GCM`);
  }
  if (Buffer.from(jwe.iv, 'base64url').length !== 12 || Buffer.from(jwe.tag, 'base64url').length !== 16) {
    throw malformed('/resource', 'the JWE iv/tag have the wrong length for A256GCM');
  }
  // Only the five members are returned: an `aad` (never sent by trustee) would change jose's AAD computation.
  return jwe;
}

// ---------------------------------------------------------------- helpers

function malformed(endpoint: string, what: string): DecoderError {
  return new DecoderError(`malformed KBS response from ${endpoint}: ${what}`);
}
