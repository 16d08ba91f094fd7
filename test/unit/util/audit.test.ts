/**
 * The audit log (one line per layer, text or JSON, to `log.file` and/or syslog) and the stderr logger: the line
 * formats, O_APPEND atomicity across processes, failure records, problems that warn instead of failing, and —
 * through the real entry point with the payload on fd 3 — exactly one audit line per decrypted layer, with the
 * token-from-cache flag for KBS keys.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatAuditRecord, writeAudit } from '../../../src/util/audit.js';
import type { AuditRecord } from '../../../src/util/audit.js';
import { createLogger, formatFields } from '../../../src/util/log.js';
import { privateOptionsJson, wrapForAttestationAgent } from '../../helpers/encrypt-image.js';
import { runDecoder } from '../../helpers/run-decoder.js';
import type { PayloadDescriptor } from '../../helpers/payload.js';
import { startTestKbs } from '../../kbs/server.js';
import type { TestKbs } from '../../kbs/server.js';
import { encryptTestLayer, testLayerDescriptor } from '../../helpers/encrypted-layer.js';

const ROOT = join(import.meta.dirname, '../../..');
const FIX = join(ROOT, 'test/fixtures');
const DIGEST = 'sha256:f8e4ef8078faca5978087c80032061f547be0121c3aca869635ab6aa955c8901';
const GZ_ENC = 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted';

let tmp: string;
let n = 0;
const file = (name: string): string => join(tmp, `${++n}-${name}`);

const record = (over: Partial<AuditRecord> = {}): AuditRecord => ({
  time: '2026-01-02T03:04:05.678Z',
  layer: DIGEST,
  mediaType: GZ_ENC,
  scheme: 'provider.attestation-agent',
  kid: 'kbs:///default/image-kek/layer1',
  bytes: 200325,
  durationMs: 41.6,
  tokenFromCache: true,
  result: 'ok',
  ...over,
});

const noWarnings = (): ((m: string) => void) => (m: string) => {
  throw new Error(`unexpected warning: ${m}`);
};

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'coco-audit-'));
});

afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

describe('audit line formats', () => {
  it('text: key=value in a fixed order, undefined fields left out, unsafe values quoted', () => {
    expect(formatAuditRecord(record(), 'text')).toBe(
      `time=2026-01-02T03:04:05.678Z layer=${DIGEST} mediaType=${GZ_ENC} scheme=provider.attestation-agent ` +
        'kid=kbs:///default/image-kek/layer1 bytes=200325 durationMs=42 tokenFromCache=true result=ok',
    );
    expect(formatAuditRecord(record({ scheme: 'jwe', kid: undefined, tokenFromCache: undefined }), 'text')).toBe(
      `time=2026-01-02T03:04:05.678Z layer=${DIGEST} mediaType=${GZ_ENC} scheme=jwe bytes=200325 durationMs=42 result=ok`,
    );
  });

  it('JSON: one object per line with the same fields', () => {
    expect(JSON.parse(formatAuditRecord(record(), 'json'))).toEqual({
      time: '2026-01-02T03:04:05.678Z',
      layer: DIGEST,
      mediaType: GZ_ENC,
      scheme: 'provider.attestation-agent',
      kid: 'kbs:///default/image-kek/layer1',
      bytes: 200325,
      durationMs: 42,
      tokenFromCache: true,
      result: 'ok',
    });
  });

  it('a failure record carries result=error and the one-line error; a hostile digest cannot break the line', () => {
    const failed = record({ result: 'error', bytes: undefined, error: 'call to DecryptLayer failed: missing private key\nsecond line', layer: 'sha256:x\nforged=1' });
    const text = formatAuditRecord(failed, 'text');
    expect(text).not.toContain('\n');
    expect(text).toContain('layer="sha256:x\\nforged=1"');
    expect(text).toMatch(/ result=error error="call to DecryptLayer failed: missing private key; second line"$/);
    expect(JSON.parse(formatAuditRecord(failed, 'json'))).toMatchObject({ result: 'error', error: 'call to DecryptLayer failed: missing private key; second line' });
  });

  it('a token-shaped string in an error is redacted (safety net: errors never carry secrets)', () => {
    const jwt = 'eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJl';
    expect(formatAuditRecord(record({ result: 'error', error: `rejected ${jwt}` }), 'text')).toContain('error="[redacted]"');
  });
});

describe('writing the audit file', () => {
  it('appends one line per record to a file created 0640', async () => {
    const path = file('audit.log');
    await writeAudit(record(), { config: { file: path, syslog: false, format: 'text' }, warn: noWarnings() });
    await writeAudit(record({ result: 'error', error: 'boom' }), { config: { file: path, syslog: false, format: 'text' }, warn: noWarnings() });
    const lines = readFileSync(path, 'utf8').split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[2]).toBe('');
    expect(lines[1]).toMatch(/ result=error error=boom$/);
    expect(statSync(path).mode & 0o777).toBe(0o640 & ~process.umask());
  });

  it('concurrent appends from several processes never interleave', async () => {
    const path = file('concurrent.log');
    const procs = 4;
    const per = 150;
    // Each line ~1.3 KB, well past what a single buffered stdio write would keep whole.
    const child = (id: number): Promise<number | null> =>
      new Promise((resolve, reject) => {
        const code = `
          import { writeAudit } from ${JSON.stringify(join(ROOT, 'src/util/audit.ts'))};
          const warn = (m) => { console.error(m); process.exitCode = 3; };
          for (let i = 0; i < ${per}; i++) {
            await writeAudit({ time: new Date().toISOString(), layer: 'sha256:${id}-' + i, durationMs: i, result: 'error',
              error: '${'x'.repeat(900)} ' + i }, { config: { file: ${JSON.stringify(path)}, syslog: false, format: 'json' }, warn });
          }`;
        const p = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
        const t = setTimeout(() => p.kill('SIGKILL'), 60_000);
        p.on('error', reject);
        p.on('close', (c) => {
          clearTimeout(t);
          resolve(c);
        });
      });
    const codes = await Promise.all(Array.from({ length: procs }, (_, i) => child(i)));
    expect(codes).toEqual(Array(procs).fill(0));
    const lines = readFileSync(path, 'utf8').split('\n');
    expect(lines.pop()).toBe('');
    expect(lines).toHaveLength(procs * per);
    const seen = new Set(lines.map((l) => (JSON.parse(l) as { layer: string }).layer));
    expect(seen.size).toBe(procs * per);
  }, 90_000);

  it('an unusable log file gives a warning, never an error', async () => {
    const warnings: string[] = [];
    await writeAudit(record(), { config: { file: join(tmp, 'missing-dir', 'audit.log'), syslog: false, format: 'text' }, warn: (m) => warnings.push(m) });
    await writeAudit(record(), { config: { file: tmp, syslog: false, format: 'text' }, warn: (m) => warnings.push(m) });
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toMatch(/^audit log .*missing-dir\/audit\.log: cannot append \(.*ENOENT.*\); the layer result is unaffected$/);
    expect(warnings[1]).toMatch(/EISDIR/);
  });
});

describe('syslog', () => {
  const python = ['/usr/bin/python3', '/usr/local/bin/python3', process.env.HOME ? join(process.env.HOME, '.pyenv/shims/python3') : ''].find((p) => p && existsSync(p));

  /** A unix datagram socket (what /dev/log is) that prints the first datagram it gets. */
  function datagramSink(path: string): Promise<{ ready: Promise<void>; message: Promise<string> }> {
    const code = `import socket,sys\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint('ready',flush=True)\ns.settimeout(20)\nprint(s.recv(65536).decode(),flush=True)\n`;
    const p = spawn(python!, ['-c', code, path], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    let ready!: () => void;
    const readyP = new Promise<void>((r) => (ready = r));
    const message = new Promise<string>((resolve) => {
      p.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.startsWith('ready\n')) ready();
      });
      p.on('close', () => resolve(out.replace(/^ready\n/, '').trimEnd()));
    });
    return Promise.resolve({ ready: readyP, message });
  }

  it.skipIf(python === undefined)('sends the line through logger(1) to the datagram socket, tagged, daemon.err for failures', async () => {
    const socket = file('log.sock');
    const sink = await datagramSink(socket);
    await sink.ready;
    await writeAudit(record({ result: 'error', error: 'boom' }), { config: { file: undefined, syslog: true, format: 'json' }, warn: noWarnings(), syslogSocket: socket });
    const msg = await sink.message;
    // <27> = daemon.err; the pid is ours, not logger's.
    expect(msg).toMatch(new RegExp(`^<27>\\w{3} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d coco-decoder\\[${process.pid}\\]: \\{"time":`));
    expect(JSON.parse(msg.slice(msg.indexOf('{')))).toMatchObject({ layer: DIGEST, result: 'error', error: 'boom' });
  }, 30_000);

  it('no syslog socket, or no logger(1): a warning', async () => {
    const warnings: string[] = [];
    await writeAudit(record(), { config: { file: undefined, syslog: true, format: 'text' }, warn: (m) => warnings.push(m), syslogSocket: file('none.sock') });
    await writeAudit(record(), { config: { file: undefined, syslog: true, format: 'text' }, warn: (m) => warnings.push(m), loggerCommand: '/nonexistent/logger' });
    expect(warnings[0]).toMatch(/^audit log to syslog failed \(logger\(1\) exited with 1: .*No such file or directory\)/);
    expect(warnings[1]).toMatch(/logger\(1\) from util-linux is not installed/);
  });

  it('a hung logger is abandoned at the deadline with a warning', async () => {
    const hang = file('hang.sh');
    writeFileSync(hang, '#!/bin/sh\nexec sleep 30\n');
    chmodSync(hang, 0o755);
    const warnings: string[] = [];
    const started = Date.now();
    await writeAudit(record(), { config: { file: undefined, syslog: true, format: 'text' }, warn: (m) => warnings.push(m), loggerCommand: hang, timeoutMs: 300 });
    expect(Date.now() - started).toBeLessThan(5000);
    expect(warnings.join('\n')).toMatch(/writing took longer than 300 ms; gave up|killed by SIGTERM/);
  });
});

describe('stderr logger', () => {
  it('prints nothing below its level, one line per call, fields logfmt-style', () => {
    const lines: string[] = [];
    const log = createLogger('error', (l) => lines.push(l));
    log.warn('skipped key file', { file: '/k/x.pem' });
    expect(lines).toEqual([]);
    log.level = 'debug';
    log.warn('skipped\nkey file', { file: '/k/x y.pem', n: 2, ok: false, none: undefined });
    expect(lines).toEqual(['coco-decoder: warn: skipped; key file file="/k/x y.pem" n=2 ok=false\n']);
  });

  it('never prints a field named like a secret, or a token-shaped value, or a Buffer', () => {
    const out = formatFields({
      key: 'AAAA',
      token: 'abc',
      kid: 'kbs:///a/b/c',
      note: 'eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjF9.c2ln',
      pem: '-----BEGIN PRIVATE KEY-----',
      sneaky: Buffer.from('secret') as unknown as string,
    });
    expect(out).toBe('key="[redacted]" token="[redacted]" kid=kbs:///a/b/c note="[redacted]" pem="[redacted]" sneaky="[omitted]"');
  });
});

// ---------------------------------------------------------------- through the real CLI

interface Layer {
  descriptor: PayloadDescriptor;
  ciphertext: Buffer;
  plaintext: Buffer;
}

/** An attestation-agent layer as coco_keyprovider wraps it (AES-256-GCM under the KBS KEK). */
function aaLayer(kid: string, kek: Buffer): Layer {
  const c = encryptTestLayer(70_000);
  const packet = wrapForAttestationAgent(privateOptionsJson(c.key, '', c.nonce), kid, kek);
  return {
    plaintext: c.plaintext,
    ciphertext: c.ciphertext,
    descriptor: testLayerDescriptor(c, { 'org.opencontainers.image.enc.keys.provider.attestation-agent': Buffer.from(packet).toString('base64') }),
  };
}

/** The real fixture: skopeo's enc-jwe-rsa layer with the exact fd-3 bytes containerd 1.6.20 sent. */
function jweRsaLayer(): { blob: Buffer; payload: Buffer; keys: string } {
  const blob = readFileSync(join(FIX, 'ocicrypt/enc-jwe-rsa/blobs/sha256', DIGEST.slice('sha256:'.length)));
  const keys = file('keys');
  mkdirSync(keys, { mode: 0o700 });
  copyFileSync(join(FIX, 'ocicrypt/keys/rsa-priv.pem'), join(keys, 'rsa-priv.pem'));
  return { blob, payload: readFileSync(join(FIX, 'ocicrypt/containerd-1.6.20-payload-enc-jwe-rsa.bin')), keys };
}

function decode(args: string[], env: Record<string, string>, descriptor: PayloadDescriptor, input: Buffer, payload?: Buffer) {
  return runDecoder({
    binary: process.execPath,
    args: ['--import', 'tsx', join(ROOT, 'src/main.ts'), ...args],
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env },
    descriptor,
    ...(payload ? { payload } : {}),
    input,
    output: 'buffer',
    timeoutMs: 60_000,
  });
}

describe('through the real CLI (payload on fd 3)', () => {
  let kbs: TestKbs;
  const kek = randomBytes(32);
  const kid = 'kbs:///default/image-kek/audit';

  beforeAll(async () => {
    kbs = await startTestKbs({ resources: { 'default/image-kek/audit': kek } });
  });

  afterAll(async () => {
    await kbs?.stop();
  });

  const jweDescriptor: PayloadDescriptor = { mediaType: GZ_ENC, digest: DIGEST, size: 0 };

  it('a layer decrypted with a local key writes exactly one audit line: digest, scheme jwe, bytes; stderr stays empty', async () => {
    const { blob, payload, keys } = jweRsaLayer();
    const audit = file('audit.log');
    const config = file('config.toml');
    writeFileSync(config, `[log]\nfile = "${audit}"\n`);
    const r = await decode(['--decryption-keys-path', keys], { COCO_DECODER_CONFIG: config }, jweDescriptor, blob, payload);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = readFileSync(audit, 'utf8').trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      new RegExp(`^time=\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z layer=${DIGEST} mediaType=application/vnd\\.oci\\.image\\.layer\\.v1\\.tar\\+gzip\\+encrypted descriptor=payload scheme=jwe bytes=${r.stdout!.length} durationMs=\\d+ result=ok$`),
    );
    expect(r.stdout!.length).toBeGreaterThan(0);
  }, 60_000);

  it('a failed layer writes a result=error line (JSON) and still exactly one error line on stderr', async () => {
    const { blob, payload } = jweRsaLayer();
    const audit = file('audit.json');
    const config = file('config.toml');
    writeFileSync(config, `[log]\nfile = "${audit}"\nformat = "json"\n`);
    const r = await decode([], { COCO_DECODER_CONFIG: config }, jweDescriptor, blob, payload);
    expect(r.code).toBe(1);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    const lines = readFileSync(audit, 'utf8').trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    const rec = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(rec).toMatchObject({ layer: DIGEST, mediaType: GZ_ENC, result: 'error' });
    expect(rec['error']).toMatch(/^call to DecryptLayer failed: missing private key needed for decryption/);
    expect(rec['bytes']).toBeUndefined();
  }, 60_000);

  it('KBS layers: scheme, kid and tokenFromCache (false when attesting, true from the cache on the next layer)', async () => {
    const cache = file('cache');
    const audit = file('audit.log');
    const config = file('config.toml');
    writeFileSync(
      config,
      `[kbs]\nurl = "${kbs.url}"\nallow_http = true\n[attestation]\ntee = "sample"\n[cache]\ndir = "${cache}"\n[log]\nfile = "${audit}"\nformat = "json"\n`,
    );
    for (const _ of [1, 2]) {
      const layer = aaLayer(kid, kek);
      const r = await decode([], { COCO_DECODER_CONFIG: config }, layer.descriptor, layer.ciphertext);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout!.equals(layer.plaintext)).toBe(true);
    }
    const recs = readFileSync(audit, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(recs).toHaveLength(2);
    expect(recs.map((x) => [x['scheme'], x['kid'], x['bytes'], x['tokenFromCache'], x['result']])).toEqual([
      ['provider.attestation-agent', kid, 70_000, false, 'ok'],
      ['provider.attestation-agent', kid, 70_000, true, 'ok'],
    ]);
    expect(readFileSync(audit, 'utf8')).not.toContain(kek.toString('base64'));
  }, 90_000);

  it('an unwritable audit log never fails the layer: silent by default, one warning at log.level = "warn"', async () => {
    const { blob, payload, keys } = jweRsaLayer();
    for (const level of ['error', 'warn']) {
      const config = file('config.toml');
      writeFileSync(config, `[log]\nfile = "${join(tmp, 'no-such-dir', 'audit.log')}"\nlevel = "${level}"\n`);
      const r = await decode(['--decryption-keys-path', keys], { COCO_DECODER_CONFIG: config }, jweDescriptor, blob, payload);
      expect(r.code).toBe(0);
      if (level === 'error') expect(r.stderr).toBe('');
      else expect(r.stderr).toMatch(/^coco-decoder: warn: audit log .*no-such-dir\/audit\.log: cannot append \(.*ENOENT.*\); the layer result is unaffected\n$/);
    }
  }, 60_000);

  it('log.level from the config applies to local-key layers too; --log-level wins', async () => {
    const { blob, payload, keys } = jweRsaLayer();
    const config = file('config.toml');
    writeFileSync(config, '[log]\nlevel = "info"\n');
    const info = await decode(['--decryption-keys-path', keys], { COCO_DECODER_CONFIG: config }, jweDescriptor, blob, payload);
    expect(info.code).toBe(0);
    expect(info.stderr).toBe(`coco-decoder: info: layer decrypted layer=${DIGEST} bytes=${info.stdout!.length}\n`);
    const quiet = await decode(['--decryption-keys-path', keys, '--log-level', 'error'], { COCO_DECODER_CONFIG: config }, jweDescriptor, blob, payload);
    expect(quiet.stderr).toBe('');
  }, 60_000);
});
