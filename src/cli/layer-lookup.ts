/**
 * Wiring of the content-store lookup (containerd/layer-lookup.ts) for the decoder: which socket, which layers
 * qualify (the media type containerd announced and key annotations), the budget, and the error line. Loaded only
 * when containerd passed no usable payload, so the payload path never loads gRPC.
 */
import type { ContainerdConfig } from '../config/types.js';
import { connectContainerd } from '../containerd/client.js';
import { resolveContainerdAddress } from '../containerd/address.js';
import { HEAD_BYTES, lookupLayer, type LayerMatch } from '../containerd/layer-lookup.js';
import type { Descriptor } from '../containerd/manifest.js';
import { isAcceptedLayerMediaType } from '../streamprocessor/mediatype.js';
import type { StdinHead } from '../streamprocessor/stdin-head.js';
import { layerKeySchemes } from '../ocicrypt/unwrap-layer-key.js';
import type { LayerDecipherOptions } from '../ocicrypt/layer-decipher.js';
import { DecoderError, describeError } from '../util/errors.js';

export interface LookupInput {
  readonly head: StdinHead;
  readonly config: ContainerdConfig;
  readonly env: NodeJS.ProcessEnv;
  /** `STREAM_PROCESSOR_MEDIATYPE`: the layer's media type as containerd's processor chain saw it. */
  readonly mediaType: string | undefined;
  readonly signal: AbortSignal;
}

/** The descriptor(s) of the layer on stdin, as the manifests in containerd's content store list it. */
export async function lookupLayerDescriptor(input: LookupInput): Promise<LayerMatch> {
  const address = resolveContainerdAddress(input.env, input.config.address);
  const where = `containerd at ${address.path} (${address.source})`;
  const deadline = Date.now() + input.config.timeoutMs;
  const timer = new AbortController();
  const t = setTimeout(() => timer.abort(new DecoderError(`lookup deadline of ${input.config.timeoutMs} ms exceeded`)), input.config.timeoutMs);
  t.unref();
  const signal = AbortSignal.any([input.signal, timer.signal]);
  const { head, whole } = await input.head.extend(HEAD_BYTES);
  const source = await connectContainerd(address, { deadline, signal });
  try {
    const wanted = input.mediaType;
    return await lookupLayer(source, {
      head,
      headIsWhole: whole,
      readHead: (n) => input.head.extend(n),
      isCandidate: (layer: Descriptor) =>
        (wanted !== undefined && wanted !== '' ? layer.mediaType === wanted : isAcceptedLayerMediaType(layer.mediaType)) &&
        layerKeySchemes({ ...layer.annotations }).length > 0,
      where,
    });
  } catch (err) {
    if (err instanceof DecoderError) throw err;
    throw new DecoderError(describeError(err), { cause: err });
  } finally {
    clearTimeout(t);
    source.close();
  }
}

/** What the stream must be for the match to hold: LayerDecipher checks it before releasing the tail. */
export function cipherDigestOf(match: LayerMatch): NonNullable<LayerDecipherOptions['cipherDigest']> {
  const [algorithm, hex] = match.digest.split(':') as ['sha256' | 'sha384' | 'sha512', string];
  return { algorithm, digest: Buffer.from(hex, 'hex'), size: match.size };
}
