/**
 * JWE decryption with node:crypto directly (src/ocicrypt/keywrap/jwe-decrypt.ts) against jose, the reference: what
 * ocicrypt writes (the v1.3.1 vectors) takes this path, every algorithm it covers gives jose's plaintext, and every
 * tampering or wrong key gives jose's verdict (no plaintext). What it does not cover is handed to jose.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CompactEncrypt, FlattenedEncrypt, GeneralEncrypt, compactDecrypt, flattenedDecrypt, generalDecrypt } from 'jose';
import { describe, expect, it } from 'vitest';
import { jweParts, parseJwe } from '../../../src/ocicrypt/keywrap/jwe.js';
import { decryptJweDirect } from '../../../src/ocicrypt/keywrap/jwe-decrypt.js';
import { parsePrivateKey } from '../../../src/ocicrypt/keys/private-key.js';

const V131 = join(import.meta.dirname, '../../fixtures/ocicrypt-v1.3.1');
const direct = (jwe: string | object, key: KeyObject) => decryptJweDirect(jweParts(parseJwe(Buffer.from(typeof jwe === 'string' ? jwe : JSON.stringify(jwe)))), key);

/** jose's verdict on the same input, the way jwe.ts asks it. */
async function viaJose(jwe: string | object, key: KeyObject): Promise<Buffer | undefined> {
  try {
    if (typeof jwe === 'string') return Buffer.from((await compactDecrypt(jwe, key)).plaintext);
    if ('recipients' in jwe) return Buffer.from((await generalDecrypt(jwe as never, key)).plaintext);
    return Buffer.from((await flattenedDecrypt(jwe as never, key)).plaintext);
  } catch {
    return undefined;
  }
}

const rsa2048 = generateKeyPairSync('rsa', { modulusLength: 2048 });
const rsa3072 = generateKeyPairSync('rsa', { modulusLength: 3072 });
const p256 = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' });
const p521 = generateKeyPairSync('ec', { namedCurve: 'P-521' });
const PLAIN = Buffer.from('{"symkey":"c2VjcmV0","cipheroptions":{"nonce":"bm9uY2U="},"digest":"sha256:00"}');

describe('what ocicrypt writes takes the direct path', () => {
  const descriptor = JSON.parse(readFileSync(join(V131, 'descriptor.json'), 'utf8'));
  const entry = Buffer.from(descriptor.annotations['org.opencontainers.image.enc.keys.jwe'].split(',')[0], 'base64');
  const expected = readFileSync(join(V131, 'privopts.json'));

  it.each(['rsa_priv.pem', 'ec_priv.der', 'rsa_oaep256_priv.jwk'])('the v1.3.1 three-recipient JWE with %s (RSA-OAEP, ECDH-ES+A256KW, RSA-OAEP-256; A256GCM)', (name) => {
    const key = parsePrivateKey(readFileSync(join(V131, 'keys', name)), null, 'JWE');
    const r = decryptJweDirect(jweParts(parseJwe(entry)), key);
    expect(r.kind).toBe('decrypted');
    expect(r.kind === 'decrypted' && r.plaintext.equals(expected)).toBe(true);
  });

  it('a key of none of its recipients is not-for-key, without asking jose', () => {
    const r = decryptJweDirect(jweParts(parseJwe(entry)), rsa3072.privateKey);
    expect(r.kind).toBe('not-for-key');
  });
});

describe('every covered algorithm gives jose’s plaintext, in every serialization', () => {
  const cases = [
    ['RSA-OAEP', rsa2048],
    ['RSA-OAEP-256', rsa3072],
    ['ECDH-ES+A128KW', p256],
    ['ECDH-ES+A192KW', p384],
    ['ECDH-ES+A256KW', p521],
    ['ECDH-ES+A256KW', p256],
  ] as const;
  for (const [alg, pair] of cases) {
    for (const enc of ['A128GCM', 'A192GCM', 'A256GCM']) {
      it(`${alg} (${pair.privateKey.asymmetricKeyDetails?.namedCurve ?? `RSA-${pair.privateKey.asymmetricKeyDetails?.modulusLength}`}) + ${enc}`, async () => {
        const compact = await new CompactEncrypt(PLAIN).setProtectedHeader({ alg, enc, kid: 'k1' }).encrypt(pair.publicKey);
        const flattened = await new FlattenedEncrypt(PLAIN)
          .setProtectedHeader({ enc })
          .setUnprotectedHeader({ alg })
          .setAdditionalAuthenticatedData(Buffer.from('extra'))
          .setKeyManagementParameters(alg.startsWith('ECDH') ? { apu: Buffer.from('Alice'), apv: Buffer.from('Bob') } : {})
          .encrypt(pair.publicKey);
        // The right key second: the first recipient (another key) must simply not match.
        const general = await new GeneralEncrypt(PLAIN)
          .setProtectedHeader({ enc })
          .addRecipient(rsa2048.publicKey === pair.publicKey ? p256.publicKey : rsa2048.publicKey)
          .setUnprotectedHeader({ alg: rsa2048.publicKey === pair.publicKey ? 'ECDH-ES+A256KW' : 'RSA-OAEP-256' })
          .addRecipient(pair.publicKey)
          .setUnprotectedHeader({ alg, kid: 'second' })
          .encrypt();
        for (const jwe of [compact, flattened, general]) {
          const r = direct(jwe, pair.privateKey);
          expect(r.kind).toBe('decrypted');
          if (r.kind !== 'decrypted') continue;
          expect(r.plaintext.equals((await viaJose(jwe, pair.privateKey))!)).toBe(true);
          expect(r.kid).toBe(jwe === flattened ? undefined : jwe === compact ? 'k1' : 'second');
        }
      });
    }
  }
});

describe('tampering and wrong keys: no plaintext, as with jose', () => {
  const flip = (s: string, at = 3): string => {
    const b = Buffer.from(s, 'base64url');
    b[at % b.length]! ^= 1;
    return b.toString('base64url');
  };

  it.each([
    ['ciphertext', (j: Record<string, string>) => ({ ...j, ciphertext: flip(j['ciphertext']!) })],
    ['tag', (j: Record<string, string>) => ({ ...j, tag: flip(j['tag']!) })],
    ['tag truncated to 96 bits', (j: Record<string, string>) => ({ ...j, tag: Buffer.from(j['tag']!, 'base64url').subarray(0, 12).toString('base64url') })],
    ['iv', (j: Record<string, string>) => ({ ...j, iv: flip(j['iv']!) })],
    ['iv of 128 bits', (j: Record<string, string>) => ({ ...j, iv: Buffer.alloc(16, 1).toString('base64url') })],
    ['aad', (j: Record<string, string>) => ({ ...j, aad: Buffer.from('other').toString('base64url') })],
    ['protected header (one member added)', (j: Record<string, string>) => ({ ...j, protected: Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(j['protected']!, 'base64url').toString()), x: 1 })).toString('base64url') })],
    ['encrypted_key', (j: Record<string, string>) => ({ ...j, encrypted_key: flip(j['encrypted_key']!, 40) })],
  ])('%s', async (_name, tamper) => {
    for (const pair of [rsa2048, p256]) {
      const alg = pair === rsa2048 ? 'RSA-OAEP' : 'ECDH-ES+A256KW';
      const jwe = await new FlattenedEncrypt(PLAIN)
        .setProtectedHeader({ enc: 'A256GCM' })
        .setUnprotectedHeader({ alg })
        .setAdditionalAuthenticatedData(Buffer.from('extra'))
        .encrypt(pair.publicKey);
      const bad = tamper(jwe as unknown as Record<string, string>);
      expect(direct(bad, pair.privateKey).kind).toBe('not-for-key');
      expect(await viaJose(bad, pair.privateKey)).toBeUndefined();
    }
  });

  it('an ephemeral key that is not on the curve, and one of another curve', async () => {
    const jwe = (await new FlattenedEncrypt(PLAIN).setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' }).encrypt(p256.publicKey)) as unknown as Record<string, string>;
    const header = JSON.parse(Buffer.from(jwe['protected']!, 'base64url').toString());
    const offCurve = { ...header, epk: { ...header.epk, y: flip(header.epk.y, 5) } };
    const bad = { ...jwe, protected: Buffer.from(JSON.stringify(offCurve)).toString('base64url') };
    expect(direct(bad, p256.privateKey).kind).toBe('not-for-key');
    expect(await viaJose(bad, p256.privateKey)).toBeUndefined();
    expect(direct(jwe, p384.privateKey).kind).toBe('not-for-key');
    expect(await viaJose(jwe, p384.privateKey)).toBeUndefined();
  });

  it('a key of the wrong type for the recipient', async () => {
    const jwe = await new CompactEncrypt(PLAIN).setProtectedHeader({ alg: 'RSA-OAEP-256', enc: 'A256GCM' }).encrypt(rsa2048.publicKey);
    expect(direct(jwe, p256.privateKey).kind).toBe('not-for-key');
    expect(direct(jwe, rsa3072.privateKey).kind).toBe('not-for-key');
  });
});

describe('what it does not cover goes to jose', () => {
  it.each([
    ['a CBC-HS content encryption', { alg: 'RSA-OAEP', enc: 'A256CBC-HS512' }],
    ['crit', { alg: 'RSA-OAEP', enc: 'A256GCM', crit: ['exp'], exp: 1 }],
    ['zip', { alg: 'RSA-OAEP', enc: 'A256GCM', zip: 'DEF' }],
  ])('%s', (_name, header) => {
    const protectedB64 = Buffer.from(JSON.stringify(header)).toString('base64url');
    const compact = `${protectedB64}.AAAA.${'A'.repeat(16)}.AAAA.${'A'.repeat(22)}`;
    expect(direct(compact, rsa2048.privateKey).kind).toBe('unsupported');
  });

  it('an X25519 ephemeral key, an RSA key under 2048 bits, a header name used twice, a non-base64url member', async () => {
    const x25519 = generateKeyPairSync('x25519');
    const okp = await new CompactEncrypt(PLAIN).setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' }).encrypt(x25519.publicKey);
    expect(direct(okp, x25519.privateKey).kind).toBe('unsupported');

    const flat = (await new FlattenedEncrypt(PLAIN).setProtectedHeader({ enc: 'A256GCM' }).setUnprotectedHeader({ alg: 'RSA-OAEP' }).encrypt(rsa2048.publicKey)) as unknown as Record<string, unknown>;
    expect(direct(flat, generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey).kind).toBe('unsupported');
    const twice = { ...flat, unprotected: { enc: 'A256GCM' } };
    expect(direct(twice, rsa2048.privateKey).kind).toBe('unsupported');
    expect(await viaJose(twice, rsa2048.privateKey)).toBeUndefined();
    const general = { protected: flat['protected'], iv: flat['iv'], ciphertext: flat['ciphertext'], tag: flat['tag'], recipients: [{ header: flat['header'], encrypted_key: `${flat['encrypted_key'] as string}!` }] };
    expect(direct(general, rsa2048.privateKey).kind).toBe('unsupported');
  });
});
