/**
 * The package as an admin gets it: dist/coco-decoder_<version>_amd64.deb (built by build/package.mjs if stale)
 * is installed with `dpkg -i` into the REAL root of this machine, and a real containerd 1.6 whose only stream
 * processors come from importing the installed drop-in (/etc/containerd/conf.d/coco-decoder.toml) pulls
 * encrypted images through CRI:
 *   - with a local key in /etc/containerd/ocicrypt/keys (the drop-in's --decryption-keys-path), and
 *   - with attestation, to a test KBS named in /etc/coco-decoder/config.toml (the drop-in's COCO_DECODER_CONFIG).
 * Then `dpkg --purge` must remove it all. Nothing here points containerd at dist/: what runs is /usr/bin/coco-decoder.
 *
 * Root and a throwaway machine (CI) are assumed. The test refuses to run if coco-decoder is already installed by
 * anything but an earlier run of this test, and undoes every change to /etc (see installed-package-host.ts).
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseToml } from 'smol-toml';
import { startTestKbs, type TestKbs } from '../kbs/server.js';
import { aaRecipient, encryptImage } from '../helpers/encrypt-image.js';
import { buildImage, readImage } from '../helpers/oci-image.js';
import {
  REPO_ROOT,
  blobPath,
  chainIdOf,
  copyLayout,
  freePort,
  layerFiles,
  readLayout,
  startStack,
  stopStack,
  type Stack,
  printDiagnosticsOnFailure,
} from './harness/index.js';
import {
  HostChanges,
  INSTALLED,
  PACKAGE,
  debMd5sums,
  ensureDeb,
  mustRun,
  packageStatus,
  packageVersion,
  runTool,
  type ToolResult,
} from './installed-package-host.js';

const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'ocicrypt');
const KEYS = path.join(FIXTURES, 'keys');
const FILES = ['etc/motd', 'data/blob.bin'] as const;
const GZIP_PROCESSOR = 'io.containerd.ocicrypt.decoder.v1.tar.gzip';
const TAR_PROCESSOR = 'io.containerd.ocicrypt.decoder.v1.tar';
const PULL_DEADLINE_MS = 60_000;
const TEST_TIMEOUT_MS = 120_000;
/** Packaging (~40 s: package.mjs builds the rpm too), dpkg (lock wait included) and containerd, each bounded. */
const PACKAGE_TIMEOUT_MS = 180_000;
const SETUP_TIMEOUT_MS = 300_000;

let work = '';
let host: HostChanges | undefined;
let stack: Stack | undefined;
let kbs: TestKbs | undefined;
let deb = '';
let version = '';
let install: ToolResult | undefined;
/** The shipped /etc/coco-decoder/config.toml, while a test has replaced it. */
let configBackup: Buffer | undefined;
/** Paths that did not exist before the install: after the purge they must be gone again. */
let absentBefore: string[] = [];
/** The keys directory before the test (its inode and listing), to check it comes back untouched. */
let keysBefore: string | undefined;
let pulled: string[] = [];
const keks: Buffer[] = [];
const timings: Record<string, number> = {};
/** beforeAll's work, awaited by afterAll so that a timed-out setup never races the clean-up. */
let setup: Promise<void> = Promise.resolve();

function s(): Stack {
  if (!stack) throw new Error('stack not started');
  return stack;
}

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  );
}

/** Identity and contents of a directory tree (inode, mode, size per entry), or 'absent'. */
async function describeTree(dir: string): Promise<string> {
  if (!(await exists(dir))) return 'absent';
  const lines: string[] = [];
  const walk = async (d: string): Promise<void> => {
    const st = await lstat(d);
    lines.push(`${path.relative(dir, d) || '.'} ino=${st.ino} mode=${st.mode.toString(8)} size=${st.isDirectory() ? '-' : st.size}`);
    if (st.isDirectory()) for (const n of (await readdir(d)).sort()) await walk(path.join(d, n));
  };
  await walk(dir);
  return lines.join('\n');
}

const timed = async <T>(name: string, f: () => Promise<T>): Promise<T> => {
  const t0 = performance.now();
  try {
    return await f();
  } finally {
    timings[name] = Math.round(performance.now() - t0);
  }
};

/** The decoder's line inside containerd's error, and that it is one line (containerd appends only ": unknown"). */
function decoderLine(details: string): string {
  const at = details.indexOf('coco-decoder: ');
  expect(at, `no coco-decoder message in: ${details}`).toBeGreaterThanOrEqual(0);
  const [line, rest = ''] = details.slice(at).split('\n');
  expect(rest).toMatch(/^(: unknown)?$/);
  return line!;
}

async function expectSnapshotFiles(ref: string, chainId: string, want: ReadonlyMap<string, Buffer>): Promise<void> {
  expect(await s().cri.chainId(ref)).toBe(chainId);
  expect((await s().snapshots.stat(chainId))?.kind).toBe('committed');
  const got = await s().snapshots.readFiles(chainId, [...want.keys()]);
  for (const [name, bytes] of want) {
    const actual = got.get(name);
    expect(actual, `${name} missing from the snapshot`).toBeDefined();
    expect(actual!.equals(bytes), `${name} differs from the plain image`).toBe(true);
  }
}

async function pull(ref: string, chainId: string): Promise<number> {
  // An existing snapshot would make containerd skip the unpack: the decoder would never run.
  expect(await s().snapshots.stat(chainId), 'snapshot left over: containerd would not unpack').toBeUndefined();
  pulled.push(ref);
  const t0 = performance.now();
  await s().cri.pullImage(ref, { deadlineMs: PULL_DEADLINE_MS });
  return Math.round(performance.now() - t0);
}

/** The plain fixture image's files and chain ID: what every fixture image must unpack to. */
async function plainFixture(): Promise<{ files: Map<string, Buffer>; chainId: string }> {
  const plain = await readLayout(path.join(FIXTURES, 'plain'));
  const layer = plain.manifest.layers[0]!;
  const all = await layerFiles(await readFile(blobPath(plain.dir, layer.digest)), layer.mediaType);
  const files = new Map(FILES.map((f) => [f, all.get(f)!] as const));
  for (const [f, b] of files) expect(b, `plain fixture lacks ${f}`).toBeDefined();
  return { files, chainId: chainIdOf(plain.config.rootfs.diff_ids) };
}

async function startKbs(resources: Record<string, Buffer>): Promise<TestKbs> {
  const avoid = new Set([s().registry.port, s().containerd.streamServerPort]);
  for (let attempt = 1; ; attempt++) {
    const port = await freePort(avoid);
    try {
      return await startTestKbs({ allowedTees: ['sample'], host: '127.0.0.1', port, resources });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 3) throw err;
      avoid.add(port);
    }
  }
}

/** Writes the installed config file in place (keeping its 0640), saving the shipped one first. */
async function writeInstalledConfig(text: string): Promise<void> {
  configBackup ??= await readFile(INSTALLED.config);
  await writeFile(INSTALLED.config, text);
}

async function restoreInstalledConfig(): Promise<void> {
  if (configBackup === undefined) return;
  await writeFile(INSTALLED.config, configBackup);
  configBackup = undefined;
}

beforeAll(() => {
  setup = (async () => {
    version = await packageVersion();
    work = await mkdtemp(path.join(os.tmpdir(), 'e2e-installed-package-'));
    const built = await timed('package', () => ensureDeb({ timeoutMs: PACKAGE_TIMEOUT_MS }));
    deb = built.deb;
    if (built.rebuilt) console.log(`[installed-package] rebuilt ${path.basename(deb)} (was ${built.rebuilt})`);

    const began = await HostChanges.begin();
    host = began.host;
    for (const r of began.recovered) console.warn(`[installed-package] ${r}`);
    const watched = ['/etc/containerd', INSTALLED.dropinDir, path.dirname(INSTALLED.keysDir), INSTALLED.configDir, path.dirname(INSTALLED.addon), INSTALLED.docDir];
    absentBefore = [];
    for (const p of watched) if (!(await exists(p))) absentBefore.push(p);
    keysBefore = await describeTree(INSTALLED.keysDir);

    install = await timed('dpkg -i', () => host!.install(deb));
    if (install.status !== 0) throw new Error(`dpkg -i ${deb} failed:\n${install.stdout}${install.stderr}`);
    await host.useKeys([path.join(KEYS, 'rsa-priv.pem')]);
    // No stream processors of our own: the imported drop-in is containerd's only source for them.
    stack = await timed('stack start', () => startStack({ imports: [INSTALLED.dropin] }));
  })();
  return setup;
}, SETUP_TIMEOUT_MS);

afterAll(async () => {
  await setup.catch(() => undefined);
  const problems: string[] = [];
  try {
    await kbs?.stop().catch((e: unknown) => problems.push(`KBS stop: ${String(e)}`));
    await stopStack(stack).catch((e: unknown) => problems.push(`stack stop: ${String(e)}`));
    await restoreInstalledConfig().catch((e: unknown) => problems.push(`config restore: ${String(e)}`));
    if (host) problems.push(...(await host.undo()));
  } finally {
    for (const k of keks) k.fill(0);
    if (work) await rm(work, { recursive: true, force: true });
  }
  console.log(`[installed-package] timings (ms): ${JSON.stringify(timings)}`);
  if (problems.length > 0) throw new Error(`clean-up of the real root incomplete:\n${problems.join('\n')}`);
}, 180_000);

printDiagnosticsOnFailure(() => stack);

afterEach(async () => {
  for (const ref of pulled) await stack?.cri.removeImage(ref).catch(() => undefined);
  pulled = [];
});

describe(`the ${PACKAGE} .deb installed with dpkg into the real root`, () => {
  it('installs the executable, config, drop-in and token cache dir, intact, without touching containerd', { timeout: TEST_TIMEOUT_MS }, async () => {
    expect(install?.status).toBe(0);
    expect(install!.stdout + install!.stderr).toMatch(/containerd was NOT restarted/);
    expect(await packageStatus()).toBe('install ok installed');

    const listed = (await mustRun('dpkg', ['-L', PACKAGE])).trim().split('\n');
    for (const f of [INSTALLED.exe, INSTALLED.config, INSTALLED.dropin, INSTALLED.tmpfiles, INSTALLED.man, `${INSTALLED.docDir}/copyright`]) {
      expect(listed, `dpkg -L lacks ${f}`).toContain(f);
    }
    for (const f of listed.filter((p) => p !== '/.')) expect(await exists(f), `${f} listed by dpkg -L but absent`).toBe(true);
    // Every installed file has the md5 the package records (nothing stripped or altered on the way).
    expect(await mustRun('dpkg', ['--verify', PACKAGE])).toBe('');
    const sums = await debMd5sums(deb);
    expect(sums.get('usr/bin/coco-decoder')).toMatch(/^[0-9a-f]{32}$/);
    const conffiles = await mustRun('dpkg-query', ['-W', '-f=${Conffiles}', PACKAGE]);
    expect(conffiles).toContain(` ${INSTALLED.config} `);
    expect(conffiles).toContain(` ${INSTALLED.dropin} `);

    expect((await stat(INSTALLED.exe)).mode & 0o7777).toBe(0o755);
    expect((await stat(INSTALLED.config)).mode & 0o7777).toBe(0o640);
    const v = await runTool(INSTALLED.exe, ['--version'], { cwd: '/', env: { PATH: '/nonexistent' }, timeoutMs: 30_000 });
    expect(v.status, v.stderr).toBe(0);
    expect(v.stdout).toContain(version);

    // postinst applies the tmpfiles.d snippet with systemd-tmpfiles (present on Debian even where systemd is not
    // PID 1, as here). Without it the decoder creates its cache dir itself: the attestation test checks that.
    if ((await runTool('sh', ['-c', 'command -v systemd-tmpfiles'])).status === 0) {
      const run = await lstat(INSTALLED.runDir);
      expect(run.isDirectory()).toBe(true);
      expect((run.mode & 0o7777).toString(8)).toBe('700');
      expect([run.uid, run.gid]).toEqual([0, 0]);
    } else {
      console.warn('[installed-package] no systemd-tmpfiles: /run/coco-decoder is left to the decoder');
    }
  });

  it('containerd importing the installed drop-in runs /usr/bin/coco-decoder for all encrypted media types', { timeout: TEST_TIMEOUT_MS }, async () => {
    // containerd's own view of the merged configuration (our generated main config + the imported drop-in).
    const dump = parseToml(await mustRun('containerd', ['--config', s().containerd.configFile, 'config', 'dump'], { timeoutMs: 60_000 })) as {
      stream_processors?: Record<string, { path: string; accepts: string[]; args: string[]; env: string[] }>;
      plugins: Record<string, Record<string, any>>;
    };
    // Our generated main config declares none, so these can only come from the import.
    expect(await readFile(s().containerd.configFile, 'utf8')).not.toContain('stream_processors');
    const sp = dump.stream_processors ?? {};
    expect(Object.keys(sp).sort()).toEqual([GZIP_PROCESSOR, TAR_PROCESSOR].sort());
    for (const id of [GZIP_PROCESSOR, TAR_PROCESSOR]) {
      expect(sp[id]!.path, id).toBe(INSTALLED.exe);
      expect(sp[id]!.args).toEqual(['--decryption-keys-path', INSTALLED.keysDir]);
      expect(sp[id]!.env).toContain(`COCO_DECODER_CONFIG=${INSTALLED.config}`);
    }
    expect([...sp[GZIP_PROCESSOR]!.accepts, ...sp[TAR_PROCESSOR]!.accepts].sort()).toEqual([
      'application/vnd.oci.image.layer.v1.tar+encrypted',
      'application/vnd.oci.image.layer.v1.tar+gzip+encrypted',
      'application/vnd.oci.image.layer.v1.tar+zstd+encrypted',
    ]);
    // The import left the main config's CRI section alone (a CRI table in a 1.6 import would replace it).
    const cri = dump.plugins['io.containerd.grpc.v1.cri']!;
    expect(cri.image_decryption.key_model).toBe('node');
    expect(cri.containerd.snapshotter).toBe(s().containerd.snapshotter);
  });

  it('decrypts a JWE-wrapped image with the key in /etc/containerd/ocicrypt/keys and the shipped config', { timeout: TEST_TIMEOUT_MS }, async () => {
    const plain = await plainFixture();
    await host!.useKeys([path.join(KEYS, 'rsa-priv.pem')]);
    const dir = await copyLayout(path.join(FIXTURES, 'enc-jwe-rsa'), path.join(work, 'enc-jwe-rsa'));
    expect((await readLayout(dir)).manifest.layers[0]!.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+gzip+encrypted');
    const ref = await s().push(dir, 'installed-enc-jwe-rsa');
    timings['local-key pull'] = await pull(ref, plain.chainId);
    await expectSnapshotFiles(ref, plain.chainId, plain.files);
    expect(plain.files.get('etc/motd')!.toString()).toBe('decrypted inside the TEE\n');
  });

  it('fails with the installed decoder\'s one-line error when no key in /etc/containerd/ocicrypt/keys fits', { timeout: TEST_TIMEOUT_MS }, async () => {
    const plain = await plainFixture();
    await host!.useKeys([path.join(KEYS, 'ec-priv.pem')]); // the image is wrapped for the RSA key only
    try {
      const dir = await copyLayout(path.join(FIXTURES, 'enc-jwe-rsa'), path.join(work, 'wrong-key'));
      const layerDigest = (await readLayout(dir)).manifest.layers[0]!.digest;
      const ref = await s().push(dir, 'installed-wrong-key');
      expect(await s().snapshots.stat(plain.chainId)).toBeUndefined();
      pulled.push(ref);
      const err = await s().pullExpectingFailure(ref, { deadlineMs: PULL_DEADLINE_MS });
      // containerd has no processor but the drop-in's /usr/bin/coco-decoder (see the config dump test), and the
      // failure is that program's own message about this layer.
      expect(decoderLine(err.details)).toContain(`coco-decoder: layer ${layerDigest}: `);
      expect(await s().snapshots.stat(plain.chainId)).toBeUndefined();
    } finally {
      await host!.useKeys([path.join(KEYS, 'rsa-priv.pem')]);
    }
  });

  it('attests once to the KBS set in /etc/coco-decoder/config.toml and decrypts a 3-layer image', { timeout: TEST_TIMEOUT_MS }, async () => {
    // Uncompressed layers: these take the drop-in's other processor (…tar+encrypted → .tar), the JWE image the gzip one.
    const salt = randomBytes(4).toString('hex');
    const dir = path.join(work, `aa-${salt}`);
    const contents: Array<Record<string, Buffer>> = [
      { 'etc/motd': Buffer.from(`decrypted inside the TEE (installed package, ${salt})\n`) },
      { 'app/bin.dat': randomBytes(256 * 1024) },
      { 'app/config.json': Buffer.from(JSON.stringify({ salt, layers: 3 })) },
    ];
    const built = await buildImage(dir, { tag: 'latest', layers: contents, compression: 'none' });
    const resources: Record<string, Buffer> = {};
    for (let i = 0; i < contents.length; i++) {
      const enc = await encryptImage(dir, { tag: 'latest', recipients: [aaRecipient(`installed-${salt}-l${i}`)], layerIndexes: [i] });
      for (const k of enc.keks) {
        keks.push(k.kek);
        resources[k.resourcePath] = k.kek;
      }
    }
    const image = await readImage(dir, 'latest');
    expect(image.manifest.layers.map((l) => l.mediaType)).toEqual(Array(3).fill('application/vnd.oci.image.layer.v1.tar+encrypted'));

    kbs = await startKbs(resources);
    const cacheDir = path.join(work, 'token-cache'); // does not exist: the decoder must create it, 0700
    await writeInstalledConfig(
      [
        '# written by test/e2e/installed-package.test.ts',
        '[kbs]',
        `url = ${JSON.stringify(kbs.url)}`,
        'allow_http = true',
        '[attestation]',
        'tee = "sample"',
        '[cache]',
        `dir = ${JSON.stringify(cacheDir)}`,
        '',
      ].join('\n'),
    );
    expect((await stat(INSTALLED.config)).mode & 0o7777).toBe(0o640);

    const ref = await s().push(dir, `installed-aa-${salt}`);
    const chainId = chainIdOf(built.diffIds);
    timings['attestation pull'] = await pull(ref, chainId);
    const files = new Map(contents.flatMap((layer) => Object.entries(layer)));
    await expectSnapshotFiles(ref, chainId, files);
    expect(kbs.counters).toEqual({ auth: 1, attest: 1, attestOk: 1, resource: 3, resourceOk: 3 });

    const cache = await lstat(cacheDir);
    expect(cache.isDirectory()).toBe(true);
    expect((cache.mode & 0o7777).toString(8)).toBe('700');
    for (const n of await readdir(cacheDir)) {
      const f = await lstat(path.join(cacheDir, n));
      expect(f.isFile(), n).toBe(true);
      expect((f.mode & 0o777).toString(8), n).toBe('600');
      const bytes = await readFile(path.join(cacheDir, n));
      for (const k of keks) expect(bytes.includes(k) || bytes.includes(Buffer.from(k.toString('base64'))), `${n} holds a KEK`).toBe(false);
    }
  });

  it('dpkg --purge removes the executable, the drop-in, the config and the token cache dir; /etc is as before', { timeout: TEST_TIMEOUT_MS }, async () => {
    await kbs?.stop();
    kbs = undefined;
    await stopStack(stack);
    stack = undefined;
    // The conffile goes back byte for byte: dpkg then sees no local modification.
    await restoreInstalledConfig();
    expect(await mustRun('dpkg', ['--verify', PACKAGE])).toBe('');
    expect(await host!.restoreKeys()).toEqual([]);
    expect(await describeTree(INSTALLED.keysDir)).toBe(keysBefore);

    const purge = await timed('dpkg --purge', () => host!.purge());
    expect(purge, 'this test did not install the package?').toBeDefined();
    expect(purge!.status, purge!.stdout + purge!.stderr).toBe(0);
    expect(await packageStatus()).toBeUndefined();
    for (const p of [INSTALLED.exe, INSTALLED.dropin, INSTALLED.config, INSTALLED.configDir, INSTALLED.tmpfiles, INSTALLED.addon, INSTALLED.runDir]) {
      expect(await exists(p), `${p} survived the purge`).toBe(false);
    }
    for (const p of absentBefore) expect(await exists(p), `${p} did not exist before the test`).toBe(false);
  });
});
