import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { defaultConfig, type AttestationConfig } from '../../../src/config/types.js';
import { detectTee, type DetectOptions } from '../../../src/attest/detect.js';
import { AZURE_CHASSIS_ASSET_TAG, readHclTeeType, type TpmTransport } from '../../../src/attest/azure-vtpm.js';
import { createAttester } from '../../../src/attest/select.js';
import { FakeTsm } from '../../helpers/tee-fake-configfs.js';

const FIX = path.join(import.meta.dirname, '../../fixtures/tee');
const ROOT = '/sys/kernel/config/tsm/report';

/**
 * A vTPM answering TPM2_NV_ReadPublic / TPM2_NV_Read for NV index 0x01400001 (the paravisor's HCL report) per
 * TPM 2.0 Part 3, checking the command framing (owner auth, empty-password session) as a TPM would.
 */
function fakeVtpm(nv: Buffer | undefined, calls: string[] = []): TpmTransport {
  const rc = (code: number) => {
    const b = Buffer.alloc(10);
    b.writeUInt16BE(0x8001, 0);
    b.writeUInt32BE(10, 2);
    b.writeUInt32BE(code, 6);
    return b;
  };
  return async (cmd) => {
    const tag = cmd.readUInt16BE(0);
    const size = cmd.readUInt32BE(2);
    const cc = cmd.readUInt32BE(6);
    if (size !== cmd.length) return rc(0x95); // TPM_RC_COMMAND_SIZE
    if (cc === 0x169 && tag === 0x8001) {
      const index = cmd.readUInt32BE(10);
      calls.push(`NV_ReadPublic ${index.toString(16)}`);
      if (index !== 0x01400001 || !nv) return rc(0x18b); // TPM_RC_HANDLE (index undefined)
      const pub = Buffer.alloc(2 + 4 + 2 + 4 + 2 + 2);
      pub.writeUInt16BE(pub.length - 2, 0);
      pub.writeUInt32BE(index, 2);
      pub.writeUInt16BE(0x000b, 6);
      pub.writeUInt32BE(0x00020002, 8);
      pub.writeUInt16BE(0, 12); // empty authPolicy
      pub.writeUInt16BE(nv.length, 14);
      const name = Buffer.concat([Buffer.from([0, 34, 0, 0x0b]), Buffer.alloc(32, 7)]);
      const body = Buffer.concat([pub, name]);
      const head = Buffer.alloc(10);
      head.writeUInt16BE(0x8001, 0);
      head.writeUInt32BE(10 + body.length, 2);
      return Buffer.concat([head, body]);
    }
    if (cc === 0x14e && tag === 0x8002) {
      const [auth, index, authSize, session] = [0, 1, 2, 3].map((i) => cmd.readUInt32BE(10 + 4 * i)) as [number, number, number, number];
      const pw = cmd.subarray(26, 31);
      if (auth !== 0x40000001 || authSize !== 9 || session !== 0x40000009 || !pw.equals(Buffer.alloc(5))) return rc(0x9a2);
      const want = cmd.readUInt16BE(31);
      const offset = cmd.readUInt16BE(33);
      calls.push(`NV_Read ${index.toString(16)} ${offset.toString(16)}+${want}`);
      if (index !== 0x01400001 || !nv) return rc(0x18b);
      if (offset + want > nv.length) return rc(0x15d); // TPM_RC_NV_RANGE
      const data = nv.subarray(offset, offset + want);
      const params = Buffer.concat([Buffer.from([data.length >> 8, data.length & 0xff]), data]);
      const out = Buffer.alloc(14);
      out.writeUInt16BE(0x8002, 0);
      out.writeUInt32BE(14 + params.length + 5, 2);
      out.writeUInt32BE(params.length, 10);
      return Buffer.concat([out, params, Buffer.from([0, 0, 1, 0, 0])]);
    }
    return rc(0x143); // TPM_RC_COMMAND_CODE
  };
}

describe('TEE detection (guest-components order)', () => {
  let dir: string;
  let config: AttestationConfig;
  let opts: DetectOptions;
  const touch = (name: string) => {
    const p = path.join(dir, name);
    writeFileSync(p, '');
    return p;
  };

  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'tee-detect-'));
    config = {
      ...defaultConfig().attestation,
      configfsTsmRoot: path.join(dir, 'no-configfs'),
      tdxGuestDevice: path.join(dir, 'tdx_guest'),
      sevGuestDevice: path.join(dir, 'sev-guest'),
    };
    opts = {
      dmiChassisAssetTag: path.join(dir, 'chassis_asset_tag'),
      tpmDevice: path.join(dir, 'tpmrm0'),
      sevPlatformDir: path.join(dir, 'platform-sev-guest'),
    };
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('finds nothing on a machine with none of the signals, and auto then refuses instead of using sample', async () => {
    expect(await detectTee(config, opts)).toBeUndefined();
    // the real entry point with this machine's real paths: no TEE here either
    await expect(createAttester({ ...defaultConfig().attestation, tee: 'auto' })).rejects.toThrow(/no TEE detected.*set attestation.tee/);
  });

  it('trusts the configfs-tsm provider first', async () => {
    touch('sev-guest');
    const tdx = new FakeTsm({ root: ROOT, provider: 'tdx_guest', generate: () => ({ outblob: Buffer.alloc(1) }) });
    expect(await detectTee({ ...config, configfsTsmRoot: ROOT }, { ...opts, tsmFs: tdx })).toBe('tdx');
    expect(tdx.created).toHaveLength(1);
    expect(tdx.entries.size).toBe(0);
    const sev = new FakeTsm({ root: ROOT, provider: 'sev_guest', generate: () => ({ outblob: Buffer.alloc(1) }) });
    expect(await detectTee({ ...config, configfsTsmRoot: ROOT }, { ...opts, tsmFs: sev })).toBe('snp');
  });

  it('then the device nodes: /dev/tdx_guest before /dev/sev-guest', async () => {
    touch('sev-guest');
    expect(await detectTee(config, opts)).toBe('snp');
    touch('tdx_guest');
    expect(await detectTee(config, opts)).toBe('tdx');
  });

  it('then an Azure CVM, told apart by the HCL report type in the vTPM (before the SNP platform device)', async () => {
    writeFileSync(opts.dmiChassisAssetTag!, `${AZURE_CHASSIS_ASSET_TAG}\n`);
    mkdirSync(opts.sevPlatformDir!);
    const calls: string[] = [];
    const snp = readFileSync(path.join(FIX, 'trustee-az-snp-vtpm-hcl-report.bin'));
    expect(await detectTee(config, { ...opts, tpmTransport: fakeVtpm(snp, calls) })).toBe('az-snp-vtpm');
    expect(calls).toEqual(['NV_ReadPublic 1400001', 'NV_Read 1400001 0+4', 'NV_Read 1400001 4c8+4']);
    const tdx = readFileSync(path.join(FIX, 'trustee-az-tdx-vtpm-hcl-report.bin'));
    expect(await detectTee(config, { ...opts, tpmTransport: fakeVtpm(tdx) })).toBe('az-tdx-vtpm');
  });

  it('an Azure VM without an HCL report (not confidential) is not an Azure CVM', async () => {
    writeFileSync(opts.dmiChassisAssetTag!, AZURE_CHASSIS_ASSET_TAG);
    expect(await detectTee(config, { ...opts, tpmTransport: fakeVtpm(undefined) })).toBeUndefined();
    const garbage = Buffer.alloc(2600, 0x41);
    expect(await readHclTeeType(fakeVtpm(garbage))).toBeUndefined();
  });

  it('does not talk to the TPM on other clouds', async () => {
    writeFileSync(opts.dmiChassisAssetTag!, 'some-other-tag\n');
    const calls: string[] = [];
    expect(await detectTee(config, { ...opts, tpmTransport: fakeVtpm(undefined, calls) })).toBeUndefined();
    expect(calls).toEqual([]);
  });

  it('finally the SEV-SNP platform device', async () => {
    mkdirSync(opts.sevPlatformDir!);
    expect(await detectTee(config, opts)).toBe('snp');
  });
});
