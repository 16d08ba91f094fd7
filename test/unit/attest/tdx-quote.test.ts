import { createPublicKey, createHash, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseTdQuote, parseTdReport, TdQuoteError, type TdQuote } from '../../../src/attest/tdx-quote.js';
import { trimCcel } from '../../../src/attest/tdx.js';

const FIX = path.join(import.meta.dirname, '../../fixtures/tee');
const fixture = (name: string) => readFileSync(path.join(FIX, name));

/** The quote's own ECDSA P-256 signature over header+body: only verifies if our body offsets/length are right. */
function signatureVerifies(q: TdQuote): boolean {
  const key = createPublicKey({
    key: {
      kty: 'EC',
      crv: 'P-256',
      x: q.attestationKey.subarray(0, 32).toString('base64url'),
      y: q.attestationKey.subarray(32).toString('base64url'),
    },
    format: 'jwk',
  });
  return verify('sha256', q.signedRegion, { key, dsaEncoding: 'ieee-p1363' }, q.signature);
}

describe('TD quote parser on published quotes', () => {
  const quotes = [
    ['trustee-tdx_quote_4.dat', 4, 2],
    ['trustee-tdx_quote_5.dat', 5, 3],
    ['go-tdx-guest-quote_v5_sample.dat', 5, 3],
    ['go-tdx-guest-tdx_prod_quote_SPR_E4.dat', 4, 2],
    ['go-tdx-guest-cos-113-tdx-quote.dat', 4, 2],
  ] as const;

  it.each(quotes)('%s: version/body type and the quote signature over the parsed signed region', (name, version, bodyType) => {
    const q = parseTdQuote(fixture(name));
    expect(q.version).toBe(version);
    expect(q.bodyType).toBe(bodyType);
    expect(q.teeType).toBe(0x81);
    expect(q.bodyOffset).toBe(version === 4 ? 0x30 : 0x36);
    expect(q.certDataType).toBe(6); // QE report certification data
    expect(signatureVerifies(q)).toBe(true);
  });

  it('reads every body field where trustee’s verifier reads it (parse_tdx_claims_expected.json for tdx_quote_4)', () => {
    const expected = JSON.parse(fixture('trustee-parse_tdx_claims_expected.json').toString('utf8')) as {
      quote: { header: Record<string, string>; body: Record<string, string> };
    };
    const q = parseTdQuote(fixture('trustee-tdx_quote_4.dat'));
    const h = (b: Buffer) => b.toString('hex');
    const b = expected.quote.body;
    expect(h(q.body.reportData)).toBe(b.report_data);
    expect(h(q.body.mrTd)).toBe(b.mr_td);
    expect(h(q.body.mrConfigId)).toBe(b.mr_config_id);
    expect(h(q.body.mrOwner)).toBe(b.mr_owner);
    expect(h(q.body.mrOwnerConfig)).toBe(b.mr_owner_config);
    expect(h(q.body.mrSeam)).toBe(b.mr_seam);
    expect(h(q.body.mrSignerSeam)).toBe(b.mrsigner_seam);
    expect(h(q.body.teeTcbSvn)).toBe(b.tcb_svn);
    expect(h(q.body.seamAttributes)).toBe(b.seam_attributes);
    expect(h(q.body.tdAttributes)).toBe(b.td_attributes);
    expect(h(q.body.xfam)).toBe(b.xfam);
    expect(q.body.rtmr.map(h)).toEqual([b.rtmr_0, b.rtmr_1, b.rtmr_2, b.rtmr_3]);
    expect(h(q.qeVendorId)).toBe(expected.quote.header.vendor_id);
    expect(h(q.userData)).toBe(expected.quote.header.user_data);
  });

  it('finds the nonce go-tdx-guest’s cos-113 quote was made with (all zeros) in REPORTDATA', () => {
    const q = parseTdQuote(fixture('go-tdx-guest-cos-113-tdx-quote.dat'));
    expect(q.body.reportData.equals(fixture('go-tdx-guest-cos-113-nonce.dat'))).toBe(true);
  });

  it('exposes the TDX 1.5 fields of a v5 type-3 body', () => {
    const q = parseTdQuote(fixture('trustee-tdx_quote_5.dat'));
    expect(q.body.teeTcbSvn2).toHaveLength(16);
    expect(q.body.mrServiceTd).toHaveLength(48);
    expect(q.signedRegion.length).toBe(0x36 + 648);
  });

  it('rejects truncated, SGX and unknown-version quotes with a clear error', () => {
    const v4 = fixture('trustee-tdx_quote_4.dat');
    expect(() => parseTdQuote(v4.subarray(0, 600))).toThrow(/truncated/);
    expect(() => parseTdQuote(Buffer.alloc(0))).toThrow(TdQuoteError);
    const sgx = Buffer.from(v4);
    sgx.writeUInt16LE(3, 0);
    sgx.writeUInt32LE(0, 4);
    expect(() => parseTdQuote(sgx)).toThrow(/SGX quote/);
    const v6 = Buffer.from(v4);
    v6.writeUInt16LE(6, 0);
    expect(() => parseTdQuote(v6)).toThrow(/version 6/);
    const badBody = Buffer.from(fixture('trustee-tdx_quote_5.dat'));
    badBody.writeUInt16LE(4, 0x30);
    expect(() => parseTdQuote(badBody)).toThrow(/v5 body: type 4/);
  });
});

describe('TDREPORT parser', () => {
  it('reads RTMRs where guest-components reads them (attester/test/tdx_report_1.bin)', () => {
    const r = parseTdReport(fixture('guest-components-tdx_report_1.bin'));
    expect(r.reportType[0]).toBe(0x81);
    // guest-components tdx/report.rs test vectors: PCR 1 → RTMR0, PCR 2 → RTMR1, PCR 8/16 → RTMR2/3
    expect(r.rtmr[0].toString('hex')).toBe(
      'f4ec1a04670fe7926cd5de4aef9aaa7689ab4ceaa132d7c5242b47f67dfaaea64c372a17ad68fef9a6ac99aabbddabdc',
    );
    expect(r.rtmr[1].toString('hex')).toBe(
      '4e5f8826653198ab4bc5156fbe4bc99db054c0b8239a16c4b59249fb427f4acc50eed1b46a85c7d526c4e1e47621b14c',
    );
    expect(r.rtmr[2].equals(Buffer.alloc(48))).toBe(true);
    expect(r.rtmr[3].equals(Buffer.alloc(48))).toBe(true);
    expect(r.xfam.toString('hex')).toBe('e742060000000000');
    expect(r.attributes.toString('hex')).toBe('0000001000000000');
  });

  it('rejects a wrong size or a non-TDX report type', () => {
    expect(() => parseTdReport(Buffer.alloc(1023))).toThrow(/1024 bytes/);
    expect(() => parseTdReport(Buffer.alloc(1024))).toThrow(/0x81/);
  });
});

describe('CCEL trimming', () => {
  /**
   * Replays the trimmed log into RTMRs (CC MR index 1..4 → RTMR0..3, SHA-384 extend, EV_NO_ACTION skipped) and
   * compares with the RTMRs of the quote made on the same VM: only a correct walk reproduces them.
   */
  it('keeps exactly the events of go-tdx-guest’s cos-113 CCEL (replay matches the quote’s RTMRs)', () => {
    const raw = fixture('go-tdx-guest-cos-113-ccel_data.dat');
    const trimmed = trimCcel(raw);
    expect(trimmed.length).toBeLessThan(raw.length);
    const terminator = raw.subarray(trimmed.length, trimmed.length + 8);
    expect(terminator.every((b) => b === 0xff) || terminator.every((b) => b === 0)).toBe(true);

    const rtmr = [0, 1, 2, 3].map(() => Buffer.alloc(48));
    let i = 32 + trimmed.readUInt32LE(28); // after the spec-ID event
    while (i < trimmed.length) {
      const mr = trimmed.readUInt32LE(i);
      const type = trimmed.readUInt32LE(i + 4);
      const count = trimmed.readUInt32LE(i + 8);
      i += 12;
      let sha384: Buffer | undefined;
      for (let d = 0; d < count; d++) {
        const alg = trimmed.readUInt16LE(i);
        const len = ({ 0x0b: 32, 0x0c: 48, 0x0d: 64, 0x12: 32 } as Record<number, number>)[alg]!;
        if (alg === 0x0c) sha384 = trimmed.subarray(i + 2, i + 2 + len);
        i += 2 + len;
      }
      i += 4 + trimmed.readUInt32LE(i);
      if (type !== 0x3 && sha384 && mr >= 1 && mr <= 4) {
        rtmr[mr - 1] = createHash('sha384').update(Buffer.concat([rtmr[mr - 1]!, sha384])).digest();
      }
    }
    expect(i).toBe(trimmed.length);
    const q = parseTdQuote(fixture('go-tdx-guest-cos-113-tdx-quote.dat'));
    expect(rtmr[0]!.equals(q.body.rtmr[0])).toBe(true);
    expect(rtmr[1]!.equals(q.body.rtmr[1])).toBe(true);
    expect(rtmr[2]!.equals(q.body.rtmr[2])).toBe(true);
    expect(rtmr[3]!.equals(q.body.rtmr[3])).toBe(true);
    expect(rtmr[0]!.equals(Buffer.alloc(48))).toBe(false); // the replay really extended something
  });

  it('fails like guest-components on a log without an end marker', () => {
    const raw = fixture('go-tdx-guest-cos-113-ccel_data.dat');
    const trimmed = trimCcel(raw);
    expect(() => trimCcel(trimmed)).toThrow(/no end marker/);
    expect(() => trimCcel(Buffer.alloc(6))).toThrow(/not enough length/);
  });
});
