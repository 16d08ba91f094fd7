/**
 * Reading containerd's payload from fd 3 safely (containerd `diff/stream_processor.go` hands it over as `ExtraFiles[0]`). containerd passes fd 3 only when it has a payload for
 * the processor id; otherwise Node's own libuv descriptors (`anon_inode:[eventpoll]`) sit at fd 3 and reading them
 * would block or return garbage. So: probe first, then read with a size bound and a deadline.
 */
import fs from 'node:fs';
import { DecoderError } from '../util/errors.js';

export const PAYLOAD_FD = 3;
/** Real payloads are a few KiB (a descriptor with wrapped keys); anything near this is not a payload. */
export const PAYLOAD_MAX_BYTES = 16 * 1024 * 1024;
/** containerd writes the payload from a goroutine right after start; a pipe that never reaches EOF is not it. */
export const PAYLOAD_TIMEOUT_MS = 10_000;

export type PayloadFdKind = 'fifo' | 'socket' | 'file';
export type PayloadFdProbe = { present: true; kind: PayloadFdKind } | { present: false; reason: string };

const STAGE = 'read payload';

/** Why there is no fd 3, phrased for the operator who has to fix containerd's config. */
export const MISSING_PAYLOAD_HELP =
  'containerd passes the layer descriptor on fd 3 only to the stream processors with ids ' +
  '"io.containerd.ocicrypt.decoder.v1.tar" and "io.containerd.ocicrypt.decoder.v1.tar.gzip" ' +
  '(for zstd layers, add "application/vnd.oci.image.layer.v1.tar+zstd+encrypted" to the accepts of the tar.gzip ' +
  'processor instead of defining a tar.zstd one), and only for pulls that carry decryption options ' +
  '(containerd 2.x CRI: only with use_local_image_pull = true, from 2.1.7/2.2.2; plain ctr never sends it)';

/** Decides whether `fd` is a payload descriptor containerd gave us, without reading from it. */
export function probePayloadFd(fd: number = PAYLOAD_FD): PayloadFdProbe {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    return { present: false, reason: `fd ${fd} is not open (${code})` };
  }
  let target: string | undefined;
  try {
    target = fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    // No /proc: fall back to the fstat type alone (libuv's epoll/eventfd are neither FIFOs nor files).
  }
  if (target?.startsWith('anon_inode:')) {
    return { present: false, reason: `fd ${fd} is the runtime's own ${target}, not a pipe from containerd` };
  }
  if (isWriteOnly(fd)) {
    // Inherited from whatever started us (GNU time's -o file, a shell redirection): containerd's is a read end.
    return { present: false, reason: `fd ${fd} is open write-only${target ? ` (${target})` : ''}, not a payload pipe from containerd` };
  }
  if (st.isFIFO()) return { present: true, kind: 'fifo' };
  if (st.isSocket()) return { present: true, kind: 'socket' };
  if (st.isFile()) return { present: true, kind: 'file' };
  return { present: false, reason: `fd ${fd} is ${target ?? 'not a pipe'}, not a payload pipe` };
}

/** O_WRONLY, from the `flags:` line of /proc/self/fdinfo (octal); false when /proc cannot tell. */
function isWriteOnly(fd: number): boolean {
  try {
    const m = /^flags:\s*([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1'));
    return m !== null && (parseInt(m[1]!, 8) & 3) === 1;
  } catch {
    return false;
  }
}

export interface ReadPayloadOptions {
  fd?: number;
  maxBytes?: number;
  timeoutMs?: number;
  /** The caller's own `probePayloadFd(fd)` result, so that fd 3 is not probed twice. */
  probe?: PayloadFdProbe;
  /** Reads pipes and sockets; default: a libuv stream (node:net). */
  readPipe?: PipeReader;
}

function tooLarge(maxBytes: number): DecoderError {
  return new DecoderError(`payload on fd 3 exceeds ${maxBytes} bytes; not a containerd payload`, { stage: STAGE });
}

function readRegularFile(fd: number, maxBytes: number): Buffer {
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const chunk = Buffer.allocUnsafe(64 * 1024);
    const n = fs.readSync(fd, chunk, 0, chunk.length, null);
    if (n === 0) break;
    total += n;
    if (total > maxBytes) throw tooLarge(maxBytes);
    chunks.push(chunk.subarray(0, n));
  }
  fs.closeSync(fd);
  return Buffer.concat(chunks, total);
}

/** How a bounded pipe read ended when it did not reach EOF (see PipeReader). */
export type PipeReadFailure = { reason: 'timeout' | 'too-large' } | { reason: 'error'; code: string };

/**
 * Reads a pipe or socket to EOF within `maxBytes` and `timeoutMs` (the addon's readFd, wired in by the CLI).
 * Without one, a libuv stream on the descriptor does it (fd3-socket.ts, which loads node:net).
 */
export type PipeReader = (fd: number, maxBytes: number, timeoutMs: number) => Promise<Buffer | PipeReadFailure>;

/** The one wording of each way a payload pipe read fails, whichever reader ran. */
function pipeReadError(f: PipeReadFailure, maxBytes: number, timeoutMs: number): DecoderError {
  switch (f.reason) {
    case 'timeout':
      return new DecoderError(`no EOF on fd 3 within ${timeoutMs} ms; not a containerd payload pipe`, { stage: STAGE });
    case 'too-large':
      return tooLarge(maxBytes);
    case 'error':
      return new DecoderError(`read configFd: ${f.code}`, { stage: STAGE });
  }
}

async function readPipe(fd: number, maxBytes: number, timeoutMs: number, reader: PipeReader | undefined): Promise<Buffer> {
  const read = reader ?? (await import('./fd3-socket.js')).readPipeWithSocket;
  const got = await read(fd, maxBytes, timeoutMs);
  if (Buffer.isBuffer(got)) return got;
  throw pipeReadError(got, maxBytes, timeoutMs);
}

/**
 * Reads the whole payload from fd 3. Throws a one-line DecoderError (`read payload: …`) when fd 3 is absent, too
 * large, or never reaches EOF.
 */
export async function readPayloadFd(options: ReadPayloadOptions = {}): Promise<Buffer> {
  const fd = options.fd ?? PAYLOAD_FD;
  const maxBytes = options.maxBytes ?? PAYLOAD_MAX_BYTES;
  const timeoutMs = options.timeoutMs ?? PAYLOAD_TIMEOUT_MS;
  const probe = options.probe ?? probePayloadFd(fd);
  if (!probe.present) {
    throw new DecoderError(`no payload: ${probe.reason}; ${MISSING_PAYLOAD_HELP}`, { stage: STAGE });
  }
  if (probe.kind === 'file') {
    try {
      return readRegularFile(fd, maxBytes);
    } catch (err) {
      if (err instanceof DecoderError) throw err;
      throw new DecoderError(`read configFd: ${(err as Error).message}`, { stage: STAGE, cause: err });
    }
  }
  return readPipe(fd, maxBytes, timeoutMs, options.readPipe);
}
