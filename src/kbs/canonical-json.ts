/**
 * Canonical JSON as trustee hashes it for the runtime-data binding: RFC 8785 (JCS) restricted to what we send —
 * objects, arrays, strings, booleans, null and safe integers — which is compact JSON with object keys sorted by
 * UTF-16 code units at every level. Anything outside that subset is refused rather than canonicalised wrongly.
 */

export type CanonicalValue = string | number | boolean | null | CanonicalValue[] | { [key: string]: CanonicalValue };

export function canonicalJson(value: CanonicalValue): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    // JCS number formatting equals ECMAScript's for integers; fractions/exponents are never part of our messages.
    if (!Number.isSafeInteger(value)) throw new TypeError('canonicalJson: only safe integers are supported');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    // Default sort compares UTF-16 code units, which is exactly JCS's key order.
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k] as CanonicalValue)}`).join(',')}}`;
  }
  throw new TypeError(`canonicalJson: unsupported value of type ${typeof value}`);
}
