/**
 * Incompressible, reproducible bulk data for the benchmark: the AES-256-CTR keystream of a seed, produced in
 * 1 MiB chunks on demand (several GB/s, so generating it is never what the benchmark measures, and a multi-GiB
 * layer never sits in memory).
 */
import { createCipheriv, createHash } from 'node:crypto';
import { Readable } from 'node:stream';

const CHUNK = 1 << 20;

export function keystream(size: number, seed: string): Readable {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(CHUNK);
  let left = size;
  return new Readable({
    highWaterMark: CHUNK,
    read() {
      if (left <= 0) {
        this.push(null);
        return;
      }
      const n = Math.min(CHUNK, left);
      left -= n;
      this.push(cipher.update(n === CHUNK ? zeros : zeros.subarray(0, n)));
    },
  });
}
