/**
 * The one hand-written protobuf codec: walks a message's fields with bounds checks, skipping what the caller does
 * not ask for, as Go's `proto.Unmarshal` does (unknown fields ignored; the last occurrence of a field wins), and
 * writes the few request messages we send. Enough for the messages we exchange: `google.protobuf.Any` (the fd-3
 * payload), the keyprovider's one-`bytes` message and the handful of containerd API messages in
 * `containerd/containerd-api.proto`. Errors are Go's wording, which runbooks grep for.
 */
export class ProtoError extends Error {}

/** Reads a base-128 varint at `pos`; returns [value, next position]. At most 10 bytes, as in protobuf. */
function readVarint(buf: Buffer, pos: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new ProtoError('unexpected EOF');
    const b = buf[pos++]!;
    value += (b & 0x7f) * scale;
    if ((b & 0x80) === 0) {
      if (value > Number.MAX_SAFE_INTEGER) throw new ProtoError('variable length integer overflow');
      return [value, pos];
    }
    scale *= 128;
  }
  throw new ProtoError('variable length integer overflow');
}

/** One field occurrence: varints as numbers (negative int64s are refused as overflow), length-delimited as subarrays. */
export type ProtoField = { field: number; wire: 0; value: number } | { field: number; wire: 2; value: Buffer };

/**
 * Every varint and length-delimited field of `buf`, in wire order (fixed32/64 are skipped: none of our messages
 * has one). Values are subarrays of `buf`, not copies.
 */
export function readFields(buf: Buffer): ProtoField[] {
  const out: ProtoField[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const [tag, afterTag] = readVarint(buf, pos);
    pos = afterTag;
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    if (field === 0) throw new ProtoError('invalid field number');
    switch (wire) {
      case 0: {
        const [value, next] = readVarint(buf, pos);
        out.push({ field, wire, value });
        pos = next;
        break;
      }
      case 1:
        if (buf.length - pos < 8) throw new ProtoError('unexpected EOF');
        pos += 8;
        break;
      case 5:
        if (buf.length - pos < 4) throw new ProtoError('unexpected EOF');
        pos += 4;
        break;
      case 2: {
        const [len, start] = readVarint(buf, pos);
        if (len > buf.length - start) throw new ProtoError('unexpected EOF');
        pos = start + len;
        out.push({ field, wire, value: buf.subarray(start, pos) });
        break;
      }
      default:
        throw new ProtoError(`cannot parse reserved wire type ${wire}`);
    }
  }
  return out;
}

/**
 * The last value of each length-delimited field among `fields`. A wanted field with another wire type is treated
 * as unknown and skipped, as Go does.
 */
export function readLengthDelimitedFields(buf: Buffer, fields: readonly number[]): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (const f of readFields(buf)) {
    if (f.wire === 2 && fields.includes(f.field)) out.set(f.field, f.value);
  }
  return out;
}

/** A proto3 `string`: must be valid UTF-8, as Go's proto.Unmarshal insists. */
export function protoString(bytes: Buffer): string {
  const s = bytes.toString('utf8');
  if (!Buffer.from(s, 'utf8').equals(bytes)) throw new ProtoError('string field contains invalid UTF-8');
  return s;
}

/** One `map<string,string>` entry message (`key = 1`, `value = 2`). */
export function readMapEntry(entry: Buffer): [string, string] {
  let key = '';
  let value = '';
  for (const f of readFields(entry)) {
    if (f.wire !== 2) continue;
    if (f.field === 1) key = protoString(f.value);
    else if (f.field === 2) value = protoString(f.value);
  }
  return [key, value];
}

function varint(value: number): Buffer {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError('protobuf varints here are non-negative safe integers');
  const out: number[] = [];
  let v = value;
  do {
    let byte = v % 128;
    v = Math.floor(v / 128);
    if (v !== 0) byte |= 0x80;
    out.push(byte);
  } while (v !== 0);
  return Buffer.from(out);
}

/** Builds a request message; proto3 defaults (empty string, 0) are omitted, as Go does. */
export class ProtoWriter {
  readonly #parts: Buffer[] = [];

  string(field: number, value: string): this {
    if (value !== '') this.bytes(field, Buffer.from(value, 'utf8'));
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    this.#parts.push(varint(field * 8 + 2), varint(value.length), Buffer.from(value));
    return this;
  }

  int64(field: number, value: number): this {
    if (value !== 0) this.#parts.push(varint(field * 8), varint(value));
    return this;
  }

  finish(): Buffer {
    return Buffer.concat(this.#parts);
  }
}
