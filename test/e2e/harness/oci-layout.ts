/**
 * Small OCI image layout tools for the E2E tests: copy a (read-only) fixture, read its manifest/config, pull
 * the files out of a plain layer, and tamper with a layer while keeping every digest and size consistent
 * (so registry and containerd accept the image and only the decoder can notice).
 */
import { createHash } from 'node:crypto';
import { chmod, cp, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import tar from 'tar-stream';

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  [k: string]: unknown;
}

export interface ImageManifest {
  schemaVersion: number;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  [k: string]: unknown;
}

interface ImageIndex {
  schemaVersion: number;
  manifests: Descriptor[];
  [k: string]: unknown;
}

export interface ImageConfig {
  rootfs: { type: string; diff_ids: string[] };
  [k: string]: unknown;
}

export interface Layout {
  dir: string;
  manifestDescriptor: Descriptor;
  manifest: ImageManifest;
  config: ImageConfig;
}

const REF_NAME = 'org.opencontainers.image.ref.name';

export function blobPath(dir: string, digest: string): string {
  const [alg, hex] = digest.split(':');
  if (alg !== 'sha256' || !hex || !/^[0-9a-f]{64}$/.test(hex)) throw new Error(`unsupported digest ${digest}`);
  return path.join(dir, 'blobs', alg, hex);
}

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Copies a layout and makes the copy writable (fixtures are read-only and must stay untouched). */
export async function copyLayout(src: string, dst: string): Promise<string> {
  await cp(src, dst, { recursive: true });
  const fix = async (p: string): Promise<void> => {
    const st = await stat(p);
    if (st.isDirectory()) {
      await chmod(p, 0o755);
      for (const e of await readdir(p)) await fix(path.join(p, e));
    } else {
      await chmod(p, 0o644);
    }
  };
  await fix(dst);
  return dst;
}

async function readJson<T>(file: string): Promise<T> {
  return JSON.parse(await readFile(file, 'utf8')) as T;
}

export async function readLayout(dir: string, tag = 'latest'): Promise<Layout> {
  const index = await readJson<ImageIndex>(path.join(dir, 'index.json'));
  const manifestDescriptor = index.manifests.find((m) => m.annotations?.[REF_NAME] === tag);
  if (!manifestDescriptor) throw new Error(`${dir}: no manifest tagged ${tag}`);
  const manifest = await readJson<ImageManifest>(blobPath(dir, manifestDescriptor.digest));
  const config = await readJson<ImageConfig>(blobPath(dir, manifest.config.digest));
  return { dir, manifestDescriptor, manifest, config };
}

/** Regular files of an uncompressed or gzip'd tar layer, keyed by their path without a leading `./`. */
export async function layerFiles(blob: Buffer, mediaType: string): Promise<Map<string, Buffer>> {
  let tarBytes: Buffer;
  if (mediaType.endsWith('+gzip')) tarBytes = zlib.gunzipSync(blob);
  else if (mediaType.endsWith('.tar')) tarBytes = blob;
  else throw new Error(`layerFiles: unsupported media type ${mediaType}`);
  const files = new Map<string, Buffer>();
  const extract = tar.extract();
  extract.on('entry', (header, stream, next) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: unknown) => chunks.push(c as Buffer));
    stream.on('end', () => {
      if (header.type === 'file') files.set(header.name.replace(/^\.\//, ''), Buffer.concat(chunks));
      next();
    });
    stream.resume();
  });
  await pipeline(Readable.from([tarBytes]), extract);
  return files;
}

/**
 * Rewrites manifest `layers[layerIndex]` with `edit` (which may change the blob bytes and/or the descriptor),
 * stores the new blob and manifest under their new digests and repoints index.json, so the image stays valid
 * by digest. Returns the new layer descriptor.
 */
export async function rewriteLayer(
  dir: string,
  edit: (blob: Buffer, desc: Descriptor) => { blob: Buffer; desc: Descriptor },
  opts: { tag?: string; layerIndex?: number } = {},
): Promise<Descriptor> {
  const tag = opts.tag ?? 'latest';
  const layout = await readLayout(dir, tag);
  const i = opts.layerIndex ?? 0;
  const old = layout.manifest.layers[i];
  if (!old) throw new Error(`${dir}: no layer ${i}`);
  const edited = edit(await readFile(blobPath(dir, old.digest)), structuredClone(old));
  const desc: Descriptor = { ...edited.desc, digest: sha256(edited.blob), size: edited.blob.length };
  await writeFile(blobPath(dir, desc.digest), edited.blob);

  const manifest: ImageManifest = { ...layout.manifest, layers: layout.manifest.layers.map((l, j) => (j === i ? desc : l)) };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  const manifestDigest = sha256(manifestBytes);
  await writeFile(blobPath(dir, manifestDigest), manifestBytes);

  const indexFile = path.join(dir, 'index.json');
  const index = await readJson<ImageIndex>(indexFile);
  index.manifests = index.manifests.map((m) =>
    m.annotations?.[REF_NAME] === tag ? { ...m, digest: manifestDigest, size: manifestBytes.length } : m,
  );
  await writeFile(indexFile, JSON.stringify(index));
  return desc;
}

/** A gzip'd tar of `files` (regular files, parent directories added), deterministic: fixed mtime and modes. */
export async function gzipTarLayer(files: ReadonlyMap<string, Buffer>): Promise<{ blob: Buffer; diffId: string }> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  const mtime = new Date(0);
  const dirs = new Set<string>();
  for (const name of files.keys()) {
    const parts = name.split('/').slice(0, -1);
    for (let i = 1; i <= parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  }
  for (const d of [...dirs].sort()) pack.entry({ name: `${d}/`, type: 'directory', mode: 0o755, mtime });
  for (const [name, data] of [...files].sort(([a], [b]) => (a < b ? -1 : 1))) {
    pack.entry({ name, type: 'file', mode: 0o644, mtime }, data);
  }
  pack.finalize();
  await done;
  const tarBytes = Buffer.concat(chunks);
  return { blob: zlib.gzipSync(tarBytes), diffId: sha256(tarBytes) };
}

/** Writes a one-layer linux/amd64 OCI image layout holding `files`, tagged `tag`. */
export async function writePlainLayout(dir: string, files: ReadonlyMap<string, Buffer>, tag = 'latest'): Promise<Layout> {
  await mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  const put = async (bytes: Buffer, mediaType: string): Promise<Descriptor> => {
    const desc = { mediaType, digest: sha256(bytes), size: bytes.length };
    await writeFile(blobPath(dir, desc.digest), bytes);
    return desc;
  };
  const layer = await gzipTarLayer(files);
  const config: ImageConfig = {
    architecture: 'amd64',
    os: 'linux',
    config: { Cmd: ['/bin/true'] },
    rootfs: { type: 'layers', diff_ids: [layer.diffId] },
  };
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: await put(Buffer.from(JSON.stringify(config)), 'application/vnd.oci.image.config.v1+json'),
    layers: [await put(layer.blob, 'application/vnd.oci.image.layer.v1.tar+gzip')],
  };
  const manifestDescriptor = {
    ...(await put(Buffer.from(JSON.stringify(manifest)), 'application/vnd.oci.image.manifest.v1+json')),
    annotations: { [REF_NAME]: tag },
  };
  await writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [manifestDescriptor] }));
  return { dir, manifestDescriptor, manifest, config };
}
