/**
 * Azure confidential VMs (az-snp-vtpm, az-tdx-vtpm). The paravisor owns the hardware report, so evidence is a
 * vTPM quote plus the HCL report plus IMDS data (az-cvm-vtpm's `az-snp-vtpm` / `az-tdx-vtpm`), produced with raw TPM 2.0 commands
 * (no TSS) exactly as guest-components' attesters do through az-cvm-vtpm:
 *   1. report data (unpadded) → NV 0x01400002 (defined owner-read/write, redefined if its size differs);
 *   2. wait 3 s, read the HCL report (NV 0x01400001): the paravisor has put the report data in `user-data`;
 *   3. az-tdx-vtpm: TD quote for the HCL report's TDREPORT from IMDS;
 *   4. TPM2_Quote with the AK 0x81000003 over SHA-256 PCRs 0–23, qualifying data = report data; PCR_Read;
 *   5. az-snp-vtpm: VCEK from IMDS.
 * Evidence v2, the shape trustee's `deps/verifier/src/az_{snp,tdx}_vtpm/compat.rs` `EvidenceV2` deserialises, or
 * the same shape labelled v1 for trustee v0.18–v0.20 (`attestation.azure_evidence_version`).
 */
import { createHash } from 'node:crypto';
import type { AttestationConfig } from '../config/types.js';
import type { Attester, TeeType } from './attester.js';
import { DecoderError } from '../util/errors.js';
import { httpAzureImds, type AzureImds } from './azure-imds.js';
import { HCL_REPORT_TYPE_OFFSET, HCL_REPORT_TYPE_SNP, HCL_REPORT_TYPE_TDX, HCL_SIGNATURE, hclTdReport, hclUserData, parseHclReport } from './hcl-report.js';
import { parseQuoteAttest } from './tpm/attest.js';
import { TPMA_NV_OWNERWRITE_OWNERREAD, TPM_ALG_SHA256 } from './tpm/constants.js';
import { nvDefineSpace, nvRead, nvReadFull, nvReadPublic, nvUndefineSpace, nvWrite } from './tpm/nv.js';
import { pcrReadBank } from './tpm/pcr-read.js';
import { MAX_QUALIFYING_DATA, tpmQuote } from './tpm/quote.js';
import { deviceTpmTransport, type TpmTransport } from './tpm/transport.js';
import { abortable } from '../util/abortable.js';

export { deviceTpmTransport, type TpmTransport };

export type AzureTee = Extract<TeeType, 'az-snp-vtpm' | 'az-tdx-vtpm'>;

/** DMI chassis asset tag of every Azure VM (cloud-init `ChassisAssetTag.AZURE_CLOUD`). */
export const AZURE_CHASSIS_ASSET_TAG = '7783-7084-3265-9085-8269-3286-77';
/** az-cvm-vtpm `VTPM_HCL_REPORT_NV_INDEX`, `INDEX_REPORT_DATA`, `VTPM_AK_HANDLE`. */
export const HCL_REPORT_NV_INDEX = 0x01400001;
export const REPORT_DATA_NV_INDEX = 0x01400002;
export const AK_HANDLE = 0x81000003;
/** az-cvm-vtpm `VTPM_QUOTE_PCR_SLOTS`: SHA-256 PCRs 0–23. */
export const QUOTE_PCRS = { hashAlg: TPM_ALG_SHA256, pcrs: Array.from({ length: 24 }, (_, i) => i) };
/** az-cvm-vtpm sleeps this long after writing the report data "to avoid retrieving a stale report". */
export const HCL_REFRESH_DELAY_MS = 3000;
/** A PCR extended between TPM2_Quote and TPM2_PCR_Read breaks the digest; quote again this many times. */
const QUOTE_ATTEMPTS = 3;

export interface TpmQuoteJson {
  signature: string;
  message: string;
  pcrs: string[];
}
export interface AzSnpVtpmEvidence {
  /** 2 (trustee ≥ v0.21) or 1 (v0.18–v0.20): the same shape (trustee `compat.rs` `EvidenceV1`/`EvidenceV2`). */
  version: 1 | 2;
  tpm_quote: TpmQuoteJson;
  hcl_report: string;
  vcek: string;
}
export interface AzTdxVtpmEvidence {
  version: 1 | 2;
  tpm_quote: TpmQuoteJson;
  hcl_report: string;
  td_quote: string;
}

/** Seams beyond the config (tests, unusual systems). */
export interface AzureVtpmOptions {
  transport?: TpmTransport;
  imds?: AzureImds;
  hclRefreshDelayMs?: number;
}

export function createAzureVtpmAttester(tee: AzureTee, config: AttestationConfig, options: AzureVtpmOptions = {}): Attester {
  const transport = options.transport ?? deviceTpmTransport(config.tpmDevice);
  const imds = options.imds ?? httpAzureImds();
  const delayMs = options.hclRefreshDelayMs ?? HCL_REFRESH_DELAY_MS;
  let queue: Promise<unknown> = Promise.resolve();
  return {
    tee,
    hardware: true,
    getEvidence(reportData: Uint8Array, signal?: AbortSignal): Promise<AzSnpVtpmEvidence | AzTdxVtpmEvidence> {
      // Every TPM command checks the layer's signal first, so an abandoned collection stops at the next command.
      const bound: TpmTransport = (command) => {
        if (signal?.aborted) return Promise.reject(new DecoderError('vTPM evidence abandoned: the layer deadline passed'));
        return abortable(transport(command), signal, 'vTPM evidence');
      };
      // The NV index is shared state: one evidence collection at a time.
      const run = queue.then(() => collectEvidence(tee, bound, imds, delayMs, Buffer.from(reportData), config.azureEvidenceVersion ?? 2));
      queue = run.catch(() => undefined);
      return abortable(run, signal, 'vTPM evidence');
    },
  };
}

async function collectEvidence(
  tee: AzureTee,
  transport: TpmTransport,
  imds: AzureImds,
  delayMs: number,
  reportData: Buffer,
  version: 1 | 2,
): Promise<AzSnpVtpmEvidence | AzTdxVtpmEvidence> {
  if (reportData.length === 0 || reportData.length > MAX_QUALIFYING_DATA) {
    throw new DecoderError(`${tee}: report data must be 1..${MAX_QUALIFYING_DATA} bytes, got ${reportData.length}`);
  }
  const hclBytes = await hclReportWithReportData(transport, reportData, delayMs);
  const hcl = parseHclReport(hclBytes);
  const wantType = tee === 'az-snp-vtpm' ? HCL_REPORT_TYPE_SNP : HCL_REPORT_TYPE_TDX;
  if (hcl.reportType !== wantType) {
    throw new DecoderError(`${tee}: the vTPM's HCL report is of type ${hcl.reportType}, expected ${wantType}; set attestation.tee to match this VM`);
  }
  // trustee (evidence v2) requires user-data to start with the report data; a stale report would be rejected there.
  const userData = hclUserData(hcl);
  if (!userData.subarray(0, reportData.length).equals(reportData)) {
    throw new DecoderError(
      `${tee}: the HCL report's user-data ${userData.toString('hex')} does not carry the report data ${reportData.toString('hex')} ` +
        '(the paravisor did not refresh the report)',
    );
  }
  const tdQuote = tee === 'az-tdx-vtpm' ? await imds.tdQuote(hclTdReport(hcl)) : undefined;
  const quote = await quoteWithPcrs(transport, reportData);
  const hclReport = base64UrlPadded(hclBytes);
  if (tee === 'az-snp-vtpm') {
    return { version, tpm_quote: quote, hcl_report: hclReport, vcek: base64UrlPadded(await imds.vcekDer()) };
  }
  return { version, tpm_quote: quote, hcl_report: hclReport, td_quote: base64UrlPadded(tdQuote!) };
}

/** az-cvm-vtpm `get_report_with_report_data`. */
export async function hclReportWithReportData(transport: TpmTransport, reportData: Buffer, delayMs: number): Promise<Buffer> {
  const pub = await nvReadPublic(transport, REPORT_DATA_NV_INDEX);
  if (pub && pub.dataSize !== reportData.length) await nvUndefineSpace(transport, REPORT_DATA_NV_INDEX);
  if (!pub || pub.dataSize !== reportData.length) {
    await nvDefineSpace(transport, REPORT_DATA_NV_INDEX, reportData.length, TPMA_NV_OWNERWRITE_OWNERREAD);
  }
  await nvWrite(transport, REPORT_DATA_NV_INDEX, reportData);
  if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
  return nvReadFull(transport, HCL_REPORT_NV_INDEX);
}

/** az-cvm-vtpm `get_quote`, plus the checks trustee will make on the nonce and the PCR digest. */
async function quoteWithPcrs(transport: TpmTransport, reportData: Buffer): Promise<TpmQuoteJson> {
  for (let attempt = 1; ; attempt++) {
    const { message, signature } = await tpmQuote(transport, AK_HANDLE, reportData, QUOTE_PCRS);
    const attest = parseQuoteAttest(message);
    if (!attest.extraData.equals(reportData)) {
      throw new DecoderError(
        `TPM quote extraData ${attest.extraData.toString('hex')} does not equal the report data ${reportData.toString('hex')}`,
      );
    }
    const pcrs = await pcrReadBank(transport, QUOTE_PCRS);
    const digest = createHash('sha256').update(Buffer.concat(pcrs)).digest();
    if (digest.equals(attest.pcrDigest)) {
      return { signature: signature.toString('hex'), message: message.toString('hex'), pcrs: pcrs.map((p) => p.toString('hex')) };
    }
    if (attempt >= QUOTE_ATTEMPTS) {
      throw new DecoderError(
        `TPM quote PCR digest ${attest.pcrDigest.toString('hex')} does not match the PCRs read (${digest.toString('hex')}) ` +
          `after ${QUOTE_ATTEMPTS} attempts (PCRs keep changing)`,
      );
    }
  }
}

/** serde_with `Base64<UrlSafe>` (padded) as guest-components serialises it. */
export function base64UrlPadded(b: Buffer): string {
  const s = b.toString('base64url');
  return s + '='.repeat((4 - (s.length % 4)) % 4);
}

/**
 * The Azure CVM flavour from the HCL report in the vTPM, or undefined when there is no HCL report (not an Azure
 * CVM, no TPM access). Never throws: this is a detection probe. Reads only the signature and report type.
 */
export async function readHclTeeType(transport: TpmTransport): Promise<AzureTee | undefined> {
  try {
    const pub = await nvReadPublic(transport, HCL_REPORT_NV_INDEX);
    if (!pub || pub.dataSize < HCL_REPORT_TYPE_OFFSET + 4) return undefined;
    const sig = await nvRead(transport, HCL_REPORT_NV_INDEX, 0, 4);
    if (!sig.equals(HCL_SIGNATURE)) return undefined;
    const type = await nvRead(transport, HCL_REPORT_NV_INDEX, HCL_REPORT_TYPE_OFFSET, 4);
    switch (type.readUInt32LE(0)) {
      case HCL_REPORT_TYPE_SNP:
        return 'az-snp-vtpm';
      case HCL_REPORT_TYPE_TDX:
        return 'az-tdx-vtpm';
      default:
        return undefined;
    }
  } catch {
    return undefined;
  }
}
