/**
 * `coco-decoder keyprovider` through the built executable, driven by real clients: our own decoder through
 * OCICRYPT_KEYPROVIDER_CONFIG (cmd and gRPC), Debian's skopeo (Go ocicrypt) encrypting with
 * `provider:attestation-agent:keypath=…::keyid=…`, the captured ocicrypt stdin fixtures, and a raw gRPC client
 * for malformed requests. The KBS is the test KBS on loopback.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { locateDecoder } from '../../helpers/decoder-binary.js';
import { encryptTestLayer, testLayerDescriptor } from '../../helpers/encrypted-layer.js';
import type { PayloadDescriptor } from '../../helpers/payload.js';
import { runDecoder } from '../../helpers/run-decoder.js';
import { startTestKbs, type TestKbs } from '../../kbs/server.js';

const V131 = path.join(import.meta.dirname, '../../fixtures/ocicrypt-v1.3.1');
const PLAIN = path.join(import.meta.dirname, '../../fixtures/ocicrypt/plain');
const KID = 'kbs:///default/image-kek/keyprovider';
const AA = 'org.opencontainers.image.enc.keys.provider.attestation-agent';
const skopeo = ['/usr/bin/skopeo', '/usr/local/bin/skopeo'].find((p) => existsSync(p));

let bin: string;
let dir: string;
let kbs: TestKbs;
let config: string;
let kekFile: string;
const kek = randomBytes(32);
const children: ChildProcess[] = [];

const env = (): NodeJS.ProcessEnv => ({ PATH: process.env['PATH'] ?? '/usr/bin:/bin', COCO_DECODER_CONFIG: config });

function provider(input: Buffer | string, args: string[] = []) {
  return spawnSync(bin, ['keyprovider', ...args], { input, env: env(), timeout: 60_000 });
}

/** As `provider`, but without blocking this process: the test KBS answering keyunwrap lives in it. */
async function providerAsync(input: Buffer): Promise<{ status: number | null; stdout: Buffer; stderr: string }> {
  const child = spawn(bin, ['keyprovider'], { env: env(), stdio: ['pipe', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => out.push(d));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin.end(input);
  const [status] = (await once(child, 'close')) as [number | null];
  return { status, stdout: Buffer.concat(out), stderr };
}

function wrapRequest(optsdata: Buffer, params: string): Buffer {
  return Buffer.from(
    JSON.stringify({
      op: 'keywrap',
      keywrapparams: { ec: { Parameters: { 'attestation-agent': [Buffer.from(params).toString('base64')] }, DecryptConfig: { Parameters: null } }, optsdata: optsdata.toString('base64') },
      keyunwrapparams: { dc: null, annotation: null },
    }),
  );
}

const unwrapRequest = (annotation: Buffer): Buffer =>
  Buffer.from(JSON.stringify({ op: 'keyunwrap', keywrapparams: { ec: null, optsdata: null }, keyunwrapparams: { dc: { Parameters: null }, annotation: annotation.toString('base64') } }));

/** A layer whose key only an attestation-agent provider can unwrap (the packet made by our own keyprovider). */
function layerFor(annotationB64: (privopts: Buffer) => string): { descriptor: PayloadDescriptor; ciphertext: Buffer; plaintext: Buffer } {
  const c = encryptTestLayer(10_000);
  const privopts = Buffer.from(JSON.stringify({ symkey: c.key.toString('base64'), digest: '', cipheroptions: { nonce: c.nonce.toString('base64') } }));
  return { plaintext: c.plaintext, ciphertext: c.ciphertext, descriptor: testLayerDescriptor(c, { [AA]: annotationB64(privopts) }) };
}

function wrappedByProvider(privopts: Buffer): string {
  const r = provider(wrapRequest(privopts, `keypath=${kekFile}::keyid=${KID}::algorithm=A256GCM`));
  expect(r.status, r.stderr.toString()).toBe(0);
  return JSON.parse(r.stdout.toString()).keywrapresults.annotation as string;
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function startGrpcProvider(address: string, extra: string[] = []): Promise<ChildProcess> {
  const child = spawn(bin, ['keyprovider', '--grpc', address, ...extra], { env: env(), stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(child);
  let err = '';
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      if (err.includes('serving keyprovider.KeyProviderService')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`provider exited ${code}: ${err}`)));
  });
  return child;
}

beforeAll(async () => {
  bin = locateDecoder().path;
  dir = mkdtempSync(path.join(tmpdir(), 'keyprovider-cli-'));
  kbs = await startTestKbs({ resources: { 'default/image-kek/keyprovider': kek } });
  config = path.join(dir, 'config.toml');
  writeFileSync(config, `[kbs]\nurl = "${kbs.url}"\nallow_http = true\n[attestation]\ntee = "sample"\n[cache]\ndir = "${path.join(dir, 'cache')}"\n`);
  kekFile = path.join(dir, 'kek.bin');
  writeFileSync(kekFile, kek, { mode: 0o600 });
});

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await kbs?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('cmd protocol (stdin/stdout)', () => {
  it('keywrap then keyunwrap round trips through the KBS; the packet is coco_keyprovider\'s', async () => {
    const optsdata = Buffer.from('{"symkey":"c2VjcmV0","digest":"","cipheroptions":{}}');
    const annotation = Buffer.from(wrappedByProvider(optsdata), 'base64');
    expect(Object.keys(JSON.parse(annotation.toString()))).toEqual(['kid', 'wrapped_data', 'iv', 'wrap_type']);
    const r = await providerAsync(unwrapRequest(annotation));
    expect(r.status, r.stderr).toBe(0);
    expect(Buffer.from(JSON.parse(r.stdout.toString()).keyunwrapresults.optsdata, 'base64').equals(optsdata)).toBe(true);
    expect(kbs.counters.resourceOk).toBeGreaterThanOrEqual(1);
  });

  it('the captured ocicrypt requests: a clear one-line refusal, never the input', async () => {
    const wrap = provider(readFileSync(path.join(V131, 'keyprovider-wrap-stdin.json')));
    expect(wrap.status).toBe(1);
    expect(wrap.stderr.toString()).toBe('coco-decoder keyprovider: wrap parameters must be key=value pairs joined by "::" (keypath=…::keyid=kbs:///…)\n');
    const unwrap = await providerAsync(readFileSync(path.join(V131, 'keyprovider-unwrap-stdin.json')));
    expect(unwrap.status).toBe(1);
    expect(unwrap.stderr).toBe('coco-decoder keyprovider: invalid attestation-agent annotation packet: not JSON\n');
    for (const bad of ['', 'not json', '{"op":"frobnicate"}', '{"op":"keywrap","keywrapparams":{"optsdata":null}}']) {
      const r = provider(bad);
      expect(r.status, bad).toBe(1);
      expect(r.stderr.toString().trim().split('\n'), bad).toHaveLength(1);
    }
    const wrongKek = provider(wrapRequest(Buffer.from('{}'), `keypath=${path.join(V131, 'privopts.json')}::keyid=${KID}`));
    expect(wrongKek.stderr.toString()).toMatch(/must hold exactly 32 raw bytes/);
  });

  it('drives our own decoder as its OCICRYPT_KEYPROVIDER_CONFIG cmd provider', async () => {
    const l = layerFor(wrappedByProvider);
    const kp = path.join(dir, 'ocicrypt-cmd.json');
    writeFileSync(kp, JSON.stringify({ 'key-providers': { 'attestation-agent': { cmd: { path: bin, args: ['keyprovider'] } } } }));
    const r = await runDecoder({ binary: bin, env: { ...env(), OCICRYPT_KEYPROVIDER_CONFIG: kp }, descriptor: l.descriptor, input: l.ciphertext, output: 'buffer' });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout!.equals(l.plaintext)).toBe(true);
  });

  it.skipIf(!skopeo)('lets Debian skopeo encrypt with provider:attestation-agent:keypath=…::keyid=…, and our decoder decrypts it', async (ctx) => {
    const kp = path.join(dir, 'ocicrypt-skopeo.json');
    writeFileSync(kp, JSON.stringify({ 'key-providers': { 'attestation-agent': { cmd: { path: bin, args: ['keyprovider'] } } } }));
    const out = path.join(dir, 'skopeo-enc');
    const home = mkdtempSync(path.join(dir, 'home-'));
    const r = spawnSync(skopeo!, ['copy', '--encryption-key', `provider:attestation-agent:keypath=${kekFile}::keyid=${KID}::algorithm=A256GCM`, `oci:${PLAIN}:latest`, `oci:${out}:latest`], {
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...env(), HOME: home, OCICRYPT_KEYPROVIDER_CONFIG: kp },
    });
    if (r.status !== 0 && /Provided protocol not recognized/.test(r.stderr)) {
      // Debian 12's skopeo (ocicrypt 1.1) predates provider: encryption keys; Debian 13's has them.
      console.warn(`[keyprovider] skipped: ${skopeo} does not know provider: encryption keys (${r.stderr.trim().slice(0, 120)})`);
      ctx.skip();
      return;
    }
    expect(r.status, r.stderr).toBe(0);
    const index = JSON.parse(readFileSync(path.join(out, 'index.json'), 'utf8'));
    const manifest = JSON.parse(readFileSync(path.join(out, 'blobs', 'sha256', index.manifests[0].digest.slice(7)), 'utf8'));
    const layer = manifest.layers[0];
    expect(JSON.parse(Buffer.from(layer.annotations[AA], 'base64').toString())).toMatchObject({ kid: KID, wrap_type: 'A256GCM' });
    const plainManifest = JSON.parse(readFileSync(path.join(PLAIN, 'blobs', 'sha256', JSON.parse(readFileSync(path.join(PLAIN, 'index.json'), 'utf8')).manifests[0].digest.slice(7)), 'utf8'));
    const d = await runDecoder({
      binary: bin,
      env: env(), // no provider config: the decoder attests in-process
      descriptor: { mediaType: layer.mediaType, digest: layer.digest, size: layer.size, annotations: layer.annotations },
      input: readFileSync(path.join(out, 'blobs', 'sha256', layer.digest.slice(7))),
      output: 'buffer',
    });
    expect(d.stderr).toBe('');
    expect(d.stdout!.equals(readFileSync(path.join(PLAIN, 'blobs', 'sha256', plainManifest.layers[0].digest.slice(7))))).toBe(true);
  });
});

describe('gRPC (keyprovider.KeyProviderService)', () => {
  it('serves our decoder as its grpc provider, answers INVALID_ARGUMENT to a bad request, and stops on SIGTERM', async () => {
    const port = await freePort();
    const child = await startGrpcProvider(`127.0.0.1:${port}`);
    const kp = path.join(dir, 'ocicrypt-grpc.json');
    writeFileSync(kp, JSON.stringify({ 'key-providers': { 'attestation-agent': { grpc: `127.0.0.1:${port}` } } }));
    const layers = [layerFor(wrappedByProvider), layerFor(wrappedByProvider)];
    const before = kbs.counters.attest;
    const results = await Promise.all(
      layers.map((l) => runDecoder({ binary: bin, env: { ...env(), OCICRYPT_KEYPROVIDER_CONFIG: kp }, descriptor: l.descriptor, input: l.ciphertext, output: 'buffer' })),
    );
    for (const [i, r] of results.entries()) {
      expect(r.stderr).toBe('');
      expect(r.stdout!.equals(layers[i]!.plaintext)).toBe(true);
    }
    expect(kbs.counters.attest - before).toBeLessThanOrEqual(1); // concurrent calls share the provider's token

    const grpc = await import('@grpc/grpc-js');
    const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    const status = await new Promise<number>((resolve) =>
      client.makeUnaryRequest(
        '/keyprovider.KeyProviderService/UnWrapKey',
        (b: Buffer) => Buffer.concat([Buffer.from([0x0a, b.length]), b]),
        (b: Buffer) => b,
        Buffer.from('{"op":"nope"}'),
        (err) => resolve(err?.code ?? 0),
      ),
    );
    client.close();
    expect(status).toBe(grpc.status.INVALID_ARGUMENT);

    child.kill('SIGTERM');
    const [code] = (await once(child, 'exit')) as [number | null];
    expect(code).toBe(0);
    // And the decoder really went through the provider: with it stopped, the same layer fails to dial.
    const l = layerFor(wrappedByProvider);
    const gone = await runDecoder({ binary: bin, env: { ...env(), OCICRYPT_KEYPROVIDER_CONFIG: kp }, descriptor: l.descriptor, input: l.ciphertext, output: 'buffer' });
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/error while dialing rpc server/);
  }, 60_000);

  it('refuses to listen beyond loopback without --allow-remote', () => {
    const r = spawnSync(bin, ['keyprovider', '--grpc', '0.0.0.0:50999'], { env: env(), encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/not a loopback address; .* needs --allow-remote/);
  });

  it('serves on a unix socket', async () => {
    const sock = path.join(dir, 'kp.sock');
    const child = await startGrpcProvider(`unix:${sock}`);
    const kp = path.join(dir, 'ocicrypt-unix.json');
    writeFileSync(kp, JSON.stringify({ 'key-providers': { 'attestation-agent': { grpc: `unix://${sock}` } } }));
    const l = layerFor(wrappedByProvider);
    const r = await runDecoder({ binary: bin, env: { ...env(), OCICRYPT_KEYPROVIDER_CONFIG: kp }, descriptor: l.descriptor, input: l.ciphertext, output: 'buffer' });
    expect(r.stderr).toBe('');
    expect(r.stdout!.equals(l.plaintext)).toBe(true);
    child.kill('SIGTERM');
    await once(child, 'exit');
  }, 60_000);
});
