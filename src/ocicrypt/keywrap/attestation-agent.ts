/**
 * `provider.attestation-agent`: layers wrapped by CoCo's coco_keyprovider, unwrapped in-process (no
 * attestation-agent daemon, no CDH). The annotation packet names a KBS resource (the KEK); the KEK arrives through
 * the injected `getKek` (the CLI builds it on the KBS client and token cache) and AES-256-GCM-unwraps the private
 * layer options. Loaded lazily, only for layers carrying this annotation.
 */
import { createDecipheriv } from 'node:crypto';
import { parseResourceUri } from '../../kbs/resource-uri.js';
import { DecoderError } from '../../util/errors.js';
import { parseAnnotationPacket } from './attestation-agent-packet.js';
import type { AnnotationPacket } from './attestation-agent-packet.js';
import { KEK_BYTES } from './attestation-agent-wrap.js';
import type { DecryptParameters, KeyWrapper, UnwrapContext, UnwrappedEntry } from './keywrapper.js';

export const ATTESTATION_AGENT_SCHEME = 'provider.attestation-agent';
const GCM_TAG_BYTES = 16;

/** The KEK for a KBS resource URI; the caller of the wrapper zeroes nothing: the wrapper zeroes the KEK it gets. */
export type GetKek = (kid: string, signal: AbortSignal) => Promise<{ kek: Buffer; tokenFromCache: boolean }>;

export function createAttestationAgentWrapper(getKek: GetKek): KeyWrapper {
  return {
    scheme: ATTESTATION_AGENT_SCHEME,
    supported: true,
    // The key comes from the KBS, not from decryption parameters: always worth trying, never a "private key".
    noPossibleKeys: (_params: DecryptParameters) => false,
    hasPrivateKeys: (_params: DecryptParameters) => false,

    async unwrap(entry: Buffer, ctx: UnwrapContext): Promise<UnwrappedEntry | null> {
      const packet = parseAnnotationPacket(entry);
      const uri = parseResourceUri(packet.kid);
      if (ctx.signal.aborted) throw new DecoderError(`fetching ${uri.uri} from the KBS was abandoned: the layer deadline passed`);
      const { kek, tokenFromCache } = await getKek(uri.uri, ctx.signal);
      try {
        if (kek.length !== KEK_BYTES) {
          throw new DecoderError(`the KBS resource ${uri.uri} is ${kek.length} bytes, not a ${KEK_BYTES}-byte AES-256 key encryption key`);
        }
        return { privopts: unwrapLayerKey(kek, packet, uri.uri), facts: { kid: uri.uri, tokenFromCache } };
      } finally {
        kek.fill(0);
      }
    },
  };
}

/** AES-256-GCM (12-byte IV, tag appended, no AAD) as coco_keyprovider writes it (the only wrap type accepted). */
function unwrapLayerKey(kek: Buffer, p: AnnotationPacket, kid: string): Buffer {
  const body = p.wrappedData.subarray(0, p.wrappedData.length - GCM_TAG_BYTES);
  const tag = p.wrappedData.subarray(p.wrappedData.length - GCM_TAG_BYTES);
  const d = createDecipheriv('aes-256-gcm', kek, p.iv);
  d.setAuthTag(tag);
  const head = d.update(body);
  try {
    return Buffer.concat([head, d.final()]);
  } catch {
    throw new DecoderError(
      `the key ${kid} from the KBS does not unwrap this layer's key (AES-256-GCM authentication failed): ` +
        'the KBS holds a different key under that path than the one the image was encrypted with',
    );
  } finally {
    head.fill(0); // the concatenated copy is what the caller gets (and zeroes)
  }
}
