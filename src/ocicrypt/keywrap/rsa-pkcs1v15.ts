/**
 * RSA PKCS#1 v1.5 key transport without a padding oracle. Node ≥ 20 refuses RSA_PKCS1_PADDING for private
 * decryption (Marvin hardening, CVE-2023-46809): we decrypt with RSA_NO_PADDING and strip the padding here without
 * data-dependent branches, substituting a synthetic key when the padding is bad ("implicit rejection", as
 * OpenSSL ≥ 3.2 does), derived from the private key and the ciphertext so that asking twice gives the same answer.
 */
import { createHash, createHmac, type KeyObject } from 'node:crypto';

// --- constant-time-ish helpers over small non-negative integers (no data-dependent branches) ---
/** 1 if x === 0 else 0, for 0 <= x < 2^31. */
const isZero = (x: number): number => ((x - 1) >>> 31) & 1;
/** 1 if a >= b else 0, for 0 <= a, b < 2^30. */
const ge = (a: number, b: number): number => 1 - (((a - b) >>> 31) & 1);

/**
 * EME-PKCS1-v1_5 decoding of `em` (k bytes: 00 02 PS≥8 nonzero 00 M) into a `length`-byte message. On any
 * padding error, or if M has another length, returns `synthetic` (a `length`-byte substitute) instead: the caller
 * cannot tell from here. `synthetic` is consumed (its bytes become the result's).
 */
export function unpadPkcs1v15(em: Buffer, length: number, synthetic: Buffer): Buffer {
  const k = em.length;
  if (synthetic.length !== length) throw new RangeError('synthetic message length mismatch');
  const out = synthetic;
  if (k < length + 11) return out; // depends only on public sizes
  let good = isZero(em[0]!) & isZero(em[1]! ^ 2);
  let zeroIndex = 0;
  let looking = 1;
  for (let i = 2; i < k; i++) {
    const z = isZero(em[i]!) & looking;
    zeroIndex = (zeroIndex & ~-z) | (i & -z);
    looking &= 1 - z;
  }
  good &= 1 - looking; // a separator exists
  good &= ge(zeroIndex, 10); // at least 8 bytes of PS
  good &= isZero((k - zeroIndex - 1) ^ length); // both sides are >= 0
  const mask = -good & 0xff;
  const start = k - length;
  for (let j = 0; j < length; j++) out[j] = (em[start + j]! & mask) | (out[j]! & ~mask & 0xff);
  return out;
}

const kdkKeys = new WeakMap<KeyObject, Buffer>();

/**
 * The implicit-rejection substitute for `ciphertext`: OpenSSL's construction (rsa_pk1.c,
 * `ossl_rsa_padding_check_PKCS1_type_2` with `ossl_rsa_prf`): KDK = HMAC-SHA256(SHA256(d as k bytes), C as k bytes),
 * then HMAC-SHA256(KDK, BE16(i) ‖ "message" ‖ BE16(bits)) blocks. Deterministic per (key, ciphertext).
 */
export function syntheticKey(key: KeyObject, ciphertext: Buffer, length: number): Buffer {
  const k = ((key.asymmetricKeyDetails?.modulusLength ?? 2048) + 7) >> 3;
  let dHash = kdkKeys.get(key);
  if (dHash === undefined) {
    const d = Buffer.from(key.export({ format: 'jwk' }).d ?? '', 'base64url');
    const padded = Buffer.alloc(Math.max(k, d.length));
    d.copy(padded, padded.length - d.length);
    dHash = createHash('sha256').update(padded).digest();
    d.fill(0);
    padded.fill(0);
    kdkKeys.set(key, dHash);
  }
  const c = Buffer.alloc(Math.max(k, ciphertext.length));
  ciphertext.copy(c, c.length - ciphertext.length);
  const kdk = createHmac('sha256', dHash).update(c).digest();
  const blocks: Buffer[] = [];
  const bits = Buffer.alloc(2);
  bits.writeUInt16BE((length * 8) & 0xffff);
  for (let i = 0, have = 0; have < length; i++, have += 32) {
    const counter = Buffer.alloc(2);
    counter.writeUInt16BE(i);
    blocks.push(createHmac('sha256', kdk).update(counter).update('message').update(bits).digest());
  }
  kdk.fill(0);
  const out = Buffer.concat(blocks).subarray(0, length);
  for (const b of blocks) b.fill(0);
  return Buffer.from(out);
}

