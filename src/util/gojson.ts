/**
 * Decoding JSON the way Go's `encoding/json` does for the structs ocicrypt and containerd use, so we accept exactly
 * what they accept: struct field names match case-insensitively (the last matching key wins), unknown fields are
 * ignored, `[]byte` is padded std base64 (CR/LF ignored) or an array of numbers 0..255, and `null` leaves the zero
 * value (nil slice / nil map / empty string).
 */

export class GoJsonError extends Error {
  override readonly name = 'GoJsonError';
}

type JsonObject = Record<string, unknown>;

/** The JSON kind in Go's error wording (`cannot unmarshal <kind> into ...`). */
function kindOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  switch (typeof v) {
    case 'string':
      return 'string';
    case 'number':
      return 'number';
    case 'boolean':
      return 'bool';
    default:
      return 'object';
  }
}

function mismatch(v: unknown, where: string, goType: string): GoJsonError {
  return new GoJsonError(`json: cannot unmarshal ${kindOf(v)} into Go ${where} of type ${goType}`);
}

/** Parses JSON text; syntax errors become a GoJsonError. */
export function parseJson(text: string | Buffer): unknown {
  try {
    return JSON.parse(typeof text === 'string' ? text : text.toString('utf8')) as unknown;
  } catch (err) {
    throw new GoJsonError(`invalid JSON: ${(err as Error).message}`);
  }
}

/** Go folds field names with Unicode simple folding; upper-then-lower covers the cases that matter (ſ, K). */
function fold(name: string): string {
  return name.toUpperCase().toLowerCase();
}

/**
 * A Go struct value: `null` is the zero struct (returned as `{}`), anything but an object is a type error.
 * `where` names the Go type for messages, e.g. `value` or `struct field Payload.Descriptor`.
 */
export function goStruct(v: unknown, where: string, goType: string): JsonObject {
  if (v === null || v === undefined) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw mismatch(v, where, goType);
  return v as JsonObject;
}

/** The value of struct field `name`: case-insensitive, last matching key wins (Go decodes keys in order). */
export function goField(obj: JsonObject, name: string): unknown {
  const want = fold(name);
  let found: unknown = undefined;
  for (const key of Object.keys(obj)) {
    if (key === name || fold(key) === want) found = obj[key];
  }
  return found;
}

/** A Go `string`; absent or `null` is "". */
export function goString(v: unknown, where: string): string {
  if (v === null || v === undefined) return '';
  if (typeof v !== 'string') throw mismatch(v, where, 'string');
  return v;
}

/** A Go `int64`; absent or `null` is 0. */
export function goInt64(v: unknown, where: string): number {
  if (v === null || v === undefined) return 0;
  if (typeof v !== 'number') throw mismatch(v, where, 'int64');
  if (!Number.isSafeInteger(v)) throw new GoJsonError(`json: cannot unmarshal number ${v} into Go ${where} of type int64`);
  return v;
}

/** A Go `map[string]T`; absent or `null` is nil (returned as `null`). Keys are exact, unlike struct fields. */
export function goMap<T>(
  v: unknown,
  where: string,
  goType: string,
  elem: (value: unknown, where: string) => T,
): Map<string, T> | null {
  if (v === null || v === undefined) return null;
  if (typeof v !== 'object' || Array.isArray(v)) throw mismatch(v, where, goType);
  const out = new Map<string, T>();
  for (const [key, value] of Object.entries(v as JsonObject)) out.set(key, elem(value, where));
  return out;
}

/** A Go `[]T`; absent or `null` is nil (returned as `null`). */
export function goSlice<T>(v: unknown, where: string, goType: string, elem: (value: unknown, where: string) => T): T[] | null {
  if (v === null || v === undefined) return null;
  if (!Array.isArray(v)) throw mismatch(v, where, goType);
  return v.map((e) => elem(e, where));
}

const STD_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Go's `base64.StdEncoding.DecodeString`: standard alphabet, padding required, CR and LF ignored anywhere.
 * Returns null when the input is not valid (callers word the error the way their upstream does).
 */
export function decodeStdBase64(text: string): Buffer | null {
  const s = text.includes('\r') || text.includes('\n') ? text.replace(/[\r\n]/g, '') : text;
  if (!STD_BASE64.test(s)) return null;
  return Buffer.from(s, 'base64');
}

/**
 * A Go `[]byte`: a padded std-base64 string, or an array of numbers 0..255 (`null` elements stay 0, as in Go).
 * Absent or `null` is nil (returned as `null`).
 */
export function goBytes(v: unknown, where: string): Buffer | null {
  if (v === null || v === undefined) return null;
  if (typeof v === 'string') {
    const buf = decodeStdBase64(v);
    if (buf === null) throw new GoJsonError(`illegal base64 data in Go ${where} of type []byte`);
    return buf;
  }
  if (Array.isArray(v)) {
    const buf = Buffer.alloc(v.length);
    v.forEach((n, i) => {
      if (n === null) return;
      if (typeof n !== 'number') throw mismatch(n, where, 'uint8');
      if (!Number.isInteger(n) || n < 0 || n > 255) {
        throw new GoJsonError(`json: cannot unmarshal number ${n} into Go ${where} of type uint8`);
      }
      buf[i] = n;
    });
    return buf;
  }
  throw mismatch(v, where, '[]uint8');
}
