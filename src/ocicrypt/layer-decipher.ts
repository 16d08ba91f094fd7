/**
 * AES-256-CTR + HMAC-SHA256 layer decryption (ocicrypt `blockcipher/blockcipher_aes_ctr.go`). The HMAC covers the ciphertext and is only known at EOF,
 * so the tail of the plaintext is held back until it verifies: on a mismatch (tampering, truncation) the output
 * stays visibly incomplete and containerd's gunzip/diffID checks cannot mistake it for a whole layer.
 */
import { createDecipheriv, createHash, createHmac, timingSafeEqual, type Decipher, type Hash, type Hmac } from 'node:crypto';
import { Socket, type OnReadOpts, type SocketConstructorOpts } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { DecoderError } from '../util/errors.js';
import { YoungGc } from '../util/young-gc.js';
import type { LayerCipherOptions } from './options.js';

/** Plaintext withheld until the HMAC verifies (upstream holds 10 KiB). */
export const HOLDBACK_BYTES = 64 * 1024;
/**
 * Reused read buffer for pipe input. A pipe holds 64 KiB, and a larger buffer only costs: on this project's Linux
 * VM, 1 GiB from `cat` through a pipe takes ~0.45 s wall and ~0.25 s system time with 64 KiB reads, 0.8-1.1 s and
 * ~0.6 s with 256 KiB ones (or with 64 KiB reads walking through a 1 MiB buffer): the destination must stay in cache.
 */
const READ_BUFFER_BYTES = 64 * 1024;

const STAGE = 'could not copy data';

export interface LayerDecipherOptions extends LayerCipherOptions {
  /**
   * Strict mode (`[integrity] check_plain_digest`): the sha256 the plaintext must have, from the private options.
   * Checked in `verify()`, so before the held-back tail is released.
   */
  plainSha256?: Buffer;
  /**
   * The blob the ciphertext must be (digest and size): set when the layer's descriptor was found by the
   * content-store lookup rather than handed over by containerd, so that a wrong match cannot bind another
   * layer's annotations to this stream. Checked in `verify()`, before the held-back tail is released.
   */
  cipherDigest?: { algorithm: 'sha256' | 'sha384' | 'sha512'; digest: Buffer; size: number };
}

/** The cipher state of one layer. Creating it copies the key into OpenSSL, so the caller may zero its copy. */
export class LayerDecipher {
  readonly #decipher: Decipher;
  readonly #hmac: Hmac;
  readonly #expected: Buffer;
  readonly #plainHash: Hash | undefined;
  readonly #plainExpected: Buffer | undefined;
  readonly #cipherHash: Hash | undefined;
  readonly #cipherExpected: LayerDecipherOptions['cipherDigest'];
  #cipherBytes = 0;

  constructor(options: LayerDecipherOptions) {
    this.#decipher = createDecipheriv('aes-256-ctr', options.key, options.nonce);
    this.#hmac = createHmac('sha256', options.key);
    this.#expected = Buffer.from(options.hmac);
    if (options.plainSha256 !== undefined) {
      this.#plainExpected = Buffer.from(options.plainSha256);
      this.#plainHash = createHash('sha256');
    }
    if (options.cipherDigest !== undefined) {
      this.#cipherExpected = { ...options.cipherDigest, digest: Buffer.from(options.cipherDigest.digest) };
      this.#cipherHash = createHash(options.cipherDigest.algorithm);
    }
  }

  /** Authenticates then decrypts one ciphertext chunk (CTR: output length equals input length). */
  update(ciphertext: Buffer): Buffer {
    this.#hmac.update(ciphertext);
    if (this.#cipherHash !== undefined) {
      this.#cipherHash.update(ciphertext);
      this.#cipherBytes += ciphertext.length;
    }
    const plain = this.#decipher.update(ciphertext);
    this.#plainHash?.update(plain);
    return plain;
  }

  /** Throws unless the HMAC over all ciphertext seen matches the expected one. */
  verify(): void {
    this.#decipher.final();
    if (this.#cipherHash !== undefined && this.#cipherExpected !== undefined) {
      // Public data (ciphertext digests), but a mismatch means the lookup chose the wrong blob: say so first.
      const got = this.#cipherHash.digest();
      if (this.#cipherBytes !== this.#cipherExpected.size || !got.equals(this.#cipherExpected.digest)) {
        throw new DecoderError(
          `the layer on stdin (${this.#cipherBytes} bytes) is not the blob the content-store lookup matched ` +
            `(${this.#cipherExpected.algorithm}:${this.#cipherExpected.digest.toString('hex')}, ${this.#cipherExpected.size} bytes); nothing was released`,
          { stage: STAGE },
        );
      }
    }
    const actual = this.#hmac.digest();
    if (actual.length !== this.#expected.length || !timingSafeEqual(actual, this.#expected)) {
      actual.fill(0);
      // Only the expected HMAC (public, from pubopts) is shown: the one computed over an attacker's ciphertext
      // under our key would hand out a MAC oracle (ocicrypt prints both).
      throw new DecoderError(
        `could not properly decrypt byte stream; exp hmac: '${this.#expected.toString('hex')}': the layer's ciphertext does not match its HMAC (tampered or truncated)`,
        { stage: STAGE },
      );
    }
    if (this.#plainHash !== undefined && this.#plainExpected !== undefined) {
      const got = this.#plainHash.digest();
      const same = timingSafeEqual(got, this.#plainExpected);
      got.fill(0);
      // Neither digest is shown: both derive from decrypted data.
      if (!same) {
        throw new DecoderError('the decrypted layer does not have the sha256 digest its private options name ([integrity] check_plain_digest)', {
          stage: STAGE,
        });
      }
    }
  }
}

export interface DecryptStreamOptions {
  holdbackBytes?: number;
  /** Ciphertext already read from the input (the lookup's head), decrypted before the rest. */
  prefix?: Buffer;
}

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
    this.#gc.allocated(plain.length);
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
  }

  #write(): boolean {
    const chunk = this.#queue.shift()!;
    this.#queued -= chunk.length;
    this.#written += chunk.length;
    let ok = true;
    this.#lastWrite = new Promise((resolve) => {
      ok = this.out.write(chunk, (err) => {
        if (err) this.#onError(err);
        resolve();
      });
    });
    return ok;
  }

  #check(): void {
    if (this.#error === undefined) return;
    const code = (this.#error as NodeJS.ErrnoException).code;
    const hint = code === 'EPIPE' ? ' (the reader closed the pipe)' : '';
    throw new DecoderError(`write output: ${this.#error.message}${hint}`, { stage: STAGE, cause: this.#error });
  }
}

function readError(err: unknown): DecoderError {
  return err instanceof DecoderError ? err : new DecoderError(`read input: ${(err as Error).message}`, { stage: STAGE, cause: err });
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
