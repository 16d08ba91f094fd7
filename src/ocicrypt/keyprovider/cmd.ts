/**
 * Runs a `cmd` key provider (ocicrypt `utils.Runner.Exec`): `path args…`, the protocol JSON on stdin, the
 * answer on stdout, stderr quoted in errors. Unlike upstream, every run has a deadline (upstream can hang
 * until containerd gives up on the whole unpack) and bounded output.
 */
import { spawn } from 'node:child_process';
import { DecoderError } from '../../util/errors.js';

export interface ProviderCommand {
  readonly path: string;
  readonly args: readonly string[];
}

export interface RunOptions {
  /** Deadline for the whole run; then SIGTERM, then SIGKILL after `killGraceMs`. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal | undefined;
  /** The child's environment (upstream: inherited). */
  readonly env?: NodeJS.ProcessEnv | undefined;
  readonly killGraceMs?: number;
  readonly maxStdoutBytes?: number;
  readonly maxStderrBytes?: number;
}

/** A privopts answer is a few hundred bytes; anything near this is not a key provider talking. */
export const DEFAULT_MAX_STDOUT = 1024 * 1024;
/** Kept for the error message; containerd copies all of our stderr into the pull error. */
export const DEFAULT_MAX_STDERR = 4096;
const DEFAULT_KILL_GRACE_MS = 1000;

/**
 * Returns the provider's stdout. Throws a DecoderError shaped like upstream's
 * `Error while running command: <path>. stderr: <stderr>: <reason>`.
 */
export function runProviderCommand(cmd: ProviderCommand, input: Buffer, opts: RunOptions): Promise<Buffer> {
  const maxStdout = opts.maxStdoutBytes ?? DEFAULT_MAX_STDOUT;
  const maxStderr = opts.maxStderrBytes ?? DEFAULT_MAX_STDERR;
  const grace = opts.killGraceMs ?? DEFAULT_KILL_GRACE_MS;

  return new Promise<Buffer>((resolve, reject) => {
    const stdout: Buffer[] = [];
    let stdoutLen = 0;
    const stderr: Buffer[] = [];
    let stderrLen = 0;
    let stderrTruncated = false;
    let settled = false;
    /** Set once we decided to kill the child; the reason reported when it is gone. */
    let killReason: string | undefined;
    let killTimer: NodeJS.Timeout | undefined;

    const wipeStdout = (): void => {
      for (const b of stdout) b.fill(0);
      stdout.length = 0;
    };

    const fail = (reason: string, cause?: unknown): void => {
      if (settled) return;
      settled = true;
      cleanup();
      wipeStdout();
      const text = Buffer.concat(stderr).toString('utf8').trimEnd() + (stderrTruncated ? ' …(truncated)' : '');
      reject(
        new DecoderError(`Error while running command: ${cmd.path}. stderr: ${text}: ${reason}`, {
          cause,
        }),
      );
    };

    // detached: the child leads its own process group, so a shell provider's children die with it.
    let child: ReturnType<typeof spawn>;
    try {
      child = spawn(cmd.path, [...cmd.args], {
        stdio: ['pipe', 'pipe', 'pipe'],
        env: opts.env ?? process.env,
        detached: true,
      });
    } catch (err) {
      // Synchronous spawn failures (e.g. an argument with a NUL byte).
      settled = true;
      reject(new DecoderError(`Error while running command: ${cmd.path}. stderr: : ${(err as Error).message}`, { cause: err }));
      return;
    }

    const killGroup = (sig: NodeJS.Signals): void => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, sig);
      } catch {
        try {
          child.kill(sig);
        } catch {
          /* already gone */
        }
      }
    };

    const terminate = (reason: string): void => {
      if (killReason !== undefined || settled) return;
      killReason = reason;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => {
        killGroup('SIGKILL');
        // The child might be unkillable (D state) or its exit never reported: do not wait any longer.
        killTimer = setTimeout(() => fail(reason), grace);
      }, grace);
    };

    const deadline = setTimeout(
      () => terminate(`no answer within ${opts.timeoutMs} ms (timed out; process killed)`),
      opts.timeoutMs,
    );
    const onAbort = (): void => terminate(`aborted (${describeReason(opts.signal?.reason)}; process killed)`);
    if (opts.signal?.aborted) onAbort();
    else opts.signal?.addEventListener('abort', onAbort, { once: true });

    function cleanup(): void {
      clearTimeout(deadline);
      if (killTimer) clearTimeout(killTimer);
      opts.signal?.removeEventListener('abort', onAbort);
      child.stdout?.destroy();
      child.stderr?.destroy();
      child.stdin?.destroy();
    }

    child.stdout!.on('data', (chunk: Buffer) => {
      if (killReason !== undefined) return;
      stdoutLen += chunk.length;
      if (stdoutLen > maxStdout) {
        chunk.fill(0);
        wipeStdout();
        terminate(`output exceeds ${maxStdout} bytes (process killed)`);
        return;
      }
      stdout.push(chunk);
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      const room = maxStderr - stderrLen;
      if (room <= 0) {
        stderrTruncated = true;
        return;
      }
      const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
      if (part.length < chunk.length) stderrTruncated = true;
      stderr.push(Buffer.from(part));
      stderrLen += part.length;
    });

    // A provider may exit without reading stdin; Go ignores the resulting EPIPE too.
    child.stdin!.on('error', () => {});
    child.stdin!.end(input);

    child.on('error', (err: NodeJS.ErrnoException) => {
      // Spawn failure: report it the way Go's exec does (`fork/exec <path>: no such file or directory`).
      if (err.syscall?.startsWith('spawn')) fail(`fork/exec ${cmd.path}: ${errnoText(err)}`, err);
      else fail(err.message, err);
    });

    child.on('close', (code, signal) => {
      if (killReason !== undefined) return fail(killReason);
      if (code === 0) {
        if (settled) return;
        settled = true;
        cleanup();
        const out = Buffer.concat(stdout, stdoutLen);
        wipeStdout();
        resolve(out);
        return;
      }
      fail(signal ? `signal: ${signal}` : `exit status ${code}`);
    });
  });
}

function errnoText(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ENOENT':
      return 'no such file or directory';
    case 'EACCES':
      return 'permission denied';
    default:
      return err.code ?? err.message;
  }
}

function describeReason(reason: unknown): string {
  if (reason instanceof Error) return reason.message;
  if (reason === undefined) return 'cancelled';
  return String(reason);
}
