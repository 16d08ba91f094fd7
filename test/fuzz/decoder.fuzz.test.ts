/**
 * The whole executable under fuzzed input, as containerd runs it: a genuine attestation-agent layer (test KBS) and
 * a genuine JWE layer whose annotations, pubopts or fd-3 bytes are mutated. Property: either the exact plaintext
 * with exit 0, or exit 1 with no plaintext at all (the layers are below the 64 KiB holdback) and exactly one
 * bounded, control-free line on stderr; never a hang. Each run is a process start, so the count stays small in
 * `npm test` (FUZZ_RUNS scales it for `npm run fuzz`).
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { locateDecoder } from '../helpers/decoder-binary.js';
import { privateOptionsJson, wrapForAttestationAgent, wrapJwe } from '../helpers/encrypt-image.js';
import { encryptTestLayer, testLayerDescriptor } from '../helpers/encrypted-layer.js';
import { encodePayload, type PayloadDescriptor } from '../helpers/payload.js';
import { runDecoder } from '../helpers/run-decoder.js';
import { startTestKbs, type TestKbs } from '../kbs/server.js';

const RUNS = Math.max(1, Math.floor(Number(process.env['FUZZ_RUNS'] ?? 600) / 30));
const SEED = process.env['FUZZ_SEED'] !== undefined ? Number(process.env['FUZZ_SEED']) : process.env['FUZZ_RUNS'] ? undefined : 20261202;
const params = { numRuns: RUNS, ...(SEED !== undefined ? { seed: SEED } : {}) };
const KID = 'kbs:///default/image-kek/fuzz';
const KEK = randomBytes(32);
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/;

let binary: string;
let kbs: TestKbs;
let dir: string;
let config: string;
let keys: string;
let aa: { descriptor: PayloadDescriptor; ciphertext: Buffer; plaintext: Buffer };
let jwe: { descriptor: PayloadDescriptor; ciphertext: Buffer; plaintext: Buffer };

function layer(annotations: (key: Buffer, nonce: Buffer) => Promise<Record<string, string>>) {
  return async () => {
    const c = encryptTestLayer(30_000);
    return { descriptor: testLayerDescriptor(c, await annotations(c.key, c.nonce)), ciphertext: c.ciphertext, plaintext: c.plaintext };
  };
}

beforeAll(async () => {
  binary = locateDecoder().path;
  kbs = await startTestKbs({ resources: { 'default/image-kek/fuzz': KEK } });
  dir = mkdtempSync(join(tmpdir(), 'decoder-fuzz-'));
  config = join(dir, 'config.toml');
  writeFileSync(config, `[kbs]\nurl = "${kbs.url}"\nallow_http = true\n[attestation]\ntee = "sample"\n[cache]\ndir = "${join(dir, 'cache')}"\n`);
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  keys = join(dir, 'keys');
  mkdirSync(keys);
  writeFileSync(join(keys, 'k.pem'), privateKey.export({ format: 'pem', type: 'pkcs8' }));
  const pem = publicKey.export({ format: 'pem', type: 'spki' }) as string;
  aa = await layer(async (k, n) => ({
    'org.opencontainers.image.enc.keys.provider.attestation-agent': Buffer.from(wrapForAttestationAgent(privateOptionsJson(k, '', n), KID, KEK)).toString('base64'),
  }))();
  jwe = await layer(async (k, n) => ({
    'org.opencontainers.image.enc.keys.jwe': Buffer.from(await wrapJwe(privateOptionsJson(k, '', n), [pem])).toString('base64'),
  }))();
});

afterAll(async () => {
  await kbs?.stop();
  rmSync(dir, { recursive: true, force: true });
});

type Mutation =
  | { kind: 'value'; which: number; at: number; char: string }
  | { kind: 'decoded'; which: number; at: number; bit: number }
  | { kind: 'drop'; which: number }
  | { kind: 'add'; name: string; value: string }
  | { kind: 'payload'; at: number; value: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('value' as const), which: fc.nat(), at: fc.nat(), char: fc.string({ minLength: 1, maxLength: 3 }) }),
  fc.record({ kind: fc.constant('decoded' as const), which: fc.nat(), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('drop' as const), which: fc.nat() }),
  fc.record({ kind: fc.constant('add' as const), name: fc.string({ maxLength: 40, unit: 'binary' }), value: fc.string({ maxLength: 60 }) }),
  fc.record({ kind: fc.constant('payload' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
);

function apply(base: PayloadDescriptor, m: Mutation): { descriptor: PayloadDescriptor; payload?: Buffer } {
  const annotations = { ...base.annotations };
  const names = Object.keys(annotations);
  const name = names[('which' in m ? m.which : 0) % names.length]!;
  if (m.kind === 'value') {
    const v = annotations[name]!;
    const at = m.at % (v.length + 1);
    annotations[name] = v.slice(0, at) + m.char + v.slice(at + 1);
  } else if (m.kind === 'decoded') {
    const b = Buffer.from(annotations[name]!, 'base64');
    if (b.length > 0) b[m.at % b.length]! ^= 1 << m.bit;
    annotations[name] = b.toString('base64');
  } else if (m.kind === 'drop') {
    delete annotations[name];
  } else if (m.kind === 'add') {
    annotations[`org.opencontainers.image.enc.keys.${m.name}`] = m.value;
  }
  const descriptor = { ...base, annotations };
  if (m.kind !== 'payload') return { descriptor };
  const payload = encodePayload(descriptor);
  payload[m.at % payload.length] = m.value;
  return { descriptor, payload };
}

describe('coco-decoder under fuzzed annotations and payloads', () => {
  for (const [name, get] of [
    ['attestation-agent layer', () => aa],
    ['jwe layer', () => jwe],
  ] as const) {
    it(`${name}: the exact plaintext, or one bounded line and no output`, async () => {
      await fc.assert(
        fc.asyncProperty(mutation, async (m) => {
          const l = get();
          const { descriptor, payload } = apply(l.descriptor, m);
          const r = await runDecoder({
            binary,
            args: ['--decryption-keys-path', keys],
            env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', COCO_DECODER_CONFIG: config },
            descriptor,
            ...(payload ? { payload } : {}),
            input: l.ciphertext,
            output: 'buffer',
            timeoutMs: 30_000,
          });
          expect(r.timedOut).toBe(false);
          if (r.code === 0) {
            expect(r.stdout!.equals(l.plaintext)).toBe(true);
            return;
          }
          expect(r.code).toBe(1);
          expect(r.stdout!.length).toBe(0);
          const lines = r.stderr.split('\n').filter((x) => x !== '');
          expect(lines, r.stderr).toHaveLength(1);
          expect(Buffer.byteLength(lines[0]!)).toBeLessThanOrEqual(4096);
          expect(lines[0]).not.toMatch(CONTROL);
          expect(lines[0]).toMatch(/^coco-decoder: /);
        }),
        params,
      );
    }, 300_000);
  }
});
