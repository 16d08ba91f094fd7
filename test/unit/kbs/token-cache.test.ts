/**
 * The cross-process token cache and attestation lock: file modes and ownership, untrusted files ignored and
 * replaced, no KEK on disk, reuse until `exp - refresh margin`, a new key pair per attestation, scope separation,
 * and real concurrent processes producing exactly one `/attest` (also when the lock holder is killed).
 */
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash } from 'node:crypto';
import { realpathSync, chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, statfsSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { TokenCache } from '../../../src/kbs/token-cache.js';
import { findNobody, stageForUnprivileged } from '../../helpers/unprivileged.js';
import type { Config } from '../../../src/config/types.js';
import { createKeySource } from '../../../src/kbs/key-source.js';
import type { KeySource } from '../../../src/kbs/key-source.js';
import { parseResourceUri } from '../../../src/kbs/resource-uri.js';
import { startTestKbs } from '../../kbs/server.js';
import type { TestKbs, TestKbsOptions } from '../../kbs/server.js';
import { KEK, KID, KID_PATH, makeTempDir, removeDir, testConfig } from '../../helpers/kbs-helpers.js';

const uri = parseResourceUri(KID);
const CHILD = join(import.meta.dirname, '../../helpers/kbs-child.ts');
const servers: TestKbs[] = [];
const dirs: string[] = [];
const sources: KeySource[] = [];
const children: ChildProcessWithoutNullStreams[] = [];

async function startKbs(opts: TestKbsOptions = {}): Promise<TestKbs> {
  const k = await startTestKbs({ resources: { [KID_PATH]: KEK }, ...opts });
  servers.push(k);
  return k;
}

/** A not-yet-existing cache dir inside a fresh mkdtemp directory (under os.tmpdir(), or `base`). */
function cacheDir(base?: string): string {
  const d = base ? mkdtempSync(join(base, 'coco-kbs-')) : makeTempDir();
  dirs.push(d);
  return join(d, 'cache');
}

const TMPFS_MAGIC = 0x01021994;
const tmpIsTmpfs = statfsSync(tmpdir()).type === TMPFS_MAGIC;
const shmIsTmpfs = existsSync('/dev/shm') && statfsSync('/dev/shm').type === TMPFS_MAGIC;

function source(config: Config, warnings?: string[]): KeySource {
  const s = createKeySource({ config, env: {}, onWarning: (m) => warnings?.push(m) });
  sources.push(s);
  return s;
}

async function fetchOnce(config: Config, warnings?: string[]) {
  return source(config, warnings).getResource(uri);
}

function tokenFile(dir: string): string {
  const files = readdirSync(dir).filter((f) => /^token-[0-9a-f]+\.json$/.test(f));
  expect(files).toHaveLength(1);
  return join(dir, files[0]!);
}

afterEach(async () => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  for (const s of sources.splice(0)) await s.close();
  for (const k of servers.splice(0)) await k.stop();
  for (const d of dirs.splice(0)) removeDir(d);
});

describe('cache files', () => {
  it('creates the directory 0700 and the token file 0600, owned by us', async () => {
    const k = await startKbs();
    const dir = cacheDir();
    await fetchOnce(testConfig(k.url, dir));
    const uid = process.getuid!();
    const d = lstatSync(dir);
    expect(d.mode & 0o777).toBe(0o700);
    expect(d.uid).toBe(uid);
    const f = lstatSync(tokenFile(dir));
    expect(f.isFile()).toBe(true);
    expect(f.mode & 0o777).toBe(0o600);
    expect(f.uid).toBe(uid);
    // No leftover temporary files from the atomic write; beside the token only its (empty, 0600) attestation lock.
    const token = tokenFile(dir).split('/').pop()!;
    expect(readdirSync(dir).sort()).toEqual([token, `${token}.lock`]);
    const l = lstatSync(join(dir, `${token}.lock`));
    expect([l.isFile(), l.size, l.mode & 0o777, l.uid]).toEqual([true, 0, 0o600, uid]);
  });

  it('tightens an existing cache directory to 0700', async () => {
    const k = await startKbs();
    const dir = cacheDir();
    mkdirSync(dir, { mode: 0o755 });
    chmodSync(dir, 0o755);
    await fetchOnce(testConfig(k.url, dir));
    expect(statSync(dir).mode & 0o777).toBe(0o700);
  });

  it('never writes the KEK to the cache directory (raw, hex or base64)', async () => {
    const k = await startKbs();
    const dir = cacheDir();
    await fetchOnce(testConfig(k.url, dir));
    await fetchOnce(testConfig(k.url, dir, (c) => (c.kbs.teeKeyAlgorithm = 'rsa-oaep-256')));
    const files = readdirSync(dir);
    expect(files).toHaveLength(4); // two tokens and their lock files
    const forms = [KEK, Buffer.from(KEK.toString('hex')), Buffer.from(KEK.toString('base64')), Buffer.from(KEK.toString('base64url'))];
    for (const f of files) {
      const bytes = readFileSync(join(dir, f));
      for (const form of forms) expect(bytes.includes(form)).toBe(false);
    }
  });

  it.skipIf(tmpIsTmpfs)('warns (without failing) when cache.dir is not on tmpfs', async () => {
    const k = await startKbs();
    const warnings: string[] = [];
    expect((await fetchOnce(testConfig(k.url, cacheDir()), warnings)).data.equals(KEK)).toBe(true);
    expect(warnings.some((w) => /is not on tmpfs/.test(w))).toBe(true);
  });

  it.skipIf(!shmIsTmpfs)('does not warn on tmpfs (/dev/shm)', async () => {
    const k = await startKbs();
    const warnings: string[] = [];
    await fetchOnce(testConfig(k.url, cacheDir('/dev/shm')), warnings);
    expect(warnings).toEqual([]);
  });
});

describe('untrusted cache files are ignored and replaced', () => {
  async function primed(): Promise<{ k: TestKbs; dir: string; file: string; config: Config }> {
    const k = await startKbs();
    const dir = cacheDir();
    const config = testConfig(k.url, dir);
    await fetchOnce(config);
    return { k, dir, file: tokenFile(dir), config };
  }

  it('corrupt JSON', async () => {
    const { k, file, config } = await primed();
    writeFileSync(file, '{"format":1,"token":');
    const warnings: string[] = [];
    const r = await fetchOnce(config, warnings);
    expect(r.data.equals(KEK)).toBe(true);
    expect(r.attested).toBe(true);
    expect(warnings.join('\n')).toMatch(/ignoring token cache file .*not valid JSON; it will be replaced/);
    expect(k.counters.attest).toBe(2);
    JSON.parse(readFileSync(file, 'utf8'));
    expect((await fetchOnce(config)).tokenFromCache).toBe(true);
  });

  it('a file readable by others (mode 0644)', async () => {
    const { k, file, config } = await primed();
    chmodSync(file, 0o644);
    const warnings: string[] = [];
    expect((await fetchOnce(config, warnings)).attested).toBe(true);
    expect(warnings.join('\n')).toMatch(/mode 644 instead of 600/);
    expect(lstatSync(file).mode & 0o777).toBe(0o600);
    expect(k.counters.attest).toBe(2);
  });

  it.skipIf(process.getuid?.() !== 0)('a file owned by another user', async () => {
    const { k, file, config } = await primed();
    chownSync(file, 65534, 65534);
    const warnings: string[] = [];
    expect((await fetchOnce(config, warnings)).attested).toBe(true);
    expect(warnings.join('\n')).toMatch(/owned by uid 65534/);
    expect(lstatSync(file).uid).toBe(0);
    expect(k.counters.attest).toBe(2);
  });

  it('a symlink in place of the file (its target is neither read nor touched)', async () => {
    const { k, dir, file, config } = await primed();
    const target = join(dir, '..', 'elsewhere.json');
    writeFileSync(target, readFileSync(file), { mode: 0o600 });
    const { unlinkSync } = await import('node:fs');
    unlinkSync(file);
    symlinkSync(target, file);
    const warnings: string[] = [];
    expect((await fetchOnce(config, warnings)).attested).toBe(true);
    expect(warnings.join('\n')).toMatch(/not a regular file/);
    expect(lstatSync(file).isSymbolicLink()).toBe(false);
    expect(k.counters.attest).toBe(2);
  });

  it('a well-formed file whose private key is of another type', async () => {
    const { k, file, config } = await primed();
    const doc = JSON.parse(readFileSync(file, 'utf8'));
    const { generateKeyPairSync } = await import('node:crypto');
    doc.privateKey = generateKeyPairSync('ed25519').privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64');
    writeFileSync(file, JSON.stringify(doc));
    const warnings: string[] = [];
    expect((await fetchOnce(config, warnings)).attested).toBe(true);
    expect(warnings.join('\n')).toMatch(/private key does not match/);
    expect(k.counters.attest).toBe(2);
  });
});

describe('token lifetime and key pairs', () => {
  it('reuses a token until exp - cache.refresh_margin_seconds', async () => {
    const k = await startKbs({ tokenTtlSeconds: 20 });
    const reuse = cacheDir();
    await fetchOnce(testConfig(k.url, reuse, (c) => (c.cache.refreshMarginSeconds = 5)));
    expect((await fetchOnce(testConfig(k.url, reuse, (c) => (c.cache.refreshMarginSeconds = 5)))).tokenFromCache).toBe(true);
    expect(k.counters.attest).toBe(1);
    // A margin larger than the token's lifetime: the token is always "about to expire" and is refreshed.
    const refresh = cacheDir();
    await fetchOnce(testConfig(k.url, refresh, (c) => (c.cache.refreshMarginSeconds = 30)));
    expect((await fetchOnce(testConfig(k.url, refresh, (c) => (c.cache.refreshMarginSeconds = 30)))).attested).toBe(true);
    expect(k.counters.attest).toBe(3);
  });

  it('regenerates the key pair with every attestation', async () => {
    const k = await startKbs();
    const dir = cacheDir();
    const config = testConfig(k.url, dir);
    await fetchOnce(config);
    const before = JSON.parse(readFileSync(tokenFile(dir), 'utf8'));
    k.expireAllTokens();
    await fetchOnce(config);
    const after = JSON.parse(readFileSync(tokenFile(dir), 'utf8'));
    expect(after.token).not.toBe(before.token);
    expect(after.privateKey).not.toBe(before.privateKey);
    const pubKeyOf = (token: string) =>
      JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).submods.cpu0['ear.veraison.annotated-evidence'].runtime_data_claims['tee-pubkey'];
    expect(pubKeyOf(after.token)).not.toEqual(pubKeyOf(before.token));
  });

  it('keeps tokens of different KBSes apart', async () => {
    const a = await startKbs();
    const b = await startKbs();
    const dir = cacheDir();
    await fetchOnce(testConfig(a.url, dir));
    await fetchOnce(testConfig(b.url, dir));
    await fetchOnce(testConfig(a.url, dir));
    await fetchOnce(testConfig(b.url, dir));
    expect([a.counters.attest, b.counters.attest]).toEqual([1, 1]);
    expect(readdirSync(dir).filter((f) => f.endsWith('.json'))).toHaveLength(2);
  });
});

describe('concurrent layer processes', () => {
  interface ChildResult {
    ok: boolean;
    attested?: boolean;
    tokenFromCache?: boolean;
    kekSha256?: string;
    error?: string;
  }

  function startChild(config: Config): { child: ChildProcessWithoutNullStreams; ready: Promise<void>; result: Promise<ChildResult> } {
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(config), KID], {
      cwd: join(import.meta.dirname, '../../..'),
      stdio: 'pipe',
      timeout: 25_000,
    });
    children.push(child);
    const lines = createInterface({ input: child.stdout });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const it = lines[Symbol.asyncIterator]();
    const next = async (): Promise<string> => {
      const { value, done } = await it.next();
      if (done) throw new Error(`child exited early: ${stderr}`);
      return value as string;
    };
    const ready = next().then((l) => expect(l).toBe('ready'));
    const result = ready.then(async () => JSON.parse(await next()) as ChildResult);
    result.catch(() => undefined);
    return { child, ready, result };
  }

  const kekHash = createHash('sha256').update(KEK).digest('hex');

  it('6 processes started together cause exactly one /attest and all get the KEK', async () => {
    const k = await startKbs();
    k.faults.delayMs = 150; // keep the attestation in flight while the others arrive
    const config = testConfig(k.url, cacheDir());
    const procs = Array.from({ length: 6 }, () => startChild(config));
    await Promise.all(procs.map((p) => p.ready));
    for (const p of procs) p.child.stdin.write('go\n');
    const results = await Promise.all(procs.map((p) => p.result));
    expect(results.every((r) => r.ok && r.kekSha256 === kekHash)).toBe(true);
    expect(results.filter((r) => r.attested)).toHaveLength(1);
    expect(k.counters).toMatchObject({ auth: 1, attest: 1, resource: 6, resourceOk: 6 });
  }, 60_000);

  // The old lock was an abstract unix socket: any local user could bind its name and make every cold pull wait
  // out cache.lock_timeout_ms. The flock lives in the 0700 cache directory, out of an unprivileged user's reach.
  const nobody = findNobody();
  it.skipIf('skip' in nobody)(`a squatter running as nobody changes nothing${'skip' in nobody ? `: skipped, ${nobody.skip}` : ''}`, async (ctx) => {
    if ('skip' in nobody) return;
    const stage = stageForUnprivileged([process.execPath], 'lock-squatter-');
    if ('skip' in stage) {
      console.warn(`[token-cache] ${stage.skip}`);
      ctx.skip();
      return;
    }
    const k = await startKbs();
    k.faults.delayMs = 100;
    const dir = cacheDir();
    const config = testConfig(k.url, dir, (c) => (c.cache.lockTimeoutMs = 20_000));
    const tc = await TokenCache.open({ dir, refreshMarginSeconds: 30, onWarning: () => undefined });
    const scopeFile = tc!.fileFor({ kbsUrl: config.kbs.url!, tee: config.attestation.tee, keyAlgorithm: config.kbs.teeKeyAlgorithm });
    const oldName = `\0coco-decoder/attest/${createHash('sha256').update(`0\n${realpathSync(dir)}\n${scopeFile}`).digest('hex').slice(0, 40)}`;
    const lockFile = `${scopeFile}.lock`;
    // As nobody: squat the old abstract name, and try to open (and so flock) the new lock file.
    const squatter = spawn(
      stage.staged.get(process.execPath)!,
      [
        '-e',
        `const fs=require('fs');let r;try{fs.openSync(${JSON.stringify(lockFile)},fs.constants.O_RDWR|fs.constants.O_CREAT);r='opened'}catch(e){r=e.code}` +
          `require('net').createServer(()=>{}).listen({path:${JSON.stringify(oldName)}},()=>console.log(r))`,
      ],
      { uid: nobody.uid, gid: nobody.gid, cwd: stage.dir, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    try {
      const [line] = (await once(squatter.stdout, 'data')) as [Buffer];
      expect(line.toString().trim()).toBe('EACCES');
      const t0 = Date.now();
      const procs = Array.from({ length: 3 }, () => startChild(config));
      await Promise.all(procs.map((p) => p.ready));
      for (const p of procs) p.child.stdin.write('go\n');
      const results = await Promise.all(procs.map((p) => p.result));
      expect(results.every((r) => r.ok && r.kekSha256 === kekHash)).toBe(true);
      expect(k.counters.attest).toBe(1);
      expect(Date.now() - t0).toBeLessThan(10_000); // nowhere near cache.lock_timeout_ms
    } finally {
      squatter.kill('SIGKILL');
      stage.cleanup();
    }
  }, 60_000);

  it('a lock holder killed mid-attestation does not block the others', async () => {
    const k = await startKbs();
    k.faults.delayMs = 1500;
    const config = testConfig(k.url, cacheDir());
    const holder = startChild(config);
    await holder.ready;
    holder.child.stdin.write('go\n');
    for (let i = 0; i < 200 && k.counters.auth === 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(k.counters.auth).toBe(1); // the holder is inside the handshake, holding the lock
    const waiter = startChild(config);
    await waiter.ready;
    waiter.child.stdin.write('go\n');
    await new Promise((r) => setTimeout(r, 200));
    holder.child.kill('SIGKILL');
    const t0 = Date.now();
    const r = await waiter.result;
    expect(r).toMatchObject({ ok: true, attested: true, kekSha256: kekHash });
    // The waiter's own handshake is 3 delayed requests; nothing close to cache.lock_timeout_ms (10 s) was waited.
    expect(Date.now() - t0).toBeLessThan(8000);
  }, 60_000);
});
