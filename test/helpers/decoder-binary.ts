/**
 * Where the benchmark and the demo find the executable under test: `dist/coco-decoder` (built by `npm run build`),
 * or `$COCO_DECODER_BIN` when a developer points them elsewhere. Missing or not executable → a clear error.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const DIST_BINARY = join(REPO_ROOT, 'dist', 'coco-decoder');

export function locateDecoder(env: NodeJS.ProcessEnv = process.env): { path: string; fromEnv: boolean } {
  const override = env['COCO_DECODER_BIN'];
  const path = override !== undefined && override !== '' ? resolve(override) : DIST_BINARY;
  try {
    if (!statSync(path).isFile()) throw new Error('not a file');
    accessSync(path, constants.X_OK);
  } catch {
    const hint = override ? 'check $COCO_DECODER_BIN' : 'run `npm run build` first (it writes dist/coco-decoder)';
    throw new Error(`${path} is missing or not executable: ${hint}`);
  }
  return { path, fromEnv: path !== DIST_BINARY };
}
