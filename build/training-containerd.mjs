/**
 * A stand-in for containerd's content API during the code-cache training run (build.mjs `trainCodeCache`): it
 * serves one namespace holding the fixture image, so that the trained run takes the payload-less path too
 * (fd-3 payload without key annotations → content-store lookup over gRPC → decrypt) and V8's cache holds
 * the lookup and its gRPC channel compiled. It is served by @grpc/grpc-js, a gRPC implementation other than our
 * client's (src/containerd/grpc-channel.ts). Build tooling only, on a Unix socket in the build's work dir; the
 * E2E suite checks the real thing against real containerd.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

function varint(n) {
  const out = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}
const bytesField = (field, value) => {
  const b = Buffer.isBuffer(value) ? value : Buffer.from(value, 'utf8');
  return Buffer.concat([varint(field * 8 + 2), varint(b.length), b]);
};
const intField = (field, value) => (value === 0 ? Buffer.alloc(0) : Buffer.concat([varint(field * 8), varint(value)]));
const mapEntry = (field, k, v) => bytesField(field, Buffer.concat([bytesField(1, k), bytesField(2, v)]));

/** Starts the stand-in on `socket`; `blobs` maps digests to bytes; `manifest` lists `layer`. Returns stop(). */
export async function startTrainingContainerd(socket, { blobs, manifest, layer, namespace = 'k8s.io' }) {
  const grpc = require('@grpc/grpc-js');
  grpc.setLogVerbosity(grpc.logVerbosity.NONE);
  const raw = (path, responseStream) => ({
    path,
    requestStream: false,
    responseStream,
    requestSerialize: (b) => b,
    requestDeserialize: (b) => b,
    responseSerialize: (b) => b,
    responseDeserialize: (b) => b,
  });
  const server = new grpc.Server();
  server.addService({ List: raw('/containerd.services.namespaces.v1.Namespaces/List', false) }, {
    List: (_call, cb) => cb(null, bytesField(1, bytesField(1, namespace))),
  });
  server.addService({ List: raw('/containerd.services.images.v1.Images/List', false) }, { List: (_call, cb) => cb(null, Buffer.alloc(0)) });
  server.addService(
    {
      List: raw('/containerd.services.content.v1.Content/List', true),
      Read: raw('/containerd.services.content.v1.Content/Read', true),
    },
    {
      List: (call) => {
        const m = blobs.get(manifest);
        const info = Buffer.concat([bytesField(1, manifest), intField(2, m.length), mapEntry(5, 'containerd.io/gc.ref.content.l.0', layer)]);
        call.write(bytesField(1, info));
        call.end();
      },
      Read: (call) => {
        // ReadContentRequest{digest = 1, offset = 2, size = 3}: decoded just enough for the requests the decoder sends.
        const req = call.request;
        let pos = 0;
        let digest = '';
        let offset = 0;
        let size = 0;
        while (pos < req.length) {
          const tag = req[pos++];
          let v = 0;
          let scale = 1;
          if ((tag & 7) === 0) {
            for (;;) {
              const b = req[pos++];
              v += (b & 0x7f) * scale;
              scale *= 128;
              if (!(b & 0x80)) break;
            }
            if (tag >> 3 === 2) offset = v;
            else if (tag >> 3 === 3) size = v;
          } else {
            const len = req[pos++];
            digest = req.subarray(pos, pos + len).toString('utf8');
            pos += len;
          }
        }
        const blob = blobs.get(digest);
        if (!blob) {
          call.emit('error', { code: grpc.status.NOT_FOUND, details: `${digest}: not found` });
          return;
        }
        const data = blob.subarray(offset, size > 0 ? offset + size : blob.length);
        call.write(Buffer.concat([intField(1, offset), bytesField(2, data)]));
        call.end();
      },
    },
  );
  await new Promise((resolve, reject) => server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
  return () => new Promise((resolve) => server.tryShutdown(() => resolve()));
}
