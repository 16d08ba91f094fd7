/**
 * Just enough protobuf (proto3 wire format) to talk to containerd's CRI and snapshots services from the E2E
 * harness: a handful of small messages, so a hand-written codec is simpler and more transparent than
 * generating code or loading .proto files at runtime.
 */

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

function varint(value: number | bigint): Buffer {
  let v = BigInt(value);
  if (v < 0n) throw new RangeError('negative varints are not needed here');
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) byte |= 0x80;
    out.push(byte);
  } while (v !== 0n);
  return Buffer.from(out);
}

function tag(field: number, wire: number): Buffer {
  return varint((field << 3) | wire);
}

/** Builds a message field by field; proto3 default values (empty string, false, 0) are omitted as Go does. */
export class ProtoWriter {
  private readonly parts: Buffer[] = [];

  string(field: number, value: string | undefined): this {
    if (value !== undefined && value !== '') this.bytes(field, Buffer.from(value, 'utf8'));
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    this.parts.push(tag(field, WIRE_LEN), varint(value.length), Buffer.from(value));
    return this;
  }

  message(field: number, value: Buffer | undefined): this {
    if (value !== undefined) this.bytes(field, value);
    return this;
  }

  bool(field: number, value: boolean | undefined): this {
    if (value) this.parts.push(tag(field, WIRE_VARINT), varint(1));
    return this;
  }

  repeatedString(field: number, values: readonly string[] | undefined): this {
    for (const v of values ?? []) this.bytes(field, Buffer.from(v, 'utf8'));
    return this;
  }

  /** `map<string,string>`: one `{key=1, value=2}` entry message per pair. */
  stringMap(field: number, map: Readonly<Record<string, string>> | undefined): this {
    for (const [k, v] of Object.entries(map ?? {})) {
      this.bytes(field, new ProtoWriter().string(1, k).string(2, v).finish());
    }
    return this;
  }

  finish(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** One decoded field value: varints as bigint, length-delimited as Buffer, fixed as Buffer. */
export type ProtoValue = bigint | Buffer;

/** Decodes a message into field number → values in wire order. Unknown fields are kept; groups are rejected. */
export function decodeFields(buf: Buffer): Map<number, ProtoValue[]> {
  const fields = new Map<number, ProtoValue[]>();
  let pos = 0;
  const readVarint = (): bigint => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (pos >= buf.length) throw new Error('protobuf: truncated varint');
      const byte = buf[pos++]!;
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
      if (shift > 63n) throw new Error('protobuf: varint too long');
    }
  };
  const take = (n: number): Buffer => {
    if (pos + n > buf.length) throw new Error('protobuf: truncated field');
    const out = buf.subarray(pos, pos + n);
    pos += n;
    return out;
  };
  while (pos < buf.length) {
    const key = readVarint();
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    let value: ProtoValue;
    switch (wire) {
      case WIRE_VARINT:
        value = readVarint();
        break;
      case WIRE_I64:
        value = take(8);
        break;
      case WIRE_LEN:
        value = take(Number(readVarint()));
        break;
      case WIRE_I32:
        value = take(4);
        break;
      default:
        throw new Error(`protobuf: unsupported wire type ${wire} for field ${field}`);
    }
    const list = fields.get(field);
    if (list) list.push(value);
    else fields.set(field, [value]);
  }
  return fields;
}

function asBuffer(v: ProtoValue | undefined, field: number): Buffer | undefined {
  if (v === undefined) return undefined;
  if (typeof v === 'bigint') throw new Error(`protobuf: field ${field} is a varint, expected length-delimited`);
  return v;
}

/** Typed accessors over `decodeFields`. The last occurrence wins for singular fields, as in protobuf. */
export class ProtoReader {
  private readonly fields: Map<number, ProtoValue[]>;

  constructor(buf: Buffer) {
    this.fields = decodeFields(buf);
  }

  string(field: number): string {
    return asBuffer(this.fields.get(field)?.at(-1), field)?.toString('utf8') ?? '';
  }

  message(field: number): ProtoReader | undefined {
    const b = asBuffer(this.fields.get(field)?.at(-1), field);
    return b === undefined ? undefined : new ProtoReader(b);
  }

  repeatedString(field: number): string[] {
    return (this.fields.get(field) ?? []).map((v) => asBuffer(v, field)!.toString('utf8'));
  }

  repeatedMessage(field: number): ProtoReader[] {
    return (this.fields.get(field) ?? []).map((v) => new ProtoReader(asBuffer(v, field)!));
  }

  uint(field: number): bigint {
    const v = this.fields.get(field)?.at(-1);
    if (v === undefined) return 0n;
    if (typeof v !== 'bigint') throw new Error(`protobuf: field ${field} is not a varint`);
    return v;
  }

  stringMap(field: number): Record<string, string> {
    const out: Record<string, string> = {};
    for (const entry of this.repeatedMessage(field)) out[entry.string(1)] = entry.string(2);
    return out;
  }
}
