/**
 * The gRPC calls of the content-store lookup on node:http2 directly: gRPC's HTTP/2 mapping (grpc
 * `doc/PROTOCOL-HTTP2.md`) for unary and server-streaming calls, uncompressed, over one connection to containerd's
 * Unix socket. @grpc/grpc-js did this before: loading it cost every payload-less layer several milliseconds on top
 * of node:http2 and doubled the size of the code cache that path starts from, for four read-only calls.
 *
 * Everything from the daemon is bounded: each message by `maxMessageBytes` (checked on the length prefix, before
 * it is buffered), each call by the shared deadline and the abort signal. Errors carry the gRPC status code and
 * the daemon's (percent-decoded, still untrusted) message; client.ts words and quotes them.
 */
import http2 from 'node:http2';
import net from 'node:net';

/** The gRPC status codes (grpc `doc/statuscodes.md`). */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

const STATUS_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(GrpcStatus).map(([name, code]) => [code, name]));

export function grpcStatusName(code: number): string {
  return STATUS_NAMES.get(code) ?? String(code);
}

export class GrpcCallError extends Error {
  constructor(
    readonly code: number,
    readonly details: string,
  ) {
    super(`${grpcStatusName(code)}: ${details}`);
  }
}

export interface ChannelOptions {
  /** Absolute deadline (ms since the epoch) of every call on the channel. */
  readonly deadline: number;
  readonly signal?: AbortSignal | undefined;
  readonly maxMessageBytes: number;
}

export interface GrpcChannel {
  /**
   * Sends one request message and hands every response message to `onMessage`, which may return false to stop
   * (the stream is then cancelled and the call resolves). Rejects with GrpcCallError on any non-OK outcome.
   */
  call(method: string, request: Buffer, metadata: Readonly<Record<string, string>>, onMessage: (message: Buffer) => boolean): Promise<void>;
  close(): void;
}

/** HTTP statuses a gRPC client maps when no grpc-status came (PROTOCOL-HTTP2.md, "HTTP to gRPC Status Code Mapping"). */
function statusForHttp(status: number): number {
  if (status === 400) return GrpcStatus.INTERNAL;
  if (status === 401) return GrpcStatus.UNAUTHENTICATED;
  if (status === 403) return GrpcStatus.PERMISSION_DENIED;
  if (status === 404) return GrpcStatus.UNIMPLEMENTED;
  if (status === 429 || status === 502 || status === 503 || status === 504) return GrpcStatus.UNAVAILABLE;
  return GrpcStatus.UNKNOWN;
}

/** grpc-message is percent-encoded UTF-8; a malformed one is kept as sent. */
function decodeGrpcMessage(v: unknown): string {
  const s = typeof v === 'string' ? v : '';
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The 5-byte gRPC message prefix (compressed flag 0, big-endian length) and the message. */
function frame(message: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  message.copy(out, 5);
  return out;
}

/** grpc-timeout: at most 8 digits of a unit (PROTOCOL-HTTP2.md); milliseconds suffice for a lookup. */
function grpcTimeout(ms: number): string {
  return `${Math.min(99_999_999, Math.max(1, Math.ceil(ms)))}m`;
}

export function openChannel(socketPath: string, opts: ChannelOptions): GrpcChannel {
  let sessionError: Error | undefined;
  const session = http2.connect('http://localhost', {
    createConnection: () => net.connect({ path: socketPath }),
    settings: { enablePush: false },
  });
  session.on('error', (err) => {
    sessionError ??= err;
  });

  function call(method: string, request: Buffer, metadata: Readonly<Record<string, string>>, onMessage: (m: Buffer) => boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      let stream: http2.ClientHttp2Stream | undefined;
      const onAbort = (): void => finish(new GrpcCallError(GrpcStatus.CANCELLED, 'cancelled by the caller'));
      /** Settles the call once: the timer and abort listener go, a stream still open is cancelled. */
      const finish = (err: unknown): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        if (stream !== undefined && !stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
        if (err !== undefined) reject(err);
        else resolve();
      };
      const left = opts.deadline - Date.now();
      if (left <= 0) return finish(new GrpcCallError(GrpcStatus.DEADLINE_EXCEEDED, 'deadline exceeded before the call'));
      if (opts.signal?.aborted) return onAbort();
      if (sessionError !== undefined || session.destroyed) return finish(unavailable(sessionError));
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      timer = setTimeout(() => finish(new GrpcCallError(GrpcStatus.DEADLINE_EXCEEDED, 'deadline exceeded')), left);

      const s = session.request({
        ':method': 'POST',
        ':scheme': 'http',
        ':path': method,
        'content-type': 'application/grpc',
        te: 'trailers',
        'grpc-timeout': grpcTimeout(left),
        ...metadata,
      });
      stream = s;
      let httpStatus: number | undefined;
      let grpcStatus: number | undefined;
      let grpcMessage = '';
      const takeStatus = (headers: http2.IncomingHttpHeaders): void => {
        const v = headers['grpc-status'];
        if (typeof v === 'string' && /^\d{1,2}$/.test(v)) grpcStatus = Number(v);
        grpcMessage = decodeGrpcMessage(headers['grpc-message']);
      };
      s.on('response', (headers) => {
        httpStatus = Number(headers[':status']);
        const type = headers['content-type'];
        if (httpStatus === 200 && !(typeof type === 'string' && type.startsWith('application/grpc'))) {
          return finish(new GrpcCallError(GrpcStatus.UNKNOWN, `not a gRPC answer (content-type ${JSON.stringify(String(type ?? ''))})`));
        }
        takeStatus(headers); // a trailers-only answer carries its status here
      });
      s.on('trailers', takeStatus);

      let pending: Buffer = Buffer.alloc(0);
      s.on('data', (chunk: Buffer) => {
        if (settled) return;
        pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
        while (pending.length >= 5) {
          if (pending[0] !== 0) return finish(new GrpcCallError(GrpcStatus.INTERNAL, 'compressed message (none was negotiated)'));
          const len = pending.readUInt32BE(1);
          if (len > opts.maxMessageBytes) {
            return finish(new GrpcCallError(GrpcStatus.RESOURCE_EXHAUSTED, `message of ${len} bytes exceeds the ${opts.maxMessageBytes}-byte limit`));
          }
          if (pending.length < 5 + len) break;
          const message = pending.subarray(5, 5 + len);
          pending = pending.subarray(5 + len);
          let more: boolean;
          try {
            more = onMessage(message);
          } catch (err) {
            return finish(err); // the caller's own error (a malformed or unwanted answer), as thrown
          }
          if (!more) return finish(undefined);
        }
      });
      // A refused or failed connection reaches the stream and the session in either order: let the session's come first.
      s.on('error', (err) => setImmediate(() => finish(unavailable(sessionError ?? err))));
      s.on('close', () => {
        if (settled) return;
        if (httpStatus === undefined) {
          // No answer at all: the connection failed (refused, reset), which the session reports just after.
          setImmediate(() => finish(unavailable(sessionError ?? new Error('the connection closed before an answer'))));
          return;
        }
        if (grpcStatus === undefined) {
          if (httpStatus !== 200) return finish(new GrpcCallError(statusForHttp(httpStatus), `HTTP status ${httpStatus}`));
          return finish(new GrpcCallError(GrpcStatus.INTERNAL, 'the stream ended without a gRPC status'));
        }
        if (grpcStatus !== GrpcStatus.OK) return finish(new GrpcCallError(grpcStatus, grpcMessage));
        if (pending.length > 0) return finish(new GrpcCallError(GrpcStatus.INTERNAL, 'the stream ended inside a message'));
        finish(undefined);
      });
      s.end(frame(request));
    });
  }

  return {
    call,
    close: () => {
      if (!session.destroyed) session.destroy();
    },
  };
}

/** A connection-level failure (refused, permission, reset): UNAVAILABLE with the system's words. */
function unavailable(err: Error | undefined): GrpcCallError {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const text = err?.message ?? 'connection closed';
  return new GrpcCallError(GrpcStatus.UNAVAILABLE, code !== undefined && !text.includes(code) ? `${code}: ${text}` : text);
}
