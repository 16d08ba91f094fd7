/**
 * The `jwe` key-wrap scheme (ocicrypt `keywrap/jwe`): the annotation entry is a JWE (general or
 * flattened JSON, or compact) whose plaintext is the privopts JSON, with the same algorithm allow-lists as
 * ocicrypt's `jose.ParseEncrypted` call. What ocicrypt itself writes (RSA-OAEP, ECDH-ES+AxxxKW, AES-GCM) is
 * decrypted with node:crypto directly (jwe-decrypt.ts); anything else by `jose`, loaded only then.
 */
import type { KeyObject } from 'node:crypto';
import type { DecryptOptions, FlattenedJWE, GeneralJWE } from 'jose';
import { decryptJweDirect, type JweParts } from './jwe-decrypt.js';
import { DecoderError } from '../../util/errors.js';
import { parsePrivateKey, UnsupportedPrivateKeyError } from '../keys/private-key.js';
import { privateKeysOf, type DecryptParameters, type KeyWrapper, type UnwrapContext, type UnwrappedEntry } from './keywrapper.js';
import { quoteUntrusted } from '../../util/quote.js';
import { isObject } from '../../util/is-object.js';

const KEY_MANAGEMENT_ALGORITHMS = ['RSA-OAEP', 'RSA-OAEP-256', 'ECDH-ES+A128KW', 'ECDH-ES+A192KW', 'ECDH-ES+A256KW'];
const CONTENT_ENCRYPTION_ALGORITHMS = ['A128CBC-HS256', 'A192CBC-HS384', 'A256CBC-HS512', 'A128GCM', 'A192GCM', 'A256GCM'];

const DECRYPT_OPTIONS: DecryptOptions = {
  keyManagementAlgorithms: KEY_MANAGEMENT_ALGORITHMS,
  contentEncryptionAlgorithms: CONTENT_ENCRYPTION_ALGORITHMS,
};

type ParsedJwe =
  | { readonly form: 'general'; readonly jwe: GeneralJWE }
  | { readonly form: 'flattened'; readonly jwe: FlattenedJWE }
  | { readonly form: 'compact'; readonly jwe: string };

/** Upstream's text for any parse failure is `jose.ParseEncrypted failed`; we keep it and say why. */
function parseFailed(reason: string): DecoderError {
  return new DecoderError(`jose.ParseEncrypted failed: ${reason}`);
}

function decodeProtectedHeader(encoded: unknown): Record<string, unknown> {
  if (encoded === undefined) return {};
  if (typeof encoded !== 'string' || !/^[A-Za-z0-9_-]*$/.test(encoded)) throw parseFailed('bad "protected" member');
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(encoded, 'base64url').toString('utf8'));
  } catch {
    throw parseFailed('"protected" is not base64url JSON');
  }
  if (!isObject(header)) throw parseFailed('"protected" is not a JSON object');
  return header;
}

/**
 * go-jose's ParseEncrypted rejects the whole JWE when any recipient names an algorithm outside the allow-lists;
 * checking up front also gives a clearer message than jose's generic decryption failure.
 */
function checkAlgorithms(headers: ReadonlyArray<Record<string, unknown>>): void {
  for (const h of headers) {
    const { alg, enc } = h;
    if (typeof alg !== 'string' || !KEY_MANAGEMENT_ALGORITHMS.includes(alg)) {
      throw parseFailed(`unsupported JWE key algorithm ${quoteUntrusted(alg ?? null, 40)}`);
    }
    if (typeof enc !== 'string' || !CONTENT_ENCRYPTION_ALGORITHMS.includes(enc)) {
      throw parseFailed(`unsupported JWE content encryption ${quoteUntrusted(enc ?? null, 40)}`);
    }
  }
}

function optionalObject(v: unknown, what: string): Record<string, unknown> | undefined {
  if (v === undefined) return undefined;
  if (!isObject(v)) throw parseFailed(`"${what}" is not an object`);
  return v;
}

/** Parses an annotation entry into one of the three JWE serializations (exported for tests). */
export function parseJwe(entry: Buffer): ParsedJwe {
  const text = entry.toString('utf8').trim();
  if (!text.startsWith('{')) {
    // Compact: go-jose strips all whitespace first.
    const compact = text.replace(/\s+/g, '');
    const parts = compact.split('.');
    if (parts.length !== 5 || parts.some((p) => !/^[A-Za-z0-9_-]*$/.test(p))) throw parseFailed('not JSON and not a compact JWE');
    checkAlgorithms([decodeProtectedHeader(parts[0])]);
    return { form: 'compact', jwe: compact };
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw parseFailed('invalid JSON');
  }
  if (!isObject(json)) throw parseFailed('not a JSON object');
  for (const member of ['ciphertext', 'iv', 'tag', 'aad', 'encrypted_key']) {
    const v = json[member];
    if (v === undefined && member !== 'ciphertext') continue;
    if (member === 'encrypted_key' && json['recipients'] !== undefined) continue; // ignored in general form
    if (typeof v !== 'string' || !/^[A-Za-z0-9_-]*$/.test(v)) throw parseFailed(`"${member}" is not a base64url string`);
  }
  const shared = decodeProtectedHeader(json['protected']);
  const unprotected = optionalObject(json['unprotected'], 'unprotected');

  if (json['recipients'] !== undefined) {
    const recipients = json['recipients'];
    if (!Array.isArray(recipients) || recipients.length === 0) throw parseFailed('"recipients" is not a non-empty array');
    const headers = recipients.map((r) => {
      if (!isObject(r)) throw parseFailed('a recipient is not an object');
      if (r['encrypted_key'] !== undefined && typeof r['encrypted_key'] !== 'string') {
        throw parseFailed('a recipient\'s "encrypted_key" is not a string');
      }
      return { ...shared, ...unprotected, ...optionalObject(r['header'], 'header') };
    });
    checkAlgorithms(headers);
    // General form: the top-level `encrypted_key` (and `header`) that go-jose's FullSerialize adds next to
    // `recipients` is non-standard and ignored, as go-jose's own parser does. Rebuild the object without it.
    const jwe: GeneralJWE = {
      ciphertext: json['ciphertext'] as string,
      iv: json['iv'] as string,
      tag: json['tag'] as string,
      recipients: recipients.map((r: Record<string, unknown>) => ({
        ...(r['header'] !== undefined && { header: r['header'] as GeneralJWE['recipients'][number]['header'] }),
        ...(r['encrypted_key'] !== undefined && { encrypted_key: r['encrypted_key'] as string }),
      })),
      ...(json['protected'] !== undefined && { protected: json['protected'] as string }),
      ...(unprotected !== undefined && { unprotected: unprotected as GeneralJWE['unprotected'] }),
      ...(json['aad'] !== undefined && { aad: json['aad'] as string }),
    };
    return { form: 'general', jwe };
  }

  checkAlgorithms([{ ...shared, ...unprotected, ...optionalObject(json['header'], 'header') }]);
  return { form: 'flattened', jwe: json as unknown as FlattenedJWE };
}

interface Decrypted {
  readonly plaintext: Uint8Array;
  readonly kid: string | undefined;
}

function kidOf(...headers: Array<Record<string, unknown> | undefined>): string | undefined {
  for (const h of headers) if (h && typeof h['kid'] === 'string') return h['kid'];
  return undefined;
}

/** The serialization's members in one shape, for jwe-decrypt.ts (exported for tests). */
export function jweParts(parsed: ParsedJwe): JweParts {
  if (parsed.form === 'compact') {
    const [protectedB64, encryptedKey, iv, ciphertext, tag] = parsed.jwe.split('.') as [string, string, string, string, string];
    return {
      protectedB64,
      protectedHeader: decodeProtectedHeader(protectedB64),
      sharedUnprotected: undefined,
      recipients: [{ header: undefined, encryptedKey: encryptedKey === '' ? undefined : encryptedKey }],
      iv,
      ciphertext,
      tag,
      aad: undefined,
    };
  }
  const jwe = parsed.jwe;
  const recipients =
    parsed.form === 'general'
      ? parsed.jwe.recipients.map((r) => ({ header: r.header as Record<string, unknown> | undefined, encryptedKey: r.encrypted_key }))
      : [{ header: parsed.jwe.header as Record<string, unknown> | undefined, encryptedKey: parsed.jwe.encrypted_key }];
  return {
    protectedB64: jwe.protected ?? '',
    protectedHeader: decodeProtectedHeader(jwe.protected),
    sharedUnprotected: jwe.unprotected as Record<string, unknown> | undefined,
    recipients,
    iv: jwe.iv ?? '',
    ciphertext: jwe.ciphertext,
    tag: jwe.tag ?? '',
    aad: jwe.aad,
  };
}

/** Tries one key against every recipient; undefined when none of them accepts it. */
async function tryKey(parsed: ParsedJwe, key: KeyObject): Promise<Decrypted | undefined> {
  const direct = decryptJweDirect(jweParts(parsed), key);
  if (direct.kind === 'decrypted') return { plaintext: direct.plaintext, kid: direct.kid };
  if (direct.kind === 'not-for-key') return undefined;
  const { compactDecrypt, flattenedDecrypt, generalDecrypt } = await import('jose');
  try {
    switch (parsed.form) {
      case 'general': {
        const r = await generalDecrypt(parsed.jwe, key, DECRYPT_OPTIONS);
        return { plaintext: r.plaintext, kid: kidOf(r.unprotectedHeader, r.sharedUnprotectedHeader, r.protectedHeader) };
      }
      case 'flattened': {
        const r = await flattenedDecrypt(parsed.jwe, key, DECRYPT_OPTIONS);
        return { plaintext: r.plaintext, kid: kidOf(r.unprotectedHeader, r.sharedUnprotectedHeader, r.protectedHeader) };
      }
      case 'compact': {
        const r = await compactDecrypt(parsed.jwe, key, DECRYPT_OPTIONS);
        return { plaintext: r.plaintext, kid: kidOf(r.protectedHeader) };
      }
    }
  } catch {
    // Wrong key type, wrong key or tampered JWE: jose does not tell them apart on purpose, neither do we.
    return undefined;
  }
}

export const jweKeyWrapper: KeyWrapper = {
  scheme: 'jwe',
  supported: true,

  noPossibleKeys(params: DecryptParameters): boolean {
    return privateKeysOf(params).length === 0;
  },

  hasPrivateKeys(params: DecryptParameters): boolean {
    return privateKeysOf(params).length > 0;
  },

  async unwrap(entry: Buffer, ctx: UnwrapContext): Promise<UnwrappedEntry | null> {
    const parsed = parseJwe(entry);
    const keys = privateKeysOf(ctx.params);
    if (keys.length === 0) throw new DecoderError('No private keys found for JWE decryption');
    const passwords = ctx.params['privkeys-passwords'] ?? [];
    if (passwords.length !== keys.length) {
      throw new DecoderError('Private key password array length must be same as that of private keys');
    }
    // Order matters only for which key wins: keys-directory keys first, then payload keys (merged by the caller).
    for (let i = 0; i < keys.length; i++) {
      let key: KeyObject;
      try {
        key = parsePrivateKey(keys[i] ?? Buffer.alloc(0), passwords[i] ?? null, 'JWE');
      } catch (err) {
        // As upstream, an unparsable key (e.g. a wrong password) aborts the scheme; a recognised but
        // unsupported one (PKCS#11 key file) simply cannot decrypt a JWE here.
        if (err instanceof UnsupportedPrivateKeyError) continue;
        throw err;
      }
      const result = await tryKey(parsed, key);
      if (result) {
        const privopts = Buffer.from(result.plaintext.buffer, result.plaintext.byteOffset, result.plaintext.byteLength);
        return result.kid !== undefined ? { privopts, facts: { kid: result.kid } } : { privopts };
      }
    }
    throw new DecoderError('JWE: No suitable private key found for decryption');
  },
};
