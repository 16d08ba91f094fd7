/**
 * The layer through Node streams, where the addon's fd pump (LayerDecipher.decryptFd) cannot run: no addon, or
 * `COCO_DECODER_NATIVE_CIPHER=0`, or a Readable that is not a file descriptor (tests, files). The same holdback
 * and verify-before-release rules; a module of its own so that node:net and the stream machinery are loaded only
 * on this path.
 */
import { Socket, type OnReadOpts, type SocketConstructorOpts } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { DecoderError } from '../util/errors.js';
import { YoungGc } from '../util/young-gc.js';
import { HOLDBACK_BYTES, readInputError, writeOutputError, type DecryptStreamOptions, type LayerDecipher } from './layer-decipher.js';

/**
 * Reused read buffer for pipe input. A pipe holds 64 KiB, and a larger buffer only costs: the destination must
 * stay in cache (256 KiB reads measured twice the wall and system time; README, Performance).
 */
const READ_BUFFER_BYTES = 64 * 1024;


/**
 * Ciphertext in, plaintext out, with the holdback: a chunk of plaintext is written only while at least
 * `holdback` bytes stay queued behind it; the rest goes out after `finish()` has verified the HMAC. Memory is
 * the holdback plus what the sink buffers (its high-water mark), whatever the layer size.
 */
class LayerPump {
  readonly #queue: Buffer[] = [];
  readonly #gc = new YoungGc();
  #queued = 0;
  #written = 0;
  #error: Error | undefined;
  #lastWrite: Promise<void> = Promise.resolve();
  readonly #onError = (err: Error): void => {
    this.#error ??= err;
  };

  constructor(
    private readonly decipher: LayerDecipher,
    private readonly out: Writable,
    private readonly holdback: number,
  ) {
    out.on('error', this.#onError);
  }

  /** Feeds one ciphertext chunk (used synchronously: it may be a reused buffer). False: wait for `drained()`. */
  push(ciphertext: Buffer): boolean {
    this.#check();
    const plain = this.decipher.update(ciphertext);
    this.#gc.allocated(this.decipher.freshBytes);
    if (plain.length > 0) {
      this.#queue.push(plain);
      this.#queued += plain.length;
    }
    let ok = true;
    while (this.#queue.length > 0 && this.#queued - this.#queue[0]!.length >= this.holdback) ok = this.#write() && ok;
    return ok;
  }

  /** Resolves when the sink wants more data (or failed; the next call reports it). */
  drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        this.out.off('drain', done);
        this.out.off('error', done);
        this.out.off('close', done);
        resolve();
      };
      this.out.on('drain', done);
      this.out.on('error', done);
      this.out.on('close', done);
    });
  }

  /** At EOF: verifies the HMAC, releases the held-back tail, waits until it was handed to the OS. */
  async finish(): Promise<number> {
    this.#check();
    this.decipher.verify();
    while (this.#queue.length > 0) {
      if (!this.#write()) await this.drained();
      this.#check();
    }
    await this.#lastWrite;
    this.#check();
    return this.#written;
  }

  dispose(): void {
    this.out.off('error', this.#onError);
    // Withheld plaintext of a failed layer: unauthenticated, never released, so not left in the heap either.
    // Released chunks are not zeroed: containerd writes them to the snapshot anyway, and zeroing every chunk after
    // its write measured 5% of throughput.
    for (const chunk of this.#queue.splice(0)) chunk.fill(0);
    this.#queued = 0;
    this.decipher.dispose();
  }

  #write(): boolean {
    const chunk = this.#queue.shift()!;
    this.#queued -= chunk.length;
    this.#written += chunk.length;
    let ok = true;
    this.#lastWrite = new Promise((resolve) => {
      ok = this.out.write(chunk, (err) => {
        if (err) this.#onError(err);
        else this.decipher.release(chunk);
        resolve();
      });
    });
    return ok;
  }

  #check(): void {
    if (this.#error === undefined) return;
    const code = (this.#error as NodeJS.ErrnoException).code;
    throw writeOutputError(this.#error.message, code, this.#error);
  }
}

function readError(err: unknown): DecoderError {
  return err instanceof DecoderError ? err : readInputError((err as Error).message, err);
}

/**
 * Streams ciphertext from a Readable (files, tests) through `decipher` into `output`. Does not end `output`
 * (process.stdout must not be ended). Returns the number of plaintext bytes written.
 */
export async function decryptLayerStream(
  input: Readable,
  output: Writable,
  decipher: LayerDecipher,
  options: DecryptStreamOptions = {},
): Promise<number> {
  const pump = new LayerPump(decipher, output, options.holdbackBytes ?? HOLDBACK_BYTES);
  try {
    try {
      if (options.prefix !== undefined && options.prefix.length > 0 && !pump.push(options.prefix)) await pump.drained();
      for await (const chunk of input as AsyncIterable<Buffer>) {
        if (!pump.push(chunk)) await pump.drained();
      }
    } catch (err) {
      throw readError(err);
    }
    return await pump.finish();
  } finally {
    pump.dispose();
  }
}

/**
 * The same from a pipe or socket file descriptor (containerd's stdin), reading into one reused buffer: a fresh
 * 64 KiB allocation per read costs more CPU than the AES itself.
 */
export function decryptLayerFd(
  fd: number,
  output: Writable,
  decipher: LayerDecipher,
  options: DecryptStreamOptions = {},
): Promise<number> {
  const pump = new LayerPump(decipher, output, options.holdbackBytes ?? HOLDBACK_BYTES);
  return new Promise<number>((resolve, reject) => {
    let failed = false;
    // The prefix fits in the holdback (the lookup reads at most 64 KiB), so pushing it never needs a drain.
    if (options.prefix !== undefined && options.prefix.length > 0) pump.push(options.prefix);
    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      input.destroy();
      reject(readError(err));
    };
    // `onread` (documented for net.Socket, honoured by its constructor) is missing from @types/node's constructor type.
    const opts: SocketConstructorOpts & { onread: OnReadOpts } = {
      fd,
      readable: true,
      writable: false,
      onread: {
        buffer: Buffer.allocUnsafeSlow(READ_BUFFER_BYTES),
        callback: (n: number, buf: Uint8Array): boolean => {
          try {
            if (pump.push(Buffer.from(buf.buffer, buf.byteOffset, n))) return true;
          } catch (err) {
            fail(err);
            return false;
          }
          void pump.drained().then(() => {
            if (!failed) input.resume();
          });
          return false;
        },
      },
    };
    const input = new Socket(opts);
    input.on('error', fail);
    input.on('end', () => {
      if (failed) return;
      pump.finish().then((n) => {
        input.destroy();
        resolve(n);
      }, fail);
    });
  }).finally(() => pump.dispose());
}
