/**
 * TPM2_Quote (Part 3 §18.4) with the key's own signing scheme (TPM_ALG_NULL), as az-cvm-vtpm calls it; the
 * Azure AK is an RSASSA-SHA256 key, and anything else is refused because trustee verifies exactly that.
 */
import { DecoderError } from '../../util/errors.js';
import { TpmWriter, runCommand } from './command.js';
import { TPM_ALG_NULL, TPM_ALG_RSASSA, TPM_ALG_SHA256, TPM_CC } from './constants.js';
import { marshalPcrSelection, type PcrBankSelection } from './pcr-selection.js';
import type { TpmTransport } from './transport.js';

export interface TpmQuote {
  /** Marshalled TPMS_ATTEST (the signed message). */
  message: Buffer;
  /** Raw RSASSA-PKCS1-v1_5 signature bytes. */
  signature: Buffer;
}

/** TPM2B_DATA holds at most sizeof(TPMT_HA) = 64 bytes (tss-esapi `Data::MAX_SIZE`). */
export const MAX_QUALIFYING_DATA = 64;

export async function tpmQuote(
  transport: TpmTransport,
  signHandle: number,
  qualifyingData: Uint8Array,
  sel: PcrBankSelection,
): Promise<TpmQuote> {
  if (qualifyingData.length > MAX_QUALIFYING_DATA) {
    throw new DecoderError(`TPM quote qualifying data is ${qualifyingData.length} bytes, at most ${MAX_QUALIFYING_DATA} allowed`);
  }
  const r = await runCommand(transport, {
    name: 'Quote',
    code: TPM_CC.Quote,
    handles: [signHandle],
    passwordSession: true,
    parameters: new TpmWriter().sized(qualifyingData).u16(TPM_ALG_NULL).bytes(marshalPcrSelection(sel)).done(),
  });
  const message = r.sized();
  const sigAlg = r.u16();
  if (sigAlg !== TPM_ALG_RSASSA) throw new DecoderError(`TPM quote signature algorithm is 0x${sigAlg.toString(16)}, expected RSASSA`);
  const hashAlg = r.u16();
  if (hashAlg !== TPM_ALG_SHA256) throw new DecoderError(`TPM quote signature hash is 0x${hashAlg.toString(16)}, expected SHA-256`);
  const signature = r.sized();
  return { message, signature };
}
