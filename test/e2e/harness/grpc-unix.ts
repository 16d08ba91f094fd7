/**
 * Raw unary gRPC calls over a unix socket with pre-encoded protobuf bodies (see proto.ts). Every call has a
 * deadline, and failures keep the server's status details, which is where containerd puts a stream
 * processor's stderr.
 */
import * as grpc from '@grpc/grpc-js';

export class GrpcCallError extends Error {
  override readonly name = 'GrpcCallError';
  constructor(
    readonly method: string,
    readonly code: grpc.status,
    readonly details: string,
  ) {
    super(`${method}: ${grpc.status[code] ?? code}: ${details}`);
  }
}

export interface CallOptions {
  deadlineMs: number;
  /** e.g. `{ 'containerd-namespace': 'k8s.io' }` */
  metadata?: Record<string, string>;
}

export class UnixGrpcClient {
  private readonly client: grpc.Client;

  constructor(readonly socketPath: string) {
    this.client = new grpc.Client(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
      // Errors from containerd can carry long stream-processor stderr; keep the default message limits generous.
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
    });
  }

  unary(method: string, request: Buffer, options: CallOptions): Promise<Buffer> {
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(options.metadata ?? {})) md.set(k, v);
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest<Buffer, Buffer>(
        method,
        (b) => b,
        (b) => b,
        request,
        md,
        { deadline: Date.now() + options.deadlineMs },
        (err, res) => {
          if (err) reject(new GrpcCallError(method, err.code, err.details));
          else resolve(res ?? Buffer.alloc(0));
        },
      );
    });
  }

  /** Server-streaming call collected into a list (for List-style RPCs that return few messages). */
  serverStream(method: string, request: Buffer, options: CallOptions): Promise<Buffer[]> {
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(options.metadata ?? {})) md.set(k, v);
    return new Promise((resolve, reject) => {
      const out: Buffer[] = [];
      const call = this.client.makeServerStreamRequest<Buffer, Buffer>(
        method,
        (b) => b,
        (b) => b,
        request,
        md,
        { deadline: Date.now() + options.deadlineMs },
      );
      call.on('data', (b: Buffer) => out.push(b));
      call.on('error', (err: grpc.ServiceError) => reject(new GrpcCallError(method, err.code, err.details)));
      call.on('end', () => resolve(out));
    });
  }

  /** Resolves once the channel is connected (the socket answers), or rejects at the deadline. */
  waitReady(deadlineMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.client.waitForReady(Date.now() + deadlineMs, (err) => (err ? reject(err) : resolve()));
    });
  }

  close(): void {
    this.client.close();
  }
}
