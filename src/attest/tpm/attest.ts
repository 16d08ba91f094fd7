/** TPMS_ATTEST parsing (Part 2 §10.12.12) for quotes: what the verifier reads back out of the signed message. */
import { DecoderError } from '../../util/errors.js';
import { TpmReader } from './command.js';
import { TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE } from './constants.js';
import { readPcrSelection, type PcrBankSelection } from './pcr-selection.js';

export interface QuoteAttest {
  qualifiedSigner: Buffer;
  /** The caller's qualifying data (trustee calls it the nonce). */
  extraData: Buffer;
  pcrSelect: PcrBankSelection[];
  pcrDigest: Buffer;
}

export function parseQuoteAttest(message: Buffer): QuoteAttest {
  const r = new TpmReader(message, 'TPMS_ATTEST');
  const magic = r.u32();
  if (magic !== TPM_GENERATED_VALUE) throw new DecoderError(`TPMS_ATTEST magic is 0x${magic.toString(16)}, not TPM_GENERATED_VALUE`);
  const type = r.u16();
  if (type !== TPM_ST_ATTEST_QUOTE) throw new DecoderError(`TPMS_ATTEST type is 0x${type.toString(16)}, not a quote`);
  const qualifiedSigner = r.sized();
  const extraData = r.sized();
  r.u64(); // clockInfo.clock
  r.u32(); // resetCount
  r.u32(); // restartCount
  r.u8(); // safe
  r.u64(); // firmwareVersion
  const pcrSelect = readPcrSelection(r);
  const pcrDigest = r.sized();
  if (r.remaining !== 0) throw new DecoderError(`malformed TPMS_ATTEST: ${r.remaining} trailing bytes`);
  return { qualifiedSigner, extraData, pcrSelect, pcrDigest };
}
