/**
 * End to end with local keys: the fixture images (made by skopeo/ocicrypt) are pushed with skopeo to a real
 * docker-registry and pulled through CRI by a real containerd 1.6.20 that runs dist/coco-decoder as its ocicrypt
 * stream processor with `--decryption-keys-path`. What lands in containerd's snapshot must be byte for byte the
 * plain image's files; with the wrong keys or a tampered layer, nothing may be committed.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, symlink, copyFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  REPO_ROOT,
  blobPath,
  builtDecoderPath,
  chainIdOf,
  copyLayout,
  encryptOciLayout,
  layerFiles,
  readLayout,
  rewriteLayer,
  snapshotDirsHolding,
  startStack,
  stopStack,
  writePlainLayout,
  type Stack,
  printDiagnosticsOnFailure,
} from './harness/index.js';

const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'ocicrypt');
const KEYS = path.join(FIXTURES, 'keys');
const FILES = ['etc/motd', 'data/blob.bin'] as const;
const MOTD = 'decrypted inside the TEE\n';
const PUBOPTS = 'org.opencontainers.image.enc.pubopts';
const PULL_DEADLINE_MS = 60_000;
const TEST_TIMEOUT_MS = 120_000;

let stack: Stack | undefined;
let work: string;
/** The decoder's --decryption-keys-path; refilled by each test. */
let keysDir: string;
/** The plain image's files: what every successful decryption must reproduce. */
let expected: Map<string, Buffer>;
/** The plain image's chain ID: every fixture image unpacks into this snapshot. */
let chainId: string;
/** Image references to remove after the current test. */
let pulled: string[] = [];

function s(): Stack {
  if (!stack) throw new Error('stack not started');
  return stack;
}

/** Fills the keys directory with fixture key files: as plain files, or laid out like a Kubernetes Secret volume. */
async function useKeys(names: string[], layout: 'files' | 'kubernetes-secret' = 'files'): Promise<void> {
  await rm(keysDir, { recursive: true, force: true });
  await mkdir(keysDir, { mode: 0o700 });
  if (layout === 'files') {
    for (const n of names) await copyFile(path.join(KEYS, n), path.join(keysDir, n));
    return;
  }
  // kubelet's atomic writer: files in a timestamped dir, `..data` -> it, and top-level symlinks through `..data`.
  const stamp = '..2026_01_01_00_00_00.000000001';
  await mkdir(path.join(keysDir, stamp), { mode: 0o700 });
  for (const n of names) await copyFile(path.join(KEYS, n), path.join(keysDir, stamp, n));
  await symlink(stamp, path.join(keysDir, '..data'));
  for (const n of names) await symlink(path.join('..data', n), path.join(keysDir, n));
}

/** A writable copy of a fixture layout, pushed as `<repo>:latest`. */
async function pushFixture(fixture: string, repo: string): Promise<{ ref: string; layerDigest: string }> {
  const dir = await copyLayout(path.join(FIXTURES, fixture), path.join(work, repo));
  const layout = await readLayout(dir);
  return { ref: await s().push(dir, repo), layerDigest: layout.manifest.layers[0]!.digest };
}

async function pull(ref: string): Promise<void> {
  // The snapshot must not exist yet, or containerd would skip the unpack and the decoder would never run.
  expect(await s().snapshots.stat(chainId), 'snapshot left over from an earlier test').toBeUndefined();
  pulled.push(ref);
  await s().cri.pullImage(ref, { deadlineMs: PULL_DEADLINE_MS });
}

async function expectUnpackedPlainFiles(ref: string, want = expected, wantChain = chainId): Promise<void> {
  expect(await s().cri.chainId(ref)).toBe(wantChain);
  const info = await s().snapshots.stat(wantChain);
  expect(info?.kind).toBe('committed');
  const got = await s().snapshots.readFiles(wantChain, [...want.keys()]);
  for (const [name, bytes] of want) {
    const actual = got.get(name);
    expect(actual, `${name} missing from the snapshot`).toBeDefined();
    expect(actual!.length, `${name} size`).toBe(bytes.length);
    expect(actual!.equals(bytes), `${name} differs from the plain image`).toBe(true);
  }
}

/** After a failed pull: no committed snapshot anywhere holds the layer's files. */
async function expectNothingCommitted(files: readonly string[] = FILES, chain = chainId): Promise<void> {
  expect(await s().snapshots.stat(chain)).toBeUndefined();
  expect(await s().snapshots.committedHolding(files)).toEqual([]);
}

/**
 * Snapshot directories on disk, committed or not, that hold any of `files` and are not in `before`. An aborted
 * unpack's directory stays on disk until containerd's next garbage collection, so only new ones are telling.
 */
async function newSnapshotDirsHolding(files: readonly string[], before: readonly string[]): Promise<string[]> {
  return (await snapshotDirsHolding(s().containerd.snapshotterRoot, files)).filter((d) => !before.includes(d));
}

beforeAll(async () => {
  const decoder = builtDecoderPath(); // clear error if `npm run build` has not run
  work = await mkdtemp(path.join(os.tmpdir(), 'e2e-local-keys-'));
  keysDir = path.join(work, 'keys');
  const plain = await readLayout(path.join(FIXTURES, 'plain'));
  const layer = plain.manifest.layers[0]!;
  expected = await layerFiles(await readFile(blobPath(plain.dir, layer.digest)), layer.mediaType);
  for (const f of FILES) expect(expected.has(f), `plain fixture lacks ${f}`).toBe(true);
  expect(expected.get('etc/motd')!.toString()).toBe(MOTD);
  expected = new Map(FILES.map((f) => [f, expected.get(f)!]));
  chainId = chainIdOf(plain.config.rootfs.diff_ids);
  stack = await startStack({ decoderPath: decoder, args: ['--decryption-keys-path', keysDir] });
}, 60_000);

afterAll(async () => {
  try {
    await stopStack(stack);
  } finally {
    if (work) await rm(work, { recursive: true, force: true });
  }
});

printDiagnosticsOnFailure(() => stack);

afterEach(async () => {
  // Remove what the test pulled so the next test's unpack starts from nothing (CRI deletes synchronously).
  for (const ref of pulled) await stack?.cri.removeImage(ref).catch(() => undefined);
  pulled = [];
});

describe('CRI pull through containerd 1.6 with coco-decoder and a local keys directory', () => {
  it('pulls the plain image (harness sanity: registry, CRI, snapshot reading)', { timeout: TEST_TIMEOUT_MS }, async () => {
    await useKeys([]);
    const { ref } = await pushFixture('plain', 'plain');
    await pull(ref);
    await expectUnpackedPlainFiles(ref);
  });

  const cases: { fixture: string; keys: string[]; layout?: 'files' | 'kubernetes-secret'; what: string }[] = [
    { fixture: 'enc-jwe-rsa', keys: ['rsa-priv.pem'], what: 'JWE RSA-OAEP' },
    { fixture: 'enc-jwe-ec', keys: ['ec-priv.pem'], layout: 'kubernetes-secret', what: 'JWE ECDH-ES+A256KW, keys in a Kubernetes Secret volume layout' },
    { fixture: 'enc-pkcs7', keys: ['pkcs7-priv.pem', 'pkcs7-cert.pem'], what: 'PKCS#7 EnvelopedData' },
    { fixture: 'enc-multi', keys: ['rsa2-priv.pem'], what: 'three recipients, only the second JWE key present' },
    { fixture: 'enc-multi', keys: ['pkcs7-priv.pem', 'pkcs7-cert.pem'], what: 'three recipients, only the PKCS#7 key present' },
    { fixture: 'enc-zstd', keys: ['rsa-priv.pem'], what: 'tar+zstd+encrypted layer' },
  ];
  it.each(cases)('decrypts $fixture ($what) into the plain files', { timeout: TEST_TIMEOUT_MS }, async ({ fixture, keys, layout }) => {
    await useKeys(keys, layout);
    const { ref } = await pushFixture(fixture, `${fixture}-${keys[0]!.replace(/\W/g, '')}`);
    await pull(ref);
    await expectUnpackedPlainFiles(ref);
  });

  it('fails with the decoder\'s one-line error and commits nothing when no key fits', { timeout: TEST_TIMEOUT_MS }, async () => {
    await useKeys(['ec-priv.pem']); // the image is wrapped for the RSA key only
    const { ref, layerDigest } = await pushFixture('enc-jwe-rsa', 'wrong-key');
    expect(await s().snapshots.stat(chainId)).toBeUndefined();
    const dirsBefore = await snapshotDirsHolding(s().containerd.snapshotterRoot, FILES);
    pulled.push(ref);
    const err = await s().pullExpectingFailure(ref, { deadlineMs: PULL_DEADLINE_MS });
    expect(err.details).toContain(`coco-decoder: layer ${layerDigest}: `);
    // One line from the decoder: containerd appends only its own ": unknown" suffix after the newline.
    const decoderLine = err.details.slice(err.details.indexOf('coco-decoder: '));
    expect(decoderLine.split('\n')[1] ?? '').toMatch(/^(: unknown)?$/);
    await expectNothingCommitted();
    // The decoder wrote nothing, so not even the aborted unpack's directory (removed only by a later GC) got them.
    expect(await newSnapshotDirsHolding(FILES, dirsBefore)).toEqual([]);
  });

  it('fails and commits nothing when the pubopts HMAC does not match the (intact) ciphertext', { timeout: TEST_TIMEOUT_MS }, async () => {
    await useKeys(['rsa-priv.pem']);
    const dir = await copyLayout(path.join(FIXTURES, 'enc-jwe-rsa'), path.join(work, 'bad-hmac'));
    const layer = await rewriteLayer(dir, (blob, desc) => {
      const pub = JSON.parse(Buffer.from(desc.annotations![PUBOPTS]!, 'base64').toString()) as { hmac: string };
      const mac = Buffer.from(pub.hmac, 'base64');
      mac.writeUInt8(mac.readUInt8(0) ^ 0x01, 0);
      pub.hmac = mac.toString('base64');
      desc.annotations![PUBOPTS] = Buffer.from(JSON.stringify(pub)).toString('base64');
      return { blob, desc };
    });
    const ref = await s().push(dir, 'bad-hmac');
    pulled.push(ref);
    const err = await s().pullExpectingFailure(ref, { deadlineMs: PULL_DEADLINE_MS });
    // The plaintext is perfect except that the decoder must withhold its tail: a decoder that ignored the HMAC
    // would let this pull succeed. containerd 1.6 reports the truncated stream (tar's "unexpected EOF") ahead of
    // the processor's stderr when some plaintext was already written; the decoder's own line shows when not.
    expect(err.details).toMatch(
      new RegExp(`coco-decoder: layer ${layer.digest}: .*hmac|unexpected EOF`, 'i'),
    );
    await expectNothingCommitted();
  });

  it('fails with the decoder\'s HMAC error and commits nothing when the ciphertext was altered', { timeout: TEST_TIMEOUT_MS }, async () => {
    // A layer small enough that the decoder holds back all of its plaintext until the HMAC check at EOF, so
    // containerd sees no data and reports the decoder's message. Encrypted by skopeo's ocicrypt, like the fixtures.
    const files = new Map([
      ['etc/motd', Buffer.from(MOTD)],
      ['data/small.bin', randomBytes(3000)],
    ]);
    const plainDir = path.join(work, 'small-plain');
    const plain = await writePlainLayout(plainDir, files);
    const smallChain = chainIdOf(plain.config.rootfs.diff_ids);
    const encDir = path.join(work, 'small-enc');
    await encryptOciLayout(plainDir, encDir, [`jwe:${path.join(KEYS, 'rsa-pub.pem')}`]);
    await useKeys(['rsa-priv.pem']);

    // Untampered, it decrypts: the failure below is the tampering's doing.
    const goodRef = await s().push(encDir, 'small-enc');
    pulled.push(goodRef);
    await s().cri.pullImage(goodRef, { deadlineMs: PULL_DEADLINE_MS });
    await expectUnpackedPlainFiles(goodRef, files, smallChain);
    await s().cri.removeImage(goodRef);
    expect(await s().snapshots.stat(smallChain)).toBeUndefined();

    const layer = await rewriteLayer(encDir, (blob, desc) => {
      const b = Buffer.from(blob);
      const i = b.length >> 1;
      b.writeUInt8(b.readUInt8(i) ^ 0x80, i);
      return { blob: b, desc };
    });
    const badRef = await s().push(encDir, 'small-enc-tampered');
    const dirsBefore = await snapshotDirsHolding(s().containerd.snapshotterRoot, ['data/small.bin']);
    pulled.push(badRef);
    const err = await s().pullExpectingFailure(badRef, { deadlineMs: PULL_DEADLINE_MS });
    expect(err.details).toMatch(new RegExp(`coco-decoder: layer ${layer.digest}: .*hmac`, 'i'));
    await expectNothingCommitted([...files.keys()], smallChain);
    expect(await newSnapshotDirsHolding(['data/small.bin'], dirsBefore)).toEqual([]);
  });
});
