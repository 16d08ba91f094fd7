/**
 * The `pkcs7` key-wrap scheme (ocicrypt `keywrap/pkcs7`): the annotation entry is a DER/BER PKCS#7 EnvelopedData
 * (pkcs7-enveloped-data.ts) whose content is the privopts JSON. The RecipientInfo is chosen by matching issuer and
 * serial number against the certificates in `x509s`, as smallstep/pkcs7 does. RSA PKCS#1 v1.5 key transport goes
 * through rsa-pkcs1v15.ts (implicit rejection), so every failure surfaces the same way, at the content
 * decryption step, and the padding check is not an oracle. No process-wide security switch is touched.
 */
import { constants, createDecipheriv, createPublicKey, privateDecrypt, type KeyObject } from 'node:crypto';
import { DecoderError } from '../../util/errors.js';
import { BerError } from '../asn1/ber.js';
import { parsePrivateKey, UnsupportedPrivateKeyError } from '../keys/private-key.js';
import { privateKeysOf, type DecryptParameters, type KeyWrapper, type UnwrapContext, type UnwrappedEntry } from './keywrapper.js';
import {
  parseCertificate,
  parseEnvelopedData,
  type CertificateId,
  type EncryptedContent,
  type EnvelopedData,
  type KeyTransRecipient,
} from './pkcs7-enveloped-data.js';
import { syntheticKey, unpadPkcs1v15 } from './rsa-pkcs1v15.js';

export { parseEnvelopedData } from './pkcs7-enveloped-data.js';
export { syntheticKey, unpadPkcs1v15 } from './rsa-pkcs1v15.js';

/** Recovers the content-encryption key; a key of the right length always comes back (synthetic if unwrap failed). */
function unwrapContentKey(key: KeyObject, r: KeyTransRecipient, keyLength: number): Buffer {
  if (r.transport.kind === 'pkcs1v15') {
    let em: Buffer;
    try {
      em = privateDecrypt({ key, padding: constants.RSA_NO_PADDING }, r.encryptedKey);
    } catch {
      // Only ciphertext length / value ≥ modulus get here: public properties, not an oracle.
      return syntheticKey(key, r.encryptedKey, keyLength);
    }
    const cek = unpadPkcs1v15(em, keyLength, syntheticKey(key, r.encryptedKey, keyLength));
    em.fill(0);
    return cek;
  }
  if (r.transport.kind === 'oaep') {
    try {
      const cek = privateDecrypt(
        { key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: r.transport.hash, oaepLabel: r.transport.label },
        r.encryptedKey,
      );
      if (cek.length === keyLength) return cek;
      cek.fill(0);
    } catch {
      // fall through to the same uniform failure as bad PKCS#1 v1.5 padding
    }
  }
  return syntheticKey(key, r.encryptedKey, keyLength);
}

function decryptContent(c: EncryptedContent, cek: Buffer): Buffer | undefined {
  const ct = c.data.subarray(0, c.data.length - c.tagLength);
  const tag = c.data.subarray(c.data.length - c.tagLength);
  let head: Buffer | undefined;
  try {
    const d = createDecipheriv(c.cipher.name, cek, c.iv, { authTagLength: c.tagLength });
    d.setAuthTag(tag);
    head = d.update(ct);
    const plain = Buffer.concat([head, d.final()]);
    return plain;
  } catch {
    return undefined;
  } finally {
    head?.fill(0); // unauthenticated until final(); the concatenated copy is what we return
  }
}

function sameIssuerAndSerial(r: KeyTransRecipient, cert: CertificateId): boolean {
  return r.serial === cert.serial && r.issuer.equals(cert.issuer);
}

export const pkcs7KeyWrapper: KeyWrapper = {
  scheme: 'pkcs7',
  supported: true,

  noPossibleKeys(params: DecryptParameters): boolean {
    return privateKeysOf(params).length === 0;
  },

  hasPrivateKeys(params: DecryptParameters): boolean {
    return privateKeysOf(params).length > 0;
  },

  async unwrap(entry: Buffer, ctx: UnwrapContext): Promise<UnwrappedEntry | null> {
    const keys = privateKeysOf(ctx.params);
    if (keys.length === 0) throw new DecoderError('no private keys found for PKCS7 decryption');
    const passwords = ctx.params['privkeys-passwords'] ?? [];
    if (passwords.length !== keys.length) {
      throw new DecoderError('private key password array length must be same as that of private keys');
    }
    const certs = (ctx.params['x509s'] ?? []).map((c) => parseCertificate(c ?? Buffer.alloc(0)));
    if (certs.length === 0) throw new DecoderError('no x509 certificates found needed for PKCS7 decryption');

    let envelope: EnvelopedData;
    try {
      envelope = parseEnvelopedData(entry);
    } catch (err) {
      if (err instanceof BerError) throw new DecoderError(`could not parse PKCS7 packet: ${err.message}`, { cause: err });
      throw err;
    }
    const { content } = envelope;
    let unsupportedTransport: string | undefined;

    for (let i = 0; i < keys.length; i++) {
      let key: KeyObject;
      try {
        key = parsePrivateKey(keys[i] ?? Buffer.alloc(0), passwords[i] ?? null, 'PKCS7');
      } catch (err) {
        if (err instanceof UnsupportedPrivateKeyError) continue;
        throw err; // upstream aborts the scheme on an unparsable key (e.g. wrong password)
      }
      if (key.asymmetricKeyType !== 'rsa') continue; // key transport is RSA only
      const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
      for (const cert of certs) {
        // Pairing the key with its own certificate first keeps a mismatched key from producing garbage
        // through an unauthenticated (CBC) content cipher.
        if (!spki.equals(cert.spki)) continue;
        const recipient = envelope.recipients.find((r) => sameIssuerAndSerial(r, cert));
        if (!recipient) continue;
        if (recipient.transport.kind === 'unsupported') {
          unsupportedTransport = recipient.transport.oid;
          continue;
        }
        const cek = unwrapContentKey(key, recipient, content.cipher.keyLength);
        const plain = decryptContent(content, cek);
        cek.fill(0);
        if (plain) return { privopts: plain };
      }
    }
    const hint = unsupportedTransport ? ` (key transport ${unsupportedTransport} is not supported)` : '';
    throw new DecoderError(`PKCS7: No suitable private key found for decryption${hint}`);
  },
};
