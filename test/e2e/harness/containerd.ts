/**
 * A private Debian `containerd` 1.6 instance for the E2E tests: its own config, root, state and sockets in a
 * temp dir (nothing under /run/containerd or /var/lib/containerd), the CRI plugin with
 * `image_decryption.key_model = "node"` (so CRI hands imgcrypt's payload to the stream processors on fd 3),
 * a plain-HTTP registry host, and the ocicrypt stream processors pointing at the decoder under test.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CriImageClient } from './cri.js';
import { freePort, logTail, startDaemon, stopDaemon, waitUntil, type Daemon } from './proc.js';

const execFileP = promisify(execFile);

/**
 * The containerd under test: the distribution's (1.6.20 on Debian 12, 1.7.24 on Debian 13) unless
 * `COCO_E2E_CONTAINERD` names another build, e.g. one extracted from ../shared/containerd/ with `dpkg-deb -x`.
 */
export const CONTAINERD_BINARY = process.env['COCO_E2E_CONTAINERD'] || '/usr/bin/containerd';
/** The CRI plugin keeps its images and snapshots in this containerd namespace. */
export const CRI_NAMESPACE = 'k8s.io';

export const MEDIA_TYPE = {
  tar: 'application/vnd.oci.image.layer.v1.tar',
  tarGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  tarEncrypted: 'application/vnd.oci.image.layer.v1.tar+encrypted',
  tarGzipEncrypted: 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted',
  tarZstdEncrypted: 'application/vnd.oci.image.layer.v1.tar+zstd+encrypted',
} as const;

/** One `[stream_processors."<id>"]` table (containerd `StreamProcessor`). */
export interface StreamProcessorSpec {
  id: string;
  accepts: string[];
  returns: string;
  path: string;
  args?: string[];
  env?: string[];
}

/**
 * The two processors imgcrypt hands payloads to (only these ids get fd 3: imgcrypt `PayloadToolIDs`): zstd rides on the
 * `.tar.gzip` id, whose output containerd decompresses by magic bytes.
 */
export function ocicryptStreamProcessors(decoderPath: string, args: string[] = [], env: string[] = []): StreamProcessorSpec[] {
  return [
    {
      id: 'io.containerd.ocicrypt.decoder.v1.tar.gzip',
      accepts: [MEDIA_TYPE.tarGzipEncrypted, MEDIA_TYPE.tarZstdEncrypted],
      returns: MEDIA_TYPE.tarGzip,
      path: decoderPath,
      args,
      env,
    },
    {
      id: 'io.containerd.ocicrypt.decoder.v1.tar',
      accepts: [MEDIA_TYPE.tarEncrypted],
      returns: MEDIA_TYPE.tar,
      path: decoderPath,
      args,
      env,
    },
  ];
}

export type Snapshotter = 'overlayfs' | 'native';

export interface ContainerdOptions {
  /** The containerd binary; default CONTAINERD_BINARY. */
  binary?: string;
  /** Registry hosts (`127.0.0.1:<port>`) reachable over plain HTTP. */
  insecureRegistries?: string[];
  /** Shorthand for `streamProcessors: ocicryptStreamProcessors(decoderPath, args, env)`. */
  decoderPath?: string;
  args?: string[];
  env?: string[];
  /**
   * Full control over `[stream_processors]`. When neither this nor `decoderPath` is given, none are written and
   * containerd's built-in defaults (`ctd-decoder --decryption-keys-path /etc/containerd/ocicrypt/keys`) apply,
   * unless an imported file defines them.
   */
  streamProcessors?: StreamProcessorSpec[];
  /**
   * Extra config files merged over ours (`imports = [...]`). containerd 1.6 merges per top-level section:
   * a stream processor id or a whole `plugins."<name>"` table in an import replaces ours.
   */
  imports?: string[];
  /** Default: `overlayfs` if an overlay mount works on this machine, else `native`. */
  snapshotter?: Snapshotter;
  /** Extra environment for containerd itself (stream processors inherit it). */
  daemonEnv?: Record<string, string>;
  /** Ports the caller already uses, kept free of containerd's CRI streaming server. */
  avoidPorts?: ReadonlySet<number>;
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  startTimeoutMs?: number;
  /**
   * Appended to every stream processor's `env` as `CONTAINERD_ADDRESS=…`, so the decoder's content-store lookup
   * finds this private instance (a real node needs nothing: the decoder defaults to containerd's own socket).
   * Default: this instance's socket; false: not set.
   */
  processorContainerdAddress?: string | false;
  /** containerd 2.x: `use_local_image_pull` (default false: CRI pulls through the transfer service). */
  useLocalImagePull?: boolean;
}

export interface Containerd {
  readonly binary: string;
  /** e.g. `2.1.9` */
  readonly version: string;
  readonly dir: string;
  readonly root: string;
  readonly state: string;
  readonly socket: string;
  readonly configFile: string;
  readonly logFile: string;
  readonly snapshotter: Snapshotter;
  /** `<root>/io.containerd.snapshotter.v1.<snapshotter>` */
  readonly snapshotterRoot: string;
  /** The CRI streaming server's port (containerd always starts it; we keep it inside our range). */
  readonly streamServerPort: number;
  logTail(lines?: number): string;
  stop(): Promise<void>;
}

const toml = (v: string | string[]): string => JSON.stringify(v); // JSON strings/arrays are valid TOML basic strings/arrays

export interface ConfigParams {
  /** The config format: 2 for containerd 1.x, 3 for 2.x (see `containerdMajorVersion`). */
  version: 2 | 3;
  dir: string;
  snapshotter: Snapshotter;
  streamServerPort: number;
  streamProcessors: StreamProcessorSpec[];
  imports: string[];
  logLevel: string;
  /** 2.x only: CRI pulls through the client's local pull path (which passes the fd-3 payload) instead of transfer. */
  useLocalImagePull?: boolean;
}

const DISABLED_PLUGINS = [
  'io.containerd.snapshotter.v1.aufs',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs',
  'io.containerd.differ.v1.erofs',
  'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing',
  'io.containerd.nri.v1.nri',
];

/** The generated config.toml (version 2 for containerd 1.6/1.7, 3 for 2.x). Pure, so it can be inspected in failures. */
export function containerdConfigToml(p: ConfigParams): string {
  const d = (...parts: string[]) => path.join(p.dir, ...parts);
  const lines = [
    `version = ${p.version}`,
    `root = ${toml(d('root'))}`,
    `state = ${toml(d('state'))}`,
    `temp = ${toml(d('tmp'))}`,
    `imports = ${toml(p.imports)}`,
    // Snapshotters and plugins that need hardware or services we do not have: keep start-up quiet and fast.
    // (Names unknown to a version are ignored.)
    `disabled_plugins = ${toml(DISABLED_PLUGINS)}`,
    '',
    '[grpc]',
    `  address = ${toml(d('containerd.sock'))}`,
    '[ttrpc]',
    `  address = ${toml(d('containerd.sock.ttrpc'))}`,
    '[debug]',
    '  address = ""',
    `  level = ${toml(p.logLevel)}`,
    '[metrics]',
    '  address = ""',
    '',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${toml(d('opt'))}`,
    `[plugins."io.containerd.snapshotter.v1.${p.snapshotter}"]`,
    `  root_path = ${toml(d('root', `io.containerd.snapshotter.v1.${p.snapshotter}`))}`,
    '',
    ...(p.version === 2 ? criV2(p, d) : criV3(p, d)),
    '',
  ];
  for (const sp of p.streamProcessors) {
    lines.push(
      `[stream_processors.${toml(sp.id)}]`,
      `  accepts = ${toml(sp.accepts)}`,
      `  returns = ${toml(sp.returns)}`,
      `  path = ${toml(sp.path)}`,
      `  args = ${toml(sp.args ?? [])}`,
      `  env = ${toml(sp.env ?? [])}`,
    );
  }
  return lines.join('\n') + '\n';
}

/** containerd 1.x: one CRI plugin. Registry hosts through `certs.d/<host>/hosts.toml` (see writeHostsToml). */
function criV2(p: ConfigParams, d: (...parts: string[]) => string): string[] {
  const cri = 'plugins."io.containerd.grpc.v1.cri"';
  return [
    `[${cri}]`,
    '  disable_tcp_service = true',
    '  stream_server_address = "127.0.0.1"',
    `  stream_server_port = ${toml(String(p.streamServerPort))}`,
    `[${cri}.cni]`,
    `  bin_dir = ${toml(d('cni', 'bin'))}`,
    `  conf_dir = ${toml(d('cni', 'conf'))}`,
    `[${cri}.containerd]`,
    `  snapshotter = ${toml(p.snapshotter)}`,
    `[${cri}.image_decryption]`,
    '  key_model = "node"',
    `[${cri}.registry]`,
    `  config_path = ${toml(d('certs.d'))}`,
  ];
}

/** containerd 2.x: CRI split into images/runtime plugins; the transfer service has its own registry hosts dir. */
function criV3(p: ConfigParams, d: (...parts: string[]) => string): string[] {
  return [
    '[plugins."io.containerd.grpc.v1.cri"]',
    '  disable_tcp_service = true',
    '  stream_server_address = "127.0.0.1"',
    `  stream_server_port = ${toml(String(p.streamServerPort))}`,
    '[plugins."io.containerd.cri.v1.images"]',
    `  snapshotter = ${toml(p.snapshotter)}`,
    `  use_local_image_pull = ${p.useLocalImagePull === true}`,
    '[plugins."io.containerd.cri.v1.images".image_decryption]',
    '  key_model = "node"',
    '[plugins."io.containerd.cri.v1.images".registry]',
    `  config_path = ${toml(d('certs.d'))}`,
    '[plugins."io.containerd.cri.v1.runtime".cni]',
    `  bin_dirs = ${toml([d('cni', 'bin')])}`,
    `  conf_dir = ${toml(d('cni', 'conf'))}`,
    '[plugins."io.containerd.transfer.v1.local"]',
    `  config_path = ${toml(d('certs.d'))}`,
  ];
}

const versions = new Map<string, Promise<string>>();

/** The version of a containerd binary (`containerd --version`: "containerd <module> <version> <commit>"), e.g. `2.1.9`. */
export function containerdVersion(binary: string = CONTAINERD_BINARY): Promise<string> {
  let v = versions.get(binary);
  if (v === undefined) {
    v = execFileP(binary, ['--version'], { timeout: 10_000 }).then(({ stdout }) => {
      const m = /\sv?(\d+\.\d+\.\d+)/.exec(stdout);
      if (!m) throw new Error(`cannot read the version of ${binary}: ${JSON.stringify(stdout.slice(0, 200))}`);
      return m[1]!;
    });
    versions.set(binary, v);
  }
  return v;
}

export async function containerdMajorVersion(binary: string = CONTAINERD_BINARY): Promise<number> {
  return Number((await containerdVersion(binary)).split('.')[0]);
}

/** `certs.d/<host>/hosts.toml`: resolve and pull from `host` over plain HTTP. */
async function writeHostsToml(certsDir: string, host: string): Promise<void> {
  const hostDir = path.join(certsDir, host);
  await mkdir(hostDir, { recursive: true });
  await writeFile(
    path.join(hostDir, 'hosts.toml'),
    [`server = ${toml(`http://${host}`)}`, `[host.${toml(`http://${host}`)}]`, '  capabilities = ["pull", "resolve"]', ''].join('\n'),
  );
}

let overlayProbe: Promise<boolean> | undefined;

/** Whether overlayfs can be mounted here (root, kernel support, not blocked by an outer overlay/seccomp). */
export function overlayMountWorks(): Promise<boolean> {
  overlayProbe ??= (async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'e2e-overlay-probe-'));
    const [lower, upper, work, merged] = ['lower', 'upper', 'work', 'merged'].map((n) => path.join(dir, n)) as [string, string, string, string];
    try {
      await Promise.all([lower, upper, work, merged].map((p) => mkdir(p)));
      await writeFile(path.join(lower, 'probe'), 'ok');
      await execFileP('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${upper},workdir=${work}`, merged], {
        timeout: 10_000,
      });
      try {
        return (await readFile(path.join(merged, 'probe'), 'utf8')) === 'ok';
      } finally {
        await execFileP('umount', [merged], { timeout: 10_000 });
      }
    } catch {
      return false;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  })();
  return overlayProbe;
}

/** Mount points at or below `dir`, deepest first (from /proc/self/mountinfo, octal escapes decoded). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((mp): mp is string => mp !== undefined)
    .map(unescape)
    .filter((mp) => mp === dir || mp.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
}

async function unmountAll(dir: string): Promise<void> {
  for (const mp of await mountsUnder(dir)) {
    try {
      await execFileP('umount', [mp], { timeout: 10_000 });
    } catch {
      await execFileP('umount', ['-l', mp], { timeout: 10_000 });
    }
  }
  const left = await mountsUnder(dir);
  if (left.length > 0) throw new Error(`mounts left under ${dir}: ${left.join(', ')}`);
}

async function criAnswers(socket: string): Promise<boolean> {
  const cri = new CriImageClient(socket);
  try {
    // A status query for an absent image is answered OK once the CRI image service is up.
    await cri.imageStatus('e2e.invalid/readiness-probe:latest', { deadlineMs: 1_000 });
    return true;
  } finally {
    cri.close();
  }
}

export async function startContainerd(opts: ContainerdOptions = {}): Promise<Containerd> {
  const snapshotter = opts.snapshotter ?? ((await overlayMountWorks()) ? 'overlayfs' : 'native');
  const binary = opts.binary ?? CONTAINERD_BINARY;
  const streamProcessors =
    opts.streamProcessors ?? (opts.decoderPath !== undefined ? ocicryptStreamProcessors(opts.decoderPath, opts.args, opts.env) : []);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'e2e-containerd-'));
  const logFile = path.join(dir, 'containerd.log');
  const socket = path.join(dir, 'containerd.sock');
  const lookupAddress = opts.processorContainerdAddress ?? socket;
  const processors =
    lookupAddress === false ? streamProcessors : streamProcessors.map((sp) => ({ ...sp, env: [...(sp.env ?? []), `CONTAINERD_ADDRESS=${lookupAddress}`] }));
  const configFile = path.join(dir, 'config.toml');
  let daemon: Daemon | undefined;
  let stopped = false;

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    try {
      if (daemon) await stopDaemon(daemon, 10_000);
    } finally {
      // containerd leaves overlay/bind mounts behind if it is killed mid-unpack.
      await unmountAll(dir);
      await rm(dir, { recursive: true, force: true });
    }
  };

  try {
    await Promise.all(['root', 'state', 'tmp', 'opt', 'cni/bin', 'cni/conf', 'certs.d'].map((p) => mkdir(path.join(dir, p), { recursive: true })));
    for (const host of opts.insecureRegistries ?? []) await writeHostsToml(path.join(dir, 'certs.d'), host);
    // Pulls need no pod network; a loopback-only network config just keeps the CRI plugin from logging an error.
    await writeFile(
      path.join(dir, 'cni', 'conf', '10-loopback.conflist'),
      JSON.stringify({ cniVersion: '0.4.0', name: 'e2e-loopback', plugins: [{ type: 'loopback' }] }),
    );
    const avoid = new Set(opts.avoidPorts ?? []);
    let streamServerPort = 0;
    // The CRI streaming server binds a TCP port at start-up and containerd exits if it is taken (another test
    // process may grab the probed port first): retry with another port.
    for (let attempt = 1; ; attempt++) {
      streamServerPort = await freePort(avoid);
      avoid.add(streamServerPort);
      await writeFile(
        configFile,
        containerdConfigToml({
          version: (await containerdMajorVersion(binary)) >= 2 ? 3 : 2,
          useLocalImagePull: opts.useLocalImagePull,
          dir,
          snapshotter,
          streamServerPort,
          streamProcessors: processors,
          imports: opts.imports ?? [],
          logLevel: opts.logLevel ?? 'info',
        }),
      );
      daemon = startDaemon(binary, ['--config', configFile], {
        logFile,
        env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...opts.daemonEnv },
      });
      try {
        await waitUntil('containerd', () => criAnswers(socket), { timeoutMs: opts.startTimeoutMs ?? 20_000, intervalMs: 100, daemon });
        break;
      } catch (err) {
        const portTaken = daemon.hasExited() && logTail(logFile, 20).includes(`127.0.0.1:${streamServerPort}: bind: address already in use`);
        if (!portTaken || attempt >= 3) throw err;
        await stopDaemon(daemon);
      }
    }
    return {
      binary,
      version: await containerdVersion(binary),
      dir,
      root: path.join(dir, 'root'),
      state: path.join(dir, 'state'),
      socket,
      configFile,
      logFile,
      snapshotter,
      snapshotterRoot: path.join(dir, 'root', `io.containerd.snapshotter.v1.${snapshotter}`),
      streamServerPort,
      logTail: (lines) => logTail(logFile, lines),
      stop,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}
