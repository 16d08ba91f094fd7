/**
 * Two references for the decoder's throughput, measured on the same layer file through the same kind of pipes:
 *  - evp-decode.c, built here with the system's gcc against libssl-dev: HMAC + AES-256-CTR in C over OpenSSL's
 *    EVP API, the achievable decode limit of this machine with no language runtime;
 *  - upstream's own ctd-decoder 1.1.11 (Go ocicrypt), extracted from ../shared/containerd/'s imgcrypt .deb with
 *    dpkg-deb -x into a private directory (never installed).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/decoder-binary.js';
import { sharedDir } from '../helpers/shared-dir.js';

/** Builds evp-decode; a reason string when gcc or the OpenSSL headers are missing. */
export function buildEvpDecode(tmp: string): string | { skip: string } {
  if (!existsSync('/usr/include/openssl/evp.h')) return { skip: 'no OpenSSL headers (apt-get install libssl-dev)' };
  const out = join(tmp, 'evp-decode');
  try {
    execFileSync('gcc', ['-O2', '-Wall', '-o', out, join(REPO_ROOT, 'test', 'bench', 'evp-decode.c'), '-lcrypto'], { timeout: 60_000, stdio: 'pipe' });
  } catch (err) {
    return { skip: `gcc failed: ${String((err as { stderr?: Buffer }).stderr ?? err).slice(0, 200)}` };
  }
  return out;
}

export interface PipeRun {
  ms: number;
  userMs: number;
  sysMs: number;
  peakRssKiB: number;
}

/** `cat FILE | BIN > /dev/null`, GNU time around BIN only (its own CPU and RSS), wall time around both. */
export function runThroughPipe(bin: string, file: string, timeoutMs = 300_000): Promise<PipeRun> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn('sh', ['-c', 'cat "$0" | /usr/bin/time -f "%U %S %M" "$1" > /dev/null', file, bin], { stdio: ['ignore', 'ignore', 'pipe'], timeout: timeoutMs });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const ms = performance.now() - t0;
      const m = /(\d+\.\d+) (\d+\.\d+) (\d+)\s*$/.exec(err);
      if (code !== 0 || !m) return reject(new Error(`${bin} through a pipe failed (exit ${code}): ${err.slice(-200)}`));
      resolve({ ms, userMs: Number(m[1]) * 1000, sysMs: Number(m[2]) * 1000, peakRssKiB: Number(m[3]) });
    });
  });
}

/** upstream ctd-decoder 1.1.11 from ../shared/containerd/, or a reason why not. */
export function extractCtdDecoder(tmp: string): string | { skip: string } {
  const shared = sharedDir();
  if (shared === undefined) return { skip: 'no ../shared/containerd next to this checkout (set COCO_SHARED_DIR)' };
  const deb = join(shared, 'containerd', 'imgcrypt_1.1.11-5_amd64.deb');
  if (!existsSync(deb)) return { skip: `${deb} is not there` };
  const dir = mkdtempSync(join(tmp, 'imgcrypt-'));
  try {
    execFileSync('dpkg-deb', ['-x', deb, dir], { timeout: 60_000, stdio: 'pipe' });
  } catch (err) {
    return { skip: `dpkg-deb -x failed: ${String(err).slice(0, 200)}` };
  }
  const bin = join(dir, 'usr', 'bin', 'ctd-decoder');
  return existsSync(bin) ? bin : { skip: `no usr/bin/ctd-decoder in ${deb}` };
}
