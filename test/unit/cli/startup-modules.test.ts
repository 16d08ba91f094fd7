/**
 * What each per-layer path of the built executable (`dist/coco-decoder`) loads of Node's own modules. Every module
 * costs start-up on every layer (README, Performance): node:tls starts parsing Node's bundled root store on a
 * second thread (~9 ms), node:child_process and node:fs/promises ~2 ms each, node:http and node:net only matter
 * where there is no network. A preload (`NODE_OPTIONS=--require`, a Node option that leaves the trained code cache
 * valid) writes `process.moduleLoadList` at exit.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { locateDecoder } from '../../helpers/decoder-binary.js';
import { makePki } from '../../helpers/kbs-helpers.js';
import { privateOptionsJson, wrapForAttestationAgent, wrapJwe } from '../../helpers/encrypt-image.js';
import { encryptTestLayer, testLayerDescriptor } from '../../helpers/encrypted-layer.js';
import { runDecoder } from '../../helpers/run-decoder.js';
import { startTestKbs, type TestKbs } from '../../kbs/server.js';

const AA = 'org.opencontainers.image.enc.keys.provider.attestation-agent';
const JWE = 'org.opencontainers.image.enc.keys.jwe';
const KID = 'kbs:///default/image-kek/startup';
const KEK = randomBytes(32);

let binary: string;
let kbs: TestKbs;
let dir: string;
let preload: string;

beforeAll(async () => {
  binary = locateDecoder().path;
  kbs = await startTestKbs({ resources: { 'default/image-kek/startup': KEK } });
  dir = mkdtempSync(join(tmpdir(), 'startup-modules-'));
  preload = join(dir, 'dump-modules.cjs');
  writeFileSync(
    preload,
    `process.on('exit', () => require('node:fs').writeFileSync(process.env.MODULES_TO, process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice(13)).join('\\n')));\n`,
  );
});

afterAll(async () => {
  await kbs?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Decodes one layer and returns the built-in modules the process loaded; the layer must decode correctly. */
async function modulesOf(annotations: (l: { key: Buffer; nonce: Buffer }) => Record<string, string> | Promise<Record<string, string>>, config: string, args: string[] = []): Promise<Set<string>> {
  const c = encryptTestLayer(20_000);
  const out = join(dir, `modules-${randomBytes(4).toString('hex')}.txt`);
  const r = await runDecoder({
    binary,
    args,
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', COCO_DECODER_CONFIG: config, NODE_OPTIONS: `--require "${preload}"`, MODULES_TO: out },
    descriptor: testLayerDescriptor(c, await annotations(c)),
    input: c.ciphertext,
    output: 'buffer',
    timeoutMs: 60_000,
  });
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(r.stdout!.equals(c.plaintext)).toBe(true);
  return new Set(readFileSync(out, 'utf8').split('\n'));
}

describe('what a layer loads', () => {
  it('a warm attestation-agent layer over http loads node:http but neither node:tls, node:https, node:child_process nor node:fs/promises', async () => {
    const config = join(dir, 'aa.toml');
    writeFileSync(config, `[kbs]\nurl = "${kbs.url}"\nallow_http = true\n[attestation]\ntee = "sample"\n[cache]\ndir = "${join(dir, 'cache')}"\n`);
    const wrap = (l: { key: Buffer; nonce: Buffer }): Record<string, string> => ({
      [AA]: Buffer.from(wrapForAttestationAgent(privateOptionsJson(l.key, '', l.nonce), KID, KEK)).toString('base64'),
    });
    const cold = await modulesOf(wrap, config);
    // The cold layer attested: it took the lock (flock(1) through node:child_process).
    expect(cold.has('child_process')).toBe(true);
    const before = { ...kbs.counters };
    const warm = await modulesOf(wrap, config);
    expect(kbs.counters.attest - before.attest).toBe(0);
    expect(kbs.counters.resource - before.resource).toBe(1);
    expect(warm.has('http')).toBe(true);
    for (const m of ['tls', 'https', 'child_process', 'fs/promises', 'timers/promises']) expect(warm.has(m), m).toBe(false);
  });

  it('a layer from an https KBS (kbs.cert) decrypts cold and warm; warm, it loads node:tls but still neither child_process nor fs/promises', async () => {
    const pki = makePki(mkdtempSync(join(dir, 'pki-')));
    const tlsKbs = await startTestKbs({ resources: { 'default/image-kek/startup': KEK }, tls: { cert: pki.certPem, key: pki.keyPem } });
    try {
      const config = join(dir, 'aa-https.toml');
      writeFileSync(config, `[kbs]\nurl = "${tlsKbs.url}"\ncert = "${pki.caFile}"\n[attestation]\ntee = "sample"\n[cache]\ndir = "${join(dir, 'cache-https')}"\n`);
      const wrap = (l: { key: Buffer; nonce: Buffer }): Record<string, string> => ({
        [AA]: Buffer.from(wrapForAttestationAgent(privateOptionsJson(l.key, '', l.nonce), KID, KEK)).toString('base64'),
      });
      await modulesOf(wrap, config);
      const warm = await modulesOf(wrap, config);
      expect(tlsKbs.counters).toMatchObject({ attest: 1, resource: 2 });
      for (const m of ['tls', 'https']) expect(warm.has(m), m).toBe(true);
      for (const m of ['child_process', 'fs/promises']) expect(warm.has(m), m).toBe(false);
    } finally {
      await tlsKbs.stop();
    }
  });

  it('a local-key (JWE) layer loads no network module at all, though the node has an https KBS configured', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const keys = join(dir, 'keys');
    mkdirSync(keys, { recursive: true });
    writeFileSync(join(keys, 'k.pem'), privateKey.export({ format: 'pem', type: 'pkcs8' }));
    const config = join(dir, 'kbs-configured.toml');
    writeFileSync(config, '[kbs]\nurl = "https://kbs.invalid:8080"\n');
    const pem = publicKey.export({ format: 'pem', type: 'spki' }) as string;
    const loaded = await modulesOf(async (l) => ({ [JWE]: Buffer.from(await wrapJwe(privateOptionsJson(l.key, '', l.nonce), [pem])).toString('base64') }), config, [
      '--decryption-keys-path',
      keys,
    ]);
    expect(loaded.has('crypto')).toBe(true);
    for (const m of ['net', 'http', 'tls', 'child_process', 'fs/promises', 'worker_threads']) expect(loaded.has(m), m).toBe(false);
  });
});
