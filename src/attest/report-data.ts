/**
 * The REPORTDATA field of TDX quotes and SEV-SNP reports is 64 bytes; the KBS binds a shorter runtime-data digest
 * (48 bytes of SHA-384), zero-padded, as trustee pads the value it expects.
 */
import { DecoderError } from '../util/errors.js';
import { TDX_REPORT_DATA_LEN } from './tdx-quote.js';

/** Zero-pads the runtime-data digest to the 64-byte REPORTDATA field (trustee pads the expected value alike). */
export function padReportData(reportData: Uint8Array, tee: string): Buffer {
  if (reportData.length > TDX_REPORT_DATA_LEN) {
    throw new DecoderError(`${tee} report data must be at most ${TDX_REPORT_DATA_LEN} bytes, got ${reportData.length}`);
  }
  const out = Buffer.alloc(TDX_REPORT_DATA_LEN);
  out.set(reportData);
  return out;
}
