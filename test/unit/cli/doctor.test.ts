/**
 * `coco-decoder doctor` against the test KBS (trustee's RCAR, over TLS with a throwaway CA), a temporary
 * coco-decoder config (`tee = "sample"`), temporary containerd configs (the packaged drop-in imported from conf.d)
 * and a token cache directory on tmpfs. Most cases call `runDoctor` in-process with a stand-in `coco-decoder`
 * and `containerd` on PATH; the all-green case and the exit codes go through the real entry point.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runDoctor } from '../../../src/cli/doctor.js';
import type { DoctorOptions, RungResult } from '../../../src/cli/doctor.js';
import { glob, loadContainerdConfig } from '../../../src/cli/doctor/containerd-config.js';
import { formatRung } from '../../../src/cli/doctor/rung.js';
import { parseResourceUri } from '../../../src/kbs/resource-uri.js';
import { startTestKbs } from '../../kbs/server.js';
import type { TestKbs } from '../../kbs/server.js';
import { KEK, KID, KID_PATH, makePki } from '../../helpers/kbs-helpers.js';
import type { TestPki } from '../../helpers/kbs-helpers.js';

const ROOT = join(import.meta.dirname, '../../..');
const DROP_IN = readFileSync(join(ROOT, 'packaging/common/containerd-dropin.toml'), 'utf8');
const GZ_ENC = 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted';
const ZSTD_ENC = 'application/vnd.oci.image.layer.v1.tar+zstd+encrypted';
const TAR_ENC = 'application/vnd.oci.image.layer.v1.tar+encrypted';
const TMPFS_MAGIC = 0x01021994;

let tmp: string;
let shm: string;
let pki: TestPki;
let kbs: TestKbs;
let kbs020: TestKbs;
let fakeBin: string;
let realDecoder: string;
let n = 0;

/** A tmpfs directory for the token cache (the doctor insists on tmpfs); /dev/shm is tmpfs on Linux. */
function tmpfsRoot(): string {
  for (const dir of ['/dev/shm', '/run']) {
    try {
      if (Number(statfsSync(dir).type) === TMPFS_MAGIC) return dir;
    } catch {
      // absent
    }
  }
  throw new Error('no tmpfs found for the cache directory test');
}

function script(path: string, body: string): string {
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, 0o755);
  return path;
}

/** A fresh 0700 cache directory on tmpfs. */
function cacheDir(): string {
  const d = join(shm, `cache-${++n}`);
  mkdirSync(d, { mode: 0o700 });
  chmodSync(d, 0o700);
  return d;
}

interface ConfigOpts {
  url?: string;
  protocol?: string;
  cert?: string | null;
  cache?: string;
  extra?: string;
}

function decoderConfig(o: ConfigOpts = {}): string {
  const file = join(tmp, `config-${++n}.toml`);
  const url = o.url ?? kbs.url;
  const cert = o.cert === undefined ? pki.caFile : o.cert;
  writeFileSync(
    file,
    [
      '[kbs]',
      `url = "${url}"`,
      url.startsWith('http:') ? 'allow_http = true' : '',
      cert ? `cert = "${cert}"` : '',
      o.protocol ? `protocol = "${o.protocol}"` : '',
      'timeout_ms = 2000',
      'total_timeout_ms = 8000',
      '[attestation]',
      'tee = "sample"',
      '[cache]',
      `dir = "${o.cache ?? cacheDir()}"`,
      o.extra ?? '',
    ].join('\n'),
  );
  return file;
}

/** containerd config dir: config.toml importing conf.d/*.toml (relative, as containerd resolves it) + the packaged drop-in. */
function containerdConfig(o: { main?: string; dropIn?: string | null; decoder?: string } = {}): string {
  const dir = join(tmp, `containerd-${++n}`);
  mkdirSync(join(dir, 'conf.d'), { recursive: true });
  writeFileSync(join(dir, 'config.toml'), o.main ?? 'version = 2\nimports = ["conf.d/*.toml"]\n');
  if (o.dropIn !== null) {
    const text = (o.dropIn ?? DROP_IN).replaceAll('/usr/bin/coco-decoder', o.decoder ?? join(fakeBin, 'coco-decoder'));
    writeFileSync(join(dir, 'conf.d', 'coco-decoder.toml'), text);
  }
  return join(dir, 'config.toml');
}

function options(over: Partial<DoctorOptions> = {}): DoctorOptions {
  return {
    configPath: decoderConfig(),
    containerdConfig: containerdConfig(),
    allowSample: true,
    env: { PATH: `${fakeBin}:${process.env.PATH ?? '/usr/bin:/bin'}` },
    ...over,
  };
}

const byRung = (results: RungResult[]): Record<string, RungResult> => Object.fromEntries(results.map((r) => [r.rung, r]));

/** The KEK must never show up, in any encoding. */
function expectNoKek(text: string): void {
  expect(text).not.toContain(KEK.toString('hex'));
  expect(text).not.toContain(KEK.toString('base64'));
  expect(text).not.toContain(KEK.toString('base64url'));
  expect(text).not.toContain(KEK.toString('latin1'));
}

async function freePortWithNothingListening(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

function runCli(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'doctor', ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('doctor did not exit within 60 s'));
    }, 60_000);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'coco-doctor-'));
  shm = mkdtempSync(join(tmpfsRoot(), 'coco-doctor-'));
  pki = makePki(tmp);
  const resources = {
    [KID_PATH]: KEK,
    'default/short/key': KEK.subarray(0, 16),
    'default/text/key': Buffer.from(`${KEK.toString('base64')}\n`),
  };
  kbs = await startTestKbs({ resources, tls: { cert: pki.certPem, key: pki.keyPem } });
  kbs020 = await startTestKbs({ resources, protocol: '0.2.0' });
  fakeBin = join(tmp, 'bin');
  mkdirSync(fakeBin);
  script(join(fakeBin, 'coco-decoder'), 'echo "coco-decoder 9.9.9"');
  script(join(fakeBin, 'ctd-decoder'), 'echo "ctd-decoder version v1.1.7"');
  script(join(fakeBin, 'containerd'), 'echo "containerd github.com/containerd/containerd v1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da"');
  // The real entry point, as the packaged /usr/bin/coco-decoder would be run by containerd.
  realDecoder = script(join(tmp, 'real-coco-decoder'), `cd "${ROOT}" && exec "${process.execPath}" --import tsx src/main.ts "$@"`);
}, 60_000);

afterAll(async () => {
  await kbs?.stop();
  await kbs020?.stop();
  rmSync(tmp, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
});

describe('the whole ladder', () => {
  it('all rungs pass through the real CLI: exit 0, one line each, the KEK never printed, the token cache untouched', async () => {
    const cache = cacheDir();
    const config = decoderConfig({ cache, extra: `[log]\nfile = "${join(tmp, 'audit.log')}"` });
    const r = await runCli(
      ['--config', config, '--kid', KID, '--containerd-config', containerdConfig({ decoder: realDecoder }), '--allow-sample'],
      { PATH: `${fakeBin}:${process.env.PATH ?? ''}` },
    );
    expect(r.stderr).toBe('');
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines.slice(0, -1).map((l) => l.split(':')[0])).toEqual([
      '✓ config', '✓ tee', '✓ kbs', '✓ attestation', '✓ resource', '✓ containerd', '✓ cri', '✓ cache', '✓ log',
    ]);
    expect(lines.at(-1)).toBe('all checks passed');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`✓ config: ${config}`);
    expect(r.stdout).toMatch(/✓ tee: sample \(configured\): evidence produced \(\d+ bytes\) but it is NOT hardware evidence; development only/);
    expect(r.stdout).toContain(`✓ kbs: ${kbs.url} reachable, TLS verified against kbs.cert ${pki.caFile}`);
    expect(r.stdout).toMatch(/protocol 0\.4\.0 \(trustee ≥ v0\.14\)/);
    expect(r.stdout).toMatch(/✓ attestation: token issued for tee sample .*expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \(in [45] min\)/);
    expect(r.stdout).toContain(`✓ resource: ${KID}: 32 bytes`);
    expect(r.stdout).toMatch(/✓ containerd: .*config\.toml \+ conf\.d\/coco-decoder\.toml: .*running .*real-coco-decoder \(coco-decoder \S+ \(node v\S+, openssl \S+\)\)/);
    expect(r.stdout).toContain('✓ cri: image_decryption.key_model = "node" (containerd default); containerd 1.7.27');
    expect(r.stdout).toContain(`✓ cache: ${cache}: directory owned by root, mode 0700, on tmpfs`);
    expectNoKek(r.stdout);
    expect(readdirSync(cache)).toEqual([]);
  }, 60_000);

  it('--json gives one object with every rung; the exit code follows the failures', async () => {
    const r = await runCli(
      ['--config', decoderConfig(), '--containerd-config', containerdConfig(), '--json'],
      { PATH: `${fakeBin}:${process.env.PATH ?? ''}` },
    );
    const doc = JSON.parse(r.stdout) as { ok: boolean; rungs: RungResult[] };
    expect(doc.rungs.map((x) => [x.rung, x.status])).toEqual([
      ['config', 'pass'], ['tee', 'fail'], ['kbs', 'pass'], ['attestation', 'pass'], ['resource', 'skip'],
      ['containerd', 'pass'], ['cri', 'pass'], ['cache', 'pass'], ['log', 'skip'],
    ]);
    expect(doc.ok).toBe(false);
    expect(r.code).toBe(1);
  }, 60_000);

  it('rejects a malformed --kid before doing anything (exit 2)', async () => {
    const r = await runCli(['--kid', 'kbs:///only/two'], { PATH: process.env.PATH ?? '' });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^coco-decoder doctor: invalid KBS resource URI "kbs:\/\/\/only\/two" in kid: expected exactly 3 path segments/);
  }, 60_000);
});

describe('tee', () => {
  it('sample evidence fails the ladder unless --allow-sample, with a development-only fix; the rest still runs', async () => {
    const r = byRung(await runDoctor(options({ allowSample: false })));
    expect(formatRung(r['tee']!)).toMatch(/^✗ tee: sample \(configured\): evidence produced \(\d+ bytes\) but it is NOT hardware evidence — fix: development only: .*attestation.tee = "auto"/);
    expect(r['attestation']!.status).toBe('pass');
  });
});

describe('kbs', () => {
  it('KBS down: ✗ with the connection error and a fix; dependent rungs skipped, independent ones still run', async () => {
    const url = `https://127.0.0.1:${await freePortWithNothingListening()}`;
    const results = await runDoctor(options({ configPath: decoderConfig({ url }), kid: parseResourceUri(KID) }));
    const r = byRung(results);
    expect(formatRung(r['kbs']!)).toBe(`✗ kbs: cannot connect to ${url}: ECONNREFUSED — fix: nothing listens at ${url}: start the KBS or correct the host/port in kbs.url`);
    expect(formatRung(r['attestation']!)).toBe('- attestation: skipped: needs a reachable KBS');
    expect(formatRung(r['resource']!)).toBe(`- resource: skipped: needs a token (to fetch ${KID})`);
    expect(r['containerd']!.status).toBe('pass');
    expect(r['cache']!.status).toBe('pass');
  }, 30_000);

  it('names the dialect: a 0.2.0 KBS is found through the version-mismatch 401', async () => {
    const r = byRung(await runDoctor(options({ configPath: decoderConfig({ url: kbs020.url, cert: null }) })));
    expect(formatRung(r['kbs']!)).toBe(
      `✓ kbs: ${kbs020.url} reachable, plain http without TLS (kbs.allow_http: the token travels unencrypted, development only), ` +
        'protocol 0.2.0 (after the version-mismatch answer to 0.4.0) (trustee v0.12–v0.13)',
    );
    expect(r['attestation']!.detail).toMatch(/^token issued for tee sample \(protocol 0\.2\.0/);
  });

  it('a pinned kbs.protocol the KBS does not speak: ✗ naming both versions, and no attestation', async () => {
    const r = byRung(await runDoctor(options({ configPath: decoderConfig({ url: kbs020.url, cert: null, protocol: '0.4.0' }) })));
    expect(formatRung(r['kbs']!)).toMatch(/^✗ kbs: http:\/\/127\.0\.0\.1:\d+ speaks KBS protocol 0\.2\.0 \(trustee v0\.12–v0\.13\), but kbs\.protocol = "0\.4\.0" — fix: set kbs\.protocol = "auto" or "0\.2\.0"/);
    expect(r['attestation']!.status).toBe('skip');
  });

  it('TLS with the wrong CA: ✗ naming the verification error and kbs.cert', async () => {
    const r = byRung(await runDoctor(options({ configPath: decoderConfig({ cert: pki.otherCaFile }) })));
    expect(formatRung(r['kbs']!)).toMatch(new RegExp(`^✗ kbs: TLS to ${kbs.url.replaceAll('.', '\\.')} failed: [A-Z_]+ — fix: kbs\\.cert \\(${pki.otherCaFile}\\) must contain the CA`));
  });

  it('no kbs.url: ✗ with where to set it', async () => {
    const file = join(tmp, 'no-url.toml');
    writeFileSync(file, `[attestation]\ntee = "sample"\n[cache]\ndir = "${cacheDir()}"\n`);
    const r = byRung(await runDoctor(options({ configPath: file })));
    expect(formatRung(r['kbs']!)).toBe(`✗ kbs: no KBS configured (kbs.url is not set) — fix: set [kbs] url = "https://…" in ${file}`);
  });
});

describe('config', () => {
  it('an invalid config: ✗ with the loader message; KBS rungs skipped, containerd and cache still checked', async () => {
    const file = join(tmp, 'bad.toml');
    writeFileSync(file, '[kbs]\nurl = "https://kbs"\ntimeout = 5\n');
    const r = byRung(await runDoctor(options({ configPath: file })));
    expect(formatRung(r['config']!)).toMatch(/^✗ config: config .*bad\.toml: kbs\.timeout unknown key .* — fix: correct the file/);
    expect(['tee', 'kbs', 'attestation', 'resource', 'log'].map((k) => r[k]!.status)).toEqual(['skip', 'skip', 'skip', 'skip', 'skip']);
    expect(r['containerd']!.status).toBe('pass');
    expect(r['cache']!.detail).toContain('(default; the config could not be read)');
  });
});

describe('resource (--kid)', () => {
  it('a missing resource: ✗ with trustee\'s 401 explained and where to register the key', async () => {
    const r = byRung(await runDoctor(options({ kid: parseResourceUri('kbs:///default/missing/key') })));
    expect(formatRung(r['resource']!)).toMatch(/^✗ resource: .*could not provide kbs:\/\/\/default\/missing\/key .* — fix: register the key at the KBS under default\/missing\/key/);
  });

  it('a 16-byte resource: ✗ "expected 32 bytes", the bytes never shown', async () => {
    const results = await runDoctor(options({ kid: parseResourceUri('kbs:///default/short/key') }));
    const line = formatRung(byRung(results)['resource']!);
    expect(line).toBe('✗ resource: kbs:///default/short/key: 16 bytes, expected 32 bytes for a key-encryption key — fix: store the raw 32-byte key at the KBS under default/short/key');
    expect(line).not.toContain(KEK.subarray(0, 16).toString('hex'));
  });

  it('a key stored as base64 text is recognised as such, without printing it', async () => {
    const results = await runDoctor(options({ kid: parseResourceUri('kbs:///default/text/key') }));
    const text = results.map(formatRung).join('\n');
    expect(text).toContain('✗ resource: kbs:///default/text/key: 45 bytes, expected 32 bytes for a key-encryption key (it looks like the key as base64 text) — fix: store the raw 32-byte key at the KBS under default/text/key, not its text encoding');
    expectNoKek(text);
  });

  it('a 32-byte KEK passes with only its size shown', async () => {
    const results = await runDoctor(options({ kid: parseResourceUri(KID) }));
    expect(formatRung(byRung(results)['resource']!)).toBe(`✓ resource: ${KID}: 32 bytes, the size of an AES-256 key-encryption key (contents not shown)`);
    expectNoKek(JSON.stringify(results));
  });
});

describe('containerd', () => {
  const containerdOnly = async (path: string, env?: Record<string, string>): Promise<Record<string, RungResult>> =>
    byRung(await runDoctor(options({ configPath: join(tmp, 'absent.toml'), containerdConfig: path, ...(env ? { env } : {}) })));

  it('a config that does not import the drop-in: the built-in processors run ctd-decoder and zstd has none', async () => {
    const r = await containerdOnly(containerdConfig({ main: 'version = 2\n' }));
    const line = formatRung(r['containerd']!);
    expect(line).toContain(`no stream processor accepts ${ZSTD_ENC}`);
    expect(line).toMatch(
      /processors "io\.containerd\.ocicrypt\.decoder\.v1\.tar\.gzip" and "io\.containerd\.ocicrypt\.decoder\.v1\.tar" run .*ctd-decoder, which is not coco-decoder \(--version says "ctd-decoder version v1\.1\.7"\)/,
    );
    expect(line).toMatch(/— fix: make .*config\.toml import the coco-decoder drop-in: imports = \["\/etc\/containerd\/conf\.d\/\*\.toml"\]/);
  });

  it('zstd under its own ".tar.zstd" processor ID: noted (content-store lookup), or ✗ with the lookup off', async () => {
    const zstd = `[stream_processors."io.containerd.ocicrypt.decoder.v1.tar.zstd"]\n  accepts = ["${ZSTD_ENC}"]\n  returns = "application/vnd.oci.image.layer.v1.tar+zstd"\n  path = "coco-decoder"\n`;
    const dropIn = DROP_IN.replace(`      "${ZSTD_ENC}",\n`, '') + zstd;
    const on = await containerdOnly(containerdConfig({ dropIn }));
    expect(formatRung(on['containerd']!)).toContain('"io.containerd.ocicrypt.decoder.v1.tar.zstd" gets no fd-3 payload: the decoder looks the layer up in containerd\'s content store');
    const noLookup = join(tmp, `no-lookup-${++n}.toml`);
    writeFileSync(noLookup, '[containerd]\nlookup = false\n');
    const r = byRung(await runDoctor(options({ configPath: noLookup, containerdConfig: containerdConfig({ dropIn }) })));
    expect(formatRung(r['containerd']!)).toMatch(
      /✗ containerd: .*application\/vnd\.oci\.image\.layer\.v1\.tar\+zstd\+encrypted goes to processor "io\.containerd\.ocicrypt\.decoder\.v1\.tar\.zstd", which containerd starts without the layer descriptor on fd 3 .* — fix: move application\/vnd\.oci\.image\.layer\.v1\.tar\+zstd\+encrypted into the accepts of \[stream_processors\."io\.containerd\.ocicrypt\.decoder\.v1\.tar\.gzip"\]/,
    );
  });

  it('two processors accepting one media type: ✗ (containerd picks one at random)', async () => {
    const extra = `\n[stream_processors."coco"]\n  accepts = ["${GZ_ENC}"]\n  returns = "application/vnd.oci.image.layer.v1.tar+gzip"\n  path = "coco-decoder"\n`;
    const r = await containerdOnly(containerdConfig({ dropIn: DROP_IN + extra }));
    expect(r['containerd']!.detail).toMatch(/tar\+gzip\+encrypted is accepted by "io\.containerd\.ocicrypt\.decoder\.v1\.tar\.gzip" .* and "coco" .*at random/);
  });

  it('a processor path that does not exist, and a wrong "returns"', async () => {
    const dropIn = DROP_IN.replace('returns = "application/vnd.oci.image.layer.v1.tar"\n', 'returns = "application/vnd.oci.image.layer.v1.tar+encrypted"\n');
    const r = await containerdOnly(containerdConfig({ dropIn, decoder: '/nonexistent/coco-decoder' }));
    const d = r['containerd']!.detail;
    expect(d).toContain(`processor "io.containerd.ocicrypt.decoder.v1.tar" declares returns = "${TAR_ENC}" for ${TAR_ENC}`);
    expect(d).toContain('processor "io.containerd.ocicrypt.decoder.v1.tar.gzip" runs "/nonexistent/coco-decoder", which is not an executable file');
  });

  it('a missing (non-glob) import stops containerd: ✗, and the CRI rung is skipped', async () => {
    const r = await containerdOnly(containerdConfig({ main: 'version = 2\nimports = ["/nonexistent/extra.toml"]\n' }));
    expect(formatRung(r['containerd']!)).toMatch(/^✗ containerd: containerd config \/nonexistent\/extra\.toml: cannot read \(ENOENT\) \(imported by .*\): containerd will not start/);
    expect(r['cri']!.status).toBe('skip');
  });

  it('key_model other than "node": no payload, so the lookup must work; ✗ naming the section and the socket problem', async () => {
    const main = `version = 2\nimports = ["conf.d/*.toml"]\n[grpc]\n  address = "${join(tmp, 'nowhere.sock')}"\n[plugins."io.containerd.grpc.v1.cri".image_decryption]\n  key_model = ""\n`;
    const r = await containerdOnly(containerdConfig({ main }));
    expect(formatRung(r['cri']!)).toMatch(
      /^✗ cri: image_decryption\.key_model = "" in \[plugins\."io\.containerd\.grpc\.v1\.cri"\] \(sources: .*\); the decoder would look layers up in containerd's content store, but it would use \/run\/containerd\/containerd\.sock \(default\) while containerd listens on .*nowhere\.sock/,
    );
  });

  it('the CRI plugin disabled (Docker\'s packaged config, a v1 file): ✗', async () => {
    const r = await containerdOnly(containerdConfig({ main: 'disabled_plugins = ["cri"]\nimports = ["conf.d/*.toml"]\n' }));
    expect(r['cri']!.detail).toContain('the CRI plugin is disabled (disabled_plugins contains "io.containerd.grpc.v1.cri")');
  });

  it('containerd 2.x: names the pull path (transfer, local, automatic fallback) and how the decoder gets the descriptor on it', async () => {
    const bin = join(tmp, `bin2-${++n}`);
    mkdirSync(bin);
    script(join(bin, 'coco-decoder'), 'echo "coco-decoder 9.9.9"');
    const env = { PATH: `${bin}:${process.env.PATH ?? ''}` };
    const sock = join(tmp, `ctd-${n}.sock`);
    // A containerd socket answering Namespaces/List, as the lookup probe expects.
    const grpc = await import('@grpc/grpc-js');
    const server = new grpc.Server();
    const raw = { path: '/containerd.services.namespaces.v1.Namespaces/List', requestStream: false, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b };
    server.addService({ List: raw }, { List: (_call: unknown, cb: (e: null, r: Buffer) => void) => cb(null, Buffer.from([0x0a, 8, 0x0a, 6, ...Buffer.from('k8s.io')])) });
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${sock}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
    try {
      const dropIn = DROP_IN.replaceAll('"COCO_DECODER_CONFIG=/etc/coco-decoder/config.toml",', `"COCO_DECODER_CONFIG=/etc/coco-decoder/config.toml", "CONTAINERD_ADDRESS=${sock}",`);
      const v3 = (extra = '', grpcAddress = sock): string =>
        containerdConfig({ main: `version = 3\nimports = ["conf.d/*.toml"]\n[grpc]\n  address = "${grpcAddress}"\n${extra}`, dropIn, decoder: join(bin, 'coco-decoder') });

      script(join(bin, 'containerd'), 'echo "containerd github.com/containerd/containerd/v2 v2.1.4 abc"');
      let r = await containerdOnly(v3(), env);
      expect(formatRung(r['cri']!)).toBe(
        `✓ cri: containerd 2.1.4 never passes it on CRI pulls (removed in 2.0, back in 2.1.7/2.2.2 for local pulls): the decoder looks each layer up in containerd's content store (${sock} answers, namespaces: k8s.io)`,
      );

      script(join(bin, 'containerd'), 'echo "containerd github.com/containerd/containerd/v2 v2.2.2 abc"');
      r = await containerdOnly(v3(), env);
      expect(formatRung(r['cri']!)).toMatch(/^✓ cri: containerd 2\.2\.2: CRI pulls through the transfer service pass no layer descriptor \(fd 3\): the decoder looks each layer up in containerd's content store/);

      r = await containerdOnly(v3(`[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = true\n`), env);
      expect(formatRung(r['cri']!)).toBe(
        '✓ cri: image_decryption.key_model = "node" (containerd default); containerd 2.2.2: CRI local pulls (use_local_image_pull = true) pass the layer descriptor to the stream processor',
      );
      r = await containerdOnly(v3(`[plugins.'io.containerd.cri.v1.images']\n  max_concurrent_downloads = 5\n`), env);
      expect(formatRung(r['cri']!)).toContain('CRI local pulls (automatic fallback: max_concurrent_downloads = 5 is set) pass the layer descriptor');
      expect(r['containerd']!.status).toBe('pass');

      // The decoder would talk to another socket than the one containerd listens on.
      r = await containerdOnly(v3('', join(tmp, 'elsewhere.sock')), env);
      expect(formatRung(r['cri']!)).toMatch(/^✗ cri: .*but it would use .* \(\$CONTAINERD_ADDRESS\) while containerd listens on .*elsewhere\.sock \(\[grpc\] address\) — fix: set \[containerd\] address/);
    } finally {
      server.forceShutdown();
    }
  });
});

describe('containerd config merging (as containerd LoadConfig)', () => {
  it('follows relative and glob imports breadth-first, in sorted order, each file once', async () => {
    const dir = mkdtempSync(join(tmp, 'merge-'));
    mkdirSync(join(dir, 'd'));
    writeFileSync(join(dir, 'main.toml'), 'version = 2\nimports = ["d/*.toml", "./d/../d/b.toml"]\n');
    writeFileSync(join(dir, 'd', 'b.toml'), '[stream_processors.x]\npath = "from-b"\n');
    writeFileSync(join(dir, 'd', 'a.toml'), 'imports = ["/nonexistent/*.toml"]\n[stream_processors.x]\npath = "from-a"\n');
    writeFileSync(join(dir, 'd', 'skip.conf'), 'not toml at all = = =');
    const cfg = await loadContainerdConfig(join(dir, 'main.toml'), 1);
    expect(cfg.files).toEqual([join(dir, 'main.toml'), join(dir, 'd/a.toml'), join(dir, 'd/b.toml')]);
    expect(cfg.processors.get('x')?.path).toBe('from-b');
    expect(await glob(join(dir, 'd', '[ab].toml'))).toEqual([join(dir, 'd/a.toml'), join(dir, 'd/b.toml')]);
  });

  it('containerd 1.x replaces a whole plugin section from a drop-in; 2.x merges it key by key', async () => {
    const dir = mkdtempSync(join(tmp, 'merge-'));
    writeFileSync(
      join(dir, 'main.toml'),
      'version = 2\nimports = ["drop.toml"]\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause"\n  [plugins."io.containerd.grpc.v1.cri".image_decryption]\n    key_model = "node"\n',
    );
    writeFileSync(join(dir, 'drop.toml'), '[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n');
    const v1 = await loadContainerdConfig(join(dir, 'main.toml'), 1);
    expect(Object.keys(v1.plugins['io.containerd.grpc.v1.cri'] as object)).toEqual(['registry']);
    const v2 = await loadContainerdConfig(join(dir, 'main.toml'), 2);
    // 2.x migrates the v2 files to v3 (image_decryption moves to the images plugin) and merges sections.
    expect(Object.keys(v2.plugins['io.containerd.grpc.v1.cri'] as object).sort()).toEqual(['registry', 'sandbox_image']);
    expect(v2.plugins['io.containerd.cri.v1.images']).toEqual({ image_decryption: { key_model: 'node' } });
  });

  it('a TOML error names the file and line (containerd would not start)', async () => {
    const dir = mkdtempSync(join(tmp, 'merge-'));
    writeFileSync(join(dir, 'main.toml'), 'version = 2\n[plugins\n');
    await expect(loadContainerdConfig(join(dir, 'main.toml'), 1)).rejects.toThrow(/^containerd config .*main\.toml: invalid TOML at line 2/);
  });
});

describe('cache', () => {
  const cacheRung = async (dir: string): Promise<RungResult> =>
    byRung(await runDoctor(options({ configPath: decoderConfig({ cache: dir }) })))['cache']!;

  it('mode 0755: ✓ with a note, since the token cache itself tightens it to 0700 (the product and doctor agree)', async () => {
    const dir = cacheDir();
    chmodSync(dir, 0o755);
    expect(formatRung(await cacheRung(dir))).toBe(`✓ cache: ${dir}: directory owned by root, on tmpfs; mode 0755, which the decoder tightens to 0700 when it first uses it`);
    const { TokenCache } = await import('../../../src/kbs/token-cache.js');
    expect(await TokenCache.open({ dir, refreshMarginSeconds: 30, onWarning: () => undefined })).toBeDefined();
    expect(statSync(dir).mode & 0o777).toBe(0o700);
  });

  it('not on tmpfs: ✗ (the token\'s private key would reach the disk)', async () => {
    if (Number(statfsSync(tmpdir()).type) === TMPFS_MAGIC) return; // nothing to show on a tmpfs /tmp
    const dir = mkdtempSync(join(tmp, 'disk-cache-'));
    chmodSync(dir, 0o700);
    expect((await cacheRung(dir)).detail).toMatch(/not on tmpfs \(filesystem type 0x[0-9a-f]+\)/);
  });

  it('absent but creatable on tmpfs: ✓', async () => {
    const dir = join(shm, `later-${++n}`, 'cache');
    expect(formatRung(await cacheRung(dir))).toBe(`✓ cache: ${dir} does not exist yet; the decoder will create it 0700 on tmpfs at the first attestation`);
  });

  it('a symlink: ✗ (the decoder refuses it)', async () => {
    const { symlinkSync } = await import('node:fs');
    const link = join(shm, `link-${++n}`);
    symlinkSync(cacheDir(), link);
    expect((await cacheRung(link)).detail).toContain('is a symbolic link');
  });
});

describe('log', () => {
  it('an audit file in a missing directory: ✗; a writable one: ✓', async () => {
    const bad = byRung(await runDoctor(options({ configPath: decoderConfig({ extra: '[log]\nfile = "/nonexistent/dir/audit.log"' }) })));
    expect(formatRung(bad['log']!)).toBe(
      '✗ log: audit file /nonexistent/dir/audit.log cannot be created: /nonexistent/dir is missing or not writable — fix: install -d -m 0750 /nonexistent/dir',
    );
    const good = byRung(await runDoctor(options({ configPath: decoderConfig({ extra: `[log]\nfile = "${join(tmp, 'a.log')}"\nformat = "json"` }) })));
    expect(formatRung(good['log']!)).toBe(`✓ log: audit file ${join(tmp, 'a.log')} will be created (0640) (format json); log.level = "error"`);
  });

  it('syslog without a /dev/log socket: ✗', async () => {
    const r = byRung(
      await runDoctor({ ...options({ configPath: decoderConfig({ extra: '[log]\nsyslog = true' }) }), syslogSocket: join(tmp, 'no-such-socket') }),
    );
    expect(r['log']!.detail).toContain(`log.syslog = true but ${join(tmp, 'no-such-socket')} is not a socket`);
  });
});
