/**
 * `npm run demo`: coco-decoder's main job in one command, for a newcomer.
 *
 * Builds a small three-layer image, encrypts every layer for the `attestation-agent` key provider (each layer key
 * wrapped under its own KEK, as coco_keyprovider does), starts the local test KBS (trustee's RCAR protocol, sample
 * attester, plain HTTP on 127.0.0.1) holding the KEKs, and decrypts each layer through the real stream-processor
 * contract — exactly as containerd runs it: media type in STREAM_PROCESSOR_MEDIATYPE, encrypted blob on stdin,
 * layer descriptor on fd 3, plaintext on stdout — with a fresh token cache. Checks every decrypted digest against
 * the original blob and that the whole image took exactly one attestation. Then shows one failure: a layer whose
 * KEK the KBS policy denies, and the one-line error an operator would see.
 *
 * Exit 0 only when every check holds.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { aaRecipient, encryptImage } from '../helpers/encrypt-image.js';
import { buildImage, type Descriptor } from '../helpers/oci-image.js';
import { locateDecoder } from '../helpers/decoder-binary.js';
import { runDecoder } from '../helpers/run-decoder.js';
import { startTestKbs, type TestKbs, type TestKbsCounters } from '../kbs/server.js';

const out = (line = ''): void => {
  process.stdout.write(`${line}\n`);
};
const short = (digest: string): string => `${digest.slice(0, 19)}…`;
const ok = (cond: boolean): string => (cond ? '✓' : '✗');

const LAYERS: Array<{ what: string; kekName: string; files: Record<string, Buffer> }> = [
  {
    what: 'etc/motd',
    kekName: 'demo-base',
    files: { 'etc/motd': Buffer.from('Welcome to a confidential container. This layer was encrypted.\n') },
  },
  {
    what: 'app/server.js',
    kekName: 'demo-app',
    files: {
      'app/server.js': Buffer.from(
        "import http from 'node:http';\nhttp.createServer((_, res) => res.end('hello from inside the TEE\\n')).listen(8080);\n",
      ),
    },
  },
  {
    what: 'data/model.bin (256 KiB)',
    kekName: 'demo-data',
    files: { 'data/model.bin': randomBytes(256 * 1024), 'data/README': Buffer.from('Proprietary weights: only a TEE the KBS trusts may read them.\n') },
  },
];
const DENIED_KEK = 'demo-denied';

function configToml(kbsUrl: string, cacheDir: string, level: 'error' | 'debug'): string {
  return [
    '[kbs]',
    `url = "${kbsUrl}"`,
    'allow_http = true',
    '',
    '[attestation]',
    'tee = "sample"',
    '',
    '[cache]',
    `dir = "${cacheDir}"`,
    '',
    '[log]',
    `level = "${level}"`,
    '',
  ].join('\n');
}

const delta = (a: TestKbsCounters, b: TestKbsCounters): TestKbsCounters => ({
  auth: a.auth - b.auth,
  attest: a.attest - b.attest,
  attestOk: a.attestOk - b.attestOk,
  resource: a.resource - b.resource,
  resourceOk: a.resourceOk - b.resourceOk,
});

/** The decoder's own account at log.level=debug: "kbs <kid>: attested|cached token, requests ...". */
function decoderSaysCached(stderr: string): boolean | undefined {
  const m = /kbs \S+: (attested|cached token)\b/.exec(stderr);
  return m ? m[1] === 'cached token' : undefined;
}

async function main(): Promise<number> {
  const decoder = locateDecoder();
  const tmp = mkdtempSync(join(os.tmpdir(), 'coco-demo-'));
  let kbs: TestKbs | undefined;
  let failures = 0;
  const expect = (cond: boolean, what: string): boolean => {
    if (!cond) {
      failures++;
      out(`   ✗ ${what}`);
    }
    return cond;
  };

  try {
    out('coco-decoder demo: decrypting an attestation-agent-encrypted image the way containerd does');
    out(`  (decoder: ${decoder.path}${decoder.fromEnv ? ', from $COCO_DECODER_BIN' : ''})`);
    out();

    // 1. the image
    const imageDir = join(tmp, 'image');
    const plain = await buildImage(imageDir, { tag: 'demo', layers: LAYERS.map((l) => l.files) });
    out(`1. Built a sample image (OCI layout, ${plain.layers.length} gzip layers):`);
    plain.layers.forEach((l, i) => out(`     layer ${i + 1}  ${short(l.descriptor.digest)}  ${String(l.descriptor.size).padStart(7)} B  ${LAYERS[i]!.what}`));
    out();

    // 2. encryption, one KEK per layer
    const resources: Record<string, Buffer> = {};
    const kids: string[] = [];
    let encrypted: Descriptor[] = [];
    for (const [i, layer] of LAYERS.entries()) {
      const enc = await encryptImage(imageDir, { tag: 'demo', recipients: [aaRecipient(layer.kekName)], layerIndexes: [i] });
      Object.assign(resources, enc.kbsResources);
      kids.push(enc.keks[0]!.kid);
      encrypted[i] = enc.layers[0]!.encrypted;
    }
    encrypted = encrypted.filter(Boolean);
    out('2. Encrypted every layer for the attestation-agent key provider: AES-256-CTR + HMAC-SHA256 with a random');
    out('   layer key, the layer key wrapped (AES-256-GCM) under a key-encryption key (KEK) that only the KBS holds:');
    encrypted.forEach((d, i) => out(`     layer ${i + 1}  ${short(d.digest)}  ${d.mediaType}  kid ${kids[i]}`));
    out();

    // the layer the KBS will refuse
    const deniedDir = join(tmp, 'denied');
    const deniedPlain = await buildImage(deniedDir, { tag: 'denied', layers: [{ 'secret/token': randomBytes(64) }] });
    const deniedEnc = await encryptImage(deniedDir, { tag: 'denied', recipients: [aaRecipient(DENIED_KEK)] });
    Object.assign(resources, deniedEnc.kbsResources);
    const deniedPath = deniedEnc.keks[0]!.resourcePath;

    // 3. the KBS
    kbs = await startTestKbs({ resources });
    kbs.faults.denyPaths.add(deniedPath);
    out(`3. Started the local test KBS at ${kbs.url} (trustee RCAR protocol 0.4.0, sample attester) holding`);
    out(`   the ${Object.keys(resources).length} KEKs; its resource policy denies ${deniedPath}.`);
    out();

    // 4. decryption through the stream-processor contract
    const cacheDir = mkdtempSync(join(tmp, 'token-cache-'));
    const debugConfig = join(tmp, 'config-debug.toml');
    writeFileSync(debugConfig, configToml(kbs.url, cacheDir, 'debug'));
    out('4. Decrypting each layer as containerd runs a stream processor:');
    out(`     STREAM_PROCESSOR_MEDIATYPE=<media type> ${decoder.path} --config <config.toml>`);
    out('     encrypted blob → stdin, layer descriptor (annotations included) → fd 3, decrypted blob ← stdout');
    out(`   with an empty token cache (${cacheDir}):`);
    const before = { ...kbs.counters };
    for (const [i, desc] of encrypted.entries()) {
      const blob = readFileSync(join(imageDir, 'blobs', 'sha256', desc.digest.slice('sha256:'.length)));
      const c0 = { ...kbs.counters };
      const r = await runDecoder({ binary: decoder.path, args: ['--config', debugConfig], descriptor: desc, input: blob, output: 'buffer', timeoutMs: 60_000 });
      const d = delta(kbs.counters, c0);
      if (r.code !== 0) {
        expect(false, `layer ${i + 1}: decoder exited ${r.code ?? r.signal}: ${r.stderr.trim()}`);
        continue;
      }
      const got = `sha256:${createHash('sha256').update(r.stdout!).digest('hex')}`;
      const want = plain.layers[i]!.descriptor.digest;
      const cachedByKbs = d.attest === 0 && d.auth === 0;
      const cachedByDecoder = decoderSaysCached(r.stderr);
      const source = (cachedByKbs ? 'token from cache' : 'attested').padEnd(16);
      out(
        `     layer ${i + 1}  ${r.ms.toFixed(0).padStart(5)} ms  ${source}  KBS requests: ${d.auth + d.attest + d.resource} ` +
          `(auth ${d.auth}, attest ${d.attest}, resource ${d.resource})  digest ${short(got)} ${ok(got === want)}`,
      );
      expect(got === want, `layer ${i + 1}: decrypted digest ${got} differs from the original ${want}`);
      if (cachedByDecoder !== undefined) {
        expect(cachedByDecoder === cachedByKbs, `layer ${i + 1}: the decoder says ${cachedByDecoder ? 'cached' : 'attested'}, the KBS counters say otherwise`);
      }
    }
    const total = delta(kbs.counters, before);
    const oneAttestation = total.auth === 1 && total.attest === 1 && total.attestOk === 1;
    out(
      `   KBS counters for the image: auth ${total.auth}, attest ${total.attest}, resource ${total.resource} → ` +
        `${total.attestOk} attestation for ${encrypted.length} layers ${ok(oneAttestation)}`,
    );
    expect(oneAttestation, `expected exactly 1 attestation for the image, the KBS saw ${total.attest} (auth ${total.auth})`);
    expect(total.resourceOk === encrypted.length, `expected ${encrypted.length} KEKs released, the KBS released ${total.resourceOk}`);
    out();

    // 5. one failure
    const errorConfig = join(tmp, 'config.toml');
    writeFileSync(errorConfig, configToml(kbs.url, cacheDir, 'error'));
    const denied = deniedEnc.layers[0]!;
    const c1 = { ...kbs.counters };
    const r = await runDecoder({
      binary: decoder.path,
      args: ['--config', errorConfig],
      descriptor: denied.encrypted,
      input: readFileSync(denied.blobPath),
      output: 'buffer',
      timeoutMs: 60_000,
    });
    const d = delta(kbs.counters, c1);
    const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
    out(`5. A layer whose KEK the KBS policy denies (kid ${deniedEnc.keks[0]!.kid}, plain ${short(deniedPlain.layers[0]!.descriptor.digest)}):`);
    out(`   exit code ${r.code ?? r.signal}, ${r.stdout?.length ?? 0} bytes of plaintext, KBS requests: ${d.auth + d.attest + d.resource} (auth ${d.auth}, attest ${d.attest}, resource ${d.resource})`);
    if (d.attest > 0) out('   (a 401 may mean a stale token, so the decoder re-attested once before giving up)');
    out("   containerd fails the pull with the decoder's stderr as the error text, which `kubectl describe pod` shows:");
    for (const line of lines) out(`     ${line}`);
    expect(r.code !== 0 && r.code !== null, 'the denied layer should make the decoder exit non-zero');
    expect(lines.length === 1, `the error should be one line, got ${lines.length}`);
    expect((r.stdout?.length ?? 0) === 0, 'no plaintext may be written for a layer whose key was refused');
    expect(!r.stderr.includes('\n    at '), 'the error must not be a stack trace');
    out();

    if (existsSync('/usr/bin/containerd') && existsSync('/usr/bin/docker-registry') && existsSync('/usr/bin/skopeo')) {
      out('containerd, docker-registry and skopeo are installed here: `npm test` also runs the full containerd E2E');
      out('(registry push, CRI pull with this decoder as the stream processor, snapshot unpack).');
      out();
    }
    out(failures === 0 ? 'All checks passed.' : `${failures} check(s) FAILED.`);
    return failures === 0 ? 0 : 1;
  } finally {
    await kbs?.stop().catch(() => {});
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`demo: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
