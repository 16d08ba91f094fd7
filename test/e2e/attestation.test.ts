/**
 * End to end with attestation: images whose layers are wrapped for the CoCo `attestation-agent` key provider
 * (each layer under its own KEK, `kbs:///default/image-kek/<name>`) are pushed with skopeo to a real
 * docker-registry and pulled through CRI by a real containerd 1.6 running dist/coco-decoder as its stream
 * processor. The decoder attests in-process (sample TEE) to the test KBS running in this vitest process, over
 * plain HTTP on 127.0.0.1, and fetches the KEKs. What lands in containerd's snapshots must be byte for byte what
 * was built; the KBS must see exactly one attestation per pull (the cross-process token cache); failures
 * (KBS down, policy denial) must surface as the decoder's one-line message within a bounded time; an expired
 * token must be replaced by exactly one transparent re-attestation; the token cache must never hold a KEK.
 */
import { spawnSync } from 'node:child_process';
import { createDecipheriv, randomBytes } from 'node:crypto';
import { lstat, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestKbs, type TestKbs, type TestKbsCounters, type TestKbsOptions } from '../kbs/server.js';
import { aaRecipient, encryptImage, type KbsKek } from '../helpers/encrypt-image.js';
import { buildImage, readImage } from '../helpers/oci-image.js';
import { runDecoder } from '../helpers/run-decoder.js';
import { builtDecoderPath, chainIdOf, freePort, printDiagnosticsOnFailure, startStack, stopStack, type Stack } from './harness/index.js';

const CONFIG_ENV = 'COCO_DECODER_CONFIG';
const PULL_DEADLINE_MS = 60_000;
const TEST_TIMEOUT_MS = 120_000;
/** The KBS-down pull must fail well within this (the decoder's own budget is 2 s per request, 5 s in total). */
const KBS_DOWN_BOUND_MS = 30_000;

interface EncryptedTestLayer {
  /** Digest of the encrypted blob (what the decoder names in its errors). */
  digest: string;
  kid: string;
  resourcePath: string;
  kek: Buffer;
}

interface TestImage {
  name: string;
  dir: string;
  layers: EncryptedTestLayer[];
  /** Every regular file of the image (no path repeats across layers) → its exact bytes. */
  files: Map<string, Buffer>;
  diffIds: string[];
  chainId: string;
  /** `repo/type/tag` → KEK, for the test KBS. */
  kbsResources: Record<string, Buffer>;
}

let stack: Stack | undefined;
let work: string;
/** The file named by COCO_DECODER_CONFIG in the stream processors' environment; rewritten by each test. */
let configFile: string;
let cacheSeq = 0;
/** Servers and images started/pulled by the current test, cleaned up after it. */
let kbsServers: TestKbs[] = [];
let pulled: string[] = [];
/** Every KEK any test handed to a KBS: none may ever show up in the cache dirs or containerd's log. */
const allKeks: Buffer[] = [];

function s(): Stack {
  if (!stack) throw new Error('stack not started');
  return stack;
}

/** A test KBS on a free port of the E2E range (never the registry's or containerd's streaming port). */
async function startKbs(opts: TestKbsOptions = {}): Promise<TestKbs> {
  const avoid = new Set([s().registry.port, s().containerd.streamServerPort]);
  for (let attempt = 1; ; attempt++) {
    const port = await freePort(avoid);
    try {
      const kbs = await startTestKbs({ allowedTees: ['sample'], host: '127.0.0.1', ...opts, port });
      kbsServers.push(kbs);
      return kbs;
    } catch (err) {
      // Another process may take the probed port before we bind it.
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 3) throw err;
      avoid.add(port);
    }
  }
}

/** A cache dir path that does not exist yet: the decoder itself must create it (0700). */
function freshCacheDir(): string {
  return path.join(work, `cache-${++cacheSeq}`);
}

async function writeDecoderConfig(c: { kbsUrl: string; cacheDir: string; timeoutMs?: number; totalTimeoutMs?: number; extra?: string[] }): Promise<void> {
  const q = (v: string): string => JSON.stringify(v); // a JSON string is a valid TOML basic string
  await writeFile(
    configFile,
    [
      '[kbs]',
      `url = ${q(c.kbsUrl)}`,
      'allow_http = true',
      `timeout_ms = ${c.timeoutMs ?? 10_000}`,
      `total_timeout_ms = ${c.totalTimeoutMs ?? 30_000}`,
      '[attestation]',
      'tee = "sample"',
      '[cache]',
      `dir = ${q(c.cacheDir)}`,
      ...(c.extra ?? []),
      '',
    ].join('\n'),
  );
}

/** What each layer of a test image holds; `salt` makes every image's diff IDs (and snapshots) its own. */
function layerContents(name: string, salt: string, count: number, largeBytes: number): Array<Record<string, Buffer>> {
  const all: Array<Record<string, Buffer>> = [
    { 'etc/motd': Buffer.from(`decrypted inside the TEE (${name})\n`) },
    { 'app/bin.dat': randomBytes(64 * 1024) },
    { 'data/large.bin': randomBytes(largeBytes) },
    { 'app/config.json': Buffer.from(JSON.stringify({ image: name, salt, layers: count }, null, 2)) },
    { 'usr/share/doc/e2e/README': Buffer.from('five layers, five KEKs, one attestation\n'.repeat(200)), 'var/lib/e2e/empty': Buffer.alloc(0) },
    { 'opt/e2e/deep/nested/dir/leaf.txt': Buffer.from(`leaf of ${name}\n`) },
  ];
  if (count > all.length) throw new Error(`at most ${all.length} layers`);
  return all.slice(0, count).map((files, i) => ({ ...files, [`e2e/layer-${i}.id`]: Buffer.from(`${name} ${salt} ${i}\n`) }));
}

/**
 * Builds a gzip image and encrypts every layer for the attestation-agent provider, each under its own fresh KEK
 * (kid `kbs:///default/image-kek/<name>-<salt>-l<i>`), tagged `latest` in an OCI layout under the work dir.
 */
async function makeEncryptedImage(name: string, opts: { layers: number; largeBytes?: number }): Promise<TestImage> {
  const salt = randomBytes(4).toString('hex');
  const dir = path.join(work, `${name}-${salt}`);
  const contents = layerContents(name, salt, opts.layers, opts.largeBytes ?? 256 * 1024);
  const built = await buildImage(dir, { tag: 'latest', layers: contents });
  const keks: KbsKek[] = [];
  for (let i = 0; i < contents.length; i++) {
    const enc = await encryptImage(dir, { tag: 'latest', recipients: [aaRecipient(`${name}-${salt}-l${i}`)], layerIndexes: [i] });
    expect(enc.keks).toHaveLength(1);
    keks.push(enc.keks[0]!);
  }
  const image = await readImage(dir, 'latest');
  const layers = image.manifest.layers.map((desc, i) => {
    expect(desc.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+gzip+encrypted');
    const packets = (desc.annotations?.['org.opencontainers.image.enc.keys.provider.attestation-agent'] ?? '').split(',');
    expect(packets).toHaveLength(1);
    const kid = (JSON.parse(Buffer.from(packets[0]!, 'base64').toString()) as { kid: string }).kid;
    const kek = keks[i]!;
    expect(kid).toBe(kek.kid);
    return { digest: desc.digest, kid, resourcePath: kek.resourcePath, kek: kek.kek };
  });
  const files = new Map<string, Buffer>();
  for (const layer of contents) {
    for (const [p, bytes] of Object.entries(layer)) {
      expect(files.has(p), `${p} in two layers`).toBe(false);
      files.set(p, bytes);
    }
  }
  allKeks.push(...layers.map((l) => l.kek));
  return {
    name,
    dir,
    layers,
    files,
    diffIds: built.diffIds,
    chainId: chainIdOf(built.diffIds),
    kbsResources: Object.fromEntries(layers.map((l) => [l.resourcePath, l.kek])),
  };
}

/** Chain ID of the image's first `n` layers: the snapshot containerd commits after unpacking layer n-1. */
function chainAfter(img: TestImage, n: number): string {
  return chainIdOf(img.diffIds.slice(0, n));
}

async function push(img: TestImage): Promise<string> {
  return s().push(img.dir, path.basename(img.dir));
}

/** Pulls through CRI (the snapshot must not exist yet, or the decoder would never run) and returns the time taken. */
async function pull(img: TestImage, ref: string): Promise<number> {
  expect(await s().snapshots.stat(img.chainId), 'snapshot left over: containerd would not unpack').toBeUndefined();
  pulled.push(ref);
  const t0 = performance.now();
  await s().cri.pullImage(ref, { deadlineMs: PULL_DEADLINE_MS });
  return performance.now() - t0;
}

async function expectUnpacked(img: TestImage, ref: string): Promise<void> {
  expect(await s().cri.chainId(ref)).toBe(img.chainId);
  expect((await s().snapshots.stat(img.chainId))?.kind).toBe('committed');
  const got = await s().snapshots.readFiles(img.chainId, [...img.files.keys()]);
  for (const [name, want] of img.files) {
    const actual = got.get(name);
    expect(actual, `${name} missing from the snapshot`).toBeDefined();
    expect(actual!.length, `${name} size`).toBe(want.length);
    expect(actual!.equals(want), `${name} differs from what was built`).toBe(true);
  }
}

/** The forms a KEK could be written in by mistake. */
function kekForms(kek: Buffer): Buffer[] {
  return [kek, Buffer.from(kek.toString('base64')), Buffer.from(kek.toString('base64url')), Buffer.from(kek.toString('hex'))];
}

function holdsAnyKek(bytes: Buffer): boolean {
  return allKeks.some((k) => kekForms(k).some((form) => bytes.includes(form)));
}

/** Every entry of the cache dir: mode 0700 dir, only regular 0600 files (token + its key), none holding a KEK. */
async function expectSafeCacheDir(dir: string): Promise<string[]> {
  const st = await lstat(dir);
  expect(st.isDirectory()).toBe(true);
  expect((st.mode & 0o777).toString(8)).toBe('700');
  const names = await readdir(dir);
  expect(names.length, 'the token cache is empty: nothing to check').toBeGreaterThan(0);
  for (const n of names) {
    const p = path.join(dir, n);
    const f = await lstat(p);
    expect(f.isFile(), `${n} is not a regular file`).toBe(true);
    expect((f.mode & 0o777).toString(8), `${n} mode`).toBe('600');
    expect(holdsAnyKek(await readFile(p)), `${n} holds a KEK`).toBe(false);
  }
  return names;
}

function countersOf(kbs: TestKbs): TestKbsCounters {
  return { ...kbs.counters };
}

function delta(after: TestKbsCounters, before: TestKbsCounters): TestKbsCounters {
  return {
    auth: after.auth - before.auth,
    attest: after.attest - before.attest,
    attestOk: after.attestOk - before.attestOk,
    resource: after.resource - before.resource,
    resourceOk: after.resourceOk - before.resourceOk,
  };
}

/** The decoder's line inside containerd's error, and that it is one line (containerd appends only ": unknown"). */
function decoderLine(details: string): string {
  const at = details.indexOf('coco-decoder: ');
  expect(at, `no coco-decoder message in: ${details}`).toBeGreaterThanOrEqual(0);
  const [line, rest = ''] = details.slice(at).split('\n');
  expect(rest).toMatch(/^(: unknown)?$/);
  return line!;
}

const escapeRe = (t: string): string => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

beforeAll(async () => {
  const decoder = builtDecoderPath();
  work = await mkdtemp(path.join(os.tmpdir(), 'e2e-attestation-'));
  configFile = path.join(work, 'coco-decoder.toml');
  stack = await startStack({ decoderPath: decoder, env: [`${CONFIG_ENV}=${configFile}`] });
}, 60_000);

afterAll(async () => {
  try {
    await Promise.allSettled(kbsServers.map((k) => k.stop()));
    await stopStack(stack);
  } finally {
    for (const k of allKeks) k.fill(0);
    if (work) await rm(work, { recursive: true, force: true });
  }
});

printDiagnosticsOnFailure(() => stack);

afterEach(async () => {
  for (const ref of pulled) await stack?.cri.removeImage(ref).catch(() => undefined);
  pulled = [];
  await Promise.allSettled(kbsServers.map((k) => k.stop()));
  kbsServers = [];
});

describe('CRI pull of attestation-agent images through containerd 1.6, coco-decoder and a KBS', () => {
  it('decrypts a 6-layer image (one KEK per layer) byte for byte with exactly one attestation', { timeout: TEST_TIMEOUT_MS }, async () => {
    const img = await makeEncryptedImage('multi', { layers: 6, largeBytes: 4 * 1024 * 1024 });
    const kbs = await startKbs({ resources: img.kbsResources });
    const cacheDir = freshCacheDir();
    await writeDecoderConfig({ kbsUrl: kbs.url, cacheDir });
    const ref = await push(img);

    const ms = await pull(img, ref);
    await expectUnpacked(img, ref);
    // Whether containerd unpacks the layers one by one or at once, the token cache makes it one attestation.
    expect(countersOf(kbs)).toEqual({ auth: 1, attest: 1, attestOk: 1, resource: img.layers.length, resourceOk: img.layers.length });

    const cacheFiles = await expectSafeCacheDir(cacheDir);
    expect(holdsAnyKek(await readFile(s().containerd.logFile)), 'containerd log holds a KEK').toBe(false);
    console.log(
      `[attestation e2e] ${img.layers.length}-layer pull: ${ms.toFixed(0)} ms, KBS counters ${JSON.stringify(kbs.counters)}, ` +
        `cache files ${cacheFiles.join(', ')}`,
    );
  });

  it('attests once for two images pulled at the same time with a cold cache (cross-process single flight)', { timeout: TEST_TIMEOUT_MS }, async () => {
    // containerd 1.6 applies one image's layers in order, but the kubelet pulls a pod's images in parallel: two
    // decoders then need a token at the same moment. A slow KBS keeps the first attestation in flight meanwhile.
    const imgs = await Promise.all([makeEncryptedImage('para-a', { layers: 3 }), makeEncryptedImage('para-b', { layers: 3 })]);
    const kbs = await startKbs({ resources: Object.assign({}, ...imgs.map((i) => i.kbsResources)) as Record<string, Buffer> });
    kbs.faults.delayMs = 300;
    const cacheDir = freshCacheDir();
    await writeDecoderConfig({ kbsUrl: kbs.url, cacheDir });
    const refs = await Promise.all(imgs.map((i) => push(i)));

    const ms = await Promise.all(imgs.map((img, k) => pull(img, refs[k]!)));
    for (const [k, img] of imgs.entries()) await expectUnpacked(img, refs[k]!);
    const layers = imgs.reduce((n, i) => n + i.layers.length, 0);
    expect(countersOf(kbs)).toMatchObject({ auth: 1, attest: 1, attestOk: 1, resourceOk: layers });
    await expectSafeCacheDir(cacheDir);
    console.log(`[attestation e2e] two concurrent pulls: ${ms.map((m) => m.toFixed(0)).join(' ms, ')} ms, KBS counters ${JSON.stringify(kbs.counters)}`);
  });

  it('re-attests exactly once, transparently, when the cached token has expired at the KBS', { timeout: TEST_TIMEOUT_MS }, async () => {
    const img = await makeEncryptedImage('expiry', { layers: 5 });
    const kbs = await startKbs({ resources: img.kbsResources });
    const cacheDir = freshCacheDir();
    await writeDecoderConfig({ kbsUrl: kbs.url, cacheDir });
    const ref = await push(img);

    const firstMs = await pull(img, ref);
    await expectUnpacked(img, ref);
    const afterFirst = countersOf(kbs);
    expect(afterFirst).toMatchObject({ attest: 1, attestOk: 1, resourceOk: img.layers.length });

    // Remove the image: CRI deletes synchronously and containerd's GC takes every one of its snapshots (and the
    // blobs) with it, so the next pull must fetch, decrypt and unpack all layers again.
    await s().cri.removeImage(ref);
    pulled = pulled.filter((r) => r !== ref);
    const left = new Set((await s().snapshots.list()).map((i) => i.name));
    for (let n = 1; n <= img.layers.length; n++) expect(left.has(chainAfter(img, n)), `snapshot of layer ${n - 1} survived`).toBe(false);

    // The token in the cache is still "fresh" by its exp, but the KBS now refuses it (401 TokenVerifierError).
    kbs.expireAllTokens();
    const secondMs = await pull(img, ref);
    await expectUnpacked(img, ref);
    const second = delta(countersOf(kbs), afterFirst);
    expect(second.attest, 'attestations in the second pull').toBe(1);
    expect(second.attestOk).toBe(1);
    expect(second.auth).toBe(1);
    expect(second.resourceOk).toBe(img.layers.length);
    // At least one GET was refused with the old token (that is what triggered the re-attestation).
    expect(second.resource).toBeGreaterThan(img.layers.length);
    await expectSafeCacheDir(cacheDir);
    console.log(
      `[attestation e2e] expired token: first pull ${firstMs.toFixed(0)} ms ${JSON.stringify(afterFirst)}; ` +
        `second pull ${secondMs.toFixed(0)} ms, delta ${JSON.stringify(second)}`,
    );
  });

  it('fails within the deadline with the decoder\'s one-line "cannot reach the KBS" error when the KBS is down', { timeout: TEST_TIMEOUT_MS }, async () => {
    const img = await makeEncryptedImage('kbs-down', { layers: 3 });
    // A KBS that existed and is gone: nothing listens on its port any more.
    const gone = await startKbs({ resources: img.kbsResources });
    await gone.stop();
    const cacheDir = freshCacheDir();
    await writeDecoderConfig({ kbsUrl: gone.url, cacheDir, timeoutMs: 2_000, totalTimeoutMs: 5_000 });
    const ref = await push(img);
    expect(await s().snapshots.stat(img.chainId)).toBeUndefined();
    pulled.push(ref);

    const t0 = performance.now();
    const err = await s().pullExpectingFailure(ref, { deadlineMs: PULL_DEADLINE_MS });
    const ms = performance.now() - t0;
    expect(ms).toBeLessThan(KBS_DOWN_BOUND_MS);

    const line = decoderLine(err.details);
    const digests = img.layers.map((l) => escapeRe(l.digest)).join('|');
    expect(line).toMatch(new RegExp(`^coco-decoder: layer (${digests}): .*cannot reach the KBS at ${escapeRe(gone.url)} `));
    expect(line).toContain('kbs.url');
    // Nothing of the image was committed.
    for (let n = 1; n <= img.layers.length; n++) expect(await s().snapshots.stat(chainAfter(img, n))).toBeUndefined();
    expect(await s().snapshots.committedHolding([...img.files.keys()])).toEqual([]);
    console.log(`[attestation e2e] KBS down: pull failed after ${ms.toFixed(0)} ms: ${line}`);
  });

  it('fails naming the denied layer\'s kid when the KBS resource policy denies its KEK', { timeout: TEST_TIMEOUT_MS }, async () => {
    const img = await makeEncryptedImage('denied', { layers: 3 });
    // The base layer; the next test covers a layer above it (containerd 1.6's Err()/EOF race).
    const denied = img.layers[0]!;
    const kbs = await startKbs({ resources: img.kbsResources });
    kbs.faults.denyPaths.add(denied.resourcePath);
    const cacheDir = freshCacheDir();
    await writeDecoderConfig({ kbsUrl: kbs.url, cacheDir });
    const ref = await push(img);
    expect(await s().snapshots.stat(img.chainId)).toBeUndefined();
    pulled.push(ref);

    const err = await s().pullExpectingFailure(ref, { deadlineMs: PULL_DEADLINE_MS });
    const line = decoderLine(err.details);
    expect(line).toMatch(
      new RegExp(
        `^coco-decoder: layer ${escapeRe(denied.digest)}: .*access to ${escapeRe(denied.kid)} denied by the resource policy ` +
          `of KBS ${escapeRe(kbs.url)} \\(401 PolicyDeny`,
      ),
    );
    for (const other of img.layers.filter((l) => l !== denied)) expect(err.details).not.toContain(other.kid);
    // The attestation itself succeeded (and was cached); no KEK was handed out; nothing was committed.
    expect(kbs.counters.attestOk).toBeGreaterThanOrEqual(1);
    expect(kbs.counters.resourceOk).toBe(0);
    for (let n = 1; n <= img.layers.length; n++) expect(await s().snapshots.stat(chainAfter(img, n))).toBeUndefined();
    await expectSafeCacheDir(cacheDir);
    console.log(`[attestation e2e] policy denial: KBS counters ${JSON.stringify(kbs.counters)}: ${line}`);
  });

  /*
   * containerd 1.6 (diff/apply/apply.go, containerd#6914) checks the processor's Err() as soon as the decoder's
   * stdout reaches EOF, but Err() is only set after cmd.Wait() (process reaped, stderr drained). For the base layer a
   * bind-mount unmount gives containerd time; an upper layer is applied straight into the overlay upperdir and the
   * check used to win the race, so the pull failed with a bare "wrong diff id calculated on extraction". On failure
   * the decoder now leaves a helper holding only its stdout for ~300 ms (src/streamprocessor/hold-stdout.ts).
   */
  it('fails naming the denied kid when the denied layer is above the base layer (containerd 1.6 race: see comment)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const img = await makeEncryptedImage('denied-upper', { layers: 4 });
    const denied = img.layers[2]!;
    const kbs = await startKbs({ resources: img.kbsResources });
    kbs.faults.denyPaths.add(denied.resourcePath);
    await writeDecoderConfig({ kbsUrl: kbs.url, cacheDir: freshCacheDir() });
    const ref = await push(img);
    pulled.push(ref);
    const err = await s().pullExpectingFailure(ref, { deadlineMs: PULL_DEADLINE_MS, attempts: 1 });
    const line = decoderLine(err.details);
    expect(line).toMatch(new RegExp(`^coco-decoder: layer ${escapeRe(denied.digest)}: .*access to ${escapeRe(denied.kid)} denied`));
    for (let n = 3; n <= img.layers.length; n++) expect(await s().snapshots.stat(chainAfter(img, n))).toBeUndefined();
  });

  /*
   * The secrets sweep: after real attestation pulls (plus the same layers decoded directly with debug logging, and a
   * tampered one), no KEK, no layer key and no TEE private key appears in any stderr line, the audit log,
   * containerd's log, a temp file, or (KEKs and layer keys) the token cache, in any of raw, hex, base64, base64url.
   */
  it('leaves no KEK, layer key or TEE private key in stderr, the audit log, containerd\'s log, temp files or the cache', { timeout: TEST_TIMEOUT_MS }, async () => {
    const started = Date.now();
    const img = await makeEncryptedImage('sweep', { layers: 3 });
    const kbs = await startKbs({ resources: img.kbsResources });
    const cacheDir = freshCacheDir();
    const audit = path.join(work, 'sweep-audit.log');
    await writeDecoderConfig({ kbsUrl: kbs.url, cacheDir, extra: ['[log]', 'level = "debug"', `file = ${JSON.stringify(audit)}`, 'format = "json"'] });
    const ref = await push(img);
    await pull(img, ref);
    await expectUnpacked(img, ref);

    // The layer keys, recovered from the annotation packets with the KEKs (what the decoder held in memory).
    const image = await readImage(img.dir, 'latest');
    const layerKeys = image.manifest.layers.map((desc, i) => {
      const packet = JSON.parse(Buffer.from(desc.annotations!['org.opencontainers.image.enc.keys.provider.attestation-agent']!, 'base64').toString()) as {
        wrapped_data: string;
        iv: string;
      };
      const wrapped = Buffer.from(packet.wrapped_data, 'base64');
      const d = createDecipheriv('aes-256-gcm', img.layers[i]!.kek, Buffer.from(packet.iv, 'base64'));
      d.setAuthTag(wrapped.subarray(-16));
      const privopts = JSON.parse(Buffer.concat([d.update(wrapped.subarray(0, -16)), d.final()]).toString()) as { symkey: string };
      return Buffer.from(privopts.symkey, 'base64');
    });
    expect(layerKeys.every((k) => k.length === 32)).toBe(true);

    // The same layers straight through the executable, with debug logging on stderr; and one tampered layer.
    const stderrs: string[] = [];
    for (const [i, desc] of image.manifest.layers.entries()) {
      const blob = await readFile(path.join(img.dir, 'blobs', ...desc.digest.split(':')));
      if (i === 1) blob[blob.length - 1]! ^= 1;
      const r = await runDecoder({
        binary: builtDecoderPath(),
        args: ['--log-level', 'debug'],
        env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', [CONFIG_ENV]: configFile },
        descriptor: { mediaType: desc.mediaType, digest: desc.digest, size: desc.size, annotations: desc.annotations ?? {} },
        input: blob,
        output: 'discard',
      });
      expect(r.code, r.stderr).toBe(i === 1 ? 1 : 0);
      stderrs.push(r.stderr);
    }
    expect(stderrs.join('').length, 'debug logging wrote nothing: the sweep would prove nothing').toBeGreaterThan(0);

    // The TEE private key is in the cache (bound to the token) and must be nowhere else.
    const cacheNames = await expectSafeCacheDir(cacheDir);
    const tokenFile = cacheNames.find((n) => n.endsWith('.json'))!;
    const teeKey = Buffer.from((JSON.parse(await readFile(path.join(cacheDir, tokenFile), 'utf8')) as { privateKey: string }).privateKey, 'base64');
    expect(teeKey.length).toBeGreaterThan(32);

    const forms = (k: Buffer): Buffer[] => [k, Buffer.from(k.toString('hex')), Buffer.from(k.toString('base64')), Buffer.from(k.toString('base64url'))];
    const keySecrets = [...img.layers.map((l) => l.kek), ...layerKeys].flatMap(forms);
    // A PKCS#8 key also leaks through its scalar: check the DER's last 32 bytes (the EC private key) too.
    const teeSecrets = [...forms(teeKey), ...forms(teeKey.subarray(-32))];
    const leaks = (bytes: Buffer, secrets: Buffer[]): boolean => secrets.some((x) => bytes.includes(x));

    for (const e of stderrs) expect(leaks(Buffer.from(e), [...keySecrets, ...teeSecrets]), `stderr holds a secret: ${e.slice(0, 300)}`).toBe(false);
    const auditBytes = await readFile(audit);
    expect(auditBytes.toString().split('\n').filter(Boolean).length).toBeGreaterThanOrEqual(img.layers.length * 2);
    expect(leaks(auditBytes, [...keySecrets, ...teeSecrets]), 'the audit log holds a secret').toBe(false);
    expect(leaks(await readFile(s().containerd.logFile), [...keySecrets, ...teeSecrets]), "containerd's log holds a secret").toBe(false);
    for (const n of cacheNames) expect(leaks(await readFile(path.join(cacheDir, n)), keySecrets), `${n} holds a KEK or layer key`).toBe(false);

    // Every temp file written since the test started (bounded walk), outside the image layout under test.
    let scanned = 0;
    const walk = async (dir: string, depth: number): Promise<void> => {
      if (depth > 12 || scanned > 20_000) return;
      for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
        const p = path.join(dir, e.name);
        if (p === cacheDir) continue; // its token file legitimately holds the TEE key (checked above)
        if (e.isDirectory()) await walk(p, depth + 1);
        else if (e.isFile()) {
          const st = await lstat(p).catch(() => undefined);
          if (!st || st.mtimeMs < started - 1000 || st.size > 16 * 1024 * 1024) continue;
          scanned++;
          expect(leaks(await readFile(p).catch(() => Buffer.alloc(0)), [...keySecrets, ...teeSecrets]), `temp file ${p} holds a secret`).toBe(false);
        }
      }
    };
    const tmpRoots = [...new Set([os.tmpdir(), '/tmp'])];
    for (const root of tmpRoots) await walk(root, 0);
    expect(scanned).toBeGreaterThan(0);
  });

  it('pulls byte for byte an image encrypted by `coco-decoder encrypt` (the owner\'s side), with one attestation', { timeout: TEST_TIMEOUT_MS }, async () => {
    const name = 'own-encrypt';
    const salt = randomBytes(4).toString('hex');
    const plainDir = path.join(work, `${name}-plain`);
    const contents = layerContents(name, salt, 3, 512 * 1024);
    const built = await buildImage(plainDir, { tag: 'latest', layers: contents });
    const kek = randomBytes(32);
    allKeks.push(kek);
    const kekFile = path.join(work, `${name}.kek`);
    await writeFile(kekFile, kek, { mode: 0o600 });
    const kid = `kbs:///default/image-kek/${name}-${salt}`;
    const encDir = path.join(work, `${name}-${salt}`);
    const enc = spawnSync(builtDecoderPath(), ['encrypt', '--kid', kid, '--kek-file', kekFile, `oci:${plainDir}:latest`, `oci:${encDir}:latest`], { encoding: 'utf8', timeout: 60_000 });
    expect(enc.status, enc.stderr).toBe(0);
    const files = new Map<string, Buffer>();
    for (const layer of contents) for (const [p, bytes] of Object.entries(layer)) files.set(p, bytes);
    const img: TestImage = {
      name,
      dir: encDir,
      layers: [],
      files,
      diffIds: built.diffIds,
      chainId: chainIdOf(built.diffIds),
      kbsResources: { [`default/image-kek/${name}-${salt}`]: kek },
    };
    const kbs = await startKbs({ resources: img.kbsResources });
    await writeDecoderConfig({ kbsUrl: kbs.url, cacheDir: freshCacheDir(), extra: ['[integrity]', 'check_plain_digest = true'] });
    const ref = await push(img);
    await pull(img, ref);
    await expectUnpacked(img, ref);
    // All three layers share the one KEK: one attestation, one resource request per layer.
    expect(countersOf(kbs)).toMatchObject({ auth: 1, attest: 1, resource: 3, resourceOk: 3 });
  });
});
