/**
 * The addon's fd-to-fd pump (native/src/layer_pump.cc, driven by LayerDecipher.decryptFd): the same plaintext and
 * the same verdicts as the node:crypto stream path, the holdback kept until verify() passed on what the pump
 * measured (HMAC, the lookup's ciphertext digest, the strict plaintext digest), and one-line errors for read and
 * write failures. Real descriptors: files, and FIFOs fed and drained by child processes (non-blocking ends, so
 * the pump's EAGAIN/poll path runs too).
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { loadTeeAddonFrom } from '../../../src/attest/native.js';
import { HOLDBACK_BYTES, LayerDecipher, type LayerDecipherOptions, type NativeLayerCipher } from '../../../src/ocicrypt/layer-decipher.js';
import { decryptLayerStream } from '../../../src/ocicrypt/layer-stream.js';
import { describeError } from '../../../src/util/errors.js';
import { chunkedSource, encryptLike } from '../../helpers/layer-cipher.js';

const ADDON = join(import.meta.dirname, '../../../native/build/Release/tee.node');
const native: NativeLayerCipher | undefined = existsSync(ADDON) ? loadTeeAddonFrom({ addonPath: ADDON }) : undefined;
const dir = mkdtempSync(join(tmpdir(), 'layer-pump-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let seq = 0;
function file(data?: Buffer): string {
  const p = join(dir, `f${seq++}`);
  writeFileSync(p, data ?? Buffer.alloc(0));
  return p;
}

/** The pump from a file to a file; the output file's bytes are what a reader saw, even on failure. */
async function pumpFiles(ciphertext: Buffer, opts: Omit<LayerDecipherOptions, 'native'>, prefix?: Buffer) {
  const input = file(ciphertext);
  const output = file();
  const inFd = openSync(input, 'r');
  const outFd = openSync(output, 'w');
  const d = new LayerDecipher({ ...opts, native });
  try {
    expect(d.canDecryptFd).toBe(true);
    const n = await d.decryptFd(inFd, outFd, { prefix });
    return { n, out: readFileSync(output), error: undefined as string | undefined };
  } catch (err) {
    return { n: -1, out: readFileSync(output), error: describeError(err) };
  } finally {
    d.dispose();
    closeSync(inFd);
    closeSync(outFd);
  }
}

/** The node:crypto stream path over the same input, for the same verdict. */
async function viaStream(ciphertext: Buffer, opts: Omit<LayerDecipherOptions, 'native'>) {
  const chunks: Buffer[] = [];
  const sink = new Writable({ write: (c: Buffer, _e, cb) => (chunks.push(Buffer.from(c)), cb()) });
  try {
    await decryptLayerStream(chunkedSource(ciphertext), sink, new LayerDecipher(opts));
    return { out: Buffer.concat(chunks), error: undefined as string | undefined };
  } catch (err) {
    return { out: Buffer.concat(chunks), error: describeError(err) };
  }
}

describe.skipIf(native === undefined)('the native fd pump', () => {
  it('decrypts file to file exactly as the node:crypto stream path, for sizes around the holdback', async () => {
    for (const size of [0, 1, HOLDBACK_BYTES - 1, HOLDBACK_BYTES, HOLDBACK_BYTES + 1, 3 * 1024 * 1024 + 17]) {
      const plain = randomBytes(size);
      const { ciphertext, opts } = encryptLike(plain);
      const r = await pumpFiles(ciphertext, opts);
      expect(r.error, `size ${size}`).toBeUndefined();
      expect(r.n, `size ${size}`).toBe(size);
      expect(r.out.equals(plain), `size ${size}`).toBe(true);
    }
  });

  it('refuses a flipped byte with the stream path message and never writes the last 64 KiB', async () => {
    const plain = randomBytes(1_000_000);
    const { ciphertext, opts } = encryptLike(plain);
    const bad = Buffer.from(ciphertext);
    bad[500_000]! ^= 1;
    const r = await pumpFiles(bad, opts);
    expect(r.error).toMatch(/does not match its HMAC \(tampered or truncated\)$/);
    expect(r.error).toBe((await viaStream(bad, opts)).error);
    expect(r.out.length).toBeGreaterThan(0); // it streamed, as containerd expects
    expect(r.out.length).toBeLessThanOrEqual(plain.length - HOLDBACK_BYTES);
  });

  it('refuses a truncated stream, withholding the holdback', async () => {
    const plain = randomBytes(400_000);
    const { ciphertext, opts } = encryptLike(plain);
    const r = await pumpFiles(ciphertext.subarray(0, 300_000), opts);
    expect(r.error).toMatch(/does not match its HMAC/);
    expect(r.out.length).toBeLessThanOrEqual(300_000 - HOLDBACK_BYTES);
  });

  it('takes the prefix first, and checks the ciphertext against the looked-up blob before the tail goes out', async () => {
    const plain = randomBytes(500_000);
    const { ciphertext, opts } = encryptLike(plain);
    const digest = createHash('sha256').update(ciphertext).digest();
    const cipherDigest = { algorithm: 'sha256' as const, digest, size: ciphertext.length };
    const head = ciphertext.subarray(0, 32);
    const ok = await pumpFiles(ciphertext.subarray(32), { ...opts, cipherDigest }, head);
    expect(ok.error).toBeUndefined();
    expect(ok.out.equals(plain)).toBe(true);

    const wrong = await pumpFiles(ciphertext.subarray(32), { ...opts, cipherDigest: { ...cipherDigest, size: ciphertext.length + 1 } }, head);
    expect(wrong.error).toMatch(/is not the blob the content-store lookup matched .*nothing was released$/);
    expect(wrong.out.length).toBeLessThanOrEqual(plain.length - HOLDBACK_BYTES);
    const other = await pumpFiles(ciphertext.subarray(32), { ...opts, cipherDigest: { ...cipherDigest, algorithm: 'sha512', digest: randomBytes(64) } }, head);
    expect(other.error).toMatch(/is not the blob the content-store lookup matched/);
  });

  it('checks the strict plaintext digest before the tail goes out, and never prints it', async () => {
    const plain = randomBytes(200_000);
    const { ciphertext, opts } = encryptLike(plain);
    const good = createHash('sha256').update(plain).digest();
    expect((await pumpFiles(ciphertext, { ...opts, plainSha256: good })).error).toBeUndefined();
    const bad = await pumpFiles(ciphertext, { ...opts, plainSha256: randomBytes(32) });
    expect(bad.error).toMatch(/does not have the sha256 digest its private options name/);
    expect(bad.error).not.toContain(good.toString('hex'));
    expect(bad.out.length).toBeLessThanOrEqual(plain.length - HOLDBACK_BYTES);
  });

  it('reports a read failure and a closed reader in one line each', async () => {
    const { ciphertext, opts } = encryptLike(randomBytes(300_000));
    const dirFd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    const outFd = openSync(file(), 'w');
    const d1 = new LayerDecipher({ ...opts, native });
    await expect(d1.decryptFd(dirFd, outFd)).rejects.toThrow(/^read input: EISDIR$/);
    d1.dispose();
    closeSync(dirFd);
    closeSync(outFd);

    // A FIFO whose reader has gone: the first write fails with EPIPE (node ignores SIGPIPE).
    const fifo = join(dir, `fifo${seq++}`);
    execFileSync('mkfifo', [fifo]);
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const writer = openSync(fifo, constants.O_WRONLY);
    closeSync(reader);
    const inFd = openSync(file(ciphertext), 'r');
    const d2 = new LayerDecipher({ ...opts, native });
    await expect(d2.decryptFd(inFd, writer)).rejects.toThrow(/^write output: EPIPE \(the reader closed the pipe\)$/);
    d2.dispose();
    closeSync(inFd);
    closeSync(writer);
  });

  // With and without the ciphertext digest of a looked-up descriptor (hashed in the same loop as the HMAC).
  it.each([['payload', false], ['looked-up descriptor (ciphertext digest)', true]] as const)(
    'runs between non-blocking FIFOs fed and drained by other processes, as containerd runs it: %s',
    async (_name, lookedUp) => {
      const plain = randomBytes(5 * 1024 * 1024 + 3);
      const { ciphertext, opts: base } = encryptLike(plain);
      const opts = lookedUp
        ? { ...base, cipherDigest: { algorithm: 'sha256' as const, digest: createHash('sha256').update(ciphertext).digest(), size: ciphertext.length } }
        : base;
      const src = file(ciphertext);
      const fin = join(dir, `fifo${seq++}`);
      const fout = join(dir, `fifo${seq++}`);
      execFileSync('mkfifo', [fin, fout]);
      // Our ends are non-blocking: reads see EAGAIN until the feeder starts, writes see EAGAIN while the drain lags.
      const inFd = openSync(fin, constants.O_RDONLY | constants.O_NONBLOCK);
      const feedEnd = openSync(fin, constants.O_WRONLY);
      const drainEnd = openSync(fout, constants.O_RDONLY | constants.O_NONBLOCK);
      const outFd = openSync(fout, constants.O_WRONLY | constants.O_NONBLOCK);
      const feeder = spawn('sh', ['-c', 'sleep 0.2; exec cat "$1"', 'sh', src], { stdio: ['ignore', feedEnd, 'inherit'] });
      const drain = spawn('sh', ['-c', 'sleep 0.3; exec cat'], { stdio: [drainEnd, 'pipe', 'inherit'] });
      closeSync(feedEnd);
      closeSync(drainEnd);
      const got: Buffer[] = [];
      drain.stdout!.on('data', (c: Buffer) => got.push(c));
      const drained = new Promise((resolve) => drain.once('close', resolve));
      const d = new LayerDecipher({ ...opts, native });
      try {
        expect(await d.decryptFd(inFd, outFd)).toBe(plain.length);
      } finally {
        d.dispose();
        closeSync(inFd);
        closeSync(outFd);
      }
      await drained;
      await new Promise((resolve) => (feeder.exitCode !== null ? resolve(null) : feeder.once('exit', resolve)));
      expect(Buffer.concat(got).equals(plain)).toBe(true);
    },
  );

  it('is used once: a run after update() is refused', async () => {
    const { ciphertext, opts } = encryptLike(randomBytes(1000));
    const d = new LayerDecipher({ ...opts, native });
    d.update(ciphertext.subarray(0, 10));
    // fd -1 would fail at once if the guard let it through: the refusal must come first.
    await expect(d.decryptFd(-1, -1)).rejects.toThrow(/needs a fresh native layer cipher/);
    d.dispose();
    const r = await pumpFiles(ciphertext, opts);
    expect(r.error).toBeUndefined();
  });
});

describe('without the pump', () => {
  it('a node:crypto decipher, or an addon without the pump (ABI 3), cannot decryptFd', () => {
    const { opts } = encryptLike(randomBytes(10));
    expect(new LayerDecipher(opts).canDecryptFd).toBe(false);
    if (native === undefined) return;
    const { cipherNew, cipherUpdate, cipherFinal, cipherFree } = native;
    const abi3: NativeLayerCipher = { cipherNew, cipherUpdate, cipherFinal, cipherFree };
    const d = new LayerDecipher({ ...opts, native: abi3 });
    expect(d.canDecryptFd).toBe(false);
    d.dispose();
  });
});
