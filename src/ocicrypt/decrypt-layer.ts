/**
 * The counterpart of ocicrypt's `DecryptLayer` (`encryption.go`): a layer's annotations, the decrypt parameters
 * and the key wrappers in; a ready `LayerDecipher` out (layer key unwrapped, cipher options checked). The CLI
 * does the I/O around it: payload and keys before, stdin/stdout after.
 */
import { LayerDecipher, type LayerDecipherOptions } from './layer-decipher.js';
import type { DecryptParameters, KeyWrapper, UnwrapAudit } from './keywrap/keywrapper.js';
import { checkPublicOptions, cipherOptionsFromUnwrapped, publicOptionsFromAnnotations, type PublicLayerOptions } from './options.js';
import { unwrapLayerKey } from './unwrap-layer-key.js';
import { DecoderError } from '../util/errors.js';

export { layerKeySchemes } from './unwrap-layer-key.js';

export interface DecryptLayerRequest {
  annotations: Record<string, string>;
  /** From `layerPublicOptions`, which the caller runs before loading any key. */
  publicOptions: PublicLayerOptions;
  /** For messages and the audit log only. */
  layerDigest: string;
  params: DecryptParameters;
  wrappers: readonly KeyWrapper[];
  /** The unwrap deadline (KBS, key providers). */
  signal: AbortSignal;
  /** Filled in with the scheme, kid and token-cache facts of the key that worked. */
  audit: UnwrapAudit;
  /** `[integrity] check_plain_digest`: the plaintext must hash to the digest in the private options. */
  checkPlainDigest: boolean;
  /** The blob the ciphertext must be, when the descriptor came from a content-store lookup (see LayerDecipher). */
  cipherDigest?: LayerDecipherOptions['cipherDigest'];
  /** The addon's cipher fast path; node:crypto when absent. */
  native?: LayerDecipherOptions['native'];
}

/**
 * The public options alone, checked before any key is loaded or unwrapped (no point attesting for a layer whose
 * cipher we cannot run). `decryptLayer` takes the result.
 */
export function layerPublicOptions(annotations: Record<string, string>): PublicLayerOptions {
  const pub = publicOptionsFromAnnotations(annotations);
  checkPublicOptions(pub);
  return pub;
}

export async function decryptLayer(req: DecryptLayerRequest): Promise<LayerDecipher> {
  const pub = req.publicOptions;
  const { privopts, audit } = await unwrapLayerKey(req.wrappers, req.annotations, {
    params: req.params,
    layerDigest: req.layerDigest,
    signal: req.signal,
  });
  // Recorded before the options are checked, so a layer that fails after its key was unwrapped names its kid.
  Object.assign(req.audit, audit);
  let options: ReturnType<typeof cipherOptionsFromUnwrapped>;
  try {
    options = cipherOptionsFromUnwrapped(pub, privopts, audit.scheme ?? 'unknown');
  } finally {
    privopts.fill(0);
  }
  try {
    return new LayerDecipher({
      ...options,
      ...(req.checkPlainDigest ? { plainSha256: plainSha256(options.digest) } : {}),
      ...(req.cipherDigest !== undefined ? { cipherDigest: req.cipherDigest } : {}),
      native: req.native,
    });
  } finally {
    options.key.fill(0);
  }
}

/** The private options must name the plaintext's sha256. The message is fixed (the digest is decrypted data). */
function plainSha256(digest: string): Buffer {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!m) {
    throw new DecoderError('the private layer options carry no sha256 plaintext digest, which [integrity] check_plain_digest requires');
  }
  return Buffer.from(m[1]!, 'hex');
}
