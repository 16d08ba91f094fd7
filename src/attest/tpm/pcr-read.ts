/**
 * TPM2_PCR_Read (Part 3 §22.4) of a whole bank. A TPM returns at most 8 digests per call (TPML_DIGEST), so we
 * ask again for what is still missing, as tss-esapi's `pcr::read_all` does.
 */
import { DecoderError } from '../../util/errors.js';
import { runCommand } from './command.js';
import { TPM_CC } from './constants.js';
import { marshalPcrSelection, readPcrSelection, type PcrBankSelection } from './pcr-selection.js';
import type { TpmTransport } from './transport.js';

/** PCR values of `sel.pcrs` in `sel.hashAlg`, in the order of `sel.pcrs` (ascending). */
export async function pcrReadBank(transport: TpmTransport, sel: PcrBankSelection): Promise<Buffer[]> {
  const values = new Map<number, Buffer>();
  let missing = [...sel.pcrs];
  while (missing.length > 0) {
    const r = await runCommand(transport, {
      name: 'PCR_Read',
      code: TPM_CC.PCR_Read,
      handles: [],
      passwordSession: false,
      parameters: marshalPcrSelection({ hashAlg: sel.hashAlg, pcrs: missing }),
    });
    r.u32(); // pcrUpdateCounter
    const banks = readPcrSelection(r);
    const count = r.u32();
    const digests: Buffer[] = [];
    for (let i = 0; i < count; i++) digests.push(r.sized());
    const returned = banks.filter((b) => b.hashAlg === sel.hashAlg).flatMap((b) => b.pcrs);
    if (returned.length === 0 || returned.length !== digests.length) {
      throw new DecoderError(`TPM2_PCR_Read returned no usable values for bank 0x${sel.hashAlg.toString(16)}`);
    }
    returned.forEach((p, i) => values.set(p, digests[i]!));
    missing = missing.filter((p) => !values.has(p));
  }
  return sel.pcrs.map((p) => values.get(p)!);
}
