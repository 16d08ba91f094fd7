/**
 * What Node's own crypto API can do for our layer cipher in this process, with no I/O: `Decipher.update` and
 * `Hmac.update` over the same reused 64 KiB buffer (the chunk size where Node's per-call output allocation costs
 * least). The decoder is built on this API, so this is its practical ceiling; openssl speed works in place and is
 * several times faster for AES-CTR.
 */
import { createDecipheriv, createHmac, randomBytes } from 'node:crypto';

const CHUNK = 64 * 1024;

export interface NodeCryptoSpeed {
  bytes: number;
  /** AES-256-CTR + HMAC-SHA256 together, bytes per CPU second. */
  combinedCpuBytesPerSec: number;
  /** Each alone, bytes per CPU second. */
  aesCpuBytesPerSec: number;
  hmacCpuBytesPerSec: number;
}

function cpuSeconds(run: () => void): number {
  const before = process.cpuUsage();
  run();
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1e6;
}

/** Best of `rounds` (this is a shared machine: the best round is the least disturbed one). */
export function nodeCryptoSpeed(bytes = 256 * 1024 * 1024, rounds = 3): NodeCryptoSpeed {
  let best: NodeCryptoSpeed | undefined;
  for (let i = 0; i < rounds; i++) {
    const r = nodeCryptoSpeedOnce(bytes);
    best = best
      ? {
          bytes: r.bytes,
          combinedCpuBytesPerSec: Math.max(best.combinedCpuBytesPerSec, r.combinedCpuBytesPerSec),
          aesCpuBytesPerSec: Math.max(best.aesCpuBytesPerSec, r.aesCpuBytesPerSec),
          hmacCpuBytesPerSec: Math.max(best.hmacCpuBytesPerSec, r.hmacCpuBytesPerSec),
        }
      : r;
  }
  return best!;
}

function nodeCryptoSpeedOnce(bytes: number): NodeCryptoSpeed {
  const key = randomBytes(32);
  const buf = randomBytes(CHUNK);
  const loops = Math.ceil(bytes / CHUNK);
  const total = loops * CHUNK;
  const aes = () => createDecipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const hmac = () => createHmac('sha256', key);
  const both = cpuSeconds(() => {
    const d = aes();
    const h = hmac();
    for (let i = 0; i < loops; i++) {
      h.update(buf);
      d.update(buf);
    }
    h.digest();
  });
  const aesOnly = cpuSeconds(() => {
    const d = aes();
    for (let i = 0; i < loops; i++) d.update(buf);
  });
  const hmacOnly = cpuSeconds(() => {
    const h = hmac();
    for (let i = 0; i < loops; i++) h.update(buf);
    h.digest();
  });
  key.fill(0);
  return {
    bytes: total,
    combinedCpuBytesPerSec: total / both,
    aesCpuBytesPerSec: total / aesOnly,
    hmacCpuBytesPerSec: total / hmacOnly,
  };
}
