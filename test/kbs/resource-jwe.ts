/**
 * Resource response encryption, as trustee's `jwe()` (kbs/src/jwe/mod.rs): an RFC 7516
 * flattened JWE with `enc: A256GCM`, no `aad`, to the TEE key from the token:
 *   RSA  + RSA-OAEP-256                → alg RSA-OAEP-256
 *   EC   + P-256|P-521 + ECDH-ES+A256KW → alg ECDH-ES+A256KW (coordinates exactly 32|66 bytes, point on the curve)
 * Anything else fails (→ 401 JweError). Deviation: trustee still serves `RSA1_5`; jose v6 cannot produce it
 * and no current client asks for it, so it fails here too.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { FlattenedEncrypt, type FlattenedJWE } from 'jose';
import type { TeePubKey } from './messages.js';

const EC_COORDINATE_BYTES: Record<string, number> = { 'P-256': 32, 'P-521': 66 };

function b64urlBytes(text: string): Buffer {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new Error('not base64url');
  return Buffer.from(text, 'base64url');
}

/** The recipient key and JWE `alg` for a typed TEE key, or an Error saying why trustee would refuse it. */
export function jweRecipient(key: TeePubKey): { alg: string; key: KeyObject } {
  if (key.kty === 'RSA') {
    if (key.alg !== 'RSA-OAEP-256') throw new Error(`algorithm ${key.alg} is not supported`);
    return { alg: key.alg, key: createPublicKey({ key: { kty: 'RSA', n: key.n, e: key.e }, format: 'jwk' }) };
  }
  if (key.kty === 'EC') {
    const size = EC_COORDINATE_BYTES[key.crv];
    if (size === undefined || key.alg !== 'ECDH-ES+A256KW') {
      throw new Error(`curve ${key.crv} and algorithm ${key.alg} is not supported`);
    }
    if (b64urlBytes(key.x).length !== size || b64urlBytes(key.y).length !== size) {
      throw new Error('invalid bytes length of coordinates');
    }
    // createPublicKey rejects points that are not on the curve, like p256::PublicKey::from_encoded_point.
    return { alg: key.alg, key: createPublicKey({ key: { kty: 'EC', crv: key.crv, x: key.x, y: key.y }, format: 'jwk' }) };
  }
  throw new Error(`pqc-experimental feature not enabled or algorithm ${key.alg} is not supported`);
}

export async function encryptResource(key: TeePubKey, plaintext: Buffer): Promise<FlattenedJWE> {
  const recipient = jweRecipient(key);
  return new FlattenedEncrypt(plaintext).setProtectedHeader({ alg: recipient.alg, enc: 'A256GCM' }).encrypt(recipient.key);
}
