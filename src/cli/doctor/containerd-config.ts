/**
 * containerd's view of its configuration, as far as coco-decoder cares: the stream processors and the CRI plugin
 * sections after `imports` are followed and merged the way containerd does it (`LoadConfig` in
 * cmd/containerd/server/config/config.go):
 *   - the main file first, then its imports breadth-first (each file once); an import is cleaned, made relative to
 *     the importing file's directory, and globbed when it contains `*` (a glob matching nothing is fine, a missing
 *     plain path stops containerd);
 *   - every file is migrated to containerd's own config version before it is merged (v1 `plugins.cri` →
 *     `io.containerd.grpc.v1.cri`; v2 → v3 moves `image_decryption` to `io.containerd.cri.v1.images`);
 *   - stream processors are replaced per ID, over containerd's built-in two (which run `ctd-decoder`);
 *   - plugin sections: containerd 1.x replaces a whole `[plugins."<id>"]` section (its values are go-toml trees
 *     that mergo cannot merge), containerd 2.x merges them key by key (plain maps); `disabled_plugins` accumulate.
 */
import { lstat, readFile, readdir } from 'node:fs/promises';
import { dirname, isAbsolute, join, normalize } from 'node:path';
import { parse, TomlError } from 'smol-toml';
import type { TomlTable, TomlValue } from 'smol-toml';
import { DecoderError } from '../../util/errors.js';

export const DEFAULT_CONTAINERD_CONFIG = '/etc/containerd/config.toml';
export const GZIP_DECODER_ID = 'io.containerd.ocicrypt.decoder.v1.tar.gzip';
export const TAR_DECODER_ID = 'io.containerd.ocicrypt.decoder.v1.tar';
export const CRI_V2_PLUGIN = 'io.containerd.grpc.v1.cri';
export const CRI_IMAGES_V3_PLUGIN = 'io.containerd.cri.v1.images';
export const BUILT_IN = 'containerd built-in default';

export interface StreamProcessor {
  id: string;
  accepts: string[];
  returns: string;
  path: string;
  args: string[];
  env: string[];
  /** The file that defined it last, or BUILT_IN. */
  source: string;
}

export interface ContainerdConfig {
  root: string;
  rootExists: boolean;
  /** The `version` of the main file (0 when absent, i.e. v1). */
  rootVersion: number;
  /** containerd's own config version every file is migrated to: 2 for containerd 1.x, 3 for 2.x. */
  targetVersion: number;
  /** Files read, in merge order. */
  files: string[];
  processors: Map<string, StreamProcessor>;
  plugins: TomlTable;
  /** Which files defined each plugin section (in order). */
  pluginSources: Map<string, string[]>;
  disabledPlugins: string[];
  /** containerd's socket (`[grpc] address`; the last file that sets it wins). */
  grpcAddress: string;
}

/** What containerd registers before reading any file (cmd/containerd/command/config.go `streamProcessors()`). */
function builtInProcessors(): Map<string, StreamProcessor> {
  const common = {
    path: 'ctd-decoder',
    args: ['--decryption-keys-path', '/etc/containerd/ocicrypt/keys'],
    env: ['OCICRYPT_KEYPROVIDER_CONFIG=/etc/containerd/ocicrypt/ocicrypt_keyprovider.conf'],
    source: BUILT_IN,
  };
  return new Map([
    [GZIP_DECODER_ID, { id: GZIP_DECODER_ID, accepts: ['application/vnd.oci.image.layer.v1.tar+gzip+encrypted'], returns: 'application/vnd.oci.image.layer.v1.tar+gzip', ...common }],
    [TAR_DECODER_ID, { id: TAR_DECODER_ID, accepts: ['application/vnd.oci.image.layer.v1.tar+encrypted'], returns: 'application/vnd.oci.image.layer.v1.tar', ...common }],
  ]);
}

const MAX_FILES = 256;

/**
 * Loads and merges. `containerdMajor` (from `containerd --version`) picks the target version; unknown, the main
 * file's version decides. Throws a one-line DecoderError for what would stop containerd from starting.
 */
export async function loadContainerdConfig(root: string, containerdMajor: number | undefined): Promise<ContainerdConfig> {
  const out: ContainerdConfig = {
    root,
    rootExists: true,
    rootVersion: 0,
    targetVersion: 2,
    files: [],
    processors: builtInProcessors(),
    plugins: {},
    pluginSources: new Map(),
    disabledPlugins: [],
    grpcAddress: '/run/containerd/containerd.sock',
  };
  const loaded = new Set<string>();
  const pending: Array<{ path: string; from: string | undefined }> = [{ path: root, from: undefined }];
  while (pending.length > 0) {
    const { path, from } = pending.shift()!;
    if (loaded.has(path)) continue;
    if (loaded.size >= MAX_FILES) throw new DecoderError(`containerd config: more than ${MAX_FILES} imported files`);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      if (from === undefined && code === 'ENOENT') {
        out.rootExists = false;
        out.targetVersion = containerdMajor === 2 ? 3 : 2;
        return out;
      }
      const why = from === undefined ? '' : ` (imported by ${from}): containerd will not start`;
      throw new DecoderError(`containerd config ${path}: cannot read (${code})${why}`);
    }
    const doc = parseToml(text, path);
    const version = typeof doc['version'] === 'number' ? doc['version'] : 0;
    if (from === undefined) {
      out.rootVersion = version;
      out.targetVersion = containerdMajor === 1 ? 2 : containerdMajor === 2 ? 3 : Math.max(2, version);
    }
    mergeFile(out, doc, Math.max(version, 1), path);
    loaded.add(path);
    out.files.push(path);
    for (const imp of await resolveImports(path, doc['imports'])) pending.push({ path: imp, from: path });
  }
  return out;
}

function parseToml(text: string, path: string): TomlTable {
  try {
    return parse(text);
  } catch (err) {
    if (err instanceof TomlError) {
      const first = err.message.split('\n')[0] ?? 'syntax error';
      throw new DecoderError(`containerd config ${path}: invalid TOML at line ${err.line}, column ${err.column} (${first}): containerd will not start`);
    }
    throw new DecoderError(`containerd config ${path}: invalid TOML: ${String(err)}`);
  }
}

function mergeFile(out: ContainerdConfig, doc: TomlTable, version: number, path: string): void {
  const plugins = migratePlugins(isTable(doc['plugins']) ? doc['plugins'] : {}, version, out.targetVersion);
  for (const [id, section] of Object.entries(plugins)) {
    if (!isTable(section)) continue;
    const existing = out.plugins[id];
    if (out.targetVersion >= 3 && isTable(existing)) mergeTables(existing, section);
    else out.plugins[id] = clone(section);
    out.pluginSources.set(id, [...(out.pluginSources.get(id) ?? []), path]);
  }
  const disabled = doc['disabled_plugins'];
  if (Array.isArray(disabled)) {
    for (const d of disabled) {
      if (typeof d !== 'string') continue;
      const id = version < 2 && d === 'cri' ? CRI_V2_PLUGIN : d;
      if (!out.disabledPlugins.includes(id)) out.disabledPlugins.push(id);
    }
  }
  const grpc = doc['grpc'];
  if (isTable(grpc) && typeof grpc['address'] === 'string' && grpc['address'] !== '') out.grpcAddress = grpc['address'];
  const sps = doc['stream_processors'];
  if (isTable(sps)) {
    for (const [id, sp] of Object.entries(sps)) {
      if (isTable(sp)) out.processors.set(id, toProcessor(id, sp, path));
    }
  }
}

/** The parts of containerd's config migrations that touch what we check. */
function migratePlugins(plugins: TomlTable, from: number, to: number): TomlTable {
  const p: TomlTable = { ...plugins };
  if (from < 2 && isTable(p['cri'])) {
    p[CRI_V2_PLUGIN] = p['cri'];
    delete p['cri'];
  }
  if (from < 3 && to >= 3) {
    const cri = p[CRI_V2_PLUGIN];
    if (isTable(cri) && cri['image_decryption'] !== undefined) {
      const images = isTable(p[CRI_IMAGES_V3_PLUGIN]) ? { ...p[CRI_IMAGES_V3_PLUGIN] } : {};
      images['image_decryption'] = cri['image_decryption'];
      p[CRI_IMAGES_V3_PLUGIN] = images;
      const { image_decryption: _moved, ...rest } = cri;
      p[CRI_V2_PLUGIN] = rest;
    }
  }
  return p;
}

function toProcessor(id: string, t: TomlTable, source: string): StreamProcessor {
  const strings = (v: TomlValue | undefined): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
  return {
    id,
    accepts: strings(t['accepts']),
    returns: typeof t['returns'] === 'string' ? t['returns'] : '',
    path: typeof t['path'] === 'string' ? t['path'] : '',
    args: strings(t['args']),
    env: strings(t['env']),
    source,
  };
}

/** containerd's `resolveImports`: Clean, relative to the importing file's directory, globbed when it has `*`. */
export async function resolveImports(parent: string, imports: TomlValue | undefined): Promise<string[]> {
  if (!Array.isArray(imports)) return [];
  const out: string[] = [];
  for (const raw of imports) {
    if (typeof raw !== 'string' || raw === '') continue;
    let path = normalize(raw).replace(/(.)\/+$/, '$1');
    if (!isAbsolute(path)) path = join(dirname(parent), path);
    if (path.includes('*')) out.push(...(await glob(path)));
    else out.push(path);
  }
  return out;
}

/** Go's `filepath.Glob` for an absolute pattern: `*`, `?`, `[...]` per segment, names sorted per directory. */
export async function glob(pattern: string): Promise<string[]> {
  let bases = ['/'];
  const segments = pattern.split('/').filter((s) => s !== '');
  for (const seg of segments) {
    const next: string[] = [];
    for (const base of bases) {
      if (!/[*?[\\]/.test(seg)) {
        next.push(join(base, seg));
        continue;
      }
      const re = segmentRegExp(seg);
      if (re === undefined) return []; // a malformed pattern: Go returns ErrBadPattern, containerd then fails
      let names: string[];
      try {
        names = (await readdir(base)).sort();
      } catch {
        continue;
      }
      for (const name of names) if (re.test(name)) next.push(join(base, name));
    }
    bases = next;
  }
  const existing: string[] = [];
  for (const p of bases) {
    if (await lstat(p).then(() => true, () => false)) existing.push(p);
  }
  return existing;
}

function segmentRegExp(seg: string): RegExp | undefined {
  let re = '^';
  for (let i = 0; i < seg.length; i++) {
    const c = seg[i]!;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '\\') {
      i++;
      if (i >= seg.length) return undefined;
      re += escapeRe(seg[i]!);
    } else if (c === '[') {
      const end = seg.indexOf(']', i + 2);
      if (end < 0) return undefined;
      let body = seg.slice(i + 1, end);
      const negate = body.startsWith('^');
      if (negate) body = body.slice(1);
      re += `[${negate ? '^' : ''}${body.replace(/[\]\\^]/g, '\\$&')}]`;
      i = end;
    } else re += escapeRe(c);
  }
  try {
    return new RegExp(`${re}$`, 'u');
  } catch {
    return undefined;
  }
}

function escapeRe(c: string): string {
  return c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

export function isTable(value: TomlValue | undefined): value is TomlTable {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

function mergeTables(to: TomlTable, from: TomlTable): void {
  for (const [k, v] of Object.entries(from)) {
    const existing = to[k];
    if (isTable(v) && isTable(existing)) mergeTables(existing, v);
    else to[k] = clone(v);
  }
}

function clone<T extends TomlValue>(v: T): T {
  if (Array.isArray(v)) return v.map((x) => clone(x)) as T;
  if (isTable(v)) {
    const t: TomlTable = {};
    for (const [k, x] of Object.entries(v)) t[k] = clone(x);
    return t as T;
  }
  return v;
}
