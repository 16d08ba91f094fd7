/**
 * A read-only client for the few containerd API calls the content-store lookup needs (`proto/`), over containerd's
 * Unix socket with @grpc/grpc-js and the hand-written codec in `messages.ts`. Every call shares one deadline (the
 * lookup's budget) and the caller's abort signal; answers are size-bounded. Failures become one-line
 * ContainerdError messages that name the socket, never raw daemon bytes beyond a quoted, truncated detail.
 */
import { statSync } from 'node:fs';
import type { GrpcJs } from '../util/grpc-module.js';
import { loadGrpc } from '../util/grpc-module.js';
import { DecoderError } from '../util/errors.js';
import { quoteUntrusted } from '../util/quote.js';
import type { ContainerdAddress } from './address.js';
import {
  METHODS,
  decodeListContentResponse,
  decodeListImagesResponse,
  decodeListNamespacesResponse,
  decodeReadContentResponse,
  encodeListContentRequest,
  encodeListImagesRequest,
  encodeListNamespacesRequest,
  encodeReadContentRequest,
  type ContentInfo,
  type ImageRecord,
} from './messages.js';

/** containerd's own default send limit (`[grpc] max_send_message_size`); one List batch never comes near it. */
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/** containerd's metadata key for the namespace of a call (`namespaces.GRPCHeader`). */
const NAMESPACE_HEADER = 'containerd-namespace';
/** Content.List is a stream: stop reading one namespace's listing beyond this many entries (bounded memory). */
export const MAX_LISTED_CONTENT = 100_000;

export class ContainerdError extends DecoderError {}

/** What the lookup needs from containerd; `layer-lookup.ts` is written against this, tests give it a fake. */
export interface ContentSource {
  namespaces(): Promise<string[]>;
  /** Content.List in `ns` with containerd filter strings (ANDed within one string, ORed across strings). */
  listContent(ns: string, filters: readonly string[]): Promise<ContentInfo[]>;
  listImages(ns: string): Promise<ImageRecord[]>;
  /** Up to `size` bytes from `offset`; undefined when the blob is not in `ns`. Fails when more than `size` arrive. */
  read(ns: string, digest: string, offset: number, size: number): Promise<Buffer | undefined>;
  close(): void;
}

export interface ConnectOptions {
  /** Absolute deadline (ms since the epoch) of every call made through this client. */
  readonly deadline: number;
  readonly signal?: AbortSignal | undefined;
}

/** Checks the socket before dialling, so the common misconfigurations get a precise line instead of UNAVAILABLE. */
function checkSocket(address: ContainerdAddress): void {
  let isSocket: boolean;
  try {
    isSocket = statSync(address.path).isSocket();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'does not exist (is containerd running, and is this its [grpc] address?)' : `cannot be checked (${code ?? 'error'})`;
    throw new ContainerdError(`containerd socket ${address.path} (${address.source}) ${why}`);
  }
  if (!isSocket) throw new ContainerdError(`containerd socket ${address.path} (${address.source}) is not a socket`);
}

export async function connectContainerd(address: ContainerdAddress, opts: ConnectOptions): Promise<ContentSource> {
  checkSocket(address);
  const grpc = await loadGrpc();
  const client = new grpc.Client(`unix:${address.path}`, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': 1024 * 1024,
    // One connection, no reconnect storms: a lookup is a handful of calls within seconds.
    'grpc.enable_retries': 0,
  });
  const where = `containerd at ${address.path} (${address.source})`;

  const metadata = (ns: string | undefined): GrpcJs.Metadata => {
    const md = new grpc.Metadata();
    if (ns !== undefined) md.set(NAMESPACE_HEADER, ns);
    return md;
  };

  const fail = (method: string, err: GrpcJs.ServiceError): ContainerdError => {
    if (err.code === grpc.status.CANCELLED && opts.signal?.aborted) {
      const reason = opts.signal.reason instanceof Error ? opts.signal.reason.message : 'cancelled';
      return new ContainerdError(`${where}: ${method}: aborted (${reason})`);
    }
    if (err.code === grpc.status.DEADLINE_EXCEEDED) return new ContainerdError(`${where}: ${method}: no answer within the lookup deadline`);
    const details = err.details ?? '';
    if (/EACCES|EPERM/.test(details)) {
      return new ContainerdError(`${where}: permission denied on the socket (the decoder runs as containerd's user, normally root)`);
    }
    if (err.code === grpc.status.UNAVAILABLE) {
      return new ContainerdError(`${where}: unreachable: ${quoteUntrusted(details.replace(/^No connection established\. Last error: /, ''), 160)}`);
    }
    const name = grpc.status[err.code] ?? String(err.code);
    return new ContainerdError(`${where}: ${method}: ${name}: ${quoteUntrusted(details, 160)}`);
  };

  const withAbort = <T extends { cancel(): void }>(call: T): T => {
    const onAbort = (): void => call.cancel();
    if (opts.signal?.aborted) onAbort();
    else opts.signal?.addEventListener('abort', onAbort, { once: true });
    return call;
  };

  function unary<Res>(method: string, req: Buffer, decode: (b: Buffer) => Res, ns?: string): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      withAbort(
        client.makeUnaryRequest<Buffer, Buffer>(
          method,
          (b) => b,
          (b) => b,
          req,
          metadata(ns),
          { deadline: opts.deadline },
          (err, value) => {
            if (err) return reject(fail(method, err));
            try {
              resolve(decode(value ?? Buffer.alloc(0)));
            } catch (e) {
              reject(new ContainerdError(`${where}: ${method}: malformed answer: ${(e as Error).message}`));
            }
          },
        ),
      );
    });
  }

  /** A server stream, each message decoded and handed to `onMessage`, which may return false to stop early. */
  function stream(method: string, req: Buffer, ns: string, onMessage: (b: Buffer) => boolean): Promise<'done' | 'not-found'> {
    return new Promise((resolve, reject) => {
      let settled = false;
      const call = withAbort(client.makeServerStreamRequest<Buffer, Buffer>(method, (b) => b, (b) => b, req, metadata(ns), { deadline: opts.deadline }));
      call.on('data', (msg: Buffer) => {
        if (settled) return;
        let more: boolean;
        try {
          more = onMessage(msg);
        } catch (e) {
          settled = true;
          call.cancel();
          reject(e instanceof ContainerdError ? e : new ContainerdError(`${where}: ${method}: malformed answer: ${(e as Error).message}`));
          return;
        }
        if (!more) {
          settled = true;
          call.cancel();
          resolve('done');
        }
      });
      call.on('error', (err: GrpcJs.ServiceError) => {
        if (settled) return;
        settled = true;
        if (err.code === grpc.status.NOT_FOUND) resolve('not-found');
        else reject(fail(method, err));
      });
      call.on('end', () => {
        if (settled) return;
        settled = true;
        resolve('done');
      });
    });
  }

  return {
    namespaces: () => unary(METHODS.listNamespaces, encodeListNamespacesRequest(), decodeListNamespacesResponse),
    listImages: (ns) => unary(METHODS.listImages, encodeListImagesRequest([]), decodeListImagesResponse, ns),
    async listContent(ns, filters) {
      const out: ContentInfo[] = [];
      await stream(METHODS.listContent, encodeListContentRequest(filters), ns, (msg) => {
        out.push(...decodeListContentResponse(msg));
        if (out.length > MAX_LISTED_CONTENT) throw new ContainerdError(`${where}: more than ${MAX_LISTED_CONTENT} manifests in namespace ${ns}; lookup stopped`);
        return true;
      });
      return out;
    },
    async read(ns, digest, offset, size) {
      const parts: Buffer[] = [];
      let total = 0;
      const result = await stream(METHODS.readContent, encodeReadContentRequest(digest, offset, size), ns, (msg) => {
        const chunk = decodeReadContentResponse(msg);
        if (chunk.offset !== offset + total) throw new ContainerdError(`${where}: Content.Read answered out of order`);
        total += chunk.data.length;
        if (total > size) throw new ContainerdError(`${where}: Content.Read answered more than the ${size} bytes asked for`);
        parts.push(Buffer.from(chunk.data));
        return total < size;
      });
      return result === 'not-found' ? undefined : Buffer.concat(parts, total);
    },
    close: () => client.close(),
  };
}
