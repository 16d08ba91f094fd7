import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { HOLDBACK_BYTES, LayerDecipher } from '../../../src/ocicrypt/layer-decipher.js';
import { decryptLayerStream } from '../../../src/ocicrypt/layer-stream.js';
import { layerCipherOptions, parsePrivateOptions, publicOptionsFromAnnotations, type LayerCipherOptions } from '../../../src/ocicrypt/options.js';
import { describeError } from '../../../src/util/errors.js';
import { chunkedSource as source, encryptLike } from '../../helpers/layer-cipher.js';

const V131 = join(import.meta.dirname, '../../fixtures/ocicrypt-v1.3.1');
const plain = readFileSync(join(V131, 'layer.tar.gz'));
const encrypted = readFileSync(join(V131, 'layer.tar.gz.enc'));
const descriptor = JSON.parse(readFileSync(join(V131, 'descriptor.json'), 'utf8')) as { annotations: Record<string, string> };
const fixtureOptions = (): LayerCipherOptions =>
  layerCipherOptions(publicOptionsFromAnnotations(descriptor.annotations), parsePrivateOptions(readFileSync(join(V131, 'privopts.json'))));

/** Collects everything written; optionally slow, to exercise backpressure. */
class Collector extends Writable {
  readonly chunks: Buffer[] = [];
  constructor(private readonly slow = false) {
    super({ highWaterMark: 1024 });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.chunks.push(chunk);
    if (this.slow) setImmediate(cb);
    else cb();
  }
  get data(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

async function run(input: Buffer, opts: LayerCipherOptions, chunk?: number, holdbackBytes?: number, slow = false) {
  const out = new Collector(slow);
  try {
    const n = await decryptLayerStream(source(input, chunk), out, new LayerDecipher(opts), { holdbackBytes });
    return { out: out.data, n, error: undefined as string | undefined };
  } catch (err) {
    return { out: out.data, n: -1, error: describeError(err) };
  }
}

describe('decrypting the real ocicrypt v1.3.1 layer', () => {
  it('produces exactly layer.tar.gz', async () => {
    for (const chunk of [64 * 1024, 4096, 1000, 1]) {
      const r = await run(encrypted, fixtureOptions(), chunk);
      expect(r.error).toBeUndefined();
      expect(r.n).toBe(plain.length);
      expect(r.out.equals(plain)).toBe(true);
    }
  });

  it('withholds the whole (40 KiB) layer when one ciphertext byte is flipped', async () => {
    const tampered = Buffer.from(encrypted);
    tampered[tampered.length - 1]! ^= 1;
    const r = await run(tampered, fixtureOptions());
    expect(r.error).toMatch(/^could not copy data: could not properly decrypt byte stream; exp hmac: '4adb83a92e520f8ac87ffa70893c416bdcf40287ddb131d89f4e21fe91072e1e': the layer's ciphertext does not match its HMAC \(tampered or truncated\)$/);
    expect(r.error).not.toMatch(/actual/);
    expect(r.out.length).toBe(0);
  });

  it('fails on a truncated stream', async () => {
    const r = await run(encrypted.subarray(0, encrypted.length - 100), fixtureOptions());
    expect(r.error).toMatch(/could not properly decrypt byte stream/);
    expect(r.out.length).toBeLessThan(plain.length);
  });

  it('fails on an extended stream', async () => {
    const r = await run(Buffer.concat([encrypted, Buffer.from([0])]), fixtureOptions());
    expect(r.error).toMatch(/could not properly decrypt byte stream/);
  });

  it('fails when the hmac annotation was tampered with, printing the expected HMAC only: never the real one, never the key', async () => {
    const opts = fixtureOptions();
    const keyHex = opts.key.toString('hex');
    opts.hmac = Buffer.from(opts.hmac);
    opts.hmac[0]! ^= 0x80;
    const r = await run(encrypted, opts);
    expect(r.error).toBe(
      `could not copy data: could not properly decrypt byte stream; exp hmac: '${opts.hmac.toString('hex')}': the layer's ciphertext does not match its HMAC (tampered or truncated)`,
    );
    expect(r.error).not.toContain(keyHex);
    expect(r.out.length).toBe(0);
  });
});

describe('holdback of the unauthenticated tail', () => {
  const big = randomBytes(1024 * 1024 + 12345);
  const { ciphertext, opts } = encryptLike(big);

  it('streams a large layer exactly, also into a slow writer (backpressure)', async () => {
    const r = await run(ciphertext, opts, 64 * 1024, undefined, true);
    expect(r.error).toBeUndefined();
    expect(r.out.equals(big)).toBe(true);
  });

  it('on tampering, emits only a prefix and withholds at least the holdback', async () => {
    const tampered = Buffer.from(ciphertext);
    tampered[tampered.length - 10]! ^= 0xff;
    const r = await run(tampered, opts);
    expect(r.error).toMatch(/could not properly decrypt byte stream/);
    expect(r.out.length).toBeGreaterThan(0);
    expect(r.out.length).toBeLessThanOrEqual(big.length - HOLDBACK_BYTES);
    expect(r.out.equals(big.subarray(0, r.out.length))).toBe(true);
  });

  it('on truncation, the output is strictly shorter than the plaintext by more than the holdback', async () => {
    const r = await run(ciphertext.subarray(0, ciphertext.length - 1), opts, 1000);
    expect(r.error).toMatch(/could not properly decrypt byte stream/);
    expect(big.length - r.out.length).toBeGreaterThanOrEqual(HOLDBACK_BYTES);
  });

  it('honours a custom holdback size', async () => {
    const r = await run(Buffer.concat([ciphertext, Buffer.from([1])]), opts, 4096, 256 * 1024);
    expect(r.error).toBeDefined();
    expect(big.length - r.out.length).toBeGreaterThanOrEqual(256 * 1024 - 1);
  });

  it('handles an empty layer', async () => {
    const e = encryptLike(Buffer.alloc(0));
    const r = await run(e.ciphertext, e.opts);
    expect(r.error).toBeUndefined();
    expect(r.n).toBe(0);
  });
});

describe('output errors', () => {
  it('turns a write error (EPIPE) into a one-line error and stops reading', async () => {
    const { ciphertext, opts } = encryptLike(randomBytes(512 * 1024));
    const out = new Writable({
      write(_chunk, _enc, cb) {
        const err = Object.assign(new Error('write EPIPE'), { code: 'EPIPE' });
        cb(err);
      },
    });
    const input = source(ciphertext);
    let message = '';
    await decryptLayerStream(input, out, new LayerDecipher(opts)).catch((err: unknown) => (message = describeError(err)));
    expect(message).toBe('could not copy data: write output: write EPIPE (the reader closed the pipe)');
    expect(input.destroyed).toBe(true);
  });

  it('reports an input error', async () => {
    const { opts } = encryptLike(Buffer.alloc(0));
    const input = new Readable({
      read() {
        this.destroy(Object.assign(new Error('read EIO'), { code: 'EIO' }));
      },
    });
    await expect(decryptLayerStream(input, new Collector(), new LayerDecipher(opts)).catch((e: unknown) => Promise.reject(new Error(describeError(e))))).rejects.toThrow(
      /^could not copy data: read input: read EIO$/,
    );
  });
});
