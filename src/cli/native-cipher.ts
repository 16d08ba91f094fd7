/**
 * The layer cipher's native fast path: the addon the process already loaded to harden itself (harden.ts) also
 * runs AES-256-CTR + HMAC-SHA256 into reused buffers with the node binary's own OpenSSL, about twice node:crypto's
 * rate here. Whenever it is unavailable (no addon: a development run, a noexec temp dir; an older addon) the
 * decoder uses node:crypto, with the same holdback and verify-before-release rules. `COCO_DECODER_NATIVE_CIPHER=0`
 * forces node:crypto (to rule the fast path out when diagnosing).
 */
import { defaultConfig } from '../config/types.js';
import type { NativeLayerCipher } from '../ocicrypt/layer-decipher.js';
import { optionalTeeAddon } from './optional-addon.js';

export const NATIVE_CIPHER_ENV = 'COCO_DECODER_NATIVE_CIPHER';

export async function nativeLayerCipher(env: NodeJS.ProcessEnv, addonPath = defaultConfig().attestation.addonPath): Promise<NativeLayerCipher | undefined> {
  if (env[NATIVE_CIPHER_ENV] === '0') return undefined;
  const addon = await optionalTeeAddon(addonPath);
  return typeof addon?.cipherNew === 'function' ? addon : undefined;
}
