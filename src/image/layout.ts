/**
 * An OCI image layout on disk (image-spec `image-layout.md`): `oci-layout`, `index.json`, `blobs/<alg>/<hex>`.
 * Read as untrusted input: every JSON document is size-bounded and parsed into typed descriptors, every digest is
 * checked for form before it becomes a path, and every blob read is checked against its digest.
 */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { DecoderError } from '../util/errors.js';
import { isObject } from '../util/is-object.js';
import { quoteUntrusted } from '../util/quote.js';

export const MEDIA_TYPE = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;
export const REF_NAME = 'org.opencontainers.image.ref.name';
/** Manifests and indexes are small; a larger "JSON blob" is refused rather than read. */
export const MAX_JSON_BLOB_BYTES = 4 * 1024 * 1024;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Record<string, unknown>;
  [other: string]: unknown;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
  [other: string]: unknown;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
  [other: string]: unknown;
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

export function blobPath(dir: string, digest: string): string {
  if (!DIGEST_RE.test(digest)) throw new DecoderError(`unsupported or malformed digest ${quoteUntrusted(digest, 80)} (only sha256)`);
  return path.join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length));
}

export function parseDescriptor(v: unknown, where: string): Descriptor {
  if (!isObject(v)) throw new DecoderError(`${where}: not a descriptor object`);
  const { mediaType, digest, size, annotations } = v;
  if (typeof mediaType !== 'string' || mediaType === '') throw new DecoderError(`${where}: missing mediaType`);
  if (typeof digest !== 'string' || !DIGEST_RE.test(digest)) throw new DecoderError(`${where}: digest ${quoteUntrusted(digest, 80)} is not sha256:<64 hex>`);
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw new DecoderError(`${where}: bad size`);
  if (annotations !== undefined && (!isObject(annotations) || Object.values(annotations).some((a) => typeof a !== 'string'))) {
    throw new DecoderError(`${where}: annotations must map strings to strings`);
  }
  return v as Descriptor;
}

function parseIndex(v: unknown, where: string): ImageIndex {
  if (!isObject(v) || v['schemaVersion'] !== 2 || !Array.isArray(v['manifests'])) throw new DecoderError(`${where}: not an OCI image index (schemaVersion 2, manifests)`);
  (v['manifests'] as unknown[]).forEach((m, i) => parseDescriptor(m, `${where} manifests[${i}]`));
  return v as ImageIndex;
}

function parseManifest(v: unknown, where: string): ImageManifest {
  if (!isObject(v) || v['schemaVersion'] !== 2 || !Array.isArray(v['layers'])) throw new DecoderError(`${where}: not an image manifest (schemaVersion 2, layers)`);
  parseDescriptor(v['config'], `${where} config`);
  (v['layers'] as unknown[]).forEach((l, i) => parseDescriptor(l, `${where} layers[${i}]`));
  return v as ImageManifest;
}

async function readBounded(file: string, what: string): Promise<Buffer> {
  let st;
  try {
    st = await stat(file);
  } catch (err) {
    throw new DecoderError(`${what}: ${file} is missing (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`);
  }
  if (!st.isFile()) throw new DecoderError(`${what}: ${file} is not a regular file`);
  if (st.size > MAX_JSON_BLOB_BYTES) throw new DecoderError(`${what}: ${file} is ${st.size} bytes, more than a manifest can be (${MAX_JSON_BLOB_BYTES})`);
  return readFile(file);
}

function parseJsonText(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new DecoderError(`${what} is not valid JSON`);
  }
}

/** Reads a JSON blob and checks it against its descriptor's digest and size. */
export async function readJsonBlob(dir: string, desc: Descriptor): Promise<unknown> {
  const file = blobPath(dir, desc.digest);
  const bytes = await readBounded(file, `blob ${desc.digest}`);
  const actual = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  if (actual !== desc.digest || bytes.length !== desc.size) {
    throw new DecoderError(`blob ${desc.digest} does not match its descriptor (content hashes to ${actual}, ${bytes.length} bytes, expected ${desc.size})`);
  }
  return parseJsonText(bytes, `blob ${desc.digest}`);
}

export async function readImageIndexBlob(dir: string, desc: Descriptor): Promise<ImageIndex> {
  return parseIndex(await readJsonBlob(dir, desc), `image index ${desc.digest}`);
}

export async function readManifestBlob(dir: string, desc: Descriptor): Promise<ImageManifest> {
  return parseManifest(await readJsonBlob(dir, desc), `manifest ${desc.digest}`);
}

/** `oci-layout` and `index.json` of the layout at `dir`. */
export async function readLayoutIndex(dir: string): Promise<ImageIndex> {
  const marker = parseJsonText(await readBounded(path.join(dir, 'oci-layout'), `OCI layout ${dir}`), `${dir}/oci-layout`);
  if (!isObject(marker) || marker['imageLayoutVersion'] !== '1.0.0') {
    throw new DecoderError(`${dir}/oci-layout: unsupported imageLayoutVersion ${quoteUntrusted(isObject(marker) ? marker['imageLayoutVersion'] : marker, 40)} (expected "1.0.0")`);
  }
  return parseIndex(parseJsonText(await readBounded(path.join(dir, 'index.json'), `OCI layout ${dir}`), `${dir}/index.json`), `${dir}/index.json`);
}

export const isIndexMediaType = (t: string): boolean => t === MEDIA_TYPE.ociIndex || t === MEDIA_TYPE.dockerList;
export const isManifestMediaType = (t: string): boolean => t === MEDIA_TYPE.ociManifest || t === MEDIA_TYPE.dockerManifest;
