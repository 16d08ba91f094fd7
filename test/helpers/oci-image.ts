/**
 * Builds and reads OCI image layout directories (image-spec `image-layout.md`): `oci-layout`, `index.json`
 * whose manifest entries carry `org.opencontainers.image.ref.name` = tag, and content-addressed blobs.
 * Layers are tar (optionally gzip) streams made with tar-stream + node:zlib; headers use fixed mtimes, uid/gid 0
 * and no user names, so the same input gives the same digests. Large files can be streamed (`open()`), so a
 * multi-GiB layer never has to sit in memory.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';

type TarHeader = Parameters<tar.Pack['entry']>[0];

export const MEDIA_TYPE_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const MEDIA_TYPE_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const MEDIA_TYPE_LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar';
export const MEDIA_TYPE_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
export const ANNOTATION_REF_NAME = 'org.opencontainers.image.ref.name';

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  [extra: string]: unknown;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
  [extra: string]: unknown;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  [extra: string]: unknown;
}

/** A file's content: bytes, bytes with a mode, or a stream factory of a known size (for large files). */
export type LayerFile =
  | Buffer
  | { data: Buffer; mode?: number }
  | { size: number; open: () => NodeJS.ReadableStream; mode?: number };

export interface BuildImageOptions {
  tag: string;
  /** One map per layer, bottom first: path inside the image (no leading '/') → content. */
  layers: Array<Record<string, LayerFile>>;
  /** 'gzip' (default) → `…tar+gzip`; 'none' → `…tar`. */
  compression?: 'gzip' | 'none';
  /** zlib level, default 6 (Go's and Node's default). */
  gzipLevel?: number;
  /** mtime of every tar entry; default 2000-01-01T00:00:00Z. */
  mtime?: Date;
  architecture?: string;
  os?: string;
  cmd?: string[];
}

export interface ImageLayer {
  descriptor: Descriptor;
  blobPath: string;
}

export interface BuiltImage extends ReadImageResult {
  /** sha256 of each uncompressed tar, = config `rootfs.diff_ids`. */
  diffIds: string[];
}

export interface ReadImageResult {
  dir: string;
  tag: string;
  index: ImageIndex;
  manifestDescriptor: Descriptor;
  manifest: ImageManifest;
  manifestPath: string;
  configDescriptor: Descriptor;
  config: Record<string, unknown>;
  configPath: string;
  layers: ImageLayer[];
}

const DEFAULT_MTIME = new Date('2000-01-01T00:00:00Z');

/** `blobs/<alg>/<hex>` for a `sha256:<hex>` digest; anything else is refused (no path tricks through digests). */
export function blobPath(dir: string, digest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!m) throw new Error(`unsupported or malformed digest ${JSON.stringify(digest)}`);
  return join(dir, 'blobs', 'sha256', m[1] as string);
}

async function ensureLayout(dir: string): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
}

/** Writes bytes as a blob and returns its descriptor. */
export async function writeBlob(dir: string, mediaType: string, data: Buffer): Promise<Descriptor> {
  const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(blobPath(dir, digest), data);
  return { mediaType, digest, size: data.length };
}

/** Writes a JSON document (compact, like Go's encoding/json) as a blob. */
export function writeJsonBlob(dir: string, mediaType: string, value: unknown): Promise<Descriptor> {
  return writeBlob(dir, mediaType, Buffer.from(JSON.stringify(value)));
}

/** A temporary file inside the layout's blob directory, renamed into place once its digest is known. */
export function tempBlobPath(dir: string): string {
  return join(dir, 'blobs', 'sha256', `.tmp-${randomUUID()}`);
}

/** Moves a finished temp file to its content address (dropping it if an identical blob exists). */
export async function commitTempBlob(dir: string, tmp: string, digest: string): Promise<string> {
  const target = blobPath(dir, digest);
  const exists = await stat(target).then(
    () => true,
    () => false,
  );
  if (exists) await rm(tmp, { force: true });
  else await rename(tmp, target);
  return target;
}

/** A pass-through stage that feeds every chunk to `observe`. */
function tap(observe: (chunk: Buffer) => void): (source: AsyncIterable<Buffer>) => AsyncGenerator<Buffer> {
  return async function* (source) {
    for await (const chunk of source) {
      observe(chunk);
      yield chunk;
    }
  };
}

function normaliseEntryPath(path: string): string {
  const clean = path.replace(/^\/+/, '');
  if (clean === '' || clean.split('/').some((seg) => seg === '' || seg === '.' || seg === '..')) {
    throw new Error(`bad layer file path ${JSON.stringify(path)}`);
  }
  return clean;
}

function addBufferEntry(pack: tar.Pack, header: TarHeader, data?: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    pack.entry(header, data ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve()));
  });
}

async function addStreamEntry(pack: tar.Pack, header: TarHeader, source: NodeJS.ReadableStream): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const entry = pack.entry(header, (err) => (err ? reject(err) : resolve()));
    (async () => {
      for await (const chunk of source as AsyncIterable<Buffer>) {
        if (!entry.write(chunk)) await new Promise<void>((r) => entry.once('drain', () => r()));
      }
      entry.end(undefined);
    })().catch((err: unknown) => {
      entry.destroy(err as Error);
      reject(err as Error);
    });
  });
}

async function feedTar(pack: tar.Pack, files: Record<string, LayerFile>, mtime: Date): Promise<void> {
  const seenDirs = new Set<string>();
  const base = { mtime, uid: 0, gid: 0, uname: '', gname: '' };
  for (const [rawPath, file] of Object.entries(files)) {
    const path = normaliseEntryPath(rawPath);
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dirPath = `${parts.slice(0, i).join('/')}/`;
      if (seenDirs.has(dirPath)) continue;
      seenDirs.add(dirPath);
      await addBufferEntry(pack, { ...base, name: dirPath, type: 'directory', mode: 0o755 });
    }
    if (Buffer.isBuffer(file)) {
      await addBufferEntry(pack, { ...base, name: path, type: 'file', mode: 0o644, size: file.length }, file);
    } else if ('data' in file) {
      await addBufferEntry(pack, { ...base, name: path, type: 'file', mode: file.mode ?? 0o644, size: file.data.length }, file.data);
    } else {
      await addStreamEntry(pack, { ...base, name: path, type: 'file', mode: file.mode ?? 0o644, size: file.size }, file.open());
    }
  }
  pack.finalize();
}

/** Writes one layer blob; returns its descriptor and diff ID. */
async function writeLayer(
  dir: string,
  files: Record<string, LayerFile>,
  opts: { compression: 'gzip' | 'none'; gzipLevel: number; mtime: Date },
): Promise<{ descriptor: Descriptor; diffId: string }> {
  const pack = tar.pack();
  const diffHash = createHash('sha256');
  const blobHash = createHash('sha256');
  let size = 0;
  const tmp = tempBlobPath(dir);
  const compressor: Transform = opts.compression === 'gzip' ? createGzip({ level: opts.gzipLevel }) : new PassThrough();
  const feeding = feedTar(pack, files, opts.mtime).catch((err: unknown) => {
    pack.destroy(err as Error);
    throw err;
  });
  try {
    await Promise.all([
      feeding,
      pipeline(
        Readable.from(pack as AsyncIterable<Buffer>),
        tap((c) => diffHash.update(c)),
        compressor,
        tap((c) => {
          blobHash.update(c);
          size += c.length;
        }),
        createWriteStream(tmp),
      ),
    ]);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  const digest = `sha256:${blobHash.digest('hex')}`;
  await commitTempBlob(dir, tmp, digest);
  return {
    descriptor: { mediaType: opts.compression === 'gzip' ? MEDIA_TYPE_LAYER_GZIP : MEDIA_TYPE_LAYER_TAR, digest, size },
    diffId: `sha256:${diffHash.digest('hex')}`,
  };
}

/** Adds (or replaces) the index entry for `tag`. */
export async function setIndexManifest(dir: string, tag: string, manifest: Descriptor): Promise<ImageIndex> {
  const indexPath = join(dir, 'index.json');
  const index: ImageIndex = await readFile(indexPath, 'utf8').then(
    (text) => JSON.parse(text) as ImageIndex,
    () => ({ schemaVersion: 2, manifests: [] }),
  );
  index.manifests = index.manifests.filter((m) => m.annotations?.[ANNOTATION_REF_NAME] !== tag);
  index.manifests.push({ ...manifest, annotations: { ...manifest.annotations, [ANNOTATION_REF_NAME]: tag } });
  await writeFile(indexPath, JSON.stringify(index));
  return index;
}

/** Builds an image with the given layers into the layout at `dir` (created if needed; other tags are kept). */
export async function buildImage(dir: string, opts: BuildImageOptions): Promise<BuiltImage> {
  await ensureLayout(dir);
  const layerOpts = {
    compression: opts.compression ?? 'gzip',
    gzipLevel: opts.gzipLevel ?? 6,
    mtime: opts.mtime ?? DEFAULT_MTIME,
  } as const;
  const layers: Descriptor[] = [];
  const diffIds: string[] = [];
  for (const files of opts.layers) {
    const { descriptor, diffId } = await writeLayer(dir, files, layerOpts);
    layers.push(descriptor);
    diffIds.push(diffId);
  }
  const config = {
    architecture: opts.architecture ?? 'amd64',
    os: opts.os ?? 'linux',
    config: { Cmd: opts.cmd ?? ['/bin/true'] },
    rootfs: { type: 'layers', diff_ids: diffIds },
  };
  const configDescriptor = await writeJsonBlob(dir, MEDIA_TYPE_CONFIG, config);
  const manifest: ImageManifest = { schemaVersion: 2, mediaType: MEDIA_TYPE_MANIFEST, config: configDescriptor, layers };
  const manifestDescriptor = await writeJsonBlob(dir, MEDIA_TYPE_MANIFEST, manifest);
  await setIndexManifest(dir, opts.tag, manifestDescriptor);
  return { ...(await readImage(dir, opts.tag)), diffIds };
}

/** Reads the image tagged `tag` from an OCI layout: index entry, manifest, config and layer blob paths. */
export async function readImage(dir: string, tag: string): Promise<ReadImageResult> {
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as ImageIndex;
  if (index.schemaVersion !== 2 || !Array.isArray(index.manifests)) throw new Error(`${dir}/index.json is not an OCI index`);
  const entry = index.manifests.find((m) => m.annotations?.[ANNOTATION_REF_NAME] === tag);
  if (!entry) throw new Error(`no manifest tagged ${JSON.stringify(tag)} in ${dir}`);
  const manifestPath = blobPath(dir, entry.digest);
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as ImageManifest;
  const configPath = blobPath(dir, manifest.config.digest);
  const config = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
  return {
    dir,
    tag,
    index,
    /** The index entry as stored, `ref.name` annotation included. */
    manifestDescriptor: entry,
    manifest,
    manifestPath,
    configDescriptor: manifest.config,
    config,
    configPath,
    layers: manifest.layers.map((descriptor) => ({ descriptor, blobPath: blobPath(dir, descriptor.digest) })),
  };
}

/** sha256 digest and size of a file, streamed. */
export async function digestFile(path: string): Promise<{ digest: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { digest: `sha256:${hash.digest('hex')}`, size };
}
