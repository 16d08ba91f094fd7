import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultConfig, type AttestationConfig } from '../../../src/config/types.js';
import { createTdxAttester, trimCcel } from '../../../src/attest/tdx.js';
import { createSnpAttester } from '../../../src/attest/snp.js';
import { parseTdQuote } from '../../../src/attest/tdx-quote.js';
import { SNP_CERT_GUIDS } from '../../../src/attest/snp-report.js';
import type { TeeAddon } from '../../../src/attest/native.js';
import { FakeTsm } from '../../helpers/tee-fake-configfs.js';

const FIX = path.join(import.meta.dirname, '../../fixtures/tee');
const fixture = (name: string) => readFileSync(path.join(FIX, name));
const ROOT = '/sys/kernel/config/tsm/report';
/** A runtime-data digest as a KBS session produces it: SHA-384, 48 bytes. */
const DIGEST = Buffer.from('e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3', 'hex');
const PADDED = Buffer.concat([DIGEST, Buffer.alloc(16)]);

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'tee-attesters-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function config(over: Partial<AttestationConfig> = {}): AttestationConfig {
  return {
    ...defaultConfig().attestation,
    configfsTsmRoot: ROOT,
    tdxGuestDevice: path.join(dir, 'no-tdx_guest'),
    sevGuestDevice: path.join(dir, 'no-sev-guest'),
    ccelPath: path.join(dir, 'no-CCEL'),
    addonPath: path.join(dir, 'no-tee.node'),
    ...over,
  };
}

describe('TDX attester', () => {
  const quoteFor = (inblob: Buffer) => {
    const q = Buffer.from(fixture('trustee-tdx_quote_5.dat'));
    inblob.copy(q, 0x36 + 520);
    return q;
  };

  it('produces {cc_eventlog, quote} with the digest zero-padded into REPORTDATA and the trimmed CCEL', async () => {
    const fake = new FakeTsm({ root: ROOT, provider: 'tdx_guest', generate: (ib) => ({ outblob: quoteFor(ib) }) });
    const ccel = path.join(FIX, 'go-tdx-guest-cos-113-ccel_data.dat');
    const ev = (await createTdxAttester(config({ ccelPath: ccel }), { tsmFs: fake, tsmLockPath: null }).getEvidence(DIGEST)) as Record<string, string>;
    expect(Object.keys(ev)).toEqual(['cc_eventlog', 'quote']);
    const quote = Buffer.from(ev.quote!, 'base64');
    expect(parseTdQuote(quote).body.reportData.equals(PADDED)).toBe(true);
    const log = Buffer.from(ev.cc_eventlog!, 'base64');
    const trimmed = trimCcel(readFileSync(ccel));
    expect(log.equals(Buffer.concat([trimmed, Buffer.alloc(8, 0xff)]))).toBe(true);
    expect(fake.entries.size).toBe(0);
  });

  it('sends cc_eventlog null when the guest has no CCEL table', async () => {
    const fake = new FakeTsm({ root: ROOT, provider: 'tdx_guest', generate: (ib) => ({ outblob: quoteFor(ib) }) });
    const ev = (await createTdxAttester(config(), { tsmFs: fake, tsmLockPath: null }).getEvidence(DIGEST)) as Record<string, unknown>;
    expect(ev.cc_eventlog).toBeNull();
  });

  it('refuses to send a quote whose REPORTDATA is not the runtime-data hash, showing both in hex', async () => {
    const stale = fixture('trustee-tdx_quote_4.dat');
    const fake = new FakeTsm({ root: ROOT, provider: 'tdx_guest', generate: () => ({ outblob: stale }) });
    const err = (await createTdxAttester(config(), { tsmFs: fake, tsmLockPath: null })
      .getEvidence(DIGEST)
      .then(() => undefined, (e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toContain(parseTdQuote(stale).body.reportData.toString('hex'));
    expect(err.message).toContain(PADDED.toString('hex'));
    expect(err.message).toMatch(/does not match the runtime-data hash/);
  });

  it('rejects report data over 64 bytes, and explains a kernel without configfs-tsm', async () => {
    const fake = new FakeTsm({ root: ROOT, provider: 'tdx_guest', generate: (ib) => ({ outblob: quoteFor(ib) }) });
    await expect(createTdxAttester(config(), { tsmFs: fake, tsmLockPath: null }).getEvidence(Buffer.alloc(65))).rejects.toThrow(/at most 64 bytes, got 65/);
    const device = path.join(dir, 'tdx_guest');
    writeFileSync(device, '');
    await expect(
      createTdxAttester(config({ configfsTsmRoot: path.join(dir, 'no-configfs'), tdxGuestDevice: device })).getEvidence(DIGEST),
    ).rejects.toThrow(/configfs-tsm is not available.*only return an unsigned TDREPORT/);
  });

  it('surfaces an empty quote (QGS failure) as an error, not as evidence', async () => {
    const fake = new FakeTsm({ root: ROOT, provider: 'tdx_guest', generate: () => ({ outblob: Buffer.alloc(0) }) });
    await expect(createTdxAttester(config(), { tsmFs: fake, tsmLockPath: null }).getEvidence(DIGEST)).rejects.toThrow(/empty TDX quote/);
  });
});

describe('SEV-SNP attester', () => {
  const vlek = fixture('trustee-snp-test-vlek.der');
  const table = (() => {
    const t = Buffer.alloc(48 + vlek.length);
    Buffer.from(SNP_CERT_GUIDS.VLEK.replace(/-/g, ''), 'hex').copy(t);
    t.writeUInt32LE(48, 16);
    t.writeUInt32LE(vlek.length, 20);
    vlek.copy(t, 48);
    return t;
  })();
  /** The sev_guest provider: the firmware puts the user data and requested VMPL into the report. */
  const reportFor = (ib: Buffer, vmpl: number) => {
    const r = Buffer.from(fixture('trustee-snp-test-vlek-report.bin'));
    ib.copy(r, 0x50);
    r.writeUInt32LE(vmpl, 0x30);
    return r;
  };

  it('produces {attestation_report, cert_chain} from configfs-tsm (privlevel = VMPL, auxblob = certificates)', async () => {
    const fake = new FakeTsm({ root: ROOT, provider: 'sev_guest', generate: (ib, pl) => ({ outblob: reportFor(ib, pl), auxblob: table }) });
    const ev = (await createSnpAttester(config({ snpVmpl: 2 }), { tsmFs: fake, tsmLockPath: null }).getEvidence(DIGEST)) as {
      attestation_report: Record<string, unknown>;
      cert_chain: unknown;
    };
    expect(Object.keys(ev)).toEqual(['attestation_report', 'cert_chain']);
    expect(ev.attestation_report.report_data).toEqual([...PADDED]);
    expect(ev.attestation_report.vmpl).toBe(2);
    expect(ev.attestation_report.version).toBe(3);
    expect(ev.attestation_report.current_tcb).toEqual(expect.objectContaining({ fmc: null }));
    expect(ev.cert_chain).toEqual([{ cert_type: 'VLEK', data: [...vlek] }]);
    expect(JSON.parse(JSON.stringify(ev))).toEqual(ev); // plain JSON, no BigInt/Buffer
  });

  it('refuses a report with someone else’s REPORT_DATA or another VMPL', async () => {
    const other = new FakeTsm({ root: ROOT, provider: 'sev_guest', generate: (_ib, pl) => ({ outblob: reportFor(Buffer.alloc(64, 9), pl) }) });
    await expect(createSnpAttester(config(), { tsmFs: other, tsmLockPath: null }).getEvidence(DIGEST)).rejects.toThrow(
      new RegExp(`REPORT_DATA ${'09'.repeat(64)} does not match the runtime-data hash ${PADDED.toString('hex')}`),
    );
    const wrongVmpl = new FakeTsm({ root: ROOT, provider: 'sev_guest', generate: (ib) => ({ outblob: reportFor(ib, 3) }) });
    await expect(createSnpAttester(config({ snpVmpl: 1 }), { tsmFs: wrongVmpl, tsmLockPath: null }).getEvidence(DIGEST)).rejects.toThrow(
      /for VMPL 3, requested 1/,
    );
  });

  it('falls back to SNP_GET_EXT_REPORT on /dev/sev-guest when configfs-tsm has no provider', async () => {
    const device = path.join(dir, 'sev-guest');
    writeFileSync(device, '');
    const calls: unknown[] = [];
    const addon = {
      abiVersion: 4,
      setNonDumpable: () => 0,
      layout: {},
      tdxGetReport0: async () => Buffer.alloc(0),
      snpGetReport: async () => ({ response: Buffer.alloc(0) }),
      snpGetExtReport: async (dev: string, ud: Buffer, vmpl: number, msgVersion: number, certsLen: number) => {
        calls.push({ dev, vmpl, msgVersion, certsLen });
        const response = Buffer.alloc(4000);
        response.writeUInt32LE(1184, 4);
        reportFor(ud, vmpl).copy(response, 0x20);
        return { response, certs: Buffer.concat([table, Buffer.alloc(16384 - table.length)]) };
      },
      cipherNew: () => undefined,
      cipherUpdate: () => undefined,
      cipherFinal: () => Buffer.alloc(32),
      cipherFree: () => undefined,
      pumpNew: () => undefined,
      pumpRun: () => undefined,
      pumpRelease: () => 0,
      pumpFree: () => undefined,
      readFd: () => undefined,
    } satisfies TeeAddon;
    const noProvider = new FakeTsm({ root: ROOT, provider: undefined, generate: () => ({ outblob: Buffer.alloc(0) }) });
    const ev = (await createSnpAttester(config({ sevGuestDevice: device }), { tsmFs: noProvider, tsmLockPath: null, loadAddon: () => addon }).getEvidence(
      DIGEST,
    )) as { attestation_report: { report_data: number[] }; cert_chain: unknown[] };
    expect(calls).toEqual([{ dev: device, vmpl: 0, msgVersion: 1, certsLen: 16384 }]);
    expect(ev.attestation_report.report_data).toEqual([...PADDED]);
    expect(ev.cert_chain).toHaveLength(1);
  });

  it('names both missing paths when neither configfs-tsm nor /dev/sev-guest exists, and validates the VMPL', async () => {
    await expect(createSnpAttester(config({ configfsTsmRoot: path.join(dir, 'none') })).getEvidence(DIGEST)).rejects.toThrow(
      /configfs-tsm is not available.*no-sev-guest does not exist/,
    );
    expect(() => createSnpAttester(config({ snpVmpl: 4 }))).toThrow(/snp_vmpl must be 0..3/);
  });
});
