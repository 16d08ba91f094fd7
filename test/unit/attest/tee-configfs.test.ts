import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { nodeTsmFs, tsmGetReport, tsmProbeProvider, TsmError } from '../../../src/attest/configfs-tsm.js';
import { parseTdQuote } from '../../../src/attest/tdx-quote.js';
import { FakeTsm } from '../../helpers/tee-fake-configfs.js';

const ROOT = '/sys/kernel/config/tsm/report';
const FIX = path.join(import.meta.dirname, '../../fixtures/tee');
const QUOTE_V4 = readFileSync(path.join(FIX, 'trustee-tdx_quote_4.dat'));

/** What the TDX provider + QGS return: a real quote whose REPORTDATA is the inblob (signature no longer valid). */
function tdxQuoteFor(inblob: Buffer): Buffer {
  const q = Buffer.from(QUOTE_V4);
  inblob.copy(q, 0x30 + 520);
  return q;
}

function inblob(fill: number): Buffer {
  return Buffer.alloc(64, fill);
}

function expectTsmError(kind: string) {
  return expect.objectContaining({ name: 'DecoderError', code: kind });
}

describe('configfs-tsm against a kernel-faithful fake', () => {
  let fake: FakeTsm;
  beforeEach(() => {
    fake = new FakeTsm({ root: ROOT, provider: 'tdx_guest', generate: (ib) => ({ outblob: tdxQuoteFor(ib) }) });
  });
  afterEach(() => {
    expect(fake.entries.size).toBe(0); // every entry is rmdir'ed, success or failure
  });

  it('returns the quote generated for exactly our 64-byte inblob and removes the entry', async () => {
    const r = await tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(0xab), fs: fake, lockPath: null });
    expect(r.provider).toBe('tdx_guest');
    expect(r.generation).toBe(1n);
    expect(parseTdQuote(r.outblob).body.reportData.equals(inblob(0xab))).toBe(true);
    expect(r.auxblob).toBeUndefined();
    expect(fake.created).toHaveLength(1);
    expect(path.dirname(fake.created[0]!)).toBe(ROOT);
  });

  it('refuses an inblob that is not exactly 64 bytes before touching configfs', async () => {
    for (const len of [0, 48, 63, 65]) {
      await expect(
        tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: Buffer.alloc(len), fs: fake, lockPath: null }),
      ).rejects.toEqual(expectTsmError('TSM_BAD_INBLOB'));
    }
    expect(fake.created).toHaveLength(0);
  });

  it('rejects the empty outblob the TDX provider returns without error when QGS fails', async () => {
    fake = new FakeTsm({ root: ROOT, provider: 'tdx_guest', generate: () => ({ outblob: Buffer.alloc(0) }) });
    const err = await tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(1), fs: fake, lockPath: null }).catch((e: unknown) => e);
    expect(err).toEqual(expectTsmError('TDX_QUOTE_EMPTY'));
    expect((err as Error).message).toMatch(/empty TDX quote.*QGS/);
  });

  it('detects a concurrent writer through the generation counter and retries with a fresh entry', async () => {
    let raced = false;
    fake.beforeOutblobRead = (entry, f) => {
      if (raced) return;
      raced = true;
      f.commitInblob(entry, inblob(0xee)); // another process rewrites our entry's inblob
    };
    const r = await tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(0x11), fs: fake, lockPath: null });
    expect(parseTdQuote(r.outblob).body.reportData.equals(inblob(0x11))).toBe(true);
    expect(fake.created).toHaveLength(2);
  });

  it('gives up with TSM_GENERATION_RACE when the entry keeps being rewritten', async () => {
    fake.afterInblobCommit = (entry, f) => f.commitInblob(entry, inblob(0xee));
    const err = await tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(0x11), fs: fake, lockPath: null }).catch((e: unknown) => e);
    expect(err).toEqual(expectTsmError('TSM_GENERATION_RACE'));
    expect((err as Error).message).toMatch(/generation is 2 after writing inblob, expected 1/);
    expect(fake.created).toHaveLength(3);
  });

  it('notices an inblob commit the kernel refused silently (generation did not move)', async () => {
    fake.refuseNextCommit = true;
    const r = await tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(0x22), fs: fake, lockPath: null });
    expect(parseTdQuote(r.outblob).body.reportData.equals(inblob(0x22))).toBe(true);
    expect(fake.created).toHaveLength(2);
  });

  it('retries EBUSY (a quote still in flight) and maps GetQuote failures to TDX_QUOTE_FAILED', async () => {
    fake.readErrors = ['EBUSY'];
    const r = await tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(3), fs: fake, lockPath: null });
    expect(r.outblob.length).toBeGreaterThan(1000);
    fake.readErrors = ['ETIMEDOUT'];
    await expect(tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(3), fs: fake, lockPath: null })).rejects.toEqual(
      expectTsmError('TDX_QUOTE_FAILED'),
    );
    fake.readErrors = ['EINVAL'];
    await expect(tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(3), fs: fake, lockPath: null })).rejects.toEqual(
      expectTsmError('TSM_BAD_INBLOB'),
    );
  });

  it('refuses a provider other than the one asked for, and reports a missing provider or root', async () => {
    await expect(tsmGetReport({ root: ROOT, provider: 'sev_guest', inblob: inblob(1), fs: fake, lockPath: null })).rejects.toEqual(
      expectTsmError('TSM_WRONG_PROVIDER'),
    );
    const none = new FakeTsm({ root: ROOT, provider: undefined, generate: () => ({ outblob: Buffer.alloc(1) }) });
    await expect(tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(1), fs: none, lockPath: null })).rejects.toEqual(
      expectTsmError('TSM_NO_PROVIDER'),
    );
    await expect(
      tsmGetReport({ root: '/nonexistent/tsm/report', provider: 'tdx_guest', inblob: inblob(1), fs: fake, lockPath: null }),
    ).rejects.toEqual(expectTsmError('TSM_UNAVAILABLE'));
  });

  it('probes the registered provider for detection and cleans up', async () => {
    expect(await tsmProbeProvider(ROOT, fake)).toBe('tdx_guest');
    expect(await tsmProbeProvider(ROOT, new FakeTsm({ root: ROOT, provider: undefined, generate: () => ({ outblob: Buffer.alloc(0) }) }))).toBeUndefined();
    expect(await tsmProbeProvider('/nonexistent', fake)).toBeUndefined();
  });
});

describe('configfs-tsm with the sev_guest provider', () => {
  const makeFake = (floor = 0) =>
    new FakeTsm({
      root: ROOT,
      provider: 'sev_guest',
      privlevelFloor: floor,
      generate: (ib, privlevel) => {
        const report = Buffer.alloc(1184);
        report.writeUInt32LE(privlevel, 0x30);
        ib.copy(report, 0x50);
        return { outblob: report, auxblob: Buffer.from('cert-table') };
      },
    });

  it('writes privlevel as ASCII, counts it in the generation and returns outblob + auxblob', async () => {
    const fake = makeFake();
    const r = await tsmGetReport({ root: ROOT, provider: 'sev_guest', inblob: inblob(7), privlevel: 2, auxblob: true, fs: fake, lockPath: null });
    expect(r.generation).toBe(2n);
    expect(r.outblob.readUInt32LE(0x30)).toBe(2);
    expect(r.outblob.subarray(0x50, 0x90).equals(inblob(7))).toBe(true);
    expect(r.auxblob?.toString()).toBe('cert-table');
    expect(fake.generations).toBe(1); // outblob and auxblob come from the same cached generation
    expect(fake.entries.size).toBe(0);
  });

  it('explains a VMPL below the guest’s privlevel_floor', async () => {
    const fake = makeFake(2);
    const err = await tsmGetReport({ root: ROOT, provider: 'sev_guest', inblob: inblob(7), privlevel: 0, fs: fake, lockPath: null }).catch((e: unknown) => e);
    expect(err).toEqual(expectTsmError('TSM_PRIVLEVEL'));
    expect((err as Error).message).toMatch(/VMPL 0 \(this guest runs at VMPL 2.*attestation\.snp_vmpl/);
    expect(fake.entries.size).toBe(0);
  });
});

describe('configfs-tsm cross-process lock', () => {
  let dir: string;
  let fake: FakeTsm;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'tee-lock-'));
    fake = new FakeTsm({ root: ROOT, provider: 'tdx_guest', generate: (ib) => ({ outblob: tdxQuoteFor(ib) }) });
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** Another process holding the flock (as a second coco-decoder would): the shell exec's into sleep with fd 9. */
  async function holder(lockPath: string): Promise<ChildProcess> {
    const child = spawn('sh', ['-c', 'exec 9>"$1"; flock 9; echo held; exec sleep 30', 'sh', lockPath], { stdio: ['ignore', 'pipe', 'inherit'] });
    await once(child.stdout!, 'data');
    return child;
  }

  it('serialises concurrent requests; the (empty) lock file stays and is free afterwards', async () => {
    const lockPath = path.join(dir, 'tsm.lock');
    let active = 0;
    let maxActive = 0;
    fake.beforeOutblobRead = () => {
      active++;
      maxActive = Math.max(maxActive, active);
    };
    const slowFs = { ...bind(fake), readFile: async (f: string) => {
      const r = await fake.readFile(f);
      if (f.endsWith('outblob')) {
        await new Promise((res) => setTimeout(res, 30));
        active--;
      }
      return r;
    } };
    const rs = await Promise.all([1, 2, 3].map((n) => tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(n), fs: slowFs, lockPath })));
    expect(rs.map((r) => parseTdQuote(r.outblob).body.reportData[0])).toEqual([1, 2, 3]);
    expect(maxActive).toBe(1);
    // Never unlinked (that would race with the next taker); flock(1) can take it at once.
    expect(readFileSync(lockPath).length).toBe(0);
    expect(spawnSync('flock', ['--nonblock', lockPath, 'true']).status).toBe(0);
  });

  it('waits for a live holder and times out with TEE_BUSY', async () => {
    const lockPath = path.join(dir, 'tsm.lock');
    const h = await holder(lockPath);
    try {
      const err = await tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(1), fs: fake, lockPath, timeoutMs: 300 }).catch((e: unknown) => e);
      expect(err).toEqual(expectTsmError('TEE_BUSY'));
    } finally {
      h.kill('SIGKILL');
    }
  });

  it('a holder that dies releases the lock: the waiter proceeds at once', async () => {
    const lockPath = path.join(dir, 'tsm.lock');
    const h = await holder(lockPath);
    const pending = tsmGetReport({ root: ROOT, provider: 'tdx_guest', inblob: inblob(9), fs: fake, lockPath, timeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    h.kill('SIGKILL');
    const r = await pending;
    expect(r.outblob.length).toBeGreaterThan(0);
    expect(Date.now() - t0).toBeLessThan(2000);
  });
});

describe('configfs-tsm real-filesystem adapter', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'tee-tsm-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses a directory that is not configfs-tsm (no provider attribute) and removes its entry', async () => {
    const err = await tsmGetReport({ root: dir, provider: 'tdx_guest', inblob: inblob(1), lockPath: null }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TsmError);
    expect((err as Error).message).toMatch(/provider.*really configfs-tsm/);
    expect(readdirSync(dir)).toEqual([]);
    expect(await tsmProbeProvider(dir)).toBeUndefined();
    expect(readdirSync(dir)).toEqual([]);
  });

  it('writes attributes in one open/write/close without creating or truncating files', async () => {
    const file = path.join(dir, 'inblob');
    await expect(nodeTsmFs.writeFile(file, inblob(1))).rejects.toMatchObject({ code: 'ENOENT' });
    writeFileSync(file, Buffer.alloc(100, 0xff));
    await nodeTsmFs.writeFile(file, inblob(2));
    const after = readFileSync(file);
    expect(after.length).toBe(100); // no O_TRUNC: configfs has no notion of truncation
    expect(after.subarray(0, 64).equals(inblob(2))).toBe(true);
  });
});

function bind(f: FakeTsm) {
  return {
    mkdtemp: f.mkdtemp.bind(f),
    readFile: f.readFile.bind(f),
    writeFile: f.writeFile.bind(f),
    rmdir: f.rmdir.bind(f),
    exists: f.exists.bind(f),
  };
}
