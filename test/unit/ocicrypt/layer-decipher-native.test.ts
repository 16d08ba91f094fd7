/**
 * The native fast path of the layer cipher (native/src/layer_cipher.cc over the node binary's OpenSSL) against
 * node:crypto: the same plaintext and the same HMAC verdicts for every chunking, pooled buffers reused only
 * after they were written, and the decoder's fallback to node:crypto when the addon cannot serve.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { loadTeeAddonFrom } from '../../../src/attest/native.js';
import { nativeLayerCipher } from '../../../src/cli/native-cipher.js';
import { LayerDecipher, type NativeLayerCipher } from '../../../src/ocicrypt/layer-decipher.js';
import { decryptLayerStream } from '../../../src/ocicrypt/layer-stream.js';
import type { LayerCipherOptions } from '../../../src/ocicrypt/options.js';
import { describeError } from '../../../src/util/errors.js';
import { chunkedSource as source, encryptLike } from '../../helpers/layer-cipher.js';

const ADDON = join(import.meta.dirname, '../../../native/build/Release/tee.node');
const native: NativeLayerCipher | undefined = existsSync(ADDON) ? loadTeeAddonFrom({ addonPath: ADDON }) : undefined;

/** Copies every chunk at write time: what a pipe does (the kernel copies), unlike a collector keeping references. */
class CopyingSink extends Writable {
  readonly chunks: Buffer[] = [];
  constructor(private readonly slow = false) {
    super({ highWaterMark: 16 * 1024 });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.chunks.push(Buffer.from(chunk));
    if (this.slow) setImmediate(cb);
    else cb();
  }
  get data(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

async function decrypt(ciphertext: Buffer, opts: LayerCipherOptions, chunk: number, engine: NativeLayerCipher | undefined, slow = false) {
  const out = new CopyingSink(slow);
  try {
    const n = await decryptLayerStream(source(ciphertext, chunk), out, new LayerDecipher({ ...opts, native: engine }));
    return { out: out.data, n, error: undefined as string | undefined };
  } catch (err) {
    return { out: out.data, n: -1, error: describeError(err) };
  }
}

describe.skipIf(native === undefined)('the native layer cipher', () => {
  it('decrypts exactly as node:crypto for every chunking, through the holdback and backpressure', async () => {
    const plain = randomBytes(777_777);
    const { ciphertext, opts } = encryptLike(plain);
    for (const [chunk, slow] of [[64 * 1024, false], [64 * 1024, true], [65_537, false], [4096, true], [1, false]] as const) {
      const input = chunk === 1 ? ciphertext.subarray(0, 5_000) : ciphertext;
      const o = chunk === 1 ? encryptLikeSame(opts, input) : opts;
      const viaNative = await decrypt(input, o, chunk, native, slow);
      const viaNode = await decrypt(input, o, chunk, undefined, slow);
      expect(viaNative.error, `chunk ${chunk}`).toBeUndefined();
      expect(viaNative.out.equals(viaNode.out), `chunk ${chunk}`).toBe(true);
      expect(viaNative.out.equals(plain.subarray(0, input.length)), `chunk ${chunk}`).toBe(true);
    }
  });

  it('refuses a flipped ciphertext byte like node:crypto does, and never releases the last 64 KiB', async () => {
    const plain = randomBytes(300_000);
    const { ciphertext, opts } = encryptLike(plain);
    const bad = Buffer.from(ciphertext);
    bad[123_456]! ^= 1;
    const viaNative = await decrypt(bad, opts, 64 * 1024, native);
    const viaNode = await decrypt(bad, opts, 64 * 1024, undefined);
    expect(viaNative.error).toMatch(/does not match its HMAC/);
    expect(viaNative.error).toBe(viaNode.error);
    expect(viaNative.out.length).toBeLessThanOrEqual(plain.length - 64 * 1024);
  });

  it('an empty layer: the HMAC of nothing', async () => {
    const { ciphertext, opts } = encryptLike(Buffer.alloc(0));
    const r = await decrypt(ciphertext, opts, 64 * 1024, native);
    expect(r.error).toBeUndefined();
    expect(r.n).toBe(0);
  });

  it('rejects wrong key and nonce sizes, and dead handles, with an error instead of a crash', () => {
    expect(() => native!.cipherNew(Buffer.alloc(16), Buffer.alloc(16))).toThrow(/32-byte key and a 16-byte nonce/);
    const h = native!.cipherNew(randomBytes(32), randomBytes(16));
    native!.cipherFinal(h);
    expect(() => native!.cipherUpdate(h, Buffer.alloc(1), Buffer.alloc(1))).toThrow(/not a live cipher handle/);
    expect(() => native!.cipherUpdate({}, Buffer.alloc(1), Buffer.alloc(1))).toThrow(/not a live cipher handle/);
    const h2 = native!.cipherNew(randomBytes(32), randomBytes(16));
    expect(() => native!.cipherUpdate(h2, Buffer.alloc(8), Buffer.alloc(4))).toThrow(/dst shorter than src/);
    native!.cipherFree(h2);
  });
});

/** Options for a prefix of a layer: the same key and nonce, the HMAC over that prefix. */
function encryptLikeSame(opts: LayerCipherOptions, ciphertext: Buffer): LayerCipherOptions {
  return { ...opts, hmac: createHmac('sha256', opts.key).update(ciphertext).digest() };
}

describe('choosing the cipher', () => {
  it('COCO_DECODER_NATIVE_CIPHER=0 forces node:crypto; an addon that cannot load means node:crypto too', async () => {
    expect(await nativeLayerCipher({ COCO_DECODER_NATIVE_CIPHER: '0' }, ADDON)).toBeUndefined();
    // Outside a SEA the loader falls back to the development build, so only a missing one shows the fallback.
    if (existsSync(ADDON)) expect(await nativeLayerCipher({}, ADDON)).toBeDefined();
  });
});
