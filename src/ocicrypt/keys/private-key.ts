/**
 * Private-key parsing as ocicrypt's `utils.ParsePrivateKey` does it, plus what users expect:
 *
 *   1. DER: PKCS#8, PKCS#1, SEC1 (in that order, as upstream)
 *   2. PEM (first block): legacy encrypted PEM (`Proc-Type: 4,ENCRYPTED`) needs the password; then PKCS#8,
 *      PKCS#1 and — unlike upstream — SEC1 (`EC PRIVATE KEY`, what `openssl ecparam -genkey` writes).
 *      Also unlike upstream, PKCS#8 `ENCRYPTED PRIVATE KEY` with a password.
 *   3. not PEM: a private JWK (a public one is refused with upstream's `JWK is not a private key`)
 *   4. PKCS#11 key files (YAML) are recognised and refused with a clear message: no PKCS#11 in this build.
 *
 * Error texts keep upstream's wording (`<prefix>: Missing password for encrypted private key`, ...), because
 * users' runbooks grep for them. No message ever contains key bytes.
 */
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { DecoderError } from '../../util/errors.js';

/** A password problem (missing or wrong): upstream's `IsPasswordError`. */
export class PrivateKeyPasswordError extends DecoderError {}

/** Recognised but unusable in this build (PKCS#11 key file): wrappers skip such keys instead of aborting. */
export class UnsupportedPrivateKeyError extends DecoderError {}

function withPrefix(prefix: string, message: string): string {
  // Upstream formats "%s: ..." even with an empty prefix; we drop the dangling ": ".
  return prefix ? `${prefix}: ${message}` : message;
}

interface PemBlock {
  readonly label: string;
  readonly headers: ReadonlyMap<string, string>;
  readonly der: Buffer;
  /** The block's own text, BEGIN to END line, for handing to OpenSSL when it must do the decryption. */
  readonly text: string;
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)\r?\n?-----END \1-----/;

/** The first PEM block in the data, as Go's `pem.Decode` finds it (text before it is ignored). */
export function decodeFirstPemBlock(data: Buffer): PemBlock | undefined {
  // PEM is ASCII; latin1 keeps a 1:1 byte mapping so binary input cannot produce surprises.
  const text = data.toString('latin1');
  const m = PEM_BLOCK.exec(text);
  if (!m) return undefined;
  const label = m[1]!;
  const body = m[2]!;
  const headers = new Map<string, string>();
  let base64Part = body;
  // RFC 1421 headers: "Name: value" lines, then a blank line, then the base64 body.
  const split = /^((?:[A-Za-z0-9-]+:[^\n]*\r?\n)+)\r?\n/.exec(body);
  if (split) {
    for (const line of split[1]!.split(/\r?\n/)) {
      const idx = line.indexOf(':');
      if (idx > 0) headers.set(line.slice(0, idx).trim(), line.slice(idx + 1).trim());
    }
    base64Part = body.slice(split[0].length);
  }
  const compact = base64Part.replace(/[\s]/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length % 4 !== 0) return undefined;
  return { label, headers, der: Buffer.from(compact, 'base64'), text: m[0] };
}

type DerType = 'pkcs8' | 'pkcs1' | 'sec1';

const DER_TYPES: readonly DerType[] = ['pkcs8', 'pkcs1', 'sec1'];

/**
 * The encodings to try for a PEM block, the one its label names first: each failed OpenSSL attempt costs ~0.5 ms
 * on the per-layer path. The three encodings are disjoint ASN.1 structures, so the order cannot change the result.
 */
function derTypesFor(label: string): readonly DerType[] {
  const first: DerType | undefined =
    label === 'PRIVATE KEY' ? 'pkcs8' : label === 'RSA PRIVATE KEY' ? 'pkcs1' : label === 'EC PRIVATE KEY' ? 'sec1' : undefined;
  return first === undefined ? DER_TYPES : [first, ...DER_TYPES.filter((t) => t !== first)];
}

function tryDer(der: Buffer, types: readonly DerType[]): KeyObject | undefined {
  for (const type of types) {
    try {
      return createPrivateKey({ key: der, format: 'der', type });
    } catch {
      // not this encoding; try the next
    }
  }
  return undefined;
}

/** Recognises an ocicrypt PKCS#11 key file: YAML with a `pkcs11:` map holding a `uri: pkcs11:...`. */
export function isPkcs11KeyFile(data: Buffer): boolean {
  if (data.length > 64 * 1024) return false;
  const text = data.toString('utf8');
  return /^pkcs11:[ \t]*(#.*)?$/m.test(text) && /^[ \t]+uri:[ \t]*["']?pkcs11:/m.test(text);
}

function parseJwk(data: Buffer, prefix: string): KeyObject {
  let jwk: unknown;
  try {
    jwk = JSON.parse(data.toString('utf8'));
  } catch {
    throw new DecoderError(withPrefix(prefix, 'Could not parse private key: not DER, PEM or JWK'));
  }
  if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk) || typeof (jwk as { kty?: unknown }).kty !== 'string') {
    throw new DecoderError(withPrefix(prefix, 'Could not parse input as JWK'));
  }
  const { kty, d } = jwk as { kty: string; d?: unknown };
  if (kty !== 'RSA' && kty !== 'EC' && kty !== 'OKP') {
    throw new DecoderError(withPrefix(prefix, `Could not parse input as JWK: unsupported key type "${kty.slice(0, 16)}"`));
  }
  if (d === undefined) throw new DecoderError(withPrefix(prefix, 'JWK is not a private key'));
  try {
    return createPrivateKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' });
  } catch {
    throw new DecoderError(withPrefix(prefix, 'Could not parse input as JWK'));
  }
}

function parseEncryptedPem(block: PemBlock, legacy: boolean, password: Buffer | null, prefix: string): KeyObject {
  if (password === null) {
    throw new PrivateKeyPasswordError(withPrefix(prefix, 'Missing password for encrypted private key'));
  }
  try {
    // Legacy RFC 1423 encryption lives in the PEM headers, so OpenSSL needs the PEM text; PKCS#8 is plain DER.
    return legacy
      ? createPrivateKey({ key: block.text, format: 'pem', passphrase: password })
      : createPrivateKey({ key: block.der, format: 'der', type: 'pkcs8', passphrase: password });
  } catch {
    // OpenSSL cannot tell a wrong password from garbage after decryption; upstream cannot either.
    throw new PrivateKeyPasswordError(withPrefix(prefix, 'Wrong password: could not decrypt private key'));
  }
}

/**
 * Parses a private key from `privkeys` bytes. `password` is the matching `privkeys-passwords` entry (null = none).
 * `prefix` is the scheme name upstream puts in front of messages (`JWE`, `PKCS7`, or '' for the keys directory).
 */
export function parsePrivateKey(data: Buffer, password: Buffer | null, prefix: string): KeyObject {
  const cached = parsed.get(data);
  if (cached) return cached;
  const key = parseUncached(data, password, prefix);
  // Only keys that needed no password: for those the password argument cannot change the outcome.
  if (!(key instanceof EncryptedKey)) parsed.set(data, key);
  return key instanceof EncryptedKey ? key.key : key;
}

/**
 * Keys already parsed, by the Buffer they came from: the keys directory parses every file to classify it and the
 * key-wrap schemes parse the same Buffers again (same `DecryptParameters`) within one layer. In memory only, and
 * weak: an entry lives as long as its Buffer. Callers must not change a Buffer's bytes while its key may be looked
 * up (the decoder zeroes the parameters only after unwrapping).
 */
const parsed = new WeakMap<Buffer, KeyObject>();

/** A key that was decrypted with a password: never cached (another password must give its own answer). */
class EncryptedKey {
  constructor(readonly key: KeyObject) {}
}

function parseUncached(data: Buffer, password: Buffer | null, prefix: string): KeyObject | EncryptedKey {
  // Every DER private key (PKCS#8, PKCS#1, SEC1) is a SEQUENCE, tag 0x30: anything else (PEM, JWK) skips the DER
  // attempts, which is upstream's order without its failed parses.
  const der = data[0] === 0x30 ? tryDer(data, DER_TYPES) : undefined;
  if (der) return der;

  const block = decodeFirstPemBlock(data);
  if (block) {
    const legacyEncrypted = /^4,\s*ENCRYPTED$/i.test(block.headers.get('Proc-Type') ?? '');
    let key: KeyObject | undefined;
    try {
      if (legacyEncrypted || block.label === 'ENCRYPTED PRIVATE KEY') {
        return new EncryptedKey(parseEncryptedPem(block, legacyEncrypted, password, prefix));
      }
      key = tryDer(block.der, derTypesFor(block.label));
    } finally {
      block.der.fill(0); // the decoded key bytes: the KeyObject holds its own copy
    }
    if (key) return key;
    throw new DecoderError(withPrefix(prefix, `Could not parse private key: PEM block "${block.label}" is not a PKCS#8, PKCS#1 or SEC1 private key`));
  }

  if (isPkcs11KeyFile(data)) {
    throw new UnsupportedPrivateKeyError(withPrefix(prefix, 'PKCS#11 key files are not supported by coco-decoder'));
  }
  return parseJwk(data, prefix);
}
