/**
 * Runs a stream processor exactly as containerd does: layer media type in
 * `STREAM_PROCESSOR_MEDIATYPE`, the encrypted blob on stdin, the payload (`encodePayload`) on fd 3, the decrypted
 * blob on stdout. Used by the benchmark, the demo and tests.
 *
 * stdin: a file path goes through a real pipe by default (a FIFO fed by `cat`, as containerd feeds an `os.Pipe`), so
 * the decoder takes its pipe path and the harness never touches the bytes; `inputVia: 'file'` passes the file's fd
 * instead. A Buffer or stream is written through a Node pipe. stdout: a path or `/dev/null` ('discard') is passed
 * as an fd (the harness is never the bottleneck); 'buffer' collects it. Every run has a deadline.
 */
import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable, Writable } from 'node:stream';
import { encodePayload, type PayloadDescriptor, type PayloadParameters } from './payload.js';

const GNU_TIME = '/usr/bin/time';

type StdioEntry = 'pipe' | number;
const DEFAULT_TIMEOUT_MS = 120_000;

export interface RunDecoderOptions {
  binary: string;
  args?: string[];
  /** The child's whole environment (default `process.env`); `STREAM_PROCESSOR_MEDIATYPE` is added from the descriptor unless set. */
  env?: NodeJS.ProcessEnv;
  /** The layer descriptor from the manifest, annotations included. */
  descriptor: PayloadDescriptor;
  /** `DecryptConfig.Parameters` (default Go nil, as in a CRI pull). */
  params?: PayloadParameters;
  /** Raw fd-3 bytes instead of `encodePayload(descriptor, params)`; `null`: no fd 3 at all. */
  payload?: Buffer | null;
  /** The encrypted blob: a file path, bytes or a stream. */
  input: string | Buffer | NodeJS.ReadableStream;
  /** For a path: 'pipe' (default, a real pipe as from containerd) or 'file' (the file's own fd as stdin). */
  inputVia?: 'pipe' | 'file';
  /** A file path to write, 'discard' (/dev/null) or 'buffer' (returned as `stdout`). */
  output: string;
  /** Exact peak RSS and CPU times through GNU time (falls back to polling /proc VmHWM without it). */
  measure?: boolean;
  timeoutMs?: number;
}

export interface RunDecoderResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  stderr: string;
  stdout?: Buffer;
  /** Wall time from spawn to exit. */
  ms: number;
  /** Only with `measure`. */
  peakRssKiB?: number;
  userMs?: number;
  sysMs?: number;
}

/** A real pipe (FIFO) whose read end is `read` and write end `write`, both blocking; `cleanup` removes the node. */
function openFifo(): { read: number; write: number; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'run-decoder-'));
  const path = join(dir, 'stdin');
  const made = spawnSync('mkfifo', ['-m', '600', path], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
  if (made.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`mkfifo failed: ${made.stderr?.toString().trim() ?? made.error?.message ?? 'unknown error'}`);
  }
  // O_RDWR never blocks on a FIFO; holding it lets the read-only and write-only opens complete without a peer.
  const holder = openSync(path, 'r+');
  try {
    const read = openSync(path, 'r');
    const write = openSync(path, 'w');
    return { read, write, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
  } finally {
    closeSync(holder);
  }
}

function peakRssFromProc(pid: number): number | undefined {
  try {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

export async function runDecoder(opts: RunDecoderOptions): Promise<RunDecoderResult> {
  const env = { ...(opts.env ?? process.env) };
  env.STREAM_PROCESSOR_MEDIATYPE ??= opts.descriptor.mediaType;
  const payload = opts.payload === undefined ? encodePayload(opts.descriptor, opts.params) : opts.payload;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;

  const toClose: number[] = [];
  const cleanups: Array<() => void> = [];
  let feeder: ChildProcess | undefined;
  let child: ChildProcess | undefined;
  try {
    // ---- stdin ----
    let stdin: StdioEntry = 'pipe';
    if (typeof opts.input === 'string') {
      if ((opts.inputVia ?? 'pipe') === 'file') {
        stdin = openSync(opts.input, 'r');
        toClose.push(stdin);
      } else {
        const fifo = openFifo();
        cleanups.push(fifo.cleanup);
        toClose.push(fifo.read, fifo.write);
        stdin = fifo.read;
        feeder = spawn('cat', ['--', opts.input], { stdio: ['ignore', fifo.write, 'pipe'] });
        feeder.on('error', () => {});
      }
    }
    // ---- stdout ----
    let stdout: StdioEntry = 'pipe';
    if (opts.output === 'discard') {
      stdout = openSync('/dev/null', 'w');
      toClose.push(stdout);
    } else if (opts.output !== 'buffer') {
      stdout = openSync(opts.output, 'w');
      toClose.push(stdout);
    }

    let command = opts.binary;
    let args = opts.args ?? [];
    let timeFile: string | undefined;
    if (opts.measure && existsSync(GNU_TIME)) {
      const dir = mkdtempSync(join(tmpdir(), 'run-decoder-time-'));
      cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
      timeFile = join(dir, 'time');
      args = ['-f', '%M %U %S', '-o', timeFile, command, ...args];
      command = GNU_TIME;
    }

    const stdio: StdioOptions = payload === null ? [stdin, stdout, 'pipe'] : [stdin, stdout, 'pipe', 'pipe'];
    const started = performance.now();
    const proc = spawn(command, args, { stdio, env });
    child = proc;
    // The child holds its own copies now; ours would keep the pipe open (no EOF) or just leak.
    for (const fd of toClose.splice(0)) closeSync(fd);

    const stderrChunks: Buffer[] = [];
    const stdoutChunks: Buffer[] = [];
    proc.stderr?.on('data', (c: Buffer) => stderrChunks.push(c));
    proc.stdout?.on('data', (c: Buffer) => stdoutChunks.push(c));

    const fd3 = proc.stdio[3] as Writable | null | undefined;
    if (payload !== null && fd3) {
      fd3.on('error', () => {}); // the decoder may fail before reading it
      fd3.end(payload);
    }
    if (proc.stdin) {
      proc.stdin.on('error', () => {}); // EPIPE when the decoder exits early
      if (Buffer.isBuffer(opts.input)) proc.stdin.end(opts.input);
      else if (typeof opts.input !== 'string') {
        pipeline(opts.input as Readable, proc.stdin).catch(() => {});
      }
    }

    let peakPolled: number | undefined;
    const poller =
      opts.measure && timeFile === undefined && proc.pid !== undefined
        ? setInterval(() => {
            const v = peakRssFromProc(proc.pid!);
            if (v !== undefined) peakPolled = Math.max(peakPolled ?? 0, v);
          }, 20)
        : undefined;

    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      proc.kill('SIGKILL');
      feeder?.kill('SIGKILL');
    }, timeoutMs);

    const { code, signal, ms } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>(
      (resolve, reject) => {
        let exit: { code: number | null; signal: NodeJS.Signals | null; ms: number } | undefined;
        proc.once('error', reject);
        proc.once('exit', (c, s) => {
          exit = { code: c, signal: s, ms: performance.now() - started };
        });
        // 'close' comes after stdio drained; the wall time is taken at 'exit'.
        proc.once('close', () => resolve(exit ?? { code: null, signal: null, ms: performance.now() - started }));
      },
    ).finally(() => {
      clearTimeout(timer);
      if (poller) clearInterval(poller);
    });

    if (feeder && feeder.exitCode === null && feeder.signalCode === null) {
      // The decoder is gone: a feeder still blocked on the pipe gets EPIPE; make sure it ends.
      const f = feeder;
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          f.kill('SIGKILL');
        }, 5_000);
        f.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
        if (f.exitCode !== null || f.signalCode !== null) {
          clearTimeout(t);
          resolve();
        }
      });
    }

    const result: RunDecoderResult = {
      code,
      signal,
      timedOut,
      stderr: Buffer.concat(stderrChunks).toString('utf8'),
      ms,
    };
    if (opts.output === 'buffer') result.stdout = Buffer.concat(stdoutChunks);
    if (timeFile !== undefined) {
      const text = existsSync(timeFile) ? readFileSync(timeFile, 'utf8') : '';
      // GNU time prefixes "Command exited with non-zero status N" on its own line; the figures are the last line.
      const m = /(\d+) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)\s*$/.exec(text);
      if (m) {
        result.peakRssKiB = Number(m[1]);
        result.userMs = Number(m[2]) * 1000;
        result.sysMs = Number(m[3]) * 1000;
      }
    } else if (peakPolled !== undefined) {
      result.peakRssKiB = peakPolled;
    }
    return result;
  } finally {
    for (const fd of toClose) closeSync(fd);
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    if (feeder && feeder.exitCode === null && feeder.signalCode === null) feeder.kill('SIGKILL');
    for (const c of cleanups) c();
  }
}
