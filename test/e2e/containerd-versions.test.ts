/**
 * The decoder on every containerd in the field, each a real daemon: the distribution's own (1.6.20 on Debian 12,
 * 1.7.24 on Debian 13), and Debian's 1.7.24 and 2.1.9 packages from ../shared/containerd/ (extracted, never
 * installed). One registry and one KBS serve them all; each containerd starts once per configuration.
 *
 * Each runs its CRI default pull path: 1.x hands the layer descriptor over on fd 3; 2.1.9's transfer service
 * does not, so there the decoder finds the descriptor in containerd's content store (and on 2.1.9 with
 * `use_local_image_pull = true` the payload comes back). A separate `…v1.tar.zstd` processor id never gets a
 * payload on any version. The audit log says which path each layer took, so every case checks the path too.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile, copyFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestKbs, type TestKbs } from '../kbs/server.js';
import { aaRecipient, encryptImage } from '../helpers/encrypt-image.js';
import { buildImage, readImage } from '../helpers/oci-image.js';
import { runDecoder } from '../helpers/run-decoder.js';
import {
  CONTAINERD_BINARY,
  CriImageClient,
  MEDIA_TYPE,
  REPO_ROOT,
  SnapshotInspector,
  blobPath,
  builtDecoderPath,
  chainIdOf,
  containerdVersion,
  copyLayout,
  freePort,
  layerFiles,
  pullExpectingFailure,
  pushOciLayout,
  readLayout,
  removeExtractedContainerd,
  rewriteLayer,
  sharedContainerd,
  startContainerd,
  startRegistry,
  type Containerd,
  type Registry,
  type StreamProcessorSpec,
} from './harness/index.js';

const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'ocicrypt');
const KEYS = path.join(FIXTURES, 'keys');
const PULL_DEADLINE_MS = 60_000;
const TEST_TIMEOUT_MS = 120_000;

interface Target {
  name: string;
  /** The containerd binary, or a ../shared/containerd package. */
  binary?: string;
  shared?: '1.7.24' | '2.1.9';
  useLocalImagePull?: boolean;
  /** The descriptor source the CRI default path gives the gzip/tar processors. */
  defaultPath: 'payload' | 'content-store';
  /** Extra cases run on this target only. */
  extras?: boolean;
}

const TARGETS: Target[] = [
  { name: 'the distribution containerd (CRI passes the payload)', binary: CONTAINERD_BINARY, defaultPath: 'payload' },
  { name: 'containerd 1.7.24 from ../shared (CRI passes the payload)', shared: '1.7.24', defaultPath: 'payload' },
  { name: 'containerd 2.1.9 from ../shared, transfer service (no payload)', shared: '2.1.9', defaultPath: 'content-store', extras: true },
  { name: 'containerd 2.1.9 from ../shared, use_local_image_pull = true', shared: '2.1.9', useLocalImagePull: true, defaultPath: 'payload' },
];

let registry: Registry | undefined;
let kbs: TestKbs | undefined;
let work: string;
let keysDir: string;
let decoder: string;
let distroVersion: string;
/** The plain fixture's files and chain: what the local-key fixture images unpack to. */
let plainFiles: Map<string, Buffer>;
let plainChain: string;
let emptyConfig: string;
let kbsPort: number;

/** Stream processors as users of zstd images often write them: the two payload ids, plus a separate zstd id. */
function processors(env: string[]): StreamProcessorSpec[] {
  const sp = (id: string, accepts: string[], returns: string): StreamProcessorSpec => ({
    id,
    accepts,
    returns,
    path: decoder,
    args: ['--decryption-keys-path', keysDir],
    env,
  });
  return [
    sp('io.containerd.ocicrypt.decoder.v1.tar.gzip', [MEDIA_TYPE.tarGzipEncrypted], MEDIA_TYPE.tarGzip),
    sp('io.containerd.ocicrypt.decoder.v1.tar', [MEDIA_TYPE.tarEncrypted], MEDIA_TYPE.tar),
    sp('io.containerd.ocicrypt.decoder.v1.tar.zstd', [MEDIA_TYPE.tarZstdEncrypted], 'application/vnd.oci.image.layer.v1.tar+zstd'),
  ];
}

interface AuditLine {
  layer: string;
  descriptor?: string;
  result: string;
  error?: string;
}

async function auditLines(file: string): Promise<AuditLine[]> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditLine);
}

/** A 3-layer gzip image, every layer under its own KEK served by the KBS. */
async function aaImage(name: string): Promise<{ dir: string; files: Map<string, Buffer>; chain: string; layers: string[] }> {
  const salt = randomBytes(4).toString('hex');
  const dir = path.join(work, `${name}-${salt}`);
  const contents: Array<Record<string, Buffer>> = [
    { 'etc/aa-motd': Buffer.from(`decrypted inside the TEE (${name} ${salt})\n`) },
    { 'data/aa-blob.bin': randomBytes(300 * 1024) },
    { 'app/config.json': Buffer.from(JSON.stringify({ name, salt })) },
  ];
  const built = await buildImage(dir, { tag: 'latest', layers: contents });
  for (let i = 0; i < contents.length; i++) {
    const enc = await encryptImage(dir, { tag: 'latest', recipients: [aaRecipient(`${name}-${salt}-l${i}`)], layerIndexes: [i] });
    for (const k of enc.keks) kbs!.setResource(k.resourcePath, k.kek);
  }
  const image = await readImage(dir, 'latest');
  const files = new Map<string, Buffer>();
  for (const layer of contents) for (const [p, b] of Object.entries(layer)) files.set(p, b);
  return { dir, files, chain: chainIdOf(built.diffIds), layers: image.manifest.layers.map((l) => l.digest) };
}

beforeAll(async () => {
  decoder = builtDecoderPath();
  work = await mkdtemp(path.join(os.tmpdir(), 'e2e-versions-'));
  keysDir = path.join(work, 'keys');
  emptyConfig = path.join(work, 'empty.toml');
  await writeFile(emptyConfig, '');
  await mkdir(keysDir, { mode: 0o700 });
  await copyFile(path.join(KEYS, 'rsa-priv.pem'), path.join(keysDir, 'rsa-priv.pem'));
  const plain = await readLayout(path.join(FIXTURES, 'plain'));
  const layer = plain.manifest.layers[0]!;
  plainFiles = await layerFiles(await readFile(blobPath(plain.dir, layer.digest)), layer.mediaType);
  plainChain = chainIdOf(plain.config.rootfs.diff_ids);
  distroVersion = await containerdVersion(CONTAINERD_BINARY);
  registry = await startRegistry();
  kbsPort = await freePort(new Set([registry.port]));
  kbs = await startTestKbs({ allowedTees: ['sample'], host: '127.0.0.1', port: kbsPort });
}, 120_000);

afterAll(async () => {
  await Promise.allSettled([kbs?.stop(), registry?.stop()]);
  await removeExtractedContainerd();
  if (work) await rm(work, { recursive: true, force: true });
});

describe.each(TARGETS)('$name', (target) => {
  let containerd: Containerd | undefined;
  let cri: CriImageClient | undefined;
  let snapshots: SnapshotInspector | undefined;
  let ctr = '/usr/bin/ctr';
  let skip: string | undefined;
  let auditFile: string;
  let seq = 0;

  const push = async (dir: string, repo: string): Promise<string> =>
    pushOciLayout(dir, { registry: registry!.host, repo: `${repo}-${++seq}-${target.useLocalImagePull ? 'local' : 'default'}` });

  async function expectFiles(chain: string, want: Map<string, Buffer>, inspector = snapshots!): Promise<void> {
    expect((await inspector.stat(chain))?.kind).toBe('committed');
    const got = await inspector.readFiles(chain, [...want.keys()]);
    for (const [name, bytes] of want) expect(got.get(name)?.equals(bytes), `${name} differs or is missing`).toBe(true);
  }

  async function sourcesOf(digests: readonly string[]): Promise<string[]> {
    const lines = await auditLines(auditFile);
    return digests.map((d) => lines.filter((l) => l.layer === d && l.result === 'ok').map((l) => l.descriptor ?? '?').join('|'));
  }

  beforeAll(async () => {
    let binary = target.binary;
    if (target.shared !== undefined) {
      if (target.shared === distroVersion) {
        skip = `the distribution's containerd is ${distroVersion} already`;
        return;
      }
      const ex = await sharedContainerd(target.shared);
      if (ex === undefined) {
        // A checkout without ../shared (or $COCO_SHARED_DIR) skips these, saying so loudly.
        skip = `no ../shared/containerd with the containerd ${target.shared} package next to this checkout (set COCO_SHARED_DIR)`;
        console.warn(`[versions e2e] SKIPPED ${target.name}: ${skip}`);
        return;
      }
      binary = ex.containerd;
      ctr = ex.ctr;
    }
    const cacheDir = path.join(work, `cache-${target.shared ?? 'distro'}-${target.useLocalImagePull ? 'local' : 'default'}`);
    auditFile = path.join(work, `audit-${path.basename(cacheDir)}.log`);
    const configFile = path.join(work, `config-${path.basename(cacheDir)}.toml`);
    await writeFile(
      configFile,
      [
        '[kbs]',
        `url = ${JSON.stringify(kbs!.url)}`,
        'allow_http = true',
        '[attestation]',
        'tee = "sample"',
        '[cache]',
        `dir = ${JSON.stringify(cacheDir)}`,
        '[log]',
        `file = ${JSON.stringify(auditFile)}`,
        'format = "json"',
        '',
      ].join('\n'),
    );
    containerd = await startContainerd({
      binary,
      insecureRegistries: [registry!.host],
      avoidPorts: new Set([registry!.port, kbsPort]),
      streamProcessors: processors([`COCO_DECODER_CONFIG=${configFile}`]),
      useLocalImagePull: target.useLocalImagePull,
    });
    cri = new CriImageClient(containerd.socket);
    snapshots = new SnapshotInspector(containerd.socket, containerd.snapshotter);
    console.log(`[versions e2e] ${target.name}: containerd ${containerd.version} (${binary})`);
  }, 60_000);

  afterAll(async () => {
    cri?.close();
    snapshots?.close();
    await containerd?.stop();
  });

  it('CRI pull of a local-key (JWE) gzip image: byte for byte, through the expected descriptor path', { timeout: TEST_TIMEOUT_MS }, async (ctx) => {
    if (skip) return ctx.skip(skip);
    const dir = await copyLayout(path.join(FIXTURES, 'enc-jwe-rsa'), path.join(work, `jwe-${++seq}`));
    const layout = await readLayout(dir);
    const ref = await push(dir, 'jwe');
    await cri!.pullImage(ref, { deadlineMs: PULL_DEADLINE_MS });
    await expectFiles(plainChain, plainFiles);
    expect(await sourcesOf([layout.manifest.layers[0]!.digest])).toEqual([target.defaultPath]);
    await cri!.removeImage(ref);
  });

  it('CRI pull of a zstd image through a separate ...v1.tar.zstd processor id (never given a payload)', { timeout: TEST_TIMEOUT_MS }, async (ctx) => {
    if (skip) return ctx.skip(skip);
    const dir = await copyLayout(path.join(FIXTURES, 'enc-zstd'), path.join(work, `zstd-${++seq}`));
    const layout = await readLayout(dir);
    const ref = await push(dir, 'zstd');
    await cri!.pullImage(ref, { deadlineMs: PULL_DEADLINE_MS });
    await expectFiles(plainChain, plainFiles);
    expect(await sourcesOf([layout.manifest.layers[0]!.digest])).toEqual(['content-store']);
    await cri!.removeImage(ref);
  });

  it('CRI pull of a 3-layer attestation-agent image: byte for byte, one attestation', { timeout: TEST_TIMEOUT_MS }, async (ctx) => {
    if (skip) return ctx.skip(skip);
    const img = await aaImage('aa');
    const ref = await push(img.dir, 'aa');
    const before = { ...kbs!.counters };
    await cri!.pullImage(ref, { deadlineMs: PULL_DEADLINE_MS });
    await expectFiles(img.chain, img.files);
    // The token cache of this target's config was warmed by no earlier pull of attestation-agent layers.
    expect(kbs!.counters.attest - before.attest).toBe(1);
    expect(kbs!.counters.resourceOk - before.resourceOk).toBe(3);
    expect(await sourcesOf(img.layers)).toEqual(img.layers.map(() => target.defaultPath));
  });

  it('the packaged drop-in, imported into a main config of this version, adds our processors and replaces nothing else', { timeout: TEST_TIMEOUT_MS }, async (ctx) => {
    if (skip) return ctx.skip(skip);
    const dir = await mkdtemp(path.join(work, 'dropin-'));
    await copyFile(path.join(REPO_ROOT, 'packaging', 'common', 'containerd-dropin.toml'), path.join(dir, 'coco-decoder.toml'));
    const v3 = Number(containerd!.version.split('.')[0]) >= 2;
    const main = v3
      ? ['version = 3', `imports = [${JSON.stringify(path.join(dir, '*.toml'))}]`, "[plugins.'io.containerd.cri.v1.images'.pinned_images]", "  sandbox = 'registry.invalid/pause:kept'", "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]", '  SystemdCgroup = true']
      : ['version = 2', `imports = [${JSON.stringify(path.join(dir, '*.toml'))}]`, '[plugins."io.containerd.grpc.v1.cri"]', '  sandbox_image = "registry.invalid/pause:kept"', '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]', '  SystemdCgroup = true'];
    await writeFile(path.join(dir, 'config.toml'), main.join('\n') + '\n');
    const dump = await new Promise<string>((resolve, reject) => {
      const child = spawn(containerd!.binary, ['--config', path.join(dir, 'config.toml'), 'config', 'dump'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`config dump exited ${code}`))));
    });
    const cfg = parseToml(dump) as { version: number; stream_processors: Record<string, { path: string; accepts: string[] }>; plugins: Record<string, any> };
    expect(cfg.version).toBe(v3 ? 3 : 2);
    expect(cfg.stream_processors['io.containerd.ocicrypt.decoder.v1.tar.gzip']?.path).toBe('/usr/bin/coco-decoder');
    expect(cfg.stream_processors['io.containerd.ocicrypt.decoder.v1.tar.gzip']?.accepts).toContain(MEDIA_TYPE.tarZstdEncrypted);
    expect(cfg.stream_processors['io.containerd.ocicrypt.decoder.v1.tar']?.path).toBe('/usr/bin/coco-decoder');
    if (v3) {
      expect(cfg.plugins['io.containerd.cri.v1.images'].pinned_images.sandbox).toBe('registry.invalid/pause:kept');
      expect(cfg.plugins['io.containerd.cri.v1.runtime'].containerd.runtimes.runc.options.SystemdCgroup).toBe(true);
      expect(cfg.plugins['io.containerd.cri.v1.images'].image_decryption.key_model).toBe('node');
    } else {
      expect(cfg.plugins['io.containerd.grpc.v1.cri'].sandbox_image).toBe('registry.invalid/pause:kept');
      expect(cfg.plugins['io.containerd.grpc.v1.cri'].containerd.runtimes.runc.options.SystemdCgroup).toBe(true);
    }
  });

  // The payload-less path's own cases, on the containerd whose default pull path it is.
  if (target.extras) {
    it('ctr image pull (transfer service, no payload) decrypts into the default namespace', { timeout: TEST_TIMEOUT_MS }, async (ctx) => {
      if (skip) return ctx.skip(skip);
      const img = await aaImage('ctr');
      const ref = await push(img.dir, 'ctr');
      const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
        const child = spawn(
          ctr,
          ['--address', containerd!.socket, '--namespace', 'default', 'image', 'pull', '--hosts-dir', path.join(containerd!.dir, 'certs.d'), '--snapshotter', containerd!.snapshotter, ref],
          { stdio: ['ignore', 'pipe', 'pipe'] },
        );
        let out = '';
        child.stdout.on('data', (c: Buffer) => (out += c.toString()));
        child.stderr.on('data', (c: Buffer) => (out += c.toString()));
        const timer = setTimeout(() => child.kill('SIGKILL'), PULL_DEADLINE_MS);
        child.on('close', (code) => {
          clearTimeout(timer);
          resolve({ code, out });
        });
      });
      expect(r.code, r.out.slice(-2000)).toBe(0);
      const inDefault = new SnapshotInspector(containerd!.socket, containerd!.snapshotter, 'default');
      try {
        await expectFiles(img.chain, img.files, inDefault);
      } finally {
        inDefault.close();
      }
      expect(await sourcesOf(img.layers)).toEqual(img.layers.map(() => 'content-store'));
    });

    it('a tampered layer on the payload-less path fails with an integrity message and commits nothing', { timeout: TEST_TIMEOUT_MS }, async (ctx) => {
      if (skip) return ctx.skip(skip);
      const dir = await copyLayout(path.join(FIXTURES, 'enc-jwe-rsa'), path.join(work, `tampered-${++seq}`));
      const desc = await rewriteLayer(dir, (blob, d) => {
        const b = Buffer.from(blob);
        // Inside the leading bytes the lookup matches on, so that only this blob matches (the fixture's own copy may
        // still be in the content store); the registry serves it under its new digest: only the HMAC can tell.
        b[5]! ^= 0x01;
        return { blob: b, desc: d };
      });
      const ref = await push(dir, 'tampered');
      const err = await pullExpectingFailure(cri!, ref, { deadlineMs: PULL_DEADLINE_MS });
      // Plaintext up to the held-back tail was already out when the HMAC failed at EOF: every containerd version
      // then reports its extraction's own "unexpected EOF" (diff/apply returns the tar error before it asks the
      // processors for theirs). The real cause is in the audit log (and syslog: see the README).
      expect(err.details).toMatch(new RegExp(`coco-decoder: layer ${desc.digest}: .*HMAC|unexpected EOF`));
      expect(await snapshots!.stat(plainChain)).toBeUndefined();
      expect(await snapshots!.committedHolding(['etc/motd'])).toEqual([]);
      const audit = (await auditLines(auditFile)).filter((l) => l.layer === desc.digest);
      expect(audit.map((l) => [l.descriptor, l.result])).toContainEqual(['content-store', 'error']);
      expect(audit.find((l) => l.result === 'error')?.error).toMatch(/does not match its HMAC/);
    });

    it('a layer no manifest lists fails with one line naming what was searched', { timeout: TEST_TIMEOUT_MS }, async (ctx) => {
      if (skip) return ctx.skip(skip);
      const r = await runDecoder({
        binary: decoder,
        args: ['--decryption-keys-path', keysDir],
        env: { PATH: process.env['PATH'], CONTAINERD_ADDRESS: containerd!.socket, COCO_DECODER_CONFIG: emptyConfig },
        descriptor: { mediaType: MEDIA_TYPE.tarGzipEncrypted, digest: '', size: 0, annotations: {} },
        payload: null,
        input: randomBytes(100 * 1024),
        output: 'buffer',
        timeoutMs: 30_000,
      });
      expect(r.code).toBe(1);
      expect(r.stdout?.length).toBe(0);
      const lines = r.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(`no manifest in containerd's content store lists the layer on stdin (searched containerd at ${containerd!.socket} ($CONTAINERD_ADDRESS): namespaces `);
      expect(lines[0]).toMatch(/namespaces [^;]*k8s\.io/);
    });

    it('a stream that starts like a stored layer but is not it is refused before its tail is released', { timeout: TEST_TIMEOUT_MS }, async (ctx) => {
      if (skip) return ctx.skip(skip);
      // A blob containerd holds (pulled above), with one byte changed near its end.
      const dir = path.join(FIXTURES, 'enc-jwe-rsa');
      const layer = (await readLayout(dir)).manifest.layers[0]!;
      const ref = await push(await copyLayout(dir, path.join(work, `kept-${++seq}`)), 'kept');
      await cri!.pullImage(ref, { deadlineMs: PULL_DEADLINE_MS });
      const blob = Buffer.from(await readFile(blobPath(dir, layer.digest)));
      blob[blob.length - 10]! ^= 0x80;
      const r = await runDecoder({
        binary: decoder,
        args: ['--decryption-keys-path', keysDir],
        env: { PATH: process.env['PATH'], CONTAINERD_ADDRESS: containerd!.socket, COCO_DECODER_CONFIG: emptyConfig },
        descriptor: { mediaType: layer.mediaType, digest: '', size: 0, annotations: {} },
        payload: null,
        input: blob,
        output: 'buffer',
        timeoutMs: 30_000,
      });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`is not the blob the content-store lookup matched (${layer.digest}, ${layer.size} bytes); nothing was released`);
      // Everything but the held-back 64 KiB may have gone out; the tail never does.
      expect(r.stdout!.length).toBeLessThanOrEqual(blob.length - 64 * 1024);
      await cri!.removeImage(ref);
    });
  }
});
