/**
 * Reads `/etc/coco-decoder/config.toml` (or the file named by `--config` / `COCO_DECODER_CONFIG`) into the typed
 * Config. Strict on purpose: a typo in a key would otherwise silently fall back to a default (e.g. a plain-HTTP
 * KBS or the wrong TEE), so unknown tables/keys and bad values are errors that name the file and the dotted key.
 */
// Sync: one small file, and node:fs/promises alone costs ~1 ms of module loading on every layer.
import { readFileSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { parse, TomlError } from 'smol-toml';
import type { TomlTable, TomlValue } from 'smol-toml';
import { DecoderError } from '../util/errors.js';
import { unixSocketPath } from '../util/unix-socket-path.js';
import { DEFAULT_CONFIG_PATH, defaultConfig } from './types.js';
import type { Config } from './types.js';

export const CONFIG_ENV = 'COCO_DECODER_CONFIG';

export async function loadConfig(opts: { path?: string; env: NodeJS.ProcessEnv }): Promise<Config> {
  const { path, explicit, origin } = choosePath(opts);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && !explicit) return defaultConfig();
    if (code === 'ENOENT') throw new DecoderError(`config ${path}: file not found (named by ${origin})`);
    throw new DecoderError(`config ${path}: cannot read (${code ?? String(err)})`, { cause: err });
  }
  return parseConfig(text, path);
}

function choosePath(opts: { path?: string; env: NodeJS.ProcessEnv }): {
  path: string;
  explicit: boolean;
  origin: string;
} {
  if (opts.path !== undefined && opts.path !== '') return { path: opts.path, explicit: true, origin: '--config' };
  const fromEnv = opts.env[CONFIG_ENV];
  if (fromEnv !== undefined && fromEnv !== '') return { path: fromEnv, explicit: true, origin: CONFIG_ENV };
  return { path: DEFAULT_CONFIG_PATH, explicit: false, origin: 'default' };
}

/** Parses and validates config text; `file` is only used in messages and recorded as `source`. */
export function parseConfig(text: string, file: string): Config {
  let doc: TomlTable;
  try {
    // Integers as BigInt so `timeout_ms = 1.0` (a TOML float) is told apart from `1` and rejected.
    doc = parse(text, { integersAsBigInt: true });
  } catch (err) {
    if (err instanceof TomlError) {
      const first = err.message.split('\n')[0] ?? 'syntax error';
      throw new DecoderError(`config ${file}: invalid TOML at line ${err.line}, column ${err.column}: ${first}`);
    }
    throw new DecoderError(`config ${file}: invalid TOML: ${String(err)}`);
  }

  const cfg = defaultConfig();
  cfg.source = file;
  const v = new Validator(file);

  for (const tableName of Object.keys(doc)) {
    const table = doc[tableName];
    if (!Object.hasOwn(TABLES, tableName)) {
      throw v.fail(tableName, `unknown table (known: ${Object.keys(TABLES).map((t) => `[${t}]`).join(', ')})`);
    }
    if (!isTable(table)) throw v.fail(tableName, 'must be a table ([' + tableName + '])');
    const known = TABLES[tableName as keyof typeof TABLES];
    for (const key of Object.keys(table)) {
      if (!(known as readonly string[]).includes(key)) {
        throw v.fail(`${tableName}.${key}`, `unknown key (known in [${tableName}]: ${known.join(', ')})`);
      }
    }
  }

  const kbs = tableOf(doc, 'kbs');
  const at = tableOf(doc, 'attestation');
  const cache = tableOf(doc, 'cache');
  const log = tableOf(doc, 'log');
  const kp = tableOf(doc, 'keyprovider');
  const integrity = tableOf(doc, 'integrity');
  const ctd = tableOf(doc, 'containerd');

  cfg.kbs.allowHttp = v.bool(kbs, 'kbs.allow_http') ?? cfg.kbs.allowHttp;
  cfg.kbs.url = v.kbsUrl(kbs, 'kbs.url', cfg.kbs.allowHttp) ?? cfg.kbs.url;
  cfg.kbs.cert = v.absPath(kbs, 'kbs.cert') ?? cfg.kbs.cert;
  cfg.kbs.certOnly = v.bool(kbs, 'kbs.cert_only') ?? cfg.kbs.certOnly;
  if (cfg.kbs.certOnly && cfg.kbs.cert === undefined) throw v.fail('kbs.cert_only', 'needs kbs.cert (the one CA to trust)');
  cfg.kbs.timeoutMs = v.posInt(kbs, 'kbs.timeout_ms') ?? cfg.kbs.timeoutMs;
  cfg.kbs.totalTimeoutMs = v.posInt(kbs, 'kbs.total_timeout_ms') ?? cfg.kbs.totalTimeoutMs;
  cfg.kbs.teeKeyAlgorithm = v.oneOf(kbs, 'kbs.tee_key_algorithm', ['ec-p256', 'rsa-oaep-256'] as const) ?? cfg.kbs.teeKeyAlgorithm;
  cfg.kbs.protocol = v.oneOf(kbs, 'kbs.protocol', ['auto', '0.4.0', '0.2.0'] as const) ?? cfg.kbs.protocol;
  cfg.kbs.teeNames = v.oneOf(kbs, 'kbs.tee_names', ['auto', 'current', 'legacy'] as const) ?? cfg.kbs.teeNames;

  cfg.attestation.tee =
    v.oneOf(at, 'attestation.tee', ['auto', 'sample', 'tdx', 'snp', 'az-tdx-vtpm', 'az-snp-vtpm'] as const) ??
    cfg.attestation.tee;
  cfg.attestation.snpVmpl = v.intRange(at, 'attestation.snp_vmpl', 0, 3) ?? cfg.attestation.snpVmpl;
  cfg.attestation.configfsTsmRoot = v.absPath(at, 'attestation.configfs_tsm_root') ?? cfg.attestation.configfsTsmRoot;
  cfg.attestation.tdxGuestDevice = v.absPath(at, 'attestation.tdx_guest_device') ?? cfg.attestation.tdxGuestDevice;
  cfg.attestation.sevGuestDevice = v.absPath(at, 'attestation.sev_guest_device') ?? cfg.attestation.sevGuestDevice;
  cfg.attestation.ccelPath = v.absPath(at, 'attestation.ccel_path') ?? cfg.attestation.ccelPath;
  cfg.attestation.addonPath = v.absPath(at, 'attestation.addon_path') ?? cfg.attestation.addonPath;
  cfg.attestation.tpmDevice = v.absPath(at, 'attestation.tpm_device') ?? cfg.attestation.tpmDevice;
  const azv = v.intRange(at, 'attestation.azure_evidence_version', 0, 2);
  if (azv === 0) throw v.fail('attestation.azure_evidence_version', 'of 0 (trustee before v0.18) is not supported: use 1 with trustee v0.18–v0.20, 2 from v0.21');
  if (azv !== undefined) cfg.attestation.azureEvidenceVersion = azv as 1 | 2;

  cfg.cache.dir = v.absPath(cache, 'cache.dir') ?? cfg.cache.dir;
  cfg.cache.refreshMarginSeconds =
    v.intRange(cache, 'cache.refresh_margin_seconds', 0, 86_400) ?? cfg.cache.refreshMarginSeconds;
  cfg.cache.lockTimeoutMs = v.posInt(cache, 'cache.lock_timeout_ms') ?? cfg.cache.lockTimeoutMs;

  cfg.log.level = v.oneOf(log, 'log.level', ['error', 'warn', 'info', 'debug'] as const) ?? cfg.log.level;
  cfg.log.file = v.absPath(log, 'log.file') ?? cfg.log.file;
  cfg.log.syslog = v.bool(log, 'log.syslog') ?? cfg.log.syslog;
  cfg.log.syslogFailures = v.bool(log, 'log.syslog_failures') ?? cfg.log.syslogFailures;
  cfg.log.format = v.oneOf(log, 'log.format', ['text', 'json'] as const) ?? cfg.log.format;

  cfg.keyprovider.timeoutMs = v.posInt(kp, 'keyprovider.timeout_ms') ?? cfg.keyprovider.timeoutMs;
  cfg.keyprovider.wrapKekFile = v.absPath(kp, 'keyprovider.wrap_kek_file') ?? cfg.keyprovider.wrapKekFile;
  cfg.keyprovider.wrapKid = v.string(kp, 'keyprovider.wrap_kid') ?? cfg.keyprovider.wrapKid;
  cfg.integrity.checkPlainDigest = v.bool(integrity, 'integrity.check_plain_digest') ?? cfg.integrity.checkPlainDigest;
  cfg.containerd.address = v.containerdAddress(ctd, 'containerd.address') ?? cfg.containerd.address;
  cfg.containerd.lookup = v.bool(ctd, 'containerd.lookup') ?? cfg.containerd.lookup;
  cfg.containerd.timeoutMs = v.posInt(ctd, 'containerd.timeout_ms') ?? cfg.containerd.timeoutMs;

  if (cfg.kbs.totalTimeoutMs < cfg.kbs.timeoutMs) {
    throw v.fail('kbs.total_timeout_ms', `must be at least kbs.timeout_ms (${cfg.kbs.timeoutMs})`);
  }
  return cfg;
}

const TABLES = {
  kbs: ['url', 'cert', 'cert_only', 'allow_http', 'timeout_ms', 'total_timeout_ms', 'tee_key_algorithm', 'protocol', 'tee_names'],
  attestation: ['tee', 'snp_vmpl', 'configfs_tsm_root', 'tdx_guest_device', 'sev_guest_device', 'ccel_path', 'addon_path', 'tpm_device', 'azure_evidence_version'],
  cache: ['dir', 'refresh_margin_seconds', 'lock_timeout_ms'],
  log: ['level', 'file', 'syslog', 'syslog_failures', 'format'],
  keyprovider: ['timeout_ms', 'wrap_kid', 'wrap_kek_file'],
  integrity: ['check_plain_digest'],
  containerd: ['address', 'lookup', 'timeout_ms'],
} as const;

/** Upper bound for durations: 24 h is far beyond any sane deadline and keeps timers within setTimeout's range. */
const MAX_MS = 86_400_000;

function isTable(value: TomlValue | undefined): value is TomlTable {
  // smol-toml builds tables as null-prototype objects; dates are TomlDate (a Date subclass).
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

function tableOf(doc: TomlTable, name: string): TomlTable {
  const t = doc[name];
  return isTable(t) ? t : {};
}

/** Typed accessors: each returns undefined when the key is absent and throws a DecoderError naming it otherwise. */
class Validator {
  constructor(private readonly file: string) {}

  fail(key: string, problem: string): DecoderError {
    return new DecoderError(`config ${this.file}: ${key} ${problem}`);
  }

  private get(table: TomlTable, dotted: string): TomlValue | undefined {
    const key = dotted.slice(dotted.indexOf('.') + 1);
    return Object.hasOwn(table, key) ? table[key] : undefined;
  }

  bool(table: TomlTable, key: string): boolean | undefined {
    const value = this.get(table, key);
    if (value === undefined) return undefined;
    if (typeof value !== 'boolean') throw this.fail(key, 'must be true or false');
    return value;
  }

  string(table: TomlTable, key: string): string | undefined {
    const value = this.get(table, key);
    if (value === undefined) return undefined;
    if (typeof value !== 'string' || value.length === 0) throw this.fail(key, 'must be a non-empty string');
    return value;
  }

  oneOf<T extends string>(table: TomlTable, key: string, allowed: readonly T[]): T | undefined {
    const value = this.get(table, key);
    if (value === undefined) return undefined;
    if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
      throw this.fail(key, `must be one of ${allowed.map((a) => `"${a}"`).join(', ')}`);
    }
    return value as T;
  }

  posInt(table: TomlTable, key: string): number | undefined {
    const value = this.get(table, key);
    if (value === undefined) return undefined;
    if (typeof value !== 'bigint' || value < 1n || value > BigInt(MAX_MS)) {
      throw this.fail(key, `must be a positive integer (at most ${MAX_MS})`);
    }
    return Number(value);
  }

  intRange(table: TomlTable, key: string, min: number, max: number): number | undefined {
    const value = this.get(table, key);
    if (value === undefined) return undefined;
    if (typeof value !== 'bigint' || value < BigInt(min) || value > BigInt(max)) {
      throw this.fail(key, `must be an integer from ${min} to ${max}`);
    }
    return Number(value);
  }

  /** containerd starts us with an unspecified working directory, so relative paths would be meaningless. */
  absPath(table: TomlTable, key: string): string | undefined {
    const value = this.string(table, key);
    if (value === undefined) return undefined;
    if (!isAbsolute(value) || value.includes('\0')) throw this.fail(key, 'must be an absolute path');
    return value;
  }

  /** A Unix socket, as `/path` or `unix:///path` (containerd's `[grpc] address` spelling). */
  containerdAddress(table: TomlTable, key: string): string | undefined {
    const value = this.string(table, key);
    if (value === undefined) return undefined;
    if (unixSocketPath(value) === undefined) throw this.fail(key, 'must be a Unix socket path (/path or unix:///path)');
    return value;
  }

  kbsUrl(table: TomlTable, key: string, allowHttp: boolean): string | undefined {
    const value = this.string(table, key);
    if (value === undefined) return undefined;
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw this.fail(key, `is not a valid URL: "${value}"`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw this.fail(key, `must be an https:// URL (got ${url.protocol}//)`);
    }
    if (url.protocol === 'http:' && !allowHttp) {
      throw this.fail(key, 'uses plain http://, which exposes the attestation token; use https:// or set kbs.allow_http = true');
    }
    if (url.username !== '' || url.password !== '') throw this.fail(key, 'must not contain credentials');
    if (url.search !== '' || url.hash !== '') throw this.fail(key, 'must not contain a query or fragment');
    // Normalised without the trailing slash so `<url>/kbs/v0/...` joins cleanly (a path prefix behind a proxy is kept).
    return `${url.origin}${url.pathname.replace(/\/+$/, '')}`;
  }
}
