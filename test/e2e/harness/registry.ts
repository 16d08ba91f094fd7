/**
 * A throw-away Debian `docker-registry` (distribution 2.8) on 127.0.0.1: filesystem storage in a temp dir,
 * plain HTTP, no auth.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort, logTail, startDaemon, stopDaemon, waitUntil, type Daemon } from './proc.js';

export const REGISTRY_BINARY = '/usr/bin/docker-registry';

export interface RegistryOptions {
  /** Ports already taken by this harness (e.g. containerd's stream server). */
  avoidPorts?: ReadonlySet<number>;
  startTimeoutMs?: number;
}

export interface Registry {
  /** `127.0.0.1:<port>`: the host part of image references. */
  readonly host: string;
  readonly port: number;
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  readonly dir: string;
  readonly logFile: string;
  logTail(lines?: number): string;
  stop(): Promise<void>;
}

function configYaml(storageDir: string, port: number): string {
  // JSON strings are valid YAML scalars, which keeps odd temp paths safe.
  return [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${JSON.stringify(storageDir)}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: ${JSON.stringify(`127.0.0.1:${port}`)}`,
    // A fixed secret silences the "generated random secret" warning; the registry is never shared.
    '  secret: e2e-harness-only',
    '',
  ].join('\n');
}

async function answersV2(url: string): Promise<boolean> {
  const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1_000) });
  await res.arrayBuffer();
  return res.status === 200;
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'e2e-registry-'));
  const logFile = path.join(dir, 'registry.log');
  const avoid = new Set(opts.avoidPorts ?? []);
  let lastError: unknown;
  // Another process may grab the probed port before the registry binds it: retry with a different port.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort(avoid);
    avoid.add(port);
    const configFile = path.join(dir, 'config.yml');
    await writeFile(configFile, configYaml(path.join(dir, 'storage'), port));
    const daemon: Daemon = startDaemon(REGISTRY_BINARY, ['serve', configFile], {
      logFile,
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
    });
    const url = `http://127.0.0.1:${port}`;
    try {
      await waitUntil('docker-registry', () => answersV2(url), {
        timeoutMs: opts.startTimeoutMs ?? 15_000,
        daemon,
      });
    } catch (err) {
      lastError = err;
      await stopDaemon(daemon);
      continue;
    }
    let stopped = false;
    return {
      host: `127.0.0.1:${port}`,
      port,
      url,
      dir,
      logFile,
      logTail: (lines) => logTail(logFile, lines),
      async stop() {
        if (stopped) return;
        stopped = true;
        await stopDaemon(daemon);
        await rm(dir, { recursive: true, force: true });
      },
    };
  }
  await rm(dir, { recursive: true, force: true });
  throw lastError instanceof Error ? lastError : new Error(String(lastError));
}
