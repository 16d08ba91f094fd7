/**
 * The wrapping side of the `jwe` scheme, as ocicrypt's `keywrap/jwe` writes it (go-jose): one JWE over the
 * private options for all recipients, `enc` A256GCM; `RSA-OAEP` for RSA keys, `ECDH-ES+A256KW` for EC keys;
 * flattened JSON for one recipient, general JSON for several. Any ocicrypt client (skopeo, podman, ctd-decoder)
 * can read it with the matching private key.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { FlattenedEncrypt, GeneralEncrypt } from 'jose';
import { DecoderError } from '../../util/errors.js';

function algFor(key: KeyObject, source: string): string {
  if (key.asymmetricKeyType === 'rsa') return 'RSA-OAEP';
  if (key.asymmetricKeyType === 'ec') return 'ECDH-ES+A256KW';
  throw new DecoderError(`JWE recipient ${source}: ${String(key.asymmetricKeyType)} keys are not supported (RSA or EC)`);
}

/** `publicKeys`: PEM or DER public keys (or certificates' keys), each with a name for messages. */
export async function wrapJwe(privateOptions: Buffer, publicKeys: Array<{ key: Buffer; source: string }>): Promise<string> {
  const keys = publicKeys.map(({ key, source }) => {
    try {
      const k = createPublicKey(key.toString('latin1').includes('-----BEGIN') ? key.toString('utf8') : { key, format: 'der', type: 'spki' });
      return { key: k, alg: algFor(k, source) };
    } catch (err) {
      if (err instanceof DecoderError) throw err;
      throw new DecoderError(`JWE recipient ${source} is not a public key (PEM or DER SubjectPublicKeyInfo)`);
    }
  });
  const [first] = keys;
  if (!first) throw new DecoderError('no JWE recipients');
  if (keys.length === 1) {
    const jwe = await new FlattenedEncrypt(privateOptions).setProtectedHeader({ alg: first.alg, enc: 'A256GCM' }).encrypt(first.key);
    return JSON.stringify({ protected: jwe.protected, encrypted_key: jwe.encrypted_key, iv: jwe.iv, ciphertext: jwe.ciphertext, tag: jwe.tag });
  }
  const enc = new GeneralEncrypt(privateOptions).setProtectedHeader({ enc: 'A256GCM' });
  for (const k of keys) enc.addRecipient(k.key).setUnprotectedHeader({ alg: k.alg });
  const jwe = await enc.encrypt();
  return JSON.stringify({ protected: jwe.protected, recipients: jwe.recipients, iv: jwe.iv, ciphertext: jwe.ciphertext, tag: jwe.tag });
}
