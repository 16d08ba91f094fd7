/**
 * The first bytes of stdin, read before the layer's key is known (the content-store lookup identifies the layer
 * by them) and handed to the decipher first afterwards. Reads exactly what is asked for, never more, so the rest
 * of the stream stays in the pipe for the reader that follows. `fs.read` runs in libuv's thread pool: a blocking
 * pipe just blocks that thread; a non-blocking one (EAGAIN) is polled. Either way the deadline ends the wait.
 */
import { read } from 'node:fs';
import { DecoderError } from '../util/errors.js';

const POLL_MS = 2;

export class StdinHead {
  #bytes = Buffer.alloc(0);
  #eof = false;

  constructor(
    private readonly fd: number,
    private readonly timeoutMs: number,
  ) {}

  /** All bytes read so far (the prefix of the stream). */
  get bytes(): Buffer {
    return this.#bytes;
  }

  /** True once EOF was seen: `bytes` is the whole stream. */
  get whole(): boolean {
    return this.#eof;
  }

  /** Reads until `n` bytes in all have been read from the start, or EOF. */
  async extend(n: number): Promise<{ head: Buffer; whole: boolean }> {
    const deadline = Date.now() + this.timeoutMs;
    while (!this.#eof && this.#bytes.length < n) {
      const buf = Buffer.allocUnsafe(n - this.#bytes.length);
      let got: number;
      try {
        got = await readOnce(this.fd, buf, deadline - Date.now(), this.timeoutMs);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EAGAIN' && code !== 'EWOULDBLOCK') {
          throw new DecoderError(`read input: ${(err as Error).message}`, { stage: 'could not copy data', cause: err });
        }
        if (Date.now() > deadline) throw new DecoderError(`read input: no data on stdin within ${this.timeoutMs} ms`, { stage: 'could not copy data' });
        await new Promise((r) => setTimeout(r, POLL_MS));
        continue;
      }
      if (got === 0) this.#eof = true;
      else this.#bytes = Buffer.concat([this.#bytes, buf.subarray(0, got)]);
    }
    return { head: this.#bytes, whole: this.#eof };
  }
}

/** One read, or a deadline error when a blocking read has not returned in time (its thread is left to the exit). */
function readOnce(fd: number, buf: Buffer, leftMs: number, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new DecoderError(`read input: no data on stdin within ${timeoutMs} ms`, { stage: 'could not copy data' })),
      Math.max(0, leftMs),
    );
    timer.unref();
    read(fd, buf, 0, buf.length, null, (err, n) => {
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(n);
    });
  });
}
