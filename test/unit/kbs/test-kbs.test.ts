/**
 * Pins the test KBS's own strictness (it stands in for trustee, so a lenient double would let client bugs
 * through). The client here is built by hand in the test — hashed strings are written out literally, as trustee's
 * `serialize_canon_json` produces them, not by the server's canonicaliser.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createHash, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, fetch as undiciFetch } from 'undici';
import { decodeProtectedHeader, flattenedDecrypt, importJWK, jwtVerify, decodeJwt, type FlattenedJWE } from 'jose';
import { startTestKbs, type TestKbs, type TestKbsOptions } from '../../kbs/server.js';
import { canonicalJson, sha384Canonical } from '../../kbs/canonical-json.js';

const ERR = 'https://github.com/confidential-containers/kbs/errors/';
const KEK = Buffer.from('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 'hex');

// ---------- a hand-built RCAR client ----------

interface ClientKey {
  privateKey: KeyObject;
  /** Exactly the typed members trustee keeps. */
  jwk: Record<string, string>;
  /** The hashed `tee-pubkey` JSON text, members in sorted order, written out by hand. */
  canonicalText: string;
}

function ecKey(): ClientKey {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const { x, y } = publicKey.export({ format: 'jwk' }) as { x: string; y: string };
  return {
    privateKey,
    jwk: { kty: 'EC', crv: 'P-256', alg: 'ECDH-ES+A256KW', x, y },
    canonicalText: `{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"${x}","y":"${y}"}`,
  };
}

function rsaKey(alg = 'RSA-OAEP-256'): ClientKey {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const { n, e } = publicKey.export({ format: 'jwk' }) as { n: string; e: string };
  return {
    privateKey,
    jwk: { kty: 'RSA', alg, n, e },
    canonicalText: `{"alg":"${alg}","e":"${e}","kty":"RSA","n":"${n}"}`,
  };
}

/**: SHA-384 of `{"additional-evidence":AE,"nonce":N,"tee-pubkey":PK}` (0.4.0) or `{"nonce","tee-pubkey"}` (0.2.0). */
function reportData(nonce: string, key: ClientKey, dialect: '0.4.0' | '0.2.0' = '0.4.0', additional = ''): Buffer {
  const text =
    dialect === '0.4.0'
      ? `{"additional-evidence":${JSON.stringify(additional)},"nonce":"${nonce}","tee-pubkey":${key.canonicalText}}`
      : `{"nonce":"${nonce}","tee-pubkey":${key.canonicalText}}`;
  return createHash('sha384').update(text).digest();
}

const sampleEvidence = (rd: Buffer): { svn: string; report_data: string } => ({ svn: '1', report_data: rd.toString('base64') });

async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

async function auth(kbs: TestKbs, version = '0.4.0', tee = 'sample'): Promise<{ cookie: string; nonce: string; setCookie: string }> {
  const res = await post(`${kbs.url}/kbs/v0/auth`, {
    version,
    tee,
    'extra-params': { 'supported-hash-algorithms': ['sha256', 'sha384', 'sha512', 'sm3'] },
  });
  expect(res.status).toBe(200);
  const setCookie = res.headers.get('set-cookie') ?? '';
  const challenge = (await res.json()) as { nonce: string };
  return { cookie: setCookie.split(';')[0] ?? '', nonce: challenge.nonce, setCookie };
}

function attestBody(nonce: string, key: ClientKey, evidence: unknown, extra: Record<string, unknown> = {}): unknown {
  return {
    'runtime-data': { nonce, 'tee-pubkey': key.jwk },
    'tee-evidence': { primary_evidence: evidence, additional_evidence: '' },
    ...extra,
  };
}

async function attest(kbs: TestKbs, cookie: string, body: unknown): Promise<Response> {
  return post(`${kbs.url}/kbs/v0/attest`, body, { Cookie: cookie });
}

/** auth + attest with a correct binding; returns cookie and token. */
async function handshake(kbs: TestKbs, key: ClientKey): Promise<{ cookie: string; token: string }> {
  const { cookie, nonce } = await auth(kbs);
  const res = await attest(kbs, cookie, attestBody(nonce, key, sampleEvidence(reportData(nonce, key))));
  expect(res.status).toBe(200);
  const { token } = (await res.json()) as { token: string };
  return { cookie, token };
}

async function getResource(kbs: TestKbs, path: string, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${kbs.url}/kbs/v0/resource/${path}`, { headers });
}

async function expectKbsError(res: Response, status: number, variant: string, detail?: string): Promise<void> {
  expect(res.status).toBe(status);
  const body = (await res.json()) as { type: string; detail: string };
  expect(body.type).toBe(`${ERR}${variant}`);
  if (detail !== undefined) expect(body.detail).toBe(detail);
}

const ATTEST_FAILED = 'Attestation error: RCAR handshake Attest failed';

// ---------- tests ----------

describe('canonical JSON', () => {
  it('matches the attestation-service unit vector', () => {
    const value = { b: 1, a: 'test', c: { d: 'e' } };
    expect(canonicalJson(value)).toBe('{"a":"test","b":1,"c":{"d":"e"}}');
    expect(sha384Canonical(value).toString('hex')).toBe(
      'e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3',
    );
  });
});

describe('test KBS, protocol 0.4.0', () => {
  let kbs: TestKbs;
  beforeAll(async () => {
    kbs = await startTestKbs({ resources: { 'default/image-kek/k1': KEK } });
  });
  afterAll(async () => {
    await kbs.stop();
  });
  afterEach(() => {
    Object.assign(kbs.faults, { status503Next: 0, delayMs: 0, denyAll: false, rejectAttestation: false, hangResource: false });
    kbs.faults.denyPaths.clear();
  });

  it('answers /auth with a 32-byte std-base64 nonce, extra-params "" and an Expires-only session cookie', async () => {
    const res = await post(`${kbs.url}/kbs/v0/auth`, { version: '0.4.0', tee: 'sample', 'extra-params': '' });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/json');
    const setCookie = res.headers.get('set-cookie') ?? '';
    expect(setCookie).toMatch(/^kbs-session-id=[0-9a-f]{32}; Expires=[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$/);
    const body = (await res.json()) as Record<string, unknown>;
    expect(Object.keys(body)).toEqual(['nonce', 'extra-params']);
    expect(body['extra-params']).toBe('');
    const nonce = body['nonce'] as string;
    expect(nonce).toHaveLength(44);
    expect(nonce).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    expect(Buffer.from(nonce, 'base64')).toHaveLength(32);
  });

  it('rejects another protocol version with trustee’s exact mismatch detail', async () => {
    const res = await post(`${kbs.url}/kbs/v0/auth`, { version: '0.2.0', tee: 'sample', 'extra-params': '' });
    await expectKbsError(
      res,
      401,
      'AttestationError',
      'Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =0.4.0 while the request is 0.2.0',
    );
    // A pre-release is not "=0.4.0" either; build metadata is ignored like the semver crate does.
    await expectKbsError(await post(`${kbs.url}/kbs/v0/auth`, { version: '0.4.0-rc.1', tee: 'sample', 'extra-params': '' }), 401, 'AttestationError',
      'Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =0.4.0 while the request is 0.4.0-rc.1');
    expect((await post(`${kbs.url}/kbs/v0/auth`, { version: '0.4.0+build.7', tee: 'sample', 'extra-params': '' })).status).toBe(200);
    await expectKbsError(await post(`${kbs.url}/kbs/v0/auth`, { version: 'v0.4.0', tee: 'sample', 'extra-params': '' }), 401, 'AttestationError',
      'Attestation error: RCAR handshake Auth failed: failed to parse KBS version');
  });

  it('rejects a malformed /auth request, an unknown tee and a missing extra-params as "deserialize Request"', async () => {
    const detail = 'Attestation error: RCAR handshake Auth failed: deserialize Request';
    await expectKbsError(await post(`${kbs.url}/kbs/v0/auth`, { version: '0.4.0', tee: 'nonsense', 'extra-params': '' }), 401, 'AttestationError', detail);
    await expectKbsError(await post(`${kbs.url}/kbs/v0/auth`, { version: '0.4.0', tee: 'sample' }), 401, 'AttestationError', detail);
    await expectKbsError(await post(`${kbs.url}/kbs/v0/auth`, 'not json'), 401, 'AttestationError', detail);
    // The pre-0.14 kbs-types name for Azure SNP is not accepted by a 0.4.0 server.
    await expectKbsError(await post(`${kbs.url}/kbs/v0/auth`, { version: '0.4.0', tee: 'azsnpvtpm', 'extra-params': '' }), 401, 'AttestationError', detail);
  });

  it('runs the full RCAR flow: ES256 EAR token bound to the typed key, resource as a flattened ECDH-ES+A256KW JWE', async () => {
    const before = { ...kbs.counters };
    const key = ecKey();
    const { cookie, nonce } = await auth(kbs);
    const res = await attest(kbs, cookie, attestBody(nonce, key, sampleEvidence(reportData(nonce, key))));
    expect(res.status).toBe(200);
    expect(res.headers.get('set-cookie')?.split(';')[0]).toBe(cookie);
    const { token } = (await res.json()) as { token: string };

    const header = JSON.parse(Buffer.from(token.split('.')[0] ?? '', 'base64url').toString()) as { alg: string; jwk: Record<string, string> };
    expect(header.alg).toBe('ES256');
    const { payload } = await jwtVerify(token, await importJWK(header.jwk, 'ES256'));
    expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBe(300);
    const evidence = (payload['submods'] as Record<string, Record<string, Record<string, unknown>>>)['cpu0']?.['ear.veraison.annotated-evidence'];
    expect((evidence?.['runtime_data_claims'] as Record<string, unknown>)['tee-pubkey']).toEqual(key.jwk);
    expect(evidence?.['sample']).toMatchObject({ svn: '1', launch_digest: 'abcde', debug: false });

    const got = await getResource(kbs, 'default/image-kek/k1', { Cookie: cookie });
    expect(got.status).toBe(200);
    expect(got.headers.get('content-type')).toBe('application/json');
    const jwe = (await got.json()) as FlattenedJWE;
    expect(Object.keys(jwe).sort()).toEqual(['ciphertext', 'encrypted_key', 'iv', 'protected', 'tag']);
    const protectedHeader = decodeProtectedHeader(jwe) as Record<string, unknown>;
    expect(protectedHeader).toMatchObject({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });
    expect(protectedHeader['epk']).toMatchObject({ kty: 'EC', crv: 'P-256' });
    const { plaintext } = await flattenedDecrypt(jwe, key.privateKey);
    expect(Buffer.from(plaintext).equals(KEK)).toBe(true);

    expect(kbs.counters.auth - before.auth).toBe(1);
    expect(kbs.counters.attest - before.attest).toBe(1);
    expect(kbs.counters.attestOk - before.attestOk).toBe(1);
    expect(kbs.counters.resource - before.resource).toBe(1);
    expect(kbs.counters.resourceOk - before.resourceOk).toBe(1);
  });

  it('accepts the token as Authorization: Bearer without any cookie', async () => {
    const key = ecKey();
    const { token } = await handshake(kbs, key);
    const res = await getResource(kbs, 'default/image-kek/k1', { Authorization: `Bearer ${token}` });
    expect(res.status).toBe(200);
    const { plaintext } = await flattenedDecrypt((await res.json()) as FlattenedJWE, key.privateKey);
    expect(Buffer.from(plaintext).equals(KEK)).toBe(true);
  });

  it('falls through to Bearer when the session cookie is not attested', async () => {
    const key = ecKey();
    const { token } = await handshake(kbs, key);
    const { cookie: unattested } = await auth(kbs);
    const res = await getResource(kbs, 'default/image-kek/k1', { Cookie: unattested, Authorization: `Bearer ${token}` });
    expect(res.status).toBe(200);
  });

  it('returns the stored token when an attested session attests again', async () => {
    const key = ecKey();
    const { cookie, token } = await handshake(kbs, key);
    const again = await attest(kbs, cookie, attestBody('whatever', key, { svn: '1' }));
    expect(again.status).toBe(200);
    expect(((await again.json()) as { token: string }).token).toBe(token);
  });

  it('fails /attest for a nonce other than the session’s', async () => {
    const key = ecKey();
    const { cookie, nonce } = await auth(kbs);
    const other = Buffer.alloc(32, 7).toString('base64');
    const res = await attest(kbs, cookie, attestBody(other, key, sampleEvidence(reportData(other, key))));
    await expectKbsError(res, 401, 'AttestationError', ATTEST_FAILED);
    // The session is still usable with the right nonce.
    expect((await attest(kbs, cookie, attestBody(nonce, key, sampleEvidence(reportData(nonce, key))))).status).toBe(200);
  });

  it('fails /attest when the report data does not bind nonce, key and additional evidence', async () => {
    const key = ecKey();
    const { cookie, nonce } = await auth(kbs);
    const cases: unknown[] = [
      sampleEvidence(reportData(nonce, key, '0.2.0')), // 0.2.0 binding (no "additional-evidence")
      sampleEvidence(reportData(nonce, ecKey())), // another key
      { svn: '1', report_data: Buffer.concat([reportData(nonce, key), Buffer.alloc(16)]).toString('base64') }, // zero-padded to 64
      { svn: '1', report_data: lineBroken(reportData(nonce, key).toString('base64')) }, // lenient decoders accept this, Rust STANDARD does not
      { svn: '1', report_data: reportData(nonce, key).toString('hex') }, // not base64 of the digest
      { report_data: reportData(nonce, key).toString('base64') }, // svn missing
      { svn: '1' }, // no report data at all
    ];
    for (const evidence of cases) {
      await expectKbsError(await attest(kbs, cookie, attestBody(nonce, key, evidence)), 401, 'AttestationError', ATTEST_FAILED);
    }
    expect((await attest(kbs, cookie, attestBody(nonce, key, sampleEvidence(reportData(nonce, key))))).status).toBe(200);
  });

  it('drops extra JWK members before hashing: a client that hashes ext/key_ops fails, one that hashes the typed key passes', async () => {
    const key = ecKey();
    const sent = { ...key.jwk, ext: true, key_ops: [], use: 'enc', kid: 'k' } as unknown as Record<string, string>;
    const withExtras: ClientKey = { ...key, jwk: sent, canonicalText: canonicalTextOf(sent) };
    {
      const { cookie, nonce } = await auth(kbs);
      const res = await attest(kbs, cookie, attestBody(nonce, withExtras, sampleEvidence(reportData(nonce, withExtras))));
      await expectKbsError(res, 401, 'AttestationError', ATTEST_FAILED);
    }
    const { cookie, nonce } = await auth(kbs);
    const res = await attest(kbs, cookie, attestBody(nonce, withExtras, sampleEvidence(reportData(nonce, key))));
    expect(res.status).toBe(200);
    const claims = decodeJwt(((await res.json()) as { token: string }).token);
    const evidence = (claims['submods'] as Record<string, Record<string, Record<string, unknown>>>)['cpu0']?.['ear.veraison.annotated-evidence'];
    expect((evidence?.['runtime_data_claims'] as Record<string, unknown>)['tee-pubkey']).toEqual(key.jwk);
  });

  it('fails /attest without a cookie, with an unknown session, or with a malformed body', async () => {
    const key = ecKey();
    const { nonce, cookie } = await auth(kbs);
    const body = attestBody(nonce, key, sampleEvidence(reportData(nonce, key)));
    await expectKbsError(await post(`${kbs.url}/kbs/v0/attest`, body), 401, 'AttestationError', ATTEST_FAILED);
    await expectKbsError(await attest(kbs, `kbs-session-id=${'0'.repeat(32)}`, body), 401, 'AttestationError', ATTEST_FAILED);
    // tee-evidence keys are snake_case inside, kebab-case outside; kebab inside is a deserialisation failure.
    const kebab = { 'runtime-data': { nonce, 'tee-pubkey': key.jwk }, 'tee-evidence': { 'primary-evidence': {}, 'additional-evidence': '' } };
    await expectKbsError(await attest(kbs, cookie, kebab), 401, 'AttestationError', ATTEST_FAILED);
    // A key without the required `alg` member does not deserialise as a TeePubKey.
    const noAlg = { ...key, jwk: { kty: 'EC', crv: 'P-256', x: key.jwk['x'] ?? '', y: key.jwk['y'] ?? '' } };
    await expectKbsError(await attest(kbs, cookie, attestBody(nonce, noAlg, sampleEvidence(reportData(nonce, key)))), 401, 'AttestationError', ATTEST_FAILED);
  });

  it('checks init-data: only format "toml" is accepted', async () => {
    const key = ecKey();
    const toml = 'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"aa.toml" = "x"\n';
    const rd = (n: string): unknown => sampleEvidence(reportData(n, key));
    {
      const { cookie, nonce } = await auth(kbs);
      const res = await attest(kbs, cookie, attestBody(nonce, key, rd(nonce), { 'init-data': { format: 'json', body: '{}' } }));
      await expectKbsError(res, 401, 'AttestationError', ATTEST_FAILED);
    }
    const { cookie, nonce } = await auth(kbs);
    const res = await attest(kbs, cookie, attestBody(nonce, key, rd(nonce), { 'init-data': { format: 'toml', body: toml } }));
    expect(res.status).toBe(200);
    const claims = decodeJwt(((await res.json()) as { token: string }).token);
    const evidence = (claims['submods'] as Record<string, Record<string, Record<string, unknown>>>)['cpu0']?.['ear.veraison.annotated-evidence'];
    expect(evidence?.['init_data_claims']).toEqual({ 'aa.toml': 'x' });
    expect(evidence?.['init_data']).toBe(createHash('sha384').update(toml).digest('hex'));
  });

  it('answers a resource GET without credentials with TokenNotFound', async () => {
    await expectKbsError(await getResource(kbs, 'default/image-kek/k1'), 401, 'TokenNotFound', 'Attestation Token not found');
    await expectKbsError(await getResource(kbs, 'default/image-kek/k1', { Authorization: 'Basic abc' }), 401, 'TokenNotFound');
  });

  it('rejects forged, garbage and expired-by-the-server tokens with TokenVerifierError', async () => {
    const key = ecKey();
    const { cookie, token } = await handshake(kbs, key);
    const [h, p] = token.split('.');
    const forged = `${h}.${p}.${Buffer.alloc(64, 1).toString('base64url')}`;
    await expectKbsError(await getResource(kbs, 'default/image-kek/k1', { Authorization: `Bearer ${forged}` }), 401, 'TokenVerifierError', 'Token Verifier error');
    await expectKbsError(await getResource(kbs, 'default/image-kek/k1', { Authorization: 'Bearer not-a-jwt' }), 401, 'TokenVerifierError');

    kbs.expireAllTokens();
    // The attested cookie's stored token is verified on every request too, and does not fall through to Bearer.
    await expectKbsError(await getResource(kbs, 'default/image-kek/k1', { Cookie: cookie }), 401, 'TokenVerifierError');
    await expectKbsError(await getResource(kbs, 'default/image-kek/k1', { Authorization: `Bearer ${token}` }), 401, 'TokenVerifierError');
    // A fresh handshake gets a working token again.
    const fresh = await handshake(kbs, key);
    expect((await getResource(kbs, 'default/image-kek/k1', { Cookie: fresh.cookie })).status).toBe(200);
  });

  it('denies by policy (401 PolicyDeny) before looking the resource up', async () => {
    const { cookie } = await handshake(kbs, ecKey());
    kbs.faults.denyPaths.add('default/image-kek/k1');
    await expectKbsError(await getResource(kbs, 'default/image-kek/k1', { Cookie: cookie }), 401, 'PolicyDeny', 'Access denied by policy');
    kbs.faults.denyPaths.clear();
    kbs.faults.denyAll = true;
    await expectKbsError(await getResource(kbs, 'default/image-kek/missing', { Cookie: cookie }), 401, 'PolicyDeny');
    kbs.faults.denyAll = false;
    expect((await getResource(kbs, 'default/image-kek/k1', { Cookie: cookie })).status).toBe(200);
  });

  it('collapses a missing resource and a malformed path into 401 PluginInternalError; unknown plugin is 404', async () => {
    const { cookie } = await handshake(kbs, ecKey());
    const before = kbs.counters.resourceOk;
    for (const path of ['default/image-kek/missing', 'default/image-kek', 'a/b/c/d', 'default/.hidden/x', 'default/image-kek/k1/']) {
      await expectKbsError(await getResource(kbs, path, { Cookie: cookie }), 401, 'PluginInternalError', 'Plugin internal error');
    }
    expect(kbs.counters.resourceOk).toBe(before);
    const res = await fetch(`${kbs.url}/kbs/v0/secrets/a/b/c`, { headers: { Cookie: cookie } });
    await expectKbsError(res, 404, 'PluginNotFound', 'Plugin secrets not found');
    // A wrong method on a built-in falls through to the plugin lookup.
    await expectKbsError(await fetch(`${kbs.url}/kbs/v0/auth`), 404, 'PluginNotFound', 'Plugin auth not found');
  });

  it('serves a resource set or replaced at runtime, and stores admin POSTs', async () => {
    const { cookie } = await handshake(kbs, ecKey());
    kbs.setResource('default/image-kek/late', Buffer.from('late'));
    expect((await getResource(kbs, 'default/image-kek/late', { Cookie: cookie })).status).toBe(200);
    const posted = await fetch(`${kbs.url}/kbs/v0/resource/default/image-kek/posted`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: Buffer.from('posted'),
    });
    expect(posted.status).toBe(200);
    expect((await getResource(kbs, 'default/image-kek/posted', { Cookie: cookie })).status).toBe(200);
    kbs.deleteResource('default/image-kek/late');
    await expectKbsError(await getResource(kbs, 'default/image-kek/late', { Cookie: cookie }), 401, 'PluginInternalError');
  });

  it('serves RSA-OAEP-256 TEE keys and refuses plain RSA-OAEP at resource time with JweError', async () => {
    const key = rsaKey();
    const { cookie } = await handshake(kbs, key);
    const res = await getResource(kbs, 'default/image-kek/k1', { Cookie: cookie });
    expect(res.status).toBe(200);
    const jwe = (await res.json()) as FlattenedJWE;
    expect(Buffer.from(jwe.protected ?? '', 'base64url').toString()).toBe('{"alg":"RSA-OAEP-256","enc":"A256GCM"}');
    const { plaintext } = await flattenedDecrypt(jwe, key.privateKey);
    expect(Buffer.from(plaintext).equals(KEK)).toBe(true);

    // As in trustee, an unsupported alg passes /attest (typed parse only) and fails when the JWE is built.
    const sha1Key = rsaKey('RSA-OAEP');
    const { cookie: c2 } = await handshake(kbs, sha1Key);
    await expectKbsError(await getResource(kbs, 'default/image-kek/k1', { Cookie: c2 }), 401, 'JweError', 'JWE failed');
  });

  it('faults: 503 for the next N requests with a non-JSON body, then normal', async () => {
    kbs.faults.status503Next = 2;
    for (let i = 0; i < 2; i++) {
      const res = await post(`${kbs.url}/kbs/v0/auth`, { version: '0.4.0', tee: 'sample', 'extra-params': '' });
      expect(res.status).toBe(503);
      const text = await res.text();
      expect(() => JSON.parse(text)).toThrow();
    }
    expect(kbs.faults.status503Next).toBe(0);
    expect((await post(`${kbs.url}/kbs/v0/auth`, { version: '0.4.0', tee: 'sample', 'extra-params': '' })).status).toBe(200);
  });

  it('faults: rejectAttestation fails a correct /attest', async () => {
    const key = ecKey();
    const { cookie, nonce } = await auth(kbs);
    kbs.faults.rejectAttestation = true;
    const before = kbs.counters.attestOk;
    const res = await attest(kbs, cookie, attestBody(nonce, key, sampleEvidence(reportData(nonce, key))));
    await expectKbsError(res, 401, 'AttestationError', ATTEST_FAILED);
    expect(kbs.counters.attestOk).toBe(before);
  });

  it('faults: hangResource never answers (the client deadline fires), delayMs delays', async () => {
    const { cookie } = await handshake(kbs, ecKey());
    kbs.faults.hangResource = true;
    const started = Date.now();
    await expect(
      fetch(`${kbs.url}/kbs/v0/resource/default/image-kek/k1`, { headers: { Cookie: cookie }, signal: AbortSignal.timeout(300) }),
    ).rejects.toThrow();
    expect(Date.now() - started).toBeLessThan(5000);
    kbs.faults.hangResource = false;
    kbs.faults.delayMs = 250;
    const t0 = Date.now();
    expect((await getResource(kbs, 'default/image-kek/k1', { Cookie: cookie })).status).toBe(200);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(240);
  });

  it('sums the time it spends on each kind of request (serviceMs), its delays included, and nothing for other paths', async () => {
    const before = { ...kbs.serviceMs };
    const { cookie } = await handshake(kbs, ecKey());
    expect(kbs.serviceMs.auth).toBeGreaterThan(before.auth);
    expect(kbs.serviceMs.attest).toBeGreaterThan(before.attest);
    expect(kbs.serviceMs.resource).toBe(before.resource);
    kbs.faults.delayMs = 120;
    const r0 = kbs.serviceMs.resource;
    expect((await getResource(kbs, 'default/image-kek/k1', { Cookie: cookie })).status).toBe(200);
    expect(kbs.serviceMs.resource - r0).toBeGreaterThanOrEqual(115);
    kbs.faults.delayMs = 0;
    const all = { ...kbs.serviceMs };
    expect((await fetch(`${kbs.url}/healthz`)).status).toBe(200);
    expect(kbs.serviceMs).toEqual(all);
  });

  it('answers an oversized body with 413 and serves /healthz', async () => {
    const res = await post(`${kbs.url}/kbs/v0/attest`, 'x'.repeat(2 * 1024 * 1024 + 1));
    expect(res.status).toBe(413);
    const health = await fetch(`${kbs.url}/healthz`);
    expect(health.status).toBe(200);
  });

  it('verifies sampledevice additional evidence against H(JCS({nonce, tee-pubkey})) only when allowed', async () => {
    const multi = await startTestKbs({ allowedTees: ['sample', 'sampledevice'] });
    try {
      const key = ecKey();
      const { cookie, nonce } = await auth(multi);
      const deviceRd = createHash('sha384').update(`{"nonce":"${nonce}","tee-pubkey":${key.canonicalText}}`).digest();
      const additional = JSON.stringify({ sampledevice: { svn: '2', report_data: deviceRd.toString('base64') } });
      const body = {
        'runtime-data': { nonce, 'tee-pubkey': key.jwk },
        'tee-evidence': { primary_evidence: sampleEvidence(reportData(nonce, key, '0.4.0', additional)), additional_evidence: additional },
      };
      const res = await attest(multi, cookie, body);
      expect(res.status).toBe(200);
      const claims = decodeJwt(((await res.json()) as { token: string }).token);
      expect(Object.keys(claims['submods'] as object).sort()).toEqual(['cpu0', 'gpu0']);
    } finally {
      await multi.stop();
    }
    // The default KBS has no sampledevice verifier.
    const key = ecKey();
    const { cookie, nonce } = await auth(kbs);
    const additional = JSON.stringify({ sampledevice: { svn: '2', report_data: '' } });
    const body = {
      'runtime-data': { nonce, 'tee-pubkey': key.jwk },
      'tee-evidence': { primary_evidence: sampleEvidence(reportData(nonce, key, '0.4.0', additional)), additional_evidence: additional },
    };
    await expectKbsError(await attest(kbs, cookie, body), 401, 'AttestationError', ATTEST_FAILED);
  });

  it('fails /attest for a tee the server has no verifier for, though /auth accepts it as trustee does', async () => {
    const key = ecKey();
    const { cookie, nonce } = await auth(kbs, '0.4.0', 'tdx');
    await expectKbsError(await attest(kbs, cookie, attestBody(nonce, key, sampleEvidence(reportData(nonce, key)))), 401, 'AttestationError', ATTEST_FAILED);
  });
});

describe('test KBS lifetimes', () => {
  it('expires tokens after tokenTtlSeconds and sessions after sessionTtlSeconds', async () => {
    // exp = floor(iat) + 2 leaves at least one whole second of validity after issue; 3.1 s later both are gone.
    const kbs = await startTestKbs({ tokenTtlSeconds: 2, sessionTtlSeconds: 2, resources: { 'r/t/k': KEK } });
    try {
      const key = ecKey();
      const { token } = await handshake(kbs, key);
      const { cookie, nonce } = await auth(kbs);
      expect((await getResource(kbs, 'r/t/k', { Authorization: `Bearer ${token}` })).status).toBe(200);
      await new Promise((r) => setTimeout(r, 3100));
      await expectKbsError(await getResource(kbs, 'r/t/k', { Authorization: `Bearer ${token}` }), 401, 'TokenVerifierError');
      const res = await attest(kbs, cookie, attestBody(nonce, key, sampleEvidence(reportData(nonce, key))));
      await expectKbsError(res, 401, 'AttestationError', ATTEST_FAILED);
    } finally {
      await kbs.stop();
    }
  });
});

describe('test KBS, protocol 0.2.0', () => {
  let kbs: TestKbs;
  beforeAll(async () => {
    kbs = await startTestKbs({ protocol: '0.2.0', resources: { 'default/image-kek/k1': KEK } });
  });
  afterAll(async () => {
    await kbs.stop();
  });

  it('accepts exactly 0.2.0 at /auth', async () => {
    const res = await post(`${kbs.url}/kbs/v0/auth`, { version: '0.4.0', tee: 'sample', 'extra-params': '' });
    await expectKbsError(res, 401, 'AttestationError',
      'Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =0.2.0 while the request is 0.4.0');
  });

  it('attests {tee-pubkey, tee-evidence} bound to SHA-384({"nonce","tee-pubkey"}) and serves the resource', async () => {
    const key = ecKey();
    const { cookie, nonce } = await auth(kbs, '0.2.0');
    // The 0.4.0 body shape and binding are refused by a 0.2.0 server.
    const res040 = await attest(kbs, cookie, attestBody(nonce, key, sampleEvidence(reportData(nonce, key))));
    await expectKbsError(res040, 401, 'AttestationError', ATTEST_FAILED);
    const wrongBinding = await attest(kbs, cookie, { 'tee-pubkey': key.jwk, 'tee-evidence': sampleEvidence(reportData(nonce, key, '0.4.0')) });
    await expectKbsError(wrongBinding, 401, 'AttestationError', ATTEST_FAILED);

    const res = await attest(kbs, cookie, { 'tee-pubkey': key.jwk, 'tee-evidence': sampleEvidence(reportData(nonce, key, '0.2.0')) });
    expect(res.status).toBe(200);
    const got = await getResource(kbs, 'default/image-kek/k1', { Cookie: cookie });
    expect(got.status).toBe(200);
    const { plaintext } = await flattenedDecrypt((await got.json()) as FlattenedJWE, key.privateKey);
    expect(Buffer.from(plaintext).equals(KEK)).toBe(true);
  });
});

describe('test KBS over TLS', () => {
  let dir: string;
  let kbs: TestKbs;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'test-kbs-tls-'));
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
      '-subj', '/CN=test-kbs', '-addext', 'subjectAltName=IP:127.0.0.1',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ], { stdio: 'ignore', timeout: 20_000 });
    const opts: TestKbsOptions = {
      tls: { cert: readFileSync(join(dir, 'cert.pem'), 'utf8'), key: readFileSync(join(dir, 'key.pem'), 'utf8') },
    };
    kbs = await startTestKbs(opts);
  });
  afterAll(async () => {
    await kbs?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves https with the given certificate', async () => {
    expect(kbs.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const dispatcher = new Agent({ connect: { ca: readFileSync(join(dir, 'cert.pem'), 'utf8') } });
    try {
      const res = await undiciFetch(`${kbs.url}/kbs/v0/auth`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ version: '0.4.0', tee: 'sample', 'extra-params': '' }),
        dispatcher,
      });
      expect(res.status).toBe(200);
      // Without the CA the handshake fails.
      await expect(fetch(`${kbs.url}/healthz`)).rejects.toThrow();
    } finally {
      await dispatcher.close();
    }
  });
});

/** Sorted-key compact JSON written independently of the server's canonicaliser (string/boolean/array members only). */
function canonicalTextOf(obj: Record<string, unknown>): string {
  return `{${Object.keys(obj)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${JSON.stringify(obj[k])}`)
    .join(',')}}`;
}

/** Base64 text with a line break in the middle: Node's decoder ignores it, the Rust STANDARD engine rejects it. */
function lineBroken(b64: string): string {
  return `${b64.slice(0, 32)}\n${b64.slice(32)}`;
}
