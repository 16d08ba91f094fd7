import { spawnSync } from 'node:child_process';
import { constants, createPrivateKey, publicEncrypt } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { children, readSingle, readTlv, BerError, readOid } from '../../../src/ocicrypt/asn1/ber.js';
import type { DecryptParameters, UnwrapContext } from '../../../src/ocicrypt/keywrap/keywrapper.js';
import { parseEnvelopedData, pkcs7KeyWrapper, syntheticKey, unpadPkcs1v15 } from '../../../src/ocicrypt/keywrap/pkcs7.js';
import { pgpKeyWrapper, pkcs11KeyWrapper } from '../../../src/ocicrypt/keywrap/unsupported.js';
import { DecoderError, describeError } from '../../../src/util/errors.js';
import { unwrapEntry } from '../../helpers/unwrap-entry.js';
import { decryptLayerBlob } from '../../helpers/layer-cipher.js';

const FIX = join(import.meta.dirname, '../../fixtures');
const SKOPEO = join(FIX, 'ocicrypt');
const V131 = join(FIX, 'ocicrypt-v1.3.1');
const skopeoKey = (name: string): Buffer => readFileSync(join(SKOPEO, 'keys', name));
const v131Key = (name: string): Buffer => readFileSync(join(V131, 'keys', name));

// --- tiny OCI layout reader: index.json -> manifest -> first layer descriptor + blob ---
function blobPath(layout: string, digest: string): string {
  return join(layout, 'blobs', ...digest.split(':'));
}
function readLayer(layout: string): { annotations: Record<string, string>; blob: Buffer } {
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
  const manifest = JSON.parse(readFileSync(blobPath(layout, index.manifests[0].digest), 'utf8'));
  const layer = manifest.layers[0];
  return { annotations: layer.annotations ?? {}, blob: readFileSync(blobPath(layout, layer.digest)) };
}
function firstEntry(annotation: string | undefined): Buffer {
  if (!annotation) throw new Error('annotation missing');
  return Buffer.from(annotation.split(',')[0]!, 'base64');
}
function ctx(params: DecryptParameters): UnwrapContext {
  return { params, layerDigest: 'sha256:test', signal: new AbortController().signal };
}
function params(keys: Buffer[], certs: Buffer[]): DecryptParameters {
  return { privkeys: keys, 'privkeys-passwords': keys.map(() => null), x509s: certs };
}

const PKCS7 = 'org.opencontainers.image.enc.keys.pkcs7';
const plainBlob = readLayer(join(SKOPEO, 'plain')).blob;
const skopeoParams = (): DecryptParameters => params([skopeoKey('pkcs7-priv.pem')], [skopeoKey('pkcs7-cert.pem')]);

describe('pkcs7 key wrapper against real fixtures', () => {
  it.each(['enc-pkcs7', 'enc-multi'])('%s unwraps with pkcs7-priv.pem + pkcs7-cert.pem and the layer decrypts to the plain blob', async (layout) => {
    const layer = readLayer(join(SKOPEO, layout));
    const c = ctx(skopeoParams());
    const out = await pkcs7KeyWrapper.unwrap(firstEntry(layer.annotations[PKCS7]), c);
    const plain = decryptLayerBlob(layer.blob, out!.privopts, layer.annotations['org.opencontainers.image.enc.pubopts']!);
    expect(plain.equals(plainBlob)).toBe(true);
    expect(out!.facts).toBeUndefined();
  });

  it('ocicrypt v1.3.1 vector (AES-128-GCM, non-DER parameters) unwraps privopts.json byte for byte', async () => {
    const der = readFileSync(join(V131, 'annotations', `${PKCS7}.0.bin`));
    const out = await unwrapEntry(pkcs7KeyWrapper, der, ctx(params([v131Key('pkcs7_key.pem')], [v131Key('pkcs7_cert.pem')])));
    expect(out!.equals(readFileSync(join(V131, 'privopts.json')))).toBe(true);
    // and the descriptor's annotation is the same bytes
    const descriptor = JSON.parse(readFileSync(join(V131, 'descriptor.json'), 'utf8'));
    expect(firstEntry(descriptor.annotations[PKCS7]).equals(der)).toBe(true);
  });

  it('the fixtures really use the quirky parameter encoding (primitive 0x10, nonce under 0x84)', () => {
    const der = readFileSync(join(V131, 'annotations', `${PKCS7}.0.bin`));
    const idx = der.indexOf(Buffer.from('0609608648016503040106', 'hex')); // OID aes128-GCM
    expect(der.subarray(idx + 11, idx + 15).toString('hex')).toBe('10133011');
    expect(der[idx + 15]).toBe(0x84);
    const env = parseEnvelopedData(der);
    expect(env.content.cipher.name).toBe('aes-128-gcm');
    expect(env.content.iv.length).toBe(12);
    expect(env.content.tagLength).toBe(16);
  });

  it('other keys in front (EC, wrong RSA) do not prevent success', async () => {
    const layer = readLayer(join(SKOPEO, 'enc-pkcs7'));
    const p = params(
      [skopeoKey('ec-priv.pem'), skopeoKey('rsa-priv.pem'), skopeoKey('pkcs7-priv.pem')],
      [v131Key('pkcs7_cert.pem'), skopeoKey('pkcs7-cert.pem')],
    );
    const out = await unwrapEntry(pkcs7KeyWrapper, firstEntry(layer.annotations[PKCS7]), ctx(p));
    expect(JSON.parse(out!.toString('utf8')).symkey).toBeTypeOf('string');
  });

  it('needs x509s, with upstream’s message', async () => {
    const layer = readLayer(join(SKOPEO, 'enc-pkcs7'));
    const p: DecryptParameters = { privkeys: [skopeoKey('pkcs7-priv.pem')], 'privkeys-passwords': [null] };
    await expect(unwrapEntry(pkcs7KeyWrapper, firstEntry(layer.annotations[PKCS7]), ctx(p))).rejects.toThrow(
      /^no x509 certificates found needed for PKCS7 decryption$/,
    );
  });

  it('a key/password count mismatch is refused with upstream’s (lower-case) message', async () => {
    const p: DecryptParameters = { privkeys: [skopeoKey('pkcs7-priv.pem')], x509s: [skopeoKey('pkcs7-cert.pem')] };
    await expect(unwrapEntry(pkcs7KeyWrapper, Buffer.alloc(0), ctx(p))).rejects.toThrow(
      /^private key password array length must be same as that of private keys$/,
    );
  });

  it('wrong key: clean one-line DecoderError without key material', async () => {
    const layer = readLayer(join(SKOPEO, 'enc-pkcs7'));
    const key = skopeoKey('rsa-priv.pem');
    const err = await unwrapEntry(pkcs7KeyWrapper, firstEntry(layer.annotations[PKCS7]), ctx(params([key], [skopeoKey('pkcs7-cert.pem')]))).catch((e) => e);
    expect(err).toBeInstanceOf(DecoderError);
    expect(err.message).toBe('PKCS7: No suitable private key found for decryption');
    expect(describeError(err)).toBe(err.message);
    expect(err.message).not.toContain(key.toString('latin1').split('\n')[1]!.slice(0, 16));
  });

  it('a tampered ciphertext (GCM tag check) fails cleanly', async () => {
    const der = Buffer.from(readFileSync(join(V131, 'annotations', `${PKCS7}.0.bin`)));
    der[der.length - 20]! ^= 0x01;
    await expect(unwrapEntry(pkcs7KeyWrapper, der, ctx(params([v131Key('pkcs7_key.pem')], [v131Key('pkcs7_cert.pem')])))).rejects.toThrow(
      'PKCS7: No suitable private key found for decryption',
    );
  });

  it('a wrapped key with bad PKCS#1 v1.5 padding is rejected uniformly (implicit rejection)', async () => {
    const der = Buffer.from(readFileSync(join(V131, 'annotations', `${PKCS7}.0.bin`)));
    const env = parseEnvelopedData(der);
    const original = env.recipients[0]!.encryptedKey;
    const at = der.indexOf(original);
    const pub = createPrivateKey(v131Key('pkcs7_key.pem'));
    // Correct CEK length, but block type 01 instead of 02; then a PS that is too short.
    const em1 = Buffer.concat([Buffer.from([0, 1]), Buffer.alloc(256 - 2 - 1 - 16, 0xff), Buffer.from([0]), Buffer.alloc(16, 7)]);
    const em2 = Buffer.concat([Buffer.from([0, 2]), Buffer.alloc(256 - 2 - 1 - 16, 0), Buffer.alloc(1, 0), Buffer.alloc(16, 7)]);
    for (const em of [em1, em2]) {
      const forged = Buffer.from(der);
      publicEncrypt({ key: pub, padding: constants.RSA_NO_PADDING }, em).copy(forged, at);
      await expect(unwrapEntry(pkcs7KeyWrapper, forged, ctx(params([v131Key('pkcs7_key.pem')], [v131Key('pkcs7_cert.pem')])))).rejects.toThrow(
        'PKCS7: No suitable private key found for decryption',
      );
    }
  });

  it('malformed input never escapes as anything but a DecoderError', async () => {
    const der = readFileSync(join(V131, 'annotations', `${PKCS7}.0.bin`));
    const p = params([v131Key('pkcs7_key.pem')], [v131Key('pkcs7_cert.pem')]);
    const inputs: Buffer[] = [Buffer.alloc(0), Buffer.from('garbage'), Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff])];
    for (let n = 1; n < der.length; n += 7) inputs.push(der.subarray(0, n));
    const flipped = new Map<Buffer, number>();
    // Every byte of the structure; inside the RSA-wrapped key and the ciphertext (which only reach the RSA and
    // GCM checks, tested above) every 16th byte, to keep the test cheap on shared cores.
    const wrappedKey = parseEnvelopedData(der).recipients[0]!.encryptedKey;
    const keyStart = der.indexOf(wrappedKey);
    const contentStart = der.length - parseEnvelopedData(der).content.data.length;
    const opaque = (i: number): boolean => (i >= keyStart && i < keyStart + wrappedKey.length) || i >= contentStart;
    for (let i = 0; i < der.length; i++) {
      if (opaque(i) && i % 16 !== 0) continue;
      const b = Buffer.from(der);
      b[i] = b[i]! ^ 0x5a;
      inputs.push(b);
      flipped.set(b, i);
    }
    // The inner contentType OID's value (offset 348, 9 bytes) is the one field whose value nothing checks, as upstream.
    const contentTypeValue = der.indexOf(Buffer.from('06092a864886f70d010701', 'hex')) + 2;
    for (const input of inputs) {
      const err = await unwrapEntry(pkcs7KeyWrapper, input, ctx(p)).then(
        () => undefined,
        (e) => e,
      );
      const at = flipped.get(input);
      if (err === undefined && at !== undefined && at >= contentTypeValue && at < contentTypeValue + 9) continue;
      expect(err, `offset ${at}`).toBeInstanceOf(DecoderError);
      expect(describeError(err)).not.toMatch(/\n/);
    }
  });

  it('bad certificate bytes give upstream’s message', async () => {
    await expect(unwrapEntry(pkcs7KeyWrapper, Buffer.alloc(1), ctx(params([skopeoKey('pkcs7-priv.pem')], [Buffer.from('not a cert')])))).rejects.toThrow(
      'PKCS7: Could not parse x509 certificate',
    );
  });
});

describe('pkcs7 key wrapper against OpenSSL-made EnvelopedData (CBC content, OAEP, BER streaming)', () => {
  let dir: string;
  const message = Buffer.from('{"symkey":"T+WERK7/YMh3QIMSc9lNFmEcawuBrBMBkfhEs/R9Q0I=","digest":"","cipheroptions":{}}');
  const make = (name: string, extra: string[]): Buffer => {
    const out = join(dir, name);
    const r = spawnSync(
      'openssl',
      ['cms', '-encrypt', '-binary', '-in', join(dir, 'msg'), '-recip', join(V131, 'keys', 'pkcs7_cert.pem'), '-outform', 'DER', '-out', out, ...extra],
      { timeout: 20_000, encoding: 'utf8' },
    );
    expect(r.status, r.stderr).toBe(0);
    return readFileSync(out);
  };
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'pkcs7-test-'));
    writeFileSync(join(dir, 'msg'), message);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // OpenSSL's EnvelopedData content is CBC (its GCM output is AuthEnvelopedData, another content type). The
  // registry chooses that OID, and CBC under a genuine wrapped key is a padding oracle: refused before any RSA.
  const cases: Array<[string, string[], string]> = [
    ['AES-256-CBC, rsaEncryption (with NULL params)', ['-aes-256-cbc'], 'aes-256-cbc'],
    ['AES-128-CBC, RSAES-OAEP SHA-256', ['-aes-128-cbc', '-keyopt', 'rsa_padding_mode:oaep', '-keyopt', 'rsa_oaep_md:sha256'], 'aes-128-cbc'],
    ['AES-192-CBC, RSAES-OAEP default (SHA-1) parameters', ['-aes-192-cbc', '-keyopt', 'rsa_padding_mode:oaep'], 'aes-192-cbc'],
    ['indefinite-length BER (-stream)', ['-aes-128-cbc', '-stream'], 'aes-128-cbc'],
  ];
  it.each(cases)('refuses CBC content encryption: %s', async (name, extra, cipher) => {
    const der = make(name.replace(/\W+/g, '_'), extra);
    // The BER walker reads the envelope (recipients, OAEP parameters, indefinite lengths) up to the content
    // algorithm, which it then refuses with one fixed line.
    expect(() => parseEnvelopedData(der)).toThrow(`PKCS7: content encryption ${cipher} is refused (unauthenticated); only AES-GCM, as ocicrypt writes it`);
    await expect(unwrapEntry(pkcs7KeyWrapper, der, ctx(params([v131Key('pkcs7_key.pem')], [v131Key('pkcs7_cert.pem')])))).rejects.toThrow(/refused \(unauthenticated\)/);
  });

  it('AuthEnvelopedData (OpenSSL -aes-128-gcm) is not the EnvelopedData ocicrypt writes', async () => {
    const der = make('authenveloped', ['-aes-128-gcm']);
    await expect(unwrapEntry(pkcs7KeyWrapper, der, ctx(params([v131Key('pkcs7_key.pem')], [v131Key('pkcs7_cert.pem')])))).rejects.toThrow(/is not enveloped data/);
  });
});

describe('EME-PKCS1-v1_5 unpadding', () => {
  const k = 256;
  const valid = (m: Buffer): Buffer => Buffer.concat([Buffer.from([0, 2]), Buffer.alloc(k - 3 - m.length, 0x5a), Buffer.from([0]), m]);
  const msg = Buffer.alloc(16, 0xab);
  const synthetic = (): Buffer => Buffer.alloc(16, 0x11);

  it('returns the message for valid padding', () => {
    expect(unpadPkcs1v15(valid(msg), 16, synthetic()).equals(msg)).toBe(true);
  });

  it('returns the synthetic substitute for every kind of bad padding', () => {
    const bad: Buffer[] = [];
    let b = valid(msg);
    b[0] = 1;
    bad.push(b);
    b = valid(msg);
    b[1] = 1;
    bad.push(b);
    b = valid(msg);
    b.fill(0x5a, 2, k - 16); // no separator
    bad.push(b);
    b = valid(msg);
    b[5] = 0; // separator too early: PS shorter than 8
    bad.push(b);
    bad.push(valid(Buffer.alloc(24, 0xab))); // wrong message length
    for (const em of bad) expect(unpadPkcs1v15(em, 16, synthetic())).toEqual(synthetic());
    expect(unpadPkcs1v15(Buffer.alloc(20), 16, synthetic())).toEqual(synthetic());
  });
});

describe('implicit rejection (synthetic content key)', () => {
  const rsa = createPrivateKey(skopeoKey('pkcs7-priv.pem'));
  const other = createPrivateKey(skopeoKey('rsa-priv.pem'));
  const c1 = Buffer.alloc(256, 7);
  const c2 = Buffer.alloc(256, 8);

  it('is the same for the same private key and ciphertext (asking twice reveals nothing new)', () => {
    expect(syntheticKey(rsa, c1, 16)).toEqual(syntheticKey(rsa, c1, 16));
    expect(syntheticKey(rsa, c1, 32).subarray(0, 16)).not.toEqual(Buffer.alloc(16));
  });

  it('differs with the ciphertext and with the private key, and is not all zeros', () => {
    expect(syntheticKey(rsa, c1, 16)).not.toEqual(syntheticKey(rsa, c2, 16));
    expect(syntheticKey(rsa, c1, 16)).not.toEqual(syntheticKey(other, c1, 16));
    expect(syntheticKey(rsa, c1, 16)).not.toEqual(Buffer.alloc(16));
  });
});

describe('BER reader', () => {
  it('reads definite and indefinite lengths and nested TLVs', () => {
    const seq = readSingle(Buffer.from('3080020101040200ff0000', 'hex'));
    const [i, o] = children(seq);
    expect(i!.value.toString('hex')).toBe('01');
    expect(o!.value.toString('hex')).toBe('00ff');
    expect(readOid(readSingle(Buffer.from('06092a864886f70d010703', 'hex')), 'oid')).toBe('1.2.840.113549.1.7.3');
  });

  it('rejects out-of-bounds lengths, trailing data, indefinite primitives and deep nesting', () => {
    for (const hex of ['3005020101', '0282ffff00', '300000', '0480', '30', '3084ffffffff', '1f']) {
      expect(() => readSingle(Buffer.from(hex, 'hex')), hex).toThrow(BerError);
    }
    const deep = Buffer.concat([Buffer.alloc(200, 0x30).map((_, j) => (j % 2 ? 0x80 : 0x30)), Buffer.alloc(200, 0)]);
    expect(() => readTlv(deep, 0)).toThrow(/nesting too deep/);
  });
});

describe('schemes coco-decoder does not implement (pgp, pkcs11)', () => {
  it('keep upstream’s key selection and fail with an actionable message', async () => {
    const gpg: DecryptParameters = { 'gpg-privatekeys': [v131Key('pgp_secring.gpg')] };
    expect(pgpKeyWrapper.supported).toBe(false);
    expect(pgpKeyWrapper.scheme).toBe('pgp');
    expect(pgpKeyWrapper.noPossibleKeys({ privkeys: [Buffer.from('k')] })).toBe(true);
    expect(pgpKeyWrapper.noPossibleKeys(gpg)).toBe(false);
    expect(pgpKeyWrapper.hasPrivateKeys(gpg)).toBe(true);
    const pgpEntry = readFileSync(join(V131, 'annotations', 'org.opencontainers.image.enc.keys.pgp.0.bin'));
    const err = await unwrapEntry(pgpKeyWrapper, pgpEntry, ctx(gpg)).catch((e) => e);
    expect(err).toBeInstanceOf(DecoderError);
    expect(err.message).toBe('pgp key wrapping is not supported by coco-decoder; re-encrypt the image for jwe, pkcs7 or a key provider');

    expect(pkcs11KeyWrapper.scheme).toBe('pkcs11');
    expect(pkcs11KeyWrapper.supported).toBe(false);
    expect(pkcs11KeyWrapper.noPossibleKeys({})).toBe(true);
    expect(pkcs11KeyWrapper.noPossibleKeys({ 'pkcs11-yamls': [Buffer.from('pkcs11:')] })).toBe(false);
    await expect(unwrapEntry(pkcs11KeyWrapper, Buffer.from('{}'), ctx({ 'pkcs11-yamls': [Buffer.from('x')] }))).rejects.toThrow(
      /^pkcs11 key wrapping is not supported by coco-decoder; re-encrypt the image for jwe, pkcs7 or a key provider$/,
    );
  });
});
