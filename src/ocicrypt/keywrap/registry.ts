/**
 * The ordered list of key wrappers tried for a layer: jwe, pkcs7, the key providers of
 * `$OCICRYPT_KEYPROVIDER_CONFIG` (in file order), the in-process attestation-agent (unless an operator configured an
 * external `attestation-agent` provider, which then wins), then the unsupported pgp and pkcs11 (so a layer wrapped
 * only for them gets a clear message). Modules are imported only for schemes the layer actually uses: this runs
 * once per layer and start-up time adds up over a pull.
 */
import type { Config } from '../../config/types.js';
import type { GetKek } from './attestation-agent.js';
import type { KeyWrapper } from './keywrapper.js';

const ATTESTATION_AGENT_SCHEME = 'provider.attestation-agent';

export interface KeyWrapperRegistryOptions {
  env: NodeJS.ProcessEnv;
  warn: (msg: string) => void;
  /** Lazily loads (and memoizes) the coco-decoder config; only called for layers with key-provider annotations. */
  getConfig: () => Promise<Config>;
  /** Where attestation-agent KEKs come from (built by the CLI: the KBS client and token cache). */
  getKek: GetKek;
}

/** Builds the wrappers needed for a layer whose key annotations name `schemes` (see `layerKeySchemes`). */
export async function buildKeyWrappers(
  schemes: readonly string[],
  options: KeyWrapperRegistryOptions,
): Promise<KeyWrapper[]> {
  const has = (scheme: string): boolean => schemes.includes(scheme);
  const wrappers: KeyWrapper[] = [];

  if (has('jwe')) wrappers.push((await import('./jwe.js')).jweKeyWrapper);
  if (has('pkcs7')) wrappers.push((await import('./pkcs7.js')).pkcs7KeyWrapper);

  if (schemes.some((s) => s.startsWith('provider.'))) {
    const config = await options.getConfig();
    const { loadKeyProviderWrappers } = await import('./keyprovider.js');
    const providers = loadKeyProviderWrappers(options.env, {
      timeoutMs: config.keyprovider.timeoutMs,
      warn: options.warn,
    });
    wrappers.push(...providers);
    if (has(ATTESTATION_AGENT_SCHEME) && !providers.some((w) => w.scheme === ATTESTATION_AGENT_SCHEME)) {
      const { createAttestationAgentWrapper } = await import('./attestation-agent.js');
      wrappers.push(createAttestationAgentWrapper(options.getKek));
    }
  }

  if (has('pgp') || has('pkcs11')) {
    const { pgpKeyWrapper, pkcs11KeyWrapper } = await import('./unsupported.js');
    if (has('pgp')) wrappers.push(pgpKeyWrapper);
    if (has('pkcs11')) wrappers.push(pkcs11KeyWrapper);
  }
  return wrappers;
}
