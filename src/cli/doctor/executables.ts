/** Finding and identifying the programs containerd would run (`exec.LookPath` semantics), with deadlines. */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, realpath, stat } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';

/** systemd's default PATH, which containerd.service inherits when the environment has none. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** The absolute, symlink-free path of an executable regular file, or undefined. Bare names are looked up in PATH. */
export async function findExecutable(name: string, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  if (name === '') return undefined;
  const candidates = name.includes('/')
    ? [isAbsolute(name) ? name : resolve('/', name)] // containerd runs with / as its working directory
    : (env['PATH'] || DEFAULT_PATH).split(':').filter((d) => d !== '').map((d) => join(d, name));
  for (const c of candidates) {
    try {
      const st = await stat(c);
      if (!st.isFile()) continue;
      await access(c, constants.X_OK);
      return await realpath(c);
    } catch {
      // not here
    }
  }
  return undefined;
}

export interface RunResult {
  ok: boolean;
  stdout: string;
  /** Why it did not run cleanly (spawn error, exit code, timeout). */
  problem?: string;
}

/** Runs `file args` with a deadline and a minimal environment, capturing a bounded stdout. */
export function runQuietly(file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<RunResult> {
  return new Promise((done) => {
    execFile(
      file,
      args,
      { timeout: timeoutMs, maxBuffer: 64 * 1024, env: { PATH: env['PATH'] || DEFAULT_PATH }, killSignal: 'SIGKILL' },
      (err, stdout) => {
        if (!err) return done({ ok: true, stdout: String(stdout) });
        const e = err as NodeJS.ErrnoException & { killed?: boolean; code?: number | string };
        const problem = e.killed ? `no answer within ${timeoutMs} ms` : typeof e.code === 'number' ? `exit status ${e.code}` : (e.code ?? e.message);
        done({ ok: false, stdout: String(stdout ?? ''), problem: String(problem) });
      },
    );
  });
}

export interface ContainerdVersion {
  text: string;
  major: number;
  minor: number;
  patch: number;
}

/** `containerd --version`, e.g. `containerd github.com/containerd/containerd/v2 v2.1.4 <commit>`; undefined when absent. */
export async function containerdVersion(env: NodeJS.ProcessEnv): Promise<ContainerdVersion | undefined> {
  const bin = await findExecutable('containerd', env);
  if (bin === undefined) return undefined;
  const r = await runQuietly(bin, ['--version'], env, 5000);
  if (!r.ok) return undefined;
  return parseContainerdVersion(r.stdout);
}

export function parseContainerdVersion(output: string): ContainerdVersion | undefined {
  const token = output.trim().split(/\s+/)[2] ?? '';
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(token);
  if (!m) return undefined;
  return { text: token.replace(/^v/, ''), major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3]) };
}
