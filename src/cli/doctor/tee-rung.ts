/**
 * Rung 2: a TEE is found and produces evidence, exactly as the decoder would get it (`createAttester`). Evidence
 * from the `sample` attester is not hardware evidence: a KBS that accepts it protects nothing, so it fails the
 * ladder unless `--allow-sample` says this is a test setup.
 */
import type { Attester } from '../../attest/attester.js';
import type { Config } from '../../config/types.js';
import { describeError } from '../../util/errors.js';
import { fail, pass, withTimeout } from './rung.js';
import type { RungResult } from './rung.js';

export interface TeeOutcome {
  result: RungResult;
  /** Also returned for `sample` (the rest of the ladder can still run in a test setup). */
  attester?: Attester;
}

const EVIDENCE_TIMEOUT_MS = 60_000;
/** The size of the SHA-384 runtime-data digest a KBS session binds; zeros: recognisably not bound to anything. */
const DUMMY_REPORT_DATA = new Uint8Array(48);

export async function checkTee(config: Config, opts: { allowSample: boolean }): Promise<TeeOutcome> {
  const selection = config.attestation.tee;
  let attester: Attester;
  try {
    const { createAttester } = await import('../../attest/select.js');
    attester = await withTimeout(createAttester(config.attestation), EVIDENCE_TIMEOUT_MS, 'TEE detection');
  } catch (err) {
    const fix =
      selection === 'auto'
        ? 'run on an Intel TDX or AMD SEV-SNP confidential VM (configfs-tsm, /dev/tdx_guest or /dev/sev-guest), or set attestation.tee'
        : `check that this VM really is "${selection}" and that the device/configfs-tsm is present and accessible (root)`;
    return { result: fail('tee', describeError(err), fix) };
  }
  let size: number;
  try {
    const evidence = await withTimeout(attester.getEvidence(DUMMY_REPORT_DATA), EVIDENCE_TIMEOUT_MS, `${attester.tee} evidence`);
    size = Buffer.byteLength(JSON.stringify(evidence) ?? '', 'utf8');
  } catch (err) {
    return {
      result: fail('tee', `${attester.tee}: no evidence: ${describeError(err)}`, 'run `coco-decoder evidence` as root for details; check the kernel TEE guest driver and the quote service'),
      attester,
    };
  }
  const how = selection === 'auto' ? 'detected' : 'configured';
  if (attester.hardware) {
    return { result: pass('tee', `${attester.tee} (${how}): hardware evidence produced (${size} bytes)`), attester };
  }
  const detail = `${attester.tee} (${how}): evidence produced (${size} bytes) but it is NOT hardware evidence`;
  if (opts.allowSample) return { result: pass('tee', `${detail}; development only, accepted by --allow-sample`), attester };
  return {
    result: fail('tee', detail, 'development only: on a confidential VM set attestation.tee = "auto" (or "tdx"/"snp"); use --allow-sample to accept it in a test setup'),
    attester,
  };
}
