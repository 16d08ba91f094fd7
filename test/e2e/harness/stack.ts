/**
 * The real E2E stack in one call: a private docker-registry, a private containerd with the CRI plugin and our
 * stream processors, a CRI image client and a snapshot inspector. No doubles anywhere. No test-runner hooks
 * either (those are in index.ts), so the benchmark starts the same stack.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startContainerd, type Containerd, type ContainerdOptions } from './containerd.js';
import { CriImageClient, GrpcCallError } from './cri.js';
import { startRegistry, type Registry } from './registry.js';
import { pushOciLayout, type PushOptions } from './skopeo.js';
import { SnapshotInspector } from './snapshot.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** `dist/coco-decoder` (built by `npm run build`); throws a clear error when it has not been built. */
export function builtDecoderPath(): string {
  const p = path.join(REPO_ROOT, 'dist', 'coco-decoder');
  if (!existsSync(p)) throw new Error(`${p} is missing: run \`npm run build\` before the E2E tests`);
  return p;
}

export type StackOptions = Omit<ContainerdOptions, 'insecureRegistries' | 'avoidPorts'>;

export interface Stack {
  registry: Registry;
  containerd: Containerd;
  cri: CriImageClient;
  snapshots: SnapshotInspector;
  /**
   * skopeo-pushes an OCI layout as `<registry>/<repo>:<tag>` and returns that reference; `opts.srcTag` is the tag
   * inside the layout (default `latest`).
   */
  push(layoutDir: string, repo: string, tag?: string, opts?: Pick<PushOptions, 'srcTag' | 'timeoutMs'>): Promise<string>;
  /**
   * Pulls `ref`, which must fail, and returns the gRPC error. See `pullExpectingFailure` for the one retry case.
   */
  pullExpectingFailure(ref: string, opts?: { attempts?: number; deadlineMs?: number }): Promise<GrpcCallError>;
  /** Registry and containerd log tails, for failure messages. */
  diagnostics(lines?: number): string;
  stop(): Promise<void>;
}

export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const registry = await startRegistry();
  let containerd: Containerd;
  try {
    containerd = await startContainerd({ ...opts, insecureRegistries: [registry.host], avoidPorts: new Set([registry.port]) });
  } catch (err) {
    await registry.stop();
    throw err;
  }
  const cri = new CriImageClient(containerd.socket);
  const snapshots = new SnapshotInspector(containerd.socket, containerd.snapshotter);
  let stopped = false;
  return {
    registry,
    containerd,
    cri,
    snapshots,
    push: (layoutDir, repo, tag, o) => pushOciLayout(layoutDir, { ...o, registry: registry.host, repo, tag }),
    pullExpectingFailure: (ref, o) => pullExpectingFailure(cri, ref, o),
    diagnostics: (lines = 40) =>
      `--- containerd log (${containerd.logFile}) ---\n${containerd.logTail(lines)}\n` +
      // skopeo's existence checks (HEAD → 404 "blob unknown") are logged as errors; they are noise here.
      `--- registry log ---\n${registry
        .logTail(200)
        .split('\n')
        .filter((l) => !l.includes('err.code="blob unknown"'))
        .slice(-10)
        .join('\n')}`,
    async stop() {
      if (stopped) return;
      stopped = true;
      cri.close();
      snapshots.close();
      // Stop both even if one fails; report the first failure.
      const results = await Promise.allSettled([containerd.stop(), registry.stop()]);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
    },
  };
}

/** Stops a stack if it was started (safe in `afterAll` after a failed `beforeAll`). */
export async function stopStack(stack: Stack | undefined): Promise<void> {
  await stack?.stop();
}

/**
 * containerd 1.6 reads a stream processor's exit status without waiting for it (containerd #6914,
 * `diff/apply` calls `Err()` but never `Wait()`): when the processor wrote nothing and exited non-zero, the
 * unpack sometimes (~3% here) misses the exit status and then fails on its diffID safety net instead, with
 * "wrong diff id calculated on extraction" and without the processor's stderr. Only that failure is retried
 * (nothing was committed, so a retry starts from the same state); any other error is returned as is, and a
 * successful pull is an error.
 */
export const CONTAINERD_MISSED_EXIT_STATUS = /wrong diff id calculated on extraction/;

export async function pullExpectingFailure(
  cri: CriImageClient,
  ref: string,
  opts: { attempts?: number; deadlineMs?: number } = {},
): Promise<GrpcCallError> {
  const attempts = opts.attempts ?? 3;
  for (let i = 1; ; i++) {
    let imageRef: string;
    try {
      imageRef = await cri.pullImage(ref, { deadlineMs: opts.deadlineMs ?? 60_000 });
    } catch (err) {
      if (!(err instanceof GrpcCallError)) throw err;
      if (i < attempts && CONTAINERD_MISSED_EXIT_STATUS.test(err.details)) continue;
      return err;
    }
    throw new Error(`pull of ${ref} succeeded (image ${imageRef}) but was expected to fail`);
  }
}
