/**
 * The host side of the installed-package E2E: builds the .deb when it is stale, installs it with dpkg into the
 * real root, swaps a keys directory into /etc/containerd/ocicrypt/keys, and undoes all of it afterwards.
 *
 * Every change to the real root is written ahead into a journal (a JSON file in os.tmpdir()) before it is made,
 * so a run killed half-way (vitest timeout, Ctrl-C, SIGKILL) is undone by the next run instead of leaving the
 * machine with a test install, or someone's keys moved aside. A coco-decoder package that no journal accounts
 * for is someone's real install: the test refuses to touch it.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, copyFile, lstat, mkdir, readdir, readFile, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from './harness/index.js';

export const PACKAGE = 'coco-decoder';

/** Where the package puts things (packaging/README.md), and the paths its drop-in and config name. */
export const INSTALLED = {
  exe: '/usr/bin/coco-decoder',
  addon: '/usr/lib/coco-decoder/tee.node',
  dropin: '/etc/containerd/conf.d/coco-decoder.toml',
  dropinDir: '/etc/containerd/conf.d',
  config: '/etc/coco-decoder/config.toml',
  configDir: '/etc/coco-decoder',
  tmpfiles: '/usr/lib/tmpfiles.d/coco-decoder.conf',
  man: '/usr/share/man/man1/coco-decoder.1.gz',
  docDir: '/usr/share/doc/coco-decoder',
  /** The token cache directory the tmpfiles.d snippet creates (and the config's default [cache] dir). */
  runDir: '/run/coco-decoder',
  /** The drop-in's --decryption-keys-path. */
  keysDir: '/etc/containerd/ocicrypt/keys',
} as const;

const JOURNAL = path.join(os.tmpdir(), 'coco-decoder-e2e-installed-package.json');
const KEYS_BACKUP = path.join(path.dirname(INSTALLED.keysDir), '.keys.coco-decoder-e2e-backup');
const DPKG_TIMEOUT_MS = 120_000;
/** dpkg refuses to run while apt/dpkg elsewhere holds its lock: wait this long for it. */
const DPKG_LOCK_WAIT_MS = 60_000;

export interface ToolResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a tool with a deadline (SIGKILL after it); rejects only if it cannot start, so callers can show output. */
export function runTool(
  file: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: opts.cwd ?? REPO_ROOT,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: opts.timeoutMs ?? 60_000,
      killSignal: 'SIGKILL',
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => reject(new Error(`${file} ${args.join(' ')}: ${e.message}`)));
    child.on('close', (status, signal) => {
      const stderr = Buffer.concat(err).toString('utf8') + (signal ? `\n(killed by ${signal})` : '');
      resolve({ status, stdout: Buffer.concat(out).toString('utf8'), stderr });
    });
  });
}

/** stdout of a tool that must succeed; otherwise an error with its output. */
export async function mustRun(file: string, args: string[], opts: Parameters<typeof runTool>[2] = {}): Promise<string> {
  const r = await runTool(file, args, opts);
  if (r.status !== 0) throw new Error(`${file} ${args.join(' ')} failed (status ${r.status}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return false;
      throw e;
    },
  );
}

function md5File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('md5');
    createReadStream(file)
      .on('error', reject)
      .on('data', (b) => h.update(b))
      .on('end', () => resolve(h.digest('hex')));
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The .deb

export function packageVersion(): Promise<string> {
  return readFile(path.join(REPO_ROOT, 'package.json'), 'utf8').then((t) => (JSON.parse(t) as { version: string }).version);
}

export async function debPath(): Promise<string> {
  return path.join(REPO_ROOT, 'dist', `${PACKAGE}_${await packageVersion()}_amd64.deb`);
}

/** The md5sums the .deb records for its files (`usr/bin/coco-decoder` → md5), from its control area only. */
export async function debMd5sums(deb: string): Promise<Map<string, string>> {
  const text = await mustRun('dpkg-deb', ['--info', deb, 'md5sums']);
  return new Map(
    text
      .trim()
      .split('\n')
      .map((l) => /^([0-9a-f]{32}) {2}(.+)$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => [m[2]!, m[1]!]),
  );
}

/** Files the .deb is made from (besides dist/coco-decoder and dist/tee.node, compared by content). */
async function packagingInputs(): Promise<string[]> {
  const files = [path.join(REPO_ROOT, 'package.json'), path.join(REPO_ROOT, 'build', 'package.mjs')];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else files.push(p);
    }
  };
  await walk(path.join(REPO_ROOT, 'packaging'));
  return files;
}

/** Why the .deb must be (re)built, or undefined when it is up to date with dist/ and packaging/. */
async function debStaleness(deb: string): Promise<string | undefined> {
  if (!(await exists(deb))) return 'missing';
  const debTime = (await stat(deb)).mtimeMs;
  const exe = path.join(REPO_ROOT, 'dist', 'coco-decoder');
  if ((await stat(exe)).mtimeMs > debTime) return 'older than dist/coco-decoder';
  for (const f of await packagingInputs()) {
    if ((await stat(f)).mtimeMs > debTime) return `older than ${path.relative(REPO_ROOT, f)}`;
  }
  // Same age is not same content (a copy, a clock step): the packaged executable must be this exact file.
  const sums = await debMd5sums(deb);
  if (sums.get('usr/bin/coco-decoder') !== (await md5File(exe))) return 'its usr/bin/coco-decoder is not dist/coco-decoder';
  const addon = path.join(REPO_ROOT, 'dist', 'tee.node');
  const addonSum = (await exists(addon)) ? await md5File(addon) : undefined;
  if (sums.get('usr/lib/coco-decoder/tee.node') !== addonSum) return 'its tee.node is not dist/tee.node';
  return undefined;
}

/**
 * dist/coco-decoder_<version>_amd64.deb, built by build/package.mjs when it is missing or stale. package.mjs
 * builds the .rpm too (it has no deb-only mode): about 40 s on this machine, half of it the rpm.
 */
export async function ensureDeb(opts: { timeoutMs: number }): Promise<{ deb: string; rebuilt?: string; ms: number }> {
  const t0 = performance.now();
  const exe = path.join(REPO_ROOT, 'dist', 'coco-decoder');
  if (!(await exists(exe))) throw new Error(`${exe} is missing: run \`npm run build\` first (npm test does)`);
  const deb = await debPath();
  const why = await debStaleness(deb);
  if (why === undefined) return { deb, ms: performance.now() - t0 };
  const r = await runTool(process.execPath, [path.join(REPO_ROOT, 'build', 'package.mjs')], { timeoutMs: opts.timeoutMs });
  if (r.status !== 0) throw new Error(`build/package.mjs failed (status ${r.status}):\n${r.stdout}${r.stderr}`);
  const still = await debStaleness(deb);
  if (still !== undefined) throw new Error(`build/package.mjs ran but ${path.relative(REPO_ROOT, deb)} is still stale: ${still}`);
  return { deb, rebuilt: why, ms: performance.now() - t0 };
}

// ---------------------------------------------------------------------------------------------------------------
// dpkg on the real root

/** dpkg with its lock waited for (another apt/dpkg may be running), non-interactive, bounded. */
export async function dpkg(args: string[]): Promise<ToolResult> {
  const deadline = Date.now() + DPKG_LOCK_WAIT_MS;
  for (;;) {
    const r = await runTool('dpkg', args, {
      cwd: '/',
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      timeoutMs: DPKG_TIMEOUT_MS,
    });
    const locked = r.status !== 0 && /dpkg (frontend lock|status database is locked)|lock-frontend/.test(r.stderr);
    if (!locked || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, 1_000));
  }
}

/** dpkg's status of the package ("install ok installed", "deinstall ok config-files", ...), or undefined. */
export async function packageStatus(): Promise<string | undefined> {
  const r = await runTool('dpkg-query', ['-W', '-f=${Status}', PACKAGE], { cwd: '/' });
  if (r.status !== 0) return undefined; // "no packages found matching"
  const status = r.stdout.trim();
  return status === '' || / not-installed$/.test(status) ? undefined : status;
}

// ---------------------------------------------------------------------------------------------------------------
// Changes to the real root, journaled

interface Journal {
  pid: number;
  startedAt: string;
  /** Set before `dpkg -i` runs: the package (in whatever state) is ours to purge. */
  installed: boolean;
  /** Set before the keys directory is created: it (and everything in it) is ours to delete. */
  keysOwned: boolean;
  /** Set before the existing keys directory is moved to KEYS_BACKUP: it goes back on undo. */
  keysMovedAside: boolean;
  /** Directories we created (parents first) that must be removed (if empty) on undo. */
  createdDirs: string[];
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes a directory we created if it is empty; reports (does not delete) what someone else put in it. */
async function removeCreatedDir(dir: string, problems: string[]): Promise<void> {
  try {
    await rmdir(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code === 'ENOTEMPTY' || code === 'EEXIST') problems.push(`${dir} was created by this test but is not empty: left in place`);
    else throw e;
  }
}

export class HostChanges {
  private constructor(private journal: Journal) {}

  /**
   * Takes ownership of the real root for this run: undoes what a dead earlier run left behind (its journal),
   * refuses if another run is alive, or if a coco-decoder package or its files are present that no run of this
   * test installed.
   */
  static async begin(): Promise<{ host: HostChanges; recovered: string[] }> {
    const recovered: string[] = [];
    if (await exists(JOURNAL)) {
      const old = JSON.parse(await readFile(JOURNAL, 'utf8')) as Journal;
      if (old.pid !== process.pid && pidAlive(old.pid)) {
        throw new Error(
          `another installed-package E2E run (pid ${old.pid}, started ${old.startedAt}) owns the real root (${JOURNAL}): ` +
            'wait for it, or remove that file if the process is not a test run',
        );
      }
      const problems = await new HostChanges(old).undo();
      if (problems.length > 0) {
        throw new Error(`cannot undo what an interrupted run (pid ${old.pid}) left behind (journal ${JOURNAL}): ${problems.join('; ')}`);
      }
      recovered.push(`undid what an interrupted run (pid ${old.pid}, started ${old.startedAt}) left behind`);
    }
    const status = await packageStatus();
    if (status !== undefined) {
      throw new Error(
        `package ${PACKAGE} is already on this machine (dpkg status "${status}") and this test did not install it: ` +
          `refusing to replace or purge someone's install. Run \`dpkg --purge ${PACKAGE}\` yourself, or run the test on a throwaway machine`,
      );
    }
    for (const p of [INSTALLED.exe, INSTALLED.dropin, INSTALLED.config, INSTALLED.configDir]) {
      if (await exists(p)) {
        throw new Error(`${p} exists but no ${PACKAGE} package is installed (a manual install?): refusing to overwrite it`);
      }
    }
    const journal: Journal = {
      pid: process.pid,
      startedAt: new Date().toISOString(),
      installed: false,
      keysOwned: false,
      keysMovedAside: false,
      createdDirs: [],
    };
    // 'wx': if two runs start at the same instant, only one gets the journal.
    await writeFile(JOURNAL, JSON.stringify(journal), { flag: 'wx', mode: 0o600 });
    return { host: new HostChanges(journal), recovered };
  }

  private async save(change: Partial<Journal>): Promise<void> {
    this.journal = { ...this.journal, ...change };
    await writeFile(JOURNAL, JSON.stringify(this.journal), { mode: 0o600 });
  }

  get installed(): boolean {
    return this.journal.installed;
  }

  /** `dpkg -i` into the real root. */
  async install(deb: string): Promise<ToolResult> {
    await this.save({ installed: true });
    return dpkg(['-i', deb]);
  }

  /** `dpkg --purge`, if this run installed the package and it is still there. */
  async purge(): Promise<ToolResult | undefined> {
    if (!this.journal.installed || (await packageStatus()) === undefined) return undefined;
    const r = await dpkg(['--purge', PACKAGE]);
    if (r.status === 0) await this.save({ installed: false });
    return r;
  }

  /**
   * Makes the drop-in's keys directory hold exactly `keyFiles` (0700 dir, 0600 files). A keys directory that was
   * there before is moved aside (same filesystem, so it comes back untouched, inode and all) until `restoreKeys`.
   */
  async useKeys(keyFiles: string[]): Promise<void> {
    if (!this.journal.keysOwned) {
      const parent = path.dirname(INSTALLED.keysDir);
      const missing: string[] = [];
      for (let d = parent; !(await exists(d)); d = path.dirname(d)) missing.unshift(d);
      for (const d of missing) {
        await this.save({ createdDirs: [...this.journal.createdDirs, d] });
        await mkdir(d, { mode: 0o755 });
      }
      if (await exists(INSTALLED.keysDir)) {
        if (await exists(KEYS_BACKUP)) throw new Error(`${KEYS_BACKUP} exists already: refusing to overwrite it`);
        await this.save({ keysMovedAside: true });
        await rename(INSTALLED.keysDir, KEYS_BACKUP);
      }
      await this.save({ keysOwned: true });
    }
    await rm(INSTALLED.keysDir, { recursive: true, force: true });
    await mkdir(INSTALLED.keysDir, { mode: 0o700 });
    for (const f of keyFiles) {
      const dest = path.join(INSTALLED.keysDir, path.basename(f));
      await copyFile(f, dest);
      await chmod(dest, 0o600);
    }
  }

  /** Puts the keys directory (and its parents) back as they were before `useKeys`. */
  async restoreKeys(): Promise<string[]> {
    const problems: string[] = [];
    if (this.journal.keysOwned) {
      await rm(INSTALLED.keysDir, { recursive: true, force: true });
      await this.save({ keysOwned: false });
    }
    if (this.journal.keysMovedAside) {
      if (await exists(KEYS_BACKUP)) {
        if (await exists(INSTALLED.keysDir)) problems.push(`${INSTALLED.keysDir} reappeared: the original is left at ${KEYS_BACKUP}`);
        else await rename(KEYS_BACKUP, INSTALLED.keysDir);
      }
      if (!(await exists(KEYS_BACKUP))) await this.save({ keysMovedAside: false });
    }
    for (const d of [...this.journal.createdDirs].reverse()) await removeCreatedDir(d, problems);
    await this.save({ createdDirs: [] });
    return problems;
  }

  /**
   * Everything this run changed, undone: keys first (dpkg removes /etc/containerd on purge only if it is empty),
   * then the package. Then the journal goes. Idempotent. Returns problems that need a human.
   */
  async undo(): Promise<string[]> {
    const problems = await this.restoreKeys();
    const purged = await this.purge();
    if (purged && purged.status !== 0) problems.push(`dpkg --purge ${PACKAGE} failed:\n${purged.stdout}${purged.stderr}`);
    if (problems.length === 0) await rm(JOURNAL, { force: true });
    return problems;
  }
}
