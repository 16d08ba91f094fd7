/**
 * Cross-process single flight for attestation: when containerd unpacks N layers at once, one process attests and
 * the others wait, then read its token from the cache.
 *
 * The lock is a Linux abstract-namespace Unix socket: binding a name is atomic and exclusive, and the kernel
 * releases it the moment the holder exits, however it exits. So there is no stale lock file to detect, no pid
 * reuse race, and nothing on disk. Waiters connect to the holder and are woken by the connection closing (on
 * release or death) instead of polling. The name is derived from the cache directory, the cache scope and the uid.
 * Abstract names carry no permissions, so another local process could squat the name: that only delays us up to
 * `cache.lock_timeout_ms`, after which the caller attests without the lock (two attestations, never a failure).
 */
import { createHash } from 'node:crypto';
import { realpath } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface HeldLock {
  release(): Promise<void>;
}

export type LockOutcome =
  | { acquired: true; lock: HeldLock; waitedMs: number }
  /** Not acquired within the timeout (or the signal fired): proceed without single flight. */
  | { acquired: false; waitedMs: number };

export async function lockName(dir: string, scopeFile: string): Promise<string> {
  const real = await realpath(dir).catch(() => dir);
  const uid = process.getuid?.() ?? 0;
  const digest = createHash('sha256').update(`${uid}\n${real}\n${scopeFile}`).digest('hex').slice(0, 40);
  return `\0coco-decoder/attest/${digest}`;
}

export async function acquireLock(name: string, timeoutMs: number, signal: AbortSignal): Promise<LockOutcome> {
  const start = Date.now();
  const deadline = start + timeoutMs;
  for (;;) {
    const server = await tryBind(name);
    if (server) return { acquired: true, lock: holdLock(server), waitedMs: Date.now() - start };
    const remaining = deadline - Date.now();
    if (remaining <= 0 || signal.aborted) return { acquired: false, waitedMs: Date.now() - start };
    const woke = await waitForHolder(name, remaining, signal);
    if (woke === 'refused') {
      // Bound but not accepting (released between our bind and connect, or a squatter): brief pause, retry.
      await sleep(10 + Math.floor(Math.random() * 20), undefined, { signal }).catch(() => undefined);
    }
  }
}

function tryBind(name: string): Promise<Server | undefined> {
  return new Promise((resolve, reject) => {
    const server = createServer({ pauseOnConnect: true });
    const onError = (err: NodeJS.ErrnoException): void => {
      server.close();
      if (err.code === 'EADDRINUSE') resolve(undefined);
      else reject(err);
    };
    server.once('error', onError);
    server.listen({ path: name, exclusive: true }, () => {
      server.off('error', onError);
      server.on('error', () => undefined);
      resolve(server);
    });
  });
}

function holdLock(server: Server): HeldLock {
  const waiters = new Set<Socket>();
  server.on('connection', (socket) => {
    waiters.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => waiters.delete(socket));
  });
  // Never keeps the process alive on its own.
  server.unref();
  let released = false;
  return {
    release(): Promise<void> {
      if (released) return Promise.resolve();
      released = true;
      return new Promise((resolve) => {
        server.close(() => resolve());
        for (const s of waiters) s.destroy();
      });
    },
  };
}

/** Resolves when the holder's connection closes ('closed'), the connect is refused, or time/signal runs out. */
function waitForHolder(name: string, timeoutMs: number, signal: AbortSignal): Promise<'closed' | 'refused' | 'timeout'> {
  return new Promise((resolve) => {
    const socket = createConnection({ path: name });
    let connected = false;
    const done = (why: 'closed' | 'refused' | 'timeout'): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      socket.destroy();
      resolve(why);
    };
    const onAbort = (): void => done('timeout');
    const timer = setTimeout(() => done('timeout'), timeoutMs);
    signal.addEventListener('abort', onAbort, { once: true });
    socket.on('connect', () => {
      connected = true;
    });
    socket.on('error', () => undefined);
    socket.on('close', () => done(connected ? 'closed' : 'refused'));
  });
}
