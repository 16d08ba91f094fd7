/**
 * Property-based fuzzing of every parser that reads hostile bytes: the fd-3 payload, the key-wrap annotations
 * (JWE, PKCS#7 BER, attestation-agent packet), pubopts/privopts, keyprovider output, KBS responses, the TOML
 * config, and the TEE/TPM/IMDS response parsers. Inputs are random and mutated real fixtures.
 *
 * The property for each: it returns, or throws one of our typed errors with a bounded one-line message; never an
 * uncaught TypeError/RangeError, never more than a bounded time. Fixed seed and a small count in `npm test`;
 * `npm run fuzz` runs the same properties with FUZZ_RUNS (default there: 20000) and a random seed.
 */
import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseHclReport } from '../../src/attest/hcl-report.js';
import { pemCertificateToDer } from '../../src/attest/azure-imds.js';
import { parseSnpCertTable, parseSnpReport, snpReportToSevJson } from '../../src/attest/snp-report.js';
import { parseTdQuote, parseTdReport } from '../../src/attest/tdx-quote.js';
import { parseQuoteAttest } from '../../src/attest/tpm/attest.js';
import { nvReadPublic } from '../../src/attest/tpm/nv.js';
import { parseConfig } from '../../src/config/load.js';
import { parseAnnotationPacket } from '../../src/ocicrypt/keywrap/attestation-agent-packet.js';
import { parseAttestResponse, parseChallenge, parseErrorInformation, parseResourceJwe } from '../../src/kbs/protocol.js';
import { parseResourceUri } from '../../src/kbs/resource-uri.js';
import { readTokenTimes } from '../../src/kbs/token-claims.js';
import { parseUnwrapOutput } from '../../src/ocicrypt/keyprovider/protocol.js';
import { jweKeyWrapper } from '../../src/ocicrypt/keywrap/jwe.js';
import type { UnwrapContext } from '../../src/ocicrypt/keywrap/keywrapper.js';
import { parseEnvelopedData, pkcs7KeyWrapper } from '../../src/ocicrypt/keywrap/pkcs7.js';
import { cipherOptionsFromUnwrapped, parsePublicOptions, publicOptionsFromAnnotations } from '../../src/ocicrypt/options.js';
import { decodePayload } from '../../src/streamprocessor/payload.js';
import { DecoderError, describeError } from '../../src/util/errors.js';
import { unwrapEntry } from '../helpers/unwrap-entry.js';

const RUNS = Number(process.env['FUZZ_RUNS'] ?? 150);
const SEED = process.env['FUZZ_SEED'] !== undefined ? Number(process.env['FUZZ_SEED']) : process.env['FUZZ_RUNS'] ? undefined : 20261202;
const PER_CALL_MS = 500;
const params = { numRuns: RUNS, ...(SEED !== undefined ? { seed: SEED } : {}) };

const FIX = join(import.meta.dirname, '../fixtures');
const fixture = (...p: string[]): Buffer => readFileSync(join(FIX, ...p));

/** Bytes: random, or a real fixture with a few bit flips, overwrites, truncations and insertions. */
function bytesLike(seed: Buffer, maxLength = 4 * seed.length + 64): fc.Arbitrary<Buffer> {
  const edit = fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
    fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), data: fc.uint8Array({ maxLength: 16 }) }),
  );
  const mutated = fc.array(edit, { minLength: 1, maxLength: 6 }).map((edits) => {
    let b = Buffer.from(seed);
    for (const e of edits) {
      if (b.length === 0) break;
      const at = e.at % b.length;
      if (e.kind === 'flip') b[at]! ^= 1 << e.bit;
      else if (e.kind === 'set') b[at] = e.value;
      else if (e.kind === 'cut') b = b.subarray(0, at);
      else b = Buffer.concat([b.subarray(0, at), Buffer.from(e.data), b.subarray(at)]);
    }
    return b;
  });
  return fc.oneof({ weight: 3, arbitrary: mutated }, { weight: 1, arbitrary: fc.uint8Array({ maxLength }).map((u) => Buffer.from(u)) });
}

/** A JSON document: arbitrary values, or a real one with one member replaced. */
function jsonLike(seed: Record<string, unknown>): fc.Arbitrary<unknown> {
  const keys = Object.keys(seed);
  return fc.oneof(
    fc.jsonValue(),
    fc.record({ k: fc.constantFrom(...keys), v: fc.jsonValue() }).map(({ k, v }) => ({ ...seed, [k]: v })),
    fc.record({ k: fc.constantFrom(...keys) }).map(({ k }) => Object.fromEntries(Object.entries(seed).filter(([x]) => x !== k))),
  );
}

/** Our errors only, with a message that fits on one bounded line. */
function checkError(err: unknown, allowPlainError = false): void {
  const ok = err instanceof DecoderError || (allowPlainError && err instanceof Error && err.constructor === Error);
  if (!ok) throw new Error(`unexpected ${(err as Error)?.constructor?.name ?? typeof err}: ${String((err as Error)?.stack ?? err)}`);
  const text = describeError(err);
  expect(text.length).toBeLessThanOrEqual(4096);
  expect(text).not.toMatch(/\n/);
}

function quick<T>(fn: () => T, allowPlainError = false): void {
  const t0 = performance.now();
  try {
    fn();
  } catch (err) {
    checkError(err, allowPlainError);
  }
  expect(performance.now() - t0).toBeLessThan(PER_CALL_MS);
}

async function quickAsync(fn: () => Promise<unknown>, allowPlainError = false): Promise<void> {
  const t0 = performance.now();
  try {
    await fn();
  } catch (err) {
    checkError(err, allowPlainError);
  }
  expect(performance.now() - t0).toBeLessThan(PER_CALL_MS * 4);
}

function ctx(parameters: Record<string, Buffer[]>): UnwrapContext {
  return { params: parameters, layerDigest: 'sha256:00', signal: new AbortController().signal };
}

describe('fd-3 payload (protobuf Any + Go JSON)', () => {
  const seeds = [fixture('ocicrypt', 'containerd-1.6.20-payload-enc-jwe-rsa.bin'), fixture('ocicrypt-v1.3.1', 'payload-ctr-enc.bin')];
  it('never throws anything but a one-line DecoderError', () => {
    fc.assert(fc.property(fc.constantFrom(...seeds).chain((s) => bytesLike(s)), (b) => quick(() => decodePayload(b))), params);
  });
});

describe('key-wrap annotations', () => {
  const jwe = fixture('ocicrypt-v1.3.1', 'annotations', 'org.opencontainers.image.enc.keys.jwe.0.bin');
  const pkcs7 = fixture('ocicrypt-v1.3.1', 'annotations', 'org.opencontainers.image.enc.keys.pkcs7.0.bin');
  const rsaKey = fixture('ocicrypt-v1.3.1', 'keys', 'rsa_priv.pem');
  const pkcs7Key = fixture('ocicrypt-v1.3.1', 'keys', 'pkcs7_key.pem');
  const pkcs7Cert = fixture('ocicrypt-v1.3.1', 'keys', 'pkcs7_cert.pem');
  createPrivateKey(rsaKey); // the fixtures load

  it('JWE: parse and unwrap with a real key', async () => {
    await fc.assert(
      fc.asyncProperty(bytesLike(jwe, 8192), (b) =>
        quickAsync(() => unwrapEntry(jweKeyWrapper, b, ctx({ privkeys: [rsaKey], 'privkeys-passwords': [Buffer.alloc(0)] }))),
      ),
      { ...params, numRuns: Math.max(20, Math.floor(RUNS / 3)) },
    );
  });

  it('PKCS#7: BER walker and unwrap with the real key and certificate', async () => {
    fc.assert(fc.property(bytesLike(pkcs7), (b) => quick(() => parseEnvelopedData(b))), params);
    await fc.assert(
      fc.asyncProperty(bytesLike(pkcs7), (b) =>
        quickAsync(() => unwrapEntry(pkcs7KeyWrapper, b, ctx({ privkeys: [pkcs7Key], 'privkeys-passwords': [Buffer.alloc(0)], x509s: [pkcs7Cert] }))),
      ),
      { ...params, numRuns: Math.max(20, Math.floor(RUNS / 3)) },
    );
  });

  it('attestation-agent packet and its kid', () => {
    const seed = { kid: 'kbs:///default/image-kek/app', wrapped_data: Buffer.alloc(48, 1).toString('base64'), iv: Buffer.alloc(12, 2).toString('base64'), wrap_type: 'A256GCM' };
    fc.assert(
      fc.property(fc.oneof(jsonLike(seed).map((j) => Buffer.from(JSON.stringify(j) ?? '')), bytesLike(Buffer.from(JSON.stringify(seed)))), (b) =>
        quick(() => parseResourceUri(parseAnnotationPacket(b).kid)),
      ),
      params,
    );
    fc.assert(fc.property(fc.string({ maxLength: 3000 }), (s) => quick(() => parseResourceUri(s))), params);
  });
});

describe('layer options', () => {
  const pubSeed = { cipher: 'AES_256_CTR_HMAC_SHA256', hmac: Buffer.alloc(32, 7).toString('base64'), cipheroptions: {} };
  const privSeed = { symkey: Buffer.alloc(32, 1).toString('base64'), digest: '', cipheroptions: { nonce: Buffer.alloc(16, 2).toString('base64') } };
  const pub = parsePublicOptions(JSON.stringify(pubSeed));

  it('pubopts, from JSON and from the annotation', () => {
    fc.assert(fc.property(jsonLike(pubSeed), (j) => quick(() => parsePublicOptions(JSON.stringify(j) ?? ''))), params);
    fc.assert(
      fc.property(fc.string({ maxLength: 400 }), (s) => quick(() => publicOptionsFromAnnotations({ 'org.opencontainers.image.enc.pubopts': s }))),
      params,
    );
  });

  it('privopts after unwrap: valid, or exactly the one fixed message', () => {
    const FIXED = 'the private layer options unwrapped with "fuzz" are not valid';
    fc.assert(
      fc.property(fc.oneof(jsonLike(privSeed).map((j) => Buffer.from(JSON.stringify(j) ?? '')), bytesLike(Buffer.from(JSON.stringify(privSeed)))), (b) => {
        try {
          cipherOptionsFromUnwrapped(pub, b, 'fuzz');
        } catch (err) {
          expect(describeError(err)).toBe(FIXED);
        }
      }),
      params,
    );
  });
});

describe('keyprovider output', () => {
  const seed = Buffer.from(JSON.stringify({ keyunwrapresults: { optsdata: Buffer.from('{"symkey":"x"}').toString('base64') } }));
  it('returns bytes or null, or a plain Error naming the provider', () => {
    fc.assert(fc.property(bytesLike(seed), (b) => quick(() => parseUnwrapOutput(b, 'provider p'), true)), params);
  });
});

describe('KBS responses', () => {
  it('challenge, attest response, error body, resource JWE, token claims', () => {
    const challenge = { nonce: 'bm9uY2U', 'extra-params': {} };
    const attest = { token: 'eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjF9.c2ln' };
    const jweSeed = { protected: 'eyJhbGciOiJFQ0RILUVTK0EyNTZLVyIsImVuYyI6IkEyNTZHQ00ifQ', encrypted_key: 'a2V5', iv: 'aXY', ciphertext: 'Y3Q', tag: 'dGFn' };
    fc.assert(fc.property(jsonLike(challenge), (j) => quick(() => parseChallenge(j))), params);
    fc.assert(fc.property(jsonLike(attest), (j) => quick(() => parseAttestResponse(j))), params);
    fc.assert(fc.property(fc.jsonValue(), (j) => quick(() => parseErrorInformation(j))), params);
    fc.assert(fc.property(jsonLike(jweSeed), (j) => quick(() => parseResourceJwe(j, 'ECDH-ES+A256KW'))), params);
    fc.assert(fc.property(fc.oneof(fc.string({ maxLength: 500 }), fc.constant(attest.token)), (t) => quick(() => readTokenTimes(t))), params);
  });
});

describe('TOML config', () => {
  const seed = Buffer.from('[kbs]\nurl = "https://kbs.example:8080"\ntimeout_ms = 5000\n[attestation]\ntee = "tdx"\n[cache]\ndir = "/run/x"\n[integrity]\ncheck_plain_digest = true\n');
  it('parses or names what is wrong, in one line', () => {
    fc.assert(fc.property(fc.oneof(bytesLike(seed).map((b) => b.toString('latin1')), fc.string({ maxLength: 400 })), (t) => quick(() => parseConfig(t, '/fuzz.toml'))), params);
  });
});

describe('TEE, TPM and IMDS responses', () => {
  const tdQuote = fixture('tee', 'trustee-tdx_quote_5.dat');
  const tdReport = fixture('tee', 'guest-components-tdx_report_1.bin');
  const snp = fixture('tee', 'trustee-snp-test-report.bin');
  const hcl = fixture('tee', 'trustee-az-snp-vtpm-hcl-report.bin');
  const vcekPem = fixture('tee', 'trustee-az-snp-vtpm-vcek.pem');

  it('TD quote and report, SNP report and certificate table, HCL report', () => {
    fc.assert(fc.property(bytesLike(tdQuote, 16384), (b) => quick(() => parseTdQuote(b))), params);
    fc.assert(fc.property(bytesLike(tdReport), (b) => quick(() => parseTdReport(b))), params);
    fc.assert(fc.property(bytesLike(snp), (b) => quick(() => snpReportToSevJson(parseSnpReport(b).raw))), params);
    fc.assert(fc.property(bytesLike(Buffer.alloc(96, 0)), (b) => quick(() => parseSnpCertTable(b))), params);
    fc.assert(fc.property(bytesLike(hcl), (b) => quick(() => parseHclReport(b))), params);
  });

  it('TPM responses (NV_ReadPublic through a transport that answers garbage) and quote attestation structures', async () => {
    const okHeader = Buffer.from('8001000000200000000000000000', 'hex');
    await fc.assert(
      fc.asyncProperty(bytesLike(Buffer.concat([okHeader, Buffer.alloc(24, 1)]), 256), (b) => quickAsync(() => nvReadPublic(async () => b, 0x01400001))),
      params,
    );
    fc.assert(fc.property(bytesLike(Buffer.from('ff54434780180022000b' + '00'.repeat(60), 'hex')), (b) => quick(() => parseQuoteAttest(b))), params);
  });

  it('IMDS VCEK PEM', () => {
    fc.assert(fc.property(fc.oneof(bytesLike(vcekPem).map((b) => b.toString('latin1')), fc.string({ maxLength: 300 })), (s) => quick(() => pemCertificateToDer(s))), params);
  });
});
