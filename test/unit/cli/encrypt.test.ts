/**
 * `coco-decoder encrypt` through the built executable: the real skopeo fixture image in, an image out that our
 * decoder (attestation-agent path, test KBS) and Debian's skopeo (Go ocicrypt, the extra JWE recipient) both
 * decrypt back to the original layer bytes; multi-arch indexes; and every kind of bad input as one line with
 * nothing left at the destination.
 */
import { spawnSync } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { locateDecoder } from '../../helpers/decoder-binary.js';
import { runDecoder } from '../../helpers/run-decoder.js';
import { startTestKbs, type TestKbs } from '../../kbs/server.js';

const PLAIN = path.join(import.meta.dirname, '../../fixtures/ocicrypt/plain');
const KID = 'kbs:///default/image-kek/encrypt-cli';
const AA = 'org.opencontainers.image.enc.keys.provider.attestation-agent';
const skopeo = ['/usr/bin/skopeo', '/usr/local/bin/skopeo'].find((p) => existsSync(p));

let bin: string;
let dir: string;
let kek: Buffer;
let kekFile: string;
let pubFile: string;
let privFile: string;
let kbs: TestKbs;

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const json = (file: string): any => JSON.parse(readFileSync(file, 'utf8'));
const blob = (layout: string, digest: string): Buffer => readFileSync(path.join(layout, 'blobs', 'sha256', digest.slice(7)));

function encrypt(args: string[]) {
  return spawnSync(bin, ['encrypt', ...args], { encoding: 'utf8', timeout: 60_000, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' } });
}

function manifestOf(layout: string, desc?: { digest: string }): any {
  return json(path.join(layout, 'blobs', 'sha256', (desc ?? json(path.join(layout, 'index.json')).manifests[0]).digest.slice(7)));
}

/** A decoder config for the test KBS (sample TEE, a cache of its own), plus `extra` TOML. */
function decoderConfig(name: string, extra = ''): string {
  const file = path.join(dir, name);
  writeFileSync(file, `[kbs]\nurl = "${kbs.url}"\nallow_http = true\n[attestation]\ntee = "sample"\n[cache]\ndir = "${path.join(dir, `cache-${name}`)}"\n${extra}`);
  return file;
}

/** One encrypted layer of `layout` through the built decoder, as containerd runs it. */
function decryptLayer(config: string, layout: string, layer: { mediaType: string; digest: string; size: number; annotations: Record<string, string> }) {
  return runDecoder({
    binary: bin,
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', COCO_DECODER_CONFIG: config },
    descriptor: { mediaType: layer.mediaType, digest: layer.digest, size: layer.size, annotations: layer.annotations },
    input: blob(layout, layer.digest),
    output: 'buffer',
  });
}

beforeAll(async () => {
  bin = locateDecoder().path;
  dir = mkdtempSync(path.join(tmpdir(), 'encrypt-cli-'));
  kek = randomBytes(32);
  kekFile = path.join(dir, 'kek.bin');
  writeFileSync(kekFile, kek, { mode: 0o600 });
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  pubFile = path.join(dir, 'pub.pem');
  privFile = path.join(dir, 'priv.pem');
  writeFileSync(pubFile, publicKey.export({ format: 'pem', type: 'spki' }));
  writeFileSync(privFile, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  kbs = await startTestKbs({ resources: { 'default/image-kek/encrypt-cli': kek } });
});

afterAll(async () => {
  await kbs?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('coco-decoder encrypt', () => {
  it('writes coco_keyprovider packets and ocicrypt annotations that our decoder decrypts back to the original layer', async () => {
    const out = path.join(dir, 'enc');
    const r = encrypt(['--kid', KID, '--kek-file', kekFile, '--recipient', `jwe:${pubFile}`, `oci:${PLAIN}:latest`, `oci:${out}:v1`]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^coco-decoder encrypt: 1 layer\(s\) encrypted into oci:.*:v1 \(sha256:[0-9a-f]{64}\)\n$/);

    const index = json(path.join(out, 'index.json'));
    expect(index.manifests).toHaveLength(1);
    expect(index.manifests[0].annotations).toEqual({ 'org.opencontainers.image.ref.name': 'v1' });
    const plainManifest = manifestOf(PLAIN);
    const manifest = manifestOf(out);
    expect(manifest.config).toEqual(plainManifest.config);
    const [plainLayer] = plainManifest.layers;
    const [layer] = manifest.layers;
    expect(layer.mediaType).toBe(`${plainLayer.mediaType}+encrypted`);
    expect(sha256(blob(out, layer.digest))).toBe(layer.digest);
    expect(Object.keys(layer.annotations)).toEqual([
      'org.opencontainers.image.enc.keys.jwe',
      AA,
      'org.opencontainers.image.enc.pubopts',
    ]);
    const packet = JSON.parse(Buffer.from(layer.annotations[AA], 'base64').toString());
    expect(Object.keys(packet)).toEqual(['kid', 'wrapped_data', 'iv', 'wrap_type']);
    expect(packet).toMatchObject({ kid: KID, wrap_type: 'A256GCM' });
    expect(Buffer.from(packet.iv, 'base64')).toHaveLength(12);
    expect(JSON.parse(Buffer.from(layer.annotations['org.opencontainers.image.enc.pubopts'], 'base64').toString())).toMatchObject({
      cipher: 'AES_256_CTR_HMAC_SHA256',
      cipheroptions: {},
    });
    // Nothing in clear: no KEK bytes in any output file.
    for (const f of readdirSync(path.join(out, 'blobs', 'sha256'))) {
      const bytes = readFileSync(path.join(out, 'blobs', 'sha256', f));
      for (const form of [kek, Buffer.from(kek.toString('base64')), Buffer.from(kek.toString('hex'))]) expect(bytes.includes(form)).toBe(false);
    }

    // Decrypt through the real stream-processor path, strict mode on: the private options name the plain digest.
    const d = await decryptLayer(decoderConfig('decoder.toml', '[integrity]\ncheck_plain_digest = true\n'), out, layer);
    expect(d.stderr).toBe('');
    expect(d.code).toBe(0);
    expect(d.stdout!.equals(blob(PLAIN, plainLayer.digest))).toBe(true);
  });

  it.skipIf(!skopeo)('the extra JWE recipient is decrypted by Debian skopeo (Go ocicrypt) to the original layer', () => {
    const out = path.join(dir, 'enc-jwe');
    expect(encrypt(['--recipient', `jwe:${pubFile}`, `oci:${PLAIN}:latest`, `oci:${out}:latest`]).status).toBe(0);
    const dec = path.join(dir, 'dec-skopeo');
    const home = mkdtempSync(path.join(dir, 'skopeo-home-'));
    const r = spawnSync(skopeo!, ['copy', '--decryption-key', privFile, `oci:${out}:latest`, `oci:${dec}:latest`], {
      encoding: 'utf8',
      timeout: 60_000,
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: home },
    });
    expect(r.status, r.stderr).toBe(0);
    const layer = manifestOf(dec).layers[0];
    expect(blob(dec, layer.digest).equals(blob(PLAIN, manifestOf(PLAIN).layers[0].digest))).toBe(true);
  });

  it('walks an image index (multi-arch): every platform manifest is encrypted and decrypts back, platforms and annotations kept', async () => {
    const src = path.join(dir, 'multi-src');
    cpSync(PLAIN, src, { recursive: true });
    const m = json(path.join(src, 'index.json')).manifests[0];
    const child = (arch: string) => ({ mediaType: m.mediaType, digest: m.digest, size: m.size, platform: { os: 'linux', architecture: arch } });
    const idx = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [child('amd64'), child('arm64')], annotations: { 'org.example.keep': 'yes' } }));
    writeFileSync(path.join(src, 'blobs', 'sha256', sha256(idx).slice(7)), idx);
    writeFileSync(path.join(src, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', digest: sha256(idx), size: idx.length, annotations: { 'org.opencontainers.image.ref.name': 'multi' } }] }));
    const out = path.join(dir, 'multi-enc');
    const r = encrypt(['--kid', KID, '--kek-file', kekFile, `oci:${src}:multi`, `oci:${out}`]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/2 layer\(s\) encrypted into oci:.*:multi/);
    const top = json(path.join(out, 'index.json')).manifests[0];
    const newIdx = manifestOf(out, top);
    expect(newIdx.annotations).toEqual({ 'org.example.keep': 'yes' });
    expect(newIdx.manifests.map((c: any) => c.platform.architecture)).toEqual(['amd64', 'arm64']);
    const plainLayer = blob(PLAIN, manifestOf(PLAIN).layers[0].digest);
    const config = decoderConfig('multi-decoder.toml');
    for (const c of newIdx.manifests) {
      const man = manifestOf(out, c);
      const layer = man.layers[0];
      expect(layer.mediaType).toMatch(/\+encrypted$/);
      expect(sha256(blob(out, c.digest))).toBe(c.digest);
      // Round trip: each platform's layer decrypts back to the original bytes.
      const d = await decryptLayer(config, out, layer);
      expect(d.stderr).toBe('');
      expect(d.stdout!.equals(plainLayer)).toBe(true);
    }
    // Two encryptions of the same plain manifest: two different layer keys, two different ciphertexts.
    expect(manifestOf(out, newIdx.manifests[0]).layers[0].digest).not.toBe(manifestOf(out, newIdx.manifests[1]).layers[0].digest);
  });

  it('oci-archive: in and out (a tar of the layout, as skopeo writes and reads it)', async () => {
    // Our own archive of the plain fixture as input (tar(1) of the layout directory), an archive as output.
    const srcTar = path.join(dir, 'plain.tar');
    expect(spawnSync('tar', ['-C', PLAIN, '-cf', srcTar, 'oci-layout', 'index.json', 'blobs']).status).toBe(0);
    const outTar = path.join(dir, 'enc.tar');
    const r = encrypt(['--kid', KID, '--kek-file', kekFile, `oci-archive:${srcTar}:latest`, `oci-archive:${outTar}:v2`]);
    expect(r.status, r.stderr).toBe(0);
    const unpacked = path.join(dir, 'enc-unpacked');
    mkdirSync(unpacked);
    expect(spawnSync('tar', ['-C', unpacked, '-xf', outTar]).status).toBe(0);
    const index = json(path.join(unpacked, 'index.json'));
    expect(index.manifests[0].annotations['org.opencontainers.image.ref.name']).toBe('v2');
    const layer = manifestOf(unpacked).layers[0];
    expect(layer.annotations[AA]).toBeDefined();
    expect(sha256(blob(unpacked, layer.digest))).toBe(layer.digest);
    if (skopeo) {
      const home = mkdtempSync(path.join(dir, 'skopeo-arch-'));
      const inspect = spawnSync(skopeo, ['inspect', '--raw', `oci-archive:${outTar}:v2`], { encoding: 'utf8', env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: home } });
      expect(inspect.status, inspect.stderr).toBe(0);
      expect(JSON.parse(inspect.stdout).layers[0].digest).toBe(layer.digest);
    }
  });

  it('an archive with an entry outside the layout (path traversal) is refused before anything is written', () => {
    const evilDir = path.join(dir, 'evil');
    cpSync(PLAIN, evilDir, { recursive: true });
    writeFileSync(path.join(dir, 'outside.txt'), 'x');
    const evilTar = path.join(dir, 'evil.tar');
    // GNU tar strips "../" when creating, so the hostile entry is written with Python's tarfile.
    const py = `import tarfile,sys\nt=tarfile.open(sys.argv[1],'w')\nfor n in ['oci-layout','index.json','blobs']: t.add(sys.argv[2]+'/'+n, arcname=n)\nt.add(sys.argv[3], arcname='../outside.txt')\nt.close()`;
    const made = spawnSync('python3', ['-c', py, evilTar, evilDir, path.join(dir, 'outside.txt')], { encoding: 'utf8' });
    expect(made.status, made.stderr).toBe(0);
    const out = path.join(dir, 'evil-out.tar');
    const r = encrypt(['--kid', KID, '--kek-file', kekFile, `oci-archive:${evilTar}:latest`, `oci-archive:${out}`]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/unexpected entry "\.\.\/outside\.txt" \(file\) for an OCI layout/);
    expect(existsSync(out)).toBe(false);
  });

  it('--layers encrypts only the listed layers', () => {
    const out = path.join(dir, 'none-enc');
    const r = encrypt(['--kid', KID, '--kek-file', kekFile, '--layers', '5', `oci:${PLAIN}:latest`, `oci:${out}`]);
    expect(r.status, r.stderr).toBe(0);
    expect(manifestOf(out).layers[0]).toEqual(manifestOf(PLAIN).layers[0]);
  });

  describe('bad input: one line, exit 1, nothing at the destination', () => {
    const cases: Array<[string, () => string[], RegExp]> = [
      ['a KEK of the wrong length', () => { writeFileSync(path.join(dir, 'short.bin'), Buffer.alloc(16)); return ['--kid', KID, '--kek-file', path.join(dir, 'short.bin')]; }, /must hold exactly 32 raw bytes \(it has 16/],
      ['a malformed kid', () => ['--kid', 'kbs:///only/two', '--kek-file', kekFile], /invalid KBS resource URI "kbs:\/\/\/only\/two" in kid: expected exactly 3 path segments/],
      ['no recipient at all', () => [], /nothing to encrypt for/],
      ['an unsupported recipient', () => ['--recipient', 'pgp:x'], /only jwe:PUBKEY\.pem recipients/],
    ];
    it.each(cases)('%s', (_name, args, re) => {
      const out = path.join(dir, `bad-${randomBytes(4).toString('hex')}`);
      const r = encrypt([...args(), `oci:${PLAIN}:latest`, `oci:${out}`]);
      expect(r.status).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(re);
      expect(existsSync(out)).toBe(false);
    });

    it('a missing layout, a missing tag, and an existing destination', () => {
      const out = path.join(dir, 'bad-out');
      expect(encrypt(['--kid', KID, '--kek-file', kekFile, `oci:${path.join(dir, 'nope')}`, `oci:${out}`]).stderr).toMatch(/oci-layout is missing \(ENOENT\)/);
      expect(encrypt(['--kid', KID, '--kek-file', kekFile, `oci:${PLAIN}:nope`, `oci:${out}`]).stderr).toMatch(/no image tagged "nope" in .* \(tags: "latest"\)/);
      mkdirSync(out);
      expect(encrypt(['--kid', KID, '--kek-file', kekFile, `oci:${PLAIN}:latest`, `oci:${out}`]).stderr).toMatch(/already exists: choose a new destination/);
      expect(readdirSync(out)).toEqual([]);
    });

    it('a layer blob that does not match its digest fails the whole image, leaving no half-written output', () => {
      const src = path.join(dir, 'corrupt-src');
      cpSync(PLAIN, src, { recursive: true });
      const layer = manifestOf(src).layers[0];
      const f = path.join(src, 'blobs', 'sha256', layer.digest.slice(7));
      const b = readFileSync(f);
      b[10]! ^= 1;
      writeFileSync(f, b);
      const out = path.join(dir, 'corrupt-out');
      const r = encrypt(['--kid', KID, '--kek-file', kekFile, `oci:${src}:latest`, `oci:${out}`]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`layer blob ${layer.digest} in .* does not match its descriptor`));
      expect(existsSync(out)).toBe(false);
      expect(readdirSync(dir).filter((n) => n.includes('corrupt-out'))).toEqual([]); // no temporary directory left
    });
  });

  it('--kek-generate writes 32 random bytes 0600, prints how to provision them, and never overwrites', () => {
    const file = path.join(dir, 'new-kek.bin');
    const r = spawnSync(bin, ['encrypt', '--kek-generate', file, '--kid', KID], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(statSync(file).size).toBe(32);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(r.stdout).toContain('set-resource --path default/image-kek/encrypt-cli --resource-file');
    const before = readFileSync(file);
    const again = spawnSync(bin, ['encrypt', '--kek-generate', file], { encoding: 'utf8' });
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/already exists: a KEK is never overwritten/);
    expect(readFileSync(file).equals(before)).toBe(true);
  });
});
