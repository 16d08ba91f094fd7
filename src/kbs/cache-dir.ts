/**
 * The rules the token cache directory must meet, in one place: the token cache applies them before it trusts the
 * directory, and `coco-decoder doctor` reports against the same ones. The directory holds the private key an
 * attestation token is bound to, so: a real directory (no symlink), owned by the user the decoder runs as (root
 * under containerd), mode 0700 (tightened automatically when we own it), on tmpfs (warned about otherwise).
 */
import { lstatSync, statfsSync } from 'node:fs';

const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

export type CacheDirState =
  | { state: 'missing' }
  /** The token cache refuses it and works without a cache (every layer attests). */
  | { state: 'refused'; reason: 'symlink' | 'not-a-directory' | 'foreign-owner' | 'unreadable'; ownerUid?: number; code?: string }
  | {
      state: 'usable';
      /** Current mode bits; anything but 0700 is tightened to 0700 by the token cache on open. */
      mode: number;
      /** undefined when statfs gives no answer (advisory only). */
      tmpfs: boolean | undefined;
      fsType: number | undefined;
    };

export function isTmpfs(type: number): boolean {
  return type === TMPFS_MAGIC || type === RAMFS_MAGIC;
}

/** Synchronous: the token cache runs it on every attestation-agent layer (see token-cache.ts). */
export function inspectCacheDir(dir: string, uid: number): CacheDirState {
  let st;
  try {
    st = lstatSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { state: 'missing' };
    return { state: 'refused', reason: 'unreadable', code: code ?? String(err) };
  }
  if (st.isSymbolicLink()) return { state: 'refused', reason: 'symlink' };
  if (!st.isDirectory()) return { state: 'refused', reason: 'not-a-directory' };
  if (st.uid !== uid) return { state: 'refused', reason: 'foreign-owner', ownerUid: st.uid };
  let fsType: number | undefined;
  try {
    fsType = Number(statfsSync(dir).type);
  } catch {
    fsType = undefined; // advisory only
  }
  return { state: 'usable', mode: st.mode & 0o7777, tmpfs: fsType === undefined ? undefined : isTmpfs(fsType), fsType };
}
