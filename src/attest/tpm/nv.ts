/**
 * TPM 2.0 NV storage commands (Part 3 §31) with owner authorisation and the empty password session, the way
 * az-cvm-vtpm drives the Azure vTPM (`NvAuth::Owner`, `Provision::Owner`, `AuthSession::Password`).
 */
import { DecoderError } from '../../util/errors.js';
import { TpmResponseError, TpmWriter, runCommand } from './command.js';
import { TPM_ALG_SHA256, TPM_CC, TPM_RC_HANDLE, TPM_RH_OWNER } from './constants.js';
import type { TpmTransport } from './transport.js';

/** TPMS_NV_PUBLIC. */
export interface NvPublic {
  nvIndex: number;
  nameAlg: number;
  attributes: number;
  authPolicy: Buffer;
  dataSize: number;
}

/** Largest chunk per TPM2_NV_Read / TPM2_NV_Write: MAX_NV_BUFFER_SIZE of common TPMs (and swtpm) is 1024. */
export const NV_CHUNK = 1024;

/** TPM2_NV_ReadPublic, or undefined when the index is not defined (TPM_RC_HANDLE). */
export async function nvReadPublic(transport: TpmTransport, index: number): Promise<NvPublic | undefined> {
  try {
    const r = await runCommand(transport, {
      name: 'NV_ReadPublic',
      code: TPM_CC.NV_ReadPublic,
      handles: [index],
      passwordSession: false,
      parameters: Buffer.alloc(0),
    });
    const size = r.u16();
    const start = r.offset;
    const pub: NvPublic = { nvIndex: r.u32(), nameAlg: r.u16(), attributes: r.u32(), authPolicy: r.sized(), dataSize: r.u16() };
    if (r.offset - start !== size) throw new DecoderError('malformed TPM2_NV_ReadPublic response: TPM2B_NV_PUBLIC size mismatch');
    if (pub.nvIndex !== index) throw new DecoderError(`TPM2_NV_ReadPublic answered for index 0x${pub.nvIndex.toString(16)}`);
    return pub;
  } catch (err) {
    if (err instanceof TpmResponseError && err.baseRc === TPM_RC_HANDLE) return undefined;
    throw err;
  }
}

/** TPM2_NV_Read of `size` bytes at `offset` (one command; `size` ≤ NV_CHUNK). */
export async function nvRead(transport: TpmTransport, index: number, offset: number, size: number): Promise<Buffer> {
  const r = await runCommand(transport, {
    name: 'NV_Read',
    code: TPM_CC.NV_Read,
    handles: [TPM_RH_OWNER, index],
    passwordSession: true,
    parameters: new TpmWriter().u16(size).u16(offset).done(),
  });
  const data = r.sized();
  if (data.length !== size) throw new DecoderError(`TPM2_NV_Read returned ${data.length} bytes, asked for ${size}`);
  return data;
}

/** The whole data area of an NV index (tss-esapi `nv::read_full`): size from NV_ReadPublic, then chunked reads. */
export async function nvReadFull(transport: TpmTransport, index: number): Promise<Buffer> {
  const pub = await nvReadPublic(transport, index);
  if (!pub) throw new DecoderError(`TPM NV index 0x${index.toString(16)} is not defined`);
  const parts: Buffer[] = [];
  for (let off = 0; off < pub.dataSize; off += NV_CHUNK) {
    parts.push(await nvRead(transport, index, off, Math.min(NV_CHUNK, pub.dataSize - off)));
  }
  return Buffer.concat(parts);
}

/** TPM2_NV_DefineSpace under the owner hierarchy with an empty index auth and no policy. */
export async function nvDefineSpace(
  transport: TpmTransport,
  index: number,
  dataSize: number,
  attributes: number,
  nameAlg = TPM_ALG_SHA256,
): Promise<void> {
  const nvPublic = new TpmWriter().u32(index).u16(nameAlg).u32(attributes).sized(Buffer.alloc(0)).u16(dataSize).done();
  await runCommand(transport, {
    name: 'NV_DefineSpace',
    code: TPM_CC.NV_DefineSpace,
    handles: [TPM_RH_OWNER],
    passwordSession: true,
    parameters: new TpmWriter().sized(Buffer.alloc(0)).sized(nvPublic).done(),
  });
}

/** TPM2_NV_UndefineSpace (owner authorisation). */
export async function nvUndefineSpace(transport: TpmTransport, index: number): Promise<void> {
  await runCommand(transport, {
    name: 'NV_UndefineSpace',
    code: TPM_CC.NV_UndefineSpace,
    handles: [TPM_RH_OWNER, index],
    passwordSession: true,
    parameters: Buffer.alloc(0),
  });
}

/** TPM2_NV_Write of `data` at `offset` (owner authorisation), chunked to NV_CHUNK. */
export async function nvWrite(transport: TpmTransport, index: number, data: Uint8Array, offset = 0): Promise<void> {
  if (data.length === 0) throw new DecoderError('refusing an empty TPM2_NV_Write');
  for (let off = 0; off < data.length; off += NV_CHUNK) {
    await runCommand(transport, {
      name: 'NV_Write',
      code: TPM_CC.NV_Write,
      handles: [TPM_RH_OWNER, index],
      passwordSession: true,
      parameters: new TpmWriter()
        .sized(data.subarray(off, off + NV_CHUNK))
        .u16(offset + off)
        .done(),
    });
  }
}
