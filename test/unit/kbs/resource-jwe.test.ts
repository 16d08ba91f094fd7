/**
 * The KBS resource JWE decrypted with node:crypto (src/kbs/resource-jwe.ts) against JWEs made by jose, an
 * independent RFC 7516/7518 implementation, the way trustee's `kbs/src/jwe` makes them (no `aad`).
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { FlattenedEncrypt } from 'jose';
import { describe, expect, it } from 'vitest';
import { parseResourceJwe } from '../../../src/kbs/protocol.js';
import { decryptResourceJwe } from '../../../src/kbs/resource-jwe.js';
import type { JweKeyAlgorithm } from '../../../src/kbs/tee-key.js';

const keys = {
  'ECDH-ES+A256KW': () => generateKeyPairSync('ec', { namedCurve: 'P-256' }),
  'RSA-OAEP-256': () => generateKeyPairSync('rsa', { modulusLength: 2048 }),
} as const;

async function encrypt(alg: JweKeyAlgorithm, pub: Parameters<FlattenedEncrypt['encrypt']>[0], plaintext: Buffer, extra: Record<string, unknown> = {}) {
  const jwe = await new FlattenedEncrypt(plaintext).setProtectedHeader({ alg, enc: 'A256GCM', ...extra }).encrypt(pub);
  return parseResourceJwe(jwe, alg);
}

describe('decryptResourceJwe', () => {
  it.each(Object.keys(keys) as JweKeyAlgorithm[])('%s: decrypts what jose encrypted to the TEE key, byte for byte', async (alg) => {
    const { publicKey, privateKey } = keys[alg as keyof typeof keys]();
    const kek = randomBytes(32);
    expect(decryptResourceJwe(await encrypt(alg, publicKey, kek), alg, privateKey).equals(kek)).toBe(true);
  });

  it('ECDH-ES+A256KW with apu/apv in the header: they enter the Concat KDF', async () => {
    const { publicKey, privateKey } = keys['ECDH-ES+A256KW']();
    const jwe = await new FlattenedEncrypt(Buffer.from('kek'))
      .setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' })
      .setKeyManagementParameters({ apu: Buffer.from('alice'), apv: Buffer.from('bob') })
      .encrypt(publicKey);
    expect(decryptResourceJwe(parseResourceJwe(jwe, 'ECDH-ES+A256KW'), 'ECDH-ES+A256KW', privateKey).toString()).toBe('kek');
  });

  it('refuses another key, a flipped tag, a changed protected header and crit/zip', async () => {
    const { publicKey, privateKey } = keys['ECDH-ES+A256KW']();
    const other = keys['ECDH-ES+A256KW']().privateKey;
    const jwe = await encrypt('ECDH-ES+A256KW', publicKey, Buffer.from('kek'));
    expect(() => decryptResourceJwe(jwe, 'ECDH-ES+A256KW', other)).toThrow();
    const tag = Buffer.from(jwe.tag, 'base64url');
    tag[0]! ^= 1;
    expect(() => decryptResourceJwe({ ...jwe, tag: tag.toString('base64url') }, 'ECDH-ES+A256KW', privateKey)).toThrow();
    const hdr = JSON.parse(Buffer.from(jwe.protected, 'base64url').toString());
    const reordered = Buffer.from(JSON.stringify({ enc: hdr.enc, ...hdr })).toString('base64url');
    expect(() => decryptResourceJwe({ ...jwe, protected: reordered }, 'ECDH-ES+A256KW', privateKey)).toThrow();
    const crit = await encrypt('ECDH-ES+A256KW', publicKey, Buffer.from('kek'), { crit: ['b64'], b64: true }).catch(() => undefined);
    if (crit) expect(() => decryptResourceJwe(crit, 'ECDH-ES+A256KW', privateKey)).toThrow(/crit/);
    const zipped = { ...jwe, protected: Buffer.from(JSON.stringify({ ...hdr, zip: 'DEF' })).toString('base64url') };
    expect(() => decryptResourceJwe(zipped, 'ECDH-ES+A256KW', privateKey)).toThrow(/crit\/zip/);
  });
});
