import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { describe, expect, it } from 'vitest';
import { PAYLOAD_TYPE_URL, decodeAny, decodePayload, parsePayloadJson } from '../../../src/streamprocessor/payload.js';
import { decodeStdBase64, goBytes } from '../../../src/util/gojson.js';
import { checkLayerMediaType } from '../../../src/streamprocessor/mediatype.js';
import { encodeAny, lengthDelimited as ld } from '../../helpers/payload.js';
import { errorOf } from '../../helpers/error-of.js';

const FIX = join(import.meta.dirname, '../../fixtures');
const V131 = join(FIX, 'ocicrypt-v1.3.1');
const read = (p: string): Buffer => readFileSync(p);

function anyOf(json: string, typeUrl = PAYLOAD_TYPE_URL): Buffer {
  return encodeAny(typeUrl, Buffer.from(json));
}
describe('decodePayload on real containerd/ocicrypt bytes', () => {
  it('decodes the bytes containerd 1.6.20 wrote to fd 3 for the enc-jwe-rsa layer', () => {
    const p = decodePayload(read(join(FIX, 'ocicrypt/containerd-1.6.20-payload-enc-jwe-rsa.bin')));
    const manifest = JSON.parse(
      read(join(FIX, 'ocicrypt/enc-jwe-rsa/blobs/sha256/9ae5e9621b062e806118940ce7c6fdc30bcc6ca356ddd348ed32bb4cca69b0ff')).toString(),
    ) as { layers: Array<{ mediaType: string; digest: string; size: number; annotations: Record<string, string> }> };
    const layer = manifest.layers[0]!;
    expect(p.params).toEqual({});
    expect(p.descriptor).toEqual({
      mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted',
      digest: layer.digest,
      size: layer.size,
      annotations: layer.annotations,
    });
    expect(Object.keys(p.descriptor.annotations).sort()).toEqual([
      'org.opencontainers.image.enc.keys.jwe',
      'org.opencontainers.image.enc.pubopts',
    ]);
  });

  it('decodes the CRI payload (Parameters null) to exactly the descriptor ocicrypt v1.3.1 encrypted', () => {
    const p = decodePayload(read(join(V131, 'payload-cri.bin')));
    expect(p.params).toEqual({});
    expect(p.descriptor).toEqual(JSON.parse(read(join(V131, 'descriptor.json')).toString()));
  });

  it('decodes the ctr-enc payload: privkeys bytes and a nil password', () => {
    const p = decodePayload(read(join(V131, 'payload-ctr-enc.bin')));
    expect(Object.keys(p.params).sort()).toEqual(['privkeys', 'privkeys-passwords']);
    expect(p.params.privkeys).toEqual([read(join(V131, 'keys/rsa_priv.pem'))]);
    expect(p.params['privkeys-passwords']).toEqual([null]);
    expect(p.descriptor.digest).toBe('sha256:f4e6be995a8fcc202eb8bb031b03404c4da24c2dd4590d09491be7a4fe1be478');
  });
});

describe('protobuf Any decoding', () => {
  it('skips unknown fields of every wire type and keeps the last occurrence of a field', () => {
    const buf = Buffer.concat([
      ld(1, Buffer.from('first')),
      Buffer.from([0x18, 0x96, 0x01]), // field 3 varint 150
      Buffer.from([0x21, 1, 2, 3, 4, 5, 6, 7, 8]), // field 4 fixed64
      Buffer.from([0x2d, 1, 2, 3, 4]), // field 5 fixed32
      ld(7, Buffer.from('ignored')),
      ld(2, Buffer.from('v')),
      ld(1, Buffer.from(PAYLOAD_TYPE_URL)),
    ]);
    expect(decodeAny(buf)).toEqual({ typeUrl: PAYLOAD_TYPE_URL, value: Buffer.from('v') });
  });

  it('rejects a length running past the end', () => {
    const good = anyOf('{}');
    expect(errorOf(() => decodePayload(good.subarray(0, good.length - 1)))).toBe(
      'could not proto.Unmarshal() decrypt data: proto: unexpected EOF',
    );
  });

  it('rejects an over-long varint, a group wire type and field number 0', () => {
    expect(errorOf(() => decodePayload(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])))).toMatch(
      /^could not proto\.Unmarshal\(\) decrypt data: proto: variable length integer overflow$/,
    );
    expect(errorOf(() => decodePayload(Buffer.from([0x0b])))).toMatch(/reserved wire type 3/);
    expect(errorOf(() => decodePayload(Buffer.from([0x02, 0x00])))).toMatch(/invalid field number/);
  });

  it('rejects a type URL that is not valid UTF-8', () => {
    expect(errorOf(() => decodePayload(ld(1, Buffer.from([0xc3, 0x28]))))).toMatch(/invalid UTF-8/);
  });

  it('requires the exact imgcrypt type URL', () => {
    expect(errorOf(() => decodePayload(anyOf('{}', `types.googleapis.com/${PAYLOAD_TYPE_URL}`)))).toBe(
      'could not UnmarshalAny() the decrypt data: type with url types.googleapis.com/io.containerd.ocicrypt.v1.Payload: not found (expected io.containerd.ocicrypt.v1.Payload)',
    );
  });

  it('explains an empty fd 3 the way ctd-decoder does, plus why', () => {
    expect(errorOf(() => decodePayload(Buffer.alloc(0)))).toBe(
      'could not UnmarshalAny() the decrypt data: type with url : not found (fd 3 was empty)',
    );
  });

  it('reports bad JSON inside a valid Any with the UnmarshalAny prefix', () => {
    expect(errorOf(() => decodePayload(anyOf('{"DecryptConfig":')))).toMatch(/^could not UnmarshalAny\(\) the decrypt data: invalid JSON/);
  });
});

describe('Go encoding/json semantics of the payload JSON', () => {
  const desc = '"mediaType":"application/vnd.oci.image.layer.v1.tar+encrypted","digest":"sha256:aa","size":3';

  it('matches struct field names case-insensitively', () => {
    const p = parsePayloadJson(
      `{"decryptconfig":{"PARAMETERS":{"privkeys":["QUJD"]}},"DESCRIPTOR":{"MEDIATYPE":"m","Digest":"d","SIZE":7,"Annotations":{"a":"b"}}}`,
    );
    expect(p).toEqual({
      params: { privkeys: [Buffer.from('ABC')] },
      descriptor: { mediaType: 'm', digest: 'd', size: 7, annotations: { a: 'b' } },
    });
  });

  it('lets the last of several case-variant keys win, as Go decodes keys in order', () => {
    expect(parsePayloadJson(`{"Descriptor":{"mediaType":"first","MediaType":"second"}}`).descriptor.mediaType).toBe('second');
  });

  it('keeps map keys (parameter names, annotations) case-sensitive', () => {
    const p = parsePayloadJson(`{"DecryptConfig":{"Parameters":{"PrivKeys":["QQ=="]}},"Descriptor":{${desc},"annotations":{"A":"1","a":"2"}}}`);
    expect(Object.keys(p.params)).toEqual(['PrivKeys']);
    expect(p.descriptor.annotations).toEqual({ A: '1', a: '2' });
  });

  it('ignores unknown fields at every level', () => {
    const p = parsePayloadJson(
      `{"Extra":[1,{"x":null}],"DecryptConfig":{"Parameters":null,"Other":1},"Descriptor":{${desc},"urls":["u"],"platform":{"os":"linux"},"artifactType":"x"}}`,
    );
    expect(p.params).toEqual({});
    expect(p.descriptor.size).toBe(3);
  });

  it('decodes []byte from number arrays, keeps nulls as nil, treats a null list as empty', () => {
    const p = parsePayloadJson(
      `{"DecryptConfig":{"Parameters":{"privkeys":[[65,66,67],"QUJD",null,[]],"privkeys-passwords":[null,null,null,null],"x509s":null}}}`,
    );
    expect(p.params).toEqual({
      privkeys: [Buffer.from('ABC'), Buffer.from('ABC'), null, Buffer.alloc(0)],
      'privkeys-passwords': [null, null, null, null],
      x509s: [],
    });
  });

  it('accepts null for the whole value, DecryptConfig, Descriptor and annotations', () => {
    expect(parsePayloadJson('null')).toEqual({ params: {}, descriptor: { mediaType: '', digest: '', size: 0, annotations: {} } });
    expect(parsePayloadJson('{"DecryptConfig":null,"Descriptor":{"annotations":null,"mediaType":null}}').descriptor).toEqual({
      mediaType: '',
      digest: '',
      size: 0,
      annotations: {},
    });
  });

  it('rejects wrong JSON types with Go-style messages', () => {
    expect(() => parsePayloadJson('[]')).toThrow(/cannot unmarshal array into Go value of type imgcrypt\.Payload/);
    expect(() => parsePayloadJson('{"Descriptor":{"mediaType":5}}')).toThrow(
      /cannot unmarshal number into Go struct field Descriptor\.Descriptor\.mediaType of type string/,
    );
    expect(() => parsePayloadJson('{"Descriptor":{"size":1.5}}')).toThrow(/cannot unmarshal number 1\.5/);
    expect(() => parsePayloadJson('{"Descriptor":{"annotations":{"a":1}}}')).toThrow(/of type string/);
    expect(() => parsePayloadJson('{"DecryptConfig":{"Parameters":{"privkeys":"QQ=="}}}')).toThrow(/cannot unmarshal string/);
    expect(() => parsePayloadJson('{"DecryptConfig":{"Parameters":{"privkeys":[[256]]}}}')).toThrow(/number 256 .*uint8/);
    expect(() => parsePayloadJson('{"DecryptConfig":{"Parameters":{"privkeys":[true]}}}')).toThrow(/cannot unmarshal bool/);
  });

  it('does not let a __proto__ key change an object prototype', () => {
    const p = parsePayloadJson(`{"DecryptConfig":{"Parameters":{"__proto__":["QQ=="]}},"Descriptor":{"annotations":{"__proto__":"x"}}}`);
    expect(Object.getPrototypeOf(p.params)).toBe(Object.prototype);
    expect(Object.getPrototypeOf(p.descriptor.annotations)).toBe(Object.prototype);
    expect(Object.hasOwn(p.descriptor.annotations, '__proto__')).toBe(true);
  });
});

describe('Go base64 for []byte', () => {
  it('requires padding, the std alphabet, and ignores CR/LF', () => {
    expect(decodeStdBase64('QUJD')).toEqual(Buffer.from('ABC'));
    expect(decodeStdBase64('QUI=')).toEqual(Buffer.from('AB'));
    expect(decodeStdBase64('QQ==')).toEqual(Buffer.from('A'));
    expect(decodeStdBase64('QU\r\nJD\n')).toEqual(Buffer.from('ABC'));
    expect(decodeStdBase64('')).toEqual(Buffer.alloc(0));
    expect(decodeStdBase64('QQ')).toBeNull(); // unpadded
    expect(decodeStdBase64('_-8=')).toBeNull(); // url alphabet
    expect(decodeStdBase64('QQ==QQ==')).toBeNull(); // padding in the middle
    expect(decodeStdBase64('QU JD')).toBeNull(); // spaces are not ignored
  });

  it('goBytes rejects malformed base64 without echoing it', () => {
    expect(() => goBytes('c2VjcmV0', 'x')).not.toThrow();
    expect(() => goBytes('c2VjcmV0!', 'x')).toThrow(/^illegal base64 data in Go x of type \[\]byte$/);
  });
});

describe('layer media types', () => {
  it('accepts the three OCI encrypted layer types', () => {
    for (const mt of ['tar', 'tar+gzip', 'tar+zstd']) {
      const full = `application/vnd.oci.image.layer.v1.${mt}+encrypted`;
      expect(checkLayerMediaType(full)).toBe(full);
    }
  });

  it('rejects docker and nondistributable types, naming what is accepted', () => {
    const msg = errorOf(() => checkLayerMediaType('application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted'));
    expect(msg).toMatch(/^unsupported layer media type "application\/vnd\.docker\.image\.rootfs\.diff\.tar\.gzip\+encrypted"; accepted: /);
    expect(msg).toContain('application/vnd.oci.image.layer.v1.tar+zstd+encrypted');
    expect(() => checkLayerMediaType('application/vnd.oci.image.layer.nondistributable.v1.tar+gzip+encrypted')).toThrow(/unsupported/);
    expect(() => checkLayerMediaType('application/vnd.oci.image.layer.v1.tar+gzip')).toThrow(/unsupported/);
    expect(errorOf(() => checkLayerMediaType(''))).toMatch(/media type \(empty\)/);
  });
});

/**
 * fd-3 detection runs in a child process: what sits at fd 3 depends on how the process was started, which is the
 * point (without a payload, libuv's own epoll descriptor takes fd 3).
 */
describe('fd 3 detection (child processes)', () => {
  const ROOT = join(import.meta.dirname, '../../..');
  const script = (body: string): string =>
    `import { probePayloadFd, readPayloadFd } from './src/streamprocessor/fd3.ts';
     const out = (v) => process.stdout.write(JSON.stringify(v));
     ${body}`;
  function runChild(body: string, stdio: Array<'pipe' | 'ignore' | number>, input?: Buffer) {
    return spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script(body)], {
      cwd: ROOT,
      stdio,
      input,
      timeout: 20_000,
      encoding: 'utf8',
    });
  }

  it('treats fd 3 as absent when the runtime owns it (no pipe passed)', () => {
    const r = runChild('out(probePayloadFd());', ['ignore', 'pipe', 'pipe']);
    const probe = JSON.parse(r.stdout) as { present: boolean; reason: string };
    expect(probe.present).toBe(false);
    expect(probe.reason).toMatch(/anon_inode|not open|not a payload pipe/);
  });

  it('reports a clear "read payload" error when fd 3 is absent', () => {
    const r = runChild(
      'readPayloadFd().then(() => out("read"), (e) => out(e.stage + ": " + e.message));',
      ['ignore', 'pipe', 'pipe'],
    );
    expect(JSON.parse(r.stdout)).toMatch(/^read payload: no payload: fd 3 .*io\.containerd\.ocicrypt\.decoder\.v1\.tar\.gzip.*use_local_image_pull/);
  });

  // Both pipe readers: the addon's readFd (what the decoder uses) and the libuv stream fallback (no addon).
  for (const reader of ['native readFd', 'socket fallback'] as const) {
    const withReader = (body: string): string =>
      script(
        (reader === 'native readFd'
          ? 'const readPipe = await (await import("./src/cli/native-pipe-reader.ts")).nativePipeReader(); if (!readPipe) throw new Error("no addon");'
          : 'const readPipe = undefined;') + body,
      );
    const viaPipe = (producer: string, body: string) =>
      spawnSync(
        '/bin/sh',
        ['-c', `${producer} | { exec "$0" --import tsx --input-type=module -e "$1" 3<&0 0</dev/null; }`, process.execPath, withReader(body), join(V131, 'payload-cri.bin')],
        { cwd: ROOT, encoding: 'utf8', timeout: 20_000 },
      );

    it(`reads a pipe on fd 3 to EOF (${reader})`, () => {
      // A shell pipeline gives a real pipe(2), as containerd's os.Pipe does (Node's own stdio pipes are socketpairs).
      const r = viaPipe('cat "$2"', 'const p = probePayloadFd(); const b = await readPayloadFd({ readPipe }); out({ p, n: b.length, head: b.subarray(0, 3).toString("hex") });');
      expect(JSON.parse(r.stdout)).toEqual({ p: { present: true, kind: 'fifo' }, n: read(join(V131, 'payload-cri.bin')).length, head: '0a2169' });
    });

    it(`enforces the size bound on a pipe (${reader})`, () => {
      const r = viaPipe('cat "$2"', 'readPayloadFd({ readPipe, maxBytes: 100 }).then(() => out("read"), (e) => out(e.stage + ": " + e.message));');
      expect(JSON.parse(r.stdout)).toBe('read payload: payload on fd 3 exceeds 100 bytes; not a containerd payload');
    });

    it(`gives up on a pipe that never reaches EOF instead of hanging (${reader})`, () => {
      // sleep holds the write end of the fd-3 pipe open without writing anything.
      const r = viaPipe('sleep 3', 'readPayloadFd({ readPipe, timeoutMs: 300 }).then(() => out("read"), (e) => { out(e.message); process.exit(0); });');
      expect(JSON.parse(r.stdout)).toMatch(/^no EOF on fd 3 within 300 ms; not a containerd payload pipe$/);
    });
  }

  it('reads a regular file on fd 3 and enforces the size bound', () => {
    const file = join(V131, 'payload-cri.bin');
    const r = spawnSync(
      '/bin/sh',
      ['-c', `exec "$0" --import tsx --input-type=module -e "$1" 3<"$2"`, process.execPath,
        script('const p = probePayloadFd(); const n = (await readPayloadFd()).length; out({ p, n });'), file],
      { cwd: ROOT, encoding: 'utf8', timeout: 20_000 },
    );
    expect(JSON.parse(r.stdout)).toEqual({ p: { present: true, kind: 'file' }, n: read(file).length });
    const big = spawnSync(
      '/bin/sh',
      ['-c', `exec "$0" --import tsx --input-type=module -e "$1" 3<"$2"`, process.execPath,
        script('readPayloadFd({ maxBytes: 100 }).then(() => out("read"), (e) => out(e.message));'), file],
      { cwd: ROOT, encoding: 'utf8', timeout: 20_000 },
    );
    expect(JSON.parse(big.stdout)).toMatch(/exceeds 100 bytes/);
  });

  it('does not take /dev/null (a character device) for a payload', () => {
    const r = spawnSync(
      '/bin/sh',
      ['-c', `exec "$0" --import tsx --input-type=module -e "$1" 3</dev/null`, process.execPath, script('out(probePayloadFd());')],
      { cwd: ROOT, encoding: 'utf8', timeout: 20_000 },
    );
    expect(JSON.parse(r.stdout)).toEqual({ present: false, reason: 'fd 3 is /dev/null, not a payload pipe' });
  });

  it('does not take a write-only file inherited on fd 3 (GNU time -o, a shell redirection) for a payload', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'coco-fd3-')), 'write-only.txt');
    const r = spawnSync(
      '/bin/sh',
      ['-c', `exec "$0" --import tsx --input-type=module -e "$1" 3>"$2"`, process.execPath, script('out(probePayloadFd());'), file],
      { cwd: ROOT, encoding: 'utf8', timeout: 20_000 },
    );
    expect(JSON.parse(r.stdout)).toEqual({ present: false, reason: `fd 3 is open write-only (${file}), not a payload pipe from containerd` });
  });
});
