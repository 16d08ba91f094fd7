/**
 * The key-wrap scheme interface, modelled on ocicrypt's keywrap registry: one module per scheme, each unwrapping
 * the private layer options (privopts JSON) from one entry of its `org.opencontainers.image.enc.keys.<scheme>`
 * annotation.
 */

/** ocicrypt's DecryptConfig.Parameters (Go `map[string][][]byte`); `null` elements are Go nil (e.g. no password). */
export type DecryptParameters = Record<string, Array<Buffer | null>>;

export const ANNOTATION_PREFIX = 'org.opencontainers.image.enc.keys.';
export const PUBOPTS_ANNOTATION = 'org.opencontainers.image.enc.pubopts';

export interface UnwrapContext {
  /** Merged keys-directory + payload parameters (keys directory first, as ctd-decoder does). */
  readonly params: DecryptParameters;
  /** Digest of the layer being decrypted, for messages and audit only. */
  readonly layerDigest: string;
  /** Aborted when the overall deadline passes; schemes doing I/O must honour it. */
  readonly signal: AbortSignal;
}

/** What the audit log says about how a layer key was unwrapped. */
export interface UnwrapAudit {
  scheme?: string;
  kid?: string;
  tokenFromCache?: boolean;
}

/** An entry addressed to us: the privopts JSON, and what the audit log may add (the caller adds the scheme). */
export interface UnwrappedEntry {
  readonly privopts: Buffer;
  readonly facts?: Readonly<Omit<UnwrapAudit, 'scheme'>>;
}

export interface KeyWrapper {
  /** Scheme name as in the annotation suffix: `jwe`, `pkcs7`, `provider.attestation-agent`, ... */
  readonly scheme: string;
  /** When false the scheme cannot work in this build (pgp, pkcs11): layers with only these fail with a clear message. */
  readonly supported: boolean;
  /** ocicrypt `NoPossibleKeys`: nothing in params could unwrap this scheme, so skip it without an error. */
  noPossibleKeys(params: DecryptParameters): boolean;
  /** ocicrypt `len(GetPrivateKeys) > 0`: selects which of ocicrypt's two summary messages applies. */
  hasPrivateKeys(params: DecryptParameters): boolean;
  /**
   * Unwraps one base64-decoded annotation entry. Returns the privopts JSON bytes (with the facts the audit log
   * may record), `null` when the entry is simply not addressed to any key we hold (ocicrypt's "nil, nil"), and
   * throws a DecoderError otherwise.
   */
  unwrap(entry: Buffer, ctx: UnwrapContext): Promise<UnwrappedEntry | null>;
}

/** ocicrypt's `privkeys` parameter: the private keys the jwe and pkcs7 schemes try, keys directory first. */
export function privateKeysOf(params: DecryptParameters): Array<Buffer | null> {
  return params['privkeys'] ?? [];
}

export function annotationFor(scheme: string): string {
  return ANNOTATION_PREFIX + scheme;
}
