/**
 * The ephemeral "TEE key" whose public half is bound into the evidence (runtime data) and to which the KBS
 * encrypts resources. The JWK is built by hand with exactly the members trustee's typed `TeePubKey` keeps: the
 * server re-serialises it through that type before hashing, so any extra member (`ext`, `key_ops`, …) would break
 * the REPORT_DATA match. The private key is exported as PKCS#8 only for the root-only tmpfs token cache.
 */
import { createPrivateKey, createPublicKey, generateKeyPair } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import type { TeeKeyAlgorithm } from '../config/types.js';
import { DecoderError } from '../util/errors.js';

export interface EcTeeJwk {
  kty: 'EC';
  crv: 'P-256';
  alg: 'ECDH-ES+A256KW';
  x: string;
  y: string;
}

export interface RsaTeeJwk {
  kty: 'RSA';
  alg: 'RSA-OAEP-256';
  n: string;
  e: string;
}

export type TeeJwk = EcTeeJwk | RsaTeeJwk;
export type JweKeyAlgorithm = TeeJwk['alg'];

export interface TeeKeyPair {
  readonly algorithm: TeeKeyAlgorithm;
  readonly privateKey: KeyObject;
  /** Exactly what is sent as `tee-pubkey` and hashed into the report data. */
  readonly publicJwk: TeeJwk;
}

const RSA_BITS = 2048;
const P256_COORD_BYTES = 32;
const generateKeyPairAsync = promisify(generateKeyPair);

export function jweAlgorithmFor(algorithm: TeeKeyAlgorithm): JweKeyAlgorithm {
  return algorithm === 'ec-p256' ? 'ECDH-ES+A256KW' : 'RSA-OAEP-256';
}

export async function generateTeeKeyPair(algorithm: TeeKeyAlgorithm): Promise<TeeKeyPair> {
  const { privateKey } =
    algorithm === 'ec-p256'
      ? await generateKeyPairAsync('ec', { namedCurve: 'P-256' })
      : await generateKeyPairAsync('rsa', { modulusLength: RSA_BITS, publicExponent: 0x10001 });
  return fromPrivateKey(algorithm, privateKey);
}

export function exportTeePrivateKey(pair: TeeKeyPair): Buffer {
  return pair.privateKey.export({ format: 'der', type: 'pkcs8' });
}

/** Re-creates a cached key pair; throws if the key is not of the configured kind (the caller treats that as corrupt). */
export function importTeeKeyPair(algorithm: TeeKeyAlgorithm, pkcs8: Buffer): TeeKeyPair {
  return fromPrivateKey(algorithm, createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }));
}

function fromPrivateKey(algorithm: TeeKeyAlgorithm, privateKey: KeyObject): TeeKeyPair {
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' });
  if (algorithm === 'ec-p256') {
    if (privateKey.asymmetricKeyType !== 'ec' || jwk.crv !== 'P-256' || !jwk.x || !jwk.y) {
      throw new DecoderError('TEE key is not an EC P-256 key');
    }
    const publicJwk: EcTeeJwk = {
      kty: 'EC',
      crv: 'P-256',
      alg: 'ECDH-ES+A256KW',
      x: fixedWidth(jwk.x, P256_COORD_BYTES),
      y: fixedWidth(jwk.y, P256_COORD_BYTES),
    };
    return { algorithm, privateKey, publicJwk };
  }
  if (privateKey.asymmetricKeyType !== 'rsa' || privateKey.asymmetricKeyDetails?.modulusLength !== RSA_BITS || !jwk.n || !jwk.e) {
    throw new DecoderError(`TEE key is not an RSA-${RSA_BITS} key`);
  }
  const publicJwk: RsaTeeJwk = { kty: 'RSA', alg: 'RSA-OAEP-256', n: jwk.n, e: jwk.e };
  return { algorithm, privateKey, publicJwk };
}

/** trustee requires P-256 coordinates to decode to exactly 32 bytes; re-pad defensively (leading zeros). */
function fixedWidth(b64url: string, bytes: number): string {
  const raw = Buffer.from(b64url, 'base64url');
  if (raw.length > bytes) throw new DecoderError('EC coordinate too long');
  return Buffer.concat([Buffer.alloc(bytes - raw.length), raw]).toString('base64url');
}
