/**
 * A `grpc` key provider: `/keyprovider.KeyProviderService/UnWrapKey` (ocicrypt `utils/keyprovider/keyprovider.proto`).
 * Both messages hold one `bytes` field (number 1) carrying the protocol JSON, so they are encoded by hand.
 * `@grpc/grpc-js` is imported only when a gRPC provider is actually called (`util/grpc-module.ts`).
 *
 * Differences from upstream, on purpose: every call has a deadline (upstream uses `context.Background()`), and a
 * connection that cannot be established fails fast with a dial error instead of blocking.
 */
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type * as GrpcJs from '@grpc/grpc-js';
import { DecoderError } from '../../util/errors.js';
import type { GrpcTlsSettings } from './config.js';
import { readLengthDelimitedFields } from '../../util/protobuf.js';
import { loadGrpc } from '../../util/grpc-module.js';

export const UNWRAP_METHOD = '/keyprovider.KeyProviderService/UnWrapKey';

/** Answers are a few hundred bytes; refuse anything absurd instead of buffering it. */
const MAX_RESPONSE_BYTES = 1024 * 1024;

export interface GrpcProviderTarget {
  /** `host:port` (or any grpc-js target such as `unix:///path`). */
  readonly address: string;
  readonly tls: GrpcTlsSettings | undefined;
}

export interface GrpcCallOptions {
  readonly timeoutMs: number;
  readonly signal?: AbortSignal | undefined;
  readonly warn: (msg: string) => void;
}

/** Calls UnWrapKey with `input` (the protocol JSON) and returns the output JSON bytes. */
export async function callUnwrapKey(target: GrpcProviderTarget, input: Buffer, opts: GrpcCallOptions): Promise<Buffer> {
  const grpc = await loadGrpc();
  const credentials =
    target.tls === undefined ? grpc.credentials.createInsecure() : tlsCredentials(grpc, target.tls, opts.warn);
  const channelOptions: GrpcJs.ChannelOptions = {
    'grpc.max_receive_message_length': MAX_RESPONSE_BYTES,
    'grpc.max_send_message_length': MAX_RESPONSE_BYTES,
  };
  if (target.tls !== undefined && target.tls.serverName === undefined && isIpTarget(target.address)) {
    // grpc-js passes an IP target as the TLS servername, and Node then prints a DEP0123 warning to stderr, which
    // is the one-line error channel containerd shows. Verification against the IP SAN is unaffected.
    process.noDeprecation = true;
  }
  if (target.tls?.serverName !== undefined) {
    // Like Go's tls.Config.ServerName: SNI, certificate name check and (grpc-go) the :authority.
    channelOptions['grpc.ssl_target_name_override'] = target.tls.serverName;
    channelOptions['grpc.default_authority'] = target.tls.serverName;
  }

  let client: GrpcJs.Client;
  try {
    client = new grpc.Client(target.address, credentials, channelOptions);
  } catch (err) {
    throw new DecoderError(`error while dialing rpc server: ${(err as Error).message}`, { cause: err });
  }
  const tracker = trackReady(grpc, client.getChannel());
  try {
    return await new Promise<Buffer>((resolve, reject) => {
      const deadline = Date.now() + opts.timeoutMs;
      const call = client.makeUnaryRequest<Buffer, Buffer>(
        UNWRAP_METHOD,
        encodeBytesMessage,
        decodeBytesMessage,
        input,
        new grpc.Metadata(),
        { deadline },
        (err, value) => {
          opts.signal?.removeEventListener('abort', onAbort);
          if (err) {
            reject(classify(grpc, err, tracker.everReady, opts, target.address));
          } else if (value === undefined) {
            reject(new DecoderError('Error from grpc method: empty response'));
          } else {
            resolve(value);
          }
        },
      );
      const onAbort = (): void => call.cancel();
      if (opts.signal?.aborted) onAbort();
      else opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  } finally {
    client.close();
  }
}

function isIpTarget(address: string): boolean {
  const m = /^\[?([^\]]+?)\]?:\d+$/.exec(address);
  return m !== null && isIP(m[1]!) !== 0;
}

function classify(
  grpc: typeof GrpcJs,
  err: GrpcJs.ServiceError,
  connected: boolean,
  opts: GrpcCallOptions,
  address: string,
): DecoderError {
  if (err.code === grpc.status.CANCELLED && opts.signal?.aborted) {
    const reason = opts.signal.reason instanceof Error ? opts.signal.reason.message : 'cancelled';
    return new DecoderError(`Error from grpc method: aborted (${reason})`);
  }
  // Never connected: the server is down, unreachable, or the TLS handshake failed. grpc-go would only notice on
  // the call (its Dial is lazy); we say what it is.
  if (!connected && (err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED)) {
    const what =
      err.code === grpc.status.DEADLINE_EXCEEDED
        ? `no connection within ${opts.timeoutMs} ms`
        : connectionError(err.details);
    return new DecoderError(`error while dialing rpc server: ${address}: ${what}`);
  }
  if (err.code === grpc.status.DEADLINE_EXCEEDED) {
    return new DecoderError(
      `Error from grpc method: no answer from ${address} within ${opts.timeoutMs} ms (deadline exceeded)`,
    );
  }
  return new DecoderError(
    `Error from grpc method: rpc error: code = ${codeName(grpc, err.code)} desc = ${err.details}`,
  );
}

/** grpc-go's spelling of a status code (`DeadlineExceeded`), so messages read like upstream's. */
function codeName(grpc: typeof GrpcJs, code: number): string {
  const name = grpc.status[code];
  if (name === undefined) return `Code(${code})`;
  if (name === 'CANCELLED') return 'Canceled';
  return name
    .toLowerCase()
    .split('_')
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join('');
}

/** grpc-js wraps the socket/TLS error as `No connection established. Last error: Error: <msg>. Resolution note: `. */
function connectionError(details: string): string {
  const inner = details
    .replace(/^No connection established\. Last error: (?:Error(?: \[[A-Z0-9_]+\])?: )?/, '')
    .replace(/\.?\s*Resolution note:\s*$/, '')
    // Node ≥ 22 appends advice about its own CLI flag; the fix here is the provider's grpc-tls root-ca-file.
    .replace(/; if the root CA is installed locally, try running Node\.js with --use-system-ca$/, '');
  return inner === '' ? details : inner;
}

/** Records whether the channel ever became READY, to tell a dial failure from a failing method. */
function trackReady(grpc: typeof GrpcJs, channel: GrpcJs.ChannelInterface): { everReady: boolean } {
  const state = { everReady: false };
  const watch = (): void => {
    const now = channel.getConnectivityState(false);
    if (now === grpc.connectivityState.READY) {
      state.everReady = true;
      return;
    }
    if (now === grpc.connectivityState.SHUTDOWN) return;
    try {
      channel.watchConnectivityState(now, Infinity, (err) => {
        if (!err) watch();
      });
    } catch {
      /* channel already shut down */
    }
  };
  watch();
  return state;
}

function tlsCredentials(
  grpc: typeof GrpcJs,
  tls: GrpcTlsSettings,
  warn: (msg: string) => void,
): GrpcJs.ChannelCredentials {
  let rootCerts: Buffer | null = null;
  if (tls.rootCaFile !== undefined) {
    try {
      rootCerts = readFileSync(tls.rootCaFile);
    } catch (err) {
      throw new DecoderError(`failed to load root CA certificates: ${fileError(err)}`);
    }
    if (!containsCertificate(rootCerts)) {
      throw new DecoderError(`no root CA certs parsed from file ${tls.rootCaFile}`);
    }
  }
  let key: Buffer | null = null;
  let cert: Buffer | null = null;
  if (tls.certFile !== undefined && tls.keyFile !== undefined) {
    try {
      cert = readFileSync(tls.certFile);
      key = readFileSync(tls.keyFile);
    } catch (err) {
      throw new DecoderError(`failed to load client certificate and key: ${fileError(err)}`);
    }
  }
  if (tls.insecureSkipVerify) {
    warn('keyprovider grpc-tls: insecure-skip-verify is true: the key provider server is NOT authenticated');
    return grpc.credentials.createSsl(rootCerts, key, cert, {
      rejectUnauthorized: false,
      checkServerIdentity: () => undefined,
    });
  }
  return grpc.credentials.createSsl(rootCerts, key, cert);
}

function fileError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'ENOENT') return `${e.path ?? ''}: no such file or directory`.replace(/^: /, '');
  if (e.code === 'EACCES') return `${e.path ?? ''}: permission denied`.replace(/^: /, '');
  return e.message;
}

function containsCertificate(pem: Buffer): boolean {
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  return blocks.some((block) => {
    try {
      new X509Certificate(block);
      return true;
    } catch {
      return false;
    }
  });
}

/** Protobuf message `{ bytes field1 = 1; }`: tag 0x0a, varint length, bytes (proto3 omits an empty field). */
export function encodeBytesMessage(payload: Buffer): Buffer {
  if (payload.length === 0) return Buffer.alloc(0);
  const header: number[] = [0x0a];
  let n = payload.length;
  while (n > 0x7f) {
    header.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  header.push(n);
  return Buffer.concat([Buffer.from(header), payload]);
}

/** Decodes field 1 (`bytes`) of a message, skipping unknown fields; the last occurrence wins, as in protobuf. */
export function decodeBytesMessage(msg: Buffer): Buffer {
  return readLengthDelimitedFields(msg, [1]).get(1) ?? Buffer.alloc(0);
}
