/**
 * The two OCI (and Docker v2) documents the lookup walks, read from containerd's content store: an image index
 * lists manifests, a manifest lists layers. Both are untrusted JSON (they came from a registry): bounded by the
 * caller, parsed strictly here, and reduced to the descriptor fields the lookup uses.
 */
import { isObject } from '../util/is-object.js';

export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly annotations: Readonly<Record<string, string>>;
}

export type ImageDocument = { kind: 'index'; manifests: Descriptor[] } | { kind: 'manifest'; layers: Descriptor[] };

/** `algorithm:hex` with the hex length of a digest containerd verifies (go-digest's sha256/384/512). */
const DIGEST_RE = /^(?:sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})$/;

export const isDigest = (v: unknown): v is string => typeof v === 'string' && DIGEST_RE.test(v);

/** At most this many entries are looked at in one document (real ones have tens). */
const MAX_ENTRIES = 1024;

function descriptor(v: unknown): Descriptor | undefined {
  if (!isObject(v)) return undefined;
  const { mediaType, digest, size, annotations } = v;
  if (typeof mediaType !== 'string' || !isDigest(digest)) return undefined;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) return undefined;
  const ann: Record<string, string> = {};
  if (annotations !== undefined && annotations !== null) {
    if (!isObject(annotations)) return undefined;
    for (const [k, val] of Object.entries(annotations)) {
      if (typeof val !== 'string') return undefined;
      // defineProperty: a `__proto__` key must stay a key.
      Object.defineProperty(ann, k, { value: val, enumerable: true, writable: true, configurable: true });
    }
  }
  return { mediaType, digest, size, annotations: ann };
}

/** An index or a manifest; undefined for anything else (configs, layers, malformed JSON). Malformed entries are dropped. */
export function parseImageDocument(bytes: Buffer): ImageDocument | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    return undefined;
  }
  if (!isObject(doc)) return undefined;
  const list = (v: unknown): Descriptor[] =>
    Array.isArray(v) ? v.slice(0, MAX_ENTRIES).flatMap((e) => descriptor(e) ?? []) : [];
  if (Array.isArray(doc['layers'])) return { kind: 'manifest', layers: list(doc['layers']) };
  if (Array.isArray(doc['manifests'])) return { kind: 'index', manifests: list(doc['manifests']) };
  return undefined;
}

export const MANIFEST_MEDIA_TYPES: readonly string[] = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
];
export const INDEX_MEDIA_TYPES: readonly string[] = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
];
