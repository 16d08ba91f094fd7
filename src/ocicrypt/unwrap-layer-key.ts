/**
 * ocicrypt's `decryptLayerKeyOptsData` (`encryption.go`): find the private layer options in the layer's
 * `org.opencontainers.image.enc.keys.<scheme>` annotations. Upstream iterates a Go map (random order); we try the
 * schemes in the fixed order of `wrappers`, which is compatible since any success is equally valid.
 */
import { decodeStdBase64 } from '../util/gojson.js';
import { DecoderError, describeError, oneLine } from '../util/errors.js';
import { quoteUntrusted } from '../util/quote.js';
import { ANNOTATION_PREFIX, annotationFor, type KeyWrapper, type UnwrapAudit, type UnwrapContext, type UnwrappedEntry } from './keywrap/keywrapper.js';

const MISSING_KEY = 'missing private key needed for decryption';
const NO_UNWRAPPER = 'no suitable key unwrapper found or none of the private keys could be used for decryption';
/**
 * Entries one scheme's annotation may list. ocicrypt writes one per recipient; a registry could write thousands,
 * each a KBS round trip or an RSA operation.
 */
export const MAX_ENTRIES_PER_SCHEME = 8;
/** Unknown scheme names echoed in an error, at most. */
const MAX_NAMED_SCHEMES = 4;

/** The key-wrap schemes a layer has annotations for (`jwe`, `pkcs7`, `provider.attestation-agent`, ...). */
export function layerKeySchemes(annotations: Record<string, string>): string[] {
  return Object.keys(annotations)
    .filter((k) => k.startsWith(ANNOTATION_PREFIX) && k.length > ANNOTATION_PREFIX.length && annotations[k] !== '')
    .map((k) => k.slice(ANNOTATION_PREFIX.length));
}

/**
 * ocicrypt's `preUnwrapKey`: the annotation is a comma-separated list of std-base64 blobs, each tried in order.
 * Returns the privopts bytes, null when no entry was addressed to us, or throws the scheme's summary error.
 */
async function unwrapScheme(wrapper: KeyWrapper, b64: string, ctx: UnwrapContext): Promise<UnwrappedEntry | null> {
  const entryErrors: string[] = [];
  const items = b64.split(',');
  if (items.length > MAX_ENTRIES_PER_SCHEME) {
    throw new DecoderError(`the ${quoteUntrusted(wrapper.scheme, 64)} annotation lists ${items.length} wrapped keys; at most ${MAX_ENTRIES_PER_SCHEME} are tried`);
  }
  for (const item of items) {
    const entry = decodeStdBase64(item);
    if (entry === null) throw new DecoderError('could not base64 decode the annotation');
    ctx.signal.throwIfAborted();
    try {
      const unwrapped = await wrapper.unwrap(entry, ctx);
      if (unwrapped !== null) return unwrapped;
    } catch (err) {
      if (ctx.signal.aborted) throw err;
      entryErrors.push(describeError(err));
    }
  }
  if (entryErrors.length === 0) return null;
  // A key provider's own cause (KBS unreachable, policy denial, ...) is the clearest message; local schemes keep
  // ocicrypt's wording, which runbooks grep for.
  if (wrapper.scheme.startsWith('provider.')) throw new DecoderError(`${wrapper.scheme}: ${entryErrors.join('; ')}`);
  throw new DecoderError(`no suitable key found for decrypting layer key: ${entryErrors.join('; ')}`);
}

export interface UnwrappedLayerKey {
  /** The privopts JSON (the caller zeroes it). */
  privopts: Buffer;
  /** The scheme that unwrapped it, with the facts that scheme returned (kid, token from cache). */
  audit: UnwrapAudit;
}

/**
 * Returns the privopts JSON of the layer and how it was unwrapped, or throws one DecoderError with ocicrypt's
 * summary message followed by the collected causes, all on one line.
 */
export async function unwrapLayerKey(
  wrappers: readonly KeyWrapper[],
  annotations: Record<string, string>,
  ctx: UnwrapContext,
): Promise<UnwrappedLayerKey> {
  const present = new Set(layerKeySchemes(annotations));
  if (present.size === 0) {
    throw new DecoderError(`${MISSING_KEY}: the layer has no ${ANNOTATION_PREFIX}* annotation`);
  }
  let privKeyGiven = false;
  let usableSchemePresent = false;
  let attemptedAndFailed = false;
  const causes: string[] = [];
  const withoutKeys: string[] = [];
  const unsupported: string[] = [];

  for (const wrapper of wrappers) {
    if (!present.has(wrapper.scheme)) continue;
    present.delete(wrapper.scheme);
    const b64 = annotations[annotationFor(wrapper.scheme)]!;
    if (!wrapper.supported) {
      unsupported.push(wrapper.scheme);
      continue;
    }
    usableSchemePresent = true;
    if (wrapper.noPossibleKeys(ctx.params)) {
      withoutKeys.push(wrapper.scheme);
      continue;
    }
    if (wrapper.hasPrivateKeys(ctx.params)) privKeyGiven = true;
    ctx.signal.throwIfAborted();
    // Facts come only with a success: a scheme that fails (e.g. after naming its kid) leaves nothing behind.
    try {
      const unwrapped = await unwrapScheme(wrapper, b64, ctx);
      if (unwrapped !== null) return { privopts: unwrapped.privopts, audit: { scheme: wrapper.scheme, ...unwrapped.facts } };
    } catch (err) {
      if (ctx.signal.aborted) {
        throw new DecoderError(`timed out unwrapping the layer key (scheme ${wrapper.scheme})`, { cause: err });
      }
      attemptedAndFailed = true;
      causes.push(oneLine(err instanceof Error ? err.message : String(err)));
    }
  }

  if (!usableSchemePresent && unsupported.length > 0) {
    throw new DecoderError(
      `the layer key is wrapped only with ${unsupported.join(', ')}, which coco-decoder does not support; ` +
        're-encrypt the image for jwe, pkcs7 or a key provider (e.g. provider:attestation-agent)',
    );
  }
  if (withoutKeys.length > 0) {
    causes.push(`no private key was given for ${withoutKeys.join(', ')} (see --decryption-keys-path)`);
  }
  if (unsupported.length > 0) causes.push(`${unsupported.join(', ')} not supported by coco-decoder`);
  // Scheme names come from annotation keys the registry wrote: quoted, bounded, and only a few of them.
  const unknown = [...present];
  for (const scheme of unknown.slice(0, MAX_NAMED_SCHEMES)) {
    causes.push(
      scheme.startsWith('provider.')
        ? `key provider ${quoteUntrusted(scheme.slice('provider.'.length), 64)} is not configured (OCICRYPT_KEYPROVIDER_CONFIG)`
        : `unknown key-wrap scheme ${quoteUntrusted(scheme, 64)}`,
    );
  }
  if (unknown.length > MAX_NAMED_SCHEMES) causes.push(`and ${unknown.length - MAX_NAMED_SCHEMES} more unknown key-wrap schemes`);
  // ocicrypt says "missing private key" whenever no local key was given, even when a key provider (a KBS) was
  // asked and failed; that misleads the reader of a pull error, so then the provider's own cause leads.
  if (!privKeyGiven && attemptedAndFailed) {
    throw new DecoderError(causes.join('; '));
  }
  const summary = privKeyGiven ? NO_UNWRAPPER : MISSING_KEY;
  throw new DecoderError(causes.length > 0 ? `${summary}: ${causes.join('; ')}` : summary);
}
