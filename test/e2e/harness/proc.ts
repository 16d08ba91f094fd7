/**
 * Process plumbing shared by the E2E servers: start a daemon with its output in a log file, stop it
 * (SIGTERM, then SIGKILL) and wait for it, pick free loopback ports in the range this harness owns.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import net from 'node:net';

/** Port range assigned to the E2E harness (TEAM.md: every server binds 127.0.0.1 inside its range). */
export const E2E_PORT_RANGE: readonly [number, number] = [15000, 15099];

export interface Daemon {
  readonly child: ChildProcess;
  readonly logFile: string;
  /** Resolves with the exit code/signal once the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  hasExited(): boolean;
}

export function startDaemon(cmd: string, args: string[], opts: { logFile: string; env: NodeJS.ProcessEnv; cwd?: string }): Daemon {
  const fd = openSync(opts.logFile, 'a');
  let child: ChildProcess;
  try {
    // Own process group: stopping the daemon can then also reap what it started (e.g. a hung stream processor).
    child = spawn(cmd, args, { stdio: ['ignore', fd, fd], env: opts.env, cwd: opts.cwd, detached: true });
  } finally {
    closeSync(fd);
  }
  let done = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      done = true;
      resolve({ code, signal });
    });
    child.once('error', () => {
      done = true;
      resolve({ code: null, signal: null });
    });
  });
  return { child, logFile: opts.logFile, exited, hasExited: () => done };
}

/**
 * SIGTERM, wait up to `graceMs`, then SIGKILL and wait (bounded) for the exit; finally SIGKILL whatever is left
 * in the daemon's own process group (children it started and did not reap, such as a hung stream processor).
 */
export async function stopDaemon(d: Daemon, graceMs = 5_000): Promise<void> {
  const pid = d.child.pid;
  if (!d.hasExited()) {
    d.child.kill('SIGTERM');
    if (!(await settlesWithin(d.exited, graceMs))) {
      d.child.kill('SIGKILL');
      if (!(await settlesWithin(d.exited, 5_000))) throw new Error(`process ${pid} did not exit after SIGKILL`);
    }
  }
  if (pid !== undefined) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }
}

async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The last `lines` lines of a log file ('' if it cannot be read). */
export function logTail(file: string, lines = 40): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.split('\n').slice(-lines - 1).join('\n');
  } catch {
    return '';
  }
}

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host: '127.0.0.1', exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/**
 * A port in `range` that is free right now, excluding `avoid`. Starts at a random offset so two harness
 * instances rarely race for the same port; callers still retry if the server fails to bind.
 */
export async function freePort(avoid: ReadonlySet<number> = new Set(), range = E2E_PORT_RANGE): Promise<number> {
  const [lo, hi] = range;
  const span = hi - lo + 1;
  const start = Math.floor(Math.random() * span);
  for (let i = 0; i < span; i++) {
    const port = lo + ((start + i) % span);
    if (!avoid.has(port) && (await portIsFree(port))) return port;
  }
  throw new Error(`no free port in 127.0.0.1:${lo}-${hi}`);
}

/** Polls `probe` every `intervalMs` until it returns true, the daemon dies, or `timeoutMs` passes. */
export async function waitUntil(
  what: string,
  probe: () => Promise<boolean>,
  opts: { timeoutMs: number; intervalMs?: number; daemon?: Daemon },
): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    if (opts.daemon?.hasExited()) {
      throw new Error(`${what}: the process exited during start-up\n${logTail(opts.daemon.logFile)}`);
    }
    if (await probe().catch(() => false)) return;
    if (Date.now() >= deadline) {
      throw new Error(`${what}: not ready after ${opts.timeoutMs} ms${opts.daemon ? `\n${logTail(opts.daemon.logFile)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  }
}
