/**
 * Finding a layer's descriptor when containerd passes none (no fd-3 payload: containerd 2.x transfer-service
 * pulls, `ctr`, a `…v1.tar.zstd` processor id). The manifests containerd has fetched into its content store list
 * every layer's digest, media type and annotations; the layer being unpacked is already committed there too.
 * The ciphertext on stdin identifies its blob: its leading bytes (AES-CTR output under a random key and nonce)
 * are compared with the leading bytes of each candidate layer, read from the content store. Nothing is spooled.
 *
 * The match only chooses which annotations to try. It binds nothing: the caller must check, before any
 * plaintext tail is released, that the whole stream has the chosen digest and size (LayerDecipher's
 * `cipherDigest`), so a wrong or forged match can only fail a layer, never decrypt it with someone else's keys.
 *
 * Manifests are found two ways, in every namespace: content labelled as having layers
 * (`containerd.io/gc.ref.content.l.<n>`, set by containerd's fetch handlers as soon as a manifest is stored, so
 * it covers pulls in flight, before the image record exists), and the targets of image records (indexes are
 * followed to their manifests), for content stored without those labels.
 */
import type { ContentSource } from './client.js';
import { INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES, parseImageDocument, type Descriptor } from './manifest.js';

/** Leading bytes compared first: 32 bytes of ciphertext under a random key never collide by chance. */
export const HEAD_BYTES = 32;
/** When two different blobs start with the same HEAD_BYTES (copied on purpose), this much is compared. */
export const LONG_HEAD_BYTES = 64 * 1024;
/** Manifests and indexes larger than this are not read (containerd's own fetch limit for them is 4 MiB too). */
const MAX_DOCUMENT_BYTES = 4 * 1024 * 1024;
const MAX_NAMESPACES = 256;
const MAX_DOCUMENTS = 20_000;
/** Annotation sets tried for one layer (tags, platforms and re-wrapped recipients of the same blob). */
export const MAX_ANNOTATION_SETS = 8;
/** Concurrent reads: containerd serves them from bolt read transactions and the blob files. */
const PARALLEL = 8;
/** The `labels.` filter containerd's Content.List understands: content with at least one layer reference. */
const LAYER_LABEL_FILTER = 'labels."containerd.io/gc.ref.content.l.0"';
const NAMESPACE_RE = /^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$/;

export interface LookupRequest {
  /** The first bytes of stdin: at least HEAD_BYTES unless the whole stream is shorter. */
  readonly head: Buffer;
  /** True when `head` is all of stdin (EOF came first). */
  readonly headIsWhole: boolean;
  /** More of stdin, up to `n` bytes in all from the start (for disambiguation); the same shape as above. */
  readonly readHead: (n: number) => Promise<{ head: Buffer; whole: boolean }>;
  /** Which manifest layers qualify (media type, key annotations): decided by the caller. */
  readonly isCandidate: (layer: Descriptor) => boolean;
  /** Socket and source, for messages. */
  readonly where: string;
}

export interface AnnotationSet {
  readonly annotations: Readonly<Record<string, string>>;
  /** The manifest that listed the layer with these annotations, and its namespace. */
  readonly manifest: string;
  readonly namespace: string;
}

export interface LayerMatch {
  readonly digest: string;
  readonly size: number;
  readonly mediaType: string;
  /** Distinct annotation sets, in a stable order (namespace, then manifest digest); at most MAX_ANNOTATION_SETS. */
  readonly annotationSets: readonly AnnotationSet[];
  readonly stats: LookupStats;
}

export interface LookupStats {
  namespaces: string[];
  documents: number;
  candidates: number;
  reads: number;
}

export class LookupError extends Error {}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

interface Candidate {
  digest: string;
  size: number;
  mediaType: string;
  /** Namespace → annotation sets, keyed by their canonical JSON to drop duplicates. */
  sets: Map<string, AnnotationSet>;
  /** A namespace the blob is listed in (reads are namespaced). */
  namespaces: Set<string>;
}

const canonical = (a: Readonly<Record<string, string>>): string =>
  JSON.stringify(Object.keys(a).sort().map((k) => [k, a[k]]));

/** Every manifest reachable in `ns`: labelled content plus image targets (indexes followed one level). */
async function manifestsOf(source: ContentSource, ns: string, stats: LookupStats): Promise<Map<string, Descriptor[]>> {
  const [labelled, images] = await Promise.all([source.listContent(ns, [LAYER_LABEL_FILTER]), source.listImages(ns)]);
  const roots = new Map<string, { size: number; index: boolean }>();
  for (const info of labelled) roots.set(info.digest, { size: info.size, index: false });
  for (const img of images) {
    const t = img.target;
    if (t === undefined || roots.has(t.digest)) continue;
    if (MANIFEST_MEDIA_TYPES.includes(t.mediaType)) roots.set(t.digest, { size: t.size, index: false });
    else if (INDEX_MEDIA_TYPES.includes(t.mediaType)) roots.set(t.digest, { size: t.size, index: true });
  }
  const layersByManifest = new Map<string, Descriptor[]>();
  const readDoc = async (digest: string, size: number): Promise<ReturnType<typeof parseImageDocument>> => {
    if (size <= 0 || size > MAX_DOCUMENT_BYTES) return undefined;
    if (++stats.documents > MAX_DOCUMENTS) throw new LookupError(`more than ${MAX_DOCUMENTS} manifests in containerd's content store; lookup stopped`);
    const bytes = await source.read(ns, digest, 0, size);
    return bytes === undefined ? undefined : parseImageDocument(bytes);
  };
  const indexChildren: Descriptor[] = [];
  await mapLimit([...roots], PARALLEL, async ([digest, { size }]) => {
    const doc = await readDoc(digest, size);
    if (doc?.kind === 'manifest') layersByManifest.set(digest, doc.layers);
    else if (doc?.kind === 'index') indexChildren.push(...doc.manifests.filter((m) => MANIFEST_MEDIA_TYPES.includes(m.mediaType)));
  });
  const unseen = [...new Map(indexChildren.filter((m) => !layersByManifest.has(m.digest)).map((m) => [m.digest, m])).values()];
  await mapLimit(unseen, PARALLEL, async (m) => {
    const doc = await readDoc(m.digest, m.size);
    if (doc?.kind === 'manifest') layersByManifest.set(m.digest, doc.layers);
  });
  return layersByManifest;
}

function collectCandidates(byNamespace: Map<string, Map<string, Descriptor[]>>, req: LookupRequest): Map<string, Candidate> {
  const out = new Map<string, Candidate>();
  for (const [ns, manifests] of [...byNamespace].sort(([a], [b]) => (a < b ? -1 : 1))) {
    for (const [manifest, layers] of [...manifests].sort(([a], [b]) => (a < b ? -1 : 1))) {
      for (const layer of layers) {
        if (!req.isCandidate(layer)) continue;
        if (req.headIsWhole ? layer.size !== req.head.length : layer.size < req.head.length) continue;
        let c = out.get(layer.digest);
        if (c === undefined) {
          c = { digest: layer.digest, size: layer.size, mediaType: layer.mediaType, sets: new Map(), namespaces: new Set() };
          out.set(layer.digest, c);
        }
        // Two manifests disagreeing on a blob's size or media type: keep the first; the digest check settles it.
        if (layer.size !== c.size || layer.mediaType !== c.mediaType) continue;
        c.namespaces.add(ns);
        const key = canonical(layer.annotations);
        if (!c.sets.has(key) && c.sets.size < MAX_ANNOTATION_SETS) c.sets.set(key, { annotations: layer.annotations, manifest, namespace: ns });
      }
    }
  }
  return out;
}

/** The candidates whose first `head.length` bytes in the content store equal `head`. */
async function matching(source: ContentSource, candidates: readonly Candidate[], head: Buffer, stats: LookupStats): Promise<Candidate[]> {
  const hits = await mapLimit(candidates, PARALLEL, async (c) => {
    for (const ns of c.namespaces) {
      stats.reads++;
      const got = await source.read(ns, c.digest, 0, head.length);
      if (got !== undefined) return got.equals(head);
    }
    return false; // listed, but not (or no longer) in the store: not the blob being unpacked
  });
  return candidates.filter((_, i) => hits[i]);
}

const shortDigest = (d: string): string => d.slice(0, 19);

export async function lookupLayer(source: ContentSource, req: LookupRequest): Promise<LayerMatch> {
  if (req.head.length === 0) throw new LookupError('stdin is empty: there is no layer to look up');
  const stats: LookupStats = { namespaces: [], documents: 0, candidates: 0, reads: 0 };
  // containerd's own namespace rule (`namespaces.Validate`); anything else is not searched (nor printed).
  const namespaces = (await source.namespaces()).filter((n) => NAMESPACE_RE.test(n)).slice(0, MAX_NAMESPACES);
  stats.namespaces = namespaces;
  const byNamespace = new Map<string, Map<string, Descriptor[]>>();
  for (const ns of namespaces) byNamespace.set(ns, await manifestsOf(source, ns, stats));
  const candidates = [...collectCandidates(byNamespace, req).values()];
  stats.candidates = candidates.length;
  const searched = (): string =>
    `searched ${req.where}: namespaces ${namespaces.length === 0 ? '(none)' : namespaces.join(', ')}; ` +
    `${stats.documents} manifests, ${candidates.length} candidate encrypted layers`;

  let hits = await matching(source, candidates, req.head, stats);
  if (hits.length > 1 && !req.headIsWhole) {
    // Different blobs with the same leading bytes are made, not found: compare much more before refusing.
    const longer = await req.readHead(LONG_HEAD_BYTES);
    const fits = hits.filter((c) => (longer.whole ? c.size === longer.head.length : c.size >= longer.head.length));
    hits = await matching(source, fits, longer.head, stats);
  }
  if (hits.length === 0) {
    throw new LookupError(`no manifest in containerd's content store lists the layer on stdin (${searched()})`);
  }
  if (hits.length > 1) {
    throw new LookupError(
      `${hits.length} different layers in containerd's content store (${hits.slice(0, 4).map((h) => shortDigest(h.digest)).join(', ')}) ` +
        `start with the same bytes as stdin; refusing to guess which one this is`,
    );
  }
  const hit = hits[0]!;
  return { digest: hit.digest, size: hit.size, mediaType: hit.mediaType, annotationSets: [...hit.sets.values()], stats };
}
