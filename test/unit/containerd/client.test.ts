/**
 * The containerd client (src/containerd/client.ts on grpc-channel.ts, node:http2) against a real gRPC server:
 * @grpc/grpc-js serving the four content-store calls on a Unix socket, as containerd's grpc-go does. The calls and
 * their metadata, streamed answers, NOT_FOUND, and every way a daemon can fail us: an error status with a hostile
 * message, silence past the deadline, an abort, an oversized message, a socket that is missing or dead.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as GrpcJs from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectContainerd, type ContentSource } from '../../../src/containerd/client.js';
import { METHODS, encodeListContentRequest } from '../../../src/containerd/messages.js';
import { rejectionOf } from '../../helpers/error-of.js';
import { lengthDelimited, varint } from '../../helpers/payload.js';

const grpc = createRequire(import.meta.url)('@grpc/grpc-js') as typeof GrpcJs;
grpc.setLogVerbosity(grpc.logVerbosity.NONE);

// --- protobuf, just enough to write the answers (the test-side encoder of test/helpers/payload.ts) ---
const bytes = (field: number, v: Buffer | string): Buffer => lengthDelimited(field, Buffer.isBuffer(v) ? v : Buffer.from(v, 'utf8'));
const int = (field: number, v: number): Buffer => (v === 0 ? Buffer.alloc(0) : Buffer.concat([varint(field * 8), varint(v)]));
const info = (digest: string, size: number, label?: [string, string]): Buffer =>
  Buffer.concat([bytes(1, digest), int(2, size), ...(label ? [bytes(5, Buffer.concat([bytes(1, label[0]), bytes(2, label[1])]))] : [])]);

const D1 = `sha256:${'1'.repeat(64)}`;
const D2 = `sha256:${'2'.repeat(64)}`;
const BLOB = Buffer.from('the stored blob, read back in chunks');

type Mode = 'normal' | 'hang' | 'denied' | 'huge' | 'too-much';
let mode: Mode = 'normal';
const seen: Array<{ method: string; namespace: string | undefined; request: Buffer }> = [];

const dir = mkdtempSync(join(tmpdir(), 'containerd-client-'));
const socket = join(dir, 'containerd.sock');
let server: GrpcJs.Server;

function raw(path: string, responseStream: boolean) {
  return { path, requestStream: false, responseStream, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b };
}
function record(method: string, call: { metadata: GrpcJs.Metadata; request: Buffer }): void {
  const ns = call.metadata.get('containerd-namespace')[0];
  seen.push({ method, namespace: typeof ns === 'string' ? ns : undefined, request: call.request });
}

beforeAll(async () => {
  server = new grpc.Server();
  server.addService({ List: raw(METHODS.listNamespaces, false) } as never, {
    List: (call: GrpcJs.ServerUnaryCall<Buffer, Buffer>, cb: GrpcJs.sendUnaryData<Buffer>) => {
      record('namespaces', call);
      if (mode === 'hang') return;
      if (mode === 'denied') return cb({ code: grpc.status.PERMISSION_DENIED, details: 'no\nway \u202e"here"' } as GrpcJs.ServiceError);
      cb(null, Buffer.concat([bytes(1, bytes(1, 'default')), bytes(1, bytes(1, 'k8s.io'))]));
    },
  });
  server.addService({ List: raw(METHODS.listImages, false) } as never, {
    List: (call: GrpcJs.ServerUnaryCall<Buffer, Buffer>, cb: GrpcJs.sendUnaryData<Buffer>) => {
      record('images', call);
      cb(null, bytes(1, Buffer.concat([bytes(1, 'example.com/app:1'), bytes(3, Buffer.concat([bytes(1, 'application/vnd.oci.image.index.v1+json'), bytes(2, D2), int(3, 42)]))])));
    },
  });
  server.addService({ List: raw(METHODS.listContent, true), Read: raw(METHODS.readContent, true) } as never, {
    List: (call: GrpcJs.ServerWritableStream<Buffer, Buffer>) => {
      record('list', call);
      // 40 answer messages of 50 entries each: the client must take them all, in order.
      for (let m = 0; m < 40; m++) {
        call.write(Buffer.concat(Array.from({ length: 50 }, (_, i) => bytes(1, info(`sha256:${(m * 50 + i).toString(16).padStart(64, '0')}`, m * 50 + i, ['containerd.io/gc.ref.content.l.0', D1])))));
      }
      call.end();
    },
    Read: (call: GrpcJs.ServerWritableStream<Buffer, Buffer>) => {
      record('read', call);
      if (call.request.includes(Buffer.from(D2))) return call.emit('error', { code: grpc.status.NOT_FOUND, details: `content digest ${D2}: not found` });
      if (mode === 'huge') {
        call.write(Buffer.concat([int(1, 0), bytes(2, Buffer.alloc(17 * 1024 * 1024))]));
        return call.end();
      }
      const data = mode === 'too-much' ? Buffer.concat([BLOB, BLOB]) : BLOB;
      for (let off = 0; off < data.length; off += 8) call.write(Buffer.concat([int(1, off), bytes(2, data.subarray(off, off + 8))]));
      call.end();
    },
  });
  await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  rmSync(dir, { recursive: true, force: true });
});

const address = (path = socket) => ({ path, source: 'test' as never });

async function withClient<T>(fn: (c: ContentSource) => Promise<T>, opts: { deadlineMs?: number; signal?: AbortSignal; path?: string } = {}): Promise<T> {
  const c = await connectContainerd(address(opts.path), { deadline: Date.now() + (opts.deadlineMs ?? 5000), signal: opts.signal });
  try {
    return await fn(c);
  } finally {
    c.close();
    mode = 'normal';
  }
}

describe('the containerd client against a gRPC server', () => {
  it('makes the four calls with the namespace header, and takes streamed answers whole and in order', async () => {
    seen.length = 0;
    await withClient(async (c) => {
      expect(await c.namespaces()).toEqual(['default', 'k8s.io']);
      const listed = await c.listContent('k8s.io', ['labels."containerd.io/gc.ref.content.l.0"']);
      expect(listed).toHaveLength(2000);
      expect(listed[1999]!.size).toBe(1999);
      expect(listed[7]!.labels.get('containerd.io/gc.ref.content.l.0')).toBe(D1);
      expect((await c.read('k8s.io', D1, 0, BLOB.length))!.equals(BLOB)).toBe(true);
      expect((await c.read('k8s.io', D1, 0, 16))!.equals(BLOB.subarray(0, 16))).toBe(true); // stops once enough came
      expect(await c.read('k8s.io', D2, 0, 10)).toBeUndefined(); // NOT_FOUND
      const images = await c.listImages('default');
      expect(images[0]).toMatchObject({ name: 'example.com/app:1', target: { digest: D2, size: 42 } });
    });
    expect(seen.map((s) => [s.method, s.namespace])).toEqual([
      ['namespaces', undefined],
      ['list', 'k8s.io'],
      ['read', 'k8s.io'],
      ['read', 'k8s.io'],
      ['read', 'k8s.io'],
      ['images', 'default'],
    ]);
    expect(seen[1]!.request.equals(encodeListContentRequest(['labels."containerd.io/gc.ref.content.l.0"']))).toBe(true);
  });

  it('an error status: its name and the daemon message quoted, on one line', async () => {
    mode = 'denied';
    const msg = await withClient((c) => rejectionOf(c.namespaces()));
    expect(msg).toMatch(/^containerd at .*containerd\.sock \(test\): \/containerd\.services\.namespaces\.v1\.Namespaces\/List: PERMISSION_DENIED: /);
    expect(msg).not.toMatch(/[\n\u202e]/);
  });

  it('a daemon that does not answer: the lookup deadline, not a hang', async () => {
    mode = 'hang';
    const t0 = Date.now();
    const msg = await withClient((c) => rejectionOf(c.namespaces()), { deadlineMs: 300 });
    expect(msg).toMatch(/Namespaces\/List: no answer within the lookup deadline$/);
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('an abort from the caller ends the call with its reason', async () => {
    mode = 'hang';
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('layer deadline')), 100);
    const msg = await withClient((c) => rejectionOf(c.namespaces()), { signal: ac.signal });
    expect(msg).toMatch(/Namespaces\/List: aborted \(layer deadline\)$/);
  });

  it('refuses a message over 16 MiB from its length prefix, and more bytes than asked for', async () => {
    mode = 'huge';
    expect(await withClient((c) => rejectionOf(c.read('k8s.io', D1, 0, 100)))).toMatch(/RESOURCE_EXHAUSTED: .*exceeds the 16777216-byte limit/);
    mode = 'too-much'; // 8-byte chunks of twice the blob: the fifth one runs past the 39 bytes asked for
    expect(await withClient((c) => rejectionOf(c.read('k8s.io', D1, 0, BLOB.length + 3)))).toMatch(/Content\.Read answered more than the \d+ bytes asked for$/);
  });

  it('a missing socket, a file that is not one, and a socket nobody listens on', async () => {
    expect(await rejectionOf(connectContainerd(address(join(dir, 'absent.sock')), { deadline: Date.now() + 1000 }))).toMatch(/does not exist \(is containerd running/);
    const file = join(dir, 'plain-file');
    writeFileSync(file, '');
    expect(await rejectionOf(connectContainerd(address(file), { deadline: Date.now() + 1000 }))).toMatch(/is not a socket$/);
    // A socket file left behind by a process that is gone (bound, never listening): connect() is refused.
    const stale = join(dir, 'stale.sock');
    execFileSync('python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', stale]);
    const msg = await withClient((c) => rejectionOf(c.namespaces()), { path: stale });
    expect(msg).toMatch(/: unreachable: .*ECONNREFUSED/);
  });
});
