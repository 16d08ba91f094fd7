/**
 * The reference material that sits next to the checkout (`../shared/`: spec, fixtures, the containerd and imgcrypt
 * packages), found from any clone: `$COCO_SHARED_DIR`; else `<repo>/../shared`; else next to the repository this
 * clone was made from when that is a local path (CI clones the working checkout into a temp dir).
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

let found: string | null | undefined;

export function sharedDir(): string | undefined {
  if (found !== undefined) return found ?? undefined;
  const candidates: string[] = [];
  const fromEnv = process.env['COCO_SHARED_DIR'];
  if (fromEnv) candidates.push(path.resolve(fromEnv));
  candidates.push(path.resolve(REPO, '..', 'shared'));
  try {
    const origin = execFileSync('git', ['-C', REPO, 'config', '--get', 'remote.origin.url'], { encoding: 'utf8', timeout: 5_000 }).trim();
    const local = origin.startsWith('file://') ? origin.slice('file://'.length) : origin;
    if (path.isAbsolute(local)) candidates.push(path.resolve(local, '..', 'shared'));
  } catch {
    // not a git checkout, or no origin
  }
  found = candidates.find((c) => existsSync(path.join(c, 'containerd'))) ?? null;
  return found ?? undefined;
}
