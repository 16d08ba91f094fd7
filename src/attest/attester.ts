/**
 * One attester per TEE behind one interface, as guest-components' attester crate does. An attester turns the
 * runtime-data digest into the TEE-specific `primary_evidence` JSON that trustee's verifier for `tee` parses.
 */

import type { TeeType } from '../config/types.js';

/** KBS `tee` strings we can produce evidence for (kbs-types ≥ 0.14 spelling), as the config names them. */
export type { TeeType };
export const TEE_TYPES: readonly TeeType[] = ['sample', 'tdx', 'snp', 'az-tdx-vtpm', 'az-snp-vtpm'];

export interface Attester {
  /** The `tee` sent to `/kbs/v0/auth`. */
  readonly tee: TeeType;
  /** True for real hardware evidence; `sample` is false and must never be chosen silently. */
  readonly hardware: boolean;
  /**
   * Evidence binding `reportData` (the raw digest, 48 bytes for SHA-384). Padding to the TEE's field width
   * (64 bytes for TDX/SNP) is the attester's job; the result is the JSON value placed in `primary_evidence`.
   * `signal` is the layer's deadline: when it aborts, the promise rejects at once.
   */
  getEvidence(reportData: Uint8Array, signal?: AbortSignal): Promise<unknown>;
}
