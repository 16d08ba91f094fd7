/**
 * `coco-decoder encrypt`: the image owner's side. Encrypts the layers of an OCI layout image for the
 * attestation-agent key provider (the layer key wrapped under a KEK that the KBS releases after attestation, as
 * CoCo's coco_keyprovider writes it) and optionally for extra JWE recipients (readable by any ocicrypt client).
 *
 *   coco-decoder encrypt --kid kbs:///<repo>/<type>/<tag> --kek-file FILE [--recipient jwe:PUBKEY.pem]...
 *                        [--layers 0,2] SRC DST     (oci:DIR[:TAG] or oci-archive:FILE.tar[:TAG])
 *   coco-decoder encrypt --kek-generate FILE [--kid kbs:///<repo>/<type>/<tag>]
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { parseResourceUri } from '../kbs/resource-uri.js';
import { packOciArchive, unpackOciArchive } from '../image/archive.js';
import type { Descriptor } from '../image/layout.js';
import { rewriteImage, type LayerContext } from '../image/rewrite.js';
import { encryptLayerFile } from '../ocicrypt/encrypt-layer.js';
import { ANNOTATION_PREFIX, PUBOPTS_ANNOTATION } from '../ocicrypt/keywrap/keywrapper.js';
import { KEK_BYTES, wrapForAttestationAgent } from '../ocicrypt/keywrap/attestation-agent-wrap.js';
import { readKekFile } from './kek-file.js';
import { wrapJwe } from '../ocicrypt/keywrap/jwe-wrap.js';
import { DecoderError, describeError } from '../util/errors.js';
import { exists } from '../util/exists.js';
import { boundedLine, quoteUntrusted } from '../util/quote.js';

export const USAGE = `usage: coco-decoder encrypt --kid kbs:///REPO/TYPE/TAG --kek-file FILE [--recipient jwe:PUBKEY.pem]...
                             [--layers 0,2] SRC DST
       (SRC, DST: oci:DIR[:TAG] or oci-archive:FILE.tar[:TAG])
       coco-decoder encrypt --kek-generate FILE [--kid kbs:///REPO/TYPE/TAG]

Encrypts every layer (or the --layers listed, counted from 0 in each manifest) of the image with a fresh
AES-256-CTR/HMAC-SHA256 layer key, wrapped for the CoCo attestation-agent key provider under the 32-byte KEK in
--kek-file (the KBS resource named by --kid), and for each --recipient. Image indexes (multi-arch) are walked.
DST must not exist; it is written completely or not at all. --kek-generate writes a new random KEK (0600).`;

const AA_ANNOTATION = `${ANNOTATION_PREFIX}provider.attestation-agent`;
const JWE_ANNOTATION = `${ANNOTATION_PREFIX}jwe`;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

export interface ImageRef {
  /** `oci`: a layout directory; `oci-archive`: a tar file holding one. */
  transport: 'oci' | 'oci-archive';
  path: string;
  tag: string | undefined;
}

/** `oci:DIR[:TAG]` or `oci-archive:FILE.tar[:TAG]` (skopeo's transport syntax). */
export function parseImageRef(ref: string, what: string): ImageRef {
  const transport = ref.startsWith('oci-archive:') ? 'oci-archive' : ref.startsWith('oci:') ? 'oci' : undefined;
  if (transport === undefined) throw new DecoderError(`${what} ${quoteUntrusted(ref, 120)} must be oci:DIR[:TAG] or oci-archive:FILE[:TAG]`);
  const rest = ref.slice(transport.length + 1);
  const colon = rest.lastIndexOf(':');
  if (colon > 0 && TAG_RE.test(rest.slice(colon + 1)) && !rest.slice(colon + 1).includes('/')) {
    return { transport, path: rest.slice(0, colon), tag: rest.slice(colon + 1) };
  }
  if (rest === '') throw new DecoderError(`${what} ${quoteUntrusted(ref, 120)} names no ${transport === 'oci' ? 'directory' : 'file'}`);
  return { transport, path: rest, tag: undefined };
}

function parseLayers(spec: string): Set<number> {
  const out = new Set<number>();
  for (const part of spec.split(',')) {
    if (!/^\d{1,4}$/.test(part)) throw new DecoderError(`--layers ${quoteUntrusted(spec, 60)}: expected comma-separated layer numbers, e.g. 0,2`);
    out.add(Number(part));
  }
  return out;
}

async function generateKek(file: string, kid: string | undefined): Promise<number> {
  const kek = randomBytes(KEK_BYTES);
  try {
    await writeFile(file, kek, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new DecoderError(code === 'EEXIST' ? `${file} already exists: a KEK is never overwritten` : `cannot create ${file}: ${code ?? String(err)}`);
  } finally {
    kek.fill(0);
  }
  const resource = kid ? parseResourceUri(kid).path : '<repository>/<type>/<tag>';
  process.stdout.write(
    `wrote a new ${KEK_BYTES}-byte KEK to ${file} (mode 0600)\n` +
      `provision it on the KBS (trustee), e.g.:\n` +
      `  kbs-client --url https://<kbs> config --auth-private-key <admin-key.pem> set-resource --path ${resource} --resource-file ${file}\n` +
      `then encrypt with: coco-decoder encrypt --kid kbs:///${resource} --kek-file ${file} oci:SRC oci:DST\n`,
  );
  return 0;
}

/** Progress on a terminal only: containerd, CI and scripts see nothing. */
function progress(): { layer(ctx: LayerContext, desc: Descriptor): (n: number) => void; done(): void } {
  const tty = process.stderr.isTTY === true;
  let n = 0;
  return {
    layer(ctx, desc) {
      n++;
      if (!tty) return () => undefined;
      const started = Date.now();
      let bytes = 0;
      let last = 0;
      return (k) => {
        bytes += k;
        const now = Date.now();
        if (now - last < 250 && bytes < desc.size) return;
        last = now;
        const rate = bytes / 1e6 / Math.max((now - started) / 1000, 0.001);
        process.stderr.write(`\rlayer ${ctx.index + 1}/${ctx.count} (${n} so far): ${(bytes / 1e6).toFixed(1)}/${(desc.size / 1e6).toFixed(1)} MB, ${rate.toFixed(0)} MB/s   `);
      };
    },
    done() {
      if (tty && n > 0) process.stderr.write('\n');
    },
  };
}

export async function run(argv: string[]): Promise<number> {
  let values: { kid?: string; 'kek-file'?: string; 'kek-generate'?: string; recipient?: string[]; layers?: string; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: {
        kid: { type: 'string' },
        'kek-file': { type: 'string' },
        'kek-generate': { type: 'string' },
        recipient: { type: 'string', multiple: true },
        layers: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    process.stderr.write(`${boundedLine(`coco-decoder encrypt: ${describeError(err)}`)}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  try {
    if (values['kek-generate'] !== undefined) {
      if (positionals.length > 0 || values['kek-file'] !== undefined) throw new DecoderError('--kek-generate takes only a file (and optionally --kid)');
      return await generateKek(values['kek-generate'], values.kid);
    }
    return await encrypt(values, positionals);
  } catch (err) {
    process.stderr.write(`${boundedLine(`coco-decoder encrypt: ${describeError(err)}`)}\n`);
    return 1;
  }
}

async function encrypt(values: { kid?: string; 'kek-file'?: string; recipient?: string[]; layers?: string }, positionals: string[]): Promise<number> {
  if (positionals.length !== 2) throw new DecoderError(`expected SRC and DST (oci:DIR[:TAG] or oci-archive:FILE[:TAG]), got ${positionals.length} arguments`);
  const src = parseImageRef(positionals[0]!, 'SRC');
  const dst = parseImageRef(positionals[1]!, 'DST');
  if ((values.kid === undefined) !== (values['kek-file'] === undefined)) throw new DecoderError('--kid and --kek-file go together');
  const recipients = (values.recipient ?? []).map((r) => {
    if (!r.startsWith('jwe:') || r.length === 4) throw new DecoderError(`--recipient ${quoteUntrusted(r, 80)}: only jwe:PUBKEY.pem recipients are supported`);
    return r.slice(4);
  });
  if (values.kid === undefined && recipients.length === 0) throw new DecoderError('nothing to encrypt for: give --kid with --kek-file, and/or --recipient jwe:PUBKEY.pem');
  const kid = values.kid !== undefined ? parseResourceUri(values.kid).uri : undefined;
  const kek =
    values['kek-file'] !== undefined
      ? await readKekFile(values['kek-file'], {
          what: '--kek-file',
          fail: (m) => new DecoderError(m),
          onLooseMode: (mode) => process.stderr.write(`coco-decoder encrypt: warning: ${values['kek-file']} is readable by others (mode ${mode.toString(8)}); a KEK should be 0600\n`),
        })
      : undefined;
  const jweKeys = await Promise.all(
    recipients.map(async (file) => ({ key: await readFile(file).catch(() => Promise.reject(new DecoderError(`--recipient jwe:${file}: cannot read the file`))), source: file })),
  );
  const layerIndexes = values.layers !== undefined ? parseLayers(values.layers) : undefined;
  const show = progress();
  // Archives go through private temporary layouts (0700); the archive itself is written whole or not at all.
  const scratch = src.transport === 'oci-archive' || dst.transport === 'oci-archive' ? await mkdtemp(path.join(tmpdir(), 'coco-decoder-encrypt-')) : undefined;
  try {
    if (dst.transport === 'oci-archive' && (await exists(dst.path))) {
      throw new DecoderError(`${dst.path} already exists: choose a new destination`);
    }
    let srcDir = src.path;
    if (src.transport === 'oci-archive') {
      srcDir = path.join(scratch!, 'src');
      await mkdir(srcDir, { mode: 0o700 });
      await unpackOciArchive(src.path, srcDir);
    }
    const dstDir = dst.transport === 'oci-archive' ? path.join(scratch!, 'dst') : dst.path;
    const result = await rewriteImage({
      srcDir,
      srcTag: src.tag,
      dstDir,
      dstTag: dst.tag,
      layerIndexes,
      async transformLayer(layer, srcFile, tmpFile, ctx) {
        const encryptedType = encryptedMediaType(layer);
        const out = await encryptLayerFile(srcFile, tmpFile, show.layer(ctx, layer));
        try {
          if (out.plainDigest !== layer.digest || out.size !== layer.size) {
            throw new DecoderError(`layer blob ${layer.digest} in ${src.path} does not match its descriptor (content hashes to ${out.plainDigest}, ${out.size} bytes)`);
          }
          const annotations: Record<string, string> = { ...layer.annotations };
          if (kid !== undefined && kek !== undefined) annotations[AA_ANNOTATION] = Buffer.from(wrapForAttestationAgent(out.privateOptions, kid, kek)).toString('base64');
          if (jweKeys.length > 0) annotations[JWE_ANNOTATION] = Buffer.from(await wrapJwe(out.privateOptions, jweKeys)).toString('base64');
          annotations[PUBOPTS_ANNOTATION] = out.publicOptions.toString('base64');
          // Go marshals annotation maps with sorted keys; keeping that order makes our manifests look like ocicrypt's.
          const sorted = Object.fromEntries(Object.entries(annotations).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
          return { ...layer, mediaType: encryptedType, digest: out.digest, size: out.size, annotations: sorted };
        } finally {
          out.privateOptions.fill(0);
        }
      },
    });
    if (dst.transport === 'oci-archive') await packOciArchive(dstDir, dst.path);
    show.done();
    const tag = result.top.annotations?.['org.opencontainers.image.ref.name'];
    process.stderr.write(`coco-decoder encrypt: ${result.layersTransformed} layer(s) encrypted into ${dst.transport}:${dst.path}${tag ? `:${tag}` : ''} (${result.top.digest})\n`);
    return 0;
  } finally {
    kek?.fill(0);
    if (scratch !== undefined) await rm(scratch, { recursive: true, force: true });
  }
}

/** The `+encrypted` media type of a layer; an already encrypted (or unknown) layer is refused. */
function encryptedMediaType(layer: Descriptor): string {
  if (Object.keys(layer.annotations ?? {}).some((k) => k.startsWith('org.opencontainers.image.enc.'))) {
    throw new DecoderError(`layer ${layer.digest} is already encrypted`);
  }
  switch (layer.mediaType) {
    case 'application/vnd.oci.image.layer.v1.tar':
    case 'application/vnd.oci.image.layer.v1.tar+gzip':
    case 'application/vnd.oci.image.layer.v1.tar+zstd':
      return `${layer.mediaType}+encrypted`;
    default:
      throw new DecoderError(`layer ${layer.digest} has media type ${quoteUntrusted(layer.mediaType, 80)}, which ocicrypt cannot encrypt`);
  }
}
