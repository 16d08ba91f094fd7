/**
 * A small encrypted layer as ocicrypt's `AES_256_CTR_HMAC_SHA256` writes it, for tests that then choose its key
 * annotations themselves (genuine, hostile or fuzzed): random plaintext, a fresh key and nonce, the HMAC over the
 * ciphertext, and the descriptor containerd would pass on fd 3.
 */
import { createCipheriv, createHash, createHmac, randomBytes } from 'node:crypto';
import { publicOptionsJson } from './encrypt-image.js';
import type { PayloadDescriptor } from './payload.js';

export const GZIP_ENCRYPTED = 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted';
const PUBOPTS = 'org.opencontainers.image.enc.pubopts';

export interface TestLayerCipher {
  plaintext: Buffer;
  ciphertext: Buffer;
  key: Buffer;
  nonce: Buffer;
  hmac: Buffer;
}

export function encryptTestLayer(size = 20_000): TestLayerCipher {
  const plaintext = randomBytes(size);
  const key = randomBytes(32);
  const nonce = randomBytes(16);
  const c = createCipheriv('aes-256-ctr', key, nonce);
  const ciphertext = Buffer.concat([c.update(plaintext), c.final()]);
  return { plaintext, ciphertext, key, nonce, hmac: createHmac('sha256', key).update(ciphertext).digest() };
}

/** The layer's descriptor: its pubopts plus `annotations` (which may override pubopts). */
export function testLayerDescriptor(layer: TestLayerCipher, annotations: Record<string, string>): PayloadDescriptor {
  return {
    mediaType: GZIP_ENCRYPTED,
    digest: `sha256:${createHash('sha256').update(layer.ciphertext).digest('hex')}`,
    size: layer.ciphertext.length,
    annotations: { [PUBOPTS]: publicOptionsJson(layer.hmac).toString('base64'), ...annotations },
  };
}
