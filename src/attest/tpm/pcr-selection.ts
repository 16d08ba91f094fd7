/** TPML_PCR_SELECTION with a single bank (Part 2 §10.9.7), the only shape az-cvm-vtpm uses. */
import { DecoderError } from '../../util/errors.js';
import type { TpmReader } from './command.js';
import { TpmWriter } from './command.js';

export interface PcrBankSelection {
  hashAlg: number;
  /** Selected PCR indices, ascending. */
  pcrs: number[];
}

export function marshalPcrSelection(sel: PcrBankSelection): Buffer {
  const bitmap = Buffer.alloc(3); // PCR_SELECT_MIN: 24 PCRs
  for (const p of sel.pcrs) {
    if (!Number.isInteger(p) || p < 0 || p > 23) throw new DecoderError(`invalid PCR index ${p}`);
    bitmap[p >> 3]! |= 1 << (p & 7);
  }
  return new TpmWriter().u32(1).u16(sel.hashAlg).u8(bitmap.length).bytes(bitmap).done();
}

/** Reads a TPML_PCR_SELECTION; every bank is returned (a TPM may answer with several). */
export function readPcrSelection(r: TpmReader): PcrBankSelection[] {
  const count = r.u32();
  if (count > 16) throw new DecoderError(`malformed TPML_PCR_SELECTION: ${count} banks`);
  const banks: PcrBankSelection[] = [];
  for (let i = 0; i < count; i++) {
    const hashAlg = r.u16();
    const bitmap = r.bytes(r.u8());
    const pcrs: number[] = [];
    for (let p = 0; p < bitmap.length * 8; p++) if (bitmap[p >> 3]! & (1 << (p & 7))) pcrs.push(p);
    banks.push({ hashAlg, pcrs });
  }
  return banks;
}
