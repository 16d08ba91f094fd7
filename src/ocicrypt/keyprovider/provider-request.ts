/**
 * The provider's side of the keyprovider protocol (ocicrypt `keywrap/keyprovider`): parses the request a client
 * (ocicrypt in skopeo, podman, CRI-O, buildah, containerd's ctd-decoder, or our own decoder) sends on a `cmd`
 * provider's stdin or in the gRPC `bytes` field, and encodes the answer it reads back. Input is parsed as Go's
 * `json.Unmarshal` reads `KeyProviderKeyWrapProtocolInput`: case-insensitive field names, `[]byte` as std base64
 * or a byte array. Every malformed request is a {@link ProviderRequestError} (the gRPC server maps it to
 * INVALID_ARGUMENT) whose message never quotes the input (it may hold private layer options).
 */
import { DecoderError } from '../../util/errors.js';
import { GoJsonError, goBytes, goField, goMap, goSlice, goString, goStruct, parseJson } from '../../util/gojson.js';

export class ProviderRequestError extends DecoderError {}

/** The largest request accepted (a wrap request carries one layer's private options and an EncryptConfig). */
export const MAX_PROVIDER_REQUEST_BYTES = 1024 * 1024;

export type ProviderRequest =
  | { op: 'keywrap'; parameters: Map<string, Buffer[]>; optsData: Buffer }
  | { op: 'keyunwrap'; annotation: Buffer };

export function parseProviderRequest(input: Buffer): ProviderRequest {
  if (input.length > MAX_PROVIDER_REQUEST_BYTES) throw new ProviderRequestError(`request of ${input.length} bytes is larger than ${MAX_PROVIDER_REQUEST_BYTES}`);
  try {
    const root = goStruct(parseJson(input), 'value', 'keyprovider.KeyProviderKeyWrapProtocolInput');
    const op = goString(goField(root, 'op'), 'struct field KeyProviderKeyWrapProtocolInput.op');
    if (op === 'keywrap') {
      const wp = goField(root, 'keywrapparams');
      const w = wp === null || wp === undefined ? {} : goStruct(wp, 'struct field keywrapparams', 'keyprovider.KeyWrapParams');
      const ecv = goField(w, 'ec');
      const ec = ecv === null || ecv === undefined ? {} : goStruct(ecv, 'struct field KeyWrapParams.ec', 'config.EncryptConfig');
      const params = goMap(goField(ec, 'Parameters'), 'struct field EncryptConfig.Parameters', 'map[string][][]uint8', (list, where) =>
        (goSlice(list, where, '[][]uint8', (item, w2) => goBytes(item, w2) ?? Buffer.alloc(0)) ?? []),
      );
      const optsData = goBytes(goField(w, 'optsdata'), 'struct field KeyWrapParams.optsdata');
      if (optsData === null || optsData.length === 0) throw new ProviderRequestError('keywrap request carries no optsdata (the private layer options to wrap)');
      return { op, parameters: params ?? new Map(), optsData };
    }
    if (op === 'keyunwrap') {
      const up = goField(root, 'keyunwrapparams');
      const u = up === null || up === undefined ? {} : goStruct(up, 'struct field keyunwrapparams', 'keyprovider.KeyUnwrapParams');
      const annotation = goBytes(goField(u, 'annotation'), 'struct field KeyUnwrapParams.annotation');
      if (annotation === null || annotation.length === 0) throw new ProviderRequestError('keyunwrap request carries no annotation');
      return { op, annotation };
    }
    throw new ProviderRequestError(op === '' ? 'request has no "op"' : `unsupported op ${JSON.stringify(op.slice(0, 20))} (keywrap or keyunwrap)`);
  } catch (err) {
    if (err instanceof GoJsonError) {
      throw new ProviderRequestError(`malformed request: ${err.message.startsWith('invalid JSON') ? 'invalid JSON' : err.message}`);
    }
    throw err;
  }
}

/** `KeyProviderKeyWrapProtocolOutput{KeyWrapResults: {Annotation}}` as Go marshals it. */
export function encodeWrapResult(annotation: Buffer): Buffer {
  return Buffer.from(JSON.stringify({ keywrapresults: { annotation: annotation.toString('base64') }, keyunwrapresults: { optsdata: null } }));
}

/** `KeyProviderKeyWrapProtocolOutput{KeyUnwrapResults: {OptsData}}` as Go marshals it. */
export function encodeUnwrapResult(optsData: Buffer): Buffer {
  return Buffer.from(JSON.stringify({ keywrapresults: { annotation: null }, keyunwrapresults: { optsdata: optsData.toString('base64') } }));
}

export interface WrapParameters {
  /** KEK file (`keypath=`). */
  keyPath: string | undefined;
  /** KBS resource URI (`keyid=`). */
  kid: string | undefined;
}

/**
 * coco_keyprovider's parameter syntax, as skopeo passes it after `provider:attestation-agent:`:
 * `keypath=/path/kek.bin::keyid=kbs:///repo/type/tag::algorithm=A256GCM`. Unknown keys are refused; the
 * algorithm, when given, must be A256GCM (the only wrap type a decoder should accept).
 */
export function parseWrapParameters(text: string): WrapParameters {
  const out: WrapParameters = { keyPath: undefined, kid: undefined };
  for (const part of text.split('::')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) throw new ProviderRequestError('wrap parameters must be key=value pairs joined by "::" (keypath=…::keyid=kbs:///…)');
    const key = part.slice(0, eq);
    const value = part.slice(eq + 1);
    if (key === 'keypath') out.keyPath = value;
    else if (key === 'keyid') out.kid = value;
    else if (key === 'algorithm') {
      if (value !== 'A256GCM') throw new ProviderRequestError(`wrap algorithm ${JSON.stringify(value.slice(0, 20))} is not supported (only A256GCM)`);
    } else throw new ProviderRequestError(`unknown wrap parameter ${JSON.stringify(key.slice(0, 20))} (keypath, keyid, algorithm)`);
  }
  return out;
}
