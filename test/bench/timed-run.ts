/**
 * Runs a command under GNU time (`/usr/bin/time`), with a deadline: wall time, CPU time and peak RSS of the
 * command itself (and the children it waited for).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TimedResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
  wallMs: number;
  userMs: number;
  sysMs: number;
  peakRssKiB: number;
}

export async function timedRun(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs: number; cwd?: string },
): Promise<TimedResult> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-time-'));
  const out = join(dir, 'time');
  try {
    const started = performance.now();
    const child = spawn('/usr/bin/time', ['-f', '%M %U %S', '-o', out, cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
      cwd: opts.cwd,
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => stdout.push(c));
    child.stderr.on('data', (c: Buffer) => stderr.push(c));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    const { code, signal, wallMs } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; wallMs: number }>(
      (resolve, reject) => {
        let wall = 0;
        child.once('error', reject);
        child.once('exit', () => (wall = performance.now() - started));
        child.once('close', (c, s) => resolve({ code: c, signal: s, wallMs: wall || performance.now() - started }));
      },
    ).finally(() => clearTimeout(timer));
    let text = '';
    try {
      text = readFileSync(out, 'utf8');
    } catch {
      // killed before GNU time wrote anything
    }
    const m = /(\d+) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)\s*$/.exec(text);
    return {
      code,
      signal,
      timedOut,
      stdout: Buffer.concat(stdout).toString('utf8'),
      stderr: Buffer.concat(stderr).toString('utf8'),
      wallMs,
      peakRssKiB: m ? Number(m[1]) : Number.NaN,
      userMs: m ? Number(m[2]) * 1000 : Number.NaN,
      sysMs: m ? Number(m[3]) * 1000 : Number.NaN,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
