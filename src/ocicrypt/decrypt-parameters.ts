/**
 * ocicrypt's decrypt parameters (`DecryptConfig.Parameters`) as the decoder combines them: the keys directory's
 * and the payload's, then zeroed once the layer key is unwrapped (they carry private keys).
 */
import type { DecryptParameters } from './keywrap/keywrapper.js';

/** ctd-decoder's `CombineCryptoConfigs([keysDir, payload])`: per parameter name, keys-directory entries first. */
export function mergeParameters(first: DecryptParameters, second: DecryptParameters): DecryptParameters {
  const out: DecryptParameters = {};
  for (const source of [first, second]) {
    for (const [name, list] of Object.entries(source)) {
      const merged = Object.hasOwn(out, name) ? [...out[name]!, ...list] : [...list];
      Object.defineProperty(out, name, { value: merged, enumerable: true, writable: true, configurable: true });
    }
  }
  return out;
}

/** Zeroes every value in place (private keys, passwords, certificates). */
export function zeroParameters(params: DecryptParameters): void {
  for (const list of Object.values(params)) for (const b of list) b?.fill(0);
}
