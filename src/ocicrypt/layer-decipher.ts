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
 * Reused read buffer for pipe input. A pipe holds 64 KiB, and a larger buffer only costs: the destination must
 * stay in cache (256 KiB reads measured twice the wall and system time; README, Performance).
 */
const READ_BUFFER_BYTES = 64 * 1024;

const STAGE = 'could not copy data';

/**
 * A native AES-256-CTR + HMAC-SHA256 engine that writes into caller-owned buffers (the addon's layer cipher,
 * native/src/layer_cipher.cc, over the OpenSSL inside the node binary). Optional: without it, node:crypto.
 */
export interface NativeLayerCipher {
  cipherNew(key: Buffer, nonce: Buffer): unknown;
  /** HMAC over `src`, then `src` decrypted into `dst` (at least as long; may be `src`). */
  cipherUpdate(handle: unknown, src: Buffer, dst: Buffer): void;
  /** The HMAC over all ciphertext; releases the handle. */
  cipherFinal(handle: unknown): Buffer;
  cipherFree(handle: unknown): void;
}

/** Plaintext chunks of the native path come from a pool of this size (a pipe read is at most 64 KiB). */
const POOL_CHUNK_BYTES = 64 * 1024;
/**
 * Smaller chunks get a buffer of their own size instead: a pooled 64 KiB buffer per 1-byte read would make the
 * byte-counted holdback and stdout queue hold up to 64 KiB per byte. From here on a pooled buffer is ≥ 1/4 full.
 */
const POOL_MIN_CHUNK_BYTES = 16 * 1024;
/** Enough for the holdback plus stdout's buffer ahead of a slow reader; more are allocated if ever needed. */
const POOL_MAX_IDLE = 32;

/** The per-chunk cipher work, node:crypto or native: one of the two below. */
interface CipherEngine {
  /** Authenticates then decrypts; the result is valid until `release`d (native) or forever (node:crypto). */
  update(ciphertext: Buffer): Buffer;
  /** The HMAC over everything seen; the engine is finished. */
  finish(): Buffer;
  release(plain: Buffer): void;
  dispose(): void;
  /** Bytes the last `update` allocated afresh (young-generation GC is nudged by those). */
  readonly freshBytes: number;
}

class NodeCryptoEngine implements CipherEngine {
  freshBytes = 0;
  readonly #decipher: Decipher;
  readonly #hmac: Hmac;
  constructor(key: Buffer, nonce: Buffer) {
    this.#decipher = createDecipheriv('aes-256-ctr', key, nonce);
    this.#hmac = createHmac('sha256', key);
  }
  update(ciphertext: Buffer): Buffer {
    this.#hmac.update(ciphertext);
    this.freshBytes = ciphertext.length;
    return this.#decipher.update(ciphertext);
  }
  finish(): Buffer {
    this.#decipher.final();
    return this.#hmac.digest();
  }
  release(): void {}
  dispose(): void {}
}

/** The addon's cipher over pooled 64 KiB buffers: no allocation per chunk, so no garbage either. */
class NativeEngine implements CipherEngine {
  freshBytes = 0;
  readonly #handle: unknown;
  readonly #pool: Buffer[] = [];
  /** The pool's own buffers, known by identity: a chunk's shape says nothing (Node's allocUnsafe slabs look alike). */
  readonly #owned = new WeakSet<ArrayBufferLike>();
  #done = false;
  constructor(
    private readonly native: NativeLayerCipher,
    key: Buffer,
    nonce: Buffer,
  ) {
    this.#handle = native.cipherNew(key, nonce);
  }
  update(ciphertext: Buffer): Buffer {
    const n = ciphertext.length;
    const pooled = n >= POOL_MIN_CHUNK_BYTES && n <= POOL_CHUNK_BYTES;
    const reused = pooled ? this.#pool.pop() : undefined;
    let dst = reused;
    if (dst === undefined) {
      dst = pooled ? Buffer.allocUnsafeSlow(POOL_CHUNK_BYTES) : Buffer.allocUnsafe(n);
      if (pooled) this.#owned.add(dst.buffer);
    }
    this.freshBytes = reused ? 0 : dst.length;
    this.native.cipherUpdate(this.#handle, ciphertext, dst);
    return dst.subarray(0, ciphertext.length);
  }
  finish(): Buffer {
    this.#done = true;
    return this.native.cipherFinal(this.#handle);
  }
  release(plain: Buffer): void {
    // Only the pool's own buffers go back; anything else is left to the GC.
    if (this.#owned.has(plain.buffer) && this.#pool.length < POOL_MAX_IDLE && !this.#done) {
      this.#pool.push(Buffer.from(plain.buffer as ArrayBuffer, 0, POOL_CHUNK_BYTES));
    }
  }
  dispose(): void {
    if (!this.#done) this.native.cipherFree(this.#handle);
    this.#done = true;
    for (const b of this.#pool.splice(0)) b.fill(0);
  }
}

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
  /** The addon's fast path; node:crypto when absent. */
  native?: NativeLayerCipher | undefined;
}

/** The cipher state of one layer. Creating it copies the key into OpenSSL, so the caller may zero its copy. */
export class LayerDecipher {
  readonly #engine: CipherEngine;
  readonly #expected: Buffer;
  readonly #plainHash: Hash | undefined;
  readonly #plainExpected: Buffer | undefined;
  readonly #cipherHash: Hash | undefined;
  readonly #cipherExpected: LayerDecipherOptions['cipherDigest'];
  #cipherBytes = 0;

  constructor(options: LayerDecipherOptions) {
    this.#engine = options.native !== undefined ? new NativeEngine(options.native, options.key, options.nonce) : new NodeCryptoEngine(options.key, options.nonce);
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
    if (this.#cipherHash !== undefined) {
      this.#cipherHash.update(ciphertext);
      this.#cipherBytes += ciphertext.length;
    }
    const plain = this.#engine.update(ciphertext);
    this.#plainHash?.update(plain);
    return plain;
  }

  /** Bytes the last `update` allocated afresh: every chunk with node:crypto, only pool misses natively. */
  get freshBytes(): number {
    return this.#engine.freshBytes;
  }

  /** A chunk `update` returned has been written: its buffer may be reused. */
  release(plain: Buffer): void {
    this.#engine.release(plain);
  }

  /** The cipher state is no longer needed (after verify, or a failure). */
  dispose(): void {
    this.#engine.dispose();
  }

  /** Throws unless the HMAC over all ciphertext seen matches the expected one. */
  verify(): void {
    const actual = this.#engine.finish();
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
