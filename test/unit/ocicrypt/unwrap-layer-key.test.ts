import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultConfig } from '../../../src/config/types.js';
import { buildKeyWrappers } from '../../../src/ocicrypt/keywrap/registry.js';
import { annotationFor, type DecryptParameters, type KeyWrapper, type UnwrapContext, type UnwrappedEntry } from '../../../src/ocicrypt/keywrap/keywrapper.js';
import { layerKeySchemes, unwrapLayerKey } from '../../../src/ocicrypt/unwrap-layer-key.js';
import { DecoderError } from '../../../src/util/errors.js';
import { rejectionOf } from '../../helpers/error-of.js';

const b64 = (s: string): string => Buffer.from(s).toString('base64');

interface FakeOptions {
  supported?: boolean;
  keysParam?: string;
  /** Per decoded entry: a result, null, or an error message to throw. */
  answers?: Record<string, string | null | { error: string }>;
  delayMs?: number;
  /** The audit facts a successful unwrap returns. */
  facts?: UnwrappedEntry['facts'];
}

/** A wrapper whose unwrap answers by the decoded entry text; records the entries it was asked about. */
function fake(scheme: string, o: FakeOptions = {}): KeyWrapper & { calls: string[] } {
  const keysParam = o.keysParam ?? 'privkeys';
  const calls: string[] = [];
  return {
    scheme,
    supported: o.supported ?? true,
    calls,
    noPossibleKeys: (p: DecryptParameters) => keysParam !== '' && (p[keysParam]?.length ?? 0) === 0,
    hasPrivateKeys: (p: DecryptParameters) => keysParam !== '' && (p[keysParam]?.length ?? 0) > 0,
    async unwrap(entry: Buffer, ctx: UnwrapContext): Promise<UnwrappedEntry | null> {
      const text = entry.toString();
      calls.push(text);
      if (o.delayMs) {
        await new Promise((resolve, reject) => {
          const t = setTimeout(resolve, o.delayMs);
          ctx.signal.addEventListener('abort', () => {
            clearTimeout(t);
            reject(new DecoderError('aborted'));
          });
        });
      }
      const a = o.answers?.[text];
      if (a === undefined || a === null) return null;
      if (typeof a === 'object') throw new DecoderError(a.error);
      return { privopts: Buffer.from(a), facts: o.facts };
    },
  };
}

const withKeys: DecryptParameters = { privkeys: [Buffer.from('k')], 'privkeys-passwords': [null] };

function ctx(params: DecryptParameters = withKeys, signal: AbortSignal = new AbortController().signal): UnwrapContext {
  return { params, layerDigest: 'sha256:abc', signal };
}

describe('scheme order and entry selection', () => {
  it('tries schemes in the fixed wrapper order and stops at the first success', async () => {
    const jwe = fake('jwe', { answers: { J: 'privopts-from-jwe' }, facts: { kid: 'jwe-kid' } });
    const pkcs7 = fake('pkcs7', { answers: { P: 'privopts-from-pkcs7' } });
    const annotations = { [annotationFor('pkcs7')]: b64('P'), [annotationFor('jwe')]: b64('J') };
    const r = await unwrapLayerKey([jwe, pkcs7], annotations, ctx());
    expect(r.privopts.toString()).toBe('privopts-from-jwe');
    expect(pkcs7.calls).toEqual([]);
    expect(r.audit).toEqual({ scheme: 'jwe', kid: 'jwe-kid' });
  });

  it('credits the audit record to the scheme that unwrapped the key, not to one that failed before it', async () => {
    const failingProvider: KeyWrapper = {
      ...fake('provider.attestation-agent', { keysParam: '' }),
      async unwrap(): Promise<UnwrappedEntry | null> {
        throw new DecoderError('KBS unreachable');
      },
    };
    const pkcs7 = fake('pkcs7', { answers: { P: 'ok' } });
    const annotations = { [annotationFor('provider.attestation-agent')]: b64('A'), [annotationFor('pkcs7')]: b64('P') };
    const r = await unwrapLayerKey([failingProvider, pkcs7], annotations, ctx());
    expect(r.privopts.toString()).toBe('ok');
    expect(r.audit).toEqual({ scheme: 'pkcs7' });
  });

  it('falls through to the next scheme when one fails', async () => {
    const jwe = fake('jwe', { answers: { J: { error: 'JWE: No suitable private key found for decryption' } } });
    const pkcs7 = fake('pkcs7', { answers: { P: 'ok' } });
    const annotations = { [annotationFor('jwe')]: b64('J'), [annotationFor('pkcs7')]: b64('P') };
    expect((await unwrapLayerKey([jwe, pkcs7], annotations, ctx())).privopts.toString()).toBe('ok');
  });

  it('tries comma-separated entries left to right; errors and nulls move on to the next entry', async () => {
    const jwe = fake('jwe', { answers: { A: { error: 'bad' }, B: null, C: 'third' } });
    const annotations = { [annotationFor('jwe')]: [b64('A'), b64('B'), b64('C')].join(',') };
    expect((await unwrapLayerKey([jwe], annotations, ctx())).privopts.toString()).toBe('third');
    expect(jwe.calls).toEqual(['A', 'B', 'C']);
  });

  it('skips a scheme for which no keys were given, without calling it', async () => {
    const pgp = fake('jwe', { keysParam: 'gpg-privatekeys' });
    const annotations = { [annotationFor('jwe')]: b64('J') };
    expect(await rejectionOf(unwrapLayerKey([pgp], annotations, ctx()))).toBe(
      'missing private key needed for decryption: no private key was given for jwe (see --decryption-keys-path)',
    );
    expect(pgp.calls).toEqual([]);
  });

  it('ignores wrappers whose annotation is absent or empty', async () => {
    const jwe = fake('jwe', { answers: { J: 'x' } });
    const pkcs7 = fake('pkcs7', { answers: { P: 'y' } });
    expect((await unwrapLayerKey([jwe, pkcs7], { [annotationFor('jwe')]: '', [annotationFor('pkcs7')]: b64('P') }, ctx())).privopts.toString()).toBe('y');
    expect(jwe.calls).toEqual([]);
  });
});

describe('ocicrypt summary messages, on one line', () => {
  it('uses "no suitable key unwrapper found ..." when private keys were given, with every cause', async () => {
    const jwe = fake('jwe', { answers: { J1: { error: 'JWE: No suitable private key found for decryption' }, J2: { error: 'JWE: second\nline' } } });
    const pkcs7 = fake('pkcs7', { answers: { P: { error: 'no x509 certificates found needed for PKCS7 decryption' } } });
    const annotations = { [annotationFor('jwe')]: `${b64('J1')},${b64('J2')}`, [annotationFor('pkcs7')]: b64('P') };
    const msg = await rejectionOf(unwrapLayerKey([jwe, pkcs7], annotations, ctx()));
    expect(msg).toBe(
      'no suitable key unwrapper found or none of the private keys could be used for decryption: ' +
        'no suitable key found for decrypting layer key: JWE: No suitable private key found for decryption; JWE: second; line; ' +
        'no suitable key found for decrypting layer key: no x509 certificates found needed for PKCS7 decryption',
    );
    expect(msg).not.toContain('\n');
  });

  it('leads with the key provider\'s own cause when only key-less schemes (providers) were asked and failed', async () => {
    // ocicrypt would say "missing private key needed for decryption" here, which misleads when a KBS denied the key.
    const provider = fake('provider.kp', { keysParam: '', answers: { W: { error: 'Error while running command: /x. stderr: boom: exit status 3' } } });
    const msg = await rejectionOf(unwrapLayerKey([provider], { [annotationFor('provider.kp')]: b64('W') }, ctx({})));
    expect(msg).toBe('provider.kp: Error while running command: /x. stderr: boom: exit status 3');
  });

  it('a provider answering null for every entry is "missing private key" without causes', async () => {
    const provider = fake('provider.kp', { keysParam: '' });
    expect(await rejectionOf(unwrapLayerKey([provider], { [annotationFor('provider.kp')]: b64('W') }, ctx({})))).toBe(
      'missing private key needed for decryption',
    );
  });

  it('stops a scheme at an entry that is not std base64 ("could not base64 decode the annotation")', async () => {
    const jwe = fake('jwe', { answers: { J: 'never' } });
    const annotations = { [annotationFor('jwe')]: `${b64('J').replace(/=+$/, '')}x,${b64('J')}` };
    const msg = await rejectionOf(unwrapLayerKey([jwe], annotations, ctx()));
    expect(msg).toBe(
      'no suitable key unwrapper found or none of the private keys could be used for decryption: could not base64 decode the annotation',
    );
    expect(jwe.calls).toEqual([]);
  });

  it('fails clearly when the layer has no key annotation at all', async () => {
    expect(await rejectionOf(unwrapLayerKey([fake('jwe')], { 'org.opencontainers.image.enc.pubopts': 'e30=' }, ctx()))).toBe(
      'missing private key needed for decryption: the layer has no org.opencontainers.image.enc.keys.* annotation',
    );
  });

  it('names an unconfigured key provider and an unknown scheme', async () => {
    const annotations = { [annotationFor('provider.other')]: b64('x'), [annotationFor('weird')]: b64('y') };
    expect(await rejectionOf(unwrapLayerKey([fake('jwe')], annotations, ctx()))).toBe(
      'missing private key needed for decryption: key provider "other" is not configured (OCICRYPT_KEYPROVIDER_CONFIG); unknown key-wrap scheme "weird"',
    );
  });
});

describe('unsupported schemes (pgp, pkcs11)', () => {
  const pgp = fake('pgp', { supported: false, keysParam: 'gpg-privatekeys', answers: { G: 'must not be used' } });
  const pkcs11 = fake('pkcs11', { supported: false, keysParam: 'pkcs11-yamls' });

  it('says clearly that the scheme is not supported when the layer has nothing else', async () => {
    const params = { 'gpg-privatekeys': [Buffer.from('ring')] };
    const msg = await rejectionOf(
      unwrapLayerKey([fake('jwe'), pgp, pkcs11], { [annotationFor('pgp')]: b64('G'), [annotationFor('pkcs11')]: b64('H') }, ctx(params)),
    );
    expect(msg).toBe(
      'the layer key is wrapped only with pgp, pkcs11, which coco-decoder does not support; ' +
        're-encrypt the image for jwe, pkcs7 or a key provider (e.g. provider:attestation-agent)',
    );
    expect(pgp.calls).toEqual([]);
  });

  it('uses another usable scheme when there is one', async () => {
    const jwe = fake('jwe', { answers: { J: 'from-jwe' } });
    const annotations = { [annotationFor('pgp')]: b64('G'), [annotationFor('jwe')]: b64('J') };
    expect((await unwrapLayerKey([jwe, pgp], annotations, ctx())).privopts.toString()).toBe('from-jwe');
  });

  it('mentions the unsupported scheme among the causes when the usable one fails', async () => {
    const jwe = fake('jwe', { answers: { J: { error: 'JWE: No suitable private key found for decryption' } } });
    const annotations = { [annotationFor('pgp')]: b64('G'), [annotationFor('jwe')]: b64('J') };
    expect(await rejectionOf(unwrapLayerKey([jwe, pgp], annotations, ctx()))).toMatch(
      /: no suitable key found for decrypting layer key: JWE: No suitable private key found for decryption; pgp not supported by coco-decoder$/,
    );
  });
});

describe('deadline', () => {
  it('aborts a slow unwrap with a timeout error naming the scheme', async () => {
    const slow = fake('provider.attestation-agent', { keysParam: '', delayMs: 10_000 });
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 50);
    const started = Date.now();
    const msg = await rejectionOf(unwrapLayerKey([slow], { [annotationFor('provider.attestation-agent')]: b64('x') }, ctx({}, controller.signal)));
    expect(msg).toBe('timed out unwrapping the layer key (scheme provider.attestation-agent)');
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});

describe('layerKeySchemes', () => {
  it('lists the non-empty key annotations by scheme', () => {
    expect(
      layerKeySchemes({
        'org.opencontainers.image.enc.keys.jwe': 'x',
        'org.opencontainers.image.enc.keys.provider.attestation-agent': 'y',
        'org.opencontainers.image.enc.keys.pgp': '',
        'org.opencontainers.image.enc.keys.': 'z',
        'org.opencontainers.image.enc.pubopts': 'p',
      }),
    ).toEqual(['jwe', 'provider.attestation-agent']);
  });
});

describe('key wrapper registry (real modules)', () => {
  const TOY = join(import.meta.dirname, '../../fixtures/ocicrypt-v1.3.1/keyprovider-toy/provider.sh');
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'coco-registry-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function options(providers: Record<string, unknown> | undefined) {
    const env: NodeJS.ProcessEnv = {};
    if (providers !== undefined) {
      const file = join(dir, `kp-${Object.keys(providers).join('-')}.json`);
      writeFileSync(file, JSON.stringify({ 'key-providers': providers }));
      env.OCICRYPT_KEYPROVIDER_CONFIG = file;
    }
    let configLoads = 0;
    return {
      opts: {
        env,
        warn: () => {},
        getConfig: async () => {
          configLoads++;
          return defaultConfig();
        },
        getKek: async () => {
          throw new Error('no KEK in this test');
        },
      },
      configLoads: () => configLoads,
    };
  }

  it('orders jwe, pkcs7, then pgp and pkcs11, loading only the schemes the layer uses', async () => {
    const o = options(undefined);
    expect((await buildKeyWrappers(['pkcs11', 'pgp', 'pkcs7', 'jwe'], o.opts)).map((w) => [w.scheme, w.supported])).toEqual([
      ['jwe', true],
      ['pkcs7', true],
      ['pgp', false],
      ['pkcs11', false],
    ]);
    expect((await buildKeyWrappers(['jwe'], o.opts)).map((w) => w.scheme)).toEqual(['jwe']);
    expect(o.configLoads()).toBe(0); // no key-provider annotation: the config is not even read
  });

  it('puts configured key providers (file order) before the in-process attestation-agent', async () => {
    const o = options({ toy: { cmd: { path: TOY } }, other: { cmd: { path: TOY } } });
    const wrappers = await buildKeyWrappers(['jwe', 'provider.attestation-agent', 'pgp'], o.opts);
    expect(wrappers.map((w) => w.scheme)).toEqual(['jwe', 'provider.toy', 'provider.other', 'provider.attestation-agent', 'pgp']);
    expect(o.configLoads()).toBe(1);
    // The in-process wrapper parses a CoCo annotation packet; it does not run a command.
    const aa = wrappers[3]!;
    await expect(aa.unwrap(Buffer.from('{"not":"a packet"}'), ctx({}))).rejects.toThrow();
  });

  it('lets an operator-configured external attestation-agent provider win over the in-process one', async () => {
    const o = options({ 'attestation-agent': { cmd: { path: TOY } } });
    const wrappers = await buildKeyWrappers(['provider.attestation-agent'], o.opts);
    expect(wrappers.map((w) => w.scheme)).toEqual(['provider.attestation-agent']);
    // The toy provider is an identity wrap: the external command answered, not the KBS client.
    const privopts = Buffer.from('{"symkey":"x"}');
    expect((await wrappers[0]!.unwrap(privopts, ctx({})))?.privopts).toEqual(privopts);
  });

  it('adds no attestation-agent wrapper when the layer has no such annotation', async () => {
    const o = options({ toy: { cmd: { path: TOY } } });
    expect((await buildKeyWrappers(['provider.toy'], o.opts)).map((w) => w.scheme)).toEqual(['provider.toy']);
  });
});
