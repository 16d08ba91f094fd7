/**
 * Schemes coco-decoder recognises but does not implement: OpenPGP (would need an OpenPGP library in the
 * trusted binary) and PKCS#11 (needs a native module and an HSM, which a confidential VM does not have).
 * They keep upstream's key-selection semantics, so the orchestrator's summary messages stay upstream-compatible,
 * and fail with a message that tells the operator what to do instead.
 */
import { DecoderError } from '../../util/errors.js';
import type { DecryptParameters, KeyWrapper, UnwrappedEntry } from './keywrapper.js';

function unsupported(scheme: string, keysParameter: string): KeyWrapper {
  const keys = (params: DecryptParameters): Array<Buffer | null> => params[keysParameter] ?? [];
  return {
    scheme,
    supported: false,
    noPossibleKeys: (params) => keys(params).length === 0,
    hasPrivateKeys: (params) => keys(params).length > 0,
    async unwrap(): Promise<UnwrappedEntry | null> {
      throw new DecoderError(
        `${scheme} key wrapping is not supported by coco-decoder; re-encrypt the image for jwe, pkcs7 or a key provider`,
      );
    },
  };
}

/** ocicrypt `pgp`: keys in `gpg-privatekeys`. */
export const pgpKeyWrapper: KeyWrapper = unsupported('pgp', 'gpg-privatekeys');

/** ocicrypt `pkcs11`: key files in `pkcs11-yamls`. */
export const pkcs11KeyWrapper: KeyWrapper = unsupported('pkcs11', 'pkcs11-yamls');
