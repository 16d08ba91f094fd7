/**
 * JWE decryption with node:crypto directly (RFC 7516, RFC 7518 §4.3, §4.6, §5.3) for what ocicrypt writes: go-jose
 * `NewMultiEncrypter(A256GCM, …)` with RSA-OAEP recipients for RSA keys and ECDH-ES+A256KW for EC keys (ocicrypt
 * `keywrap/jwe/keywrapper_jwe.go`), plus the other GCM and key-wrap sizes of the same families. jose does the
 * rest (the CBC-HS content encryptions, X25519, anything unusual): `direct` answers `unsupported` for those, and the
 * caller hands the whole JWE to jose. The point is start-up: jose decrypts through WebCrypto, which costs a layer
 * process several milliseconds to load and compile, while node:crypto is loaded anyway.
 *
 * The verdicts equal jose's for every JWE this accepts: recipients are tried in order and the first that decrypts
 * wins; a recipient fails (never throws) on a wrong key type, curve or key, a bad key unwrap, a content key of
 * the wrong length, an IV other than 96 bits, a tag other than 128 bits or a tag mismatch. Nothing derived from
 * the key or the plaintext is ever reported.
 */
import { constants, createDecipheriv, createPublicKey, diffieHellman, privateDecrypt, type CipherGCMTypes, type KeyObject } from 'node:crypto';
import { isObject } from '../../util/is-object.js';
import { aesKeyUnwrap, concatKdfSha256 } from '../../util/jwa.js';

/** One of the three serializations, as parsed (and allow-list checked) by jwe.ts. */
export interface JweParts {
  /** The `protected` member as sent (base64url), '' when absent: it is the AAD's first part. */
  readonly protectedB64: string;
  readonly protectedHeader: Record<string, unknown>;
  readonly sharedUnprotected: Record<string, unknown> | undefined;
  readonly recipients: ReadonlyArray<{ readonly header: Record<string, unknown> | undefined; readonly encryptedKey: string | undefined }>;
  readonly iv: string;
  readonly ciphertext: string;
  readonly tag: string;
  readonly aad: string | undefined;
}

export type DirectResult =
  | { readonly kind: 'decrypted'; readonly plaintext: Buffer; readonly kid: string | undefined }
  /** Every recipient was within this module's algorithms and none decrypted with this key. */
  | { readonly kind: 'not-for-key' }
  /** Something outside this module's algorithms: jose decides. */
  | { readonly kind: 'unsupported' };

const CURVES: Readonly<Record<string, string>> = { 'P-256': 'prime256v1', 'P-384': 'secp384r1', 'P-521': 'secp521r1' };
const KEY_WRAP_BITS: Readonly<Record<string, number>> = { 'ECDH-ES+A128KW': 128, 'ECDH-ES+A192KW': 192, 'ECDH-ES+A256KW': 256 };
const GCM_KEY_BYTES: Readonly<Record<string, number>> = { A128GCM: 16, A192GCM: 24, A256GCM: 32 };
const GCM_CIPHERS: Readonly<Record<string, CipherGCMTypes>> = { A128GCM: 'aes-128-gcm', A192GCM: 'aes-192-gcm', A256GCM: 'aes-256-gcm' };
/** jose refuses smaller RSA keys; they are left to it so that the verdict stays its own. */
const MIN_RSA_BITS = 2048;

const B64U = /^[A-Za-z0-9_-]*$/;
const b64u = (s: string): Buffer => Buffer.from(s, 'base64url');
/** Buffer ignores characters outside the alphabet where jose refuses them: such members are left to jose. */
const isB64u = (v: unknown): boolean => v === undefined || (typeof v === 'string' && B64U.test(v));

/** The JOSE header of a recipient, or undefined when its three parts share a name (jose rejects that JWE). */
function joinedHeader(parts: JweParts, own: Record<string, unknown> | undefined): Record<string, unknown> | undefined {
  const joined: Record<string, unknown> = {};
  for (const h of [parts.protectedHeader, parts.sharedUnprotected, own]) {
    if (h === undefined) continue;
    for (const [k, v] of Object.entries(h)) {
      if (Object.hasOwn(joined, k)) return undefined;
      joined[k] = v;
    }
  }
  return joined;
}

/** Whether this module covers the recipient's algorithms and the key's type: else jose decides. */
function covered(h: Record<string, unknown>, key: KeyObject): boolean {
  if (h['crit'] !== undefined || h['zip'] !== undefined) return false;
  if (typeof h['enc'] !== 'string' || !Object.hasOwn(GCM_KEY_BYTES, h['enc'])) return false;
  const alg = h['alg'];
  if (alg === 'RSA-OAEP' || alg === 'RSA-OAEP-256') {
    return key.asymmetricKeyType !== 'rsa' || (key.asymmetricKeyDetails?.modulusLength ?? 0) >= MIN_RSA_BITS;
  }
  if (typeof alg !== 'string' || !Object.hasOwn(KEY_WRAP_BITS, alg)) return false;
  const epk = h['epk'];
  if (!isObject(epk) || epk['kty'] !== 'EC' || typeof epk['crv'] !== 'string' || !Object.hasOwn(CURVES, epk['crv'])) return false;
  return isB64u(epk['x']) && isB64u(epk['y']) && isB64u(h['apu']) && isB64u(h['apv']);
}

/** The content key of one recipient, or undefined when it is not for this key. */
function contentKey(h: Record<string, unknown>, encryptedKey: string | undefined, key: KeyObject): Buffer | undefined {
  if (encryptedKey === undefined) return undefined;
  const wrapped = b64u(encryptedKey);
  const alg = h['alg'] as string;
  try {
    if (alg === 'RSA-OAEP' || alg === 'RSA-OAEP-256') {
      if (key.asymmetricKeyType !== 'rsa') return undefined;
      return privateDecrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: alg === 'RSA-OAEP' ? 'sha1' : 'sha256' }, wrapped);
    }
    const epk = h['epk'] as Record<string, unknown>;
    const curve = CURVES[epk['crv'] as string];
    if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== curve) return undefined;
    if (typeof epk['x'] !== 'string' || typeof epk['y'] !== 'string') return undefined;
    // Only the coordinates are taken; OpenSSL refuses a point that is not on the curve.
    const peer = createPublicKey({ key: { kty: 'EC', crv: epk['crv'] as string, x: epk['x'], y: epk['y'] }, format: 'jwk' });
    const z = diffieHellman({ privateKey: key, publicKey: peer });
    const bits = KEY_WRAP_BITS[alg]!;
    const kek = concatKdfSha256(z, alg, b64u((h['apu'] as string | undefined) ?? ''), b64u((h['apv'] as string | undefined) ?? ''), bits);
    z.fill(0);
    try {
      return aesKeyUnwrap(kek, wrapped);
    } finally {
      kek.fill(0);
    }
  } catch {
    return undefined; // a wrong key, a bad unwrap integrity check, an invalid point: not for this key
  }
}

function decryptContent(parts: JweParts, enc: string, cek: Buffer): Buffer | undefined {
  const iv = b64u(parts.iv);
  const tag = b64u(parts.tag);
  if (cek.length !== GCM_KEY_BYTES[enc] || iv.length !== 12 || tag.length !== 16) return undefined;
  const aad = parts.aad === undefined ? parts.protectedB64 : `${parts.protectedB64}.${parts.aad}`;
  try {
    const d = createDecipheriv(GCM_CIPHERS[enc]!, cek, iv, { authTagLength: 16 });
    d.setAAD(Buffer.from(aad, 'ascii'));
    d.setAuthTag(tag);
    return Buffer.concat([d.update(b64u(parts.ciphertext)), d.final()]);
  } catch {
    return undefined;
  }
}

function kidOf(...headers: Array<Record<string, unknown> | undefined>): string | undefined {
  for (const h of headers) if (h && typeof h['kid'] === 'string') return h['kid'];
  return undefined;
}

/** Decrypts `parts` with `key` when every recipient is within the algorithms above; see DirectResult. */
export function decryptJweDirect(parts: JweParts, key: KeyObject): DirectResult {
  const headers: Array<Record<string, unknown>> = [];
  if (![parts.protectedB64, parts.iv, parts.ciphertext, parts.tag, parts.aad].every(isB64u)) return { kind: 'unsupported' };
  for (const r of parts.recipients) {
    const h = joinedHeader(parts, r.header);
    if (h === undefined || !isB64u(r.encryptedKey) || !covered(h, key)) return { kind: 'unsupported' };
    headers.push(h);
  }
  for (let i = 0; i < parts.recipients.length; i++) {
    const h = headers[i]!;
    const r = parts.recipients[i]!;
    const cek = contentKey(h, r.encryptedKey, key);
    if (cek === undefined) continue;
    const plaintext = decryptContent(parts, h['enc'] as string, cek);
    cek.fill(0);
    if (plaintext !== undefined) return { kind: 'decrypted', plaintext, kid: kidOf(r.header, parts.sharedUnprotected, parts.protectedHeader) };
  }
  return { kind: 'not-for-key' };
}
