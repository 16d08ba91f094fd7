/**
 * Decrypting the KBS resource response: an RFC 7516 flattened JWE (already shape-checked by protocol.ts
 * `parseResourceJwe`) with `alg` ECDH-ES+A256KW (RFC 7518 §4.6: ECDH on P-256, Concat KDF with SHA-256, AES-256
 * key wrap) or RSA-OAEP-256, and `enc` A256GCM with the ASCII of the protected header as AAD (trustee's
 * `kbs/src/jwe` never sends `aad`). Done with node:crypto directly: it is the whole JWE surface of the warm path,
 * and jose would load WebCrypto for it (~10 ms per process). Failures are one generic error: the caller says
 * "not encrypted to the TEE key", and nothing derived from the key is shown.
 */
import { createDecipheriv, createPublicKey, diffieHellman, privateDecrypt, constants, type KeyObject } from 'node:crypto';
import { isObject } from '../util/is-object.js';
import { aesKeyUnwrap, concatKdfSha256 } from '../util/jwa.js';
import type { FlattenedJwe } from './protocol.js';
import type { JweKeyAlgorithm } from './tee-key.js';

export class JweDecryptError extends Error {}

const CEK_BYTES = 32;

function header(jwe: FlattenedJwe): Record<string, unknown> {
  const h: unknown = JSON.parse(Buffer.from(jwe.protected, 'base64url').toString('utf8'));
  if (!isObject(h)) throw new JweDecryptError('protected header is not an object');
  // Extensions we would not honour must not be silently ignored (RFC 7515 §4.1.11); compression is never sent.
  if (h['crit'] !== undefined || h['zip'] !== undefined) throw new JweDecryptError('unsupported header parameter (crit/zip)');
  return h;
}

function contentKey(jwe: FlattenedJwe, h: Record<string, unknown>, alg: JweKeyAlgorithm, key: KeyObject): Buffer {
  const encryptedKey = Buffer.from(jwe.encrypted_key, 'base64url');
  if (alg === 'RSA-OAEP-256') {
    return privateDecrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, encryptedKey);
  }
  const epk = h['epk'];
  if (!isObject(epk) || epk['kty'] !== 'EC' || epk['crv'] !== 'P-256' || typeof epk['x'] !== 'string' || typeof epk['y'] !== 'string') {
    throw new JweDecryptError('missing or unsupported epk');
  }
  const peer = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: epk['x'], y: epk['y'] }, format: 'jwk' });
  const z = diffieHellman({ privateKey: key, publicKey: peer });
  const b64 = (v: unknown): Buffer => (typeof v === 'string' ? Buffer.from(v, 'base64url') : Buffer.alloc(0));
  const kek = concatKdfSha256(z, alg, b64(h['apu']), b64(h['apv']), CEK_BYTES * 8);
  z.fill(0);
  try {
    return aesKeyUnwrap(kek, encryptedKey);
  } finally {
    kek.fill(0);
  }
}

/** The plaintext of `jwe` for `key`; throws JweDecryptError (or a crypto error) when it is not for this key. */
export function decryptResourceJwe(jwe: FlattenedJwe, alg: JweKeyAlgorithm, key: KeyObject): Buffer {
  const h = header(jwe);
  const cek = contentKey(jwe, h, alg, key);
  try {
    if (cek.length !== CEK_BYTES) throw new JweDecryptError('content key of the wrong length');
    const d = createDecipheriv('aes-256-gcm', cek, Buffer.from(jwe.iv, 'base64url'));
    d.setAAD(Buffer.from(jwe.protected, 'ascii'));
    d.setAuthTag(Buffer.from(jwe.tag, 'base64url'));
    return Buffer.concat([d.update(Buffer.from(jwe.ciphertext, 'base64url')), d.final()]);
  } finally {
    cek.fill(0);
  }
}
