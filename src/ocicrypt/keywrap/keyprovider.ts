/**
 * Key wrappers for the external key providers of `$OCICRYPT_KEYPROVIDER_CONFIG` (ocicrypt
 * `keywrap/keyprovider`): scheme `provider.<name>`, one per configured provider.
 *
 * ocicrypt semantics: a provider never has "possible keys" to check and never counts as a private key given, so
 * it is asked whenever its annotation is present, and a `null` answer means "not this one".
 */
import { DecoderError } from '../../util/errors.js';
import { loadKeyProviderConfig, type KeyProviderEntry } from '../keyprovider/config.js';
import { marshalUnwrapInput, parseUnwrapOutput, withoutKeyMaterial } from '../keyprovider/protocol.js';
import type { DecryptParameters, KeyWrapper, UnwrapContext, UnwrappedEntry } from './keywrapper.js';

export interface KeyProviderWrapperOptions {
  /** Deadline of one provider call (process run or gRPC call). */
  timeoutMs: number;
  /** Non-fatal problems (unreadable config, insecure TLS settings). */
  warn: (msg: string) => void;
}

export const PROVIDER_SCHEME_PREFIX = 'provider.';

export function loadKeyProviderWrappers(env: NodeJS.ProcessEnv, opts: KeyProviderWrapperOptions): KeyWrapper[] {
  return loadKeyProviderConfig(env, opts.warn).map((entry) => new KeyProviderWrapper(entry, env, opts));
}

class KeyProviderWrapper implements KeyWrapper {
  readonly scheme: string;
  readonly supported = true;

  constructor(
    private readonly entry: KeyProviderEntry,
    private readonly env: NodeJS.ProcessEnv,
    private readonly opts: KeyProviderWrapperOptions,
  ) {
    this.scheme = PROVIDER_SCHEME_PREFIX + entry.name;
  }

  noPossibleKeys(_params: DecryptParameters): boolean {
    return false;
  }

  hasPrivateKeys(_params: DecryptParameters): boolean {
    return false;
  }

  async unwrap(entry: Buffer, ctx: UnwrapContext): Promise<UnwrappedEntry | null> {
    const invocation = this.entry.invocation;
    if (invocation.kind === 'invalid') throw new DecoderError(invocation.reason);
    if (ctx.signal.aborted) throw new DecoderError(`key provider ${this.entry.name}: aborted before it was called`);

    // Only non-key parameters leave the process (see KEY_MATERIAL_PARAMETERS).
    const input = marshalUnwrapInput(withoutKeyMaterial(ctx.params), entry);
    let output: Buffer;
    let prefix: string;
    if (invocation.kind === 'cmd') {
      // Loaded only when a command provider runs: node:child_process would cost every attestation-agent layer.
      const { runProviderCommand } = await import('../keyprovider/cmd.js');
      output = await runProviderCommand(invocation, input, {
        timeoutMs: this.opts.timeoutMs,
        signal: ctx.signal,
        env: this.env,
      });
      prefix = 'Error while unmarshalling binary executable command output';
    } else {
      const { callUnwrapKey } = await import('../keyprovider/grpc.js');
      output = await callUnwrapKey(invocation, input, {
        timeoutMs: this.opts.timeoutMs,
        signal: ctx.signal,
        warn: this.opts.warn,
      });
      prefix = 'Error while unmarshalling grpc method output';
    }
    try {
      const privopts = parseUnwrapOutput(output, prefix);
      return privopts === null ? null : { privopts };
    } catch (err) {
      throw new DecoderError((err as Error).message, { cause: err });
    } finally {
      output.fill(0);
    }
  }
}
