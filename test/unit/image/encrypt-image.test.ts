/**
 * The image builder/encrypter helpers, checked without the project's decoder: layers are decrypted here with
 * node:crypto directly (AA annotation unwrapped with the KEK, AES-256-CTR, HMAC-SHA256), JWE annotations with
 * jose, and — where the machine has it — by skopeo, i.e. by the real ocicrypt Go code.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDecipheriv, createHash, createHmac, createPrivateKey, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { flattenedDecrypt, generalDecrypt, type FlattenedJWE, type GeneralJWE } from 'jose';
import { buildImage, readImage, type LayerFile, type ReadImageResult } from '../../helpers/oci-image.js';
import {
  ANNOTATION_KEYS_AA,
  ANNOTATION_KEYS_JWE,
  ANNOTATION_PUBOPTS,
  aaRecipient,
  encryptImage,
  resourcePathFromKid,
} from '../../helpers/encrypt-image.js';

const FIXTURES = join(import.meta.dirname, '../../fixtures/ocicrypt');
const KEYS = join(FIXTURES, 'keys');
const STD_B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const PRIVOPTS = /^\{"symkey":"[A-Za-z0-9+/]{43}=","digest":"sha256:[0-9a-f]{64}","cipheroptions":\{"nonce":"[A-Za-z0-9+/]{22}=="\}\}$/;
const PUBOPTS = /^\{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"[A-Za-z0-9+/]{43}=","cipheroptions":\{\}\}$/;

let root: string;
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'encrypt-image-test-'));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function strictB64(text: string): Buffer {
  expect(text).toMatch(STD_B64);
  return Buffer.from(text, 'base64');
}

async function tarEntries(tarBytes: Buffer): Promise<Array<{ name: string; type: string; mode: number; mtime: Date; uid: number; data: Buffer }>> {
  const out: Array<{ name: string; type: string; mode: number; mtime: Date; uid: number; data: Buffer }> = [];
  const extract = tar.extract();
  const done = (async () => {
    for await (const entry of extract) {
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      out.push({ name: entry.header.name, type: entry.header.type, mode: entry.header.mode, mtime: entry.header.mtime, uid: entry.header.uid, data: Buffer.concat(chunks) });
    }
  })();
  Readable.from([tarBytes]).pipe(extract as unknown as NodeJS.WritableStream);
  await done;
  return out;
}

/** Reads every layer blob of an image into memory (small test images only). */
function plainBlobs(image: ReadImageResult): Map<string, Buffer> {
  return new Map(image.layers.map((l) => [l.descriptor.digest, readFileSync(l.blobPath)]));
}

/** ocicrypt's layer decryption, written out with node:crypto: HMAC over the ciphertext, then AES-256-CTR. */
function decryptLayer(ciphertext: Buffer, privopts: { symkey: string; cipheroptions: { nonce: string } }, pubopts: { hmac: string }): Buffer {
  const symkey = Buffer.from(privopts.symkey, 'base64');
  const nonce = Buffer.from(privopts.cipheroptions.nonce, 'base64');
  expect(symkey).toHaveLength(32);
  expect(nonce).toHaveLength(16);
  expect(createHmac('sha256', symkey).update(ciphertext).digest().equals(Buffer.from(pubopts.hmac, 'base64'))).toBe(true);
  const d = createDecipheriv('aes-256-ctr', symkey, nonce);
  return Buffer.concat([d.update(ciphertext), d.final()]);
}

function unwrapAa(entryB64: string, kek: Buffer): { packet: Record<string, string>; privoptsText: string } {
  const packetText = strictB64(entryB64).toString('utf8');
  const packet = JSON.parse(packetText) as Record<string, string>;
  expect(Object.keys(packet)).toEqual(['kid', 'wrapped_data', 'iv', 'wrap_type']);
  expect(packet['wrap_type']).toBe('A256GCM');
  const iv = strictB64(packet['iv'] ?? '');
  expect(iv).toHaveLength(12);
  const wrapped = strictB64(packet['wrapped_data'] ?? '');
  const d = createDecipheriv('aes-256-gcm', kek, iv);
  d.setAuthTag(wrapped.subarray(wrapped.length - 16));
  const privoptsText = Buffer.concat([d.update(wrapped.subarray(0, wrapped.length - 16)), d.final()]).toString('utf8');
  return { packet, privoptsText };
}

describe('buildImage / readImage', () => {
  it('writes a valid, deterministic OCI layout whose diff_ids are the uncompressed tar digests', async () => {
    const layers: Array<Record<string, LayerFile>> = [
      { 'etc/motd': Buffer.from('decrypted inside the TEE\n'), 'data/blob.bin': Buffer.alloc(50_000, 3) },
      { 'bin/tool': { data: Buffer.from('#!/bin/sh\n'), mode: 0o755 } },
    ];
    const a = await buildImage(join(root, 'det-a'), { tag: 'latest', layers });
    const b = await buildImage(join(root, 'det-b'), { tag: 'latest', layers });
    expect(a.manifestDescriptor.digest).toBe(b.manifestDescriptor.digest);

    expect(JSON.parse(readFileSync(join(root, 'det-a', 'oci-layout'), 'utf8'))).toEqual({ imageLayoutVersion: '1.0.0' });
    const index = JSON.parse(readFileSync(join(root, 'det-a', 'index.json'), 'utf8')) as { manifests: Array<{ annotations: Record<string, string>; digest: string }> };
    expect(index.manifests).toHaveLength(1);
    expect(index.manifests[0]?.annotations['org.opencontainers.image.ref.name']).toBe('latest');
    expect(sha256(readFileSync(a.manifestPath))).toBe(a.manifestDescriptor.digest);
    expect(sha256(readFileSync(a.configPath))).toBe(a.manifest.config.digest);

    const rootfs = a.config['rootfs'] as { type: string; diff_ids: string[] };
    expect(rootfs.type).toBe('layers');
    for (const [i, layer] of a.layers.entries()) {
      const blob = readFileSync(layer.blobPath);
      expect(layer.descriptor.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+gzip');
      expect(sha256(blob)).toBe(layer.descriptor.digest);
      expect(blob.length).toBe(layer.descriptor.size);
      expect(sha256(gunzipSync(blob))).toBe(rootfs.diff_ids[i]);
    }
    const entries = await tarEntries(gunzipSync(readFileSync(a.layers[0]?.blobPath ?? '')));
    expect(entries.map((e) => `${e.type}:${e.name}`)).toEqual(['directory:etc/', 'file:etc/motd', 'directory:data/', 'file:data/blob.bin']);
    expect(entries[1]?.data.toString()).toBe('decrypted inside the TEE\n');
    expect(entries.every((e) => e.uid === 0 && e.mtime.getTime() === Date.parse('2000-01-01T00:00:00Z'))).toBe(true);
    const tool = (await tarEntries(gunzipSync(readFileSync(a.layers[1]?.blobPath ?? '')))).find((e) => e.name === 'bin/tool');
    expect(tool?.mode).toBe(0o755);
  });

  it('keeps other tags in the same layout and can write an uncompressed layer', async () => {
    const dir = join(root, 'multi-tag');
    await buildImage(dir, { tag: 'one', layers: [{ a: Buffer.from('1') }] });
    const two = await buildImage(dir, { tag: 'two', layers: [{ b: Buffer.from('2') }], compression: 'none' });
    expect(two.layers[0]?.descriptor.mediaType).toBe('application/vnd.oci.image.layer.v1.tar');
    expect((await readImage(dir, 'one')).layers).toHaveLength(1);
    await expect(readImage(dir, 'three')).rejects.toThrow(/no manifest tagged "three"/);
  });

  it('reads the real skopeo fixture enc-jwe-rsa', async () => {
    const image = await readImage(join(FIXTURES, 'enc-jwe-rsa'), 'latest');
    expect(image.manifestDescriptor.digest).toBe('sha256:9ae5e9621b062e806118940ce7c6fdc30bcc6ca356ddd348ed32bb4cca69b0ff');
    expect(image.layers).toHaveLength(1);
    const layer = image.layers[0];
    expect(layer?.descriptor).toMatchObject({
      mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted',
      digest: 'sha256:f8e4ef8078faca5978087c80032061f547be0121c3aca869635ab6aa955c8901',
      size: 200325,
    });
    expect(Object.keys(layer?.descriptor.annotations ?? {}).sort()).toEqual([ANNOTATION_KEYS_JWE, ANNOTATION_PUBOPTS]);
    expect(sha256(readFileSync(layer?.blobPath ?? ''))).toBe(layer?.descriptor.digest);
    expect((image.config['rootfs'] as { diff_ids: string[] }).diff_ids).toEqual(['sha256:548b18cf67be990de81b5b3bf11c1c9cbd21230e79856bb6fcd1fd9c311d0743']);
  });
});

describe('encryptImage', () => {
  it('wraps for attestation-agent as coco_keyprovider does; each layer decrypts with node:crypto to the plain blob', async () => {
    const dir = join(root, 'aa');
    const plain = await buildImage(dir, { tag: 'v1', layers: [{ 'etc/motd': Buffer.from('hello\n') }, { 'data/x': randomBytes(70_000) }] });
    const blobs = plainBlobs(plain);
    const r1 = aaRecipient('first');
    const r2 = aaRecipient('second');
    const result = await encryptImage(dir, { tag: 'v1', recipients: [r1, r2] });

    expect(result.keks.map((k) => [k.kid, k.resourcePath])).toEqual([
      ['kbs:///default/image-kek/first', 'default/image-kek/first'],
      ['kbs:///default/image-kek/second', 'default/image-kek/second'],
    ]);
    expect(result.kbsResources['default/image-kek/first']?.equals(r1.kek)).toBe(true);

    const enc = await readImage(dir, 'v1');
    expect(enc.manifestDescriptor.digest).toBe(result.manifestDescriptor.digest);
    expect(sha256(readFileSync(enc.manifestPath))).toBe(enc.manifestDescriptor.digest);
    expect(enc.manifest.config).toEqual(plain.manifest.config); // config (diff_ids) unchanged
    expect(enc.layers).toHaveLength(2);
    for (const [i, layer] of enc.layers.entries()) {
      const plainDesc = plain.layers[i]?.descriptor;
      const { annotations = {} } = layer.descriptor;
      expect(layer.descriptor.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+gzip+encrypted');
      expect(Object.keys(annotations)).toEqual([ANNOTATION_KEYS_AA, ANNOTATION_PUBOPTS]); // Go sorts map keys
      const ciphertext = readFileSync(layer.blobPath);
      expect(sha256(ciphertext)).toBe(layer.descriptor.digest);
      expect(ciphertext.length).toBe(layer.descriptor.size);
      expect(ciphertext.length).toBe(plainDesc?.size); // CTR: no header, no padding

      const pubText = strictB64(annotations[ANNOTATION_PUBOPTS] ?? '').toString();
      expect(pubText).toMatch(PUBOPTS);

      const entries = (annotations[ANNOTATION_KEYS_AA] ?? '').split(',');
      expect(entries).toHaveLength(2);
      const first = unwrapAa(entries[0] ?? '', r1.kek);
      const second = unwrapAa(entries[1] ?? '', r2.kek);
      expect(first.packet['kid']).toBe('kbs:///default/image-kek/first');
      expect(second.packet['kid']).toBe('kbs:///default/image-kek/second');
      expect(first.privoptsText).toBe(second.privoptsText);
      expect(first.privoptsText).toMatch(PRIVOPTS);
      expect(() => unwrapAa(entries[0] ?? '', r2.kek)).toThrow(); // GCM tag binds the KEK

      const privopts = JSON.parse(first.privoptsText) as { symkey: string; digest: string; cipheroptions: { nonce: string } };
      expect(privopts.digest).toBe(plainDesc?.digest);
      const decrypted = decryptLayer(ciphertext, privopts, JSON.parse(pubText) as { hmac: string });
      expect(decrypted.equals(blobs.get(plainDesc?.digest ?? '') ?? Buffer.alloc(0))).toBe(true);
    }
    // Layer keys differ per layer.
    const keysOf = (l: (typeof enc.layers)[number]): string =>
      unwrapAa((l.descriptor.annotations?.[ANNOTATION_KEYS_AA] ?? '').split(',')[0] ?? '', r1.kek).privoptsText;
    expect(keysOf(enc.layers[0]!)).not.toBe(keysOf(enc.layers[1]!));
    // The replaced plain image's blobs are gone; only encrypted layers, config and the new manifest remain.
    const files = (await readdir(join(dir, 'blobs', 'sha256'))).sort();
    expect(files).toEqual([enc.manifest.config.digest, enc.manifestDescriptor.digest, ...enc.layers.map((l) => l.descriptor.digest)].map((d) => d.slice(7)).sort());
  });

  it('writes one flattened JWE (RSA-OAEP) for one recipient and a general JWE with go-jose’s top-level encrypted_key for several', async () => {
    const dir = join(root, 'jwe');
    await buildImage(dir, { tag: 'v1', layers: [{ f: Buffer.from('jwe layer') }] });
    await buildImage(dir, { tag: 'v2', layers: [{ g: Buffer.from('jwe layer 2') }] });
    const rsaPub = readFileSync(join(KEYS, 'rsa-pub.pem'), 'utf8');
    const ecPub = readFileSync(join(KEYS, 'ec-pub.pem'), 'utf8');
    const rsaPriv = createPrivateKey(readFileSync(join(KEYS, 'rsa-priv.pem')));
    const ecPriv = createPrivateKey(readFileSync(join(KEYS, 'ec-priv-pkcs8.pem')));

    await encryptImage(dir, { tag: 'v1', recipients: [{ type: 'jwe', publicKeyPem: rsaPub }] });
    const single = (await readImage(dir, 'v1')).layers[0]?.descriptor.annotations ?? {};
    const flat = JSON.parse(strictB64(single[ANNOTATION_KEYS_JWE] ?? '').toString()) as FlattenedJWE;
    expect(Object.keys(flat)).toEqual(['protected', 'encrypted_key', 'iv', 'ciphertext', 'tag']);
    expect(Buffer.from(flat.protected ?? '', 'base64url').toString()).toBe('{"alg":"RSA-OAEP","enc":"A256GCM"}');
    const { plaintext } = await flattenedDecrypt(flat, rsaPriv);
    expect(Buffer.from(plaintext).toString()).toMatch(PRIVOPTS);

    await encryptImage(dir, { tag: 'v2', recipients: [{ type: 'jwe', publicKeyPem: rsaPub }, { type: 'jwe', publicKeyPem: ecPub }] });
    const multi = (await readImage(dir, 'v2')).layers[0]?.descriptor.annotations ?? {};
    const general = JSON.parse(strictB64(multi[ANNOTATION_KEYS_JWE] ?? '').toString()) as GeneralJWE & { encrypted_key: string };
    expect(general.recipients.map((r) => r.header?.alg)).toEqual(['RSA-OAEP', 'ECDH-ES+A256KW']);
    expect(general.encrypted_key).toBe(general.recipients[0]?.encrypted_key);
    const { encrypted_key: _ignored, ...standard } = general;
    const viaRsa = await generalDecrypt(standard, rsaPriv);
    const viaEc = await generalDecrypt(standard, ecPriv);
    expect(Buffer.from(viaRsa.plaintext).equals(Buffer.from(viaEc.plaintext))).toBe(true);
  });

  it('encrypts only the chosen layers into a new tag and leaves the plain image intact', async () => {
    const dir = join(root, 'partial');
    const plain = await buildImage(dir, { tag: 'plain', layers: [{ a: Buffer.from('a') }, { b: Buffer.from('b') }] });
    const result = await encryptImage(dir, { tag: 'plain', outTag: 'enc', layerIndexes: [1], recipients: [aaRecipient('p')] });
    expect(result.layers.map((l) => l.index)).toEqual([1]);
    const enc = await readImage(dir, 'enc');
    expect(enc.layers[0]?.descriptor).toEqual(plain.layers[0]?.descriptor);
    expect(enc.layers[1]?.descriptor.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+gzip+encrypted');
    const still = await readImage(dir, 'plain');
    expect(still.manifestDescriptor.digest).toBe(plain.manifestDescriptor.digest);
    expect(existsSync(still.layers[1]?.blobPath ?? '')).toBe(true);
  });

  it('refuses a KEK that is not 32 bytes and a layer that is already encrypted', async () => {
    const dir = join(root, 'bad');
    await buildImage(dir, { tag: 'v1', layers: [{ a: Buffer.from('a') }] });
    await expect(encryptImage(dir, { tag: 'v1', recipients: [aaRecipient('short', Buffer.alloc(16))] })).rejects.toThrow(/32 bytes/);
    await encryptImage(dir, { tag: 'v1', recipients: [aaRecipient('ok')] });
    await expect(encryptImage(dir, { tag: 'v1', recipients: [aaRecipient('again')] })).rejects.toThrow(/already encrypted/);
  });

  it('streams a file given as a stream factory through build and encryption', async () => {
    const dir = join(root, 'stream');
    const size = 24 * 1024 * 1024;
    const chunk = randomBytes(1024 * 1024);
    const open = (): NodeJS.ReadableStream =>
      Readable.from(
        (function* () {
          for (let i = 0; i < size / chunk.length; i++) yield chunk;
        })(),
      );
    const plain = await buildImage(dir, { tag: 'big', layers: [{ 'big.bin': { size, open } }], gzipLevel: 1 });
    const plainBlob = readFileSync(plain.layers[0]?.blobPath ?? '');
    const kek = randomBytes(32);
    await encryptImage(dir, { tag: 'big', recipients: [aaRecipient('big', kek)] });
    const layer = (await readImage(dir, 'big')).layers[0];
    const annotations = layer?.descriptor.annotations ?? {};
    const { privoptsText } = unwrapAa(annotations[ANNOTATION_KEYS_AA] ?? '', kek);
    const decrypted = decryptLayer(
      readFileSync(layer?.blobPath ?? ''),
      JSON.parse(privoptsText) as { symkey: string; cipheroptions: { nonce: string } },
      JSON.parse(strictB64(annotations[ANNOTATION_PUBOPTS] ?? '').toString()) as { hmac: string },
    );
    expect(decrypted.equals(plainBlob)).toBe(true);
    const entries = await tarEntries(gunzipSync(decrypted));
    expect(entries.map((e) => [e.name, e.data.length])).toEqual([['big.bin', size]]);
  });

  it('maps kids to KBS resource paths', () => {
    expect(resourcePathFromKid('kbs:///default/image-kek/x')).toBe('default/image-kek/x');
    expect(resourcePathFromKid('kbs://kbs.example:8080/a/b/c?q=1')).toBe('a/b/c');
    expect(resourcePathFromKid('/default/image-kek/uuid')).toBe('default/image-kek/uuid');
    expect(() => resourcePathFromKid('https://x/a/b/c')).toThrow();
  });
});

const skopeo = ['/usr/bin/skopeo', '/usr/local/bin/skopeo'].find((p) => existsSync(p));

describe.skipIf(!skopeo)('encryptImage against the real ocicrypt (skopeo)', () => {
  it.each([
    ['RSA', 'rsa-pub.pem', 'rsa-priv.pem'],
    // ocicrypt reads a PEM private key as PKCS#8 or PKCS#1 only, not SEC1.
    ['EC', 'ec-pub.pem', 'ec-priv-pkcs8.pem'],
  ])('skopeo decrypts a %s-JWE image back to the identical plain image', async (_kind, pub, priv) => {
    const dir = join(root, `skopeo-${pub}`);
    const out = join(root, `skopeo-out-${pub}`);
    const plain = await buildImage(dir, { tag: 'v1', layers: [{ 'etc/motd': Buffer.from('hi\n') }, { 'x/y': randomBytes(30_000) }] });
    await encryptImage(dir, { tag: 'v1', recipients: [{ type: 'jwe', publicKeyPem: readFileSync(join(KEYS, pub), 'utf8') }] });
    await promisify(execFile)(skopeo as string, ['copy', '--decryption-key', join(KEYS, priv), `oci:${dir}:v1`, `oci:${out}:v1`], { timeout: 60_000 });
    const decrypted = await readImage(out, 'v1');
    expect(decrypted.manifestDescriptor.digest).toBe(plain.manifestDescriptor.digest);
  });
});
