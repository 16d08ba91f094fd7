/**
 * Encodes the fd-3 payload containerd hands a stream processor: a protobuf
 * `google.protobuf.Any` — field 1 `type_url` = "io.containerd.ocicrypt.v1.Payload", field 2 `value` = the JSON of
 * imgcrypt's `Payload{DecryptConfig, Descriptor}` — byte for byte as Go writes it for a CRI pull
 * (`test/fixtures/ocicrypt-v1.3.1/payload-cri.bin`): `"Parameters":null` when there are none, descriptor fields in
 * `v1.Descriptor` order, annotation keys sorted, `[]byte` values as standard base64.
 */

export const PAYLOAD_TYPE_URL = 'io.containerd.ocicrypt.v1.Payload';

/** The OCI descriptor fields ocicrypt's payload carries (others of v1.Descriptor are omitted when empty). */
export interface PayloadDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  [extra: string]: unknown;
}

/** ocicrypt `DecryptConfig.Parameters` (Go `map[string][][]byte`); `null` items are Go nil. */
export type PayloadParameters = Record<string, Array<Buffer | null>>;

/** A protobuf base-128 varint. */
export function varint(n: number): Buffer {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`varint out of range: ${n}`);
  const bytes: number[] = [];
  let v = n;
  while (v >= 0x80) {
    bytes.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  bytes.push(v);
  return Buffer.from(bytes);
}

/** A length-delimited protobuf field (wire type 2). */
export function lengthDelimited(field: number, data: Buffer): Buffer {
  return Buffer.concat([varint((field << 3) | 2), varint(data.length), data]);
}

const byKey = ([a]: [string, unknown], [b]: [string, unknown]): number => (a < b ? -1 : a > b ? 1 : 0);

/** Go `encoding/json` of `map[string]string`: keys sorted. */
function goStringMap(map: Record<string, string>): string {
  return `{${Object.entries(map)
    .sort(byKey)
    .map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`)
    .join(',')}}`;
}

/** Go `encoding/json` of `v1.Descriptor` (image-spec v1.1 field order, `omitempty` fields dropped when empty). */
export function descriptorJson(d: PayloadDescriptor): string {
  const parts = [`"mediaType":${JSON.stringify(d.mediaType)}`, `"digest":${JSON.stringify(d.digest)}`, `"size":${d.size}`];
  if (d.urls && d.urls.length > 0) parts.push(`"urls":${JSON.stringify(d.urls)}`);
  if (d.annotations && Object.keys(d.annotations).length > 0) parts.push(`"annotations":${goStringMap(d.annotations)}`);
  for (const key of ['data', 'platform', 'artifactType'] as const) {
    if (d[key] !== undefined) parts.push(`"${key}":${JSON.stringify(d[key])}`);
  }
  return `{${parts.join(',')}}`;
}

/** Go `encoding/json` of `map[string][][]byte`: nil map → `null`, keys sorted, nil `[]byte` → `null`. */
function parametersJson(params: PayloadParameters | undefined): string {
  if (params === undefined) return 'null';
  return `{${Object.entries(params)
    .sort(byKey)
    .map(([k, list]) => `${JSON.stringify(k)}:[${list.map((b) => (b === null ? 'null' : JSON.stringify(b.toString('base64')))).join(',')}]`)
    .join(',')}}`;
}

/** The JSON value inside the `Any` (imgcrypt `Payload`). */
export function payloadJson(descriptor: PayloadDescriptor, params?: PayloadParameters): string {
  return `{"DecryptConfig":{"Parameters":${parametersJson(params)}},"Descriptor":${descriptorJson(descriptor)}}`;
}

/** The exact bytes containerd writes to fd 3 for `descriptor` (and optional decrypt parameters). */
export function encodePayload(descriptor: PayloadDescriptor, params?: PayloadParameters): Buffer {
  return encodeAny(PAYLOAD_TYPE_URL, Buffer.from(payloadJson(descriptor, params), 'utf8'));
}

/** A protobuf `google.protobuf.Any`: field 1 `type_url`, field 2 `value`. */
export function encodeAny(typeUrl: string, value: Buffer): Buffer {
  return Buffer.concat([lengthDelimited(1, Buffer.from(typeUrl, 'utf8')), lengthDelimited(2, value)]);
}
