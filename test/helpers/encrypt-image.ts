/**
 * Encrypts the layers of an OCI layout image the way ocicrypt does,
 * streaming, so a 1 GiB layer never sits in memory:
 *   - per layer: random 32-byte key and 16-byte nonce, AES-256-CTR (the nonce is the whole initial counter
 *     block), HMAC-SHA256 with the same key over the ciphertext;
 *   - `org.opencontainers.image.enc.pubopts` = base64std(`{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":…,"cipheroptions":{}}`);
 *   - privopts `{"symkey","digest","cipheroptions":{"nonce"}}` (Go field order) wrapped per scheme:
 *       attestation-agent → `org.opencontainers.image.enc.keys.provider.attestation-agent` = base64std of
 *         coco_keyprovider's `{"kid","wrapped_data","iv","wrap_type":"A256GCM"}`
 *         (AES-256-GCM under the KEK, 12-byte random IV, no AAD, wrapped_data = ciphertext‖tag);
 *         several AA recipients become a comma-separated list, as ocicrypt writes after re-wrapping;
 *       jwe → `org.opencontainers.image.enc.keys.jwe` = base64std of one JWE for all JWE recipients:
 *         flattened for one, general (plus go-jose's extra top-level `encrypted_key`) for several;
 *         RSA → `RSA-OAEP`, EC → `ECDH-ES+A256KW`, `enc` A256GCM;
 *   - media type gains `+encrypted`; the manifest and index are rewritten with the new digests and sizes.
 * Test helper only: it keeps KEKs in the returned object so a test can register them with the test KBS.
 */
import { createCipheriv, createHash, createHmac, createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { FlattenedEncrypt, GeneralEncrypt } from 'jose';
import {
  ANNOTATION_REF_NAME,
  blobPath,
  commitTempBlob,
  readImage,
  setIndexManifest,
  tempBlobPath,
  writeJsonBlob,
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
} from './oci-image.js';

export const ANNOTATION_PUBOPTS = 'org.opencontainers.image.enc.pubopts';
export const ANNOTATION_KEYS_JWE = 'org.opencontainers.image.enc.keys.jwe';
export const ANNOTATION_KEYS_AA = 'org.opencontainers.image.enc.keys.provider.attestation-agent';
export const LAYER_CIPHER = 'AES_256_CTR_HMAC_SHA256';

export type Recipient =
  | { type: 'attestation-agent'; kid: string; kek: Buffer }
  | { type: 'jwe'; publicKeyPem: string };

export interface EncryptImageOptions {
  tag: string;
  recipients: Recipient[];
  /** Tag of the encrypted image; default: replace `tag` (its plain-only blobs are then deleted). */
  outTag?: string;
  /** Indexes of the layers to encrypt; default all. */
  layerIndexes?: number[];
}

export interface EncryptedLayer {
  index: number;
  plain: Descriptor;
  encrypted: Descriptor;
  blobPath: string;
}

export interface KbsKek {
  kid: string;
  /** `repo/type/tag` the KBS serves it under (the kid's path). */
  resourcePath: string;
  kek: Buffer;
}

export interface EncryptImageResult {
  tag: string;
  manifestDescriptor: Descriptor;
  layers: EncryptedLayer[];
  keks: KbsKek[];
  /** resourcePath → KEK, ready for `startTestKbs({ resources })` or `kbs.setResource`. */
  kbsResources: Record<string, Buffer>;
}

/** The private options JSON, byte for byte as Go's encoding/json writes `PrivateLayerBlockCipherOptions`. */
export function privateOptionsJson(symkey: Buffer, digest: string, nonce: Buffer): Buffer {
  return Buffer.from(
    `{"symkey":${JSON.stringify(symkey.toString('base64'))},"digest":${JSON.stringify(digest)},"cipheroptions":{"nonce":${JSON.stringify(nonce.toString('base64'))}}}`,
  );
}

/** The public options JSON (`PublicLayerBlockCipherOptions`), Go field order, empty cipheroptions. */
export function publicOptionsJson(hmac: Buffer): Buffer {
  return Buffer.from(`{"cipher":"${LAYER_CIPHER}","hmac":${JSON.stringify(hmac.toString('base64'))},"cipheroptions":{}}`);
}

/** `kbs[+plugin]://[host]/repo/type/tag[?q]` (or `/repo/type/tag`) → `repo/type/tag`. */
export function resourcePathFromKid(kid: string): string {
  const m = /^(?:kbs(?:\+[A-Za-z0-9-]+)?:\/\/[^/]*)?\/([^?#]+)/.exec(kid);
  if (!m) throw new Error(`kid ${JSON.stringify(kid)} is not a kbs:// resource URI`);
  return m[1] as string;
}

/** coco_keyprovider's AnnotationPacket JSON text for `privopts` under `kek` (A256GCM, 12-byte IV, no AAD). */
export function wrapForAttestationAgent(privopts: Buffer, kid: string, kek: Buffer): string {
  if (kek.length !== 32) throw new Error(`KEK for ${kid} must be 32 bytes, got ${kek.length}`);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', kek, iv);
  const wrapped = Buffer.concat([cipher.update(privopts), cipher.final(), cipher.getAuthTag()]);
  return JSON.stringify({ kid, wrapped_data: wrapped.toString('base64'), iv: iv.toString('base64'), wrap_type: 'A256GCM' });
}

function jweAlgFor(key: KeyObject): string {
  if (key.asymmetricKeyType === 'rsa') return 'RSA-OAEP';
  if (key.asymmetricKeyType === 'ec') return 'ECDH-ES+A256KW';
  throw new Error(`unsupported JWE recipient key type ${String(key.asymmetricKeyType)}`);
}

/** One JWE over `privopts` for all public keys, serialised as ocicrypt (go-jose FullSerialize) does. */
export async function wrapJwe(privopts: Buffer, publicKeyPems: string[]): Promise<string> {
  const keys = publicKeyPems.map((pem) => createPublicKey(pem));
  const [first] = keys;
  if (!first) throw new Error('no JWE recipients');
  if (keys.length === 1) {
    const jwe = await new FlattenedEncrypt(privopts).setProtectedHeader({ alg: jweAlgFor(first), enc: 'A256GCM' }).encrypt(first);
    // go-jose member order (rawJSONWebEncryption); order carries no meaning, but keeps the bytes familiar.
    return JSON.stringify({ protected: jwe.protected, encrypted_key: jwe.encrypted_key, iv: jwe.iv, ciphertext: jwe.ciphertext, tag: jwe.tag });
  }
  const enc = new GeneralEncrypt(privopts).setProtectedHeader({ enc: 'A256GCM' });
  for (const key of keys) enc.addRecipient(key).setUnprotectedHeader({ alg: jweAlgFor(key) });
  const jwe = await enc.encrypt();
  // go-jose also emits recipient 0's key at top level in general form; parsers ignore it.
  return JSON.stringify({
    protected: jwe.protected,
    recipients: jwe.recipients,
    encrypted_key: jwe.recipients[0]?.encrypted_key,
    iv: jwe.iv,
    ciphertext: jwe.ciphertext,
    tag: jwe.tag,
  });
}

/** `…tar[+gzip|+zstd]` (and Docker's rootfs.diff names, as imgcrypt maps them) → the `+encrypted` type. */
export function encryptedMediaType(mediaType: string): string {
  switch (mediaType) {
    case 'application/vnd.oci.image.layer.v1.tar':
    case 'application/vnd.oci.image.layer.v1.tar+gzip':
    case 'application/vnd.oci.image.layer.v1.tar+zstd':
      return `${mediaType}+encrypted`;
    case 'application/vnd.docker.image.rootfs.diff.tar.gzip':
      return 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted';
    case 'application/vnd.docker.image.rootfs.diff.tar':
      return 'application/vnd.oci.image.layer.v1.tar+encrypted';
    default:
      throw new Error(`cannot encrypt a layer of media type ${mediaType}`);
  }
}

export interface LayerCipherResult {
  symkey: Buffer;
  nonce: Buffer;
  hmac: Buffer;
  /** sha256 digest and size of the ciphertext file. */
  digest: string;
  size: number;
  /** sha256 digest of the plaintext that was read. */
  plainDigest: string;
}

/** Streams `src` through AES-256-CTR into `dst`, with HMAC-SHA256 over the ciphertext. Caller zeroes `symkey`. */
export async function encryptLayerFile(src: string, dst: string): Promise<LayerCipherResult> {
  const symkey = randomBytes(32);
  const nonce = randomBytes(16);
  const cipher = createCipheriv('aes-256-ctr', symkey, nonce);
  const hmac = createHmac('sha256', symkey);
  const plainHash = createHash('sha256');
  const encHash = createHash('sha256');
  let size = 0;
  await pipeline(
    createReadStream(src, { highWaterMark: 1 << 20 }),
    async function* (source: AsyncIterable<Buffer>) {
      for await (const chunk of source) {
        plainHash.update(chunk);
        const ct = cipher.update(chunk);
        hmac.update(ct);
        encHash.update(ct);
        size += ct.length;
        yield ct;
      }
      const tail = cipher.final(); // CTR: always empty, kept for form
      if (tail.length > 0) {
        hmac.update(tail);
        encHash.update(tail);
        size += tail.length;
        yield tail;
      }
    },
    createWriteStream(dst),
  );
  return {
    symkey,
    nonce,
    hmac: hmac.digest(),
    digest: `sha256:${encHash.digest('hex')}`,
    size,
    plainDigest: `sha256:${plainHash.digest('hex')}`,
  };
}

/** Go marshals annotation maps with sorted keys. */
function sortedAnnotations(annotations: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(annotations).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

async function encryptLayer(dir: string, plain: Descriptor, recipients: Recipient[]): Promise<Descriptor> {
  if (plain.annotations && Object.keys(plain.annotations).some((k) => k.startsWith('org.opencontainers.image.enc.'))) {
    throw new Error(`layer ${plain.digest} is already encrypted`);
  }
  const mediaType = encryptedMediaType(plain.mediaType);
  const tmp = tempBlobPath(dir);
  let result: LayerCipherResult;
  try {
    result = await encryptLayerFile(blobPath(dir, plain.digest), tmp);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  const privopts = privateOptionsJson(result.symkey, plain.digest, result.nonce);
  try {
    if (result.plainDigest !== plain.digest) throw new Error(`layer blob ${plain.digest} does not match its digest`);
    const annotations: Record<string, string> = { ...plain.annotations };
    const aa = recipients.filter((r): r is Extract<Recipient, { type: 'attestation-agent' }> => r.type === 'attestation-agent');
    if (aa.length > 0) {
      annotations[ANNOTATION_KEYS_AA] = aa
        .map((r) => Buffer.from(wrapForAttestationAgent(privopts, r.kid, r.kek)).toString('base64'))
        .join(',');
    }
    const jwe = recipients.filter((r): r is Extract<Recipient, { type: 'jwe' }> => r.type === 'jwe');
    if (jwe.length > 0) {
      annotations[ANNOTATION_KEYS_JWE] = Buffer.from(await wrapJwe(privopts, jwe.map((r) => r.publicKeyPem))).toString('base64');
    }
    annotations[ANNOTATION_PUBOPTS] = publicOptionsJson(result.hmac).toString('base64');
    await commitTempBlob(dir, tmp, result.digest);
    return { mediaType, digest: result.digest, size: result.size, annotations: sortedAnnotations(annotations) };
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  } finally {
    result.symkey.fill(0);
    privopts.fill(0);
  }
}

/** Every blob digest reachable from the index's image manifests. */
async function referencedDigests(dir: string, index: ImageIndex): Promise<Set<string>> {
  const refs = new Set<string>();
  for (const entry of index.manifests) {
    refs.add(entry.digest);
    try {
      const manifest = JSON.parse(await readFile(blobPath(dir, entry.digest), 'utf8')) as ImageManifest;
      refs.add(manifest.config.digest);
      for (const layer of manifest.layers ?? []) refs.add(layer.digest);
    } catch {
      // not an image manifest we can read: keep what we know
    }
  }
  return refs;
}

/** Encrypts the image tagged `opts.tag` in the OCI layout at `dir` (in place; see the module comment). */
export async function encryptImage(dir: string, opts: EncryptImageOptions): Promise<EncryptImageResult> {
  if (opts.recipients.length === 0) throw new Error('encryptImage needs at least one recipient');
  const outTag = opts.outTag ?? opts.tag;
  const image = await readImage(dir, opts.tag);
  const selected = new Set(opts.layerIndexes ?? image.manifest.layers.map((_, i) => i));

  const layers: EncryptedLayer[] = [];
  const newLayers: Descriptor[] = [];
  for (const [i, plain] of image.manifest.layers.entries()) {
    if (!selected.has(i)) {
      newLayers.push(plain);
      continue;
    }
    const encrypted = await encryptLayer(dir, plain, opts.recipients);
    newLayers.push(encrypted);
    layers.push({ index: i, plain, encrypted, blobPath: blobPath(dir, encrypted.digest) });
  }

  const manifest: ImageManifest = { ...image.manifest, layers: newLayers };
  const written = await writeJsonBlob(dir, image.manifestDescriptor.mediaType, manifest);
  const { [ANNOTATION_REF_NAME]: _ref, ...keptAnnotations } = image.manifestDescriptor.annotations ?? {};
  const manifestDescriptor: Descriptor = { ...image.manifestDescriptor, digest: written.digest, size: written.size };
  if (Object.keys(keptAnnotations).length > 0) manifestDescriptor.annotations = keptAnnotations;
  else delete manifestDescriptor.annotations;
  const index = await setIndexManifest(dir, outTag, manifestDescriptor);

  if (outTag === opts.tag) {
    // The plain image is gone from the index: drop its blobs unless another tag still uses them.
    const stillUsed = await referencedDigests(dir, index);
    for (const layer of layers) {
      if (!stillUsed.has(layer.plain.digest)) await rm(blobPath(dir, layer.plain.digest), { force: true });
    }
    if (!stillUsed.has(image.manifestDescriptor.digest)) await rm(image.manifestPath, { force: true });
  }

  const keks: KbsKek[] = [];
  const kbsResources: Record<string, Buffer> = {};
  for (const r of opts.recipients) {
    if (r.type !== 'attestation-agent') continue;
    const resourcePath = resourcePathFromKid(r.kid);
    keks.push({ kid: r.kid, resourcePath, kek: r.kek });
    kbsResources[resourcePath] = r.kek;
  }
  return { tag: outTag, manifestDescriptor: { ...manifestDescriptor, annotations: { ...manifestDescriptor.annotations, [ANNOTATION_REF_NAME]: outTag } }, layers, keks, kbsResources };
}

/** Convenience for tests: a fresh random 32-byte KEK recipient under `kbs:///default/image-kek/<name>`. */
export function aaRecipient(name: string, kek: Buffer = randomBytes(32)): Extract<Recipient, { type: 'attestation-agent' }> {
  return { type: 'attestation-agent', kid: `kbs:///default/image-kek/${name}`, kek };
}
