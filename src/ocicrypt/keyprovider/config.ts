/**
 * `$OCICRYPT_KEYPROVIDER_CONFIG`: which external key providers exist and how to reach them (ocicrypt
 * `config/keyprovider-config/config.go`).
 *
 * Upstream semantics kept: unset variable or missing file → no providers; a file that cannot be read or
 * parsed (including a field of the wrong type, which makes Go's `json.Unmarshal` fail) → one logged error
 * and no providers; `cmd` wins over `grpc`; a provider with neither fails only when it is used. Field names
 * match case-insensitively, as Go's `encoding/json` does, so every file upstream accepts is accepted here.
 */
import { readFileSync } from 'node:fs';
import { goField } from '../../util/gojson.js';
import { DecoderError } from '../../util/errors.js';

export const KEYPROVIDER_CONFIG_ENV = 'OCICRYPT_KEYPROVIDER_CONFIG';

export const UNSUPPORTED_INVOCATION =
  'Unsupported keyprovider invocation. Supported invocation methods are grpc and cmd';

export interface GrpcTlsSettings {
  rootCaFile: string | undefined;
  certFile: string | undefined;
  keyFile: string | undefined;
  serverName: string | undefined;
  insecureSkipVerify: boolean;
}

export type KeyProviderInvocation =
  | { readonly kind: 'cmd'; readonly path: string; readonly args: readonly string[] }
  | { readonly kind: 'grpc'; readonly address: string; readonly tls: GrpcTlsSettings | undefined }
  /** Configured but unusable: every unwrap through it fails with `reason` (ocicrypt fails at use, not at load). */
  | { readonly kind: 'invalid'; readonly reason: string };

export interface KeyProviderEntry {
  readonly name: string;
  readonly invocation: KeyProviderInvocation;
}

/** Reads the config named by `$OCICRYPT_KEYPROVIDER_CONFIG`. Never throws: problems go to `warn`. */
export function loadKeyProviderConfig(env: NodeJS.ProcessEnv, warn: (msg: string) => void): KeyProviderEntry[] {
  const file = env[KEYPROVIDER_CONFIG_ENV];
  if (file === undefined || file === '') return [];
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    warn(`Error while parsing keyprovider config file: ${file}: ${(err as Error).message}`);
    return [];
  }
  try {
    return parseKeyProviderConfig(text);
  } catch (err) {
    warn(`Error while parsing keyprovider config file: ${file}: ${(err as Error).message}`);
    return [];
  }
}

/** Parses the config document. Throws (plain Error, message without file contents) when it is not valid. */
export function parseKeyProviderConfig(text: string): KeyProviderEntry[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    // Node's JSON.parse message quotes the input; keep file contents out of logs.
    throw new DecoderError('not valid JSON');
  }
  if (doc === null) return [];
  const root = expectObject(doc, '');
  const providers = goField(root, 'key-providers');
  if (providers === undefined || providers === null) return [];
  const map = expectObject(providers, 'key-providers');
  return Object.entries(map).map(([name, attrs]) => ({
    name,
    invocation: parseAttrs(name, attrs, `key-providers.${name}`),
  }));
}

function parseAttrs(name: string, value: unknown, at: string): KeyProviderInvocation {
  if (value === null) return { kind: 'invalid', reason: UNSUPPORTED_INVOCATION };
  const attrs = expectObject(value, at);
  // Type-check every field first: Go rejects the whole file on any type error, whichever branch is used.
  const cmd = goField(attrs, 'cmd');
  const grpc = optionalString(goField(attrs, 'grpc'), `${at}.grpc`);
  const grpcTls = goField(attrs, 'grpc-tls');
  const command = cmd === undefined || cmd === null ? undefined : parseCommand(cmd, `${at}.cmd`);
  const tls = grpcTls === undefined || grpcTls === null ? undefined : parseTls(grpcTls, `${at}.grpc-tls`);

  if (command !== undefined) {
    if (command.path === '') {
      return { kind: 'invalid', reason: `keyprovider config: "cmd" of provider ${JSON.stringify(name)} has no "path"` };
    }
    return { kind: 'cmd', path: command.path, args: command.args };
  }
  if (grpc !== undefined && grpc !== '') {
    if (tls !== undefined && (tls.certFile === undefined) !== (tls.keyFile === undefined)) {
      // Go silently ignores a half client identity; the server would then refuse us with an obscure TLS error.
      return {
        kind: 'invalid',
        reason:
          `keyprovider config: "grpc-tls" of provider ${JSON.stringify(name)} ` +
          'needs both "cert-file" and "key-file", or neither',
      };;
    }
    return { kind: 'grpc', address: grpc, tls };
  }
  return { kind: 'invalid', reason: UNSUPPORTED_INVOCATION };
}

function parseCommand(value: unknown, at: string): { path: string; args: string[] } {
  const cmd = expectObject(value, at);
  const path = optionalString(goField(cmd, 'path'), `${at}.path`) ?? '';
  const rawArgs = goField(cmd, 'args');
  let args: string[] = [];
  if (rawArgs !== undefined && rawArgs !== null) {
    if (!Array.isArray(rawArgs)) throw new DecoderError(`${at}.args must be an array of strings`);
    args = rawArgs.map((a, i) => {
      if (typeof a !== 'string') throw new DecoderError(`${at}.args[${i}] must be a string`);
      return a;
    });
  }
  return { path, args };
}

function parseTls(value: unknown, at: string): GrpcTlsSettings {
  const t = expectObject(value, at);
  const skip = goField(t, 'insecure-skip-verify');
  if (skip !== undefined && skip !== null && typeof skip !== 'boolean') {
    throw new DecoderError(`${at}.insecure-skip-verify must be a boolean`);
  }
  const nonEmpty = (name: string): string | undefined => {
    const s = optionalString(goField(t, name), `${at}.${name}`);
    return s === '' ? undefined : s;
  };
  return {
    rootCaFile: nonEmpty('root-ca-file'),
    certFile: nonEmpty('cert-file'),
    keyFile: nonEmpty('key-file'),
    serverName: nonEmpty('server-name'),
    // Only an explicit `true` disables verification.
    insecureSkipVerify: skip === true,
  };
}

function expectObject(value: unknown, at: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new DecoderError(`${at === '' ? 'the document' : at} must be a JSON object`);
  }
  return value as Record<string, unknown>;
}

/** Go's `json:"x"` null for a string leaves it empty; anything else non-string is a type error. */
function optionalString(value: unknown, at: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string') throw new DecoderError(`${at} must be a string`);
  return value;
}
