import { createDecipheriv, createHmac } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DecoderError } from '../../../src/util/errors.js';
import type { DecryptParameters, KeyWrapper, UnwrapContext } from '../../../src/ocicrypt/keywrap/keywrapper.js';
import { loadKeyProviderWrappers } from '../../../src/ocicrypt/keywrap/keyprovider.js';
import {
  loadKeyProviderConfig,
  parseKeyProviderConfig,
  UNSUPPORTED_INVOCATION,
} from '../../../src/ocicrypt/keyprovider/config.js';
import {
  goString,
  marshalUnwrapInput,
  parseUnwrapOutput,
  withoutKeyMaterial,
} from '../../../src/ocicrypt/keyprovider/protocol.js';
import { runProviderCommand } from '../../../src/ocicrypt/keyprovider/cmd.js';
import { unwrapEntry } from '../../helpers/unwrap-entry.js';

const FIX = resolve(__dirname, '../../fixtures/ocicrypt-v1.3.1');
const TOY = join(FIX, 'keyprovider-toy');
const TOY_PROVIDER = join(TOY, 'provider.sh');
const toyDescriptor = JSON.parse(readFileSync(join(TOY, 'descriptor.json'), 'utf8')) as {
  annotations: Record<string, string>;
};
const TOY_ANNOTATION = toyDescriptor.annotations['org.opencontainers.image.enc.keys.provider.toy']!;
const TOY_PUBOPTS = toyDescriptor.annotations['org.opencontainers.image.enc.pubopts']!;

/** The inputs behind keyprovider-unwrap-stdin.json (what ctr-enc with a key and `--key provider:testprov` gives). */
const FIXTURE_PARAMS: DecryptParameters = {
  privkeys: [Buffer.from('PEMDATA')],
  'privkeys-passwords': [null],
  testprov: [Buffer.from('Enabled')],
};
const FIXTURE_ANNOTATION = Buffer.from('WRAPPED-ANNOTATION-BYTES');

function ctx(params: DecryptParameters = {}, signal: AbortSignal = new AbortController().signal): UnwrapContext {
  return { params, layerDigest: 'sha256:test', signal };
}

/** AES-256-CTR + HMAC-SHA256 over the ciphertext (ocicrypt's layer cipher), for checking an unwrapped privopts. */
function decryptLayer(privopts: Buffer, ciphertext: Buffer, pubopts: { hmac: string }): Buffer {
  const opts = JSON.parse(privopts.toString('utf8')) as { symkey: string; cipheroptions: { nonce: string } };
  const key = Buffer.from(opts.symkey, 'base64');
  const nonce = Buffer.from(opts.cipheroptions.nonce, 'base64');
  const mac = createHmac('sha256', key).update(ciphertext).digest();
  expect(mac.toString('base64')).toBe(pubopts.hmac);
  const d = createDecipheriv('aes-256-ctr', key, nonce);
  return Buffer.concat([d.update(ciphertext), d.final()]);
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kp-test-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function script(name: string, body: string): string {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, 0o755);
  return path;
}

/** Gone, or a zombie waiting for an init that reaps lazily. */
function isDead(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

function configFile(name: string, doc: unknown): string {
  const path = join(dir, name);
  writeFileSync(path, typeof doc === 'string' ? doc : JSON.stringify(doc));
  return path;
}

function wrappersFor(providers: unknown, extraEnv: NodeJS.ProcessEnv = {}, timeoutMs = 10_000) {
  const warnings: string[] = [];
  const path = configFile(`cfg-${Math.random().toString(36).slice(2)}.json`, { 'key-providers': providers });
  const env = { ...process.env, ...extraEnv, OCICRYPT_KEYPROVIDER_CONFIG: path };
  const wrappers = loadKeyProviderWrappers(env, { timeoutMs, warn: (m) => warnings.push(m) });
  return { wrappers, warnings };
}

async function unwrapError(w: KeyWrapper, entry: Buffer, c: UnwrapContext = ctx()): Promise<DecoderError> {
  const err = await unwrapEntry(w, entry, c).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DecoderError);
  return err as DecoderError;
}

describe('keyprovider protocol: the JSON ocicrypt writes', () => {
  it('serialises the unwrap input byte-identically to ocicrypt v1.3.1 (keyprovider-unwrap-stdin.json)', () => {
    const expected = readFileSync(join(FIX, 'keyprovider-unwrap-stdin.json'));
    expect(marshalUnwrapInput(FIXTURE_PARAMS, FIXTURE_ANNOTATION).equals(expected)).toBe(true);
  });

  it('sorts parameter names in Go byte order regardless of insertion order', () => {
    const reversed: DecryptParameters = {
      testprov: [Buffer.from('Enabled')],
      'privkeys-passwords': [null],
      privkeys: [Buffer.from('PEMDATA')],
    };
    const expected = readFileSync(join(FIX, 'keyprovider-unwrap-stdin.json'));
    expect(marshalUnwrapInput(reversed, FIXTURE_ANNOTATION).equals(expected)).toBe(true);
    // Byte order, not UTF-16 order: U+FF01 (EF BC 81) sorts before U+1F600 (F0 9F 98 80) in UTF-8 only.
    const text = marshalUnwrapInput({ '\u{1F600}': [], '\uFF01': [] }, Buffer.alloc(0)).toString();
    expect(text.indexOf('\uFF01')).toBeLessThan(text.indexOf('\u{1F600}'));
  });

  it('sends Parameters null when there are none (the CRI case) and an empty annotation as ""', () => {
    expect(marshalUnwrapInput({}, Buffer.alloc(0)).toString()).toBe(
      '{"op":"keyunwrap","keywrapparams":{"ec":null,"optsdata":null},"keyunwrapparams":{"dc":{"Parameters":null},"annotation":""}}',
    );
  });

  it('escapes strings as Go encoding/json does (HTML-safe, \\u2028, lone surrogates)', () => {
    expect(goString('a<b>&"\\\n\r\t\b\f\u0001\u007f\u2028\u2029é\u{1F600}\ud800x')).toBe(
      '"a\\u003cb\\u003e\\u0026\\"\\\\\\n\\r\\t\\b\\f\\u0001\u007f\\u2028\\u2029é\u{1F600}\ufffdx"',
    );
  });

  it('drops every local key-material parameter and keeps the rest', () => {
    const all: DecryptParameters = {
      privkeys: [Buffer.from('k')],
      'privkeys-passwords': [null],
      x509s: [Buffer.from('c')],
      'gpg-privatekeys': [Buffer.from('g')],
      'gpg-privatekeys-passwords': [Buffer.from('p')],
      'pkcs11-yamls': [Buffer.from('y')],
      'pkcs11-config': [Buffer.from('cfg')],
      'attestation-agent': [Buffer.from('Enabled')],
      testprov: [Buffer.from('Enabled')],
    };
    expect(Object.keys(withoutKeyMaterial(all)).sort()).toEqual(['attestation-agent', 'testprov']);
  });
});

describe('keyprovider protocol: parsing the provider output', () => {
  const P = 'Error while unmarshalling binary executable command output';
  const privopts = readFileSync(join(FIX, 'privopts.json'));

  it('accepts optsdata as std base64 (Go providers)', () => {
    const out = Buffer.from(JSON.stringify({ keyunwrapresults: { optsdata: privopts.toString('base64') } }));
    expect(parseUnwrapOutput(out, P)?.equals(privopts)).toBe(true);
  });

  it('accepts optsdata as an array of byte values (Rust providers: CoCo keyprovider, ocicrypt-rs)', () => {
    const out = Buffer.from(JSON.stringify({ keyunwrapresults: { optsdata: [...privopts] } }));
    expect(parseUnwrapOutput(out, P)?.equals(privopts)).toBe(true);
  });

  it('matches field names case-insensitively like Go', () => {
    const out = Buffer.from(JSON.stringify({ KeyUnwrapResults: { OptsData: privopts.toString('base64') } }));
    expect(parseUnwrapOutput(out, P)?.equals(privopts)).toBe(true);
  });

  it('treats missing or null optsdata as "not this one"', () => {
    for (const doc of ['{}', 'null', '{"keyunwrapresults":null}', '{"keyunwrapresults":{}}', '{"keyunwrapresults":{"optsdata":null}}']) {
      expect(parseUnwrapOutput(Buffer.from(doc), P)).toBeNull();
    }
  });

  it('rejects non-JSON output with the upstream prefix and without quoting the output', () => {
    expect(() => parseUnwrapOutput(Buffer.from('SECRET-KEY-MATERIAL'), P)).toThrow(
      `${P}: output is not valid JSON (19 bytes)`,
    );
    expect(() => parseUnwrapOutput(Buffer.alloc(0), P)).toThrow(`${P}: unexpected end of JSON input`);
  });

  it('rejects malformed optsdata', () => {
    const bad = [
      '{"keyunwrapresults":{"optsdata":"not base64!"}}',
      '{"keyunwrapresults":{"optsdata":[1,256]}}',
      '{"keyunwrapresults":{"optsdata":[1.5]}}',
      '{"keyunwrapresults":{"optsdata":7}}',
      '{"keyunwrapresults":{"optsdata":""}}',
      '{"keyunwrapresults":[]}',
      '[]',
    ];
    for (const doc of bad) expect(() => parseUnwrapOutput(Buffer.from(doc), P), doc).toThrow(P);
  });
});

describe('keyprovider config ($OCICRYPT_KEYPROVIDER_CONFIG)', () => {
  const noWarn = (m: string): never => {
    throw new Error(`unexpected warning ${m}`);
  };

  it('has no providers when the variable is unset or the file does not exist', () => {
    expect(loadKeyProviderConfig({}, noWarn)).toEqual([]);
    expect(loadKeyProviderConfig({ OCICRYPT_KEYPROVIDER_CONFIG: join(dir, 'absent.json') }, noWarn)).toEqual([]);
  });

  it('warns and has no providers on invalid JSON or a field of the wrong type, without echoing the file', () => {
    for (const [i, text] of ['{"key-providers": {"a": {"cmd": ', '{"key-providers":{"a":{"cmd":{"path":5}}}}'].entries()) {
      const warnings: string[] = [];
      const path = configFile(`bad${i}.json`, text);
      expect(loadKeyProviderConfig({ OCICRYPT_KEYPROVIDER_CONFIG: path }, (m) => warnings.push(m))).toEqual([]);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/^Error while parsing keyprovider config file: /);
    }
    expect(() => parseKeyProviderConfig('{"key-providers":{"a":{"cmd":{"path":5}}}}')).toThrow(
      'key-providers.a.cmd.path must be a string',
    );
    expect(() => parseKeyProviderConfig('{"key-providers":{"a":{"grpc":"h:1","grpc-tls":{"insecure-skip-verify":"true"}}}}')).toThrow(
      'insecure-skip-verify must be a boolean',
    );
  });

  it('parses cmd and grpc providers; cmd wins when both are given; keys match case-insensitively', () => {
    const entries = parseKeyProviderConfig(
      JSON.stringify({
        'Key-Providers': {
          a: { cmd: { path: '/bin/a', args: ['--x'] } },
          b: { grpc: '127.0.0.1:15300' },
          both: { CMD: { path: '/bin/both' }, grpc: '127.0.0.1:15300' },
          tls: {
            grpc: 'kp:443',
            'grpc-tls': { 'root-ca-file': '/ca.pem', 'server-name': 'kp', 'insecure-skip-verify': false },
          },
        },
      }),
    );
    expect(entries).toEqual([
      { name: 'a', invocation: { kind: 'cmd', path: '/bin/a', args: ['--x'] } },
      { name: 'b', invocation: { kind: 'grpc', address: '127.0.0.1:15300', tls: undefined } },
      { name: 'both', invocation: { kind: 'cmd', path: '/bin/both', args: [] } },
      {
        name: 'tls',
        invocation: {
          kind: 'grpc',
          address: 'kp:443',
          tls: { rootCaFile: '/ca.pem', certFile: undefined, keyFile: undefined, serverName: 'kp', insecureSkipVerify: false },
        },
      },
    ]);
  });

  it('a provider with neither cmd nor grpc fails with the upstream message when used', async () => {
    // The first example of ocicrypt's docs/keyprovider.md has this shape ("path" without "cmd").
    const { wrappers } = wrappersFor({ isecl: { path: '/usr/lib/isecl' } });
    expect(wrappers.map((w) => w.scheme)).toEqual(['provider.isecl']);
    const err = await unwrapError(wrappers[0]!, Buffer.from('x'));
    expect(err.message).toBe(UNSUPPORTED_INVOCATION);
  });
});

describe('cmd key provider', () => {
  it('unwraps the toy fixture layer through the real provider.sh; the result decrypts the layer', async () => {
    const { wrappers, warnings } = wrappersFor({ toy: { cmd: { path: TOY_PROVIDER, args: [] } } });
    expect(warnings).toEqual([]);
    const [w] = wrappers;
    expect(w!.scheme).toBe('provider.toy');
    expect(w!.noPossibleKeys({})).toBe(false);
    expect(w!.hasPrivateKeys({ privkeys: [Buffer.from('k')] })).toBe(false);

    const privopts = await unwrapEntry(w!, Buffer.from(TOY_ANNOTATION, 'base64'), ctx());
    expect(privopts).not.toBeNull();
    const pubopts = JSON.parse(Buffer.from(TOY_PUBOPTS, 'base64').toString()) as { hmac: string };
    const plain = decryptLayer(privopts!, readFileSync(join(TOY, 'layer.tar.gz.enc')), pubopts);
    expect(plain.equals(readFileSync(join(FIX, 'layer.tar.gz')))).toBe(true);
  });

  it('strips local keys before sending: the provider sees only non-key parameters', async () => {
    const log = join(dir, 'kp-stdin.log');
    const { wrappers } = wrappersFor({ toy: { cmd: { path: TOY_PROVIDER } } }, { KP_LOG: log });
    await unwrapEntry(wrappers[0]!, FIXTURE_ANNOTATION, ctx(FIXTURE_PARAMS));
    // provider.sh logs its stdin with `echo`, which appends a newline.
    expect(readFileSync(log, 'utf8')).toBe(
      '{"op":"keyunwrap","keywrapparams":{"ec":null,"optsdata":null},"keyunwrapparams":{"dc":{"Parameters":{"testprov":["RW5hYmxlZA=="]}},"annotation":"V1JBUFBFRC1BTk5PVEFUSU9OLUJZVEVT"}}\n',
    );
    await unwrapEntry(wrappers[0]!, FIXTURE_ANNOTATION, ctx({ privkeys: [Buffer.from('PEMDATA')], 'privkeys-passwords': [null] }));
    expect(readFileSync(log, 'utf8')).toContain('"dc":{"Parameters":null}');
  });

  it('accepts a Rust-style provider answering with a byte array', async () => {
    const rust = script(
      'rust-style.sh',
      `exec python3 -c 'import sys,json,base64; d=json.load(sys.stdin); print(json.dumps({"keyunwrapresults":{"optsdata":list(base64.b64decode(d["keyunwrapparams"]["annotation"]))}}))'`,
    );
    const { wrappers } = wrappersFor({ rust: { cmd: { path: rust } } });
    const entry = Buffer.from(TOY_ANNOTATION, 'base64');
    expect((await unwrapEntry(wrappers[0]!, entry, ctx()))?.equals(entry)).toBe(true);
  });

  it('returns null when the provider answers without optsdata', async () => {
    const p = script('empty.sh', `cat >/dev/null; echo '{"keyunwrapresults":{}}'`);
    const { wrappers } = wrappersFor({ e: { cmd: { path: p } } });
    expect(await unwrapEntry(wrappers[0]!, Buffer.from('x'), ctx())).toBeNull();
  });

  it('passes the configured args', async () => {
    const p = script('args.sh', `cat >/dev/null; [ "$1" = one ] && [ "$2" = "two words" ] && echo '{}' || exit 9`);
    const { wrappers } = wrappersFor({ a: { cmd: { path: p, args: ['one', 'two words'] } } });
    expect(await unwrapEntry(wrappers[0]!, Buffer.from('x'), ctx())).toBeNull();
  });

  it('reports a non-zero exit with the provider stderr, as upstream', async () => {
    const p = script('fail.sh', 'cat >/dev/null; echo boom >&2; exit 3');
    const { wrappers } = wrappersFor({ f: { cmd: { path: p } } });
    const err = await unwrapError(wrappers[0]!, Buffer.from('x'));
    expect(err.message).toBe(`Error while running command: ${p}. stderr: boom: exit status 3`);
  });

  it('reports a missing executable like Go exec does', async () => {
    const { wrappers } = wrappersFor({ m: { cmd: { path: '/nonexistent/bin' } } });
    const err = await unwrapError(wrappers[0]!, Buffer.from('x'));
    expect(err.message).toBe('Error while running command: /nonexistent/bin. stderr: : fork/exec /nonexistent/bin: no such file or directory');
  });

  it('reports non-JSON output with the upstream prefix', async () => {
    const p = script('garbage.sh', 'cat >/dev/null; echo not-json');
    const { wrappers } = wrappersFor({ g: { cmd: { path: p } } });
    const err = await unwrapError(wrappers[0]!, Buffer.from('x'));
    expect(err.message).toBe('Error while unmarshalling binary executable command output: output is not valid JSON (9 bytes)');
  });

  it('kills a provider that hangs (and its children) at the deadline', async () => {
    const pidFile = join(dir, 'hang.pid');
    const p = script('hang.sh', `sleep 30 & echo $! > '${pidFile}'; wait`);
    const { wrappers } = wrappersFor({ h: { cmd: { path: p } } }, {}, 400);
    const started = Date.now();
    const err = await unwrapError(wrappers[0]!, Buffer.from('x'));
    expect(Date.now() - started).toBeLessThan(5000);
    expect(err.message).toBe(`Error while running command: ${p}. stderr: : no answer within 400 ms (timed out; process killed)`);
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    await new Promise((r) => setTimeout(r, 100));
    expect(isDead(grandchild)).toBe(true);
  });

  it('SIGKILLs a provider that ignores SIGTERM after the grace period', async () => {
    const p = script('stubborn.sh', `trap '' TERM; while :; do sleep 0.1; done`);
    const started = Date.now();
    const err = await runProviderCommand({ path: p, args: [] }, Buffer.from('{}'), { timeoutMs: 200, killGraceMs: 200 }).catch(
      (e: unknown) => e as Error,
    );
    expect((err as Error).message).toContain('timed out; process killed');
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it('stops at the caller abort signal', async () => {
    const p = script('slow.sh', 'exec sleep 30');
    const { wrappers } = wrappersFor({ s: { cmd: { path: p } } });
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('layer deadline')), 200);
    const err = await unwrapError(wrappers[0]!, Buffer.from('x'), ctx({}, ac.signal));
    expect(err.message).toContain('aborted (layer deadline; process killed)');
  });

  it('bounds stdout and stderr', async () => {
    const p = script('chatty.sh', `cat >/dev/null; head -c 100000 /dev/zero | tr '\\0' e >&2; head -c 3000000 /dev/zero`);
    const err = (await runProviderCommand({ path: p, args: [] }, Buffer.alloc(0), { timeoutMs: 10_000 }).catch(
      (e: unknown) => e,
    )) as Error;
    expect(err.message).toMatch(/output exceeds 1048576 bytes \(process killed\)$/);
    expect(err.message.length).toBeLessThan(4096 + 300);
  });
});
