/**
 * Reading what containerd actually unpacked. The image's chain ID names its committed snapshot; a temporary
 * read-only View of it (containerd's Snapshots API) yields the mount containerd itself would use, whose
 * directories we read directly, no mount needed. A filesystem scan of the snapshotter dir backs the negative
 * checks ("nothing was unpacked anywhere").
 */
import { createHash, randomUUID } from 'node:crypto';
import { lstat, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { CRI_NAMESPACE } from './containerd.js';
import { GrpcCallError, UnixGrpcClient } from './grpc-unix.js';
import { ProtoReader, ProtoWriter } from './proto.js';

const SERVICE = '/containerd.services.snapshots.v1.Snapshots';
const GRPC_NOT_FOUND = 5;

export type SnapshotKind = 'unknown' | 'view' | 'active' | 'committed';
const KINDS: SnapshotKind[] = ['unknown', 'view', 'active', 'committed'];

export interface SnapshotInfo {
  name: string;
  parent: string;
  kind: SnapshotKind;
  labels: Record<string, string>;
}

export interface Mount {
  type: string;
  source: string;
  options: string[];
}

/** OCI chain ID of a layer stack: ChainID(L0) = DiffID(L0), ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)). */
export function chainIdOf(diffIds: readonly string[]): string {
  if (diffIds.length === 0) throw new Error('an image has at least one layer');
  let chain = diffIds[0]!;
  for (const diff of diffIds.slice(1)) {
    chain = `sha256:${createHash('sha256').update(`${chain} ${diff}`).digest('hex')}`;
  }
  return chain;
}

function parseInfo(r: ProtoReader): SnapshotInfo {
  // Info{name=1, parent=2, kind=3, created_at=4, updated_at=5, labels=6}
  return { name: r.string(1), parent: r.string(2), kind: KINDS[Number(r.uint(3))] ?? 'unknown', labels: r.stringMap(6) };
}

/** Directories of a read-only mount, topmost first (bind: its source; overlay: its lowerdirs). */
export function mountLayers(mounts: readonly Mount[]): string[] {
  if (mounts.length !== 1) throw new Error(`expected one mount, got ${mounts.length}`);
  const m = mounts[0]!;
  if (m.type === 'bind') return [m.source];
  if (m.type === 'overlay') {
    const lower = m.options.find((o) => o.startsWith('lowerdir='));
    if (!lower) throw new Error(`overlay mount without lowerdir: ${m.options.join(',')}`);
    return lower.slice('lowerdir='.length).split(':');
  }
  throw new Error(`unexpected mount type ${m.type}`);
}

export class SnapshotInspector {
  private readonly grpc: UnixGrpcClient;
  private readonly md: Record<string, string>;

  constructor(
    socket: string,
    readonly snapshotter: string,
    namespace: string = CRI_NAMESPACE,
  ) {
    this.grpc = new UnixGrpcClient(socket);
    this.md = { 'containerd-namespace': namespace };
  }

  /** Stat{snapshotter=1, key=2}; undefined when containerd has no such snapshot. */
  async stat(key: string): Promise<SnapshotInfo | undefined> {
    const req = new ProtoWriter().string(1, this.snapshotter).string(2, key).finish();
    try {
      const res = await this.grpc.unary(`${SERVICE}/Stat`, req, { deadlineMs: 10_000, metadata: this.md });
      const info = new ProtoReader(res).message(1);
      return info ? parseInfo(info) : undefined;
    } catch (err) {
      if (err instanceof GrpcCallError && err.code === GRPC_NOT_FOUND) return undefined;
      throw err;
    }
  }

  /** List{snapshotter=1} (server stream of {repeated info=1}). */
  async list(): Promise<SnapshotInfo[]> {
    const req = new ProtoWriter().string(1, this.snapshotter).finish();
    const pages = await this.grpc.serverStream(`${SERVICE}/List`, req, { deadlineMs: 10_000, metadata: this.md });
    return pages.flatMap((p) => new ProtoReader(p).repeatedMessage(1).map(parseInfo));
  }

  /**
   * Reads `relPaths` from the filesystem of committed snapshot `key` (usually an image's chain ID), resolving
   * each path in the topmost layer that has it. Whiteouts are not interpreted: meant for our fixture images.
   * Missing files map to undefined.
   */
  async readFiles(key: string, relPaths: readonly string[]): Promise<Map<string, Buffer | undefined>> {
    const viewKey = `e2e-view-${randomUUID()}`;
    // View{snapshotter=1, key=2, parent=3} → {repeated Mount mounts=1}; Mount{type=1, source=2, target=3, options=4}
    // gc.root keeps containerd's garbage collector (triggered by any image removal) off the view meanwhile.
    const req = new ProtoWriter()
      .string(1, this.snapshotter)
      .string(2, viewKey)
      .string(3, key)
      .stringMap(4, { 'containerd.io/gc.root': new Date().toISOString() })
      .finish();
    const res = await this.grpc.unary(`${SERVICE}/View`, req, { deadlineMs: 10_000, metadata: this.md });
    try {
      const mounts = new ProtoReader(res)
        .repeatedMessage(1)
        .map((m) => ({ type: m.string(1), source: m.string(2), options: m.repeatedString(4) }));
      const layers = mountLayers(mounts);
      const out = new Map<string, Buffer | undefined>();
      for (const rel of relPaths) out.set(rel, await readFromLayers(layers, rel));
      return out;
    } finally {
      const rm = new ProtoWriter().string(1, this.snapshotter).string(2, viewKey).finish();
      await this.grpc.unary(`${SERVICE}/Remove`, rm, { deadlineMs: 10_000, metadata: this.md });
    }
  }

  /** Names of committed snapshots whose filesystem holds any of `relPaths`. */
  async committedHolding(relPaths: readonly string[]): Promise<string[]> {
    const hits: string[] = [];
    for (const info of await this.list()) {
      if (info.kind !== 'committed') continue;
      const files = await this.readFiles(info.name, relPaths);
      if ([...files.values()].some((b) => b !== undefined)) hits.push(info.name);
    }
    return hits;
  }

  close(): void {
    this.grpc.close();
  }
}

async function readFromLayers(layers: readonly string[], rel: string): Promise<Buffer | undefined> {
  for (const dir of layers) {
    try {
      return await readFile(path.join(dir, rel));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  return undefined;
}

/**
 * Snapshot directories (`<snapshotterRoot>/snapshots/<n>/fs` or, for native, `…/<n>`) of any kind, committed or not, that contain any
 * of `relPaths`. Independent of containerd's metadata: catches files left behind by a failed unpack.
 */
export async function snapshotDirsHolding(snapshotterRoot: string, relPaths: readonly string[]): Promise<string[]> {
  const base = path.join(snapshotterRoot, 'snapshots');
  let ids: string[];
  try {
    ids = await readdir(base);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const hits: string[] = [];
  for (const id of ids) {
    // overlayfs keeps a snapshot's tree in `<n>/fs`, native directly in `<n>`.
    const candidates = [path.join(base, id, 'fs'), path.join(base, id)];
    outer: for (const dir of candidates) {
      for (const rel of relPaths) {
        if (await exists(path.join(dir, rel))) {
          hits.push(dir);
          break outer;
        }
      }
    }
  }
  return hits;
}

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return false;
    throw err;
  }
}
