/**
 * `coco-decoder keyprovider`: an ocicrypt key provider for every ocicrypt client on the node (CRI-O, podman,
 * skopeo, buildah, containerd's ctd-decoder), so they reach attestation without CoCo's CDH daemon.
 *
 *   coco-decoder keyprovider [--config F]                      the `cmd` protocol: one request on stdin, one answer on stdout
 *   coco-decoder keyprovider --grpc ADDR [--allow-remote]      `keyprovider.KeyProviderService` over gRPC (default 127.0.0.1:50000)
 *
 * keyunwrap: the annotation packet's KEK comes from the configured KBS through the in-process attestation flow
 * and the shared token cache, exactly as for a layer the decoder unwraps itself. keywrap: coco_keyprovider's
 * parameters (`keypath=/path/kek.bin::keyid=kbs:///…::algorithm=A256GCM`), else `[keyprovider] wrap_kid` and
 * `wrap_kek_file` from the config.
 */
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import type { Config } from '../config/types.js';
import { parseResourceUri } from '../kbs/resource-uri.js';
import { createAttestationAgentWrapper } from '../ocicrypt/keywrap/attestation-agent.js';
import { readKekFile } from './kek-file.js';
import { createKekSource } from './kek-source.js';
import { wrapForAttestationAgent } from '../ocicrypt/keywrap/attestation-agent-wrap.js';
import { decodeBytesMessage, encodeBytesMessage } from '../ocicrypt/keyprovider/grpc.js';
import {
  encodeUnwrapResult,
  encodeWrapResult,
  MAX_PROVIDER_REQUEST_BYTES,
  parseProviderRequest,
  parseWrapParameters,
  ProviderRequestError,
} from '../ocicrypt/keyprovider/provider-request.js';
import { DecoderError, describeError } from '../util/errors.js';
import { boundedLine } from '../util/quote.js';

export const USAGE = `usage: coco-decoder keyprovider [--config FILE]
       coco-decoder keyprovider --grpc ADDR [--allow-remote] [--config FILE]

An ocicrypt key provider ("attestation-agent") for CRI-O, podman, skopeo, buildah and ctd-decoder:
  {"key-providers": {"attestation-agent": {"cmd": {"path": "/usr/bin/coco-decoder", "args": ["keyprovider"]}}}}
or, with --grpc (ADDR host:port or unix:PATH; default 127.0.0.1:50000, loopback or unix only unless --allow-remote):
  {"key-providers": {"attestation-agent": {"grpc": "127.0.0.1:50000"}}}
keyunwrap attests to the KBS in the config; keywrap takes keypath=FILE::keyid=kbs:///REPO/TYPE/TAG.`;

const DEFAULT_GRPC_ADDRESS = '127.0.0.1:50000';
const STDIN_DEADLINE_MS = 30_000;
const WRAP_PROVIDER = 'attestation-agent';
const SERVICE = 'keyprovider.KeyProviderService';

/** One request in, one answer out: the part shared by the cmd and gRPC modes. */
export function createProviderHandler(getConfig: () => Promise<Config>, env: NodeJS.ProcessEnv = process.env) {
  // One wrapper for the whole process: concurrent gRPC calls share one key source, hence one token.
  const aa = createAttestationAgentWrapper(createKekSource(getConfig, { env }));
  return async (input: Buffer, signal: AbortSignal): Promise<Buffer> => {
    const req = parseProviderRequest(input);
    if (req.op === 'keyunwrap') {
      const unwrapped = await aa.unwrap(req.annotation, { params: {}, layerDigest: '(keyprovider request)', signal });
      if (unwrapped === null) throw new DecoderError('the annotation was not unwrapped');
      try {
        return encodeUnwrapResult(unwrapped.privopts);
      } finally {
        unwrapped.privopts.fill(0);
      }
    }
    const config = await getConfig();
    const text = (req.parameters.get(WRAP_PROVIDER) ?? [...req.parameters.values()][0] ?? [])[0]?.toString('utf8') ?? '';
    const given = parseWrapParameters(text);
    const kid = given.kid ?? config.keyprovider.wrapKid;
    const keyPath = given.keyPath ?? config.keyprovider.wrapKekFile;
    if (kid === undefined) throw new ProviderRequestError('keywrap needs keyid=kbs:///REPO/TYPE/TAG (or [keyprovider] wrap_kid in the config)');
    if (keyPath === undefined) throw new ProviderRequestError('keywrap needs keypath=/path/kek.bin (or [keyprovider] wrap_kek_file in the config)');
    const uri = parseResourceUri(kid);
    const kek = await readKekFile(keyPath, { what: 'KEK file', fail: (m) => new ProviderRequestError(m) });
    try {
      return encodeWrapResult(Buffer.from(wrapForAttestationAgent(req.optsData, uri.uri, kek)));
    } finally {
      kek.fill(0);
      req.optsData.fill(0);
    }
  };
}

async function readStdin(limit: number, deadlineMs: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  const timer = setTimeout(() => process.stdin.destroy(new DecoderError(`no complete request on stdin within ${deadlineMs} ms`)), deadlineMs);
  timer.unref();
  try {
    for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > limit) throw new ProviderRequestError(`request larger than ${limit} bytes`);
      chunks.push(chunk);
    }
  } finally {
    clearTimeout(timer);
  }
  return Buffer.concat(chunks);
}

export async function run(argv: string[]): Promise<number> {
  let values: { config?: string; grpc?: string; 'allow-remote'?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: 'string' },
        grpc: { type: 'string' },
        'allow-remote': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    process.stderr.write(`${boundedLine(`coco-decoder keyprovider: ${describeError(err)}`)}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  let configP: Promise<Config> | undefined;
  const getConfig = (): Promise<Config> =>
    (configP ??= import('../config/load.js').then(({ loadConfig }) => loadConfig({ path: values.config, env: process.env })));
  const handle = createProviderHandler(getConfig);
  if (values.grpc !== undefined) {
    try {
      return await serveGrpc(values.grpc || DEFAULT_GRPC_ADDRESS, values['allow-remote'] === true, handle, getConfig);
    } catch (err) {
      process.stderr.write(`${boundedLine(`coco-decoder keyprovider: ${describeError(err)}`)}\n`);
      return 1;
    }
  }
  try {
    const input = await readStdin(MAX_PROVIDER_REQUEST_BYTES, STDIN_DEADLINE_MS);
    const deadline = AbortSignal.timeout(((await getConfig().catch(() => undefined))?.kbs.totalTimeoutMs ?? 60_000) + 60_000);
    process.stdout.write(await handle(input, deadline));
    return 0;
  } catch (err) {
    // ocicrypt puts the provider's stderr into its own error: one line, no input quoted.
    process.stderr.write(`${boundedLine(`coco-decoder keyprovider: ${describeError(err)}`)}\n`);
    return 1;
  }
}

/** `host:port` (IPv4, [IPv6] or a name) or `unix:PATH`; only loopback and unix sockets unless allowed. */
export function checkListenAddress(address: string, allowRemote: boolean): string {
  if (address.startsWith('unix:')) {
    if (address.length <= 'unix:'.length) throw new DecoderError('--grpc unix: needs a path');
    return address;
  }
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):(\d{1,5})$/.exec(address);
  if (!m || Number(m[2]) > 65535) throw new DecoderError(`--grpc ${JSON.stringify(address.slice(0, 80))}: expected host:port or unix:PATH`);
  const host = m[1]!.replace(/^\[|\]$/g, '');
  const loopback = host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
  if (!loopback && !allowRemote) {
    throw new DecoderError(`--grpc ${address}: not a loopback address; the provider hands out layer keys, so listening beyond this machine needs --allow-remote`);
  }
  return address;
}

async function serveGrpc(
  address: string,
  allowRemote: boolean,
  handle: (input: Buffer, signal: AbortSignal) => Promise<Buffer>,
  getConfig: () => Promise<Config>,
): Promise<number> {
  checkListenAddress(address, allowRemote);
  await getConfig(); // a broken config fails at start, not at the first call
  const grpc = await import('@grpc/grpc-js');
  const method = (name: string): import('@grpc/grpc-js').MethodDefinition<Buffer, Buffer> => ({
    path: `/${SERVICE}/${name}`,
    requestStream: false,
    responseStream: false,
    requestSerialize: encodeBytesMessage,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: encodeBytesMessage,
    responseDeserialize: (b: Buffer) => b,
  });
  const calls = new Set<AbortController>();
  const implementation = (call: import('@grpc/grpc-js').ServerUnaryCall<Buffer, Buffer>, callback: import('@grpc/grpc-js').sendUnaryData<Buffer>): void => {
    const ac = new AbortController();
    calls.add(ac);
    call.on('cancelled', () => ac.abort(new DecoderError('the client cancelled the call')));
    let input: Buffer;
    try {
      input = decodeBytesMessage(call.request);
    } catch (err) {
      calls.delete(ac);
      callback({ code: grpc.status.INVALID_ARGUMENT, details: `malformed protobuf message: ${describeError(err)}` });
      return;
    }
    handle(input, AbortSignal.any([ac.signal, AbortSignal.timeout(180_000)])).then(
      (out) => callback(null, out),
      (err: unknown) =>
        callback({
          code: err instanceof ProviderRequestError ? grpc.status.INVALID_ARGUMENT : grpc.status.UNAVAILABLE,
          details: boundedLine(describeError(err), 2048),
        }),
    ).finally(() => calls.delete(ac));
  };
  const server = new grpc.Server();
  server.addService(
    { WrapKey: method('WrapKey'), UnWrapKey: method('UnWrapKey') } as unknown as import('@grpc/grpc-js').ServiceDefinition,
    { WrapKey: implementation, UnWrapKey: implementation },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(new DecoderError(`cannot listen on ${address}: ${err.message}`, { cause: err })) : resolve(p))),
  );
  process.stderr.write(`coco-decoder keyprovider: serving ${SERVICE} on ${address.startsWith('unix:') ? address : address.replace(/:\d+$/, `:${port}`)}\n`);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      // Graceful: finish the calls in flight (bounded), refuse new ones.
      const force = setTimeout(() => {
        for (const c of calls) c.abort(new DecoderError('the provider is shutting down'));
        server.forceShutdown();
        resolve();
      }, 10_000);
      force.unref();
      server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
  return 0;
}
