/**
 * AES-256-CTR + HMAC-SHA256 layer decryption (ocicrypt `blockcipher/blockcipher_aes_ctr.go`). The HMAC covers the ciphertext and is only known at EOF,
 * so the tail of the plaintext is held back until it verifies: on a mismatch (tampering, truncation) the output
 * stays visibly incomplete and containerd's gunzip/diffID checks cannot mistake it for a whole layer.
 */
import { createDecipheriv, createHash, createHmac, timingSafeEqual, type Decipher, type Hash, type Hmac } from 'node:crypto';
import { getSystemErrorName } from 'node:util';
import { DecoderError } from '../util/errors.js';
import type { LayerCipherOptions } from './options.js';

/** Plaintext withheld until the HMAC verifies (upstream holds 10 KiB). */
export const HOLDBACK_BYTES = 64 * 1024;

const STAGE = 'could not copy data';

/** A failed read of the ciphertext, worded once for both copy paths (the native pump and layer-stream.ts). */
export function readInputError(detail: string, cause?: unknown): DecoderError {
  return new DecoderError(`read input: ${detail}`, { stage: STAGE, cause });
}

/** A failed write of the plaintext; `code` is the errno name when known (EPIPE: containerd stopped reading). */
export function writeOutputError(detail: string, code: string | undefined, cause?: unknown): DecoderError {
  const hint = code === 'EPIPE' ? ' (the reader closed the pipe)' : '';
  return new DecoderError(`write output: ${detail}${hint}`, { stage: STAGE, cause });
}

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
  /**
   * The fd-to-fd pump (native/src/layer_pump.cc, addon ABI 4): reads, MACs, decrypts and writes on a worker
   * thread, holding the last `holdback` bytes until `pumpRelease`. Absent from older addons.
   */
  pumpNew?(cipher: unknown, inFd: number, outFd: number, holdback: number, prefix: Buffer | null, cipherDigest: '' | 'sha256' | 'sha384' | 'sha512', plainSha256: boolean): unknown;
  pumpRun?(pump: unknown, cipher: unknown, done: (err: NativePumpFailure | null, outcome?: NativePumpOutcome) => void): void;
  pumpRelease?(pump: unknown): number;
  pumpFree?(pump: unknown): void;
}

/** How a native pump failed: the stage and its errno (0 for an OpenSSL failure). */
export interface NativePumpFailure {
  stage: 'read' | 'write' | 'cipher';
  errno: number;
}

/** What a native pump measured by EOF; `held` plaintext bytes wait for `pumpRelease`. */
export interface NativePumpOutcome {
  cipherBytes: number;
  written: number;
  held: number;
  cipherDigest?: Buffer;
  plainDigest?: Buffer;
}

/** What the stream saw, measured by whoever read it (this process, or the native pump). */
interface Measured {
  cipherBytes: number;
  cipherDigest: Buffer | undefined;
  plainDigest: Buffer | undefined;
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
  #pump: unknown;
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
    if (this.#pump !== undefined) this.native.pumpFree?.(this.#pump);
    this.#pump = undefined;
    if (!this.#done) this.native.cipherFree(this.#handle);
    this.#done = true;
    for (const b of this.#pool.splice(0)) b.fill(0);
  }

  get canPump(): boolean {
    const n = this.native;
    return typeof n.pumpNew === 'function' && typeof n.pumpRun === 'function' && typeof n.pumpRelease === 'function' && typeof n.pumpFree === 'function';
  }

  /** Runs the native pump to EOF; its tail stays held until `releasePump`. */
  pump(inFd: number, outFd: number, holdback: number, prefix: Buffer | undefined, cipherDigest: '' | 'sha256' | 'sha384' | 'sha512', plainSha256: boolean): Promise<NativePumpOutcome> {
    const pump = this.native.pumpNew!(this.#handle, inFd, outFd, holdback, prefix ?? null, cipherDigest, plainSha256);
    this.#pump = pump;
    return new Promise((resolve, reject) => {
      this.native.pumpRun!(pump, this.#handle, (err, outcome) => (err ? reject(pumpError(err)) : resolve(outcome!)));
    });
  }

  /** Writes the held tail (after verify); the total plaintext written. */
  releasePump(): number {
    const pump = this.#pump;
    this.#pump = undefined;
    try {
      return this.native.pumpRelease!(pump);
    } catch (err) {
      throw pumpError({ stage: 'write', errno: Number((err as { errno?: unknown }).errno) || 0 });
    }
  }
}

function pumpError(f: NativePumpFailure): DecoderError {
  const name = f.errno > 0 ? getSystemErrorName(-f.errno) : 'OpenSSL failed';
  if (f.stage === 'read') return readInputError(name);
  if (f.stage === 'write') return writeOutputError(name, name);
  return new DecoderError('the layer cipher failed (OpenSSL)', { stage: STAGE });
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
  /** Set when the native pump read the stream: its measurements replace the hashes above. */
  #pumped: Measured | undefined;
  /** Ciphertext has gone through `update` or `decryptFd`: the other one may not start. */
  #used = false;

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
    if (this.#pumped !== undefined) throw new DecoderError('update after decryptFd', { stage: STAGE });
    this.#used = true;
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
    const measured: Measured = this.#pumped ?? {
      cipherBytes: this.#cipherBytes,
      cipherDigest: this.#cipherHash?.digest(),
      plainDigest: this.#plainHash?.digest(),
    };
    if (this.#cipherExpected !== undefined) {
      // Public data (ciphertext digests), but a mismatch means the lookup chose the wrong blob: say so first.
      const got = measured.cipherDigest;
      if (measured.cipherBytes !== this.#cipherExpected.size || got === undefined || !got.equals(this.#cipherExpected.digest)) {
        measured.plainDigest?.fill(0);
        throw new DecoderError(
          `the layer on stdin (${measured.cipherBytes} bytes) is not the blob the content-store lookup matched ` +
            `(${this.#cipherExpected.algorithm}:${this.#cipherExpected.digest.toString('hex')}, ${this.#cipherExpected.size} bytes); nothing was released`,
          { stage: STAGE },
        );
      }
    }
    if (actual.length !== this.#expected.length || !timingSafeEqual(actual, this.#expected)) {
      actual.fill(0);
      measured.plainDigest?.fill(0);
      // Only the expected HMAC (public, from pubopts) is shown: the one computed over an attacker's ciphertext
      // under our key would hand out a MAC oracle (ocicrypt prints both).
      throw new DecoderError(
        `could not properly decrypt byte stream; exp hmac: '${this.#expected.toString('hex')}': the layer's ciphertext does not match its HMAC (tampered or truncated)`,
        { stage: STAGE },
      );
    }
    if (this.#plainExpected !== undefined) {
      const got = measured.plainDigest ?? Buffer.alloc(0);
      const same = got.length === this.#plainExpected.length && timingSafeEqual(got, this.#plainExpected);
      got.fill(0);
      // Neither digest is shown: both derive from decrypted data.
      if (!same) {
        throw new DecoderError('the decrypted layer does not have the sha256 digest its private options name ([integrity] check_plain_digest)', {
          stage: STAGE,
        });
      }
    }
  }

  /** Whether `decryptFd` can run: the native cipher with its pump (addon ABI 4). */
  get canDecryptFd(): boolean {
    return this.#engine instanceof NativeEngine && this.#engine.canPump;
  }

  /**
   * The whole layer from `inFd` to `outFd` on the addon's worker thread, with the same holdback: everything but
   * the last `holdbackBytes` is written as it is decrypted, then `verify()` runs on what the pump measured, and
   * only then is the held tail written. Needs `canDecryptFd`; use once, instead of `update`. Returns the
   * plaintext bytes written.
   */
  async decryptFd(inFd: number, outFd: number, options: DecryptStreamOptions = {}): Promise<number> {
    const engine = this.#engine;
    if (!(engine instanceof NativeEngine) || !engine.canPump || this.#used) {
      throw new DecoderError('decryptFd needs a fresh native layer cipher with its pump', { stage: STAGE });
    }
    this.#used = true;
    const outcome = await engine.pump(
      inFd,
      outFd,
      options.holdbackBytes ?? HOLDBACK_BYTES,
      options.prefix,
      this.#cipherExpected?.algorithm ?? '',
      this.#plainExpected !== undefined,
    );
    this.#pumped = { cipherBytes: outcome.cipherBytes, cipherDigest: outcome.cipherDigest, plainDigest: outcome.plainDigest };
    this.verify();
    return engine.releasePump();
  }
}

export interface DecryptStreamOptions {
  holdbackBytes?: number;
  /** Ciphertext already read from the input (the lookup's head), decrypted before the rest. */
  prefix?: Buffer;
}
