/**
 * Focused decrypt-throughput measurement (the 1 GiB / 4 GiB parts of `npm run bench`, nothing else), for iterating
 * on the decipher: builds one encrypted layer of `--size` MiB (or reuses `--dir` from an earlier `--keep`), then runs
 * one or more decoder binaries on it `--runs` times, interleaved, through the real stream-processor contract
 * (stdin a pipe, payload on fd 3, stdout /dev/null) under GNU time, and prints medians of wall and CPU throughput
 * and peak RSS.
 *
 *   node --import tsx test/bench/decrypt-throughput.ts [--size 1024] [--runs 5] [--dir D --keep] [--bin A --bin B]
 */
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { encryptImage, type EncryptedLayer } from '../helpers/encrypt-image.js';
import { buildImage } from '../helpers/oci-image.js';
import { locateDecoder } from '../helpers/decoder-binary.js';
import { runDecoder } from '../helpers/run-decoder.js';
import { keystream } from './keystream.js';
import { mbPerSec, median } from './stats.js';

const MiB = 1024 ** 2;

async function prepare(dir: string, size: number): Promise<{ layer: EncryptedLayer; keysDir: string }> {
  const keysDir = join(dir, 'keys');
  const saved = join(dir, 'layer.json');
  if (existsSync(saved)) return { layer: JSON.parse(readFileSync(saved, 'utf8')) as EncryptedLayer, keysDir };
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  mkdirSync(keysDir, { recursive: true, mode: 0o700 });
  writeFileSync(join(keysDir, 'bench.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const imageDir = join(dir, 'image');
  await buildImage(imageDir, { tag: 'big', compression: 'none', layers: [{ 'data/blob.bin': { size, open: () => keystream(size, 'throughput') } }] });
  const enc = await encryptImage(imageDir, { tag: 'big', recipients: [{ type: 'jwe', publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }) as string }] });
  const layer = enc.layers[0]!;
  writeFileSync(saved, JSON.stringify(layer));
  return { layer, keysDir };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '1024' },
      runs: { type: 'string', default: '5' },
      dir: { type: 'string' },
      keep: { type: 'boolean' },
      bin: { type: 'string', multiple: true },
    },
    strict: true,
  });
  const size = Number(values.size) * MiB;
  const runs = Number(values.runs);
  const bins = values.bin?.length ? values.bin : [locateDecoder().path];
  const dir = values.dir ?? mkdtempSync(join(os.tmpdir(), 'coco-throughput-'));
  mkdirSync(dir, { recursive: true });
  try {
    const t0 = performance.now();
    const { layer, keysDir } = await prepare(dir, size);
    process.stderr.write(`layer ready (${layer.encrypted.size} bytes) in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    const samples = bins.map(() => ({ wall: [] as number[], cpu: [] as number[], rss: [] as number[], user: [] as number[], sys: [] as number[] }));
    for (let i = 0; i < runs; i++) {
      for (let b = 0; b < bins.length; b++) {
        const r = await runDecoder({
          binary: bins[b]!,
          args: ['--decryption-keys-path', keysDir],
          descriptor: layer.encrypted,
          input: layer.blobPath,
          output: 'discard',
          measure: true,
          timeoutMs: 600_000,
        });
        if (r.code !== 0) throw new Error(`${bins[b]} exited ${r.code ?? r.signal}: ${r.stderr.trim()}`);
        const s = samples[b]!;
        s.wall.push(mbPerSec(layer.encrypted.size, r.ms));
        s.cpu.push(mbPerSec(layer.encrypted.size, r.userMs! + r.sysMs!));
        s.rss.push(r.peakRssKiB! / 1024);
        s.user.push(r.userMs!);
        s.sys.push(r.sysMs!);
        process.stderr.write(
          `run ${i + 1} ${bins[b]}: ${s.wall.at(-1)!.toFixed(0)} MB/s wall, ${s.cpu.at(-1)!.toFixed(0)} MB/s per CPU s (user ${r.userMs} ms sys ${r.sysMs} ms), RSS ${s.rss.at(-1)!.toFixed(1)} MiB, load ${os.loadavg()[0]!.toFixed(2)}\n`,
        );
      }
    }
    for (let b = 0; b < bins.length; b++) {
      const s = samples[b]!;
      process.stdout.write(
        `${bins[b]}: ${(size / MiB).toFixed(0)} MiB × ${runs}: median ${median(s.wall).toFixed(0)} MB/s wall (best ${Math.max(...s.wall).toFixed(0)}), ` +
          `median ${median(s.cpu).toFixed(0)} MB/s per CPU s (user ${median(s.user).toFixed(0)} ms, sys ${median(s.sys).toFixed(0)} ms), ` +
          `peak RSS median ${median(s.rss).toFixed(1)} max ${Math.max(...s.rss).toFixed(1)} MiB\n`,
      );
    }
  } finally {
    if (!values.keep) rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`decrypt-throughput: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
