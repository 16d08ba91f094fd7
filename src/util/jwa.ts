/**
 * The two key-management primitives of RFC 7518 that both of our JWE readers need: the ECDH-ES Concat KDF (§4.6.2)
 * and AES Key Wrap (§4.4, RFC 3394). One copy for the KBS's resource responses (kbs/resource-jwe.ts) and the
 * ocicrypt JWE recipients (ocicrypt/keywrap/jwe-decrypt.ts). Both throw on failure; neither reports key bytes.
 */
import { createDecipheriv, createHash } from 'node:crypto';

const AES_KW_IV = Buffer.from('a6a6a6a6a6a6a6a6', 'hex');

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** Concat KDF (NIST SP 800-56A) with SHA-256 for a key of `bits` ≤ 256 (one round), AlgorithmID = `alg`. */
export function concatKdfSha256(z: Buffer, alg: string, apu: Buffer, apv: Buffer, bits: number): Buffer {
  if (!Number.isInteger(bits) || bits <= 0 || bits > 256 || bits % 8 !== 0) throw new RangeError(`Concat KDF: ${bits} bits`);
  const id = Buffer.from(alg, 'ascii');
  const digest = createHash('sha256')
    .update(u32(1))
    .update(z)
    .update(Buffer.concat([u32(id.length), id, u32(apu.length), apu, u32(apv.length), apv, u32(bits)]))
    .digest();
  if (bits === 256) return digest;
  const out = Buffer.from(digest.subarray(0, bits / 8));
  digest.fill(0);
  return out;
}

/** AES Key Unwrap with the default IV; the key size follows `kek` (16, 24 or 32 bytes). Throws when the check fails. */
export function aesKeyUnwrap(kek: Buffer, wrapped: Buffer): Buffer {
  const d = createDecipheriv(`id-aes${kek.length * 8}-wrap`, kek, AES_KW_IV);
  return Buffer.concat([d.update(wrapped), d.final()]);
}
