/**
 * Rungs 6 and 7: containerd will actually run coco-decoder for encrypted layers, with the layer descriptor.
 *   containerd: each encrypted media type is accepted by exactly one stream processor, under an ID containerd
 *     passes fd 3 to, returning a media type containerd can continue with, whose `path` is a working coco-decoder;
 *   cri: the CRI plugin is enabled, which pull path it takes (containerd 2.x: the transfer service, or a local pull
 *     when `use_local_image_pull` is set or another setting forces the fallback, CRI `CheckLocalImagePullConfigs`),
 *     and how the decoder gets the layer descriptor on it: the fd-3 payload (1.x; 2.1.7+/2.2.2+ local pulls), or
 *     the content-store lookup through containerd's socket, which is then probed.
 */
import { relative, dirname } from 'node:path';
import { describeError } from '../../util/errors.js';
import {
  BUILT_IN,
  CRI_IMAGES_V3_PLUGIN,
  CRI_V2_PLUGIN,
  GZIP_DECODER_ID,
  TAR_DECODER_ID,
  isTable,
  loadContainerdConfig,
} from './containerd-config.js';
import type { ContainerdConfig, StreamProcessor } from './containerd-config.js';
import type { TomlTable, TomlValue } from 'smol-toml';
import { containerdVersion, findExecutable, runQuietly } from './executables.js';
import type { ContainerdVersion } from './executables.js';
import { fail, pass, skip } from './rung.js';
import type { RungResult } from './rung.js';

const LAYER = 'application/vnd.oci.image.layer.v1.tar';
const ENCRYPTED = [
  { type: `${LAYER}+gzip+encrypted`, returns: [`${LAYER}+gzip`, `${LAYER}+zstd`] },
  // containerd detects the real compression by magic number, so zstd output may be declared as gzip (imgcrypt `PayloadToolIDs`).
  { type: `${LAYER}+zstd+encrypted`, returns: [`${LAYER}+gzip`, `${LAYER}+zstd`] },
  { type: `${LAYER}+encrypted`, returns: [LAYER, `${LAYER}+gzip`, `${LAYER}+zstd`] },
] as const;
const PAYLOAD_IDS = [GZIP_DECODER_ID, TAR_DECODER_ID];
const DROP_IN = '/etc/containerd/conf.d/coco-decoder.toml';
const VERSION_TIMEOUT_MS = 10_000;

export interface ContainerdCheckOptions {
  configPath: string;
  env: NodeJS.ProcessEnv;
  /** The coco-decoder config the doctor checked (to notice containerd running the decoder with another one). */
  decoderConfig: string | undefined;
  /** That config's `[containerd]` table: whether the decoder may look layers up, and through which socket. */
  lookup: { enabled: boolean; address: string | undefined; timeoutMs: number };
}

export async function checkContainerd(o: ContainerdCheckOptions): Promise<RungResult[]> {
  const version = await containerdVersion(o.env);
  let cfg: ContainerdConfig;
  try {
    cfg = await loadContainerdConfig(o.configPath, version?.major);
  } catch (err) {
    return [fail('containerd', describeError(err), 'correct that file: containerd refuses to start with it'), skip('cri', 'needs a readable containerd config')];
  }
  return [await checkProcessors(cfg, o), await checkCri(cfg, version, o)];
}

interface Finding {
  problem: string;
  fix: string;
}

async function checkProcessors(cfg: ContainerdConfig, o: ContainerdCheckOptions): Promise<RungResult> {
  const findings: Finding[] = [];
  const importHint = cfg.rootExists
    ? `make ${cfg.root} import the coco-decoder drop-in: imports = ["${dirname(DROP_IN)}/*.toml"] as a top-level key, then restart containerd`
    : `create ${cfg.root} with imports = ["${dirname(DROP_IN)}/*.toml"] (the coco-decoder drop-in), then restart containerd`;
  const chosen = new Map<string, StreamProcessor>();
  const routes: string[] = [];
  const notes: string[] = [];

  for (const m of ENCRYPTED) {
    const handlers = [...cfg.processors.values()].filter((p) => p.accepts.includes(m.type));
    if (handlers.length === 0) {
      findings.push({ problem: `no stream processor accepts ${m.type}`, fix: importHint });
      continue;
    }
    if (handlers.length > 1) {
      findings.push({
        problem: `${m.type} is accepted by ${handlers.map((h) => `"${h.id}" (${h.source})`).join(' and ')}: containerd picks one of them at random`,
        fix: `list ${m.type} in the accepts of exactly one processor, "${homeId(m.type)}"`,
      });
      continue;
    }
    const h = handlers[0]!;
    if (!PAYLOAD_IDS.includes(h.id) && o.lookup.enabled) {
      notes.push(`"${h.id}" gets no fd-3 payload: the decoder looks the layer up in containerd's content store (see the cri rung)`);
    } else if (!PAYLOAD_IDS.includes(h.id)) {
      findings.push({
        problem:
          `${m.type} goes to processor "${h.id}", which containerd starts without the layer descriptor on fd 3 ` +
          `(it passes it only to ${GZIP_DECODER_ID} and ${TAR_DECODER_ID}), so no layer can be decrypted`,
        fix: `move ${m.type} into the accepts of [stream_processors."${homeId(m.type)}"] (${h.source}), or allow the content-store lookup ([containerd] lookup = true)`,
      });
      continue;
    }
    if (!(m.returns as readonly string[]).includes(h.returns)) {
      findings.push({
        problem: `processor "${h.id}" declares returns = "${h.returns}" for ${m.type}`,
        fix: `set returns = "${m.returns[0]}" for it (${h.source})`,
      });
      continue;
    }
    chosen.set(h.id, h);
    routes.push(`tar${m.type.slice(LAYER.length).replace('+encrypted', '')}→${h.id.slice('io.containerd.ocicrypt.decoder.'.length)}`);
  }

  const binaries: string[] = [];
  // One check per distinct `path` (both IDs normally run the same binary).
  const byPath = new Map<string, StreamProcessor[]>();
  for (const h of chosen.values()) byPath.set(h.path, [...(byPath.get(h.path) ?? []), h]);
  for (const [path, hs] of byPath) {
    const who = hs.length > 1 ? `processors ${hs.map((h) => `"${h.id}"`).join(' and ')} run` : `processor "${hs[0]!.id}" runs`;
    const where = dedupe(hs.map((h) => h.source)).join(', ');
    const builtIn = hs.every((h) => h.source === BUILT_IN);
    const resolved = await findExecutable(path, o.env);
    if (resolved === undefined) {
      findings.push({
        problem: `${who} "${path}", which is not an executable file${path.includes('/') ? '' : ' in PATH'}`,
        fix: builtIn ? importHint : `install coco-decoder there (the package puts it at /usr/bin/coco-decoder) or correct path in ${where}`,
      });
      continue;
    }
    const r = await runQuietly(resolved, ['--version'], o.env, VERSION_TIMEOUT_MS);
    const first = r.stdout.split('\n')[0]?.trim() ?? '';
    if (!r.ok || !/^coco-decoder \S+( \(node v\S+, openssl \S+\))?$/.test(first)) {
      findings.push({
        problem: `${who} ${resolved}, which is not coco-decoder (${r.ok ? `--version says "${first.slice(0, 80)}"` : `--version failed: ${r.problem}`})`,
        fix: builtIn ? importHint : `set path = "/usr/bin/coco-decoder" in ${where}`,
      });
      continue;
    }
    binaries.push(`${resolved} (${first})`);
    for (const h of hs) {
      const other = decoderConfigOf(h);
      if (other !== undefined && o.decoderConfig !== undefined && other !== o.decoderConfig) {
        notes.push(`note: containerd runs it with config ${other}, this check used ${o.decoderConfig}`);
      }
    }
  }

  const files = describeFiles(cfg);
  if (findings.length > 0) {
    return fail('containerd', `${files}: ${dedupe(findings.map((f) => f.problem)).join('; ')}`, dedupe(findings.map((f) => f.fix)).join('; '));
  }
  return pass('containerd', `${files}: ${routes.join(', ')}, running ${binaries.join(', ')}${notes.length ? `; ${dedupe(notes).join('; ')}` : ''}`);
}

async function checkCri(cfg: ContainerdConfig, version: ContainerdVersion | undefined, o: ContainerdCheckOptions): Promise<RungResult> {
  const where = cfg.rootExists ? cfg.root : `${cfg.root} (absent: containerd defaults)`;
  const disabled = cfg.disabledPlugins.filter((id) => [CRI_V2_PLUGIN, CRI_IMAGES_V3_PLUGIN].includes(id));
  if (disabled.length > 0) {
    return fail(
      'cri',
      `the CRI plugin is disabled (disabled_plugins contains ${disabled.map((d) => `"${d}"`).join(', ')}): Kubernetes cannot pull through this containerd`,
      `remove it from disabled_plugins in ${where} (Docker's packaged config disables CRI) and restart containerd`,
    );
  }
  const imagesId = cfg.targetVersion >= 3 ? CRI_IMAGES_V3_PLUGIN : CRI_V2_PLUGIN;
  const images = cfg.plugins[imagesId];
  const decryption = isTable(images) ? images['image_decryption'] : undefined;
  const keyModel = isTable(decryption) ? decryption['key_model'] : undefined;
  const sources = cfg.pluginSources.get(imagesId)?.join(', ') ?? where;
  const is2x = version ? version.major >= 2 : cfg.targetVersion >= 3;
  const named = version ? `containerd ${version.text}` : `containerd (version unknown: no containerd in PATH; config version ${cfg.rootVersion || 1})`;
  const keyModelText = `image_decryption.key_model = "node"${keyModel === undefined ? ' (containerd default)' : ''}`;
  const nodeKeys = keyModel === undefined || keyModel === 'node';

  // Which path CRI pulls take, and whether it hands the processors the payload.
  let pullPath: string;
  let payload: boolean;
  if (!is2x) {
    pullPath = 'CRI pulls (client pull)';
    payload = nodeKeys;
  } else {
    const forced = isTable(images) ? localPullFallback(images) : undefined;
    const local = isTable(images) && images['use_local_image_pull'] === true;
    pullPath = local ? 'CRI local pulls (use_local_image_pull = true)' : forced ? `CRI local pulls (automatic fallback: ${forced} is set)` : 'CRI pulls through the transfer service';
    payload = (local || forced !== undefined) && nodeKeys && !(version && neverSendsPayload(version));
  }
  if (payload) return pass('cri', `${keyModelText}; ${named}: ${pullPath} pass the layer descriptor to the stream processor`);

  const why = !nodeKeys
    ? `image_decryption.key_model = ${JSON.stringify(keyModel)} in [plugins."${imagesId}"] (sources: ${sources})`
    : version && neverSendsPayload(version)
      ? `${named} never passes it on CRI pulls (removed in 2.0, back in 2.1.7/2.2.2 for local pulls)`
      : `${named}: ${pullPath} pass no layer descriptor (fd 3)`;
  if (!o.lookup.enabled) {
    return fail(
      'cri',
      `${why}, and the content-store lookup is off ([containerd] lookup = false)`,
      is2x ? `set [containerd] lookup = true in the coco-decoder config, or use_local_image_pull = true under [plugins.'${CRI_IMAGES_V3_PLUGIN}'] (containerd 2.1.7+/2.2.2+)` : `set key_model = "node" under [plugins."${imagesId}".image_decryption] in ${sources}`,
    );
  }
  const probe = await probeLookup(cfg, o);
  if (!probe.ok) return fail('cri', `${why}; the decoder would look layers up in containerd's content store, but ${probe.problem}`, probe.fix);
  return pass('cri', `${why}: the decoder looks each layer up in containerd's content store (${probe.detail})`);
}

/** The first setting that makes containerd 2.x CRI fall back from the transfer service to a local pull. */
export function localPullFallback(images: TomlTable): string | undefined {
  const reg = images['registry'];
  const registry: TomlTable = isTable(reg) ? reg : {};
  const nonEmpty = (v: TomlValue | undefined): boolean => isTable(v) && Object.keys(v).length > 0;
  if (images['disable_snapshot_annotations'] === false) return 'disable_snapshot_annotations = false';
  if (images['discard_unpacked_layers'] === true) return 'discard_unpacked_layers = true';
  if (nonEmpty(registry['mirrors'])) return 'registry.mirrors';
  if (nonEmpty(registry['configs'])) return 'registry.configs';
  if (nonEmpty(registry['auths'])) return 'registry.auths';
  const mcd = images['max_concurrent_downloads'];
  if (mcd !== undefined && Number(mcd) !== 3) return `max_concurrent_downloads = ${String(mcd)}`;
  if (images['image_pull_with_sync_fs'] === true) return 'image_pull_with_sync_fs = true';
  return undefined;
}

/** The socket the decoder will use for the lookup must be containerd's, and answer. */
async function probeLookup(cfg: ContainerdConfig, o: ContainerdCheckOptions): Promise<{ ok: true; detail: string } | { ok: false; problem: string; fix: string }> {
  const gz = cfg.processors.get(GZIP_DECODER_ID);
  const fromEnv = gz?.env.find((e) => e.startsWith('CONTAINERD_ADDRESS='))?.slice('CONTAINERD_ADDRESS='.length);
  const { parseContainerdAddress, resolveContainerdAddress } = await import('../../containerd/address.js');
  let address;
  let containerdSocket: string;
  try {
    address = resolveContainerdAddress(fromEnv !== undefined ? { CONTAINERD_ADDRESS: fromEnv } : {}, o.lookup.address);
    containerdSocket = parseContainerdAddress(cfg.grpcAddress, '[grpc] address').path;
  } catch (err) {
    return { ok: false, problem: describeError(err), fix: 'set a Unix socket path (/path or unix:///path)' };
  }
  if (address.path !== containerdSocket) {
    return {
      ok: false,
      problem: `it would use ${address.path} (${address.source}) while containerd listens on ${containerdSocket} ([grpc] address)`,
      fix: `set [containerd] address = "${containerdSocket}" in the coco-decoder config (or CONTAINERD_ADDRESS in the processors' env)`,
    };
  }
  const { connectContainerd } = await import('../../containerd/client.js');
  try {
    const source = await connectContainerd(address, { deadline: Date.now() + Math.min(o.lookup.timeoutMs, 5_000) });
    try {
      const namespaces = await source.namespaces();
      return { ok: true, detail: `${address.path} answers, namespaces: ${namespaces.length === 0 ? '(none yet)' : namespaces.join(', ')}` };
    } finally {
      source.close();
    }
  } catch (err) {
    return { ok: false, problem: describeError(err), fix: `start containerd, or run doctor as the user containerd runs the decoder as (root)` };
  }
}

/** containerd 2.0.x, 2.1.0–2.1.6 and 2.2.0–2.2.1 have image decryption commented out of the CRI pull. */
export function neverSendsPayload(v: ContainerdVersion): boolean {
  if (v.major !== 2) return false;
  return v.minor === 0 || (v.minor === 1 && v.patch < 7) || (v.minor === 2 && v.patch < 2);
}

/** The coco-decoder config a processor entry makes the decoder read (`--config` wins over the environment). */
function decoderConfigOf(p: StreamProcessor): string | undefined {
  for (let i = 0; i < p.args.length; i++) {
    const a = p.args[i]!;
    const m = /^--?config(?:=(.*))?$/.exec(a);
    if (m) return m[1] ?? p.args[i + 1];
  }
  for (const e of p.env) if (e.startsWith('COCO_DECODER_CONFIG=') && e.length > 'COCO_DECODER_CONFIG='.length) return e.slice('COCO_DECODER_CONFIG='.length);
  return undefined;
}

/** The processor ID a media type belongs under: compressed layers share the .tar.gzip one (imgcrypt `PayloadToolIDs`). */
function homeId(mediaType: string): string {
  return mediaType === `${LAYER}+encrypted` ? TAR_DECODER_ID : GZIP_DECODER_ID;
}

function describeFiles(cfg: ContainerdConfig): string {
  if (!cfg.rootExists) return `${cfg.root} absent (containerd defaults)`;
  const imports = cfg.files.slice(1).map((f) => (f.startsWith(dirname(cfg.root)) ? relative(dirname(cfg.root), f) : f));
  return imports.length > 0 ? `${cfg.root} + ${imports.join(', ')}` : cfg.root;
}

function dedupe(list: string[]): string[] {
  return [...new Set(list)];
}
