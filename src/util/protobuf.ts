/**
 * The one hand-written protobuf reader: walks a message's fields with bounds checks, skipping what the caller does
 * not ask for, as Go's `proto.Unmarshal` does (unknown fields ignored; the last occurrence of a field wins).
 * Enough for the two messages we read: `google.protobuf.Any` (the fd-3 payload) and the keyprovider's one-`bytes`
 * message. Errors are Go's wording, which runbooks grep for.
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

/**
 * The last value of each length-delimited field among `fields` (subarrays of `buf`, not copies). A wanted field
 * with another wire type is treated as unknown and skipped, as Go does.
 */
export function readLengthDelimitedFields(buf: Buffer, fields: readonly number[]): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  let pos = 0;
  while (pos < buf.length) {
    const [tag, afterTag] = readVarint(buf, pos);
    pos = afterTag;
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    if (field === 0) throw new ProtoError('invalid field number');
    switch (wire) {
      case 0:
        pos = readVarint(buf, pos)[1];
        break;
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
        if (fields.includes(field)) out.set(field, buf.subarray(start, pos));
        break;
      }
      default:
        throw new ProtoError(`cannot parse reserved wire type ${wire}`);
    }
  }
  return out;
}
