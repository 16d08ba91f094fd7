/**
 * Chooses the attester. Hardware modules are imported lazily so decoding with local keys or a warm token never
 * loads TEE code. `auto` picks hardware when present and otherwise refuses: `sample` must be configured explicitly.
 */
import type { AttestationConfig } from '../config/types.js';
import type { Attester, TeeType } from './attester.js';
import { DecoderError } from '../util/errors.js';

export async function createAttester(config: AttestationConfig): Promise<Attester> {
  const tee: TeeType = config.tee === 'auto' ? await detectOrRefuse(config) : config.tee;
  return loadAttester(tee, config);
}

async function detectOrRefuse(config: AttestationConfig): Promise<TeeType> {
  const { detectTee } = await import('./detect.js');
  const found = await detectTee(config);
  if (!found) {
    throw new DecoderError(
      'no TEE detected (no configfs-tsm provider, /dev/tdx_guest, /dev/sev-guest or Azure vTPM); ' +
        'set attestation.tee in the config (use "sample" only for development)',
    );
  }
  return found;
}

export async function loadAttester(tee: TeeType, config: AttestationConfig): Promise<Attester> {
  switch (tee) {
    case 'sample':
      return (await import('./sample.js')).createSampleAttester();
    case 'tdx':
      return (await import('./tdx.js')).createTdxAttester(config);
    case 'snp':
      return (await import('./snp.js')).createSnpAttester(config);
    case 'az-tdx-vtpm':
    case 'az-snp-vtpm':
      return (await import('./azure-vtpm.js')).createAzureVtpmAttester(tee, config);
  }
}
