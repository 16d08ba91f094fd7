/**
 * The TEE addon for the decoding path's fast paths (the layer cipher and its pump, the payload pipe read), or
 * undefined when it cannot load (a development run, a noexec temp dir): each of those then falls back to Node.
 * harden.ts loads it too, but wants the reason it failed.
 */
import type { TeeAddon } from '../attest/native.js';
import { defaultConfig } from '../config/types.js';

export async function optionalTeeAddon(addonPath = defaultConfig().attestation.addonPath): Promise<TeeAddon | undefined> {
  try {
    const { loadTeeAddon } = await import('../attest/native.js');
    return loadTeeAddon({ addonPath });
  } catch {
    return undefined;
  }
}
