/**
 * The encrypted layer media types ctd-decoder decrypts (imgcrypt `encryption.go`). Docker `…+encrypted` and
 * `nondistributable…+encrypted` types are rejected upstream too (imgcrypt `images/encryption`).
 */
import { quoteUntrusted } from '../util/quote.js';
import { DecoderError } from '../util/errors.js';

export const ACCEPTED_LAYER_MEDIA_TYPES = [
  'application/vnd.oci.image.layer.v1.tar+encrypted',
  'application/vnd.oci.image.layer.v1.tar+gzip+encrypted',
  'application/vnd.oci.image.layer.v1.tar+zstd+encrypted',
] as const;

export type EncryptedLayerMediaType = (typeof ACCEPTED_LAYER_MEDIA_TYPES)[number];

export function isAcceptedLayerMediaType(mediaType: string): mediaType is EncryptedLayerMediaType {
  return (ACCEPTED_LAYER_MEDIA_TYPES as readonly string[]).includes(mediaType);
}

/** Returns the media type when accepted; otherwise a one-line error naming what is accepted. */
export function checkLayerMediaType(mediaType: string): EncryptedLayerMediaType {
  if (isAcceptedLayerMediaType(mediaType)) return mediaType;
  const shown = mediaType === '' ? '(empty)' : quoteUntrusted(mediaType, 120);
  throw new DecoderError(
    `unsupported layer media type ${shown}; accepted: ${ACCEPTED_LAYER_MEDIA_TYPES.join(', ')}`,
  );
}
