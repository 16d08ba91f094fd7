/**
 * A minimal CRI `runtime.v1.ImageService` client: what the kubelet does when it pulls an image, over
 * containerd's own socket. Messages are hand-encoded (field numbers from k8s.io/cri-api api.proto).
 */
import { UnixGrpcClient } from './grpc-unix.js';
import { ProtoReader, ProtoWriter } from './proto.js';

export { GrpcCallError } from './grpc-unix.js';

const SERVICE = '/runtime.v1.ImageService';

export interface CriImage {
  id: string;
  repoTags: string[];
  repoDigests: string[];
  size: bigint;
}

export interface CriImageStatus {
  /** undefined when the image is not present (CRI answers OK with an empty image). */
  image: CriImage | undefined;
  /** verbose info; containerd 1.6 puts `{"chainID": …, "imageSpec": …}` JSON under `info`. */
  info: Record<string, string>;
}

/** `ImageSpec{image=1}` */
function imageSpec(ref: string): Buffer {
  return new ProtoWriter().string(1, ref).finish();
}

export class CriImageClient {
  private readonly grpc: UnixGrpcClient;

  constructor(readonly socketPath: string) {
    this.grpc = new UnixGrpcClient(socketPath);
  }

  /** PullImageRequest{image=1} → PullImageResponse{image_ref=1}. Rejects with GrpcCallError (details = containerd's error). */
  async pullImage(ref: string, opts: { deadlineMs?: number } = {}): Promise<string> {
    const req = new ProtoWriter().message(1, imageSpec(ref)).finish();
    const res = await this.grpc.unary(`${SERVICE}/PullImage`, req, { deadlineMs: opts.deadlineMs ?? 60_000 });
    return new ProtoReader(res).string(1);
  }

  /** RemoveImageRequest{image=1}. containerd deletes synchronously, so unreferenced snapshots go with it. */
  async removeImage(ref: string, opts: { deadlineMs?: number } = {}): Promise<void> {
    const req = new ProtoWriter().message(1, imageSpec(ref)).finish();
    await this.grpc.unary(`${SERVICE}/RemoveImage`, req, { deadlineMs: opts.deadlineMs ?? 30_000 });
  }

  /** ImageStatusRequest{image=1, verbose=2} → ImageStatusResponse{image=1, info=2}. */
  async imageStatus(ref: string, opts: { verbose?: boolean; deadlineMs?: number } = {}): Promise<CriImageStatus> {
    const req = new ProtoWriter().message(1, imageSpec(ref)).bool(2, opts.verbose ?? false).finish();
    const res = new ProtoReader(
      await this.grpc.unary(`${SERVICE}/ImageStatus`, req, { deadlineMs: opts.deadlineMs ?? 10_000 }),
    );
    const img = res.message(1);
    // Image{id=1, repo_tags=2, repo_digests=3, size=4}
    const image =
      img === undefined || img.string(1) === ''
        ? undefined
        : { id: img.string(1), repoTags: img.repeatedString(2), repoDigests: img.repeatedString(3), size: img.uint(4) };
    return { image, info: res.stringMap(2) };
  }

  /** The snapshot chain ID containerd unpacked the image into (from verbose ImageStatus). */
  async chainId(ref: string): Promise<string> {
    const st = await this.imageStatus(ref, { verbose: true });
    if (!st.image) throw new Error(`image ${ref} is not present`);
    const raw = st.info['info'];
    if (raw === undefined) throw new Error(`ImageStatus of ${ref} has no verbose info`);
    const parsed = JSON.parse(raw) as { chainID?: unknown };
    if (typeof parsed.chainID !== 'string' || !parsed.chainID.startsWith('sha256:')) {
      throw new Error(`ImageStatus of ${ref}: no chainID in verbose info`);
    }
    return parsed.chainID;
  }

  waitReady(deadlineMs: number): Promise<void> {
    return this.grpc.waitReady(deadlineMs);
  }

  close(): void {
    this.grpc.close();
  }
}
