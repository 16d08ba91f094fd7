/**
 * Trustee's `sample` / `sampledevice` verifiers (trustee deps/verifier/src/sample):
 * evidence `{svn: String, report_data: String (default "")}`, no signature, and
 * `base64::STANDARD.decode(report_data)` must equal the expected digest byte for byte (no zero padding).
 */

export interface SampleClaims {
  svn: string;
  report_data: string;
  launch_digest: string;
  platform_version: { major: number; minor: number };
  debug: boolean;
  init_data?: string;
}

/**
 * Rust's `base64` STANDARD engine: canonical `=` padding required and non-zero trailing bits rejected.
 * Node's decoder is lenient, so check shape first and then that re-encoding gives the same text.
 */
export function decodeBase64StdStrict(text: string): Buffer {
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(text)) {
    throw new Error('invalid base64 (STANDARD, padded)');
  }
  const bytes = Buffer.from(text, 'base64');
  if (bytes.toString('base64') !== text) throw new Error('invalid base64: non-canonical trailing bits');
  return bytes;
}

/** Verifies `evidence` against `expectedReportData`; returns the claims trustee's sample verifier emits. */
export function verifySampleEvidence(evidence: unknown, expectedReportData: Buffer, initDataDigest: Buffer | null): SampleClaims {
  if (typeof evidence !== 'object' || evidence === null || Array.isArray(evidence)) {
    throw new Error('Deserialize Quote failed.');
  }
  const ev = evidence as Record<string, unknown>;
  if (typeof ev['svn'] !== 'string') throw new Error('Deserialize Quote failed.');
  const reportDataText = ev['report_data'] === undefined ? '' : ev['report_data'];
  if (typeof reportDataText !== 'string') throw new Error('Deserialize Quote failed.');
  const reportData = decodeBase64StdStrict(reportDataText);
  if (!reportData.equals(expectedReportData)) throw new Error('REPORT_DATA is different from that in Sample Quote');
  const claims: SampleClaims = {
    svn: ev['svn'],
    report_data: reportDataText,
    launch_digest: 'abcde',
    platform_version: { major: 1, minor: 4 },
    debug: false,
  };
  if (initDataDigest) claims.init_data = initDataDigest.toString('base64');
  return claims;
}
