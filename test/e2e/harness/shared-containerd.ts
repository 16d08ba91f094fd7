/**
 * The containerd builds kept in ../shared/containerd/ (Debian's own packages of 1.7.24 and 2.1.9), extracted with
 * `dpkg-deb -x` into a private temp dir and run from there: never installed (`dpkg -i` would replace the
 * machine's containerd). Each package is extracted once per test process.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { sharedDir } from '../../helpers/shared-dir.js';

const execFileP = promisify(execFile);


export const SHARED_DEBS = {
  '1.7.24': 'containerd_1.7.24~ds1-6+deb13u1_amd64.deb',
  '2.1.9': 'containerd_2.1.9+ds1-5_amd64.deb',
} as const;

export interface ExtractedContainerd {
  readonly containerd: string;
  readonly ctr: string;
}

const extracted = new Map<string, Promise<ExtractedContainerd>>();
const dirs: string[] = [];

/** The extracted binaries, or undefined when ../shared/containerd/ does not hold the package (printed reason). */
export function sharedContainerd(version: keyof typeof SHARED_DEBS): Promise<ExtractedContainerd | undefined> {
  const shared = sharedDir();
  const deb = shared === undefined ? undefined : path.join(shared, 'containerd', SHARED_DEBS[version]);
  if (deb === undefined || !existsSync(deb)) return Promise.resolve(undefined);
  let p = extracted.get(version);
  if (p === undefined) {
    p = (async () => {
      const dir = await mkdtemp(path.join(os.tmpdir(), `e2e-containerd-${version}-`));
      dirs.push(dir);
      await execFileP('dpkg-deb', ['-x', deb, dir], { timeout: 60_000 });
      return { containerd: path.join(dir, 'usr/bin/containerd'), ctr: path.join(dir, 'usr/bin/ctr') };
    })();
    extracted.set(version, p);
  }
  return p;
}

export async function removeExtractedContainerd(): Promise<void> {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
  extracted.clear();
}
