/** util/file-lock.ts: flock(2) through flock(1), held by our own open file description. */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { acquireLock, lockPathFor } from '../../../src/util/file-lock.js';

const dir = mkdtempSync(join(tmpdir(), 'file-lock-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const never = new AbortController().signal;

describe('file lock', () => {
  it('is exclusive: a second taker waits until the first releases, then gets it', async () => {
    const file = join(dir, 'a.lock');
    const first = await acquireLock(file, 5000, never);
    expect(first.acquired).toBe(true);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const second = acquireLock(file, 5000, never);
    await new Promise((r) => setTimeout(r, 300));
    if (first.acquired) await first.lock.release();
    const got = await second;
    expect(got.acquired).toBe(true);
    expect(got.waitedMs).toBeGreaterThanOrEqual(250);
    if (got.acquired) await got.lock.release();
  });

  it('times out while held, ends early when the recheck succeeds or the signal fires', async () => {
    const file = join(dir, 'b.lock');
    const held = await acquireLock(file, 5000, never);
    expect(held.acquired).toBe(true);
    expect(await acquireLock(file, 300, never)).toMatchObject({ acquired: false, reason: 'timeout' });
    let calls = 0;
    const r = await acquireLock(file, 10_000, never, { recheck: async () => ++calls >= 2, recheckEveryMs: 50 });
    expect(r).toMatchObject({ acquired: false, reason: 'recheck' });
    expect(r.waitedMs).toBeLessThan(2000);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    expect(await acquireLock(file, 10_000, ac.signal)).toMatchObject({ acquired: false, reason: 'aborted' });
    if (held.acquired) await held.lock.release();
    // None of the abandoned waits left the lock taken.
    const after = await acquireLock(file, 1000, never);
    expect(after.acquired).toBe(true);
    if (after.acquired) await after.lock.release();
  });

  it('is unavailable (never a hang) without flock(1) or when the file cannot be opened', async () => {
    expect(await acquireLock(join(dir, 'c.lock'), 1000, never, { flockCommand: '/nonexistent/flock' })).toMatchObject({
      acquired: false,
      reason: 'unavailable',
      detail: expect.stringMatching(/flock\(1\) from util-linux is not installed/),
    });
    expect(await acquireLock(join(dir, 'missing-dir', 'd.lock'), 1000, never)).toMatchObject({ acquired: false, reason: 'unavailable' });
  });

  it('lives next to the token file it guards', () => {
    expect(lockPathFor('/run/coco-decoder/token-ab.json')).toBe('/run/coco-decoder/token-ab.json.lock');
  });
});
