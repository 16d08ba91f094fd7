/**
 * Azure confidential VMs (az-snp-vtpm, az-tdx-vtpm). The paravisor owns the hardware report there, so evidence
 * is a vTPM quote plus the HCL report plus IMDS data (tee-guest-devices.md §4.3). That attester is NOT
 * implemented in coco-decoder yet: selecting it fails loudly instead of producing anything that looks like
 * evidence. What is implemented is detection: reading the HCL report's type from vTPM NV index 0x01400001 with
 * two raw TPM 2.0 commands (no TSS), so `auto` names the Azure TEE instead of claiming there is none.
 */
import { promises as fsp } from 'node:fs';
import type { AttestationConfig } from '../config/types.js';
import type { Attester, TeeType } from './attester.js';
import { DecoderError } from '../util/errors.js';

export function createAzureVtpmAttester(tee: Extract<TeeType, 'az-snp-vtpm' | 'az-tdx-vtpm'>, _config: AttestationConfig): Attester {
  throw new DecoderError(
    `the Azure vTPM attester (${tee}) is not implemented yet in coco-decoder; this Azure confidential VM cannot attest to the KBS with it ` +
      '(use guest-components\' attestation-agent with a keyprovider for now)',
  );
}

/** DMI chassis asset tag of every Azure VM (cloud-init `ChassisAssetTag.AZURE_CLOUD`). */
export const AZURE_CHASSIS_ASSET_TAG = '7783-7084-3265-9085-8269-3286-77';
/** vTPM NV index holding the paravisor's HCL report. */
export const HCL_REPORT_NV_INDEX = 0x01400001;
/** HCL report: "HCLA" signature @0, IgvmRequestData.report_type @0x4C8 (2 = SNP, 4 = TDX). */
const HCL_SIGNATURE = Buffer.from('HCLA', 'ascii');
const HCL_REPORT_TYPE_OFFSET = 0x4c8;
const HCL_REPORT_TYPE_SNP = 2;
const HCL_REPORT_TYPE_TDX = 4;

/** Sends one TPM command buffer, returns the response buffer. */
export type TpmTransport = (command: Buffer) => Promise<Buffer>;

/** A TPM character device (`/dev/tpmrm0`): one write of the command, one read of the response. */
export function deviceTpmTransport(device: string): TpmTransport {
  return async (command) => {
    const fh = await fsp.open(device, 'r+');
    try {
      await fh.write(command, 0, command.length, null);
      const buf = Buffer.alloc(4096);
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      return buf.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  };
}

const TPM_ST_NO_SESSIONS = 0x8001;
const TPM_ST_SESSIONS = 0x8002;
const TPM_CC_NV_READ = 0x0000014e;
const TPM_CC_NV_READ_PUBLIC = 0x00000169;
const TPM_RH_OWNER = 0x40000001;
const TPM_RS_PW = 0x40000009;

/**
 * The Azure CVM flavour from the HCL report in the vTPM, or undefined when there is no HCL report (not an Azure
 * CVM, no TPM access). Never throws: this is a detection probe.
 */
export async function readHclTeeType(transport: TpmTransport): Promise<'az-snp-vtpm' | 'az-tdx-vtpm' | undefined> {
  try {
    const size = await nvDataSize(transport, HCL_REPORT_NV_INDEX);
    if (size === undefined || size < HCL_REPORT_TYPE_OFFSET + 4) return undefined;
    const sig = await nvRead(transport, HCL_REPORT_NV_INDEX, 0, 4);
    if (!sig?.equals(HCL_SIGNATURE)) return undefined;
    const type = await nvRead(transport, HCL_REPORT_NV_INDEX, HCL_REPORT_TYPE_OFFSET, 4);
    if (!type || type.length !== 4) return undefined;
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

/** TPM2_NV_ReadPublic → TPMS_NV_PUBLIC.dataSize, or undefined if the index does not exist. */
async function nvDataSize(transport: TpmTransport, index: number): Promise<number | undefined> {
  const cmd = Buffer.alloc(14);
  cmd.writeUInt16BE(TPM_ST_NO_SESSIONS, 0);
  cmd.writeUInt32BE(cmd.length, 2);
  cmd.writeUInt32BE(TPM_CC_NV_READ_PUBLIC, 6);
  cmd.writeUInt32BE(index, 10);
  const rsp = await transport(cmd);
  if (rsp.length < 10 || rsp.readUInt32BE(6) !== 0) return undefined;
  // TPM2B_NV_PUBLIC: size u16, nvIndex u32, nameAlg u16, attributes u32, authPolicy TPM2B, dataSize u16
  let i = 10 + 2 + 4 + 2 + 4;
  if (rsp.length < i + 2) return undefined;
  i += 2 + rsp.readUInt16BE(i);
  if (rsp.length < i + 2) return undefined;
  return rsp.readUInt16BE(i);
}

/** TPM2_NV_Read with owner authorisation (empty password session), as Azure's own tooling does. */
async function nvRead(transport: TpmTransport, index: number, offset: number, size: number): Promise<Buffer | undefined> {
  const cmd = Buffer.alloc(10 + 8 + 4 + 9 + 4);
  let i = 0;
  i = cmd.writeUInt16BE(TPM_ST_SESSIONS, i);
  i = cmd.writeUInt32BE(cmd.length, i);
  i = cmd.writeUInt32BE(TPM_CC_NV_READ, i);
  i = cmd.writeUInt32BE(TPM_RH_OWNER, i);
  i = cmd.writeUInt32BE(index, i);
  i = cmd.writeUInt32BE(9, i); // authorizationSize
  i = cmd.writeUInt32BE(TPM_RS_PW, i);
  i = cmd.writeUInt16BE(0, i); // nonce
  i = cmd.writeUInt8(0, i); // session attributes
  i = cmd.writeUInt16BE(0, i); // hmac (empty password)
  i = cmd.writeUInt16BE(size, i);
  cmd.writeUInt16BE(offset, i);
  const rsp = await transport(cmd);
  if (rsp.length < 16 || rsp.readUInt32BE(6) !== 0) return undefined;
  // response: header(10), parameterSize u32, TPM2B_MAX_NV_BUFFER
  const len = rsp.readUInt16BE(14);
  if (rsp.length < 16 + len) return undefined;
  return Buffer.from(rsp.subarray(16, 16 + len));
}
