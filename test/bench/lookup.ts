/**
 * The payload-less path (containerd 2.x transfer service, ctr): the same layers decrypted with the descriptor on
 * fd 3 and without it, where the decoder finds the descriptor in a real containerd's content store. A private
 * registry and containerd (the E2E harness) hold the images: pushed with skopeo, pulled through CRI (which also
 * checks that they decrypt), then the decoder is run by hand against that containerd's socket.
 */
import { startContainerd, type Containerd } from '../e2e/harness/containerd.js';
import { CriImageClient } from '../e2e/harness/cri.js';
import { startRegistry, type Registry } from '../e2e/harness/registry.js';
import { pushOciLayout } from '../e2e/harness/skopeo.js';
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
  // (Not the harness's startStack: its module registers vitest hooks.)
  const registry: Registry = await startRegistry();
  let containerd: Containerd | undefined;
  const stop = async (): Promise<void> => {
    await Promise.allSettled([containerd?.stop(), registry.stop()]);
  };
  try {
    containerd = await startContainerd({ decoderPath: o.decoder, args: o.args, insecureRegistries: [registry.host], avoidPorts: new Set([registry.port]) });
    const cri = new CriImageClient(containerd.socket);
    try {
      for (const [i, img] of o.images.entries()) {
        const ref = await pushOciLayout(img.dir, { registry: registry.host, repo: `bench-${i}`, srcTag: img.tag, timeoutMs: 300_000 });
        // The real pull: containerd stores the manifest and the blob, and our decoder unpacks it.
        await cri.pullImage(ref, { deadlineMs: 300_000 });
      }
    } finally {
      cri.close();
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const stack = containerd;
  return {
    containerd,
    run: (img, via, opts = {}) =>
      runDecoder({
        binary: o.decoder,
        args: o.args,
        env: { ...o.env, CONTAINERD_ADDRESS: stack.socket },
        descriptor: img.layer,
        payload: via === 'lookup' ? null : undefined,
        input: img.input,
        output: 'discard',
        measure: opts.measure,
        timeoutMs: 300_000,
      }),
    stop,
  };
}
