/**
 * The wrapping side of `provider.attestation-agent`, as CoCo's coco_keyprovider writes it: the private layer
 * options under the KEK with AES-256-GCM (12-byte random IV, no AAD, tag appended), in the annotation packet
 * `{kid, wrapped_data, iv, wrap_type: "A256GCM"}` (see attestation-agent-packet.ts for the reading side).
 */
import { createCipheriv, randomBytes } from 'node:crypto';
import { DecoderError } from '../../util/errors.js';

export const KEK_BYTES = 32;

/** The annotation packet JSON for one recipient (the annotation value is its std base64). */
export function wrapForAttestationAgent(privateOptions: Buffer, kid: string, kek: Buffer): string {
  if (kek.length !== KEK_BYTES) throw new DecoderError(`the KEK for ${kid} must be ${KEK_BYTES} bytes, got ${kek.length}`);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', kek, iv);
  const wrapped = Buffer.concat([cipher.update(privateOptions), cipher.final(), cipher.getAuthTag()]);
  return JSON.stringify({ kid, wrapped_data: wrapped.toString('base64'), iv: iv.toString('base64'), wrap_type: 'A256GCM' });
}
