/**
 * Shared setup for the KBS client tests: a fully-defaulted Config pointing at a test KBS with a private cache
 * directory, throwaway CA/server certificates made with openssl, and temp-dir management.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultConfig } from '../../src/config/types.js';
import type { Config } from '../../src/config/types.js';

export const KEK = Buffer.from('5f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0', 'hex');
export const KID_PATH = 'default/image-kek/layer1';
export const KID = `kbs:///${KID_PATH}`;

export function makeTempDir(prefix = 'coco-kbs-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export function testConfig(url: string, cacheDir: string, over: (c: Config) => void = () => undefined): Config {
  const c = defaultConfig();
  c.source = '/test/config.toml';
  c.kbs.url = url;
  c.kbs.allowHttp = url.startsWith('http:');
  c.kbs.timeoutMs = 3000;
  c.kbs.totalTimeoutMs = 10_000;
  c.attestation.tee = 'sample';
  c.cache.dir = cacheDir;
  c.cache.lockTimeoutMs = 10_000;
  over(c);
  return c;
}

export interface TestPki {
  caPem: string;
  caFile: string;
  certPem: string;
  keyPem: string;
  /** A second, unrelated CA (for "wrong CA" tests) and a server certificate it signed. */
  otherCaFile: string;
  otherCertPem: string;
  otherKeyPem: string;
}

/** A throwaway CA and a server certificate for 127.0.0.1 / localhost, made with openssl. */
export function makePki(dir: string): TestPki {
  const run = (args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: 'ignore', timeout: 20_000 });
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  run(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-subj', '/CN=coco-decoder test CA', '-days', '2']);
  run(['req', '-x509', ...ec, '-keyout', 'other-ca.key', '-out', 'other-ca.pem', '-subj', '/CN=unrelated CA', '-days', '2']);
  run(['req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1']);
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n');
  run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf']);
  run(['req', ...ec, '-keyout', 'other-server.key', '-out', 'other-server.csr', '-subj', '/CN=127.0.0.1']);
  run(['x509', '-req', '-in', 'other-server.csr', '-CA', 'other-ca.pem', '-CAkey', 'other-ca.key', '-CAcreateserial', '-out', 'other-server.pem', '-days', '2', '-extfile', 'ext.cnf']);
  return {
    caPem: readFileSync(join(dir, 'ca.pem'), 'utf8'),
    caFile: join(dir, 'ca.pem'),
    certPem: readFileSync(join(dir, 'server.pem'), 'utf8'),
    keyPem: readFileSync(join(dir, 'server.key'), 'utf8'),
    otherCaFile: join(dir, 'other-ca.pem'),
    otherCertPem: readFileSync(join(dir, 'other-server.pem'), 'utf8'),
    otherKeyPem: readFileSync(join(dir, 'other-server.key'), 'utf8'),
  };
}
