/**
 * The encrypting side of the layer cipher, as ocicrypt's `EncryptLayer` with `AES_256_CTR_HMAC_SHA256` writes it:
 * a fresh 32-byte key and 16-byte nonce per layer, AES-256-CTR with the nonce as the whole initial counter block,
 * HMAC-SHA256 under the same key over the ciphertext. Streams file to file (constant memory). The private
 * options (key, nonce, plaintext digest) are returned for the key wrappers and must be zeroed by the caller.
 */
import { createCipheriv, createHash, createHmac, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { LAYER_CIPHER } from './options.js';

export interface EncryptedLayerFile {
  /** `privopts` JSON (holds the key): zero it when done. */
  privateOptions: Buffer;
  /** `pubopts` JSON: cipher name and HMAC. */
  publicOptions: Buffer;
  /** Digest and size of the ciphertext written. */
  digest: string;
  size: number;
  /** Digest of the plaintext read (checked by the caller against the source descriptor). */
  plainDigest: string;
}

/** ocicrypt's `PrivateLayerBlockCipherOptions` JSON, Go field order. */
export function privateOptionsJson(symkey: Buffer, digest: string, nonce: Buffer): Buffer {
  return Buffer.from(JSON.stringify({ symkey: symkey.toString('base64'), digest, cipheroptions: { nonce: nonce.toString('base64') } }));
}

/** ocicrypt's `PublicLayerBlockCipherOptions` JSON (no nonce: that is private). */
export function publicOptionsJson(hmac: Buffer): Buffer {
  return Buffer.from(JSON.stringify({ cipher: LAYER_CIPHER, hmac: hmac.toString('base64'), cipheroptions: {} }));
}

export async function encryptLayerFile(src: string, dst: string, onBytes?: (n: number) => void): Promise<EncryptedLayerFile> {
  const symkey = randomBytes(32);
  const nonce = randomBytes(16);
  try {
    const cipher = createCipheriv('aes-256-ctr', symkey, nonce);
    const hmac = createHmac('sha256', symkey);
    const plainHash = createHash('sha256');
    const encHash = createHash('sha256');
    let size = 0;
    await pipeline(
      createReadStream(src, { highWaterMark: 1 << 20 }),
      async function* (source: AsyncIterable<Buffer>) {
        for await (const chunk of source) {
          plainHash.update(chunk);
          const ct = cipher.update(chunk);
          hmac.update(ct);
          encHash.update(ct);
          size += ct.length;
          onBytes?.(chunk.length);
          yield ct;
        }
        cipher.final(); // CTR has no padding: nothing more to write
      },
      createWriteStream(dst, { flags: 'wx', mode: 0o644 }),
    );
    const plainDigest = `sha256:${plainHash.digest('hex')}`;
    return {
      privateOptions: privateOptionsJson(symkey, plainDigest, nonce),
      publicOptions: publicOptionsJson(hmac.digest()),
      digest: `sha256:${encHash.digest('hex')}`,
      size,
      plainDigest,
    };
  } finally {
    symkey.fill(0);
  }
}
