/**
 * Runs the test KBS standalone (demo, manual checks):
 *   node --import tsx test/kbs/main.ts --port 15100 --resource default/image-kek/k1=/path/kek.bin
 * Prints the base URL on stdout (one line) once listening; stops on SIGTERM/SIGINT.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { startTestKbs, type TestKbsOptions } from './server.js';

function fail(message: string): never {
  process.stderr.write(`test-kbs: ${message}\n`);
  process.exit(2);
}

function positiveInt(name: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) fail(`--${name} must be a non-negative integer, got ${JSON.stringify(text)}`);
  return Number(text);
}

async function main(): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        port: { type: 'string' },
        host: { type: 'string' },
        protocol: { type: 'string' },
        resource: { type: 'string', multiple: true },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'allowed-tee': { type: 'string', multiple: true },
        'token-ttl': { type: 'string' },
        'session-ttl': { type: 'string' },
      },
      strict: true,
    }));
  } catch (err) {
    fail((err as Error).message);
  }

  const opts: TestKbsOptions = {};
  const port = positiveInt('port', values.port);
  if (port !== undefined) opts.port = port;
  if (values.host !== undefined) opts.host = values.host;
  if (values.protocol !== undefined) {
    if (values.protocol !== '0.4.0' && values.protocol !== '0.2.0') fail('--protocol must be 0.4.0 or 0.2.0');
    opts.protocol = values.protocol;
  }
  const tokenTtl = positiveInt('token-ttl', values['token-ttl']);
  if (tokenTtl !== undefined) opts.tokenTtlSeconds = tokenTtl;
  const sessionTtl = positiveInt('session-ttl', values['session-ttl']);
  if (sessionTtl !== undefined) opts.sessionTtlSeconds = sessionTtl;
  if (values['allowed-tee']) opts.allowedTees = values['allowed-tee'];

  const resources: Record<string, Buffer> = {};
  for (const spec of values.resource ?? []) {
    const eq = spec.indexOf('=');
    if (eq <= 0) fail(`--resource expects repo/type/tag=<file>, got ${JSON.stringify(spec)}`);
    const file = spec.slice(eq + 1);
    try {
      resources[spec.slice(0, eq)] = readFileSync(file);
    } catch (err) {
      fail(`cannot read resource file ${file}: ${(err as Error).message}`);
    }
  }
  opts.resources = resources;

  const cert = values['tls-cert'];
  const key = values['tls-key'];
  if ((cert === undefined) !== (key === undefined)) fail('--tls-cert and --tls-key go together');
  if (cert !== undefined && key !== undefined) {
    try {
      opts.tls = { cert: readFileSync(cert, 'utf8'), key: readFileSync(key, 'utf8') };
    } catch (err) {
      fail(`cannot read TLS files: ${(err as Error).message}`);
    }
  }

  let kbs;
  try {
    kbs = await startTestKbs(opts);
  } catch (err) {
    fail(`cannot start: ${(err as Error).message}`);
  }
  process.stdout.write(`${kbs.url}\n`);

  const shutdown = (): void => {
    void kbs.stop().then(() => process.exit(0));
  };
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);
}

void main();
