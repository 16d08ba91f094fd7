import { execFileSync } from 'node:child_process';
import { createDecipheriv } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DecoderError } from '../../../src/util/errors.js';
import type { DecryptParameters, KeyWrapper, UnwrapContext } from '../../../src/ocicrypt/keywrap/keywrapper.js';
import { loadKeyProviderWrappers } from '../../../src/ocicrypt/keywrap/keyprovider.js';
import { decodeBytesMessage, encodeBytesMessage, UNWRAP_METHOD } from '../../../src/ocicrypt/keyprovider/grpc.js';
import { unwrapEntry } from '../../helpers/unwrap-entry.js';

const FIX = resolve(__dirname, '../../fixtures/ocicrypt-v1.3.1');
const TOY = join(FIX, 'keyprovider-toy');
const toyDescriptor = JSON.parse(readFileSync(join(TOY, 'descriptor.json'), 'utf8')) as {
  annotations: Record<string, string>;
};
const TOY_ENTRY = Buffer.from(toyDescriptor.annotations['org.opencontainers.image.enc.keys.provider.toy']!, 'base64');

// Ports from this suite's assigned range (15300-15399), all on 127.0.0.1.
const PORT_PLAIN = 15301;
const PORT_TLS = 15302;
const PORT_MTLS = 15303;
const PORT_SILENT_TCP = 15304;
const PORT_HANG = 15305;
const PORT_STATUS = 15306;
const PORT_NOTHING = 15399;

const SERVICE: grpc.ServiceDefinition = {
  UnWrapKey: {
    path: UNWRAP_METHOD,
    requestStream: false,
    responseStream: false,
    requestSerialize: encodeBytesMessage,
    requestDeserialize: decodeBytesMessage,
    responseSerialize: encodeBytesMessage,
    responseDeserialize: decodeBytesMessage,
  },
};

type Handler = (input: Buffer) => Buffer | grpc.ServiceError | 'hang';

/** The toy provider's behaviour over gRPC: identity unwrap (optsdata = annotation). */
const identity: Handler = (input) => {
  const req = JSON.parse(input.toString()) as { keyunwrapparams: { annotation: string } };
  return Buffer.from(JSON.stringify({ keyunwrapresults: { optsdata: req.keyunwrapparams.annotation } }));
};

const servers: grpc.Server[] = [];
const received: Buffer[] = [];

async function startServer(port: number, creds: grpc.ServerCredentials, handler: Handler): Promise<grpc.Server> {
  const server = new grpc.Server();
  server.addService(SERVICE, {
    UnWrapKey: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      received.push(call.request);
      const out = handler(call.request);
      if (out === 'hang') return;
      if (Buffer.isBuffer(out)) cb(null, out);
      else cb(out);
    },
  });
  await new Promise<void>((res, rej) =>
    server.bindAsync(`127.0.0.1:${port}`, creds, (err) => (err ? rej(err) : res())),
  );
  servers.push(server);
  return server;
}

let dir: string;
const pem = (name: string): string => join(dir, name);

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A throwaway CA, a server certificate for kp.test / 127.0.0.1 and a client certificate, made with openssl. */
function makePki(): void {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-subj', '/CN=kp-test-ca', '-days', '1');
  openssl('req', '-x509', ...ec, '-keyout', 'other-ca.key', '-out', 'other-ca.pem', '-subj', '/CN=other-ca', '-days', '1');
  writeFileSync(pem('server.ext'), 'subjectAltName=DNS:kp.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  openssl('req', '-new', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=kp.test');
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'server.pem', '-days', '1', '-extfile', 'server.ext');
  writeFileSync(pem('client.ext'), 'extendedKeyUsage=clientAuth\n');
  openssl('req', '-new', ...ec, '-keyout', 'client.key', '-out', 'client.csr', '-subj', '/CN=kp-client');
  openssl('x509', '-req', '-in', 'client.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'client.pem', '-days', '1', '-extfile', 'client.ext');
}

const nodeWarnings: string[] = [];
const onWarning = (w: Error): void => {
  nodeWarnings.push(w.message);
};

let silentTcp: NetServer;
const silentSockets: Socket[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kp-grpc-'));
  makePki();
  process.on('warning', onWarning);
  const read = (n: string): Buffer => readFileSync(pem(n));
  const serverTls = grpc.ServerCredentials.createSsl(null, [{ cert_chain: read('server.pem'), private_key: read('server.key') }], false);
  const serverMtls = grpc.ServerCredentials.createSsl(read('ca.pem'), [{ cert_chain: read('server.pem'), private_key: read('server.key') }], true);
  await startServer(PORT_PLAIN, grpc.ServerCredentials.createInsecure(), identity);
  await startServer(PORT_TLS, serverTls, identity);
  await startServer(PORT_MTLS, serverMtls, identity);
  await startServer(PORT_HANG, grpc.ServerCredentials.createInsecure(), () => 'hang');
  await startServer(PORT_STATUS, grpc.ServerCredentials.createInsecure(), (input) => {
    const annotation = (JSON.parse(input.toString()) as { keyunwrapparams: { annotation: string } }).keyunwrapparams.annotation;
    if (annotation === Buffer.from('garbage').toString('base64')) return Buffer.from('not json');
    return Object.assign(new Error('kbs refused'), { code: grpc.status.PERMISSION_DENIED, details: 'kbs refused', metadata: new grpc.Metadata() });
  });
  silentTcp = createServer((s) => {
    silentSockets.push(s);
    s.on('error', () => {});
  });
  await new Promise<void>((res) => silentTcp.listen(PORT_SILENT_TCP, '127.0.0.1', res));
});

afterAll(async () => {
  process.off('warning', onWarning);
  for (const s of servers) s.forceShutdown();
  for (const s of silentSockets) s.destroy();
  await new Promise((res) => silentTcp.close(res));
  rmSync(dir, { recursive: true, force: true });
});

function ctx(params: DecryptParameters = {}): UnwrapContext {
  return { params, layerDigest: 'sha256:test', signal: new AbortController().signal };
}

function wrapperFor(attrs: unknown, timeoutMs = 5000): { w: KeyWrapper; warnings: string[] } {
  const warnings: string[] = [];
  const cfg = join(dir, `cfg-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(cfg, JSON.stringify({ 'key-providers': { kp: attrs } }));
  const [w] = loadKeyProviderWrappers({ OCICRYPT_KEYPROVIDER_CONFIG: cfg }, { timeoutMs, warn: (m) => warnings.push(m) });
  return { w: w!, warnings };
}

async function unwrapError(w: KeyWrapper, entry: Buffer = TOY_ENTRY): Promise<DecoderError> {
  const err = await unwrapEntry(w, entry, ctx()).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DecoderError);
  return err as DecoderError;
}

/** The unwrapped privopts must decrypt the toy layer to the fixture plaintext. */
function expectDecryptsToyLayer(privopts: Buffer | null): void {
  expect(privopts).not.toBeNull();
  const o = JSON.parse(privopts!.toString()) as { symkey: string; cipheroptions: { nonce: string } };
  const d = createDecipheriv('aes-256-ctr', Buffer.from(o.symkey, 'base64'), Buffer.from(o.cipheroptions.nonce, 'base64'));
  const plain = Buffer.concat([d.update(readFileSync(join(TOY, 'layer.tar.gz.enc'))), d.final()]);
  expect(plain.equals(readFileSync(join(FIX, 'layer.tar.gz')))).toBe(true);
}

describe('protobuf bytes message', () => {
  it('round-trips and uses tag 0x0a with a varint length', () => {
    const payload = Buffer.alloc(300, 7);
    const msg = encodeBytesMessage(payload);
    expect([...msg.subarray(0, 3)]).toEqual([0x0a, 0xac, 0x02]);
    expect(decodeBytesMessage(msg).equals(payload)).toBe(true);
    expect(encodeBytesMessage(Buffer.alloc(0)).length).toBe(0);
    expect(decodeBytesMessage(Buffer.alloc(0)).length).toBe(0);
  });

  it('skips unknown fields and rejects truncation (Go’s wording, shared with the fd-3 payload reader)', () => {
    const withUnknown = Buffer.concat([Buffer.from([0x10, 0x96, 0x01, 0x1a, 0x01, 0x41]), encodeBytesMessage(Buffer.from('hi'))]);
    expect(decodeBytesMessage(withUnknown).toString()).toBe('hi');
    expect(() => decodeBytesMessage(Buffer.from([0x0a, 0x05, 0x41]))).toThrow('unexpected EOF');
  });
});

describe('grpc key provider', () => {
  it('unwraps the toy layer key over plaintext gRPC, sending no local keys', async () => {
    const { w, warnings } = wrapperFor({ grpc: `127.0.0.1:${PORT_PLAIN}` });
    received.length = 0;
    const out = await unwrapEntry(w, TOY_ENTRY, ctx({ privkeys: [Buffer.from('PEMDATA')], 'privkeys-passwords': [null], testprov: [Buffer.from('Enabled')] }));
    expectDecryptsToyLayer(out);
    expect(warnings).toEqual([]);
    expect(received).toHaveLength(1);
    expect(received[0]!.toString()).toBe(
      '{"op":"keyunwrap","keywrapparams":{"ec":null,"optsdata":null},"keyunwrapparams":{"dc":{"Parameters":{"testprov":["RW5hYmxlZA=="]}},' +
        `"annotation":"${TOY_ENTRY.toString('base64')}"}}`,
    );
  });

  it('unwraps over TLS with root-ca-file and server-name', async () => {
    const { w } = wrapperFor({ grpc: `127.0.0.1:${PORT_TLS}`, 'grpc-tls': { 'root-ca-file': pem('ca.pem'), 'server-name': 'kp.test' } });
    expectDecryptsToyLayer(await unwrapEntry(w, TOY_ENTRY, ctx()));
  });

  it('unwraps over TLS to an IP address without server-name, with no Node warning on stderr', async () => {
    const { w } = wrapperFor({ grpc: `127.0.0.1:${PORT_TLS}`, 'grpc-tls': { 'root-ca-file': pem('ca.pem') } });
    expectDecryptsToyLayer(await unwrapEntry(w, TOY_ENTRY, ctx()));
    expect(nodeWarnings.filter((m) => /ServerName|RFC 6066/.test(m))).toEqual([]);
  });

  it('refuses a server certificate from another CA (dial error)', async () => {
    const { w } = wrapperFor({ grpc: `127.0.0.1:${PORT_TLS}`, 'grpc-tls': { 'root-ca-file': pem('other-ca.pem'), 'server-name': 'kp.test' } });
    const err = await unwrapError(w);
    expect(err.message).toBe(`error while dialing rpc server: 127.0.0.1:${PORT_TLS}: unable to verify the first certificate`);
  });

  it('refuses a server certificate for another name', async () => {
    const { w } = wrapperFor({ grpc: `127.0.0.1:${PORT_TLS}`, 'grpc-tls': { 'root-ca-file': pem('ca.pem'), 'server-name': 'evil.test' } });
    const err = await unwrapError(w);
    expect(err.message).toMatch(/^error while dialing rpc server: .*evil\.test/);
  });

  it('skips verification only when insecure-skip-verify is explicitly true, with a warning', async () => {
    const { w, warnings } = wrapperFor({ grpc: `127.0.0.1:${PORT_TLS}`, 'grpc-tls': { 'insecure-skip-verify': true } });
    expectDecryptsToyLayer(await unwrapEntry(w, TOY_ENTRY, ctx()));
    expect(warnings.join('\n')).toContain('insecure-skip-verify');
    const strict = wrapperFor({ grpc: `127.0.0.1:${PORT_TLS}`, 'grpc-tls': { 'insecure-skip-verify': false } });
    expect((await unwrapError(strict.w)).message).toMatch(/^error while dialing rpc server: /);
  });

  it('presents the client certificate for mutual TLS', async () => {
    const tls = { 'root-ca-file': pem('ca.pem'), 'server-name': 'kp.test' };
    const withCert = wrapperFor({ grpc: `127.0.0.1:${PORT_MTLS}`, 'grpc-tls': { ...tls, 'cert-file': pem('client.pem'), 'key-file': pem('client.key') } });
    expectDecryptsToyLayer(await unwrapEntry(withCert.w, TOY_ENTRY, ctx()));
    const without = wrapperFor({ grpc: `127.0.0.1:${PORT_MTLS}`, 'grpc-tls': tls });
    expect((await unwrapError(without.w)).message).toMatch(/^(error while dialing rpc server|Error from grpc method): /);
    const half = wrapperFor({ grpc: `127.0.0.1:${PORT_MTLS}`, 'grpc-tls': { ...tls, 'cert-file': pem('client.pem') } });
    expect((await unwrapError(half.w)).message).toContain('needs both "cert-file" and "key-file"');
  });

  it('reports an unreadable root CA file', async () => {
    const { w } = wrapperFor({ grpc: `127.0.0.1:${PORT_TLS}`, 'grpc-tls': { 'root-ca-file': pem('absent.pem') } });
    expect((await unwrapError(w)).message).toBe(`failed to load root CA certificates: ${pem('absent.pem')}: no such file or directory`);
    const { w: w2 } = wrapperFor({ grpc: `127.0.0.1:${PORT_TLS}`, 'grpc-tls': { 'root-ca-file': pem('server.ext') } });
    expect((await unwrapError(w2)).message).toMatch(/^no root CA certs parsed from file /);
  });

  it('reports a status from the server as an error from the grpc method', async () => {
    const { w } = wrapperFor({ grpc: `127.0.0.1:${PORT_STATUS}` });
    expect((await unwrapError(w)).message).toBe('Error from grpc method: rpc error: code = PermissionDenied desc = kbs refused');
    expect((await unwrapError(w, Buffer.from('garbage'))).message).toBe(
      'Error while unmarshalling grpc method output: output is not valid JSON (8 bytes)',
    );
  });

  it('gives up on a server that never answers at the deadline', async () => {
    const { w } = wrapperFor({ grpc: `127.0.0.1:${PORT_HANG}` }, 400);
    const started = Date.now();
    const err = await unwrapError(w);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(err.message).toBe(`Error from grpc method: no answer from 127.0.0.1:${PORT_HANG} within 400 ms (deadline exceeded)`);
  });

  it('cancels the call when the caller aborts', async () => {
    const { w } = wrapperFor({ grpc: `127.0.0.1:${PORT_HANG}` }, 10_000);
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('layer deadline')), 200);
    const started = Date.now();
    const err = await unwrapEntry(w, TOY_ENTRY, { ...ctx(), signal: ac.signal }).catch((e: unknown) => e as Error);
    expect(Date.now() - started).toBeLessThan(3000);
    expect((err as Error).message).toBe('Error from grpc method: aborted (layer deadline)');
  });

  it('fails fast with a dial error when nothing listens', async () => {
    const { w } = wrapperFor({ grpc: `127.0.0.1:${PORT_NOTHING}` }, 10_000);
    const started = Date.now();
    const err = await unwrapError(w);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(err.message).toBe(`error while dialing rpc server: 127.0.0.1:${PORT_NOTHING}: connect ECONNREFUSED 127.0.0.1:${PORT_NOTHING}`);
  });

  it('reports a dial error when the peer accepts TCP but never speaks HTTP/2', async () => {
    const { w } = wrapperFor({ grpc: `127.0.0.1:${PORT_SILENT_TCP}` }, 400);
    const err = await unwrapError(w);
    expect(err.message).toBe(`error while dialing rpc server: 127.0.0.1:${PORT_SILENT_TCP}: no connection within 400 ms`);
  });
});
