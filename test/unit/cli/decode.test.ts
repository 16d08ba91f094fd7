/**
 * The stream-processor mode through the real entry point (`node --import tsx src/main.ts`), spawned the way
 * containerd spawns it: ciphertext on stdin, the payload on fd 3, plaintext read from stdout.
 */
import { spawn } from 'node:child_process';
import { createCipheriv, createHmac, randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseDecodeArgs } from '../../../src/cli/decode-args.js';
import { mergeParameters } from '../../../src/ocicrypt/decrypt-parameters.js';
import { VERSION } from '../../../src/version.js';
import { encodeAny, PAYLOAD_TYPE_URL } from '../../helpers/payload.js';

const ROOT = join(import.meta.dirname, '../../..');
const FIX = join(ROOT, 'test/fixtures');
const V131 = join(FIX, 'ocicrypt-v1.3.1');

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** The (single) layer of an OCI image layout: its descriptor and blob. */
function ociLayer(dir: string): { descriptor: Descriptor; blob: Buffer } {
  const blob = (d: string): Buffer => readFileSync(join(dir, 'blobs', d.replace(':', '/')));
  const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
  const manifest = JSON.parse(blob(index.manifests[0]!.digest).toString()) as { layers: Descriptor[] };
  const descriptor = manifest.layers[0]!;
  return { descriptor, blob: blob(descriptor.digest) };
}

/** What containerd writes to fd 3: protobuf Any{type_url, value: JSON(imgcrypt.Payload)}. */
function payloadFor(descriptor: Descriptor, parameters: Record<string, Array<string | null>> | null = null, typeUrl = PAYLOAD_TYPE_URL): Buffer {
  return encodeAny(typeUrl, Buffer.from(JSON.stringify({ DecryptConfig: { Parameters: parameters }, Descriptor: descriptor })));
}

interface CliResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
  /** performance.now() when the process was reaped ('exit') and when its stdout reached EOF. */
  exitedAt: number;
  stdoutEofAt: number;
}

interface CliOptions {
  /** Bytes for fd 3, or undefined to start the process without fd 3 (as containerd does without a payload). */
  fd3?: Buffer;
  stdin?: Buffer;
  env?: Record<string, string>;
  /** Close our end of stdout after this many bytes (containerd giving up on the stream). */
  closeStdoutAfter?: number;
  /** Leave stdin open (to prove a mode does not read it). */
  keepStdinOpen?: boolean;
  /** Stop reading stdout for this long at the start (a slow containerd), so the decoder must wait for 'drain'. */
  stallStdoutMs?: number;
}

let tmp: string;
let emptyConfig: string;

function runCli(args: string[], o: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const stdio: Array<'pipe'> = o.fd3 === undefined ? ['pipe', 'pipe', 'pipe'] : ['pipe', 'pipe', 'pipe', 'pipe'];
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], {
      cwd: ROOT,
      stdio,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', COCO_DECODER_CONFIG: emptyConfig, ...o.env },
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('coco-decoder did not exit within 20 s'));
    }, 20_000);
    const out: Buffer[] = [];
    let outBytes = 0;
    const err: Buffer[] = [];
    let exitedAt = NaN;
    let stdoutEofAt = NaN;
    child.on('exit', () => {
      exitedAt = performance.now();
    });
    child.stdout!.on('end', () => {
      stdoutEofAt = performance.now();
    });
    child.stdout!.on('data', (c: Buffer) => {
      out.push(c);
      outBytes += c.length;
      if (o.closeStdoutAfter !== undefined && outBytes >= o.closeStdoutAfter) child.stdout!.destroy();
    });
    child.stderr!.on('data', (c: Buffer) => err.push(c));
    if (o.stallStdoutMs !== undefined) {
      child.stdout!.pause();
      setTimeout(() => child.stdout!.resume(), o.stallStdoutMs);
    }
    child.stdin!.on('error', () => {}); // the decoder may exit before reading all of stdin
    if (o.fd3 !== undefined) {
      const fd3 = child.stdio[3] as NodeJS.WritableStream & { on: (e: string, f: () => void) => void };
      fd3.on('error', () => {});
      fd3.end(o.fd3);
    }
    if (o.stdin !== undefined) child.stdin!.write(o.stdin);
    if (!o.keepStdinOpen) child.stdin!.end();
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString(), exitedAt, stdoutEofAt });
    });
  });
}

/** Exactly one line on stderr, prefixed like every coco-decoder failure. */
function oneErrorLine(r: CliResult): string {
  expect(r.code).toBe(1);
  expect(r.stderr.endsWith('\n')).toBe(true);
  const lines = r.stderr.slice(0, -1).split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^coco-decoder: /);
  return lines[0]!;
}

/**
 * A layer wrapped for the toy key provider (identity wrap: the annotation *is* privopts), so arbitrary layers can
 * go through the real CLI without any private key.
 */
function toyLayer(plaintext: Buffer, mediaType = 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted') {
  const key = randomBytes(32);
  const nonce = randomBytes(16);
  const c = createCipheriv('aes-256-ctr', key, nonce);
  const ciphertext = Buffer.concat([c.update(plaintext), c.final()]);
  const hmac = createHmac('sha256', key).update(ciphertext).digest();
  const privopts = JSON.stringify({ symkey: key.toString('base64'), digest: '', cipheroptions: { nonce: nonce.toString('base64') } });
  const pubopts = JSON.stringify({ cipher: 'AES_256_CTR_HMAC_SHA256', hmac: hmac.toString('base64'), cipheroptions: {} });
  const descriptor: Descriptor = {
    mediaType,
    digest: 'sha256:' + '0'.repeat(64),
    size: ciphertext.length,
    annotations: {
      'org.opencontainers.image.enc.keys.provider.toy': Buffer.from(privopts).toString('base64'),
      'org.opencontainers.image.enc.pubopts': Buffer.from(pubopts).toString('base64'),
    },
  };
  return { ciphertext, descriptor };
}

let toyEnv: Record<string, string>;

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'coco-decode-cli-'));
  emptyConfig = join(tmp, 'config.toml');
  writeFileSync(emptyConfig, '');
  const kpConfig = join(tmp, 'ocicrypt_keyprovider.conf');
  writeFileSync(kpConfig, JSON.stringify({ 'key-providers': { toy: { cmd: { path: join(V131, 'keyprovider-toy/provider.sh') } } } }));
  toyEnv = { OCICRYPT_KEYPROVIDER_CONFIG: kpConfig };
});

afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

/** A fresh keys directory holding copies of `files` (the fixtures stay untouched). */
function keysDir(name: string, ...files: string[]): string {
  const dir = join(tmp, name);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { mode: 0o700 });
  for (const f of files) copyFileSync(f, join(dir, basename(f)));
  return dir;
}

describe('argument handling (ctd-decoder compatible)', () => {
  it('accepts the Go flag spellings; the last value wins', () => {
    expect(parseDecodeArgs(['--decryption-keys-path', '/a']).keysPath).toBe('/a');
    expect(parseDecodeArgs(['--decryption-keys-path=/b']).keysPath).toBe('/b');
    expect(parseDecodeArgs(['-decryption-keys-path', '/c']).keysPath).toBe('/c');
    expect(parseDecodeArgs(['-decryption-keys-path=/d', '--decryption-keys-path', '/e']).keysPath).toBe('/e');
    expect(parseDecodeArgs(['--decryption-keys-path=']).keysPath).toBe('');
    expect(parseDecodeArgs(['--config', '/etc/x.toml', '--log-level=debug'])).toMatchObject({ configPath: '/etc/x.toml', logLevel: 'debug' });
    expect(parseDecodeArgs(['positional', '--bogus']).help).toBe(false); // parsing stops at the first positional
    expect(parseDecodeArgs(['help']).help).toBe(true);
    expect(parseDecodeArgs(['-h']).help).toBe(true);
    expect(() => parseDecodeArgs(['--decryption-keys-path'])).toThrow('flag needs an argument: -decryption-keys-path');
    expect(() => parseDecodeArgs(['--log-level', 'loud'])).toThrow(/invalid value "loud" for -log-level/);
    expect(() => parseDecodeArgs(['-foo'])).toThrow('flag provided but not defined: -foo');
  });

  it('merges parameters keys-directory first, lists appended per name', () => {
    const a = Buffer.from('a');
    const b = Buffer.from('b');
    expect(mergeParameters({ privkeys: [a], 'privkeys-passwords': [null] }, { privkeys: [b], 'privkeys-passwords': [null], x509s: [b] })).toEqual({
      privkeys: [a, b],
      'privkeys-passwords': [null, null],
      x509s: [b],
    });
  });

  it('--help prints usage (with the subcommands) to stdout and exits 0 without reading stdin', async () => {
    const r = await runCli(['--help'], { keepStdinOpen: true });
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toMatch(/^Usage: coco-decoder/);
    expect(r.stdout.toString()).toContain('--decryption-keys-path DIR');
    expect(r.stdout.toString()).toMatch(/coco-decoder evidence/);
    expect(r.stdout.toString()).toMatch(/coco-decoder doctor/);
    expect(r.stderr).toBe('');
  });

  it('--version prints the version', async () => {
    const r = await runCli(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.toString()).toBe(`coco-decoder ${VERSION} (node ${process.version}, openssl ${process.versions.openssl})\n`);
  });

  it('an unknown flag is one line on stderr, nothing on stdout, exit 1', async () => {
    const r = await runCli(['--foo']);
    expect(oneErrorLine(r)).toBe('coco-decoder: flag provided but not defined: -foo (see --help)');
    expect(r.stdout.length).toBe(0);
  });
});

describe('payload problems', () => {
  it('fd 3 absent and no containerd socket: names the missing payload, the socket searched and the processor ids', async () => {
    const { blob } = ociLayer(join(FIX, 'ocicrypt/enc-jwe-rsa'));
    const sock = join(tmp, 'no-containerd.sock');
    const r = await runCli(['--decryption-keys-path', '/nonexistent'], { stdin: blob, env: { CONTAINERD_ADDRESS: sock } });
    const line = oneErrorLine(r);
    expect(line).toMatch(/^coco-decoder: read payload: no payload: fd 3 /);
    expect(line).toContain(`finding the layer in containerd's content store failed: containerd socket ${sock} ($CONTAINERD_ADDRESS) does not exist`);
    expect(line).toContain('io.containerd.ocicrypt.decoder.v1.tar.gzip');
    expect(r.stdout.length).toBe(0);
  });

  it('fd 3 absent with [containerd] lookup = false: the ctd-decoder behaviour, with the payload help', async () => {
    const { blob } = ociLayer(join(FIX, 'ocicrypt/enc-jwe-rsa'));
    const cfg = join(tmp, 'no-lookup.toml');
    writeFileSync(cfg, '[containerd]\nlookup = false\n');
    const r = await runCli(['--decryption-keys-path', '/nonexistent'], { stdin: blob, env: { COCO_DECODER_CONFIG: cfg } });
    const line = oneErrorLine(r);
    expect(line).toMatch(/^coco-decoder: read payload: no payload: fd 3 /);
    expect(line).not.toContain('content store');
    expect(line).toContain('io.containerd.ocicrypt.decoder.v1.tar.gzip');
    expect(line).toContain('tar+zstd+encrypted');
    expect(line).toContain('use_local_image_pull');
    expect(r.stdout.length).toBe(0);
  });

  it('a wrong type URL keeps the ctd-decoder prefix', async () => {
    const { descriptor } = ociLayer(join(FIX, 'ocicrypt/enc-jwe-rsa'));
    const r = await runCli([], { fd3: payloadFor(descriptor, null, 'example.com/Other'), stdin: Buffer.alloc(0) });
    expect(oneErrorLine(r)).toBe(
      'coco-decoder: could not UnmarshalAny() the decrypt data: type with url example.com/Other: not found (expected io.containerd.ocicrypt.v1.Payload)',
    );
  });

  it('an unsupported media type names the layer and what is accepted', async () => {
    const { descriptor } = ociLayer(join(FIX, 'ocicrypt/enc-jwe-rsa'));
    const r = await runCli([], { fd3: payloadFor({ ...descriptor, mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted' }) });
    expect(oneErrorLine(r)).toMatch(
      new RegExp(`^coco-decoder: layer ${descriptor.digest}: call to DecryptLayer failed: unsupported layer media type ".*"; accepted: .*tar\\+gzip\\+encrypted`),
    );
  });

  it('no key for the layer: ocicrypt summary naming what was missing, one line', async () => {
    const { descriptor, blob } = ociLayer(join(FIX, 'ocicrypt/enc-jwe-rsa'));
    const r = await runCli([], { fd3: payloadFor(descriptor), stdin: blob });
    expect(oneErrorLine(r)).toBe(
      `coco-decoder: layer ${descriptor.digest}: call to DecryptLayer failed: missing private key needed for decryption: no private key was given for jwe (see --decryption-keys-path)`,
    );
    expect(r.stdout.length).toBe(0);
  });
});

describe('stdout EOF ordering (containerd 1.6 reads Err() at stdout EOF, containerd#6914)', () => {
  it('on failure, stdout reaches EOF only well after the process has exited (stderr is drained first)', async () => {
    const { descriptor, blob } = ociLayer(join(FIX, 'ocicrypt/enc-jwe-rsa'));
    const r = await runCli([], { fd3: payloadFor(descriptor), stdin: blob });
    expect(oneErrorLine(r)).toContain('missing private key needed for decryption');
    expect(r.stdout.length).toBe(0);
    // The helper holds stdout for 300 ms after our exit; 150 ms leaves room for a loaded machine.
    expect(r.stdoutEofAt - r.exitedAt).toBeGreaterThanOrEqual(150);
  });

  it('on success, stdout ends with the process: no helper, no added latency', async () => {
    const r = await runCli([], { fd3: readFileSync(join(V131, 'payload-ctr-enc.bin')), stdin: readFileSync(join(V131, 'layer.tar.gz.enc')) });
    expect(r.code).toBe(0);
    expect(r.stdout.equals(readFileSync(join(V131, 'layer.tar.gz')))).toBe(true);
    expect(r.stdoutEofAt - r.exitedAt).toBeLessThan(150);
  });

  it('the hidden helper mode (used when /bin/sleep is absent) only holds stdout: silent, exit 0, about 300 ms', async () => {
    const t0 = performance.now();
    const r = await runCli(['__coco-decoder-hold-stdout'], { keepStdinOpen: true });
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(r.stdout.length).toBe(0);
    expect(r.exitedAt - t0).toBeGreaterThanOrEqual(300);
  });
});

describe('decrypting real skopeo/containerd fixtures', () => {
  const plainLayer = (): Buffer => ociLayer(join(FIX, 'ocicrypt/plain')).blob;

  it('enc-jwe-rsa with the exact fd-3 bytes containerd 1.6.20 sent and a keys directory', async () => {
    const { blob } = ociLayer(join(FIX, 'ocicrypt/enc-jwe-rsa'));
    const dir = keysDir('keys-rsa', join(FIX, 'ocicrypt/keys/rsa-priv.pem'));
    const fd3 = readFileSync(join(FIX, 'ocicrypt/containerd-1.6.20-payload-enc-jwe-rsa.bin'));
    for (const args of [
      ['--decryption-keys-path', dir],
      [`--decryption-keys-path=${dir}`],
      ['-decryption-keys-path', '/nonexistent', '-decryption-keys-path', dir],
    ]) {
      const r = await runCli(args, { fd3, stdin: blob });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout.equals(plainLayer())).toBe(true);
    }
  });

  it('enc-zstd (tar+zstd+encrypted) and enc-multi (second RSA key only)', async () => {
    const zstd = ociLayer(join(FIX, 'ocicrypt/enc-zstd'));
    const rsaDir = keysDir('keys-rsa', join(FIX, 'ocicrypt/keys/rsa-priv.pem'));
    const z = await runCli(['--decryption-keys-path', rsaDir], { fd3: payloadFor(zstd.descriptor), stdin: zstd.blob });
    expect(z.stderr).toBe('');
    expect(z.stdout.subarray(0, 4).toString('hex')).toBe('28b52ffd'); // zstd magic: output is not decompressed
    expect(z.stdout.length).toBe(zstd.descriptor.size);

    const multi = ociLayer(join(FIX, 'ocicrypt/enc-multi'));
    const rsa2Dir = keysDir('keys-rsa2', join(FIX, 'ocicrypt/keys/rsa2-priv.pem'));
    const m = await runCli(['--decryption-keys-path', rsa2Dir], { fd3: payloadFor(multi.descriptor), stdin: multi.blob });
    expect(m.stderr).toBe('');
    expect(m.stdout.equals(plainLayer())).toBe(true);
  });

  it('ocicrypt v1.3.1 layer with the key inside the ctr-enc payload (no keys directory)', async () => {
    const r = await runCli([], { fd3: readFileSync(join(V131, 'payload-ctr-enc.bin')), stdin: readFileSync(join(V131, 'layer.tar.gz.enc')) });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.equals(readFileSync(join(V131, 'layer.tar.gz')))).toBe(true);
  });

  it('a tampered blob: exit 1, one line with the expected HMAC only (never the one computed over the attacker’s bytes), and the output withheld', async () => {
    const { blob } = ociLayer(join(FIX, 'ocicrypt/enc-jwe-rsa'));
    const tampered = Buffer.from(blob);
    tampered[100]! ^= 1;
    const dir = keysDir('keys-rsa', join(FIX, 'ocicrypt/keys/rsa-priv.pem'));
    const r = await runCli(['--decryption-keys-path', dir], {
      fd3: readFileSync(join(FIX, 'ocicrypt/containerd-1.6.20-payload-enc-jwe-rsa.bin')),
      stdin: tampered,
    });
    expect(oneErrorLine(r)).toMatch(
      /^coco-decoder: layer sha256:[0-9a-f]{64}: could not copy data: could not properly decrypt byte stream; exp hmac: '[0-9a-f]{64}': the layer's ciphertext does not match its HMAC \(tampered or truncated\)$/,
    );
    expect(r.stdout.length).toBeLessThanOrEqual(plainLayer().length - 64 * 1024);
  });
});

describe('keys-free layers through a key provider (toy identity wrap)', () => {
  it('decrypts the ocicrypt v1.3.1 keyprovider-toy layer', async () => {
    const descriptor = JSON.parse(readFileSync(join(V131, 'keyprovider-toy/descriptor.json'), 'utf8')) as Descriptor;
    const r = await runCli([], { fd3: payloadFor(descriptor), stdin: readFileSync(join(V131, 'keyprovider-toy/layer.tar.gz.enc')), env: toyEnv });
    expect(r.stderr).toBe('');
    expect(r.stdout.equals(readFileSync(join(V131, 'layer.tar.gz')))).toBe(true);
  });

  it('honours --config: the config is read for key-provider layers only', async () => {
    const bad = join(tmp, 'bad.toml');
    writeFileSync(bad, '[nonsense]\n');
    const { ciphertext, descriptor } = toyLayer(randomBytes(1000));
    const r = await runCli(['--config', bad], { fd3: payloadFor(descriptor), stdin: ciphertext, env: toyEnv });
    expect(oneErrorLine(r)).toMatch(new RegExp(`^coco-decoder: layer sha256:0{64}: config ${bad}: .*nonsense`));

    const { blob } = ociLayer(join(FIX, 'ocicrypt/enc-jwe-rsa'));
    const dir = keysDir('keys-rsa', join(FIX, 'ocicrypt/keys/rsa-priv.pem'));
    const jwe = await runCli(['--config', bad, '--decryption-keys-path', dir], {
      fd3: readFileSync(join(FIX, 'ocicrypt/containerd-1.6.20-payload-enc-jwe-rsa.bin')),
      stdin: blob,
    });
    expect(jwe.stderr).toBe('');
    expect(jwe.code).toBe(0);
  });
});

// Both copy paths of stdin to stdout: the addon's fd pump (what runs whenever the addon loads) and the Node-stream
// fallback with node:crypto (no addon, or COCO_DECODER_NATIVE_CIPHER=0), each through real pipes.
describe.each([
  ['the native fd pump', {}],
  ['node:crypto and Node streams (COCO_DECODER_NATIVE_CIPHER=0)', { COCO_DECODER_NATIVE_CIPHER: '0' }],
] as const)('streaming a layer: %s', (_name, cipherEnv) => {
    it('streams a multi-MiB layer exactly; truncation is an error with the tail withheld', async () => {
      const plaintext = randomBytes(3 * 1024 * 1024 + 7);
      const { ciphertext, descriptor } = toyLayer(plaintext, 'application/vnd.oci.image.layer.v1.tar+encrypted');
      const ok = await runCli([], { fd3: payloadFor(descriptor), stdin: ciphertext, env: { ...toyEnv, ...cipherEnv } });
      expect(ok.stderr).toBe('');
      expect(ok.stdout.equals(plaintext)).toBe(true);

      const cut = await runCli([], { fd3: payloadFor(descriptor), stdin: ciphertext.subarray(0, ciphertext.length - 1), env: { ...toyEnv, ...cipherEnv } });
      expect(oneErrorLine(cut)).toMatch(/could not properly decrypt byte stream/);
      expect(cut.stdout.length).toBeLessThanOrEqual(plaintext.length - 64 * 1024);
      expect(cut.stdout.equals(plaintext.subarray(0, cut.stdout.length))).toBe(true);
    });

    it('waits for a slow reader (backpressure) and still delivers the exact layer', async () => {
      const plaintext = randomBytes(6 * 1024 * 1024);
      const { ciphertext, descriptor } = toyLayer(plaintext);
      const r = await runCli([], { fd3: payloadFor(descriptor), stdin: ciphertext, env: { ...toyEnv, ...cipherEnv }, stallStdoutMs: 1500 });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout.equals(plaintext)).toBe(true);
    });

    it('exits 1 with a one-line error when the reader closes stdout (EPIPE)', async () => {
      const { ciphertext, descriptor } = toyLayer(randomBytes(8 * 1024 * 1024));
      const r = await runCli([], { fd3: payloadFor(descriptor), stdin: ciphertext, env: { ...toyEnv, ...cipherEnv }, closeStdoutAfter: 1 });
      expect(oneErrorLine(r)).toMatch(/^coco-decoder: layer sha256:0{64}: could not copy data: write output: .*EPIPE/);
    });
});
