/**
 * Loads `--decryption-keys-path` (ctd-decoder `getDecryptionKeys` + ocicrypt `SortDecryptionKeys`)
 * into DecryptConfig parameters: every regular file is sorted into `privkeys` (+ a `null` password),
 * `x509s`, `gpg-privatekeys` or `pkcs11-yamls`, in lexical path order.
 *
 * Deliberate differences from upstream, which fails the whole pull in each of these cases:
 *   - symlinks are followed, so Kubernetes Secret/ConfigMap mounts work (`key.pem -> ..data/key.pem`,
 *     `..data -> ..2024_…`): names starting with `..` are skipped, so each key is loaded once, through the
 *     top-level name; directories already visited (symlink loops) are skipped;
 *   - unknown files (README, public keys, empty files, …) are skipped with a warning naming the file;
 *   - encrypted private keys are skipped with a warning (a directory cannot carry their password);
 *   - a missing directory yields no keys and a warning: decoding fails later only if a key was needed.
 * Warnings name files, never their contents.
 */
import { X509Certificate, createPublicKey } from 'node:crypto';
// Sync fs: a handful of tiny files, and node:fs/promises alone costs ~1 ms of module loading on every layer.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { DecryptParameters } from '../keywrap/keywrapper.js';
import { isPkcs11KeyFile, parsePrivateKey, PrivateKeyPasswordError } from './private-key.js';

/** Key files are small; anything bigger is not a key and is not read into memory. */
const MAX_KEY_FILE_BYTES = 1024 * 1024;
/** Deep enough for any sane layout, shallow enough to stop pathological trees. */
const MAX_DEPTH = 16;

export type KeyFileKind = 'privkeys' | 'x509s' | 'gpg-privatekeys' | 'pkcs11-yamls';

export type KeyFileClass = { readonly kind: KeyFileKind } | { readonly skip: string };

/**
 * The tag of the first OpenPGP packet if it is a well-formed key packet header (sane length, key version 3-6),
 * else undefined. A cheap test, enough to sort files: the PGP scheme is unsupported anyway.
 */
function openPgpKeyPacketTag(data: Buffer): number | undefined {
  const b = data[0];
  if (b === undefined || (b & 0x80) === 0) return undefined;
  let tag: number;
  let header: number;
  let length: number;
  if ((b & 0x40) !== 0) {
    tag = b & 0x3f;
    const l0 = data[1];
    if (l0 === undefined) return undefined;
    if (l0 < 192) [header, length] = [2, l0];
    else if (l0 < 224) [header, length] = [3, ((l0 - 192) << 8) + (data[2] ?? 0) + 192];
    else if (l0 === 255) [header, length] = [6, data.length >= 6 ? data.readUInt32BE(2) : -1];
    else return undefined; // partial body lengths are not allowed for key packets
  } else {
    tag = (b >> 2) & 0x0f;
    const lengthType = b & 0x03;
    if (lengthType === 3) return undefined;
    header = 1 + (1 << lengthType);
    if (data.length < header) return undefined;
    length = lengthType === 0 ? data[1]! : lengthType === 1 ? data.readUInt16BE(1) : data.readUInt32BE(1);
  }
  if (length < 1 || header + length > data.length) return undefined;
  const version = data[header]!;
  return version >= 3 && version <= 6 ? tag : undefined;
}

/** A binary (non-armored) OpenPGP secret keyring: the first packet is a Secret-Key packet (tag 5). */
export function isOpenPgpSecretKeyring(data: Buffer): boolean {
  return openPgpKeyPacketTag(data) === 5;
}

function isCertificate(data: Buffer): boolean {
  try {
    new X509Certificate(data);
    return true;
  } catch {
    return false;
  }
}

function isPublicKey(data: Buffer): boolean {
  try {
    createPublicKey(data);
    return true;
  } catch {
    // DER SPKI or a public JWK
  }
  try {
    createPublicKey({ key: data, format: 'der', type: 'spki' });
    return true;
  } catch {
    // not DER either
  }
  try {
    const jwk: unknown = JSON.parse(data.toString('utf8'));
    if (typeof jwk === 'object' && jwk !== null && !('d' in jwk) && 'kty' in jwk) {
      createPublicKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' });
      return true;
    }
  } catch {
    // not JSON
  }
  return false;
}

/** Sorts one file's content in upstream's order: PKCS#11 YAML, private key, certificate, OpenPGP keyring. */
export function classifyKeyFile(data: Buffer): KeyFileClass {
  if (data.length === 0) return { skip: 'empty file' };
  if (isPkcs11KeyFile(data)) return { kind: 'pkcs11-yamls' };
  try {
    parsePrivateKey(data, null, '');
    return { kind: 'privkeys' };
  } catch (err) {
    if (err instanceof PrivateKeyPasswordError) {
      return {
        skip:
          'encrypted private key; a password cannot be given through the keys directory ' +
          '(store it unencrypted, e.g. `openssl pkey -in key.pem -out key-plain.pem`)',
      };
    }
  }
  if (isCertificate(data)) return { kind: 'x509s' };
  if (isOpenPgpSecretKeyring(data)) return { kind: 'gpg-privatekeys' };
  if (openPgpKeyPacketTag(data) === 6) return { skip: 'OpenPGP public key; decryption needs the secret keyring' };
  if (data.subarray(0, 64).toString('latin1').includes('-----BEGIN PGP ')) {
    return { skip: 'ASCII-armored OpenPGP data; only binary secret keyrings are recognised' };
  }
  if (isPublicKey(data)) return { skip: 'public key; decryption needs the private key' };
  return { skip: 'not a private key, X.509 certificate, OpenPGP secret keyring or PKCS#11 key file' };
}

/** Lexical order by bytes, as Go's filepath.Walk sorts names. */
function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function errorCode(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : 'unreadable';
}

interface WalkState {
  readonly params: DecryptParameters;
  readonly visitedDirs: Set<string>;
  readonly seenFiles: Set<string>;
  readonly warn: (msg: string) => void;
}

function add(params: DecryptParameters, kind: KeyFileKind, data: Buffer): void {
  (params[kind] ??= []).push(data);
  if (kind === 'privkeys') (params['privkeys-passwords'] ??= []).push(null);
}

function visit(path: string, depth: number, s: WalkState): void {
  let st;
  try {
    st = statSync(path); // follows symlinks
  } catch (err) {
    s.warn(`keys directory: skipping ${path}: ${errorCode(err)} (dangling symlink?)`);
    return;
  }
  const id = `${st.dev}:${st.ino}`;
  if (st.isDirectory()) {
    if (s.visitedDirs.has(id)) {
      s.warn(`keys directory: skipping ${path}: directory already visited (symlink loop?)`);
      return;
    }
    s.visitedDirs.add(id);
    if (depth >= MAX_DEPTH) {
      s.warn(`keys directory: skipping ${path}: nested deeper than ${MAX_DEPTH} levels`);
      return;
    }
    let names: string[];
    try {
      names = readdirSync(path);
    } catch (err) {
      s.warn(`keys directory: skipping ${path}: ${errorCode(err)}`);
      return;
    }
    for (const name of names.sort(byteOrder)) {
      // Kubernetes atomic-writer internals (`..data`, `..2024_…`): their files are reachable via top-level names.
      if (name.startsWith('..')) continue;
      visit(join(path, name), depth + 1, s);
    }
    return;
  }
  if (!st.isFile()) {
    s.warn(`keys directory: skipping ${path}: not a regular file`);
    return;
  }
  if (s.seenFiles.has(id)) return; // the same file through another link: load it once
  s.seenFiles.add(id);
  if (st.size > MAX_KEY_FILE_BYTES) {
    s.warn(`keys directory: skipping ${path}: ${st.size} bytes is too large for a key file`);
    return;
  }
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    s.warn(`keys directory: skipping ${path}: ${errorCode(err)}`);
    return;
  }
  const cls = classifyKeyFile(data);
  if ('skip' in cls) {
    data.fill(0); // may still be secret (e.g. an encrypted key)
    s.warn(`keys directory: skipping ${path}: ${cls.skip}`);
    return;
  }
  add(s.params, cls.kind, data);
}

/**
 * Walks `dir` recursively (lexical order, symlinks followed) and returns the parameters its files provide.
 * Never throws for content or layout problems: those become `warn()` calls.
 */
export async function loadKeysDirectory(dir: string, warn: (msg: string) => void): Promise<DecryptParameters> {
  const params: DecryptParameters = {};
  try {
    statSync(dir);
  } catch (err) {
    warn(`keys directory ${dir} is not usable (${errorCode(err)}); continuing without local keys`);
    return params;
  }
  visit(dir, 0, { params, visitedDirs: new Set(), seenFiles: new Set(), warn });
  return params;
}
