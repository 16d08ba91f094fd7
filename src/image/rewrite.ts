/**
 * Copies one image (a manifest, or an index of manifests for several platforms, nested as deep as it goes) from
 * one OCI layout into a new one, passing chosen layers through `transformLayer` and every other blob through
 * unchanged but verified. Manifests and indexes are rewritten with the new digests and sizes; their other members
 * and annotations are kept. Knows nothing of encryption: the caller's transform does that.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { DecoderError } from '../util/errors.js';
import { exists } from '../util/exists.js';
import { quoteUntrusted } from '../util/quote.js';
import {
  blobPath,
  isIndexMediaType,
  isManifestMediaType,
  MEDIA_TYPE,
  readImageIndexBlob,
  readLayoutIndex,
  readManifestBlob,
  REF_NAME,
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
} from './layout.js';

export interface LayerContext {
  /** Which manifest (digest) and which layer of it. */
  manifestDigest: string;
  index: number;
  count: number;
}

export interface RewriteOptions {
  srcDir: string;
  /** Tag in the source layout; undefined: the layout must hold exactly one image. */
  srcTag: string | undefined;
  dstDir: string;
  /** Tag written into the new layout (default: the source tag, else none). */
  dstTag: string | undefined;
  /** Which layers of each manifest to transform (undefined: all). */
  layerIndexes: ReadonlySet<number> | undefined;
  /** Writes the new blob for `layer` (source file `src`) into `tmpFile` and returns its descriptor. */
  transformLayer(layer: Descriptor, src: string, tmpFile: string, ctx: LayerContext): Promise<Descriptor>;
}

/** The image in the source layout that `tag` names. */
function selectTop(index: ImageIndex, tag: string | undefined, srcDir: string): Descriptor {
  const tagged = index.manifests.filter((m) => tag !== undefined && m.annotations?.[REF_NAME] === tag);
  if (tag !== undefined) {
    if (tagged.length === 1) return tagged[0]!;
    if (tagged.length === 0) {
      const tags = index.manifests.map((m) => m.annotations?.[REF_NAME]).filter((t): t is string => t !== undefined);
      throw new DecoderError(`no image tagged ${quoteUntrusted(tag, 80)} in ${srcDir}${tags.length ? ` (tags: ${tags.slice(0, 8).map((t) => quoteUntrusted(t, 40)).join(', ')})` : ''}`);
    }
    throw new DecoderError(`${tagged.length} images are tagged ${quoteUntrusted(tag, 80)} in ${srcDir}`);
  }
  if (index.manifests.length !== 1) throw new DecoderError(`${srcDir} holds ${index.manifests.length} images: name one as oci:${srcDir}:TAG`);
  return index.manifests[0]!;
}

/** Streams a blob into the new layout, checking it against its digest on the way. */
async function copyBlob(srcDir: string, dstDir: string, desc: Descriptor): Promise<void> {
  const dst = blobPath(dstDir, desc.digest);
  if (await exists(dst)) return; // shared by two manifests: already copied and checked
  const tmp = `${dst}.partial-${randomBytes(6).toString('hex')}`;
  const hash = createHash('sha256');
  let size = 0;
  try {
    await pipeline(
      createReadStream(blobPath(srcDir, desc.digest)),
      async function* (source: AsyncIterable<Buffer>) {
        for await (const chunk of source) {
          hash.update(chunk);
          size += chunk.length;
          yield chunk;
        }
      },
      createWriteStream(tmp, { flags: 'wx', mode: 0o644 }),
    );
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== desc.digest || size !== desc.size) {
      throw new DecoderError(`blob ${desc.digest} in ${srcDir} does not match its descriptor (content hashes to ${actual}, ${size} bytes)`);
    }
    await rename(tmp, dst);
  } catch (err) {
    await rm(tmp, { force: true });
    if (err instanceof DecoderError) throw err;
    throw new DecoderError(`cannot copy blob ${desc.digest}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

async function writeJsonBlob(dstDir: string, value: unknown): Promise<{ digest: string; size: number }> {
  const bytes = Buffer.from(JSON.stringify(value));
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  await writeFile(blobPath(dstDir, digest), bytes, { mode: 0o644 });
  return { digest, size: bytes.length };
}

export interface RewriteResult {
  /** The new top descriptor (as written into the new index.json). */
  top: Descriptor;
  layersTransformed: number;
}

/**
 * Writes the new layout into `dstDir`, which must not exist: everything goes into a sibling temporary directory
 * first and is renamed into place only when complete, so a failure leaves nothing at `dstDir`.
 */
export async function rewriteImage(o: RewriteOptions): Promise<RewriteResult> {
  if (await exists(o.dstDir)) throw new DecoderError(`${o.dstDir} already exists: choose a new destination`);
  const index = await readLayoutIndex(o.srcDir);
  const top = selectTop(index, o.srcTag, o.srcDir);
  const work = path.join(path.dirname(path.resolve(o.dstDir)), `.${path.basename(o.dstDir)}.partial-${randomBytes(6).toString('hex')}`);
  let transformed = 0;

  const rewriteManifest = async (desc: Descriptor): Promise<Descriptor> => {
    if (desc.mediaType !== MEDIA_TYPE.ociManifest) {
      throw new DecoderError(`manifest ${desc.digest} is ${quoteUntrusted(desc.mediaType, 80)}: convert the image to OCI first (skopeo copy --format oci)`);
    }
    const manifest: ImageManifest = await readManifestBlob(o.srcDir, desc);
    await copyBlob(o.srcDir, work, manifest.config);
    const layers: Descriptor[] = [];
    for (const [i, layer] of manifest.layers.entries()) {
      if (o.layerIndexes !== undefined && !o.layerIndexes.has(i)) {
        await copyBlob(o.srcDir, work, layer);
        layers.push(layer);
        continue;
      }
      const tmp = path.join(work, 'blobs', 'sha256', `.layer-${randomBytes(6).toString('hex')}`);
      try {
        const out = await o.transformLayer(layer, blobPath(o.srcDir, layer.digest), tmp, { manifestDigest: desc.digest, index: i, count: manifest.layers.length });
        await rename(tmp, blobPath(work, out.digest));
        layers.push(out);
        transformed++;
      } finally {
        await rm(tmp, { force: true });
      }
    }
    const written = await writeJsonBlob(work, { ...manifest, layers });
    return { ...desc, digest: written.digest, size: written.size };
  };

  const rewrite = async (desc: Descriptor, depth: number): Promise<Descriptor> => {
    if (isManifestMediaType(desc.mediaType)) return rewriteManifest(desc);
    if (!isIndexMediaType(desc.mediaType)) throw new DecoderError(`${desc.digest} has media type ${quoteUntrusted(desc.mediaType, 80)}, neither an image manifest nor an index`);
    if (desc.mediaType !== MEDIA_TYPE.ociIndex) throw new DecoderError(`index ${desc.digest} is a Docker manifest list: convert the image to OCI first (skopeo copy --format oci)`);
    if (depth > 4) throw new DecoderError(`image indexes nest deeper than 4 levels at ${desc.digest}`);
    const idx = await readImageIndexBlob(o.srcDir, desc);
    const manifests: Descriptor[] = [];
    for (const child of idx.manifests) manifests.push(await rewrite(child, depth + 1));
    const written = await writeJsonBlob(work, { ...idx, manifests });
    return { ...desc, digest: written.digest, size: written.size };
  };

  try {
    await mkdir(path.join(work, 'blobs', 'sha256'), { recursive: true, mode: 0o755 });
    const rewritten = await rewrite(top, 0);
    const { [REF_NAME]: _oldTag, ...annotations } = top.annotations ?? {};
    const dstTag = o.dstTag ?? o.srcTag ?? top.annotations?.[REF_NAME];
    const newTop: Descriptor = { ...rewritten };
    if (dstTag !== undefined) newTop.annotations = { ...annotations, [REF_NAME]: dstTag };
    else if (Object.keys(annotations).length > 0) newTop.annotations = annotations;
    else delete newTop.annotations;
    await writeFile(path.join(work, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }), { mode: 0o644 });
    await writeFile(path.join(work, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociIndex, manifests: [newTop] }), { mode: 0o644 });
    await rename(work, o.dstDir);
    return { top: newTop, layersTransformed: transformed };
  } catch (err) {
    await rm(work, { recursive: true, force: true });
    throw err;
  }
}
