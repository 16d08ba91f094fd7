/**
 * The ocicrypt layer cipher done independently of src/ (node:crypto directly), for tests that need to make or
 * check encrypted layers: AES-256-CTR with the nonce as the whole counter block, HMAC-SHA256 over the ciphertext
 * with the same key. Plus a readable that hands data out in chunks, like a pipe does.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { Readable } from 'node:stream';
import { expect } from 'vitest';
import type { LayerCipherOptions } from '../../src/ocicrypt/options.js';

/** Encrypts like ocicrypt under a fresh key and nonce; returns the ciphertext and the options to decrypt it. */
export function encryptLike(plaintext: Buffer): { ciphertext: Buffer; opts: LayerCipherOptions } {
  const key = randomBytes(32);
  const nonce = randomBytes(16);
  const c = createCipheriv('aes-256-ctr', key, nonce);
  const ciphertext = Buffer.concat([c.update(plaintext), c.final()]);
  return { ciphertext, opts: { key, nonce, hmac: createHmac('sha256', key).update(ciphertext).digest() } };
}

/** Decrypts a layer blob with its privopts JSON and base64 pubopts, asserting the HMAC first. */
export function decryptLayerBlob(blob: Buffer, privopts: Buffer, pubopts: string): Buffer {
  const priv = JSON.parse(privopts.toString('utf8'));
  const key = Buffer.from(priv.symkey, 'base64');
  const nonce = Buffer.from(priv.cipheroptions.nonce, 'base64');
  expect(key.length).toBe(32);
  expect(nonce.length).toBe(16);
  const pub = JSON.parse(Buffer.from(pubopts, 'base64').toString('utf8'));
  expect(timingSafeEqual(createHmac('sha256', key).update(blob).digest(), Buffer.from(pub.hmac, 'base64'))).toBe(true);
  const d = createDecipheriv('aes-256-ctr', key, nonce);
  return Buffer.concat([d.update(blob), d.final()]);
}

/** A readable that hands out `data` in chunks of `size`, like a pipe does. */
export function chunkedSource(data: Buffer, size = 64 * 1024): Readable {
  let off = 0;
  return new Readable({
    read() {
      if (off >= data.length) return void this.push(null);
      this.push(data.subarray(off, off + size));
      off += size;
    },
  });
}
