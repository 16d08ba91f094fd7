/**
 * The cross-process token cache: containerd starts one decoder per layer, so the attestation token and the
 * private key it is bound to are kept on tmpfs (`cache.dir`, default /run/coco-decoder) and reused until shortly
 * before they expire. One JSON file per (KBS URL, TEE selection, key algorithm), written atomically (temporary
 * file + rename) with mode 0600 in a 0700 directory owned by us (root in production). On read the file must be a
 * regular file (not a symlink), owned by us, mode 0600, with a single link; anything else, or content that does
 * not parse and validate, is ignored, removed and later replaced — never trusted. KEKs are never written here.
 *
 * Synchronous fs on purpose: a few calls on one small tmpfs file per process, and neither libuv's thread pool nor
 * node:fs/promises (a module load of ~2 ms) on the warm path.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, constants, fchmodSync, fstatSync, lstatSync, mkdirSync, openSync, readSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { TeeKeyAlgorithm, TeeSelection } from '../config/types.js';
import type { SessionCookie } from './client.js';
import { isSupportedProtocol, MAX_TOKEN_LENGTH } from './protocol.js';
import { isObject } from '../util/is-object.js';
import type { ProtocolVersion } from './protocol.js';
import { exportTeePrivateKey, importTeeKeyPair } from './tee-key.js';
import type { TeeKeyPair } from './tee-key.js';
import { inspectCacheDir, type CacheDirState } from './cache-dir.js';

export interface CacheScope {
  kbsUrl: string;
  tee: TeeSelection;
  keyAlgorithm: TeeKeyAlgorithm;
}

export interface CachedToken {
  token: string;
  keyPair: TeeKeyPair;
  dialect: ProtocolVersion;
  cookie: SessionCookie | undefined;
  /** Local ms after which the KBS will refuse the token; undefined = do not reuse. */
  expiresAtMs: number | undefined;
}

export type CacheLookup =
  | { state: 'fresh'; entry: CachedToken }
  /** Present but expiring/expired: its dialect is still a good hint for the next handshake. */
  | { state: 'stale'; dialect: ProtocolVersion }
  | { state: 'absent' };

export interface TokenCacheOptions {
  dir: string;
  refreshMarginSeconds: number;
  onWarning: (message: string) => void;
  now?: () => number;
}

const FORMAT = 1;
const MAX_FILE_BYTES = MAX_TOKEN_LENGTH + 64 * 1024;

export class TokenCache {
  private constructor(
    private readonly opts: TokenCacheOptions,
    private readonly uid: number,
  ) {}

  /**
   * Prepares `cache.dir` (created 0700 if missing, mode tightened if we own it). Returns undefined — the caller
   * then works without a cache — when the directory cannot be used safely (not a directory, a symlink, owned by
   * someone else).
   */
  static async open(opts: TokenCacheOptions): Promise<TokenCache | undefined> {
    const uid = expectedUid();
    const dir = opts.dir;
    let state;
    try {
      makeDir(dir, 0);
      state = inspectCacheDir(dir, uid);
      if (state.state === 'usable' && (state.mode & 0o777) !== 0o700) chmodSync(dir, 0o700);
    } catch (err) {
      opts.onWarning(`token cache disabled: cannot prepare cache.dir ${dir} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
      return undefined;
    }
    if (state.state !== 'usable') {
      opts.onWarning(`token cache disabled: cache.dir ${dir}: ${whyUnusable(state, uid)}`);
      return undefined;
    }
    if (state.tmpfs === false) {
      opts.onWarning(`cache.dir ${dir} is not on tmpfs: the attestation key is being written to persistent storage`);
    }
    return new TokenCache(opts, uid);
  }

  /** File name for a scope: switching KBS, TEE or key type never reuses another scope's token. */
  fileFor(scope: CacheScope): string {
    const id = createHash('sha256').update(`${scope.kbsUrl}\n${scope.tee}\n${scope.keyAlgorithm}`).digest('hex').slice(0, 32);
    return join(this.opts.dir, `token-${id}.json`);
  }

  async lookup(scope: CacheScope): Promise<CacheLookup> {
    const file = this.fileFor(scope);
    const raw = this.readTrusted(file);
    if (raw === undefined) return { state: 'absent' };
    const parsed = parseEntry(raw, scope);
    if (typeof parsed === 'string') {
      this.reject(file, parsed);
      return { state: 'absent' };
    }
    const now = (this.opts.now ?? Date.now)();
    const usableUntil = parsed.expiresAtMs === undefined ? 0 : parsed.expiresAtMs - this.opts.refreshMarginSeconds * 1000;
    if (now >= usableUntil) return { state: 'stale', dialect: parsed.dialect };
    return { state: 'fresh', entry: parsed };
  }

  async store(scope: CacheScope, entry: CachedToken): Promise<void> {
    const file = this.fileFor(scope);
    const pkcs8 = exportTeePrivateKey(entry.keyPair);
    const doc: StoredEntry = {
      format: FORMAT,
      kbsUrl: scope.kbsUrl,
      tee: scope.tee,
      keyAlgorithm: scope.keyAlgorithm,
      dialect: entry.dialect,
      token: entry.token,
      expiresAtMs: entry.expiresAtMs ?? 0,
      cookie: entry.cookie?.value ?? null,
      cookieExpiresAtMs: entry.cookie?.expiresAtMs ?? null,
      privateKey: pkcs8.toString('base64'),
    };
    pkcs8.fill(0);
    const text = Buffer.from(JSON.stringify(doc), 'utf8');
    const tmp = join(this.opts.dir, `.${randomBytes(8).toString('hex')}.tmp`);
    try {
      const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
      try {
        fchmodSync(fd, 0o600); // independent of the umask
        for (let off = 0; off < text.length; ) off += writeSync(fd, text, off);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, file);
    } catch (err) {
      removeQuietly(tmp);
      this.opts.onWarning(`cannot write the token cache file ${file} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    } finally {
      text.fill(0);
    }
  }

  /** The file's bytes if it is a regular file we own with mode 0600; otherwise removes it and returns undefined. */
  private readTrusted(file: string): Buffer | undefined {
    let st;
    try {
      st = lstatSync(file);
    } catch {
      return undefined;
    }
    const problem = !st.isFile()
      ? 'not a regular file'
      : st.uid !== this.uid
        ? `owned by uid ${st.uid}`
        : (st.mode & 0o777) !== 0o600
          ? `mode ${(st.mode & 0o777).toString(8)} instead of 600`
          : st.nlink !== 1
            ? 'has extra hard links'
            : st.size > MAX_FILE_BYTES
              ? 'too large'
              : undefined;
    if (problem !== undefined) return this.reject(file, problem);
    try {
      const fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      try {
        const again = fstatSync(fd);
        // Same inode as the one checked: the file was not swapped between lstat and open.
        if (again.ino !== st.ino || again.dev !== st.dev || again.uid !== this.uid || (again.mode & 0o777) !== 0o600 || again.size > MAX_FILE_BYTES) {
          return this.reject(file, 'changed while being read');
        }
        // One byte more than the size: a file that grew after the fstat is refused, not read without a bound.
        const buf = Buffer.alloc(again.size + 1);
        let got = 0;
        for (let n; got < buf.length && (n = readSync(fd, buf, got, buf.length - got, null)) > 0; ) got += n;
        if (got !== again.size) {
          buf.fill(0);
          return this.reject(file, 'changed while being read');
        }
        return buf.subarray(0, got);
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return undefined; // replaced/removed by a concurrent process: a normal race
      return this.reject(file, `unreadable (${code ?? String(err)})`);
    }
  }

  private reject(file: string, problem: string): undefined {
    this.opts.onWarning(`ignoring token cache file ${file}: ${problem}; it will be replaced`);
    removeQuietly(file);
    return undefined;
  }
}

/** Removes a file we are replacing anyway; one that is already gone (a concurrent process) is fine. */
function removeQuietly(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // gone already, or not ours to remove: the next store replaces it
  }
}

/** What is on disk (JSON). */
interface StoredEntry {
  format: number;
  kbsUrl: string;
  tee: string;
  keyAlgorithm: string;
  dialect: string;
  token: string;
  expiresAtMs: number;
  cookie: string | null;
  cookieExpiresAtMs: number | null;
  /** PKCS#8 DER, base64. */
  privateKey: string;
}

/** Validates a cache file; returns the entry or a description of what is wrong. */
function parseEntry(raw: Buffer, scope: CacheScope): CachedToken | string {
  let doc: unknown;
  try {
    doc = JSON.parse(raw.toString('utf8'));
  } catch {
    return 'not valid JSON';
  } finally {
    raw.fill(0);
  }
  if (!isObject(doc) || doc['format'] !== FORMAT) return 'unknown format';
  const d = doc as Partial<Record<keyof StoredEntry, unknown>>;
  if (d.kbsUrl !== scope.kbsUrl || d.tee !== scope.tee || d.keyAlgorithm !== scope.keyAlgorithm) return 'written for another KBS/TEE/key type';
  if (typeof d.dialect !== 'string' || !isSupportedProtocol(d.dialect)) return 'unknown protocol dialect';
  if (typeof d.token !== 'string' || d.token.length === 0 || d.token.length > MAX_TOKEN_LENGTH || !/^[A-Za-z0-9_.-]+$/.test(d.token)) {
    return 'invalid token';
  }
  if (typeof d.expiresAtMs !== 'number' || !Number.isFinite(d.expiresAtMs)) return 'invalid expiry';
  if (d.cookie !== null && (typeof d.cookie !== 'string' || !/^[A-Za-z0-9._~-]{1,256}$/.test(d.cookie))) return 'invalid cookie';
  if (d.cookieExpiresAtMs !== null && typeof d.cookieExpiresAtMs !== 'number') return 'invalid cookie expiry';
  if (typeof d.privateKey !== 'string' || !/^[A-Za-z0-9+/]+={0,2}$/.test(d.privateKey)) return 'invalid private key';
  const der = Buffer.from(d.privateKey, 'base64');
  let keyPair: TeeKeyPair;
  try {
    keyPair = importTeeKeyPair(scope.keyAlgorithm, der);
  } catch {
    return 'private key does not match the configured key type';
  } finally {
    der.fill(0);
  }
  return {
    token: d.token,
    keyPair,
    dialect: d.dialect,
    cookie: typeof d.cookie === 'string' ? { value: d.cookie, expiresAtMs: (d.cookieExpiresAtMs as number | null) ?? undefined } : undefined,
    expiresAtMs: d.expiresAtMs > 0 ? d.expiresAtMs : undefined,
  };
}

/**
 * `mkdir -p` without Node's `recursive: true`, which loops forever on some pseudo-filesystems (e.g. a path under
 * /proc answers ENOENT even though its parent exists).
 */
function makeDir(dir: string, depth: number): void {
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return;
    const parent = dirname(dir);
    if (code !== 'ENOENT' || parent === dir || depth > 32) throw err;
    makeDir(parent, depth + 1);
    try {
      mkdirSync(dir, { mode: 0o700 });
    } catch (again) {
      if ((again as NodeJS.ErrnoException).code !== 'EEXIST') throw again;
    }
  }
}

function whyUnusable(state: Exclude<CacheDirState, { state: 'usable' }>, uid: number): string {
  if (state.state === 'missing') return 'it vanished while being created';
  switch (state.reason) {
    case 'foreign-owner':
      return `it is owned by uid ${state.ownerUid}, not ${uid}`;
    case 'symlink':
      return 'it is a symbolic link';
    case 'not-a-directory':
      return 'it is not a directory';
    case 'unreadable':
      return `it cannot be inspected (${state.code})`;
  }
}

/** root in production (containerd runs us as root); the current uid for unprivileged tests. */
function expectedUid(): number {
  return process.getuid?.() ?? 0;
}
