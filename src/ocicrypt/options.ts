/**
 * The layer cipher options (ocicrypt `blockcipher.PublicLayerBlockCipherOptions` / `PrivateLayerBlockCipherOptions`): the public JSON in the `org.opencontainers.image.enc.pubopts` annotation
 * (cipher name, HMAC) and the private JSON every key wrapper unwraps (symmetric key, nonce). Messages follow
 * ocicrypt's so runbooks keep matching; the checks are stricter where upstream fails open (no nonce).
 */
import { GoJsonError, decodeStdBase64, goBytes, goField, goMap, goString, goStruct, parseJson } from '../util/gojson.js';
import { DecoderError } from '../util/errors.js';
import { quoteUntrusted } from '../util/quote.js';
import { PUBOPTS_ANNOTATION } from './keywrap/keywrapper.js';

export const LAYER_CIPHER = 'AES_256_CTR_HMAC_SHA256';
const KEY_BYTES = 32;
const NONCE_BYTES = 16;
const HMAC_BYTES = 32;

export interface PublicLayerOptions {
  cipher: string;
  hmac: Buffer | null;
  cipherOptions: Map<string, Buffer | null> | null;
}

export interface PrivateLayerOptions {
  symkey: Buffer | null;
  digest: string;
  cipherOptions: Map<string, Buffer | null> | null;
}

/** Everything the layer decipher needs. `key` is secret: the caller zeroes it once the cipher is set up. */
export interface LayerCipherOptions {
  key: Buffer;
  nonce: Buffer;
  hmac: Buffer;
}

function fail(message: string): DecoderError {
  return new DecoderError(message);
}

function cipherOptionsOf(obj: Record<string, unknown>, goType: string): Map<string, Buffer | null> | null {
  return goMap(goField(obj, 'cipheroptions'), `struct field ${goType}.cipheroptions`, 'map[string][]uint8', goBytes);
}

/** Go `json.Unmarshal` into `PublicLayerBlockCipherOptions`. */
export function parsePublicOptions(json: Buffer | string): PublicLayerOptions {
  try {
    const obj = goStruct(parseJson(json), 'value', 'blockcipher.PublicLayerBlockCipherOptions');
    const t = 'PublicLayerBlockCipherOptions';
    return {
      cipher: goString(goField(obj, 'cipher'), `struct field ${t}.cipher`),
      hmac: goBytes(goField(obj, 'hmac'), `struct field ${t}.hmac`),
      cipherOptions: cipherOptionsOf(obj, t),
    };
  } catch (err) {
    if (err instanceof GoJsonError) throw fail(`could not JSON unmarshal pubOptsData: ${err.message}`);
    throw err;
  }
}

/** Go `json.Unmarshal` into `PrivateLayerBlockCipherOptions`. Messages never quote the input (it holds the key). */
export function parsePrivateOptions(json: Buffer): PrivateLayerOptions {
  try {
    const obj = goStruct(parseJson(json), 'value', 'blockcipher.PrivateLayerBlockCipherOptions');
    const t = 'PrivateLayerBlockCipherOptions';
    return {
      symkey: goBytes(goField(obj, 'symkey'), `struct field ${t}.symkey`),
      digest: goString(goField(obj, 'digest'), `struct field ${t}.digest`),
      cipherOptions: cipherOptionsOf(obj, t),
    };
  } catch (err) {
    // JSON.parse's message can quote a fragment of the input: keep only a fixed description.
    if (err instanceof GoJsonError) {
      const detail = err.message.startsWith('invalid JSON') ? 'invalid JSON' : err.message;
      throw fail(`could not JSON unmarshal privOptsData: ${detail}`);
    }
    throw err;
  }
}

/**
 * Reads the pubopts annotation. An absent annotation is ocicrypt's `{}` (which then fails with `no cipher type
 * provided`).
 */
export function publicOptionsFromAnnotations(annotations: Record<string, string>): PublicLayerOptions {
  const b64 = Object.hasOwn(annotations, PUBOPTS_ANNOTATION) ? annotations[PUBOPTS_ANNOTATION]! : '';
  if (b64 === '') return { cipher: '', hmac: null, cipherOptions: null };
  const json = decodeStdBase64(b64);
  if (json === null) throw fail(`illegal base64 data in the ${PUBOPTS_ANNOTATION} annotation`);
  return parsePublicOptions(json);
}

/** Checks the public options on their own, before any key is unwrapped (no point attesting for a broken layer). */
export function checkPublicOptions(pub: PublicLayerOptions): void {
  if (pub.cipher === '') throw fail('no cipher type provided');
  if (pub.cipher !== LAYER_CIPHER) throw fail(`unsupported cipher type: ${quoteUntrusted(pub.cipher, 64)}`);
  // ocicrypt writes the nonce into the private options only. One in the public (unauthenticated) options would
  // let the registry choose the CTR counter: garbage that still passes the HMAC, which covers the ciphertext.
  if (pub.cipherOptions?.has('nonce')) throw fail('the public layer options carry a nonce; ocicrypt keeps it in the private options only');
  if (pub.hmac === null || pub.hmac.length === 0) throw fail('HMAC is not provided for decryption process');
  if (pub.hmac.length !== HMAC_BYTES) {
    throw fail(`invalid HMAC length of ${pub.hmac.length} bytes; need ${HMAC_BYTES} bytes`);
  }
}

/**
 * Combines public and private options into the cipher parameters. The nonce comes from the private options only
 * (see checkPublicOptions); unlike ocicrypt, a missing nonce is an error, not a random one.
 */
export function layerCipherOptions(pub: PublicLayerOptions, priv: PrivateLayerOptions): LayerCipherOptions {
  checkPublicOptions(pub);
  const key = priv.symkey ?? Buffer.alloc(0);
  if (key.length !== KEY_BYTES) throw fail(`invalid key length of ${key.length} bytes; need ${KEY_BYTES} bytes`);
  const nonce = priv.cipherOptions?.get('nonce');
  if (nonce === undefined) {
    throw fail('no nonce in the layer cipher options (ocicrypt would silently use a random one and output garbage)');
  }
  if (nonce === null || nonce.length !== NONCE_BYTES) {
    throw fail(`invalid nonce length of ${nonce?.length ?? 0} bytes; need ${NONCE_BYTES} bytes`);
  }
  return { key, nonce, hmac: pub.hmac! };
}

/**
 * The cipher parameters from the private options a key wrapper just unwrapped. Any failure here is one fixed
 * message per scheme: a message that varied with the decrypted bytes (bad JSON, bad base64, a key or nonce of the
 * wrong length) would let whoever controls the wrapped bytes learn about their plaintext one pull at a time.
 * The digest is returned for the optional plaintext check; the caller zeroes `key`.
 */
export function cipherOptionsFromUnwrapped(
  pub: PublicLayerOptions,
  privopts: Buffer,
  scheme: string,
): LayerCipherOptions & { digest: string } {
  let priv: PrivateLayerOptions | undefined;
  try {
    priv = parsePrivateOptions(privopts);
    const opts = layerCipherOptions(pub, priv);
    return { key: Buffer.from(opts.key), nonce: Buffer.from(opts.nonce), hmac: opts.hmac, digest: priv.digest };
  } catch {
    throw fail(`the private layer options unwrapped with ${quoteUntrusted(scheme, 64)} are not valid`);
  } finally {
    priv?.symkey?.fill(0);
    if (priv?.cipherOptions) for (const v of priv.cipherOptions.values()) v?.fill(0);
  }
}
