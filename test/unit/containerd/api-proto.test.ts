/**
 * The hand-written codec (src/containerd/messages.ts) and the declared protos (src/containerd/proto/*.proto) must
 * name the same methods and field numbers, and the codec must produce and read the wire bytes protobuf defines.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  FIELDS,
  METHODS,
  decodeListContentResponse,
  decodeListImagesResponse,
  decodeListNamespacesResponse,
  decodeReadContentResponse,
  encodeListContentRequest,
  encodeReadContentRequest,
} from '../../../src/containerd/messages.js';
import { ProtoError } from '../../../src/util/protobuf.js';

const PROTO_DIR = path.resolve(import.meta.dirname, '../../../src/containerd/proto');

/** package, `service.rpc` → method path, and `package.Message` → field → number, from the .proto files. */
function readProtos(): { methods: Set<string>; fields: Record<string, Record<string, number>> } {
  const methods = new Set<string>();
  const fields: Record<string, Record<string, number>> = {};
  for (const file of readdirSync(PROTO_DIR).filter((f) => f.endsWith('.proto'))) {
    const text = readFileSync(path.join(PROTO_DIR, file), 'utf8').replace(/\/\/.*$/gm, '');
    const pkg = /^package ([\w.]+);/m.exec(text)![1]!;
    for (const svc of text.matchAll(/service (\w+) \{([^}]*)\}/g)) {
      for (const rpc of svc[2]!.matchAll(/rpc (\w+)\(/g)) methods.add(`/${pkg}.${svc[1]}/${rpc[1]}`);
    }
    for (const msg of text.matchAll(/message (\w+) \{([^}]*)\}/g)) {
      const f: Record<string, number> = {};
      for (const field of msg[2]!.matchAll(/(?:repeated )?[\w.<>, ]+ (\w+) = (\d+);/g)) f[field[1]!] = Number(field[2]);
      fields[`${pkg}.${msg[1]}`] = f;
    }
  }
  return { methods, fields };
}

const bytes = (...parts: number[]): Buffer => Buffer.from(parts);

describe('containerd API codec', () => {
  it('uses exactly the methods and field numbers the .proto files declare', () => {
    const protos = readProtos();
    expect(new Set(Object.values(METHODS))).toEqual(protos.methods);
    expect(FIELDS).toEqual(protos.fields);
  });

  it('encodes requests as protobuf does (proto3 defaults omitted)', () => {
    // ReadContentRequest{digest="sha256:x", offset=0, size=300}
    expect(encodeReadContentRequest('sha256:x', 0, 300)).toEqual(Buffer.concat([bytes(0x0a, 8), Buffer.from('sha256:x'), bytes(0x18, 0xac, 0x02)]));
    expect(encodeListContentRequest(['a', 'b'])).toEqual(bytes(0x0a, 1, 0x61, 0x0a, 1, 0x62));
  });

  it('decodes Info with labels, skipping unknown fields and timestamps', () => {
    const entry = (k: string, v: string): Buffer => Buffer.concat([bytes(0x0a, k.length), Buffer.from(k), bytes(0x12, v.length), Buffer.from(v)]);
    const e = entry('l', 'v');
    const info = Buffer.concat([bytes(0x0a, 3), Buffer.from('d:1'), bytes(0x10, 0x80, 0x01), bytes(0x1a, 2, 0x08, 0x01), bytes(0x2a, e.length), e, bytes(0x30, 7)]);
    const resp = Buffer.concat([bytes(0x0a, info.length), info]);
    expect(decodeListContentResponse(resp)).toEqual([{ digest: 'd:1', size: 128, labels: new Map([['l', 'v']]) }]);
  });

  it('decodes Read chunks, namespaces and image targets', () => {
    expect(decodeReadContentResponse(Buffer.concat([bytes(0x08, 5, 0x12, 2, 0xaa, 0xbb)]))).toEqual({ offset: 5, data: bytes(0xaa, 0xbb) });
    const ns = Buffer.concat([bytes(0x0a, 6), Buffer.from('k8s.io')]);
    expect(decodeListNamespacesResponse(Buffer.concat([bytes(0x0a, ns.length), ns]))).toEqual(['k8s.io']);
    const desc = Buffer.concat([bytes(0x0a, 1), Buffer.from('m'), bytes(0x12, 1), Buffer.from('d'), bytes(0x18, 9)]);
    const img = Buffer.concat([bytes(0x0a, 1), Buffer.from('n'), bytes(0x1a, desc.length), desc]);
    expect(decodeListImagesResponse(Buffer.concat([bytes(0x0a, img.length), img]))).toEqual([
      { name: 'n', target: { mediaType: 'm', digest: 'd', size: 9, annotations: new Map() } },
    ]);
  });

  it('refuses invalid UTF-8 strings and truncated messages', () => {
    expect(() => decodeListNamespacesResponse(bytes(0x0a, 3, 0x0a, 1, 0xff))).toThrow(ProtoError);
    expect(() => decodeReadContentResponse(bytes(0x12, 5, 1))).toThrow(ProtoError);
  });
});
