import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { classifyKeyFile, isOpenPgpSecretKeyring, loadKeysDirectory } from '../../../src/ocicrypt/keys/keysdir.js';
import { jweKeyWrapper } from '../../../src/ocicrypt/keywrap/jwe.js';
import type { DecryptParameters, UnwrapContext } from '../../../src/ocicrypt/keywrap/keywrapper.js';
import { pkcs7KeyWrapper } from '../../../src/ocicrypt/keywrap/pkcs7.js';
import { unwrapEntry } from '../../helpers/unwrap-entry.js';

const FIX = join(import.meta.dirname, '../../fixtures');
const skopeoKey = (name: string): Buffer => readFileSync(join(FIX, 'ocicrypt', 'keys', name));
const v131Key = (name: string): Buffer => readFileSync(join(FIX, 'ocicrypt-v1.3.1', 'keys', name));

const PKCS11_YAML = 'pkcs11:\n  uri: pkcs11:token=t;object=k;type=private?pin-value=1234&module-name=softhsm2\n';

function ctx(params: DecryptParameters): UnwrapContext {
  return { params, layerDigest: 'sha256:test', signal: new AbortController().signal };
}
function readLayerAnnotations(layout: string): Record<string, string> {
  const dir = join(FIX, 'ocicrypt', layout);
  const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'));
  const manifest = JSON.parse(readFileSync(join(dir, 'blobs', ...index.manifests[0].digest.split(':')), 'utf8'));
  return manifest.layers[0].annotations;
}

let root: string;
let warnings: string[];
const warn = (m: string): void => {
  warnings.push(m);
};
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'keysdir-test-'));
  warnings = [];
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

/** Builds what the kubelet's atomic writer makes for a Secret volume. */
function kubernetesSecret(dir: string, files: Record<string, Buffer | string>): void {
  mkdirSync(dir, { recursive: true });
  const stamp = '..2024_05_01_12_00_00.123456789';
  mkdirSync(join(dir, stamp));
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, stamp, name), content);
  symlinkSync(stamp, join(dir, '..data'));
  for (const name of Object.keys(files)) symlinkSync(join('..data', name), join(dir, name));
}

describe('loadKeysDirectory', () => {
  it('loads a symlinked Kubernetes Secret layout once per key, sorted, skipping and naming unknown files', async () => {
    const dir = join(root, 'keys');
    const secretPem = skopeoKey('rsa-priv.pem');
    kubernetesSecret(dir, {
      'b-rsa.pem': secretPem,
      'a-ec-sec1.pem': skopeoKey('ec-priv.pem'),
      'c-cert.pem': skopeoKey('pkcs7-cert.pem'),
      'd-pkcs7.pem': skopeoKey('pkcs7-priv.pem'),
      'e-secring.gpg': v131Key('pgp_secring.gpg'),
      'f-hsm.yaml': PKCS11_YAML,
      'README.md': 'how to rotate the keys\n',
      'rsa-pub.pem': skopeoKey('rsa-pub.pem'),
      'empty': '',
      'enc.pem': v131Key('rsa_priv_enc_secret.pem'),
      'pubring.gpg': v131Key('pgp_pubring.gpg'),
    });
    const params = await loadKeysDirectory(dir, warn);

    expect(params['privkeys']).toEqual([skopeoKey('ec-priv.pem'), secretPem, skopeoKey('pkcs7-priv.pem')]);
    expect(params['privkeys-passwords']).toEqual([null, null, null]);
    expect(params['x509s']).toEqual([skopeoKey('pkcs7-cert.pem')]);
    expect(params['gpg-privatekeys']).toEqual([v131Key('pgp_secring.gpg')]);
    expect(params['pkcs11-yamls']).toEqual([Buffer.from(PKCS11_YAML)]);
    expect(Object.keys(params).sort()).toEqual(['gpg-privatekeys', 'pkcs11-yamls', 'privkeys', 'privkeys-passwords', 'x509s']);

    // One warning per skipped file, each naming it (through its top-level name), none quoting contents.
    const skipped = ['README.md', 'empty', 'enc.pem', 'pubring.gpg', 'rsa-pub.pem'];
    expect(warnings).toHaveLength(skipped.length);
    skipped.forEach((name, i) => expect(warnings[i]).toContain(join(dir, name)));
    expect(warnings.join('\n')).not.toContain('..2024');
    expect(warnings.find((w) => w.includes('enc.pem'))).toMatch(/encrypted private key; a password cannot be given through the keys directory/);
    expect(warnings.find((w) => w.includes('rsa-pub.pem'))).toMatch(/: public key; decryption needs the private key$/);
    expect(warnings.find((w) => w.includes('pubring.gpg'))).toMatch(/: OpenPGP public key; decryption needs the secret keyring$/);
    expect(warnings.find((w) => w.includes('README.md'))).toMatch(/: not a private key, X\.509 certificate, OpenPGP secret keyring or PKCS#11 key file$/);
    for (const w of warnings) {
      expect(w).not.toContain('rotate');
      expect(w).not.toContain('MII');
      expect(w).not.toMatch(/\n/);
    }
  });

  it('keys loaded from the directory unwrap the real fixtures (JWE via SEC1 PEM, PKCS#7 via key + cert)', async () => {
    const dir = join(root, 'keys');
    kubernetesSecret(dir, {
      'ec.pem': skopeoKey('ec-priv.pem'),
      'pkcs7-cert.pem': skopeoKey('pkcs7-cert.pem'),
      'pkcs7-priv.pem': skopeoKey('pkcs7-priv.pem'),
      'NOTES.txt': 'x',
    });
    const params = await loadKeysDirectory(dir, warn);
    const ec = readLayerAnnotations('enc-jwe-ec')['org.opencontainers.image.enc.keys.jwe']!;
    const jweOut = await unwrapEntry(jweKeyWrapper, Buffer.from(ec, 'base64'), ctx(params));
    expect(Buffer.from(JSON.parse(jweOut!.toString('utf8')).symkey, 'base64')).toHaveLength(32);
    const p7 = readLayerAnnotations('enc-pkcs7')['org.opencontainers.image.enc.keys.pkcs7']!;
    const p7Out = await unwrapEntry(pkcs7KeyWrapper, Buffer.from(p7, 'base64'), ctx(params));
    expect(Buffer.from(JSON.parse(p7Out!.toString('utf8')).symkey, 'base64')).toHaveLength(32);
  });

  it('recurses into subdirectories in lexical (byte) order and follows a symlinked root', async () => {
    const real = join(root, 'real');
    mkdirSync(join(real, 'sub'), { recursive: true });
    writeFileSync(join(real, 'sub', 'k2.pem'), skopeoKey('rsa2-priv.pem'));
    writeFileSync(join(real, 'Z.pem'), skopeoKey('rsa-priv.pem'));
    writeFileSync(join(real, 'a.der'), v131Key('ec_priv.der'));
    symlinkSync(real, join(root, 'link'));
    const params = await loadKeysDirectory(join(root, 'link'), warn);
    expect(params['privkeys']).toEqual([skopeoKey('rsa-priv.pem'), v131Key('ec_priv.der'), skopeoKey('rsa2-priv.pem')]);
    expect(warnings).toEqual([]);
  });

  it('survives symlink loops and dangling links with warnings', async () => {
    const dir = join(root, 'keys');
    mkdirSync(join(dir, 'sub'), { recursive: true });
    writeFileSync(join(dir, 'sub', 'key.pem'), skopeoKey('rsa-priv.pem'));
    symlinkSync('..', join(dir, 'sub', 'loop'));
    symlinkSync(join(dir, 'nowhere'), join(dir, 'dangling'));
    symlinkSync(join('sub', 'key.pem'), join(dir, 'alias.pem'));
    const params = await loadKeysDirectory(dir, warn);
    expect(params['privkeys']).toEqual([skopeoKey('rsa-priv.pem')]); // the alias and the file are one key
    expect(warnings.some((w) => w.includes(join(dir, 'sub', 'loop')) && /already visited/.test(w))).toBe(true);
    expect(warnings.some((w) => w.includes(join(dir, 'dangling')) && /ENOENT/.test(w))).toBe(true);
  });

  it('a missing directory is not fatal: no parameters and one warning', async () => {
    const params = await loadKeysDirectory(join(root, 'does-not-exist'), warn);
    expect(params).toEqual({});
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(join(root, 'does-not-exist'));
    expect(warnings[0]).toContain('ENOENT');
  });

  it('an empty directory gives no parameters and no warnings (no upstream `gpg-privatekeys: [""]` quirk)', async () => {
    expect(await loadKeysDirectory(root, warn)).toEqual({});
    expect(warnings).toEqual([]);
  });
});

describe('classifyKeyFile', () => {
  it('sorts each fixture key file', () => {
    expect(classifyKeyFile(v131Key('rsa_oaep256_priv.jwk'))).toEqual({ kind: 'privkeys' });
    expect(classifyKeyFile(v131Key('ec_priv.der'))).toEqual({ kind: 'privkeys' });
    expect(classifyKeyFile(v131Key('pkcs7_cert.pem'))).toEqual({ kind: 'x509s' });
    expect(classifyKeyFile(v131Key('pgp_secring.gpg'))).toEqual({ kind: 'gpg-privatekeys' });
    expect('skip' in classifyKeyFile(v131Key('pgp_pubring.gpg'))).toBe(true);
    expect('skip' in classifyKeyFile(v131Key('rsa_oaep256_pub.jwk'))).toBe(true);
    expect('skip' in classifyKeyFile(v131Key('ec_pub.der'))).toBe(true);
  });

  it('the OpenPGP check is a bounds-checked packet-header test', () => {
    const ring = v131Key('pgp_secring.gpg');
    expect(isOpenPgpSecretKeyring(ring)).toBe(true);
    expect(isOpenPgpSecretKeyring(ring.subarray(0, 10))).toBe(false); // packet longer than the data
    expect(isOpenPgpSecretKeyring(Buffer.from([0x95, 0x00, 0x04]))).toBe(false); // old format, length beyond the data
    expect(isOpenPgpSecretKeyring(Buffer.from([0x94, 0x02, 0x04, 0x00]))).toBe(true); // old format, tag 5, v4
    expect(isOpenPgpSecretKeyring(Buffer.alloc(0))).toBe(false);
    expect(isOpenPgpSecretKeyring(Buffer.from('hello'))).toBe(false);
  });
});
