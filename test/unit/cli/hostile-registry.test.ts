/**
 * The registry is the attacker: annotations, pubopts and wrapped keys it chose, run through the built executable
 * (`dist/coco-decoder`) exactly as containerd runs it (fd 3, stdin pipe, stdout). Each case pins one defence:
 * no relabelled wrap type, one fixed message after a key was unwrapped, no nonce from pubopts, no MAC oracle,
 * bounded fan-out to the KBS, and a bounded, control-free error line.
 */
import { createDecipheriv, createHash, createHmac, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { locateDecoder } from '../../helpers/decoder-binary.js';
import { privateOptionsJson, wrapForAttestationAgent, wrapJwe } from '../../helpers/encrypt-image.js';
import { encryptTestLayer, testLayerDescriptor } from '../../helpers/encrypted-layer.js';
import type { PayloadDescriptor } from '../../helpers/payload.js';
import { runDecoder } from '../../helpers/run-decoder.js';
import { startTestKbs, type TestKbs } from '../../kbs/server.js';

const AA = 'org.opencontainers.image.enc.keys.provider.attestation-agent';
const JWE = 'org.opencontainers.image.enc.keys.jwe';
const PUBOPTS = 'org.opencontainers.image.enc.pubopts';
const KID = 'kbs:///default/image-kek/hostile';
const KEK = randomBytes(32);
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/;

let binary: string;
let kbs: TestKbs;
let dir: string;
let config: string;
let cacheN = 0;

interface Layer {
  descriptor: PayloadDescriptor;
  ciphertext: Buffer;
  plaintext: Buffer;
  key: Buffer;
  nonce: Buffer;
}

function layer(annotations: (l: { key: Buffer; nonce: Buffer; hmac: Buffer; plaintext: Buffer }) => Record<string, string>, size = 20_000): Layer {
  const c = encryptTestLayer(size);
  return { ...c, descriptor: testLayerDescriptor(c, annotations(c)) };
}

const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

async function decode(l: Layer, args: string[] = []) {
  return runDecoder({
    binary,
    args,
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', COCO_DECODER_CONFIG: config },
    descriptor: l.descriptor,
    input: l.ciphertext,
    output: 'buffer',
    timeoutMs: 60_000,
  });
}

function expectOneBoundedLine(stderr: string): string {
  const lines = stderr.split('\n').filter((x) => x !== '');
  expect(lines).toHaveLength(1);
  const line = lines[0]!;
  expect(Buffer.byteLength(line)).toBeLessThanOrEqual(4096);
  expect(line).not.toMatch(CONTROL);
  return line;
}

beforeAll(async () => {
  binary = locateDecoder().path;
  kbs = await startTestKbs({ resources: { 'default/image-kek/hostile': KEK } });
  dir = mkdtempSync(join(tmpdir(), 'hostile-registry-'));
});

beforeEach(() => {
  // A fresh token cache per case, so KBS counters speak about that case alone.
  const cache = join(dir, `cache-${cacheN++}`);
  config = join(dir, `config-${cacheN}.toml`);
  writeFileSync(config, `[kbs]\nurl = "${kbs.url}"\nallow_http = true\n[attestation]\ntee = "sample"\n[cache]\ndir = "${cache}"\n`);
  Object.assign(kbs.counters, { auth: 0, attest: 0, attestOk: 0, resource: 0, resourceOk: 0 });
  kbs.faults.denyAll = false;
});

afterAll(async () => {
  await kbs?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('the layer key cannot be recovered or replaced', () => {
  it('decrypts a genuine A256GCM layer (the baseline the attacks start from)', async () => {
    const l = layer(({ key, nonce }) => ({ [AA]: b64(wrapForAttestationAgent(privateOptionsJson(key, '', nonce), KID, KEK)) }));
    const r = await decode(l);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout!.equals(l.plaintext)).toBe(true);
  });

  it('a genuine packet relabelled A256CTR (bit-flippable under the real KEK) is refused before the KBS is asked', async () => {
    const l = layer(({ key, nonce }) => {
      const genuine = JSON.parse(wrapForAttestationAgent(privateOptionsJson(key, '', nonce), KID, KEK)) as { wrapped_data: string; iv: string };
      const body = Buffer.from(genuine.wrapped_data, 'base64').subarray(0, -16);
      const ctrIv = Buffer.concat([Buffer.from(genuine.iv, 'base64'), Buffer.from([0, 0, 0, 2])]);
      // The relabelled packet really does decrypt to the genuine options under the real KEK:
      const d = createDecipheriv('aes-256-ctr', KEK, ctrIv);
      expect(Buffer.concat([d.update(body), d.final()])).toEqual(privateOptionsJson(key, '', nonce));
      return { [AA]: b64(JSON.stringify({ kid: KID, wrapped_data: body.toString('base64'), iv: ctrIv.toString('base64'), wrap_type: 'A256CTR' })) };
    });
    const r = await decode(l);
    expect(r.code).toBe(1);
    expect(r.stdout!.length).toBe(0);
    expect(expectOneBoundedLine(r.stderr)).toMatch(/unsupported wrap_type "A256CTR" \(only "A256GCM"/);
    expect(kbs.counters).toMatchObject({ auth: 0, attest: 0, resource: 0 });
  });

  it('malformed private options from any scheme give one fixed message, whatever the decrypted bytes were', async () => {
    // JWE: anyone can encrypt to the node's public key, so these bytes are fully attacker-chosen.
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const keys = join(dir, 'keys');
    mkdirSync(keys, { recursive: true });
    writeFileSync(join(keys, 'k.pem'), privateKey.export({ format: 'pem', type: 'pkcs8' }));
    const pem = publicKey.export({ format: 'pem', type: 'spki' }) as string;
    const variants = ['{"symkey":"!!!not base64"}', '{"symkey": garbage', `{"symkey":"${b64(Buffer.alloc(16))}"}`, `{"symkey":"${b64(Buffer.alloc(32))}","cipheroptions":{"nonce":"${b64(Buffer.alloc(5))}"}}`, '[1,2,3]'];
    const messages = new Set<string>();
    for (const privopts of variants) {
      const jwe = await wrapJwe(Buffer.from(privopts), [pem]);
      const r = await decode(layer(() => ({ [JWE]: b64(jwe) })), ['--decryption-keys-path', keys]);
      expect(r.code).toBe(1);
      messages.add(expectOneBoundedLine(r.stderr).replace(/layer sha256:[0-9a-f]{64}/, 'layer X'));
    }
    expect([...messages]).toEqual(['coco-decoder: layer X: call to DecryptLayer failed: the private layer options unwrapped with "jwe" are not valid']);
  });

  it('a nonce in pubopts (unauthenticated) is refused, before any key is unwrapped', async () => {
    const l = layer(({ key, nonce, hmac }) => ({
      [AA]: b64(wrapForAttestationAgent(privateOptionsJson(key, '', nonce), KID, KEK)),
      [PUBOPTS]: b64(JSON.stringify({ cipher: 'AES_256_CTR_HMAC_SHA256', hmac: hmac.toString('base64'), cipheroptions: { nonce: b64(randomBytes(16)) } })),
    }));
    const r = await decode(l);
    expect(r.code).toBe(1);
    expect(expectOneBoundedLine(r.stderr)).toMatch(/the public layer options carry a nonce/);
    expect(kbs.counters.attest).toBe(0);
  });

  it('a wrong HMAC shows only the expected one: never the MAC our key computes over the registry’s bytes', async () => {
    const l = layer(({ key, nonce }) => ({ [AA]: b64(wrapForAttestationAgent(privateOptionsJson(key, '', nonce), KID, KEK)) }));
    const real = createHmac('sha256', l.key).update(l.ciphertext).digest('hex');
    l.ciphertext[100]! ^= 1;
    const actual = createHmac('sha256', l.key).update(l.ciphertext).digest('hex');
    const r = await decode(l);
    expect(r.code).toBe(1);
    const line = expectOneBoundedLine(r.stderr);
    expect(line).toContain(`exp hmac: '${real}'`);
    expect(line).not.toContain(actual);
    expect(line).not.toMatch(/actual/);
  });
});

describe('no amplification', () => {
  const entries = (n: number, kid = (i: number) => `kbs:///default/image-kek/k${i}`) =>
    Array.from({ length: n }, (_, i) => b64(wrapForAttestationAgent(Buffer.from('{}'), kid(i), randomBytes(32)))).join(',');

  it('more than 8 wrapped keys for one scheme are refused without a single KBS request', async () => {
    const r = await decode(layer(() => ({ [AA]: entries(2000) })));
    expect(r.code).toBe(1);
    expect(expectOneBoundedLine(r.stderr)).toMatch(/"provider.attestation-agent" annotation lists 2000 wrapped keys; at most 8 are tried/);
    expect(kbs.counters).toMatchObject({ auth: 0, attest: 0, resource: 0 });
  });

  it('8 keys all denied by policy: one attestation, 8 resource requests, no re-attestation', async () => {
    kbs.faults.denyAll = true;
    const r = await decode(layer(() => ({ [AA]: entries(8) })));
    expect(r.code).toBe(1);
    expect(expectOneBoundedLine(r.stderr)).toMatch(/denied by the resource policy/);
    expect(kbs.counters).toMatchObject({ auth: 1, attest: 1, resource: 8 });
  });
});

describe('the error line is bounded and control-free', () => {
  it('an annotation key with an OSC title sequence is escaped, never echoed raw', async () => {
    const evil = 'org.opencontainers.image.enc.keys.x\u001b]0;PWNED\u0007\u009b2J';
    const r = await decode(layer(() => ({ [evil]: b64('x') })));
    expect(r.code).toBe(1);
    const line = expectOneBoundedLine(r.stderr);
    expect(line).toContain('unknown key-wrap scheme "x\\u001b]0;PWNED\\u0007\\u009b2J"');
  });

  it('thousands of unknown schemes and a huge kid still give one line of at most 4 KiB', async () => {
    const annotations: Record<string, string> = {};
    for (let i = 0; i < 3000; i++) annotations[`org.opencontainers.image.enc.keys.s${i}${'y'.repeat(50)}`] = b64('x');
    const hugeKid = `kbs:///${'a'.repeat(5000)}\u001b/b/c`;
    annotations[AA] = b64(wrapForAttestationAgent(Buffer.from('{}'), hugeKid, randomBytes(32)));
    const r = await decode(layer(() => annotations));
    expect(r.code).toBe(1);
    const line = expectOneBoundedLine(r.stderr);
    expect(line).toMatch(/and 2996 more unknown key-wrap schemes|…$/);
  });
});

describe('strict mode: [integrity] check_plain_digest', () => {
  const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
  const strict = (): void => writeFileSync(config, `${readFileSync(config, 'utf8')}[integrity]\ncheck_plain_digest = true\n`);
  const SIZE = 300_000;

  it('a layer that decrypts to the digest in its private options passes', async () => {
    strict();
    const l = layer(({ key, nonce, plaintext }) => ({ [AA]: b64(wrapForAttestationAgent(privateOptionsJson(key, sha256(plaintext), nonce), KID, KEK)) }), SIZE);
    const r = await decode(l);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout!.equals(l.plaintext)).toBe(true);
  });

  it('another digest fails the layer with a fixed message, before the held-back tail is released', async () => {
    strict();
    const l = layer(({ key, nonce }) => ({ [AA]: b64(wrapForAttestationAgent(privateOptionsJson(key, sha256(Buffer.from('another layer')), nonce), KID, KEK)) }), SIZE);
    const r = await decode(l);
    expect(r.code).toBe(1);
    expect(expectOneBoundedLine(r.stderr)).toMatch(/the decrypted layer does not have the sha256 digest its private options name/);
    expect(r.stderr).not.toContain(sha256(l.plaintext).slice(7));
    expect(r.stdout!.length).toBeLessThanOrEqual(SIZE - 64 * 1024);
  });

  it('no digest in the private options fails the layer; without strict mode it decrypts', async () => {
    const l = layer(({ key, nonce }) => ({ [AA]: b64(wrapForAttestationAgent(privateOptionsJson(key, '', nonce), KID, KEK)) }));
    expect((await decode(l)).code).toBe(0);
    strict();
    const r = await decode(l);
    expect(r.code).toBe(1);
    expect(expectOneBoundedLine(r.stderr)).toMatch(/carry no sha256 plaintext digest, which \[integrity\] check_plain_digest requires/);
  });
});
