/**
 * A small BER TLV reader: just what PKCS#7 EnvelopedData and X.509 issuer/serial matching need.
 *
 * Hand-written rather than a library because ocicrypt's PKCS#7 output is not DER (smallstep/pkcs7 `encrypt.go`: the GCM
 * parameters sit under a *primitive* 0x10 tag wrapping a full SEQUENCE, and the nonce is tagged 0x84), which
 * standard ASN.1 parsers reject. The reader is strict about structure (every length is bounds-checked, no
 * trailing bytes where exactly one element is expected, bounded nesting) and lenient only where BER allows it
 * (long-form lengths, indefinite lengths on constructed values, constructed OCTET STRINGs).
 *
 * Every failure is a {@link BerError} (a DecoderError): the caller decides the prefix, nothing throws a bare
 * exception with a stack.
 */
import { DecoderError } from '../../util/errors.js';

export class BerError extends DecoderError {}

export const TagClass = { universal: 0, application: 1, context: 2, private: 3 } as const;
export type TagClassValue = (typeof TagClass)[keyof typeof TagClass];

/** Universal tag numbers used in this project. */
export const UniversalTag = {
  boolean: 1,
  integer: 2,
  bitString: 3,
  octetString: 4,
  null: 5,
  oid: 6,
  sequence: 16,
  set: 17,
} as const;

export interface Tlv {
  readonly tagClass: TagClassValue;
  readonly constructed: boolean;
  readonly tagNumber: number;
  /** The complete encoding (identifier, length, contents and, for indefinite lengths, the end-of-contents octets). */
  readonly raw: Buffer;
  /** The contents octets (without the end-of-contents marker of an indefinite-length value). */
  readonly value: Buffer;
  /** Offset of this element in the buffer it was read from. */
  readonly offset: number;
}

/** Nesting deeper than this is not something PKCS#7 or X.509 produce; it only protects the stack. */
const MAX_DEPTH = 64;

function fail(what: string, offset: number): never {
  throw new BerError(`malformed BER: ${what} at offset ${offset}`);
}

/** Reads one TLV starting at `offset`; the element must lie entirely inside `buf`. */
export function readTlv(buf: Buffer, offset = 0, depth = 0): Tlv {
  if (depth > MAX_DEPTH) fail('nesting too deep', offset);
  let pos = offset;
  if (pos >= buf.length) fail('unexpected end of data (identifier)', pos);
  const id = buf[pos++]!;
  const tagClass = (id >> 6) as TagClassValue;
  const constructed = (id & 0x20) !== 0;
  let tagNumber = id & 0x1f;
  if (tagNumber === 0x1f) {
    // High-tag-number form: base-128 digits, the last one with bit 8 clear.
    tagNumber = 0;
    for (let digits = 0; ; digits++) {
      if (pos >= buf.length) fail('unexpected end of data (tag number)', pos);
      if (digits >= 4) fail('tag number too large', pos);
      const b = buf[pos++]!;
      tagNumber = tagNumber * 128 + (b & 0x7f);
      if ((b & 0x80) === 0) break;
    }
  }
  if (pos >= buf.length) fail('unexpected end of data (length)', pos);
  const first = buf[pos++]!;
  if (first === 0x80) {
    if (!constructed) fail('indefinite length on a primitive value', offset);
    // Contents run until an end-of-contents element (00 00) at this level.
    const contentStart = pos;
    for (;;) {
      if (pos + 1 < buf.length && buf[pos] === 0 && buf[pos + 1] === 0) {
        const end = pos + 2;
        return {
          tagClass,
          constructed,
          tagNumber,
          raw: buf.subarray(offset, end),
          value: buf.subarray(contentStart, pos),
          offset,
        };
      }
      if (pos >= buf.length) fail('missing end-of-contents', pos);
      const child = readTlv(buf, pos, depth + 1);
      pos = child.offset + child.raw.length;
    }
  }
  let length: number;
  if (first < 0x80) {
    length = first;
  } else {
    const count = first & 0x7f;
    if (count === 0x7f) fail('reserved length octet', pos - 1);
    if (count > 4) fail('length too large', pos - 1);
    if (pos + count > buf.length) fail('unexpected end of data (long length)', pos);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + buf[pos++]!;
  }
  if (length > buf.length - pos) fail(`length ${length} exceeds the available ${buf.length - pos} bytes`, offset);
  const end = pos + length;
  return { tagClass, constructed, tagNumber, raw: buf.subarray(offset, end), value: buf.subarray(pos, end), offset };
}

/** Reads exactly one TLV that spans the whole buffer (no trailing bytes). */
export function readSingle(buf: Buffer): Tlv {
  const tlv = readTlv(buf, 0);
  if (tlv.raw.length !== buf.length) fail(`${buf.length - tlv.raw.length} trailing bytes`, tlv.raw.length);
  return tlv;
}

/** The elements inside a constructed value, in order. */
export function children(tlv: Tlv, depth = 0): Tlv[] {
  if (!tlv.constructed) fail('expected a constructed value', tlv.offset);
  const out: Tlv[] = [];
  let pos = 0;
  while (pos < tlv.value.length) {
    const child = readTlv(tlv.value, pos, depth + 1);
    out.push(child);
    pos += child.raw.length;
  }
  return out;
}

export function is(tlv: Tlv | undefined, tagClass: TagClassValue, tagNumber: number, constructed?: boolean): boolean {
  return (
    tlv !== undefined &&
    tlv.tagClass === tagClass &&
    tlv.tagNumber === tagNumber &&
    (constructed === undefined || tlv.constructed === constructed)
  );
}

const UNIVERSAL_NAMES: Record<number, string> = {
  1: 'BOOLEAN',
  2: 'INTEGER',
  3: 'BIT STRING',
  4: 'OCTET STRING',
  5: 'NULL',
  6: 'OBJECT IDENTIFIER',
  16: 'SEQUENCE',
  17: 'SET',
};

function describeTag(tagClass: TagClassValue, tagNumber: number): string {
  if (tagClass === TagClass.universal) return UNIVERSAL_NAMES[tagNumber] ?? `universal ${tagNumber}`;
  if (tagClass === TagClass.context) return `[${tagNumber}]`;
  return `${tagClass === TagClass.application ? 'application' : 'private'} ${tagNumber}`;
}

/** Asserts the element's tag; `what` names the field for the error message. */
export function expect(
  tlv: Tlv | undefined,
  tagClass: TagClassValue,
  tagNumber: number,
  what: string,
  constructed?: boolean,
): Tlv {
  if (tlv === undefined) throw new BerError(`malformed BER: missing ${what}`);
  if (!is(tlv, tagClass, tagNumber, constructed)) {
    fail(`expected ${describeTag(tagClass, tagNumber)} for ${what}, found ${describeTag(tlv.tagClass, tlv.tagNumber)}`, tlv.offset);
  }
  return tlv;
}

export function expectSequence(tlv: Tlv | undefined, what: string): Tlv[] {
  return children(expect(tlv, TagClass.universal, UniversalTag.sequence, what, true));
}

/** Dotted-decimal form of an OBJECT IDENTIFIER. */
export function readOid(tlv: Tlv | undefined, what: string): string {
  const v = expect(tlv, TagClass.universal, UniversalTag.oid, what, false).value;
  if (v.length === 0 || v.length > 64) fail(`bad OBJECT IDENTIFIER length for ${what}`, tlv!.offset);
  const arcs: bigint[] = [];
  let acc = 0n;
  let inArc = false;
  for (const b of v) {
    if (!inArc && b === 0x80) fail(`non-minimal OBJECT IDENTIFIER arc in ${what}`, tlv!.offset);
    acc = (acc << 7n) | BigInt(b & 0x7f);
    inArc = (b & 0x80) !== 0;
    if (!inArc) {
      arcs.push(acc);
      acc = 0n;
    }
  }
  if (inArc) fail(`truncated OBJECT IDENTIFIER in ${what}`, tlv!.offset);
  const first = arcs[0]!;
  const head = first < 40n ? [0n, first] : first < 80n ? [1n, first - 40n] : [2n, first - 80n];
  return [...head, ...arcs.slice(1)].join('.');
}

/** Two's-complement INTEGER as a bigint. */
export function readInteger(tlv: Tlv | undefined, what: string): bigint {
  const v = expect(tlv, TagClass.universal, UniversalTag.integer, what, false).value;
  if (v.length === 0) fail(`empty INTEGER for ${what}`, tlv!.offset);
  let n = BigInt('0x' + v.toString('hex'));
  if ((v[0]! & 0x80) !== 0) n -= 1n << BigInt(v.length * 8);
  return n;
}

/** A small non-negative INTEGER (versions, lengths) as a number. */
export function readSmallInteger(tlv: Tlv | undefined, what: string): number {
  const n = readInteger(tlv, what);
  if (n < 0n || n > 0xffffn) fail(`INTEGER out of range for ${what}`, tlv!.offset);
  return Number(n);
}

/**
 * The octets of a string-like value whose tag the caller has already checked: primitive contents as they are,
 * constructed (BER segmented) contents as the concatenation of their OCTET STRING segments.
 */
export function stringOctets(tlv: Tlv, what: string, depth = 0): Buffer {
  if (!tlv.constructed) return tlv.value;
  if (depth > MAX_DEPTH) fail(`nesting too deep in ${what}`, tlv.offset);
  const parts = children(tlv, depth).map((seg) => {
    expect(seg, TagClass.universal, UniversalTag.octetString, `${what} segment`);
    return stringOctets(seg, what, depth + 1);
  });
  return Buffer.concat(parts);
}

/** OCTET STRING contents (primitive or constructed). */
export function readOctetString(tlv: Tlv | undefined, what: string): Buffer {
  return stringOctets(expect(tlv, TagClass.universal, UniversalTag.octetString, what), what);
}
