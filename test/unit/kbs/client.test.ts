/**
 * The KBS key source end to end against the test KBS (test/kbs/server.ts, an independent implementation of
 * trustee's RCAR behaviour): protocol 0.4.0 and the 0.2.0 fallback, EC and RSA TEE keys, report-data exactness,
 * token reuse, re-attestation, retries, deadlines, error messages, HTTPS trust and proxies.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { createServer, connect as netConnect } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { afterEach, beforeAll, afterAll, describe, expect, it } from 'vitest';
import type { Attester } from '../../../src/attest/attester.js';
import { createSampleAttester } from '../../../src/attest/sample.js';
import type { Config } from '../../../src/config/types.js';
import { createKeySource } from '../../../src/kbs/key-source.js';
import type { KeySource } from '../../../src/kbs/key-source.js';
import { parseResourceUri } from '../../../src/kbs/resource-uri.js';
import { describeError } from '../../../src/util/errors.js';
import { startTestKbs } from '../../kbs/server.js';
import type { TestKbs, TestKbsOptions } from '../../kbs/server.js';
import { KEK, KID, KID_PATH, makePki, makeTempDir, removeDir, testConfig } from '../../helpers/kbs-helpers.js';
import type { TestPki } from '../../helpers/kbs-helpers.js';

const uri = parseResourceUri(KID);
let kbs: TestKbs | undefined;
const dirs: string[] = [];
const sources: KeySource[] = [];

async function startKbs(opts: TestKbsOptions = {}): Promise<TestKbs> {
  kbs = await startTestKbs({ resources: { [KID_PATH]: KEK }, ...opts });
  return kbs;
}

function source(config: Config, extra: { createAttester?: () => Promise<Attester>; env?: NodeJS.ProcessEnv; warnings?: string[] } = {}): KeySource {
  const s = createKeySource({
    config,
    env: extra.env ?? {},
    onWarning: (m) => extra.warnings?.push(m),
    ...(extra.createAttester ? { createAttester: extra.createAttester } : {}),
  });
  sources.push(s);
  return s;
}

function cacheDir(): string {
  const d = makeTempDir();
  dirs.push(d);
  return d;
}

afterEach(async () => {
  for (const s of sources.splice(0)) await s.close();
  await kbs?.stop();
  kbs = undefined;
  for (const d of dirs.splice(0)) removeDir(d);
});

describe('protocol 0.4.0 (trustee ≥ v0.14)', () => {
  it('attests once with the sample attester and returns the KEK', async () => {
    const k = await startKbs();
    const r = await source(testConfig(k.url, cacheDir())).getResource(uri);
    expect(r.data.equals(KEK)).toBe(true);
    expect(r).toMatchObject({ attested: true, tokenFromCache: false, dialect: '0.4.0', requests: { auth: 1, attest: 1, resource: 1, retries: 0 } });
    expect(k.counters).toMatchObject({ auth: 1, attest: 1, attestOk: 1, resource: 1, resourceOk: 1 });
  });

  it('binds exactly SHA-384 of {"additional-evidence":"","nonce":…,"tee-pubkey":…} as the server saw it', async () => {
    const k = await startKbs();
    const seen: Buffer[] = [];
    const recording = async (): Promise<Attester> => {
      const inner = createSampleAttester();
      return { ...inner, getEvidence: async (rd) => (seen.push(Buffer.from(rd)), inner.getEvidence(rd)) };
    };
    const dir = cacheDir();
    await source(testConfig(k.url, dir), { createAttester: recording }).getResource(uri);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toHaveLength(48);
    // Rebuild the hashed text by hand from what the KBS recorded in the token.
    const { readdirSync, readFileSync } = await import('node:fs');
    const file = readdirSync(dir).find((f) => f.startsWith('token-'))!;
    const token = JSON.parse(readFileSync(`${dir}/${file}`, 'utf8')).token as string;
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString());
    const rd = claims.submods.cpu0['ear.veraison.annotated-evidence'].runtime_data_claims;
    const pk = rd['tee-pubkey'];
    expect(Object.keys(pk).sort()).toEqual(['alg', 'crv', 'kty', 'x', 'y']);
    const text = `{"additional-evidence":"","nonce":"${rd.nonce}","tee-pubkey":{"alg":"${pk.alg}","crv":"${pk.crv}","kty":"${pk.kty}","x":"${pk.x}","y":"${pk.y}"}}`;
    expect(createHash('sha384').update(text).digest().equals(seen[0]!)).toBe(true);
  });

  it('works with an RSA-2048 RSA-OAEP-256 TEE key when configured', async () => {
    const k = await startKbs();
    const r = await source(testConfig(k.url, cacheDir(), (c) => (c.kbs.teeKeyAlgorithm = 'rsa-oaep-256'))).getResource(uri);
    expect(r.data.equals(KEK)).toBe(true);
    expect(k.counters.attestOk).toBe(1);
  });
});

describe('protocol 0.2.0 (trustee v0.12–v0.13)', () => {
  it('falls back on the version-mismatch 401 and remembers the dialect in the cache', async () => {
    const k = await startKbs({ protocol: '0.2.0' });
    const dir = cacheDir();
    const first = await source(testConfig(k.url, dir)).getResource(uri);
    expect(first.data.equals(KEK)).toBe(true);
    expect(first.dialect).toBe('0.2.0');
    expect(k.counters).toMatchObject({ auth: 2, attest: 1, attestOk: 1 });

    // Token refused later: the re-attestation starts directly with 0.2.0 (no second mismatch round trip).
    k.expireAllTokens();
    const second = await source(testConfig(k.url, dir)).getResource(uri);
    expect(second.data.equals(KEK)).toBe(true);
    expect(second.requests).toMatchObject({ auth: 1, attest: 1, resource: 2 });
    expect(k.counters).toMatchObject({ auth: 3, attest: 2 });
  });

  it('works with RSA keys in 0.2.0', async () => {
    const k = await startKbs({ protocol: '0.2.0' });
    const r = await source(testConfig(k.url, cacheDir(), (c) => (c.kbs.teeKeyAlgorithm = 'rsa-oaep-256'))).getResource(uri);
    expect(r.data.equals(KEK)).toBe(true);
  });

  it('a pinned kbs.protocol does not fall back and names both versions', async () => {
    const k = await startKbs({ protocol: '0.2.0' });
    const err = await source(testConfig(k.url, cacheDir(), (c) => (c.kbs.protocol = '0.4.0'))).getResource(uri).catch((e) => e);
    expect(describeError(err)).toMatch(/protocol version mismatch: KBS .* expects 0\.2\.0, coco-decoder sent 0\.4\.0/);
    expect(k.counters.auth).toBe(1);
  });

  it('kbs.protocol = "0.2.0" talks 0.2.0 from the first request', async () => {
    const k = await startKbs({ protocol: '0.2.0' });
    await source(testConfig(k.url, cacheDir(), (c) => (c.kbs.protocol = '0.2.0'))).getResource(uri);
    expect(k.counters.auth).toBe(1);
  });
});

describe('token reuse and re-attestation', () => {
  it('fresh clients sharing the cache dir reuse the token: one /attest for many keys', async () => {
    const k = await startKbs();
    const dir = cacheDir();
    const results = [];
    for (let i = 0; i < 4; i++) results.push(await source(testConfig(k.url, dir)).getResource(uri));
    expect(results.map((r) => r.tokenFromCache)).toEqual([false, true, true, true]);
    expect(results[3]!.requests).toEqual({ auth: 0, attest: 0, resource: 1, retries: 0 });
    expect(k.counters).toMatchObject({ auth: 1, attest: 1, resource: 4, resourceOk: 4 });
  });

  it('a token the KBS no longer accepts leads to exactly one transparent re-attestation', async () => {
    const k = await startKbs();
    const dir = cacheDir();
    await source(testConfig(k.url, dir)).getResource(uri);
    k.expireAllTokens();
    const r = await source(testConfig(k.url, dir)).getResource(uri);
    expect(r.data.equals(KEK)).toBe(true);
    expect(r).toMatchObject({ attested: true, tokenFromCache: false });
    expect(k.counters).toMatchObject({ attest: 2, resource: 3, resourceOk: 2 });
    // And the new token is cached again.
    await source(testConfig(k.url, dir)).getResource(uri);
    expect(k.counters.attest).toBe(2);
  });

  it('several keys in one process attest once even without a usable cache', async () => {
    const k = await startKbs();
    k.setResource('default/image-kek/layer2', Buffer.alloc(32, 7));
    const s = source(testConfig(k.url, '/proc/coco-decoder-cannot-exist'));
    await s.getResource(uri);
    const r2 = await s.getResource(parseResourceUri('kbs:///default/image-kek/layer2'));
    expect(r2.data.equals(Buffer.alloc(32, 7))).toBe(true);
    expect(k.counters.attest).toBe(1);
  });
});

describe('failures: retries, deadlines and actionable messages', () => {
  it('retries 503s with backoff and succeeds', async () => {
    const k = await startKbs();
    k.faults.status503Next = 2;
    const r = await source(testConfig(k.url, cacheDir())).getResource(uri);
    expect(r.data.equals(KEK)).toBe(true);
    expect(r.requests.retries).toBe(2);
  });

  it('gives up on persistent 503s with the status in the message', async () => {
    const k = await startKbs();
    k.faults.status503Next = 100;
    const err = await source(testConfig(k.url, cacheDir())).getResource(uri).catch((e) => e);
    expect(describeError(err)).toMatch(/refused the attestation request .*HTTP 503/);
    expect(k.counters.auth).toBe(4);
  });

  it('KBS down: a clear "cannot reach" error with the URL, well within the deadline', async () => {
    const probe = await startTestKbs();
    const url = probe.url;
    await probe.stop();
    const t0 = Date.now();
    const err = await source(testConfig(url, cacheDir())).getResource(uri).catch((e) => e);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(describeError(err)).toMatch(new RegExp(`cannot reach the KBS at ${url.replace(/[.]/g, '\\.')} .*after 4 attempts.*ECONNREFUSED`));
  });

  it('a resource request that never gets an answer ends with a deadline error naming kbs.timeout_ms', async () => {
    const k = await startKbs();
    k.faults.hangResource = true;
    const t0 = Date.now();
    const err = await source(testConfig(k.url, cacheDir(), (c) => (c.kbs.timeoutMs = 400))).getResource(uri).catch((e) => e);
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(describeError(err)).toMatch(/did not answer GET \/kbs\/v0\/resource\/default\/image-kek\/layer1 within 400 ms \(kbs\.timeout_ms\)/);
  });

  it('kbs.total_timeout_ms bounds the whole fetch, retries included', async () => {
    const k = await startKbs();
    k.faults.delayMs = 300;
    k.faults.status503Next = 100;
    const cfg = testConfig(k.url, cacheDir(), (c) => {
      c.kbs.timeoutMs = 1000;
      c.kbs.totalTimeoutMs = 1000;
    });
    const t0 = Date.now();
    const err = await source(cfg).getResource(uri).catch((e) => e);
    expect(Date.now() - t0).toBeLessThan(2500);
    expect(describeError(err)).toMatch(/within 1000 ms \(kbs\.total_timeout_ms\)/);
  });

  it('the caller\'s signal abandons the fetch', async () => {
    const k = await startKbs();
    k.faults.hangResource = true;
    const err = await source(testConfig(k.url, cacheDir())).getResource(uri, AbortSignal.timeout(200)).catch((e) => e);
    expect(describeError(err)).toMatch(/abandoned/);
  });

  it('policy denial names the kid and is not retried with a fresh token', async () => {
    const k = await startKbs();
    k.faults.denyPaths.add(KID_PATH);
    const err = await source(testConfig(k.url, cacheDir())).getResource(uri).catch((e) => e);
    expect(describeError(err)).toMatch(/access to kbs:\/\/\/default\/image-kek\/layer1 denied by the resource policy .*401 PolicyDeny/);
    expect(k.counters.attest).toBe(1);
  });

  it('a policy denial of a cached token is reported as it is: no re-attestation (the policy would judge a new token alike)', async () => {
    const k = await startKbs();
    const dir = cacheDir();
    await source(testConfig(k.url, dir)).getResource(uri);
    k.faults.denyAll = true;
    const s = source(testConfig(k.url, dir));
    for (let i = 0; i < 8; i++) {
      const err = await s.getResource(uri).catch((e) => e);
      expect(describeError(err)).toMatch(/denied by the resource policy/);
    }
    expect(k.counters).toMatchObject({ auth: 1, attest: 1, resource: 9 });
  });

  it('re-attests at most once per process, however many keys meet a refused token', async () => {
    const k = await startKbs();
    const dir = cacheDir();
    await source(testConfig(k.url, dir)).getResource(uri);
    const s = source(testConfig(k.url, dir));
    k.expireAllTokens();
    expect((await s.getResource(uri)).attested).toBe(true);
    expect(k.counters.attest).toBe(2);
    for (let i = 0; i < 8; i++) {
      k.expireAllTokens();
      const err = await s.getResource(uri).catch((e) => e);
      expect(err).toBeInstanceOf(Error);
    }
    expect(k.counters.attest).toBe(2);
    expect(k.counters.resource).toBe(1 + 2 + 8);
  });

  it('a missing resource explains trustee\'s 401 collapse and does not loop re-attesting', async () => {
    const k = await startKbs();
    const dir = cacheDir();
    await source(testConfig(k.url, dir)).getResource(uri);
    const err = await source(testConfig(k.url, dir)).getResource(parseResourceUri('kbs:///default/image-kek/nope')).catch((e) => e);
    expect(describeError(err)).toMatch(/could not provide kbs:\/\/\/default\/image-kek\/nope .*does not exist/);
    expect(k.counters.attest).toBe(1);
  });

  it('attestation rejected by the KBS says so and points at its policy', async () => {
    const k = await startKbs();
    k.faults.rejectAttestation = true;
    const err = await source(testConfig(k.url, cacheDir())).getResource(uri).catch((e) => e);
    expect(describeError(err)).toMatch(/attestation failed: KBS .* rejected the sample evidence .*RCAR handshake Attest failed.*attestation policy/);
  });

  it('a TEE the KBS has no verifier for fails attestation (sample is not accepted silently)', async () => {
    const k = await startKbs({ allowedTees: ['tdx'] });
    const err = await source(testConfig(k.url, cacheDir())).getResource(uri).catch((e) => e);
    expect(describeError(err)).toMatch(/attestation failed/);
  });

  it('with attestation.tee = "auto" and no TEE, it refuses instead of falling back to sample', async () => {
    const k = await startKbs();
    const cfg = testConfig(k.url, cacheDir(), (c) => {
      c.attestation.tee = 'auto';
      // Point detection at paths that do not exist, whatever this machine has.
      c.attestation.configfsTsmRoot = '/nonexistent/tsm';
      c.attestation.tdxGuestDevice = '/nonexistent/tdx_guest';
      c.attestation.sevGuestDevice = '/nonexistent/sev-guest';
    });
    const err = await source(cfg).getResource(uri).catch((e) => e);
    expect(describeError(err)).toMatch(/no TEE detected/);
    expect(k.counters.auth).toBe(0);
  });
});

/** One key fetch in a fresh process (kbs-child.ts), with extra node flags and environment (process-wide trust stores). */
async function fetchInChild(config: Config, nodeArgs: string[], env: NodeJS.ProcessEnv): Promise<{ result: unknown; out: string }> {
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', join(import.meta.dirname, '../../helpers/kbs-child.ts'), JSON.stringify(config), KID], {
    cwd: join(import.meta.dirname, '../../..'),
    env: { ...process.env, ...env },
    timeout: 25_000,
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    if (out === 'ready\n') child.stdin.end('go\n');
  });
  await new Promise((resolve) => child.on('close', resolve));
  return { result: JSON.parse(out.split('\n')[1] ?? '{}'), out };
}

describe('HTTPS', () => {
  let pkiDir: string;
  let pki: TestPki;
  beforeAll(() => {
    pkiDir = makeTempDir('coco-pki-');
    pki = makePki(pkiDir);
  });
  afterAll(() => removeDir(pkiDir));

  it('trusts the CA in kbs.cert', async () => {
    const k = await startKbs({ tls: { cert: pki.certPem, key: pki.keyPem } });
    expect(k.url).toMatch(/^https:/);
    const r = await source(testConfig(k.url, cacheDir(), (c) => (c.kbs.cert = pki.caFile))).getResource(uri);
    expect(r.data.equals(KEK)).toBe(true);
  });

  it('without kbs.cert an unknown CA is a TLS error that says to set kbs.cert (not retried)', async () => {
    const k = await startKbs({ tls: { cert: pki.certPem, key: pki.keyPem } });
    const err = await source(testConfig(k.url, cacheDir())).getResource(uri).catch((e) => e);
    expect(describeError(err)).toMatch(/TLS connection to the KBS https:\/\/127\.0\.0\.1:\d+ failed \(UNABLE_TO_VERIFY_LEAF_SIGNATURE.*set kbs\.cert/);
    expect(k.counters.auth).toBe(0);
  });

  it('a kbs.cert with the wrong CA names the file', async () => {
    const k = await startKbs({ tls: { cert: pki.certPem, key: pki.keyPem } });
    const err = await source(testConfig(k.url, cacheDir(), (c) => (c.kbs.cert = pki.otherCaFile))).getResource(uri).catch((e) => e);
    expect(describeError(err)).toMatch(new RegExp(`not signed by a CA in kbs\\.cert \\(${pki.otherCaFile}\\)`));
  });

  it.each([
    ['NODE_EXTRA_CA_CERTS', (ca: string) => ({ args: [], env: { NODE_EXTRA_CA_CERTS: ca } })],
    ['the OpenSSL system store (--use-openssl-ca, SSL_CERT_FILE)', (ca: string) => ({ args: ['--use-openssl-ca'], env: { SSL_CERT_FILE: ca } })],
  ])('kbs.cert adds to the process trust store instead of replacing it: %s stays trusted', async (_name, setup) => {
    // Served with a certificate from the *other* CA, which only the process-wide store trusts.
    const k = await startKbs({ tls: { cert: pki.otherCertPem, key: pki.otherKeyPem } });
    const config = testConfig(k.url, cacheDir(), (c) => (c.kbs.cert = pki.caFile));
    const { args, env } = setup(pki.otherCaFile);
    const { result, out } = await fetchInChild(config, args, env);
    expect(result, out).toMatchObject({ ok: true, attested: true });
  }, 30_000);

  it('kbs.cert_only pins kbs.cert: a KBS certified by a CA that only NODE_EXTRA_CA_CERTS trusts is refused, ours still works', async () => {
    const other = await startKbs({ tls: { cert: pki.otherCertPem, key: pki.otherKeyPem } });
    const pinned = testConfig(other.url, cacheDir(), (c) => {
      c.kbs.cert = pki.caFile;
      c.kbs.certOnly = true;
    });
    const { result, out } = await fetchInChild(pinned, [], { NODE_EXTRA_CA_CERTS: pki.otherCaFile });
    expect(result, out).toMatchObject({ ok: false });
    expect(other.counters.auth).toBe(0);

    const ours = await startKbs({ tls: { cert: pki.certPem, key: pki.keyPem } });
    const config = testConfig(ours.url, cacheDir(), (c) => {
      c.kbs.cert = pki.caFile;
      c.kbs.certOnly = true;
    });
    expect((await source(config).getResource(uri)).data.equals(KEK)).toBe(true);
  }, 30_000);

  it('an unreadable kbs.cert is reported by key name', async () => {
    const k = await startKbs({ tls: { cert: pki.certPem, key: pki.keyPem } });
    const err = await source(testConfig(k.url, cacheDir(), (c) => (c.kbs.cert = '/nonexistent/ca.pem'))).getResource(uri).catch((e) => e);
    expect(describeError(err)).toMatch(/cannot read the KBS CA file \/nonexistent\/ca\.pem \(kbs\.cert\): ENOENT/);
  });

  describe('through an HTTPS_PROXY (CONNECT)', () => {
    let proxy: Server;
    let proxyUrl: string;
    const connects: string[] = [];
    const open = new Set<Socket>();
    beforeAll(async () => {
      proxy = createServer((client) => {
        open.add(client);
        client.on('close', () => open.delete(client));
        client.once('data', (head) => {
          const m = /^CONNECT (\S+):(\d+) HTTP\/1\.1\r\n/.exec(head.toString('latin1'));
          if (!m || m[1] !== '127.0.0.1') return void client.end('HTTP/1.1 403 Forbidden\r\n\r\n');
          connects.push(`${m[1]}:${m[2]}`);
          const upstream = netConnect(Number(m[2]), '127.0.0.1', () => {
            client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
            upstream.pipe(client);
            client.pipe(upstream);
          });
          open.add(upstream);
          upstream.on('close', () => open.delete(upstream));
          upstream.on('error', () => client.destroy());
          client.on('error', () => upstream.destroy());
        });
      });
      await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
      proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    });
    afterAll(async () => {
      for (const s of open) s.destroy();
      await new Promise<void>((resolve) => proxy.close(() => resolve()));
    });

    it('tunnels every KBS request through the proxy, with kbs.cert still verifying the KBS', async () => {
      const k = await startKbs({ tls: { cert: pki.certPem, key: pki.keyPem } });
      connects.length = 0;
      const r = await source(testConfig(k.url, cacheDir(), (c) => (c.kbs.cert = pki.caFile)), { env: { HTTPS_PROXY: proxyUrl } }).getResource(uri);
      expect(r.data.equals(KEK)).toBe(true);
      expect(connects.length).toBeGreaterThanOrEqual(1);
      expect(connects[0]).toBe(new URL(k.url).host);
    });

    it('NO_PROXY bypasses it', async () => {
      const k = await startKbs({ tls: { cert: pki.certPem, key: pki.keyPem } });
      connects.length = 0;
      const env = { HTTPS_PROXY: proxyUrl, NO_PROXY: 'localhost,127.0.0.1' };
      const r = await source(testConfig(k.url, cacheDir(), (c) => (c.kbs.cert = pki.caFile)), { env }).getResource(uri);
      expect(r.data.equals(KEK)).toBe(true);
      expect(connects).toEqual([]);
    });
  });
});
