/**
 * The keyprovider protocol's JSON messages (ocicrypt `keywrap/keyprovider/keyprovider.go`), the same bytes on
 * a `cmd` provider's stdin/stdout and inside the gRPC `bytes` field.
 *
 * The input is produced byte for byte as Go's `json.Marshal` produces it (sorted map keys, `[]byte` as std
 * base64, nil as `null`, HTML-safe string escaping), so a provider sees exactly what upstream would send it.
 */
import type { DecryptParameters } from '../keywrap/keywrapper.js';
import { goField } from '../../util/gojson.js';
import { DecoderError } from '../../util/errors.js';

/**
 * DecryptConfig parameters that carry local key material. Upstream forwards the whole merged DecryptConfig to
 * every provider it calls, so every private key from `--decryption-keys-path` (and its password) would reach
 * any configured provider, which only ever needs its own annotation. We drop these before sending: a provider
 * (possibly remote, over gRPC) learns nothing it could not learn from the image itself.
 */
export const KEY_MATERIAL_PARAMETERS: ReadonlySet<string> = new Set([
  'privkeys',
  'privkeys-passwords',
  'x509s',
  'gpg-privatekeys',
  'gpg-privatekeys-passwords',
  'pkcs11-yamls',
  'pkcs11-config',
]);

/** The parameters that may be shown to a key provider: everything except local key material. */
export function withoutKeyMaterial(params: DecryptParameters): DecryptParameters {
  const out: DecryptParameters = {};
  for (const [name, values] of Object.entries(params)) {
    if (!KEY_MATERIAL_PARAMETERS.has(name)) out[name] = values;
  }
  return out;
}

/**
 * `json.Marshal(KeyProviderKeyWrapProtocolInput{Operation: "keyunwrap", KeyUnwrapParams: {Dc, Annotation}})`.
 * `params` is sent as given (callers strip key material first); an empty map is sent as `null`, which is what
 * ocicrypt sends when no DecryptConfig parameters exist (the CRI case).
 */
export function marshalUnwrapInput(params: DecryptParameters, annotation: Buffer): Buffer {
  const json =
    '{"op":"keyunwrap","keywrapparams":{"ec":null,"optsdata":null},"keyunwrapparams":{"dc":{"Parameters":' +
    marshalParameters(params) +
    '},"annotation":' +
    goBytes(annotation) +
    '}}';
  return Buffer.from(json, 'utf8');
}

/** Go `map[string][][]byte`: keys in byte order, values as arrays of base64 strings or null. */
export function marshalParameters(params: DecryptParameters): string {
  const names = Object.keys(params);
  if (names.length === 0) return 'null';
  names.sort((a, b) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')));
  const members = names.map((name) => {
    const values = params[name];
    const encoded = values === undefined ? 'null' : '[' + values.map((v) => goBytes(v)).join(',') + ']';
    return goString(name) + ':' + encoded;
  });
  return '{' + members.join(',') + '}';
}

function goBytes(value: Buffer | null): string {
  return value === null ? 'null' : '"' + value.toString('base64') + '"';
}

const HEX = '0123456789abcdef';

/**
 * Go `encoding/json` string encoding with HTML escaping (the `json.Marshal` default, Go ≥ 1.22): `<`, `>`, `&`,
 * U+2028 and U+2029 as `\u00XX`/`\u20XX`; `\b \f \n \r \t` short forms; other controls as `\u00XX`; invalid
 * UTF-16 (lone surrogates, which Go would have seen as invalid UTF-8) as U+FFFD.
 */
export function goString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdfff) {
      const next = s.charCodeAt(i + 1);
      if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
        out += s[i]! + s[i + 1]!;
        i++;
      } else {
        out += '\ufffd';
      }
      continue;
    }
    switch (c) {
      case 0x22: out += '\\"'; break;
      case 0x5c: out += '\\\\'; break;
      case 0x08: out += '\\b'; break;
      case 0x0c: out += '\\f'; break;
      case 0x0a: out += '\\n'; break;
      case 0x0d: out += '\\r'; break;
      case 0x09: out += '\\t'; break;
      case 0x2028: out += '\\u2028'; break;
      case 0x2029: out += '\\u2029'; break;
      default:
        if (c < 0x20 || c === 0x3c || c === 0x3e || c === 0x26) {
          out += '\\u00' + HEX[c >> 4]! + HEX[c & 0xf]!;
        } else {
          out += s[i]!;
        }
    }
  }
  return out + '"';
}

/**
 * Parses a provider's answer to `keyunwrap` like Go's `json.Unmarshal` into `KeyProviderKeyWrapProtocolOutput`:
 * `optsdata` as std base64 (Go providers) or as an array of byte values (Rust providers: the CoCo keyprovider,
 * ocicrypt-rs). Returns `null` for a missing or null `optsdata` (ocicrypt: "not this one"). Throws a plain
 * Error `<prefix>: <reason>`; the reason never quotes the output, which may hold key material.
 */
export function parseUnwrapOutput(output: Buffer, prefix: string): Buffer | null {
  const fail = (reason: string): never => {
    throw new DecoderError(`${prefix}: ${reason}`);
  };
  let doc: unknown;
  try {
    doc = JSON.parse(output.toString('utf8'));
  } catch {
    return fail(
      output.length === 0 ? 'unexpected end of JSON input' : `output is not valid JSON (${output.length} bytes)`,
    );
  }
  if (doc === null) return null;
  if (typeof doc !== 'object' || Array.isArray(doc)) return fail('output is not a JSON object');
  const results = goField(doc as Record<string, unknown>, 'keyunwrapresults');
  if (results === undefined || results === null) return null;
  if (typeof results !== 'object' || Array.isArray(results)) return fail('"keyunwrapresults" is not a JSON object');
  const optsdata = goField(results as Record<string, unknown>, 'optsdata');
  if (optsdata === undefined || optsdata === null) return null;
  let bytes: Buffer;
  if (typeof optsdata === 'string') {
    bytes = decodeStdBase64(optsdata) ?? fail('"optsdata" is not valid standard base64');
  } else if (Array.isArray(optsdata)) {
    if (!optsdata.every((b) => typeof b === 'number' && Number.isInteger(b) && b >= 0 && b <= 255)) {
      return fail('"optsdata" array must contain only integers 0-255');
    }
    bytes = Buffer.from(optsdata as number[]);
    optsdata.fill(0);
  } else {
    return fail('"optsdata" must be a base64 string, an array of bytes or null');
  }
  // Go would hand an empty slice on as a (failing) success; say plainly what happened instead.
  if (bytes.length === 0) return fail('"optsdata" is empty');
  return bytes;
}

/** Strict RFC 4648 std base64 with padding; Go's decoder also skips `\r` and `\n`. */
function decodeStdBase64(s: string): Buffer | null {
  const t = s.replace(/[\r\n]/g, '');
  if (t.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(t)) return null;
  // Like `base64.StdEncoding` (not `.Strict()`), non-zero trailing bits are tolerated.
  return Buffer.from(t, 'base64');
}
