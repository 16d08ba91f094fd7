/**
 * The one cross-process lock: single flight for attestation (when containerd unpacks N layers at once, one
 * process attests and the others wait, then read its token from the cache) and serialised configfs-tsm reports.
 *
 * The lock is `flock(2)` on a file in a directory only root can write (the 0700 token cache directory, /run): no
 * other user can open it, so none can hold it (an abstract unix socket, the earlier design, has no permissions at
 * all and can be squatted by any local user). The kernel drops a flock when the last descriptor of its open file description
 * closes, so a holder that dies, however it dies, releases it: no stale lock, no PID check.
 *
 * Node has no flock(), so util-linux's `flock(1)` (Essential on Debian, always present on RHEL/SUSE) takes it on
 * our behalf: it gets our descriptor as its fd 3, locks that open file description and exits; the lock stays with
 * the description we still hold. The blocking wait happens in that child, so our event loop stays free to re-check
 * the cache while we wait (another process's token may already be there) and to give up at the deadline. Spawned
 * only on the cold path (no usable token), never per warm layer.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';

export interface HeldLock {
  release(): Promise<void>;
}

export type LockOutcome =
  | { acquired: true; lock: HeldLock; waitedMs: number }
  /**
   * Not acquired: `timeout` or `aborted` (proceed without single flight), `recheck` (the caller's check found what
   * it waited for), `unavailable` (no flock(1), or the lock file cannot be opened: proceed unlocked, warn).
   */
  | { acquired: false; reason: 'timeout' | 'aborted' | 'recheck' | 'unavailable'; waitedMs: number; detail?: string };

export interface LockOptions {
  /** Called every `recheckEveryMs` while waiting; true ends the wait (`reason: 'recheck'`). */
  recheck?: () => Promise<boolean>;
  recheckEveryMs?: number;
  /** Test seam: the flock(1) binary. */
  flockCommand?: string;
}

/** The lock file that goes with `file` (a token cache file): next to it, in the same root-only directory. */
export function lockPathFor(file: string): string {
  return path.join(path.dirname(file), `${path.basename(file)}.lock`);
}

export async function acquireLock(file: string, timeoutMs: number, signal: AbortSignal, opts: LockOptions = {}): Promise<LockOutcome> {
  const start = Date.now();
  const waited = (): number => Date.now() - start;
  let fh: FileHandle;
  try {
    // O_NOFOLLOW: a symlink planted here (the directory is root's, but be strict) is refused, not followed.
    fh = await open(file, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
  } catch (err) {
    return { acquired: false, reason: 'unavailable', waitedMs: waited(), detail: `cannot open ${file} (${(err as NodeJS.ErrnoException).code ?? String(err)})` };
  }
  const st = await fh.stat();
  if (!st.isFile() || st.uid !== (process.getuid?.() ?? st.uid)) {
    await fh.close();
    return { acquired: false, reason: 'unavailable', waitedMs: waited(), detail: `${file} is not a regular file owned by us` };
  }

  const outcome = await new Promise<'acquired' | 'timeout' | 'aborted' | 'recheck' | { unavailable: string }>((resolve) => {
    let settled = false;
    const seconds = Math.max(timeoutMs, 0) / 1000;
    const child = spawn(opts.flockCommand ?? 'flock', ['--exclusive', '--wait', seconds.toFixed(3), '3'], {
      stdio: ['ignore', 'ignore', 'pipe', fh.fd],
    });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      if (stderr.length < 300) stderr += d.toString('utf8');
    });
    let timer: NodeJS.Timeout | undefined;
    const finish = (v: Parameters<typeof resolve>[0]): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      resolve(v);
    };
    const onAbort = (): void => finish('aborted');
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    child.on('error', (err: NodeJS.ErrnoException) =>
      finish({ unavailable: err.code === 'ENOENT' ? 'flock(1) from util-linux is not installed or not in PATH' : `flock(1): ${err.message}` }),
    );
    child.on('exit', (code) => {
      if (code === 0) finish('acquired');
      else if (code === 1) finish('timeout'); // flock's conflict exit code: --wait ran out
      else finish({ unavailable: `flock(1) exited with ${code ?? 'a signal'}${stderr ? `: ${stderr.trim().slice(0, 200)}` : ''}` });
    });
    // A hard stop in case flock(1) itself misbehaves: never wait past the timeout by more than a little.
    const hardStop = setTimeout(() => finish('timeout'), Math.max(timeoutMs, 0) + 2000);
    hardStop.unref();
    const every = opts.recheckEveryMs ?? 250;
    const tick = (): void => {
      timer = setTimeout(() => {
        void (opts.recheck?.() ?? Promise.resolve(false)).then(
          (done) => (done ? finish('recheck') : settled || tick()),
          () => settled || tick(),
        );
      }, every);
    };
    if (opts.recheck) tick();
    child.on('exit', () => clearTimeout(hardStop));
  });

  if (outcome === 'acquired') {
    let released = false;
    return {
      acquired: true,
      waitedMs: waited(),
      lock: {
        async release(): Promise<void> {
          if (released) return;
          released = true;
          await fh.close(); // the last descriptor of the description: the kernel drops the flock
        },
      },
    };
  }
  // Killed or failed children may still have locked our description just before: closing it releases that too.
  await fh.close();
  if (typeof outcome === 'object') return { acquired: false, reason: 'unavailable', waitedMs: waited(), detail: outcome.unavailable };
  return { acquired: false, reason: outcome, waitedMs: waited() };
}
