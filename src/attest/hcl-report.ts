/**
 * The Azure paravisor's HCL report (vTPM NV index 0x01400001), layout per az-cvm-vtpm `src/hcl/mod.rs`:
 * header @0 ("HCLA"), hardware report @0x20 (SNP report, or TDREPORT in the first 1024 bytes), IgvmRequestData
 * @0x4C0 (little-endian: data_size, version, report_type, report_data_hash_type, variable_data_size), variable
 * data (JSON) @0x4D4. Only what the attester needs to check its own output is parsed here.
 */
import { DecoderError } from '../util/errors.js';

export const HCL_SIGNATURE = Buffer.from('HCLA', 'ascii');
export const HCL_HW_REPORT_OFFSET = 0x20;
export const HCL_REPORT_TYPE_OFFSET = 0x4c8;
const HCL_VAR_DATA_SIZE_OFFSET = 0x4d0;
const HCL_VAR_DATA_OFFSET = 0x4d4;
export const HCL_REPORT_TYPE_SNP = 2;
export const HCL_REPORT_TYPE_TDX = 4;
export const TDREPORT_SIZE = 1024;

export interface HclReport {
  reportType: number;
  /** The hardware report area (SNP report or TDREPORT followed by padding). */
  hardwareReport: Buffer;
  /** The JSON the hardware report's REPORT_DATA[0..32] commits to (SHA-256). */
  varData: Buffer;
}

export function parseHclReport(bytes: Buffer): HclReport {
  if (bytes.length < HCL_VAR_DATA_OFFSET || !bytes.subarray(0, 4).equals(HCL_SIGNATURE)) {
    throw new DecoderError(`the vTPM's HCL report is not one (${bytes.length} bytes, no "HCLA" header)`);
  }
  const varSize = bytes.readUInt32LE(HCL_VAR_DATA_SIZE_OFFSET);
  if (HCL_VAR_DATA_OFFSET + varSize > bytes.length) {
    throw new DecoderError(`the vTPM's HCL report is truncated: variable data of ${varSize} bytes does not fit in ${bytes.length}`);
  }
  return {
    reportType: bytes.readUInt32LE(HCL_REPORT_TYPE_OFFSET),
    hardwareReport: bytes.subarray(HCL_HW_REPORT_OFFSET, 0x4c0),
    varData: bytes.subarray(HCL_VAR_DATA_OFFSET, HCL_VAR_DATA_OFFSET + varSize),
  };
}

/** The variable data's `"user-data"` (hex in the JSON), where the paravisor reflects NV 0x01400002. */
export function hclUserData(report: HclReport): Buffer {
  let json: unknown;
  try {
    json = JSON.parse(report.varData.toString('utf8'));
  } catch {
    throw new DecoderError('the HCL report variable data is not JSON');
  }
  const hex = (json as { 'user-data'?: unknown } | null)?.['user-data'];
  if (typeof hex !== 'string' || !/^([0-9a-fA-F]{2})*$/.test(hex)) {
    throw new DecoderError('the HCL report variable data has no hex "user-data"');
  }
  return Buffer.from(hex, 'hex');
}

/** TDREPORT carved from a TDX HCL report (az-cvm-vtpm `TdReport: TryFrom<HclReport>`). */
export function hclTdReport(report: HclReport): Buffer {
  if (report.reportType !== HCL_REPORT_TYPE_TDX) throw new DecoderError(`HCL report type ${report.reportType} is not TDX`);
  return Buffer.from(report.hardwareReport.subarray(0, TDREPORT_SIZE));
}
