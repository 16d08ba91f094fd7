/**
 * Debian's skopeo (1.9, ocicrypt inside) for the E2E tests: push an OCI image layout to the test registry, and
 * encrypt a layout the way the fixtures were made.
 *
 * Pushing copies encrypted layers verbatim: no --decryption-key is given, so skopeo never touches their
 * contents, and --preserve-digests makes it fail rather than silently rewrite anything (the pushed manifest
 * digest is the layout's).
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export const SKOPEO_BINARY = '/usr/bin/skopeo';

/** Runs `skopeo <global opts> copy <args>` isolated from the system's registries.conf, policy and auth files. */
async function skopeoCopy(copyArgs: string[], what: string, timeoutMs: number): Promise<void> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'e2e-skopeo-'));
  try {
    const policy = path.join(tmp, 'policy.json');
    await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    await writeFile(path.join(tmp, 'registries.conf'), '');
    await mkdir(path.join(tmp, 'registries.d'));
    const args = ['--policy', policy, '--registries.d', path.join(tmp, 'registries.d'), '--tmpdir', tmp, 'copy', '--quiet', ...copyArgs];
    await new Promise<void>((resolve, reject) => {
      execFile(
        SKOPEO_BINARY,
        args,
        {
          timeout: timeoutMs,
          env: {
            PATH: process.env['PATH'] ?? '/usr/bin:/bin',
            HOME: tmp,
            XDG_RUNTIME_DIR: tmp,
            CONTAINERS_REGISTRIES_CONF: path.join(tmp, 'registries.conf'),
            REGISTRY_AUTH_FILE: path.join(tmp, 'auth.json'),
          },
        },
        (err, _stdout, stderr) => {
          if (err) reject(new Error(`skopeo copy (${what}) failed: ${stderr.trim() || err.message}`));
          else resolve();
        },
      );
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

export interface PushOptions {
  /** Tag inside the OCI layout (its `org.opencontainers.image.ref.name`). Default `latest`. */
  srcTag?: string;
  /** Registry host `127.0.0.1:<port>`. */
  registry: string;
  repo: string;
  tag?: string;
  timeoutMs?: number;
}

/** Pushes `oci:<layoutDir>:<srcTag>` to `docker://<registry>/<repo>:<tag>` and returns that reference. */
export async function pushOciLayout(layoutDir: string, opts: PushOptions): Promise<string> {
  const ref = `${opts.registry}/${opts.repo}:${opts.tag ?? 'latest'}`;
  await skopeoCopy(
    [
      '--preserve-digests',
      '--dest-tls-verify=false',
      '--dest-no-creds',
      '--retry-times',
      '0',
      `oci:${layoutDir}:${opts.srcTag ?? 'latest'}`,
      `docker://${ref}`,
    ],
    `push to ${ref}`,
    opts.timeoutMs ?? 60_000,
  );
  return ref;
}

/**
 * Encrypts every layer of `oci:<src>:<tag>` into a new layout `oci:<dst>:<tag>` with skopeo's ocicrypt, e.g.
 * recipients `['jwe:/path/rsa-pub.pem']` (as the fixtures in test/fixtures/ocicrypt were made).
 */
export async function encryptOciLayout(src: string, dst: string, recipients: string[], opts: { tag?: string; timeoutMs?: number } = {}): Promise<void> {
  const tag = opts.tag ?? 'latest';
  await skopeoCopy(
    [...recipients.flatMap((r) => ['--encryption-key', r]), `oci:${src}:${tag}`, `oci:${dst}:${tag}`],
    `encrypt ${src}`,
    opts.timeoutMs ?? 60_000,
  );
}
