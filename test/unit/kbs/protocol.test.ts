/**
 * Pure pieces of the KBS client: canonical JSON, runtime-data strings (written out literally as in
 *), the TEE key JWK shape, resource URIs, wire-message validation, error mapping,
 * proxy selection and the sample attester.
 */
import { createHash, createPublicKey } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createSampleAttester } from '../../../src/attest/sample.js';
import { canonicalJson } from '../../../src/kbs/canonical-json.js';
import { errorFromResponse, parseVersionMismatch } from '../../../src/kbs/errors.js';
import {
  buildAttestRequest,
  buildAuthRequest,
  parseAttestResponse,
  parseChallenge,
  parseErrorInformation,
  parseResourceJwe,
  reportDataDigest,
  runtimeDataToHash,
  selectedHashAlgorithm,
} from '../../../src/kbs/protocol.js';
import { proxyFor } from '../../../src/kbs/proxy-env.js';
import { parseResourceUri } from '../../../src/kbs/resource-uri.js';
import { exportTeePrivateKey, generateTeeKeyPair, importTeeKeyPair } from '../../../src/kbs/tee-key.js';
import { localExpiry, readTokenTimes } from '../../../src/kbs/token-claims.js';
import { DecoderError } from '../../../src/util/errors.js';

const ERR = 'https://github.com/confidential-containers/kbs/errors/';

describe('canonical JSON', () => {
  it('matches the attestation-service test vector (sorted keys, compact, SHA-384)', () => {
    const text = canonicalJson({ b: 1, a: 'test', c: { d: 'e' } });
    expect(text).toBe('{"a":"test","b":1,"c":{"d":"e"}}');
    expect(createHash('sha384').update(text).digest('hex')).toBe(
      'e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3',
    );
  });

  it('sorts nested keys by UTF-16 code units and escapes like JSON', () => {
    expect(canonicalJson({ 'é': 1, Z: [true, null, 'a"b'], a: {} })).toBe('{"Z":[true,null,"a\\"b"],"a":{},"é":1}');
  });

  it('refuses values it cannot canonicalise exactly', () => {
    expect(() => canonicalJson(1.5)).toThrow(TypeError);
    expect(() => canonicalJson({ a: undefined } as never)).toThrow(TypeError);
  });
});

describe('runtime data (report data binding)', () => {
  const ec = { kty: 'EC', crv: 'P-256', alg: 'ECDH-ES+A256KW', x: 'XX', y: 'YY' } as const;
  const rsa = { kty: 'RSA', alg: 'RSA-OAEP-256', n: 'NN', e: 'AQAB' } as const;

  it('0.4.0 hashes {additional-evidence, nonce, tee-pubkey} in sorted order, additional-evidence always present', () => {
    expect(runtimeDataToHash('0.4.0', 'N0nce==', ec)).toBe(
      '{"additional-evidence":"","nonce":"N0nce==","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"XX","y":"YY"}}',
    );
    expect(runtimeDataToHash('0.4.0', 'n', rsa)).toBe(
      '{"additional-evidence":"","nonce":"n","tee-pubkey":{"alg":"RSA-OAEP-256","e":"AQAB","kty":"RSA","n":"NN"}}',
    );
  });

  it('0.2.0 hashes only {nonce, tee-pubkey}', () => {
    expect(runtimeDataToHash('0.2.0', 'n', rsa)).toBe('{"nonce":"n","tee-pubkey":{"alg":"RSA-OAEP-256","e":"AQAB","kty":"RSA","n":"NN"}}');
  });

  it('the digest is SHA-384 by default and follows selected-hash-algorithm', () => {
    const text = runtimeDataToHash('0.4.0', 'n', ec);
    expect(reportDataDigest('sha384', text)).toEqual(createHash('sha384').update(text).digest());
    expect(selectedHashAlgorithm({ nonce: 'n', extraParams: '' })).toBe('sha384');
    expect(selectedHashAlgorithm({ nonce: 'n', extraParams: { 'selected-hash-algorithm': 'SHA512' } })).toBe('sha512');
    expect(() => selectedHashAlgorithm({ nonce: 'n', extraParams: { 'selected-hash-algorithm': 'md5' } })).toThrow(/unsupported hash/);
  });

  it('builds the 0.4.0 and 0.2.0 attest bodies with the documented casing', () => {
    expect(buildAttestRequest('0.4.0', 'n', ec, { svn: '1' })).toEqual({
      'runtime-data': { nonce: 'n', 'tee-pubkey': ec },
      'tee-evidence': { primary_evidence: { svn: '1' }, additional_evidence: '' },
    });
    expect(buildAttestRequest('0.2.0', 'n', ec, { svn: '1' })).toEqual({ 'tee-pubkey': ec, 'tee-evidence': { svn: '1' } });
    expect(buildAuthRequest('0.4.0', 'sample')).toEqual({
      version: '0.4.0',
      tee: 'sample',
      'extra-params': { 'supported-hash-algorithms': ['sha256', 'sha384', 'sha512'] },
    });
  });

  it('spells the Azure TEEs per dialect: az-snp-vtpm from trustee v0.16 (kbs-types 0.14), azsnpvtpm before', () => {
    expect(buildAuthRequest('0.4.0', 'az-snp-vtpm').tee).toBe('az-snp-vtpm');
    expect(buildAuthRequest('0.2.0', 'az-snp-vtpm').tee).toBe('azsnpvtpm');
    expect(buildAuthRequest('0.2.0', 'az-tdx-vtpm').tee).toBe('aztdxvtpm');
    // trustee v0.14-v0.15 speak 0.4.0 with the old names: kbs.tee_names = "legacy".
    expect(buildAuthRequest('0.4.0', 'az-tdx-vtpm', 'legacy').tee).toBe('aztdxvtpm');
    expect(buildAuthRequest('0.2.0', 'az-snp-vtpm', 'current').tee).toBe('az-snp-vtpm');
    expect(buildAuthRequest('0.2.0', 'tdx', 'legacy').tee).toBe('tdx');
  });
});

describe('TEE key', () => {
  it('EC P-256 JWK has exactly kty, crv, alg, x, y with 32-byte coordinates matching the private key', async () => {
    const pair = await generateTeeKeyPair('ec-p256');
    expect(Object.keys(pair.publicJwk).sort()).toEqual(['alg', 'crv', 'kty', 'x', 'y']);
    expect(pair.publicJwk).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ECDH-ES+A256KW' });
    if (pair.publicJwk.kty !== 'EC') throw new Error('unreachable');
    expect(Buffer.from(pair.publicJwk.x, 'base64url')).toHaveLength(32);
    expect(Buffer.from(pair.publicJwk.y, 'base64url')).toHaveLength(32);
    const pub = createPublicKey(pair.privateKey).export({ format: 'jwk' });
    expect(Buffer.from(pub.x!, 'base64url').equals(Buffer.from(pair.publicJwk.x, 'base64url'))).toBe(true);
  });

  it('RSA-OAEP-256 JWK is RSA-2048 with exactly kty, alg, n, e', async () => {
    const pair = await generateTeeKeyPair('rsa-oaep-256');
    expect(Object.keys(pair.publicJwk).sort()).toEqual(['alg', 'e', 'kty', 'n']);
    expect(pair.publicJwk).toMatchObject({ kty: 'RSA', alg: 'RSA-OAEP-256', e: 'AQAB' });
    if (pair.publicJwk.kty !== 'RSA') throw new Error('unreachable');
    expect(Buffer.from(pair.publicJwk.n, 'base64url')).toHaveLength(256);
  });

  it('round-trips through PKCS#8 and refuses a key of the other kind', async () => {
    const pair = await generateTeeKeyPair('ec-p256');
    const der = exportTeePrivateKey(pair);
    expect(importTeeKeyPair('ec-p256', der).publicJwk).toEqual(pair.publicJwk);
    expect(() => importTeeKeyPair('rsa-oaep-256', der)).toThrow();
  });
});

describe('resource URI (kid)', () => {
  it('parses kbs:///repo/type/tag and kbs://host:port/... (host ignored later)', () => {
    expect(parseResourceUri('kbs:///default/image-kek/1f2e-ab')).toMatchObject({
      host: '',
      path: 'default/image-kek/1f2e-ab',
      uri: 'kbs:///default/image-kek/1f2e-ab',
    });
    expect(parseResourceUri('kbs://kbs.example:8080/a/b/c.d')).toMatchObject({ host: 'kbs.example:8080', path: 'a/b/c.d', uri: 'kbs:///a/b/c.d' });
    expect(parseResourceUri('kbs:///a/b/c?version=2').query).toBe('?version=2');
  });

  it.each([
    ['kbs:///a/b', /exactly 3 path segments/],
    ['kbs:///a/b/c/d', /exactly 3 path segments/],
    ['kbs:///a/../c', /segment "\.\."/],
    ['kbs:///a/b/.hidden', /segment "\.hidden"/],
    ['kbs:///a/b/c%2f', /segment/],
    ['kbs:///a//c', /segment ""/],
    ['https://kbs/a/b/c', /expected kbs:/],
    ['kbs+pkcs11:///a/b/c', /only the KBS resource plugin/],
    ['kbs://user@host/a/b/c', /malformed host/],
  ])('rejects %s', (kid, message) => {
    expect(() => parseResourceUri(kid)).toThrow(DecoderError);
    expect(() => parseResourceUri(kid)).toThrow(message);
  });
});

describe('wire message validation', () => {
  it('challenge: needs a string nonce; extra-params may be "" or an object', () => {
    expect(parseChallenge({ nonce: 'abc=', 'extra-params': '' })).toEqual({ nonce: 'abc=', extraParams: '' });
    expect(() => parseChallenge({ 'extra-params': '' })).toThrow(/nonce/);
    expect(() => parseChallenge([])).toThrow(/not a JSON object/);
  });

  it('attest response: needs a JWT-shaped token', () => {
    expect(parseAttestResponse({ token: 'a.b.c' })).toEqual({ token: 'a.b.c' });
    expect(() => parseAttestResponse({ token: 'not a jwt' })).toThrow(/token/);
  });

  it('error information: extracts the kind from the type URL', () => {
    expect(parseErrorInformation({ type: `${ERR}PolicyDeny`, detail: 'Access denied by policy' })).toEqual({
      type: `${ERR}PolicyDeny`,
      detail: 'Access denied by policy',
      kind: 'PolicyDeny',
    });
    expect(parseErrorInformation('Service Unavailable')).toBeUndefined();
  });

  it('resource JWE: checks alg/enc against our key and drops an aad member', () => {
    const header = (h: object): string => Buffer.from(JSON.stringify(h)).toString('base64url');
    const base = {
      protected: header({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' }),
      encrypted_key: 'AAAA',
      iv: Buffer.alloc(12).toString('base64url'),
      ciphertext: 'AAAA',
      tag: Buffer.alloc(16).toString('base64url'),
    };
    expect(parseResourceJwe({ ...base, aad: 'x' }, 'ECDH-ES+A256KW')).toEqual(base);
    expect(() => parseResourceJwe(base, 'RSA-OAEP-256')).toThrow(/expected RSA-OAEP-256/);
    expect(() => parseResourceJwe({ ...base, protected: header({ alg: 'ECDH-ES+A256KW', enc: 'A128GCM' }) }, 'ECDH-ES+A256KW')).toThrow(/A256GCM/);
    expect(() => parseResourceJwe({ ...base, protected: '{"alg":"RSA1_5","enc":"A256GCM"}', tag: '' }, 'ECDH-ES+A256KW')).toThrow(/legacy/);
  });

  it('token times: lifetime measured from receipt when iat is present', () => {
    const jwt = (claims: object): string => `e30.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.sig`;
    expect(readTokenTimes(jwt({ exp: 1300, iat: 1000 }))).toEqual({ exp: 1300, iat: 1000 });
    expect(localExpiry({ exp: 1300, iat: 1000 }, 5_000_000)).toBe(5_300_000);
    expect(localExpiry({ exp: 1300, iat: undefined }, 0)).toBe(1_300_000);
    expect(localExpiry({ exp: undefined, iat: 1 }, 0)).toBeUndefined();
    expect(() => readTokenTimes('a.!!!.c')).toThrow(/not JSON/);
  });
});

describe('error mapping', () => {
  const info = (kind: string, detail: string) => ({ type: `${ERR}${kind}`, detail, kind });
  const url = 'https://kbs.example:8080';

  it('version mismatch names both versions and parses the expected one', () => {
    const detail = 'Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =0.4.0 while the request is 0.2.0';
    expect(parseVersionMismatch(detail)).toEqual({ expected: '0.4.0', sent: '0.2.0' });
    const err = errorFromResponse(401, info('AttestationError', detail), '', { endpoint: 'auth', kbsUrl: url, version: '0.2.0', tee: 'sample' });
    expect(err.code).toBe('KBS_VERSION_MISMATCH');
    expect(err.expectedVersion).toBe('0.4.0');
    expect(err.message).toMatch(/expects 0\.4\.0, coco-decoder sent 0\.2\.0; set kbs\.protocol = "auto" or "0\.4\.0"/);
    const old = errorFromResponse(401, info('AttestationError', detail.replace('=0.4.0', '=0.1.1')), '', { endpoint: 'auth', kbsUrl: url, version: '0.4.0' });
    expect(old.message).toMatch(/expects 0\.1\.1, coco-decoder sent 0\.2\.0; coco-decoder speaks 0\.4\.0 .* upgrade the KBS/);
  });

  it('an Azure TEE name an old trustee cannot parse says how it spells it', () => {
    const err = errorFromResponse(401, info('AttestationError', 'Attestation error: RCAR handshake Auth failed: deserialize Request'), '', {
      endpoint: 'auth',
      kbsUrl: url,
      version: '0.4.0',
      tee: 'az-snp-vtpm',
    });
    expect(err.message).toMatch(/does not know TEE "az-snp-vtpm" .*spells it "azsnpvtpm"/);
  });

  it('policy denial names the kid; a missing resource explains trustee\'s 401 collapse', () => {
    const deny = errorFromResponse(401, info('PolicyDeny', 'Access denied by policy'), '', { endpoint: 'resource', kbsUrl: url, kid: 'kbs:///a/b/c' });
    expect(deny.code).toBe('KBS_POLICY_DENIED');
    expect(deny.message).toMatch(/access to kbs:\/\/\/a\/b\/c denied by the resource policy/);
    const missing = errorFromResponse(401, info('PluginInternalError', 'Plugin internal error'), '', { endpoint: 'resource', kbsUrl: url, kid: 'kbs:///a/b/c' });
    expect(missing.code).toBe('KBS_RESOURCE_MISSING');
    expect(missing.message).toMatch(/does not exist.*trustee#1419/);
  });

  it('attestation failure points at the KBS policy; messages are one line', () => {
    const err = errorFromResponse(401, info('AttestationError', 'Attestation error: RCAR handshake Attest failed'), '', {
      endpoint: 'attest',
      kbsUrl: url,
      tee: 'tdx',
    });
    expect(err.code).toBe('KBS_ATTESTATION_FAILED');
    expect(err.message).toMatch(/rejected the tdx evidence/);
    const multi = errorFromResponse(500, undefined, 'line1\nline2', { endpoint: 'resource', kbsUrl: url, kid: 'k' });
    expect(multi.message).not.toMatch(/\n/);
  });
});

describe('proxy selection from the environment', () => {
  const target = new URL('https://kbs.corp.example:8080');
  it('uses HTTPS_PROXY for https and honours NO_PROXY suffixes, ports, IPs and CIDRs', () => {
    expect(proxyFor(target, { HTTPS_PROXY: 'http://proxy:3128' })).toBe('http://proxy:3128');
    expect(proxyFor(target, { https_proxy: 'proxy:3128' })).toBe('http://proxy:3128');
    expect(proxyFor(target, { HTTP_PROXY: 'http://p:1' })).toBeUndefined();
    expect(proxyFor(target, { HTTPS_PROXY: 'http://p:1', NO_PROXY: '.example' })).toBeUndefined();
    expect(proxyFor(target, { HTTPS_PROXY: 'http://p:1', NO_PROXY: 'corp.example:8080' })).toBeUndefined();
    expect(proxyFor(target, { HTTPS_PROXY: 'http://p:1', NO_PROXY: 'corp.example:9090' })).toBe('http://p:1');
    expect(proxyFor(target, { HTTPS_PROXY: 'http://p:1', NO_PROXY: 'other.example' })).toBe('http://p:1');
    expect(proxyFor(new URL('https://10.1.2.3'), { HTTPS_PROXY: 'http://p:1', NO_PROXY: '10.0.0.0/8' })).toBeUndefined();
    expect(proxyFor(new URL('https://127.0.0.1:1'), { HTTPS_PROXY: 'http://p:1', no_proxy: 'localhost,127.0.0.1' })).toBeUndefined();
    expect(proxyFor(target, { HTTPS_PROXY: 'http://p:1', NO_PROXY: '*' })).toBeUndefined();
  });
});

describe('sample attester', () => {
  it('reports the digest unpadded in standard base64 with svn "1"', async () => {
    const digest = createHash('sha384').update('x').digest();
    const a = createSampleAttester();
    expect(a.tee).toBe('sample');
    expect(a.hardware).toBe(false);
    expect(await a.getEvidence(digest)).toEqual({ svn: '1', report_data: digest.toString('base64') });
    expect(Buffer.from(((await a.getEvidence(digest)) as { report_data: string }).report_data, 'base64')).toHaveLength(48);
  });
});
