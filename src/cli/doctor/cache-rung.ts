/**
 * Rung 8: the token cache directory, judged by the token cache's own rules (src/kbs/cache-dir.ts): what the
 * decoder refuses fails here, what it fixes by itself (a mode other than 0700 on a directory it owns) passes with a
 * note, and not being on tmpfs fails (the token's private key would reach persistent storage). A missing
 * directory is fine if it can be created.
 */
import { constants, statfsSync } from 'node:fs';
import { access, lstat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { inspectCacheDir, isTmpfs } from '../../kbs/cache-dir.js';
import { fail, pass } from './rung.js';
import type { RungResult } from './rung.js';

const TMPFS_FIX = 'point cache.dir at a directory on tmpfs (/run is tmpfs on systemd hosts) or mount one there: mount -t tmpfs -o mode=0700 tmpfs <dir>';

export async function checkCache(dir: string, fromConfig: boolean): Promise<RungResult> {
  const uid = process.getuid?.() ?? 0;
  const owner = uid === 0 ? 'root' : `uid ${uid} (the user running this check)`;
  const label = fromConfig ? dir : `${dir} (default; the config could not be read)`;
  const st = await inspectCacheDir(dir, uid);
  if (st.state === 'missing') return missing(dir, label, owner);
  if (st.state === 'refused') {
    switch (st.reason) {
      case 'unreadable':
        return fail('cache', `${label}: cannot inspect (${st.code})`, `make ${dir} accessible to ${owner}`);
      case 'symlink':
        return fail('cache', `${label} is a symbolic link: the decoder refuses it and works without a token cache`, `replace it with a real directory: install -d -m 0700 -o root ${dir}`);
      case 'not-a-directory':
        return fail('cache', `${label} is not a directory`, `remove it and run: install -d -m 0700 -o root ${dir}`);
      case 'foreign-owner':
        return fail('cache', `${label}: owned by uid ${st.ownerUid}, not ${owner}: the decoder works without a token cache (every layer attests)`, `chown ${uid} ${dir}`);
    }
  }
  if (st.tmpfs === false) {
    return fail('cache', `${label}: not on tmpfs (filesystem type 0x${st.fsType!.toString(16)}): the token's private key would reach persistent storage`, TMPFS_FIX);
  }
  const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
  if ((st.mode & 0o7777) !== 0o700) {
    return pass('cache', `${label}: directory owned by ${owner}, on tmpfs; mode ${mode}, which the decoder tightens to 0700 when it first uses it`);
  }
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
    return { type, tmpfs: isTmpfs(type) };
  } catch {
    return undefined;
  }
}
