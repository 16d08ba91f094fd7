/**
 * A read-only client for the few containerd API calls the content-store lookup needs (`proto/`), over containerd's
 * Unix socket with our own gRPC channel on node:http2 (`grpc-channel.ts`) and the hand-written codec in
 * `messages.ts`. Every call shares one deadline (the lookup's budget) and the caller's abort signal; answers are
 * size-bounded. Failures become one-line ContainerdError messages that name the socket, never raw daemon bytes
 * beyond a quoted, truncated detail.
 */
import { statSync } from 'node:fs';
import { DecoderError } from '../util/errors.js';
import { quoteUntrusted } from '../util/quote.js';
import type { ContainerdAddress } from './address.js';
import { GrpcCallError, GrpcStatus, grpcStatusName, openChannel } from './grpc-channel.js';
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
  const channel = openChannel(address.path, { deadline: opts.deadline, signal: opts.signal, maxMessageBytes: MAX_MESSAGE_BYTES });
  const where = `containerd at ${address.path} (${address.source})`;

  const metadata = (ns: string | undefined): Record<string, string> => (ns === undefined ? {} : { [NAMESPACE_HEADER]: ns });

  const fail = (method: string, err: unknown): ContainerdError => {
    if (err instanceof ContainerdError) return err;
    if (!(err instanceof GrpcCallError)) return new ContainerdError(`${where}: ${method}: malformed answer: ${(err as Error).message}`);
    if (err.code === GrpcStatus.CANCELLED && opts.signal?.aborted) {
      const reason = opts.signal.reason instanceof Error ? opts.signal.reason.message : 'cancelled';
      return new ContainerdError(`${where}: ${method}: aborted (${reason})`);
    }
    if (err.code === GrpcStatus.DEADLINE_EXCEEDED) return new ContainerdError(`${where}: ${method}: no answer within the lookup deadline`);
    if (/EACCES|EPERM/.test(err.details)) {
      return new ContainerdError(`${where}: permission denied on the socket (the decoder runs as containerd's user, normally root)`);
    }
    if (err.code === GrpcStatus.UNAVAILABLE) return new ContainerdError(`${where}: unreachable: ${quoteUntrusted(err.details, 160)}`);
    return new ContainerdError(`${where}: ${method}: ${grpcStatusName(err.code)}: ${quoteUntrusted(err.details, 160)}`);
  };

  async function unary<Res>(method: string, req: Buffer, decode: (b: Buffer) => Res, ns?: string): Promise<Res> {
    let answer: Buffer | undefined;
    try {
      await channel.call(method, req, metadata(ns), (m) => {
        if (answer !== undefined) throw new ContainerdError(`${where}: ${method}: more than one answer to a unary call`);
        answer = Buffer.from(m);
        return true;
      });
    } catch (err) {
      throw fail(method, err);
    }
    if (answer === undefined) throw new ContainerdError(`${where}: ${method}: no answer message`);
    try {
      return decode(answer);
    } catch (e) {
      throw new ContainerdError(`${where}: ${method}: malformed answer: ${(e as Error).message}`);
    }
  }

  /** A server stream, each message handed to `onMessage`, which may return false to stop early. */
  async function stream(method: string, req: Buffer, ns: string, onMessage: (b: Buffer) => boolean): Promise<'done' | 'not-found'> {
    try {
      await channel.call(method, req, metadata(ns), onMessage);
      return 'done';
    } catch (err) {
      if (err instanceof GrpcCallError && err.code === GrpcStatus.NOT_FOUND) return 'not-found';
      throw fail(method, err);
    }
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
    close: () => channel.close(),
  };
}
