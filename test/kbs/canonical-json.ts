/**
 * RFC 8785 (JCS) canonical JSON, as trustee's attestation service hashes structured runtime data
 * (`serialize_canon_json`; serde_json without `preserve_order` gives the same
 * sorted-key compact form for the 0.2.0 dialect).
 *
 * Deliberately independent of the client's implementation in `src/kbs/`: the test KBS must not agree with
 * the client merely because both share one bug.
 */
import { createHash } from 'node:crypto';

export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    // JCS numbers are ECMAScript's Number-to-String, which is what JSON.stringify emits for finite values.
    if (!Number.isFinite(value)) throw new TypeError('canonical JSON: non-finite number');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object') {
    // JCS sorts by UTF-16 code units, which is exactly the default Array.prototype.sort order on strings.
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  throw new TypeError(`canonical JSON: unsupported value of type ${typeof value}`);
}

/** SHA-384 of the canonical JSON: the REPORT_DATA digest for every TEE but `se`. */
export function sha384Canonical(value: unknown): Buffer {
  return createHash('sha384').update(canonicalJson(value), 'utf8').digest();
}
