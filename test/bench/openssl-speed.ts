/**
 * The machine's own limit for our layer cipher, from `openssl speed` on one core: AES-256-CTR (`-evp
 * aes-256-ctr`) and HMAC-SHA256 (`-hmac sha256`, OpenSSL 3.0's spelling; `-evp sha256` if that is refused), on
 * 64 KiB buffers. `-mr` output gives the operation count and the CPU (user) seconds; the wall time is the
 * `-seconds` alarm. Both throughputs are returned so they can be compared like for like on a shared machine.
 */
import { execFile } from 'node:child_process';

export interface SpeedResult {
  /** What was actually measured, e.g. `AES-256-CTR`, `hmac(sha256)`, `sha256`. */
  algorithm: string;
  command: string;
  /** Bytes per CPU second (openssl's own figure). */
  cpuBytesPerSec: number;
  /** Bytes per wall-clock second. */
  wallBytesPerSec: number;
}

const BLOCK = 65536;

function run(args: string[], timeoutMs: number): Promise<{ ok: boolean; out: string }> {
  return new Promise((resolve) => {
    execFile('openssl', args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ ok: !err, out: `${stdout}\n${stderr}` });
    });
  });
}

/** Parses `+R:<count>:<alg>:<seconds>` from `openssl speed -mr`. */
export function parseSpeed(out: string, seconds: number): Omit<SpeedResult, 'command'> | undefined {
  const m = /^\+R:(\d+):([^:\n]+):([\d.]+)\s*$/m.exec(out);
  if (!m) return undefined;
  const count = Number(m[1]);
  const cpuSeconds = Number(m[3]);
  if (!(count > 0) || !(cpuSeconds > 0)) return undefined;
  return { algorithm: m[2]!, cpuBytesPerSec: (count * BLOCK) / cpuSeconds, wallBytesPerSec: (count * BLOCK) / seconds };
}

async function speed(selection: string[], seconds: number): Promise<SpeedResult | undefined> {
  const args = ['speed', '-mr', '-seconds', String(seconds), '-bytes', String(BLOCK), ...selection];
  const { ok, out } = await run(args, (seconds + 30) * 1000);
  if (!ok) return undefined;
  const parsed = parseSpeed(out, seconds);
  return parsed && { ...parsed, command: `openssl ${args.join(' ')}` };
}

export async function opensslVersion(): Promise<string> {
  const { out } = await run(['version'], 10_000);
  return out.trim().split('\n')[0] ?? 'unknown';
}

export async function aesCtrSpeed(seconds: number): Promise<SpeedResult> {
  const r = await speed(['-evp', 'aes-256-ctr'], seconds);
  if (!r) throw new Error('openssl speed -evp aes-256-ctr failed');
  return r;
}

export async function hmacSha256Speed(seconds: number): Promise<SpeedResult & { fallback: boolean }> {
  const hmac = await speed(['-hmac', 'sha256'], seconds);
  if (hmac) return { ...hmac, fallback: false };
  const digest = await speed(['-evp', 'sha256'], seconds);
  if (!digest) throw new Error('neither openssl speed -hmac sha256 nor -evp sha256 worked');
  return { ...digest, fallback: true };
}

/** Throughput of doing both over the same bytes on one core. */
export function combined(a: number, b: number): number {
  return 1 / (1 / a + 1 / b);
}
