/**
 * Encoders and decoders for the containerd API messages declared in `proto/*.proto`, field numbers from one table
 * (`FIELDS`, checked against those files by a test). Everything decoded here comes from a daemon we do not trust
 * to be well-formed: strings must be UTF-8, sizes non-negative, and unknown fields are skipped.
 */
import { ProtoError, ProtoWriter, protoString, readFields, readMapEntry } from '../util/protobuf.js';

export const METHODS = {
  listNamespaces: '/containerd.services.namespaces.v1.Namespaces/List',
  listContent: '/containerd.services.content.v1.Content/List',
  readContent: '/containerd.services.content.v1.Content/Read',
  listImages: '/containerd.services.images.v1.Images/List',
} as const;

export const FIELDS = {
  'containerd.services.namespaces.v1.Namespace': { name: 1 },
  'containerd.services.namespaces.v1.ListNamespacesRequest': { filter: 1 },
  'containerd.services.namespaces.v1.ListNamespacesResponse': { namespaces: 1 },
  'containerd.services.content.v1.Info': { digest: 1, size: 2, labels: 5 },
  'containerd.services.content.v1.ListContentRequest': { filters: 1 },
  'containerd.services.content.v1.ListContentResponse': { info: 1 },
  'containerd.services.content.v1.ReadContentRequest': { digest: 1, offset: 2, size: 3 },
  'containerd.services.content.v1.ReadContentResponse': { offset: 1, data: 2 },
  'containerd.services.images.v1.Descriptor': { media_type: 1, digest: 2, size: 3, annotations: 5 },
  'containerd.services.images.v1.Image': { name: 1, target: 3 },
  'containerd.services.images.v1.ListImagesRequest': { filters: 1 },
  'containerd.services.images.v1.ListImagesResponse': { images: 1 },
} as const;

const F = FIELDS;

export interface ContentInfo {
  digest: string;
  size: number;
  labels: Map<string, string>;
}

export interface ContentDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations: Map<string, string>;
}

export interface ImageRecord {
  name: string;
  target: ContentDescriptor | undefined;
}

export interface ReadChunk {
  offset: number;
  data: Buffer;
}

// ---- requests ----

export const encodeListNamespacesRequest = (): Buffer => Buffer.alloc(0);

export function encodeListContentRequest(filters: readonly string[]): Buffer {
  const w = new ProtoWriter();
  for (const f of filters) w.string(F['containerd.services.content.v1.ListContentRequest'].filters, f);
  return w.finish();
}

export function encodeReadContentRequest(digest: string, offset: number, size: number): Buffer {
  const f = F['containerd.services.content.v1.ReadContentRequest'];
  return new ProtoWriter().string(f.digest, digest).int64(f.offset, offset).int64(f.size, size).finish();
}

export function encodeListImagesRequest(filters: readonly string[]): Buffer {
  const w = new ProtoWriter();
  for (const f of filters) w.string(F['containerd.services.images.v1.ListImagesRequest'].filters, f);
  return w.finish();
}

// ---- responses ----

function submessages(buf: Buffer, field: number): Buffer[] {
  const out: Buffer[] = [];
  for (const f of readFields(buf)) if (f.field === field && f.wire === 2) out.push(f.value);
  return out;
}

function decodeNamespace(buf: Buffer): string {
  let name = '';
  for (const f of readFields(buf)) {
    if (f.field === F['containerd.services.namespaces.v1.Namespace'].name && f.wire === 2) name = protoString(f.value);
  }
  return name;
}

export function decodeListNamespacesResponse(buf: Buffer): string[] {
  return submessages(buf, F['containerd.services.namespaces.v1.ListNamespacesResponse'].namespaces).map(decodeNamespace);
}

function decodeInfo(buf: Buffer): ContentInfo {
  const f = F['containerd.services.content.v1.Info'];
  const info: ContentInfo = { digest: '', size: 0, labels: new Map() };
  for (const x of readFields(buf)) {
    if (x.field === f.digest && x.wire === 2) info.digest = protoString(x.value);
    else if (x.field === f.size && x.wire === 0) info.size = x.value;
    else if (x.field === f.labels && x.wire === 2) info.labels.set(...readMapEntry(x.value));
  }
  return info;
}

export function decodeListContentResponse(buf: Buffer): ContentInfo[] {
  return submessages(buf, F['containerd.services.content.v1.ListContentResponse'].info).map(decodeInfo);
}

export function decodeReadContentResponse(buf: Buffer): ReadChunk {
  const f = F['containerd.services.content.v1.ReadContentResponse'];
  const chunk: ReadChunk = { offset: 0, data: Buffer.alloc(0) };
  for (const x of readFields(buf)) {
    if (x.field === f.offset && x.wire === 0) chunk.offset = x.value;
    else if (x.field === f.data && x.wire === 2) chunk.data = x.value;
  }
  return chunk;
}

function decodeDescriptor(buf: Buffer): ContentDescriptor {
  const f = F['containerd.services.images.v1.Descriptor'];
  const d: ContentDescriptor = { mediaType: '', digest: '', size: 0, annotations: new Map() };
  for (const x of readFields(buf)) {
    if (x.field === f.media_type && x.wire === 2) d.mediaType = protoString(x.value);
    else if (x.field === f.digest && x.wire === 2) d.digest = protoString(x.value);
    else if (x.field === f.size && x.wire === 0) d.size = x.value;
    else if (x.field === f.annotations && x.wire === 2) d.annotations.set(...readMapEntry(x.value));
  }
  return d;
}

function decodeImage(buf: Buffer): ImageRecord {
  const f = F['containerd.services.images.v1.Image'];
  const img: ImageRecord = { name: '', target: undefined };
  for (const x of readFields(buf)) {
    if (x.field === f.name && x.wire === 2) img.name = protoString(x.value);
    else if (x.field === f.target && x.wire === 2) img.target = decodeDescriptor(x.value);
  }
  return img;
}

export function decodeListImagesResponse(buf: Buffer): ImageRecord[] {
  return submessages(buf, F['containerd.services.images.v1.ListImagesResponse'].images).map(decodeImage);
}

export { ProtoError };
