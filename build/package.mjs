#!/usr/bin/env node
/**
 * `npm run package`: turns the single executable into a Debian package and an RPM, with no network:
 *   dist/coco-decoder_<version>_amd64.deb        (dpkg-deb; dependencies from dpkg-shlibdeps)
 *   dist/coco-decoder-<version>-<release>.x86_64.rpm  (rpmbuild; dependencies from rpm's ELF scanner)
 * Both come from the same staged tree (see stageCommon); inputs are in packaging/. Prints one summary line.
 *
 * The executable is never stripped here (nor by rpmbuild, see the spec): it is a Node single executable whose
 * application is an ELF note injected after stripping, and stripping it again makes it segfault.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import crypto from 'node:crypto';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DIST = path.join(ROOT, 'dist');
const PKG = path.join(ROOT, 'packaging');
const NAME = 'coco-decoder';
const RPM_RELEASE = '1';
const TOOL_TIMEOUT_MS = 10 * 60_000;

class PackageError extends Error {}

function run(file, args, options = {}) {
  try {
    return execFileSync(file, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: TOOL_TIMEOUT_MS,
      maxBuffer: 64 * 1024 * 1024,
      encoding: 'utf8',
      ...options,
    });
  } catch (err) {
    if (err.code === 'ENOENT') throw new PackageError(`${file} not found: install ${TOOL_PACKAGES[file] ?? file}`);
    const out = [err.stdout, err.stderr].filter(Boolean).join('\n').trim();
    const why = err.signal ? `killed by ${err.signal}` : `exit ${err.status}`;
    throw new PackageError(`${file} ${args.join(' ')} failed (${why})${out ? `:\n${out}` : ''}`);
  }
}

const TOOL_PACKAGES = { 'dpkg-deb': 'dpkg-dev', 'dpkg-shlibdeps': 'dpkg-dev', rpmbuild: 'rpm' };

// ---------------------------------------------------------------------------------------------------------------
// Inputs

function readMetadata() {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  const author = typeof pkg.author === 'string' ? pkg.author : pkg.author && `${pkg.author.name} <${pkg.author.email}>`;
  const missing = ['version', 'homepage', 'license'].filter((k) => typeof pkg[k] !== 'string' || pkg[k] === '');
  if (!author || !/^[^<>]+ <[^<>@\s]+@[^<>\s]+>$/.test(author)) missing.push('author ("Name <email>")');
  if (missing.length > 0) throw new PackageError(`package.json lacks ${missing.join(', ')}: needed for package metadata`);
  const [summary, ...rest] = fs.readFileSync(path.join(PKG, 'common', 'description'), 'utf8').trimEnd().split('\n');
  if (!summary || summary.length > 79 || rest[0] === undefined) {
    throw new PackageError('packaging/common/description: first line is the summary (< 80 chars), then the text');
  }
  return { version: pkg.version, homepage: pkg.homepage, license: pkg.license, maintainer: author, summary, description: rest };
}

/** Parses packaging/common/changelog (Debian format): the single source of both packages' changelogs. */
export function parseChangelog(text) {
  const entries = [];
  const re = /^(\S+) \(([^)]+)\) [^;]+; urgency=\w+\n\n((?: {2}.*\n|\n)+?)\n -- (.+? <[^>]+>) {2}(.+)$/gm;
  for (const m of text.matchAll(re)) {
    const date = new Date(m[5]);
    if (Number.isNaN(date.getTime())) throw new PackageError(`changelog: bad date "${m[5]}"`);
    // Each item keeps its line breaks (as lines without the indentation): rpm's %changelog is wrapped the same way.
    const items = m[3]
      .trimEnd()
      .split(/\n(?= {2}\* )/)
      .map((b) => b.replace(/^ {2}\* /, '').split('\n').map((l) => l.trim()));
    entries.push({ source: m[1], version: m[2], items, maintainer: m[4], date });
  }
  if (entries.length === 0) throw new PackageError('packaging/common/changelog has no entry in Debian format');
  return entries;
}

function readInputs() {
  const meta = readMetadata();
  const changelog = parseChangelog(fs.readFileSync(path.join(PKG, 'common', 'changelog'), 'utf8'));
  if (changelog[0].version !== meta.version) {
    throw new PackageError(
      `packaging/common/changelog starts at ${changelog[0].version} but package.json is ${meta.version}: add an entry`,
    );
  }
  const exe = path.join(DIST, NAME);
  if (!fs.existsSync(exe)) throw new PackageError('dist/coco-decoder is missing: run npm run build first');
  const notices = path.join(DIST, 'THIRD-PARTY-NOTICES');
  const bundledList = path.join(DIST, 'sea', 'bundled-packages.json');
  for (const f of [notices, bundledList]) {
    if (!fs.existsSync(f)) throw new PackageError(`${path.relative(ROOT, f)} is missing: run npm run build first`);
  }
  const addon = path.join(DIST, 'tee.node');
  return {
    ...meta,
    changelog,
    exe,
    notices,
    bundled: JSON.parse(fs.readFileSync(bundledList, 'utf8')),
    addon: fs.existsSync(addon) ? addon : undefined,
    epoch: Math.floor(changelog[0].date.getTime() / 1000),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Staging: the installed tree, identical for both formats except for documentation locations.

function put(root, rel, { from, text, data, mode }) {
  const dest = path.join(root, rel);
  fs.mkdirSync(path.dirname(dest), { recursive: true, mode: 0o755 });
  if (from) fs.copyFileSync(from, dest);
  else fs.writeFileSync(dest, data ?? text);
  fs.chmodSync(dest, mode);
}

/** gzip -9n equivalent: Node's gzip header has no name and mtime 0, so the result is reproducible. */
function gzip(bufOrText) {
  return zlib.gzipSync(Buffer.from(bufOrText), { level: 9 });
}

function manPage(inp) {
  const d = inp.changelog[0].date.toISOString().slice(0, 10);
  return fs
    .readFileSync(path.join(PKG, 'coco-decoder.1'), 'utf8')
    .replace(/^\.TH .*$/m, `.TH COCO-DECODER 1 "${d}" "coco-decoder ${inp.version}" "User Commands"`);
}

function stageCommon(root, inp) {
  put(root, 'usr/bin/coco-decoder', { from: inp.exe, mode: 0o755 });
  if (inp.addon) put(root, 'usr/lib/coco-decoder/tee.node', { from: inp.addon, mode: 0o644 });
  put(root, 'etc/coco-decoder/config.toml', { from: path.join(PKG, 'common', 'config.toml'), mode: 0o640 });
  put(root, 'etc/containerd/conf.d/coco-decoder.toml', { from: path.join(PKG, 'common', 'containerd-dropin.toml'), mode: 0o644 });
  put(root, 'usr/lib/tmpfiles.d/coco-decoder.conf', { from: path.join(PKG, 'common', 'tmpfiles.conf'), mode: 0o644 });
  // Shipped disabled: nothing enables or starts it (see the unit's comment).
  put(root, 'usr/lib/systemd/system/coco-decoder-keyprovider.service', { from: path.join(PKG, 'common', 'coco-decoder-keyprovider.service'), mode: 0o644 });
  put(root, 'usr/share/man/man1/coco-decoder.1.gz', { data: gzip(manPage(inp)), mode: 0o644 });
  put(root, 'usr/share/doc/coco-decoder/README.md', { from: path.join(PKG, 'README.md'), mode: 0o644 });
}

/** Same mtime everywhere (the changelog date): package contents do not depend on when they were built. */
function clampMtimes(dir, epoch) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) clampMtimes(p, epoch);
    fs.utimesSync(p, epoch, epoch);
  }
  fs.utimesSync(dir, epoch, epoch);
}

function walkFiles(dir, out = []) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) walkFiles(p, out);
    else out.push(p);
  }
  return out;
}

function licenseExpression(inp) {
  // Ours, the Node.js runtime's, and those of the bundled npm packages (full texts in THIRD-PARTY-NOTICES).
  const ids = new Set([inp.license, 'MIT', ...inp.bundled.map((b) => b.license)]);
  return [...ids].map((id) => (/ OR /i.test(id) ? `(${id})` : id)).join(' AND ');
}

function componentList(inp) {
  return inp.bundled.map((b) => `  ${b.name} ${b.version} (${b.license})`).join('\n');
}

// ---------------------------------------------------------------------------------------------------------------
// Debian

function debCopyright(inp) {
  const year = inp.changelog.at(-1).date.getUTCFullYear();
  return `coco-decoder
Homepage: ${inp.homepage}
Maintainer: ${inp.maintainer}

Copyright: ${year} ${inp.maintainer.replace(/ <.*$/, '')}
License: ${inp.license}
 On Debian systems the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.

/usr/bin/coco-decoder is a Node.js single executable application: the Node.js
runtime (MIT; it embeds V8, OpenSSL, ICU, libuv, zlib and other components
under their own licences) with these npm packages bundled into it:
${componentList(inp)}
/usr/lib/coco-decoder/tee.node is built from coco-decoder's sources and the
node-addon-api headers (MIT).

Their copyright notices and full licence texts are in
/usr/share/doc/coco-decoder/THIRD-PARTY-NOTICES.gz.
`;
}

/** Debian's Installed-Size: KiB, each file rounded up, each directory counted as 1 (as dpkg-gencontrol does). */
function installedSizeKiB(root) {
  let kib = 0;
  const visit = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, entry.name);
      if (entry.name === 'DEBIAN' && dir === root) continue;
      if (entry.isDirectory()) {
        kib += 1;
        visit(p);
      } else kib += Math.ceil(fs.lstatSync(p).size / 1024);
    }
  };
  visit(root);
  return kib;
}

/** dpkg-shlibdeps wants a source tree layout: debian/control plus debian/<package>/<files>. */
function shlibDepends(work, elfFiles) {
  const args = ['-O', `-T${path.join(work, 'substvars')}`, ...elfFiles.map((f) => path.relative(work, f))];
  const out = run('dpkg-shlibdeps', args, { cwd: work });
  const m = /^shlibs:Depends=(.+)$/m.exec(out);
  if (!m) throw new PackageError(`dpkg-shlibdeps gave no dependencies for ${elfFiles.join(', ')}`);
  return m[1].trim();
}

function debControl(inp, depends, installedSize) {
  const body = inp.description.map((l) => (l === '' ? ' .' : ` ${l}`)).join('\n');
  return `Package: ${NAME}
Version: ${inp.version}
Architecture: amd64
Maintainer: ${inp.maintainer}
Installed-Size: ${installedSize}
Depends: ${depends}
Enhances: containerd
Section: admin
Priority: optional
Homepage: ${inp.homepage}
Description: ${inp.summary}
${body}
`;
}

function md5sums(root) {
  return walkFiles(root)
    .filter((f) => !path.relative(root, f).startsWith('DEBIAN/'))
    .map((f) => `${crypto.createHash('md5').update(fs.readFileSync(f)).digest('hex')}  ${path.relative(root, f)}`)
    .join('\n')
    .concat('\n');
}

function buildDeb(inp, work) {
  const src = path.join(work, 'deb');
  const root = path.join(src, 'debian', NAME);
  fs.mkdirSync(root, { recursive: true });
  fs.writeFileSync(path.join(src, 'debian', 'control'), `Source: ${NAME}\n\nPackage: ${NAME}\nArchitecture: amd64\n`);

  stageCommon(root, inp);
  const doc = 'usr/share/doc/coco-decoder';
  put(root, `${doc}/copyright`, { text: debCopyright(inp), mode: 0o644 });
  put(root, `${doc}/changelog.gz`, { data: gzip(fs.readFileSync(path.join(PKG, 'common', 'changelog'))), mode: 0o644 });
  put(root, `${doc}/THIRD-PARTY-NOTICES.gz`, { data: gzip(fs.readFileSync(inp.notices)), mode: 0o644 });
  put(root, 'usr/share/lintian/overrides/coco-decoder', { from: path.join(PKG, 'deb', 'lintian-overrides'), mode: 0o644 });

  const elves = [path.join(root, 'usr/bin/coco-decoder')];
  if (inp.addon) elves.push(path.join(root, 'usr/lib/coco-decoder/tee.node'));
  const depends = shlibDepends(src, elves);

  const control = path.join(root, 'DEBIAN');
  fs.mkdirSync(control, { mode: 0o755 });
  put(root, 'DEBIAN/conffiles', {
    text: '/etc/coco-decoder/config.toml\n/etc/containerd/conf.d/coco-decoder.toml\n',
    mode: 0o644,
  });
  put(root, 'DEBIAN/postinst', { from: path.join(PKG, 'deb', 'postinst'), mode: 0o755 });
  put(root, 'DEBIAN/postrm', { from: path.join(PKG, 'deb', 'postrm'), mode: 0o755 });
  put(root, 'DEBIAN/md5sums', { text: md5sums(root), mode: 0o644 });
  put(root, 'DEBIAN/control', { text: debControl(inp, depends, installedSizeKiB(root)), mode: 0o644 });
  clampMtimes(root, inp.epoch);

  const out = path.join(DIST, `${NAME}_${inp.version}_amd64.deb`);
  fs.rmSync(out, { force: true });
  run('dpkg-deb', ['--root-owner-group', '-Zxz', '-z2', '--build', root, out], {
    env: { ...process.env, SOURCE_DATE_EPOCH: String(inp.epoch) },
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// RPM

function rpmChangelog(inp) {
  const fmt = (d) => {
    const day = d.toLocaleDateString('en-US', { weekday: 'short', timeZone: 'UTC' });
    const mon = d.toLocaleDateString('en-US', { month: 'short', timeZone: 'UTC' });
    return `${day} ${mon} ${String(d.getUTCDate()).padStart(2, '0')} ${d.getUTCFullYear()}`;
  };
  return inp.changelog
    .map((e) => `* ${fmt(e.date)} ${e.maintainer} - ${e.version}-${RPM_RELEASE}\n${e.items.map((i) => `- ${i.join('\n  ')}`).join('\n')}`)
    .join('\n\n')
    .replaceAll('%', '%%');
}

function rpmSpec(inp) {
  const addonFiles = inp.addon
    ? '%dir %attr(0755,root,root) /usr/lib/coco-decoder\n%attr(0644,root,root) /usr/lib/coco-decoder/tee.node'
    : '';
  const values = {
    VERSION: inp.version,
    RELEASE: RPM_RELEASE,
    SUMMARY: inp.summary,
    LICENSE: licenseExpression(inp),
    HOMEPAGE: inp.homepage,
    MAINTAINER: inp.maintainer,
    DESCRIPTION: inp.description.join('\n').replaceAll('%', '%%'),
    ADDON_FILES: addonFiles,
    CHANGELOG: rpmChangelog(inp),
  };
  const template = fs.readFileSync(path.join(PKG, 'rpm', 'coco-decoder.spec.in'), 'utf8');
  return template.replace(/@([A-Z_]+)@/g, (whole, key) => {
    if (!Object.hasOwn(values, key)) throw new PackageError(`coco-decoder.spec.in: unknown placeholder ${whole}`);
    return values[key];
  });
}

function buildRpm(inp, work) {
  const root = path.join(work, 'rpm-stage');
  stageCommon(root, inp);
  put(root, 'usr/share/licenses/coco-decoder/LICENSE', { from: path.join(PKG, 'common', 'LICENSE'), mode: 0o644 });
  put(root, 'usr/share/licenses/coco-decoder/THIRD-PARTY-NOTICES', { from: inp.notices, mode: 0o644 });
  clampMtimes(root, inp.epoch);

  const top = path.join(work, 'rpmbuild');
  for (const d of ['BUILD', 'BUILDROOT', 'RPMS', 'SOURCES', 'SPECS', 'SRPMS']) fs.mkdirSync(path.join(top, d), { recursive: true });
  const spec = path.join(top, 'SPECS', `${NAME}.spec`);
  fs.writeFileSync(spec, rpmSpec(inp));
  run(
    'rpmbuild',
    [
      '-bb',
      '--target', 'x86_64',
      '--define', `_topdir ${top}`,
      '--define', `stagedir ${root}`,
      // xz level 2: a third smaller than gzip, several times faster than the default level on an 87 MB binary.
      '--define', '_binary_payload w2T.xzdio',
      '--define', 'use_source_date_epoch_as_buildtime 1',
      '--define', 'clamp_mtime_to_source_date_epoch 1',
      spec,
    ],
    { env: { ...process.env, SOURCE_DATE_EPOCH: String(inp.epoch) } },
  );
  const name = `${NAME}-${inp.version}-${RPM_RELEASE}.x86_64.rpm`;
  const built = path.join(top, 'RPMS', 'x86_64', name);
  if (!fs.existsSync(built)) throw new PackageError(`rpmbuild did not produce RPMS/x86_64/${name}`);
  const out = path.join(DIST, name);
  fs.copyFileSync(built, out);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  const inp = readInputs();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'coco-decoder-package-'));
  try {
    const deb = buildDeb(inp, work);
    const rpm = buildRpm(inp, work);
    const mb = (f) => `${(fs.statSync(f).size / 1e6).toFixed(1)} MB`;
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    process.stdout.write(
      `packaged ${path.relative(ROOT, deb)} (${mb(deb)}) and ${path.relative(ROOT, rpm)} (${mb(rpm)})` +
        `${inp.addon ? ' with tee.node' : ' without addon'}, ${seconds}s\n`,
    );
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    process.stderr.write(`package: ${err instanceof PackageError ? err.message : err?.stack ?? err}\n`);
    process.exitCode = 1;
  });
}
