/**
 * A layer process holds keys in memory: it must be non-dumpable (no core file, no same-uid ptrace or
 * /proc/<pid>/mem). Observed from outside, through the built executable, as an unprivileged user would try it:
 * the decoder runs as `nobody`, and another `nobody` process tries to read its /proc/<pid>/environ (allowed for a
 * dumpable process of the same uid, refused for a non-dumpable one).
 */
import { spawn, spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { locateDecoder } from '../../helpers/decoder-binary.js';
import { privateOptionsJson, publicOptionsJson, wrapJwe } from '../../helpers/encrypt-image.js';
import { encodeAny, PAYLOAD_TYPE_URL } from '../../helpers/payload.js';
import { findNobody, stageForUnprivileged, type StagedDir } from '../../helpers/unprivileged.js';

const nobody = findNobody();
const stages: StagedDir[] = [];
afterAll(() => stages.forEach((s) => s.cleanup()));

function readEnvironAs(pid: number, user: { uid: number; gid: number }): string {
  const r = spawnSync('cat', [`/proc/${pid}/environ`], { uid: user.uid, gid: user.gid, encoding: 'utf8', timeout: 5000 });
  return r.status === 0 ? 'readable' : /Permission denied/.test(r.stderr) ? 'EACCES' : `other: ${r.stderr}`;
}

describe.skipIf('skip' in nobody)(`layer processes are non-dumpable${'skip' in nobody ? `: skipped, ${nobody.skip}` : ''}`, () => {
  it('another process of the same uid cannot read its /proc entries; a plain process of that uid can', async (ctx) => {
    if ('skip' in nobody) return;
    const stage = stageForUnprivileged([locateDecoder().path], 'hardening-');
    if ('skip' in stage) {
      console.warn(`[process-hardening] ${stage.skip}`);
      ctx.skip();
      return;
    }
    stages.push(stage);
    const binary = [...stage.staged.values()][0]!;

    // Control: a dumpable process of the same uid is readable, so EACCES below is the dumpable flag, not the uid.
    const control = spawn('sleep', ['30'], { uid: nobody.uid, gid: nobody.gid });
    try {
      expect(readEnvironAs(control.pid!, nobody)).toBe('readable');
    } finally {
      control.kill('SIGKILL');
    }

    // A well-formed JWE layer, so the decoder goes on to wait for its ciphertext on stdin (which we hold open).
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const keys = path.join(stage.dir, 'keys');
    mkdirSync(keys, { mode: 0o755 });
    writeFileSync(path.join(keys, 'k.pem'), privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o644 });
    const privopts = privateOptionsJson(randomBytes(32), '', randomBytes(16));
    const jwe = await wrapJwe(privopts, [publicKey.export({ format: 'pem', type: 'spki' }) as string]);
    const descriptor = {
      mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted',
      digest: `sha256:${'0'.repeat(64)}`,
      size: 1,
      annotations: {
        'org.opencontainers.image.enc.keys.jwe': Buffer.from(jwe).toString('base64'),
        'org.opencontainers.image.enc.pubopts': publicOptionsJson(randomBytes(32)).toString('base64'),
      },
    };
    const payload = encodeAny(PAYLOAD_TYPE_URL, Buffer.from(JSON.stringify({ DecryptConfig: { Parameters: null }, Descriptor: descriptor })));
    const child = spawn(binary, ['--decryption-keys-path', keys, '--log-level', 'warn'], {
      uid: nobody.uid,
      gid: nobody.gid,
      cwd: stage.dir,
      env: { PATH: '/usr/bin:/bin', TMPDIR: '/tmp', STREAM_PROCESSOR_MEDIATYPE: descriptor.mediaType, COCO_DECODER_CONFIG: '/nonexistent/none.toml' },
      stdio: ['pipe', 'pipe', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      // Hardening happens before fd 3 is read: once the payload is consumed, the flag is set.
      (child.stdio[3] as NodeJS.WritableStream).end(payload);
      let state = 'readable';
      for (let i = 0; i < 100 && state === 'readable' && child.exitCode === null; i++) {
        await new Promise((r) => setTimeout(r, 50));
        state = readEnvironAs(child.pid!, nobody);
      }
      expect(state, stderr).toBe('EACCES');
      expect(child.exitCode, stderr).toBeNull(); // still waiting for its ciphertext, keys in memory
    } finally {
      child.stdin!.end();
      child.kill('SIGKILL');
      await once(child, 'close');
    }
  }, 30_000);
});
