import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  LAYER_CIPHER,
  checkPublicOptions,
  cipherOptionsFromUnwrapped,
  layerCipherOptions,
  parsePrivateOptions,
  parsePublicOptions,
  publicOptionsFromAnnotations,
  type PublicLayerOptions,
} from '../../../src/ocicrypt/options.js';
import { PUBOPTS_ANNOTATION } from '../../../src/ocicrypt/keywrap/keywrapper.js';
import { errorOf } from '../../helpers/error-of.js';

const V131 = join(import.meta.dirname, '../../fixtures/ocicrypt-v1.3.1');
const descriptor = JSON.parse(readFileSync(join(V131, 'descriptor.json'), 'utf8')) as { annotations: Record<string, string> };
const privoptsBytes = readFileSync(join(V131, 'privopts.json'));
const puboptsBytes = readFileSync(join(V131, 'annotations/org.opencontainers.image.enc.pubopts.0.bin'));

const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');
const pubWith = (json: object): PublicLayerOptions => parsePublicOptions(JSON.stringify(json));
const HMAC = b64(Buffer.alloc(32, 7));
const KEY = b64(Buffer.alloc(32, 1));
const NONCE = b64(Buffer.alloc(16, 2));

describe('public and private options from the ocicrypt v1.3.1 fixture', () => {
  it('reads the pubopts annotation and the unwrapped privopts into the cipher parameters', () => {
    const pub = publicOptionsFromAnnotations(descriptor.annotations);
    expect(pub.cipher).toBe(LAYER_CIPHER);
    expect(pub).toEqual(parsePublicOptions(puboptsBytes));
    const opts = layerCipherOptions(pub, parsePrivateOptions(privoptsBytes));
    expect(opts.key).toEqual(Buffer.from('T+WERK7/YMh3QIMSc9lNFmEcawuBrBMBkfhEs/R9Q0I=', 'base64'));
    expect(opts.nonce).toEqual(Buffer.from('cwgyk88c6yBgMKWi0MPgWA==', 'base64'));
    expect(opts.hmac).toEqual(Buffer.from('StuDqS5SD4rIf/pwiTxBa9z0AofdsTHYn04h/pEHLh4=', 'base64'));
    expect(parsePrivateOptions(privoptsBytes).digest).toBe('sha256:5bc66eaf67f273597fdba6fa0d925e5351bee835ae5986b8a18fad7dcab52199');
  });
});

describe('upstream error messages', () => {
  const priv = parsePrivateOptions(Buffer.from(JSON.stringify({ symkey: KEY, cipheroptions: { nonce: NONCE } })));

  it('no pubopts annotation is "no cipher type provided"', () => {
    expect(errorOf(() => checkPublicOptions(publicOptionsFromAnnotations({})))).toBe(
      'no cipher type provided',
    );
    expect(errorOf(() => checkPublicOptions(publicOptionsFromAnnotations({ [PUBOPTS_ANNOTATION]: '' })))).toBe(
      'no cipher type provided',
    );
  });

  it('names an unsupported cipher', () => {
    expect(errorOf(() => layerCipherOptions(pubWith({ cipher: 'AES_128_GCM', hmac: HMAC }), priv))).toBe(
      'unsupported cipher type: "AES_128_GCM"',
    );
  });

  it('requires an HMAC of 32 bytes', () => {
    expect(errorOf(() => layerCipherOptions(pubWith({ cipher: LAYER_CIPHER }), priv))).toBe(
      'HMAC is not provided for decryption process',
    );
    expect(errorOf(() => layerCipherOptions(pubWith({ cipher: LAYER_CIPHER, hmac: '' }), priv))).toBe(
      'HMAC is not provided for decryption process',
    );
    expect(errorOf(() => layerCipherOptions(pubWith({ cipher: LAYER_CIPHER, hmac: b64(Buffer.alloc(31)) }), priv))).toMatch(
      /invalid HMAC length of 31 bytes; need 32 bytes/,
    );
  });

  it('requires a 32-byte key', () => {
    const pub = pubWith({ cipher: LAYER_CIPHER, hmac: HMAC });
    const short = parsePrivateOptions(Buffer.from(JSON.stringify({ symkey: b64(Buffer.alloc(16)), cipheroptions: { nonce: NONCE } })));
    expect(errorOf(() => layerCipherOptions(pub, short))).toBe(
      'invalid key length of 16 bytes; need 32 bytes',
    );
    expect(errorOf(() => layerCipherOptions(pub, parsePrivateOptions(Buffer.from('{}'))))).toBe(
      'invalid key length of 0 bytes; need 32 bytes',
    );
  });

  it('rejects malformed pubopts base64 and JSON', () => {
    expect(errorOf(() => publicOptionsFromAnnotations({ [PUBOPTS_ANNOTATION]: 'not base64!' }))).toMatch(
      /^illegal base64 data/,
    );
    expect(errorOf(() => publicOptionsFromAnnotations({ [PUBOPTS_ANNOTATION]: b64('{"cipher":') }))).toMatch(
      /^could not JSON unmarshal pubOptsData: invalid JSON/,
    );
    expect(errorOf(() => parsePublicOptions('{"cipher":1}'))).toMatch(/cannot unmarshal number into Go struct field PublicLayerBlockCipherOptions\.cipher of type string/);
  });

  it('never quotes privopts (it holds the key) in a JSON error', () => {
    const secret = 'c2VjcmV0LWtleS1tYXRlcmlhbC0xMjM0NTY3ODkwYWJjZA==';
    const msg = errorOf(() => parsePrivateOptions(Buffer.from(`{"symkey":"${secret}" garbage`)));
    expect(msg).toBe('could not JSON unmarshal privOptsData: invalid JSON');
    expect(errorOf(() => parsePrivateOptions(Buffer.from(`{"symkey":"${secret}!"}`)))).not.toContain(secret);
  });
});

describe('nonce', () => {
  const pub = (extra: object = {}): PublicLayerOptions => pubWith({ cipher: LAYER_CIPHER, hmac: HMAC, ...extra });
  const privWith = (cipheroptions: object | null): ReturnType<typeof parsePrivateOptions> =>
    parsePrivateOptions(Buffer.from(JSON.stringify({ symkey: KEY, cipheroptions })));

  it('is an error when neither options carry one (upstream would use a random nonce)', () => {
    expect(errorOf(() => layerCipherOptions(pub(), privWith({})))).toMatch(/no nonce in the layer cipher options/);
    expect(errorOf(() => layerCipherOptions(pub({ cipheroptions: {} }), privWith(null)))).toMatch(/no nonce/);
  });

  it('comes from the private options only; one in pubopts (unauthenticated, chosen by the registry) is refused', () => {
    const other = b64(Buffer.alloc(16, 9));
    expect(errorOf(() => checkPublicOptions(pub({ cipheroptions: { nonce: other } })))).toBe(
      'the public layer options carry a nonce; ocicrypt keeps it in the private options only',
    );
    expect(errorOf(() => layerCipherOptions(pub({ cipheroptions: { nonce: other } }), privWith({ nonce: NONCE })))).toMatch(/public layer options carry a nonce/);
    expect(layerCipherOptions(pub({ cipheroptions: {} }), privWith({ nonce: NONCE })).nonce).toEqual(Buffer.alloc(16, 2));
  });

  it('must be 16 bytes', () => {
    expect(errorOf(() => layerCipherOptions(pub(), privWith({ nonce: b64(Buffer.alloc(12)) })))).toMatch(
      /invalid nonce length of 12 bytes; need 16 bytes/,
    );
    expect(errorOf(() => layerCipherOptions(pub(), privWith({ nonce: null })))).toMatch(/invalid nonce length of 0 bytes/);
  });
});

describe('Go encoding/json semantics of the option documents', () => {
  it('matches field names case-insensitively and decodes []byte from number arrays', () => {
    const priv = parsePrivateOptions(
      Buffer.from(JSON.stringify({ SymKey: [...Buffer.alloc(32, 5)], DIGEST: 'sha256:x', CipherOptions: { nonce: [...Buffer.alloc(16, 6)] } })),
    );
    const pub = parsePublicOptions(JSON.stringify({ Cipher: LAYER_CIPHER, HMAC: [...Buffer.alloc(32, 7)], unknown: { a: 1 } }));
    const opts = layerCipherOptions(pub, priv);
    expect(opts.key).toEqual(Buffer.alloc(32, 5));
    expect(opts.nonce).toEqual(Buffer.alloc(16, 6));
    expect(opts.hmac).toEqual(Buffer.alloc(32, 7));
    expect(priv.digest).toBe('sha256:x');
  });

  it('keeps cipheroptions keys case-sensitive (a map, not a struct)', () => {
    const pub = parsePublicOptions(JSON.stringify({ cipher: LAYER_CIPHER, hmac: HMAC }));
    const priv = parsePrivateOptions(Buffer.from(JSON.stringify({ symkey: KEY, cipheroptions: { Nonce: NONCE } })));
    expect(() => layerCipherOptions(pub, priv)).toThrow(/no nonce/);
  });
});

describe('private options after a key was unwrapped', () => {
  const pub = pubWith({ cipher: LAYER_CIPHER, hmac: HMAC });
  const FIXED = 'the private layer options unwrapped with "provider.attestation-agent" are not valid';
  const nonce = b64(Buffer.alloc(16, 2));

  it('every failure gives one fixed message per scheme: nothing derived from the decrypted bytes', () => {
    const bad = [
      '{"symkey":"not base64!!"}',
      `{"symkey":"${KEY}" garbage`,
      `{"symkey":"${b64(Buffer.alloc(16))}","cipheroptions":{"nonce":"${nonce}"}}`,
      `{"symkey":"${KEY}","cipheroptions":{"nonce":"${b64(Buffer.alloc(12))}"}}`,
      `{"symkey":"${KEY}","cipheroptions":{}}`,
      `{"symkey":"${KEY}","digest":7,"cipheroptions":{"nonce":"${nonce}"}}`,
      '[]',
      '',
    ];
    for (const json of bad) {
      expect(errorOf(() => cipherOptionsFromUnwrapped(pub, Buffer.from(json), 'provider.attestation-agent')), json).toBe(FIXED);
    }
  });

  it('valid options give the key, the nonce and the digest, as copies (the caller zeroes them)', () => {
    const privopts = Buffer.from(`{"symkey":"${KEY}","digest":"sha256:abc","cipheroptions":{"nonce":"${nonce}"}}`);
    const opts = cipherOptionsFromUnwrapped(pub, privopts, 'jwe');
    expect(opts.key).toEqual(Buffer.from(KEY, 'base64'));
    expect(opts.nonce).toEqual(Buffer.alloc(16, 2));
    expect(opts.digest).toBe('sha256:abc');
  });
});
