import { verify, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  parseSnpCertTable,
  parseSnpReport,
  reportFromResponse,
  SNP_CERT_GUIDS,
  snpCertChainJson,
  snpReportToSevJson,
  type SevAttestationReportJson,
  type SevCertTableEntryJson,
  type SevTcbVersionJson,
} from '../../../src/attest/snp-report.js';

const FIX = path.join(import.meta.dirname, '../../fixtures/tee');
const fixture = (name: string) => readFileSync(path.join(FIX, name));

/** ECDSA P-384 over bytes 0..0x29F; r and s are little-endian, zero-padded to 72 bytes. */
function signedBy(report: Buffer, certDer: Buffer): boolean {
  const r = parseSnpReport(report);
  const be = (b: Buffer) => Buffer.from(b.subarray(0, 48)).reverse();
  const key = new X509Certificate(certDer).publicKey;
  return verify('sha384', r.signedRegion, { key, dsaEncoding: 'ieee-p1363' }, Buffer.concat([be(r.signatureR), be(r.signatureS)]));
}

/**
 * Test-side re-encoder of sev's JSON into the 1184 firmware bytes (sev `AttestationReport::encode`): used to turn
 * trustee's e2e SNP evidence back into the report the AMD firmware signed.
 */
function encodeSevJson(j: SevAttestationReportJson): Buffer {
  const b = Buffer.alloc(1184);
  const turin = j.current_tcb.fmc !== null;
  const tcb = (t: SevTcbVersionJson, at: number) => {
    const bytes = turin ? [t.fmc ?? 0, t.bootloader, t.tee, t.snp, 0, 0, 0, t.microcode] : [t.bootloader, t.tee, 0, 0, 0, 0, t.snp, t.microcode];
    Buffer.from(bytes).copy(b, at);
  };
  const arr = (a: number[], at: number) => Buffer.from(a).copy(b, at);
  b.writeUInt32LE(j.version, 0x0);
  b.writeUInt32LE(j.guest_svn, 0x4);
  b.writeBigUInt64LE(BigInt(j.policy), 0x8);
  arr(j.family_id, 0x10);
  arr(j.image_id, 0x20);
  b.writeUInt32LE(j.vmpl, 0x30);
  b.writeUInt32LE(j.sig_algo, 0x34);
  tcb(j.current_tcb, 0x38);
  b.writeBigUInt64LE(BigInt(j.plat_info), 0x40);
  b.writeUInt32LE(j.key_info, 0x48);
  arr(j.report_data, 0x50);
  arr(j.measurement, 0x90);
  arr(j.host_data, 0xc0);
  arr(j.id_key_digest, 0xe0);
  arr(j.author_key_digest, 0x110);
  arr(j.report_id, 0x140);
  arr(j.report_id_ma, 0x160);
  tcb(j.reported_tcb, 0x180);
  if (j.cpuid_fam_id !== null) b[0x188] = j.cpuid_fam_id;
  if (j.cpuid_mod_id !== null) b[0x189] = j.cpuid_mod_id;
  if (j.cpuid_step !== null) b[0x18a] = j.cpuid_step;
  arr(j.chip_id, 0x1a0);
  tcb(j.committed_tcb, 0x1e0);
  arr([j.current.build, j.current.minor, j.current.major], 0x1e8);
  arr([j.committed.build, j.committed.minor, j.committed.major], 0x1ec);
  tcb(j.launch_tcb, 0x1f0);
  if (j.launch_mit_vector !== null && j.launch_mit_vector !== undefined) b.writeBigUInt64LE(BigInt(j.launch_mit_vector), 0x1f8);
  if (j.current_mit_vector !== null && j.current_mit_vector !== undefined) b.writeBigUInt64LE(BigInt(j.current_mit_vector), 0x200);
  arr(j.signature.r, 0x2a0);
  arr(j.signature.s, 0x2e8);
  return b;
}

/** Builds a GHCB certificate table (24-byte GUID entries, zero terminator, blobs after). */
function certTable(entries: { guid: string; data: Buffer }[]): Buffer {
  const header = Buffer.alloc((entries.length + 1) * 24);
  const blobs: Buffer[] = [];
  let off = header.length;
  entries.forEach((e, i) => {
    Buffer.from(e.guid.replace(/-/g, ''), 'hex').copy(header, i * 24);
    header.writeUInt32LE(off, i * 24 + 16);
    header.writeUInt32LE(e.data.length, i * 24 + 20);
    blobs.push(e.data);
    off += e.data.length;
  });
  return Buffer.concat([header, ...blobs]);
}

describe('SEV-SNP report offsets against published, signed reports', () => {
  it.each([
    ['trustee-snp-test-report.bin', 'trustee-snp-test-vcek.der', 2, 0],
    ['trustee-snp-test-vlek-report.bin', 'trustee-snp-test-vlek.der', 3, 1],
    ['go-sev-guest-attestation.bin', 'go-sev-guest-vcek.testcer', 2, 0],
  ] as const)('%s verifies under %s over the parsed signed region and signature', (rep, cert, version, signingKey) => {
    const report = fixture(rep);
    const r = parseSnpReport(report);
    expect(r.version).toBe(version);
    expect(r.signingKey).toBe(signingKey);
    expect(signedBy(report, fixture(cert))).toBe(true);
  });

  it('a signature check with the wrong VCEK fails (the check above can fail)', () => {
    expect(signedBy(fixture('go-sev-guest-attestation.bin'), fixture('trustee-snp-test-vcek.der'))).toBe(false);
  });
});

describe('sev-crate JSON (what trustee’s SNP verifier deserialises)', () => {
  const evidence = JSON.parse(fixture('trustee-snp-e2e-evidence.json').toString('utf8')) as {
    attestation_report: SevAttestationReportJson;
    cert_chain: SevCertTableEntryJson[];
  };
  const raw = encodeSevJson(evidence.attestation_report);
  const vcek = Buffer.from(evidence.cert_chain[0]!.data);

  it('trustee’s e2e evidence (sev crate output from real hardware) re-encodes to the bytes its VCEK signed', () => {
    expect(signedBy(raw, vcek)).toBe(true);
  });

  it('converting those raw bytes reproduces the sev crate JSON field for field', () => {
    const json = snpReportToSevJson(raw);
    // sev 6.x/7.x serialise the v5-only mitigation vectors as null for this v3 report; this older evidence omits them
    expect(json).toEqual({ ...evidence.attestation_report, launch_mit_vector: null, current_mit_vector: null });
    expect(Object.keys(json)).toEqual([
      'version', 'guest_svn', 'policy', 'family_id', 'image_id', 'vmpl', 'sig_algo', 'current_tcb', 'plat_info', 'key_info',
      'report_data', 'measurement', 'host_data', 'id_key_digest', 'author_key_digest', 'report_id', 'report_id_ma',
      'reported_tcb', 'cpuid_fam_id', 'cpuid_mod_id', 'cpuid_step', 'chip_id', 'committed_tcb', 'current', 'committed',
      'launch_tcb', 'launch_mit_vector', 'current_mit_vector', 'signature',
    ]);
  });

  it('converts the host certificate table into the cert_chain the evidence carries', () => {
    const table = certTable([{ guid: SNP_CERT_GUIDS.VCEK, data: vcek }]);
    expect(snpCertChainJson(parseSnpCertTable(table))).toEqual(evidence.cert_chain);
  });

  it('decodes TCB fields per generation: Turin has FMC first, Milan/Genoa keep SNP in byte 6', () => {
    const turin = Buffer.from(raw);
    turin[0x188] = 0x1a; // family 1Ah, model 0x00..0x11 → Turin
    turin[0x189] = 0x02;
    Buffer.from([9, 1, 2, 3, 0, 0, 0, 0xd5]).copy(turin, 0x38);
    expect(snpReportToSevJson(turin).current_tcb).toEqual({ fmc: 9, bootloader: 1, tee: 2, snp: 3, microcode: 0xd5 });
    const genoa = snpReportToSevJson(raw).current_tcb;
    expect(genoa).toEqual({ fmc: null, bootloader: 10, tee: 0, snp: 23, microcode: 25 });
  });

  it('adds the mitigation vectors for report version 5 and drops CPUID for version 2', () => {
    const v5 = Buffer.from(raw);
    v5.writeUInt32LE(5, 0);
    v5.writeBigUInt64LE(0x11n, 0x1f8);
    v5.writeBigUInt64LE(0x13n, 0x200);
    const j5 = snpReportToSevJson(v5);
    expect([j5.launch_mit_vector, j5.current_mit_vector]).toEqual([0x11, 0x13]);
    const j2 = snpReportToSevJson(fixture('trustee-snp-test-report.bin'));
    expect([j2.version, j2.cpuid_fam_id, j2.cpuid_mod_id, j2.cpuid_step, j2.launch_mit_vector]).toEqual([2, null, null, null, null]);
  });

  it('refuses what the sev crate refuses, and u64 values JSON numbers cannot carry', () => {
    const v1 = Buffer.from(raw);
    v1.writeUInt32LE(1, 0);
    expect(() => snpReportToSevJson(v1)).toThrow(/version 1 is not supported/);
    const masked = Buffer.from(fixture('go-sev-guest-attestation.bin'));
    masked.fill(0, 0x1a0, 0x1e0);
    expect(() => snpReportToSevJson(masked)).toThrow(/masked CHIP_ID/);
    const unknownCpu = Buffer.from(raw);
    unknownCpu[0x188] = 0x17;
    expect(() => snpReportToSevJson(unknownCpu)).toThrow(/family 0x17/);
    const huge = Buffer.from(raw);
    huge.writeUInt32LE(5, 0);
    huge.writeBigUInt64LE(1n << 60n, 0x200);
    expect(() => snpReportToSevJson(huge)).toThrow(/current_mit_vector/);
    expect(() => snpReportToSevJson(raw.subarray(0, 1000))).toThrow(/1184 bytes/);
  });
});

describe('SNP certificate table', () => {
  const blob = (s: string) => Buffer.from(s);
  const other = 'ecae0c0f-9502-43b1-afa2-0ae2e0d565b6';

  it('parses GUID entries up to the zero terminator and orders them like sev (ARK, VCEK, VLEK, ASK, CRL, OTHER)', () => {
    const table = certTable([
      { guid: other, data: blob('extra') },
      { guid: SNP_CERT_GUIDS.ASK, data: blob('ask') },
      { guid: SNP_CERT_GUIDS.VCEK, data: blob('vcek') },
      { guid: SNP_CERT_GUIDS.ARK, data: blob('ark') },
    ]);
    const entries = parseSnpCertTable(Buffer.concat([table, Buffer.alloc(4096 - table.length)]));
    expect(entries.map((e) => [e.guid, e.data.toString()])).toEqual([
      [other, 'extra'],
      [SNP_CERT_GUIDS.ASK, 'ask'],
      [SNP_CERT_GUIDS.VCEK, 'vcek'],
      [SNP_CERT_GUIDS.ARK, 'ark'],
    ]);
    expect(snpCertChainJson(entries)).toEqual([
      { cert_type: 'ARK', data: [...blob('ark')] },
      { cert_type: 'VCEK', data: [...blob('vcek')] },
      { cert_type: 'ASK', data: [...blob('ask')] },
      { cert_type: { OTHER: other }, data: [...blob('extra')] },
    ]);
  });

  it('means "no certificates" (null, so trustee fetches the VCEK from KDS) for an empty or zeroed buffer', () => {
    expect(snpCertChainJson(parseSnpCertTable(Buffer.alloc(0)))).toBeNull();
    expect(snpCertChainJson(parseSnpCertTable(Buffer.alloc(16384)))).toBeNull();
  });

  it('rejects entries pointing outside the table and tables without a terminator', () => {
    const table = certTable([{ guid: SNP_CERT_GUIDS.VCEK, data: blob('vcek') }]);
    const bad = Buffer.from(table);
    bad.writeUInt32LE(10_000, 20);
    expect(() => parseSnpCertTable(bad)).toThrow(/outside the table/);
    const unterminated = Buffer.alloc(24);
    Buffer.from(SNP_CERT_GUIDS.VCEK.replace(/-/g, ''), 'hex').copy(unterminated);
    unterminated.writeUInt32LE(24, 16); // an empty blob right after the entry, then the buffer ends
    expect(() => parseSnpCertTable(unterminated)).toThrow(/no terminating entry/);
  });
});

describe('MSG_REPORT_RSP', () => {
  it('extracts the report at 0x20 and checks status and size', () => {
    const report = fixture('trustee-snp-test-vlek-report.bin');
    const resp = Buffer.alloc(4000);
    resp.writeUInt32LE(1184, 4);
    report.copy(resp, 0x20);
    expect(reportFromResponse(resp).equals(report)).toBe(true);
    const failed = Buffer.from(resp);
    failed.writeUInt32LE(0x16, 0);
    expect(() => reportFromResponse(failed)).toThrow(/status 0x16/);
    const wrongSize = Buffer.from(resp);
    wrongSize.writeUInt32LE(1000, 4);
    expect(() => reportFromResponse(wrongSize)).toThrow(/1000 report bytes/);
  });
});
