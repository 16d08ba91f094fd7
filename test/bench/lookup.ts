/**
 * The payload-less path (containerd 2.x transfer service, ctr): the same layers decrypted with the descriptor on
 * fd 3 and without it, where the decoder finds the descriptor in a real containerd's content store. A private
 * registry and containerd (the E2E harness) hold the images: pushed with skopeo, pulled through CRI (which also
 * checks that they decrypt), then the decoder is run by hand against that containerd's socket.
 */
import type { Containerd } from '../e2e/harness/containerd.js';
import { startStack } from '../e2e/harness/stack.js';
import { runDecoder, type RunDecoderResult } from '../helpers/run-decoder.js';
import type { Descriptor } from '../helpers/oci-image.js';

export interface LookupImage {
  /** OCI layout dir and tag of a one-layer encrypted image. */
  dir: string;
  tag: string;
  layer: Descriptor;
  /** The encrypted blob (path or bytes) fed on stdin. */
  input: string | Buffer;
}

export interface LookupBench {
  containerd: Containerd;
  /** One decoder run: with the descriptor on fd 3, or without fd 3 (content-store lookup). */
  run(image: LookupImage, via: 'payload' | 'lookup', opts?: { measure?: boolean }): Promise<RunDecoderResult>;
  stop(): Promise<void>;
}

export async function startLookupBench(o: { decoder: string; args: string[]; env: NodeJS.ProcessEnv; images: LookupImage[] }): Promise<LookupBench> {
  const stack = await startStack({ decoderPath: o.decoder, args: o.args });
  try {
    for (const [i, img] of o.images.entries()) {
      const ref = await stack.push(img.dir, `bench-${i}`, undefined, { srcTag: img.tag, timeoutMs: 300_000 });
      // The real pull: containerd stores the manifest and the blob, and our decoder unpacks it.
      await stack.cri.pullImage(ref, { deadlineMs: 300_000 });
    }
  } catch (err) {
    await stack.stop().catch(() => undefined);
    throw err;
  }
  return {
    containerd: stack.containerd,
    run: (img, via, opts = {}) =>
      runDecoder({
        binary: o.decoder,
        args: o.args,
        env: { ...o.env, CONTAINERD_ADDRESS: stack.containerd.socket },
        descriptor: img.layer,
        payload: via === 'lookup' ? null : undefined,
        input: img.input,
        output: 'discard',
        measure: opts.measure,
        timeoutMs: 300_000,
      }),
    stop: () => stack.stop(),
  };
}
