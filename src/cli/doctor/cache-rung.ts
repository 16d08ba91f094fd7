/**
 * Rung 8: the token cache directory is what the decoder's token cache accepts (src/kbs/token-cache.ts): a real
 * directory (no symlink) owned by the user the decoder runs as (root under containerd), mode 0700, on tmpfs, since
 * it holds the private key the attestation token is bound to. A missing directory is fine if it can be created.
 */
import { constants, statfsSync } from 'node:fs';
import { access, lstat } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { dirname } from 'node:path';
import { fail, pass } from './rung.js';
import type { RungResult } from './rung.js';

const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;
const TMPFS_FIX = 'point cache.dir at a directory on tmpfs (/run is tmpfs on systemd hosts) or mount one there: mount -t tmpfs -o mode=0700 tmpfs <dir>';

export async function checkCache(dir: string, fromConfig: boolean): Promise<RungResult> {
  const uid = process.getuid?.() ?? 0;
  const owner = uid === 0 ? 'root' : `uid ${uid} (the user running this check)`;
  const label = fromConfig ? dir : `${dir} (default; the config could not be read)`;
  let st: Stats;
  try {
    st = await lstat(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      return fail('cache', `${label}: cannot inspect (${(err as NodeJS.ErrnoException).code ?? String(err)})`, `make ${dir} accessible to ${owner}`);
    }
    return missing(dir, label, owner);
  }
  if (st.isSymbolicLink()) {
    return fail('cache', `${label} is a symbolic link: the decoder refuses it and works without a token cache`, `replace it with a real directory: install -d -m 0700 -o root ${dir}`);
  }
  if (!st.isDirectory()) return fail('cache', `${label} is not a directory`, `remove it and run: install -d -m 0700 -o root ${dir}`);
  const problems: string[] = [];
  const fixes: string[] = [];
  if (st.uid !== uid) {
    problems.push(`owned by uid ${st.uid}, not ${owner}: the decoder works without a token cache (every layer attests)`);
    fixes.push(`chown ${uid} ${dir}`);
  }
  const mode = st.mode & 0o7777;
  if (mode !== 0o700) {
    problems.push(`mode ${mode.toString(8).padStart(4, '0')}, expected 0700 (it holds the private key bound to the attestation token)`);
    fixes.push(`chmod 0700 ${dir}`);
  }
  const fs = filesystem(dir);
  if (fs !== undefined && !fs.tmpfs) {
    problems.push(`not on tmpfs (filesystem type 0x${fs.type.toString(16)}): the token's private key would reach persistent storage`);
    fixes.push(TMPFS_FIX);
  }
  if (problems.length > 0) return fail('cache', `${label}: ${problems.join('; ')}`, fixes.join('; '));
  return pass('cache', `${label}: directory owned by ${owner}, mode 0700, on tmpfs`);
}

async function missing(dir: string, label: string, owner: string): Promise<RungResult> {
  // The decoder creates it (and its missing parents) 0700 on first use; that needs the nearest existing ancestor writable.
  let parent = dirname(dir);
  while (parent !== dirname(parent)) {
    const st = await lstat(parent).catch(() => undefined);
    if (st !== undefined) break;
    parent = dirname(parent);
  }
  try {
    await access(parent, constants.W_OK | constants.X_OK);
  } catch {
    return fail('cache', `${label} does not exist and ${parent} is not writable by ${owner}`, `create it: install -d -m 0700 -o root ${dir} (the package's tmpfiles.d entry does this at boot)`);
  }
  const fs = filesystem(parent);
  if (fs !== undefined && !fs.tmpfs) {
    return fail('cache', `${label} does not exist yet, and ${parent} is not on tmpfs: the token's private key would reach persistent storage`, TMPFS_FIX);
  }
  return pass('cache', `${label} does not exist yet; the decoder will create it 0700 on tmpfs at the first attestation`);
}

function filesystem(path: string): { type: number; tmpfs: boolean } | undefined {
  try {
    const type = Number(statfsSync(path).type);
    return { type, tmpfs: type === TMPFS_MAGIC || type === RAMFS_MAGIC };
  } catch {
    return undefined;
  }
}
