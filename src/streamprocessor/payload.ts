/**
 * The fd-3 payload containerd hands a stream processor: a protobuf `google.protobuf.Any` whose value is the JSON of
 * imgcrypt's `Payload{DecryptConfig, Descriptor}` (imgcrypt `images/encryption`, `cmd/ctd-decoder`). Decoded by hand: two length-delimited fields do not
 * justify a protobuf runtime, and we want strict bounds on untrusted input.
 */
import { withoutControlChars } from '../util/quote.js';
import { DecoderError } from '../util/errors.js';
import {
  GoJsonError,
  goBytes,
  goField,
  goInt64,
  goMap,
  goSlice,
  goString,
  goStruct,
  parseJson,
} from '../util/gojson.js';
import { ProtoError, readLengthDelimitedFields } from '../util/protobuf.js';

/** imgcrypt's `DecryptConfig.Parameters` (Go `map[string][][]byte`): what ocicrypt calls its decrypt parameters. */
export type PayloadParameters = Record<string, Array<Buffer | null>>;

/** imgcrypt registers `Payload` under this URL with `typeurl.Register` (no `types.googleapis.com/` prefix). */
export const PAYLOAD_TYPE_URL = 'io.containerd.ocicrypt.v1.Payload';

export interface LayerDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations: Record<string, string>;
}

export interface DecoderPayload {
  /** `DecryptConfig.Parameters`; Go's nil map (`"Parameters":null`) is an empty record. */
  params: PayloadParameters;
  descriptor: LayerDescriptor;
}

export interface ProtoAny {
  typeUrl: string;
  value: Buffer;
}

/**
 * Decodes a `google.protobuf.Any`: field 1 `type_url` (string), field 2 `value` (bytes). Unknown fields are skipped;
 * a known field with an unexpected wire type is treated as unknown (as Go's proto does); the last occurrence wins.
 */
export function decodeAny(buf: Buffer): ProtoAny {
  const fields = readLengthDelimitedFields(buf, [1, 2]);
  const urlBytes = fields.get(1) ?? Buffer.alloc(0);
  const typeUrl = urlBytes.toString('utf8');
  // proto3 strings must be valid UTF-8 (Go's proto.Unmarshal rejects them otherwise).
  if (!Buffer.from(typeUrl, 'utf8').equals(urlBytes)) throw new ProtoError('string field contains invalid UTF-8');
  const value = fields.get(2) ?? Buffer.alloc(0);
  return { typeUrl, value };
}

/** Printable, bounded rendering of an untrusted string for an error message. */
function quoteForMessage(s: string): string {
  const shown = s.length > 80 ? `${s.slice(0, 80)}...` : s;
  return withoutControlChars(JSON.stringify(shown).slice(1, -1));
}

/** Plain assignment would let a `__proto__` key from untrusted JSON replace the prototype. */
function setOwn<T>(obj: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

function decodeParameters(v: unknown): PayloadParameters {
  const where = 'struct field DecryptConfig.DecryptConfig.Parameters';
  const map = goMap(v, where, 'map[string][][]uint8', (list, w) =>
    goSlice(list, w, '[][]uint8', (item, w2) => goBytes(item, w2)),
  );
  const params: PayloadParameters = {};
  if (map === null) return params;
  for (const [name, list] of map) {
    // Go's nil [][]byte and an empty one behave the same for every consumer (len == 0).
    setOwn(params, name, list ?? []);
  }
  return params;
}

function decodeDescriptor(v: unknown): LayerDescriptor {
  const obj = goStruct(v, 'struct field Payload.Descriptor', 'v1.Descriptor');
  const at = (f: string): string => `struct field Descriptor.Descriptor.${f}`;
  const annotations = goMap(goField(obj, 'annotations'), at('annotations'), 'map[string]string', (s, w) => goString(s, w));
  const record: Record<string, string> = {};
  for (const [k, val] of annotations ?? []) {
    setOwn(record, k, val);
  }
  return {
    mediaType: goString(goField(obj, 'mediaType'), at('mediaType')),
    digest: goString(goField(obj, 'digest'), at('digest')),
    size: goInt64(goField(obj, 'size'), at('size')),
    annotations: record,
  };
}

/** Decodes the JSON value of the payload with Go `encoding/json` semantics. Throws GoJsonError. */
export function parsePayloadJson(json: Buffer | string): DecoderPayload {
  const root = goStruct(parseJson(json), 'value', 'imgcrypt.Payload');
  const dc = goStruct(goField(root, 'DecryptConfig'), 'struct field Payload.DecryptConfig', 'config.DecryptConfig');
  return {
    params: decodeParameters(goField(dc, 'Parameters')),
    descriptor: decodeDescriptor(goField(root, 'Descriptor')),
  };
}

/**
 * Decodes the raw fd-3 bytes into the typed payload. Errors keep ctd-decoder's prefixes (`could not proto.Unmarshal()
 * decrypt data`, `could not UnmarshalAny() the decrypt data`) so existing runbooks still match.
 */
export function decodePayload(raw: Buffer): DecoderPayload {
  let any: ProtoAny;
  try {
    any = decodeAny(raw);
  } catch (err) {
    throw new DecoderError(`proto: ${(err as Error).message}`, { stage: 'could not proto.Unmarshal() decrypt data' , cause: err });
  }
  if (any.typeUrl !== PAYLOAD_TYPE_URL) {
    const hint = raw.length === 0 ? 'fd 3 was empty' : `expected ${PAYLOAD_TYPE_URL}`;
    throw new DecoderError(`type with url ${quoteForMessage(any.typeUrl)}: not found (${hint})`, {
      stage: 'could not UnmarshalAny() the decrypt data',
    });
  }
  try {
    return parsePayloadJson(any.value);
  } catch (err) {
    if (err instanceof GoJsonError) {
      throw new DecoderError(err.message, { stage: 'could not UnmarshalAny() the decrypt data' , cause: err });
    }
    throw err;
  }
}
