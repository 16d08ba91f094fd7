/**
 * The `sample` attester (development only): no hardware, the "evidence" just carries the report data. trustee's
 * sample verifier compares base64-decoded `report_data` byte for byte with the digest, so it is sent unpadded
 * (48 bytes for SHA-384), unlike TDX/SNP which pad to 64. Selected only when `attestation.tee = "sample"`.
 */
import type { Attester } from './attester.js';

export interface SampleEvidence {
  svn: string;
  report_data: string;
}

export function createSampleAttester(): Attester {
  return {
    tee: 'sample',
    hardware: false,
    async getEvidence(reportData: Uint8Array): Promise<SampleEvidence> {
      return { svn: '1', report_data: Buffer.from(reportData).toString('base64') };
    },
  };
}
