import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  decodeFirstPemBlock,
  parsePrivateKey,
  PrivateKeyPasswordError,
  UnsupportedPrivateKeyError,
} from '../../../src/ocicrypt/keys/private-key.js';
import { DecoderError } from '../../../src/util/errors.js';

const FIX = join(import.meta.dirname, '../../fixtures');
const skopeoKey = (name: string): Buffer => readFileSync(join(FIX, 'ocicrypt', 'keys', name));
const v131Key = (name: string): Buffer => readFileSync(join(FIX, 'ocicrypt-v1.3.1', 'keys', name));

function publicDer(k: KeyObject): Buffer {
  return (k.type === 'public' ? k : createPublicKey(k)).export({ format: 'der', type: 'spki' });
}

describe('parsePrivateKey: the fixtures', () => {
  const cases: Array<[string, () => Buffer, string, () => Buffer]> = [
    ['PKCS#1 PEM', () => v131Key('rsa_priv.pem'), 'rsa', () => v131Key('rsa_pub.pem')],
    ['SEC1 DER', () => v131Key('ec_priv.der'), 'ec', () => v131Key('ec_pub.der')],
    ['private JWK', () => v131Key('rsa_oaep256_priv.jwk'), 'rsa', () => v131Key('rsa_oaep256_pub.jwk')],
    ['SEC1 PEM (EC PRIVATE KEY, refused upstream)', () => skopeoKey('ec-priv.pem'), 'ec', () => skopeoKey('ec-pub.pem')],
    ['PKCS#8 PEM (EC)', () => skopeoKey('ec-priv-pkcs8.pem'), 'ec', () => skopeoKey('ec-pub.pem')],
    ['PKCS#8 PEM (RSA-3072)', () => skopeoKey('rsa2-priv.pem'), 'rsa', () => skopeoKey('rsa2-priv.pem')],
  ];
  it.each(cases)('%s', (_name, data, type, pub) => {
    const key = parsePrivateKey(data(), null, 'JWE');
    expect(key.type).toBe('private');
    expect(key.asymmetricKeyType).toBe(type);
    const pubData = pub();
    const expected = pubData.toString('latin1').trimStart().startsWith('{')
      ? createPublicKey({ key: JSON.parse(pubData.toString('utf8')), format: 'jwk' })
      : pubData.toString('latin1').includes('-----BEGIN')
        ? createPublicKey(pubData)
        : createPublicKey({ key: pubData, format: 'der', type: 'spki' });
    expect(publicDer(key).equals(publicDer(expected))).toBe(true);
  });

  it('legacy encrypted PEM with the right password', () => {
    const key = parsePrivateKey(v131Key('rsa_priv_enc_secret.pem'), Buffer.from('secret'), 'JWE');
    expect(publicDer(key).equals(publicDer(createPublicKey(v131Key('rsa_pub.pem'))))).toBe(true);
  });

  it('legacy encrypted PEM without / with a wrong password: upstream’s messages, as password errors', () => {
    const data = v131Key('rsa_priv_enc_secret.pem');
    expect(() => parsePrivateKey(data, null, 'JWE')).toThrow(/^JWE: Missing password for encrypted private key$/);
    expect(() => parsePrivateKey(data, null, 'JWE')).toThrow(PrivateKeyPasswordError);
    expect(() => parsePrivateKey(data, Buffer.from('wrong'), 'PKCS7')).toThrow(/^PKCS7: Wrong password: could not decrypt private key$/);
    expect(() => parsePrivateKey(data, Buffer.alloc(0), '')).toThrow(/^Wrong password: could not decrypt private key$/);
  });
});

describe('parsePrivateKey: encodings', () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ed = generateKeyPairSync('ed25519').privateKey;
  const forms: Array<[string, Buffer]> = [
    ['DER PKCS#8', rsa.export({ format: 'der', type: 'pkcs8' })],
    ['DER PKCS#1', rsa.export({ format: 'der', type: 'pkcs1' })],
    ['PEM PKCS#8 with leading text and CRLF', Buffer.from('comment line\r\n' + (rsa.export({ format: 'pem', type: 'pkcs8' }) as string).replace(/\n/g, '\r\n'))],
    ['PEM PKCS#1', Buffer.from(rsa.export({ format: 'pem', type: 'pkcs1' }) as string)],
    ['Ed25519 PKCS#8 PEM', Buffer.from(ed.export({ format: 'pem', type: 'pkcs8' }) as string)],
  ];
  it.each(forms)('%s', (_name, data) => {
    expect(parsePrivateKey(data, null, 'JWE').type).toBe('private');
  });

  it('PKCS#8 ENCRYPTED PRIVATE KEY with a password (an extension over upstream)', () => {
    const pem = Buffer.from(rsa.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'pw' }) as string);
    expect(publicDer(parsePrivateKey(pem, Buffer.from('pw'), 'JWE')).equals(publicDer(rsa))).toBe(true);
    expect(() => parsePrivateKey(pem, null, 'JWE')).toThrow('JWE: Missing password for encrypted private key');
    expect(() => parsePrivateKey(pem, Buffer.from('px'), 'JWE')).toThrow('JWE: Wrong password: could not decrypt private key');
  });

  it('a public JWK is refused with upstream’s message', () => {
    expect(() => parsePrivateKey(v131Key('rsa_oaep256_pub.jwk'), null, 'JWE')).toThrow(/^JWE: JWK is not a private key$/);
  });

  it('public keys, certificates and garbage are not private keys, and the message carries no key bytes', () => {
    for (const data of [v131Key('rsa_pub.pem'), v131Key('ec_pub.der'), v131Key('pkcs7_cert.pem'), Buffer.from('hello'), Buffer.alloc(0), Buffer.from('{"kty":"oct","k":"AAAA"}')]) {
      let err: unknown;
      try {
        parsePrivateKey(data, null, 'JWE');
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(DecoderError);
      expect(err).not.toBeInstanceOf(PrivateKeyPasswordError);
      const msg = (err as Error).message;
      expect(msg).toMatch(/^JWE: /);
      expect(msg).not.toMatch(/\n/);
      const body = data.toString('latin1').split('\n')[1];
      if (body && body.length > 16) expect(msg).not.toContain(body.slice(0, 16));
    }
  });

  it('a PKCS#11 key file is recognised and refused as unsupported', () => {
    const yaml = Buffer.from('pkcs11:\n  uri: pkcs11:token=t;object=k;type=private?pin-value=1234&module-name=softhsm2\nmodule:\n  env:\n    A: b\n');
    expect(() => parsePrivateKey(yaml, null, 'JWE')).toThrow(UnsupportedPrivateKeyError);
    expect(() => parsePrivateKey(yaml, null, 'JWE')).toThrow('JWE: PKCS#11 key files are not supported by coco-decoder');
  });
});

describe('decodeFirstPemBlock', () => {
  it('reads RFC 1421 headers and the body', () => {
    const block = decodeFirstPemBlock(v131Key('rsa_priv_enc_secret.pem'))!;
    expect(block.label).toBe('RSA PRIVATE KEY');
    expect(block.headers.get('Proc-Type')).toBe('4,ENCRYPTED');
    expect(block.headers.get('DEK-Info')).toMatch(/^AES-256-CBC,/);
    expect(block.der.length).toBeGreaterThan(1000);
  });
  it('returns undefined for non-PEM and mismatched END labels', () => {
    expect(decodeFirstPemBlock(Buffer.from('nope'))).toBeUndefined();
    expect(decodeFirstPemBlock(Buffer.from('-----BEGIN A-----\nAAAA\n-----END B-----\n'))).toBeUndefined();
  });
});

describe('parsePrivateKey: the in-memory parse cache', () => {
  it('returns the same KeyObject for the same Buffer (the keys directory and the schemes parse each key once)', () => {
    const data = v131Key('rsa_priv.pem');
    expect(parsePrivateKey(data, null, '')).toBe(parsePrivateKey(data, null, 'JWE'));
    // An equal copy is a different Buffer: parsed on its own, never confused with another buffer's key.
    expect(parsePrivateKey(Buffer.from(data), null, 'JWE')).not.toBe(parsePrivateKey(data, null, 'JWE'));
  });

  it('never serves a password-protected key from the cache: a wrong password after the right one still fails', () => {
    const data = v131Key('rsa_priv_enc_secret.pem');
    expect(parsePrivateKey(data, Buffer.from('secret'), 'JWE').type).toBe('private');
    expect(() => parsePrivateKey(data, Buffer.from('wrong'), 'JWE')).toThrow(PrivateKeyPasswordError);
    expect(() => parsePrivateKey(data, null, 'JWE')).toThrow(/Missing password for encrypted private key/);
  });
});
