/**
 * One "layer process" for the concurrency tests: loads the key source, says `ready`, waits for a line on stdin,
 * fetches the KEK and prints one JSON line with what happened (the KEK only as a SHA-256).
 *   node --import tsx test/helpers/kbs-child.ts '<Config JSON>' '<kid>'
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import type { Config } from '../../src/config/types.js';
import { createKeySource } from '../../src/kbs/key-source.js';
import { parseResourceUri } from '../../src/kbs/resource-uri.js';
import { describeError } from '../../src/util/errors.js';

const config = JSON.parse(process.argv[2] ?? '{}') as Config;
const uri = parseResourceUri(process.argv[3] ?? '');
const source = createKeySource({ config, env: {} });
process.stdout.write('ready\n');
await once(process.stdin, 'data');
try {
  const r = await source.getResource(uri);
  const kekSha256 = createHash('sha256').update(r.data).digest('hex');
  r.data.fill(0);
  process.stdout.write(`${JSON.stringify({ ok: true, attested: r.attested, tokenFromCache: r.tokenFromCache, lockWaitMs: r.lockWaitMs, kekSha256 })}\n`);
} catch (err) {
  process.stdout.write(`${JSON.stringify({ ok: false, error: describeError(err) })}\n`);
} finally {
  await source.close();
  process.stdin.destroy();
}
