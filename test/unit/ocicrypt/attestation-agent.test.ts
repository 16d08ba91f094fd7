/**
 * The `provider.attestation-agent` key wrapper: annotation packets as coco_keyprovider writes them (v1) and as
 * the CDH also accepts them (v2), unwrapped with a KEK fetched from the test KBS. The wrapped plaintext is the real
 * ocicrypt private-options fixture.
 */
import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Config } from '../../../src/config/types.js';
import { parseAnnotationPacket } from '../../../src/ocicrypt/keywrap/attestation-agent-packet.js';
import type { ResourceStats } from '../../../src/kbs/key-source.js';
import { createKekSource } from '../../../src/cli/kek-source.js';
import { createAttestationAgentWrapper } from '../../../src/ocicrypt/keywrap/attestation-agent.js';
import type { UnwrapContext } from '../../../src/ocicrypt/keywrap/keywrapper.js';
import { describeError } from '../../../src/util/errors.js';
import { startTestKbs } from '../../kbs/server.js';
import type { TestKbs } from '../../kbs/server.js';
import { makeTempDir, removeDir, testConfig } from '../../helpers/kbs-helpers.js';
import { unwrapEntry } from '../../helpers/unwrap-entry.js';

const PRIVOPTS = readFileSync(join(import.meta.dirname, '../../fixtures/ocicrypt-v1.3.1/privopts.json'));
const KEK = randomBytes(32);
const KID_PATH = `default/image-kek/${randomUUID()}`;

/** What coco_keyprovider does: AES-256-GCM, random 12-byte IV, no AAD, tag appended, base64 std. */
function wrapLikeCocoKeyprovider(kek: Buffer, plaintext: Buffer, kid: string, extra: Record<string, unknown> = {}): Buffer {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', kek, iv);
  const wrapped = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
  const packet = { kid, wrapped_data: wrapped.toString('base64'), iv: iv.toString('base64'), wrap_type: 'A256GCM', ...extra };
  return Buffer.from(JSON.stringify(packet));
}

function ctx(signal: AbortSignal = new AbortController().signal): UnwrapContext {
  return { params: {}, layerDigest: 'sha256:' + '0'.repeat(64), signal };
}

let kbs: TestKbs | undefined;
const dirs: string[] = [];

async function setup(over: (c: Config) => void = () => undefined): Promise<{ k: TestKbs; config: Config }> {
  kbs = await startTestKbs({ resources: { [KID_PATH]: KEK } });
  const d = makeTempDir();
  dirs.push(d);
  return { k: kbs, config: testConfig(kbs.url, join(d, 'cache'), over) };
}

afterEach(async () => {
  await kbs?.stop();
  kbs = undefined;
  for (const d of dirs.splice(0)) removeDir(d);
});

describe('unwrapping through the KBS', () => {
  it('returns the private layer options of a coco_keyprovider (v1) packet with its kid and token-cache facts', async () => {
    const { k, config } = await setup();
    const stats: Array<ResourceStats & { kid: string }> = [];
    const w = createAttestationAgentWrapper(createKekSource(async () => config, { onStats: (s) => stats.push(s) }));
    expect(w).toMatchObject({ scheme: 'provider.attestation-agent', supported: true });
    expect(w.noPossibleKeys({})).toBe(false);
    expect(w.hasPrivateKeys({})).toBe(false);

    const entry = wrapLikeCocoKeyprovider(KEK, PRIVOPTS, `kbs:///${KID_PATH}`);
    const r1 = await w.unwrap(entry, ctx());
    expect(r1!.privopts.equals(PRIVOPTS)).toBe(true);
    expect(r1!.facts).toEqual({ kid: `kbs:///${KID_PATH}`, tokenFromCache: false });

    // The next layer (a new wrapper, as in a new process) reuses the cached token.
    const w2 = createAttestationAgentWrapper(createKekSource(async () => config, { onStats: (s) => stats.push(s) }));
    const r2 = await w2.unwrap(entry, ctx());
    expect(r2!.privopts.equals(PRIVOPTS)).toBe(true);
    expect(r2!.facts?.tokenFromCache).toBe(true);
    expect(k.counters.attest).toBe(1);
    expect(stats.map((s) => s.requests)).toEqual([
      { auth: 1, attest: 1, resource: 1, retries: 0 },
      { auth: 0, attest: 0, resource: 1, retries: 0 },
    ]);
  });

  it('accepts v2 packets (version, provider, provider_settings, annotations) and ignores unknown members', async () => {
    const { config } = await setup();
    const w = createAttestationAgentWrapper(createKekSource(async () => config));
    const entry = wrapLikeCocoKeyprovider(KEK, PRIVOPTS, `kbs:///${KID_PATH}`, {
      version: '0.1.0',
      provider: 'kbs',
      provider_settings: {},
      annotations: {},
      future_field: 1,
    });
    expect((await unwrapEntry(w, entry, ctx()))!.equals(PRIVOPTS)).toBe(true);
  });

  it('uses the configured KBS even when the kid names another host', async () => {
    const { k, config } = await setup();
    const w = createAttestationAgentWrapper(createKekSource(async () => config));
    const entry = wrapLikeCocoKeyprovider(KEK, PRIVOPTS, `kbs://203.0.113.7:8080/${KID_PATH}`);
    expect((await unwrapEntry(w, entry, ctx()))!.equals(PRIVOPTS)).toBe(true);
    expect(k.counters.resourceOk).toBe(1);
  });

  it('a KEK that does not match the wrap fails clearly, without key material in the message', async () => {
    const { k, config } = await setup();
    const other = randomBytes(32);
    k.setResource(KID_PATH, other);
    const w = createAttestationAgentWrapper(createKekSource(async () => config));
    const err = await unwrapEntry(w, wrapLikeCocoKeyprovider(KEK, PRIVOPTS, `kbs:///${KID_PATH}`), ctx()).catch((e) => e);
    const text = describeError(err);
    expect(text).toMatch(/does not unwrap this layer's key \(AES-256-GCM authentication failed\)/);
    for (const key of [KEK, other]) {
      expect(text).not.toContain(key.toString('hex'));
      expect(text).not.toContain(key.toString('base64'));
    }
  });

  it('a KBS resource that is not 32 bytes is refused', async () => {
    const { k, config } = await setup();
    k.setResource(KID_PATH, Buffer.alloc(16, 1));
    const w = createAttestationAgentWrapper(createKekSource(async () => config));
    const err = await unwrapEntry(w, wrapLikeCocoKeyprovider(KEK, PRIVOPTS, `kbs:///${KID_PATH}`), ctx()).catch((e) => e);
    expect(describeError(err)).toMatch(/is 16 bytes, not a 32-byte AES-256 key encryption key/);
  });

  it('without kbs.url it names the config file and the key', async () => {
    const { config } = await setup((c) => (c.kbs.url = undefined));
    const w = createAttestationAgentWrapper(createKekSource(async () => config));
    const err = await unwrapEntry(w, wrapLikeCocoKeyprovider(KEK, PRIVOPTS, `kbs:///${KID_PATH}`), ctx()).catch((e) => e);
    expect(describeError(err)).toBe(
      `layer key kbs:///${KID_PATH} must come from a KBS, but none is configured: set kbs.url in /test/config.toml`,
    );
  });

  it('honours an already aborted layer signal', async () => {
    const { k, config } = await setup();
    const ac = new AbortController();
    ac.abort(new Error('deadline'));
    const w = createAttestationAgentWrapper(createKekSource(async () => config));
    await expect(unwrapEntry(w, wrapLikeCocoKeyprovider(KEK, PRIVOPTS, `kbs:///${KID_PATH}`), ctx(ac.signal))).rejects.toThrow(/abandoned/);
    expect(k.counters.auth).toBe(0);
  });
});

describe('annotation packet validation', () => {
  const valid = { kid: 'kbs:///a/b/c', wrapped_data: Buffer.alloc(40).toString('base64'), iv: Buffer.alloc(12).toString('base64'), wrap_type: 'A256GCM' };
  const parse = (v: unknown) => () => parseAnnotationPacket(Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)));

  it('parses v1 fields', () => {
    expect(parse(valid)()).toMatchObject({ kid: 'kbs:///a/b/c', wrapType: 'A256GCM' });
  });

  it.each([
    ['not json', 'not JSON'],
    [{ ...valid, version: '0.2.0' }, 'unsupported version "0.2.0"'],
    [{ ...valid, provider: 'aliyun' }, 'provider "aliyun" is not supported'],
    [{ ...valid, wrap_type: 'A128GCM' }, 'unsupported wrap_type "A128GCM"'],
    [{ ...valid, iv: Buffer.alloc(16).toString('base64') }, 'iv must be 12 bytes for A256GCM, got 16'],
    [{ ...valid, wrapped_data: 'not base64!' }, '"wrapped_data" is missing or not standard base64'],
    [{ ...valid, wrapped_data: Buffer.alloc(16).toString('base64') }, 'too short'],
    [{ ...valid, kid: undefined }, 'missing "kid"'],
    [{ ...valid, provider_settings: [] }, '"provider_settings" must be an object'],
  ])('rejects %j', (packet, message) => {
    expect(parse(packet)).toThrow(message);
  });

  it('rejects a kid trustee would refuse, before any network traffic', async () => {
    const w = createAttestationAgentWrapper(async () => {
      throw new Error('the KEK source must not be asked');
    });
    const entry = Buffer.from(JSON.stringify({ ...valid, kid: 'kbs:///a/b/c/d' }));
    await expect(unwrapEntry(w, entry, ctx())).rejects.toThrow(/exactly 3 path segments/);
  });

  it('refuses A256CTR, even for a genuine A256GCM packet relabelled by the registry (the KBS is never asked)', async () => {
    const { config, k } = await setup();
    // GCM with a 12-byte IV encrypts with the CTR keystream from IV||00000002: the relabelled packet would decrypt
    // to the genuine private options under the real KEK, now malleable. It must be refused on its label alone.
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', KEK, iv);
    const body = Buffer.concat([c.update(PRIVOPTS), c.final()]);
    const ctrIv = Buffer.concat([iv, Buffer.from([0, 0, 0, 2])]);
    const entry = Buffer.from(JSON.stringify({ kid: `kbs:///${KID_PATH}`, wrapped_data: body.toString('base64'), iv: ctrIv.toString('base64'), wrap_type: 'A256CTR' }));
    const d = createDecipheriv('aes-256-ctr', KEK, ctrIv);
    expect(Buffer.concat([d.update(body), d.final()]).equals(PRIVOPTS)).toBe(true); // the attack is real
    const w = createAttestationAgentWrapper(createKekSource(async () => config));
    await expect(unwrapEntry(w, entry, ctx())).rejects.toThrow('invalid attestation-agent annotation packet: unsupported wrap_type "A256CTR" (only "A256GCM", as coco_keyprovider writes it)');
    expect(k.counters.resource).toBe(0);
    expect(k.counters.auth).toBe(0);
  });
});
