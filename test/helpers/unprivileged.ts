/**
 * Running a child as an unprivileged user (`nobody`) from a checkout that user cannot reach: `/root/x`, a 0700
 * `mktemp -d`, a home directory. Whatever the child executes or loads is copied into a fresh directory below a
 * world-traversable base (never the checkout), and removed again by `cleanup()`.
 */
import { accessSync, chmodSync, constants, copyFileSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface UnprivilegedUser {
  uid: number;
  gid: number;
}

/** `nobody` from /etc/passwd, or a reason why there is none to run as. */
export function findNobody(): UnprivilegedUser | { skip: string } {
  if (process.getuid?.() !== 0) return { skip: 'not root: cannot switch to an unprivileged user' };
  let passwd: string;
  try {
    passwd = readFileSync('/etc/passwd', 'utf8');
  } catch {
    return { skip: 'no /etc/passwd' };
  }
  const line = passwd.split('\n').find((l) => l.startsWith('nobody:'));
  const [, , uid, gid] = line?.split(':') ?? [];
  if (uid === undefined || gid === undefined || !/^\d+$/.test(uid) || !/^\d+$/.test(gid)) return { skip: 'no `nobody` user in /etc/passwd' };
  return { uid: Number(uid), gid: Number(gid) };
}

/** Every directory from `dir` up to `/` is searchable by others (mode o+x). */
export function traversableByOthers(dir: string): boolean {
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    if ((statSync(d).mode & 0o001) === 0) return false;
    if (d === path.dirname(d)) return true;
  }
}

/** The first candidate base that others can traverse: $TMPDIR (os.tmpdir()), then /tmp, then /var/tmp. */
export function worldTraversableBase(): string | undefined {
  for (const base of [tmpdir(), '/tmp', '/var/tmp']) {
    try {
      accessSync(base, constants.W_OK);
      if (traversableByOthers(base)) return base;
    } catch {
      // not there or not writable: try the next one
    }
  }
  return undefined;
}

export interface StagedDir {
  /** 0755, below a world-traversable base. */
  dir: string;
  /** The staged copy of each source file, by the source path. */
  staged: Map<string, string>;
  cleanup(): void;
}

/** Copies `files` (mode kept, made world-readable) into a fresh directory an unprivileged user can reach. */
export function stageForUnprivileged(files: string[], prefix = 'coco-unpriv-'): StagedDir | { skip: string } {
  const base = worldTraversableBase();
  if (base === undefined) return { skip: 'no world-traversable temp directory ($TMPDIR, /tmp, /var/tmp) to stage files for `nobody`' };
  const dir = mkdtempSync(path.join(base, prefix));
  chmodSync(dir, 0o755);
  const staged = new Map<string, string>();
  try {
    for (const f of files) {
      const dst = path.join(dir, `${staged.size}-${path.basename(f)}`);
      copyFileSync(f, dst);
      chmodSync(dst, (statSync(f).mode & 0o777) | 0o444);
      staged.set(f, dst);
    }
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return { dir, staged, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
