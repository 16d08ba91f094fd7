/**
 * Trustee's error responses (trustee kbs/src/error.rs): body
 * `{"type":"https://github.com/confidential-containers/kbs/errors/<Variant>","detail":"<Display>"}`,
 * 404 only for `InvalidRequestPath` / `PluginNotFound`, 401 for everything else. actix builds the body with
 * `.body(BoxBody)`, so no Content-Type header is set; we do the same so clients cannot come to rely on one.
 */

export type KbsErrorVariant =
  | 'AttestationError'
  | 'InvalidRequestPath'
  | 'JweError'
  | 'PluginNotFound'
  | 'PluginInternalError'
  | 'PolicyDeny'
  | 'TokenNotFound'
  | 'TokenVerifierError';

export const ERROR_TYPE_PREFIX = 'https://github.com/confidential-containers/kbs/errors';

export class KbsError extends Error {
  constructor(
    readonly variant: KbsErrorVariant,
    readonly detail: string,
  ) {
    super(detail);
  }

  get status(): number {
    return this.variant === 'InvalidRequestPath' || this.variant === 'PluginNotFound' ? 404 : 401;
  }

  body(): string {
    return JSON.stringify({ type: `${ERROR_TYPE_PREFIX}/${this.variant}`, detail: this.detail });
  }
}

/** `/auth` failures carry their (outermost anyhow) cause in the detail. */
export const authFailed = (cause: string): KbsError =>
  new KbsError('AttestationError', `Attestation error: RCAR handshake Auth failed: ${cause}`);

/** Every `/attest` failure has this one generic detail; the cause only reaches trustee's log. */
export const attestFailed = (): KbsError => new KbsError('AttestationError', 'Attestation error: RCAR handshake Attest failed');

export const tokenNotFound = (): KbsError => new KbsError('TokenNotFound', 'Attestation Token not found');
export const tokenVerifierError = (): KbsError => new KbsError('TokenVerifierError', 'Token Verifier error');
export const policyDeny = (): KbsError => new KbsError('PolicyDeny', 'Access denied by policy');
export const pluginInternalError = (): KbsError => new KbsError('PluginInternalError', 'Plugin internal error');
export const pluginNotFound = (name: string): KbsError => new KbsError('PluginNotFound', `Plugin ${name} not found`);
export const jweError = (): KbsError => new KbsError('JweError', 'JWE failed');
