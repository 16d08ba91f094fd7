import { createHash, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { CompactEncrypt, FlattenedEncrypt, GeneralEncrypt } from 'jose';
import { describe, expect, it } from 'vitest';
import { jweKeyWrapper } from '../../../src/ocicrypt/keywrap/jwe.js';
import type { DecryptParameters, UnwrapContext } from '../../../src/ocicrypt/keywrap/keywrapper.js';
import { DecoderError, describeError } from '../../../src/util/errors.js';
import { unwrapEntry } from '../../helpers/unwrap-entry.js';
import { decryptLayerBlob } from '../../helpers/layer-cipher.js';

const FIX = join(import.meta.dirname, '../../fixtures');
const SKOPEO = join(FIX, 'ocicrypt');
const V131 = join(FIX, 'ocicrypt-v1.3.1');
const skopeoKey = (name: string): Buffer => readFileSync(join(SKOPEO, 'keys', name));
const v131Key = (name: string): Buffer => readFileSync(join(V131, 'keys', name));

// --- tiny OCI layout reader: index.json -> manifest -> first layer descriptor + blob ---
interface Layer {
  readonly annotations: Record<string, string>;
  readonly blob: Buffer;
}
function blobPath(layout: string, digest: string): string {
  return join(layout, 'blobs', ...digest.split(':'));
}
function readLayer(layout: string): Layer {
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
  const manifest = JSON.parse(readFileSync(blobPath(layout, index.manifests[0].digest), 'utf8'));
  const layer = manifest.layers[0];
  return { annotations: layer.annotations ?? {}, blob: readFileSync(blobPath(layout, layer.digest)) };
}
function entries(annotation: string | undefined): Buffer[] {
  if (!annotation) throw new Error('annotation missing');
  return annotation.split(',').map((b) => Buffer.from(b, 'base64'));
}

function ctx(params: DecryptParameters): UnwrapContext {
  return { params, layerDigest: 'sha256:test', signal: new AbortController().signal };
}
function keyParams(...keys: Buffer[]): DecryptParameters {
  return { privkeys: keys, 'privkeys-passwords': keys.map(() => null) };
}

const plainBlob = readLayer(join(SKOPEO, 'plain')).blob;

async function unwrapFirst(annotation: string | undefined, params: DecryptParameters): Promise<Buffer> {
  let last: unknown;
  for (const e of entries(annotation)) {
    try {
      const r = await unwrapEntry(jweKeyWrapper, e, ctx(params));
      if (r) return r;
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

describe('jwe key wrapper against skopeo (ocicrypt 1.0.x) fixtures', () => {
  const cases: Array<[string, string]> = [
    ['enc-jwe-rsa', 'rsa-priv.pem'],
    ['enc-jwe-ec', 'ec-priv.pem'],
    ['enc-jwe-ec', 'ec-priv-pkcs8.pem'],
    ['enc-multi', 'rsa-priv.pem'],
    ['enc-multi', 'rsa2-priv.pem'],
    ['enc-zstd', 'rsa-priv.pem'],
  ];
  it.each(cases)('%s unwraps with %s alone and the layer decrypts to the plain blob', async (layout, keyName) => {
    const layer = readLayer(join(SKOPEO, layout));
    const privopts = await unwrapFirst(layer.annotations['org.opencontainers.image.enc.keys.jwe'], keyParams(skopeoKey(keyName)));
    const plain = decryptLayerBlob(layer.blob, privopts, layer.annotations['org.opencontainers.image.enc.pubopts']!);
    const digest = JSON.parse(privopts.toString('utf8')).digest as string;
    if (layout === 'enc-zstd') {
      // Recompressed with zstd by skopeo, so not the plain gzip blob: compare the tars inside (zstd CLI, since
      // Node 20 has no zstd). skopeo recorded the digest of the source (gzip) blob in privopts.
      expect(plain.subarray(0, 4).toString('hex')).toBe('28b52ffd');
      const unzstd = spawnSync('zstd', ['-d', '-c', '-q'], { input: plain, maxBuffer: 16 << 20, timeout: 20_000 });
      expect(unzstd.status).toBe(0);
      expect(unzstd.stdout.equals(gunzipSync(plainBlob))).toBe(true);
      expect(digest).toBe(`sha256:${createHash('sha256').update(plainBlob).digest('hex')}`);
    } else {
      expect(plain.equals(plainBlob)).toBe(true);
    }
  });

  it('ignores the non-standard top-level encrypted_key of go-jose general JSON', async () => {
    const layer = readLayer(join(SKOPEO, 'enc-multi'));
    const [entry] = entries(layer.annotations['org.opencontainers.image.enc.keys.jwe']);
    const json = JSON.parse(entry!.toString('utf8'));
    expect(json.recipients).toHaveLength(2);
    expect(typeof json.encrypted_key).toBe('string');
    json.encrypted_key = '!not base64url!'; // garbage where go-jose writes a copy of recipient 0's key
    const out = await unwrapEntry(jweKeyWrapper, Buffer.from(JSON.stringify(json)), ctx(keyParams(skopeoKey('rsa2-priv.pem'))));
    expect(JSON.parse(out!.toString('utf8')).symkey).toBeTypeOf('string');
  });

  it('fails with a clean one-line error naming no key material when no key fits', async () => {
    const layer = readLayer(join(SKOPEO, 'enc-jwe-rsa'));
    const key = skopeoKey('ec-priv.pem');
    const err = await unwrapFirst(layer.annotations['org.opencontainers.image.enc.keys.jwe'], keyParams(key, skopeoKey('rsa2-priv.pem'))).catch((e) => e);
    expect(err).toBeInstanceOf(DecoderError);
    expect(err.message).toBe('JWE: No suitable private key found for decryption');
    expect(describeError(err)).toBe(err.message);
    const body = key.toString('latin1').split('\n')[1]!;
    expect(err.message).not.toContain(body.slice(0, 16));
  });
});

describe('jwe key wrapper against ocicrypt v1.3.1 vectors', () => {
  const descriptor = JSON.parse(readFileSync(join(V131, 'descriptor.json'), 'utf8'));
  const annotation = descriptor.annotations['org.opencontainers.image.enc.keys.jwe'] as string;
  const expected = readFileSync(join(V131, 'privopts.json'));

  it('the annotation is general JSON with three recipients and go-jose’s extra encrypted_key', () => {
    const json = JSON.parse(entries(annotation)[0]!.toString('utf8'));
    expect(json.recipients.map((r: { header: { alg: string } }) => r.header.alg)).toEqual(['RSA-OAEP', 'ECDH-ES+A256KW', 'RSA-OAEP-256']);
    expect(json.encrypted_key).toBe(json.recipients[0].encrypted_key);
  });

  it.each(['rsa_priv.pem', 'ec_priv.der', 'rsa_oaep256_priv.jwk'])('%s alone unwraps privopts.json byte for byte', async (name) => {
    const out = await jweKeyWrapper.unwrap(entries(annotation)[0]!, ctx(keyParams(v131Key(name))));
    expect(out!.privopts.equals(expected)).toBe(true);
    expect(out!.facts?.kid).toBe(name.endsWith('.jwk') ? 'jwk-test-1' : undefined);
  });

  it('the unwrapped options decrypt layer.tar.gz.enc to layer.tar.gz', async () => {
    const out = await unwrapEntry(jweKeyWrapper, entries(annotation)[0]!, ctx(keyParams(v131Key('ec_priv.der'))));
    const plain = decryptLayerBlob(readFileSync(join(V131, 'layer.tar.gz.enc')), out!, descriptor.annotations['org.opencontainers.image.enc.pubopts']);
    expect(plain.equals(readFileSync(join(V131, 'layer.tar.gz')))).toBe(true);
  });

  it('the single-recipient (flattened) layer unwraps with rsa_priv.pem', async () => {
    const single = JSON.parse(readFileSync(join(V131, 'single-jwe', 'descriptor.json'), 'utf8'));
    const [entry] = entries(single.annotations['org.opencontainers.image.enc.keys.jwe']);
    expect(JSON.parse(entry!.toString('utf8')).recipients).toBeUndefined();
    const out = await unwrapEntry(jweKeyWrapper, entry!, ctx(keyParams(v131Key('rsa_priv.pem'))));
    const plain = decryptLayerBlob(readFileSync(join(V131, 'single-jwe', 'layer.tar.gz.enc')), out!, single.annotations['org.opencontainers.image.enc.pubopts']);
    expect(plain.equals(readFileSync(join(V131, 'layer.tar.gz')))).toBe(true);
  });

  it('an encrypted PEM key unwraps with its password `secret`', async () => {
    const params = { privkeys: [v131Key('rsa_priv_enc_secret.pem')], 'privkeys-passwords': [Buffer.from('secret')] };
    const out = await unwrapEntry(jweKeyWrapper, entries(annotation)[0]!, ctx(params));
    expect(out!.equals(expected)).toBe(true);
  });

  it('an encrypted PEM key without or with a wrong password aborts with upstream’s messages', async () => {
    const entry = entries(annotation)[0]!;
    const key = v131Key('rsa_priv_enc_secret.pem');
    await expect(unwrapEntry(jweKeyWrapper, entry, ctx({ privkeys: [key], 'privkeys-passwords': [null] }))).rejects.toThrow(
      /^JWE: Missing password for encrypted private key$/,
    );
    await expect(unwrapEntry(jweKeyWrapper, entry, ctx({ privkeys: [key], 'privkeys-passwords': [Buffer.from('nope')] }))).rejects.toThrow(
      /^JWE: Wrong password: could not decrypt private key$/,
    );
  });

  it('keys are tried in order: a non-matching key before the right one is not fatal', async () => {
    const params = keyParams(skopeoKey('rsa2-priv.pem'), skopeoKey('ec-priv.pem'), v131Key('rsa_oaep256_priv.jwk'));
    expect((await unwrapEntry(jweKeyWrapper, entries(annotation)[0]!, ctx(params)))!.equals(expected)).toBe(true);
  });

  it('a key/password count mismatch is refused', async () => {
    await expect(unwrapEntry(jweKeyWrapper, entries(annotation)[0]!, ctx({ privkeys: [v131Key('rsa_priv.pem')] }))).rejects.toThrow(
      'Private key password array length must be same as that of private keys',
    );
  });

  it('a tampered ciphertext fails cleanly', async () => {
    const json = JSON.parse(entries(annotation)[0]!.toString('utf8'));
    const ct = Buffer.from(json.ciphertext, 'base64url');
    ct[0]! ^= 1;
    json.ciphertext = ct.toString('base64url');
    await expect(unwrapEntry(jweKeyWrapper, Buffer.from(JSON.stringify(json)), ctx(keyParams(v131Key('rsa_priv.pem'))))).rejects.toThrow(
      'JWE: No suitable private key found for decryption',
    );
  });
});

describe('jwe key wrapper: serializations and algorithms', () => {
  const payload = Buffer.from('{"symkey":"AAAA","digest":"","cipheroptions":{}}');
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' });
  const rsaPem = rsa.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string;
  const ecPem = p384.privateKey.export({ format: 'pem', type: 'sec1' }) as string;

  it('compact serialization (RSA-OAEP-256 + A128CBC-HS256)', async () => {
    const jwe = await new CompactEncrypt(payload).setProtectedHeader({ alg: 'RSA-OAEP-256', enc: 'A128CBC-HS256' }).encrypt(rsa.publicKey);
    const out = await unwrapEntry(jweKeyWrapper, Buffer.from(`\n ${jwe}\n`), ctx(keyParams(Buffer.from(rsaPem))));
    expect(out!.equals(payload)).toBe(true);
  });

  it('flattened ECDH-ES+A192KW (P-384, SEC1 PEM key) + A256CBC-HS512', async () => {
    const jwe = await new FlattenedEncrypt(payload).setProtectedHeader({ alg: 'ECDH-ES+A192KW', enc: 'A256CBC-HS512' }).encrypt(p384.publicKey);
    const out = await unwrapEntry(jweKeyWrapper, Buffer.from(JSON.stringify(jwe)), ctx(keyParams(Buffer.from(ecPem))));
    expect(out!.equals(payload)).toBe(true);
  });

  it('general JSON with ECDH-ES+A128KW and RSA-OAEP recipients + A192GCM', async () => {
    const jwe = await new GeneralEncrypt(payload)
      .setProtectedHeader({ enc: 'A192GCM' })
      .addRecipient(p384.publicKey)
      .setUnprotectedHeader({ alg: 'ECDH-ES+A128KW' })
      .addRecipient(createPublicKey(rsaPem))
      .setUnprotectedHeader({ alg: 'RSA-OAEP' })
      .encrypt();
    for (const key of [rsaPem, ecPem]) {
      const out = await unwrapEntry(jweKeyWrapper, Buffer.from(JSON.stringify(jwe)), ctx(keyParams(Buffer.from(key))));
      expect(out!.equals(payload)).toBe(true);
    }
  });

  it('refuses algorithms outside ocicrypt’s allow-list as a parse failure', async () => {
    const jwe = await new CompactEncrypt(payload).setProtectedHeader({ alg: 'dir', enc: 'A256GCM' }).encrypt(Buffer.alloc(32, 1));
    await expect(unwrapEntry(jweKeyWrapper, Buffer.from(jwe), ctx(keyParams(Buffer.from(rsaPem))))).rejects.toThrow(
      /^jose\.ParseEncrypted failed: unsupported JWE key algorithm "dir"$/,
    );
  });

  it('rejects garbage entries with a DecoderError', async () => {
    const bads = ['', 'not a jwe', '{', '[]', '{"recipients":[]}', '{"protected":"!!"}', 'a.b.c.d.e', '{"protected":"e30","iv":"AA"}', '{"ciphertext":7}'];
    for (const bad of bads) {
      const err = await unwrapEntry(jweKeyWrapper, Buffer.from(bad), ctx(keyParams(Buffer.from(rsaPem)))).catch((e) => e);
      expect(err, bad).toBeInstanceOf(DecoderError);
      expect(err.message).toMatch(/^jose\.ParseEncrypted failed/);
    }
  });

  it('noPossibleKeys / hasPrivateKeys follow `privkeys`', () => {
    expect(jweKeyWrapper.noPossibleKeys({})).toBe(true);
    expect(jweKeyWrapper.noPossibleKeys({ x509s: [Buffer.from('x')] })).toBe(true);
    expect(jweKeyWrapper.noPossibleKeys(keyParams(Buffer.from(rsaPem)))).toBe(false);
    expect(jweKeyWrapper.hasPrivateKeys(keyParams(Buffer.from(rsaPem)))).toBe(true);
    expect(jweKeyWrapper.scheme).toBe('jwe');
    expect(jweKeyWrapper.supported).toBe(true);
  });
});
