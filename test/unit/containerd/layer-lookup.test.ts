/**
 * The content-store lookup against a fake content service (in memory, counting reads): which manifests it
 * walks, how the leading bytes choose a blob, and how it refuses to guess.
 */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { ContentSource } from '../../../src/containerd/client.js';
import { HEAD_BYTES, LONG_HEAD_BYTES, MAX_ANNOTATION_SETS, lookupLayer, type LookupRequest } from '../../../src/containerd/layer-lookup.js';
import type { ContentInfo, ImageRecord } from '../../../src/containerd/messages.js';

const ENC = 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted';
const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const INDEX = 'application/vnd.oci.image.index.v1+json';
const digestOf = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface Layer {
  blob: Buffer;
  annotations: Record<string, string>;
  mediaType?: string;
}

/** containerd as the lookup sees it: namespaces with blobs, labels and image records. */
class FakeContent implements ContentSource {
  readonly blobs = new Map<string, Map<string, Buffer>>();
  readonly labels = new Map<string, ContentInfo[]>();
  readonly images = new Map<string, ImageRecord[]>();
  reads = 0;

  put(ns: string, blob: Buffer): string {
    const d = digestOf(blob);
    if (!this.blobs.has(ns)) this.blobs.set(ns, new Map());
    this.blobs.get(ns)!.set(d, blob);
    return d;
  }

  /** Stores the layers and a manifest listing them; labelled like containerd's fetch handlers do unless `labelled` is false. */
  manifest(ns: string, layers: Layer[], opts: { labelled?: boolean } = {}): { digest: string; size: number } {
    const descs = layers.map((l) => ({ mediaType: l.mediaType ?? ENC, digest: this.put(ns, l.blob), size: l.blob.length, annotations: l.annotations }));
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MANIFEST, config: {}, layers: descs }));
    const digest = this.put(ns, bytes);
    if (opts.labelled !== false) {
      const labels = new Map(descs.map((d, i) => [`containerd.io/gc.ref.content.l.${i}`, d.digest]));
      this.labels.set(ns, [...(this.labels.get(ns) ?? []), { digest, size: bytes.length, labels }]);
    }
    return { digest, size: bytes.length };
  }

  image(ns: string, name: string, target: { mediaType: string; digest: string; size: number }): void {
    this.images.set(ns, [...(this.images.get(ns) ?? []), { name, target: { ...target, annotations: new Map() } }]);
  }

  async namespaces(): Promise<string[]> {
    return [...new Set([...this.blobs.keys(), ...this.labels.keys()])].sort();
  }
  async listContent(ns: string, filters: readonly string[]): Promise<ContentInfo[]> {
    expect(filters).toEqual(['labels."containerd.io/gc.ref.content.l.0"']);
    return this.labels.get(ns) ?? [];
  }
  async listImages(ns: string): Promise<ImageRecord[]> {
    return this.images.get(ns) ?? [];
  }
  async read(ns: string, digest: string, offset: number, size: number): Promise<Buffer | undefined> {
    this.reads++;
    const b = this.blobs.get(ns)?.get(digest);
    return b?.subarray(offset, offset + size);
  }
  close(): void {}
}

const keys = (tag: string): Record<string, string> => ({ 'org.opencontainers.image.enc.keys.jwe': tag, 'org.opencontainers.image.enc.pubopts': 'e30=' });

/** A request for `stdin`, the whole stream known in advance (the real one reads it from fd 0). */
function request(stdin: Buffer, where = 'containerd at /fake.sock (test)'): LookupRequest & { longestRead: () => number } {
  let longest = Math.min(HEAD_BYTES, stdin.length);
  return {
    head: stdin.subarray(0, longest),
    headIsWhole: stdin.length <= HEAD_BYTES,
    readHead: async (n) => {
      longest = Math.max(longest, Math.min(n, stdin.length));
      return { head: stdin.subarray(0, longest), whole: stdin.length <= n };
    },
    isCandidate: (l) => l.mediaType === ENC && Object.keys(l.annotations).some((k) => k.startsWith('org.opencontainers.image.enc.keys.')),
    where,
    longestRead: () => longest,
  };
}

describe('lookupLayer', () => {
  it('finds the layer whose stored leading bytes equal stdin, with every distinct annotation set listing it', async () => {
    const store = new FakeContent();
    const target = randomBytes(4096);
    const other = randomBytes(4096);
    store.manifest('k8s.io', [{ blob: randomBytes(100), annotations: {}, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }, { blob: target, annotations: keys('a') }]);
    store.manifest('k8s.io', [{ blob: target, annotations: keys('b') }, { blob: other, annotations: keys('c') }]); // re-wrapped recipients
    store.manifest('default', [{ blob: target, annotations: keys('a') }]); // the same set again, from ctr
    const m = await lookupLayer(store, request(target));
    expect(m.digest).toBe(digestOf(target));
    expect(m.size).toBe(target.length);
    expect(m.mediaType).toBe(ENC);
    expect(m.annotationSets.map((s) => s.annotations['org.opencontainers.image.enc.keys.jwe']).sort()).toEqual(['a', 'b']);
    expect(m.stats.namespaces).toEqual(['default', 'k8s.io']);
    expect(m.stats.candidates).toBe(2); // the unencrypted layer is no candidate
  });

  it('follows image records to indexes and manifests stored without layer labels', async () => {
    const store = new FakeContent();
    const target = randomBytes(2000);
    const man = store.manifest('k8s.io', [{ blob: target, annotations: keys('x') }], { labelled: false });
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: MANIFEST, ...man, platform: { os: 'linux' } }] }));
    store.image('k8s.io', 'registry.example/app:1', { mediaType: INDEX, digest: store.put('k8s.io', index), size: index.length });
    const m = await lookupLayer(store, request(target));
    expect(m.digest).toBe(digestOf(target));
    expect(m.annotationSets[0]!.manifest).toBe(man.digest);
  });

  it('compares up to 64 KiB when two different blobs share the leading bytes, and picks the one that matches', async () => {
    const store = new FakeContent();
    const target = randomBytes(200_000);
    const forged = Buffer.concat([target.subarray(0, 1000), randomBytes(199_000)]); // copied head, own annotations
    store.manifest('k8s.io', [{ blob: forged, annotations: keys('attacker') }]);
    store.manifest('k8s.io', [{ blob: target, annotations: keys('owner') }]);
    const req = request(target);
    const m = await lookupLayer(store, req);
    expect(m.digest).toBe(digestOf(target));
    expect(m.annotationSets.map((s) => s.annotations['org.opencontainers.image.enc.keys.jwe'])).toEqual(['owner']);
    expect(req.longestRead()).toBe(LONG_HEAD_BYTES);
  });

  it('refuses to guess when different blobs are identical over the compared bytes', async () => {
    const store = new FakeContent();
    const target = randomBytes(200_000);
    const forged = Buffer.concat([target.subarray(0, LONG_HEAD_BYTES + 10), randomBytes(100)]);
    store.manifest('k8s.io', [{ blob: forged, annotations: keys('attacker') }]);
    store.manifest('k8s.io', [{ blob: target, annotations: keys('owner') }]);
    await expect(lookupLayer(store, request(target))).rejects.toThrow(/^2 different layers in containerd's content store \(sha256:[0-9a-f]{12}, sha256:[0-9a-f]{12}\) start with the same bytes as stdin; refusing to guess/);
  });

  it('a layer no manifest lists: one message naming the socket, the namespaces and what was looked at', async () => {
    const store = new FakeContent();
    store.manifest('k8s.io', [{ blob: randomBytes(500), annotations: keys('a') }]);
    store.manifest('moby', [{ blob: randomBytes(500), annotations: keys('b') }]);
    await expect(lookupLayer(store, request(randomBytes(500)))).rejects.toThrow(
      "no manifest in containerd's content store lists the layer on stdin (searched containerd at /fake.sock (test): namespaces k8s.io, moby; 2 manifests, 2 candidate encrypted layers)",
    );
  });

  it('a short stream matches only a blob of exactly its size', async () => {
    const store = new FakeContent();
    const tiny = randomBytes(20);
    store.manifest('k8s.io', [{ blob: Buffer.concat([tiny, randomBytes(50)]), annotations: keys('longer') }]);
    await expect(lookupLayer(store, request(tiny))).rejects.toThrow(/0 candidate encrypted layers/);
    store.manifest('k8s.io', [{ blob: tiny, annotations: keys('exact') }]);
    expect((await lookupLayer(store, request(tiny))).digest).toBe(digestOf(tiny));
  });

  it('skips malformed manifests and layers listed but absent from the store', async () => {
    const store = new FakeContent();
    const target = randomBytes(300);
    const junk = Buffer.from('{"layers": [{"digest": "sha256:zz", "size": -1}], "x": ');
    store.labels.set('k8s.io', [{ digest: store.put('k8s.io', junk), size: junk.length, labels: new Map() }]);
    const absent = { mediaType: ENC, digest: `sha256:${'ab'.repeat(32)}`, size: 300, annotations: keys('gone') };
    const ghost = Buffer.from(JSON.stringify({ layers: [absent] }));
    store.labels.get('k8s.io')!.push({ digest: store.put('k8s.io', ghost), size: ghost.length, labels: new Map() });
    store.manifest('k8s.io', [{ blob: target, annotations: keys('real') }]);
    const m = await lookupLayer(store, request(target));
    expect(m.annotationSets.map((s) => s.annotations['org.opencontainers.image.enc.keys.jwe'])).toEqual(['real']);
  });

  it(`keeps at most ${MAX_ANNOTATION_SETS} annotation sets per layer, in a stable order`, async () => {
    const store = new FakeContent();
    const target = randomBytes(300);
    for (let i = 0; i < 20; i++) store.manifest('k8s.io', [{ blob: target, annotations: keys(`r${i}`) }]);
    const a = await lookupLayer(store, request(target));
    const b = await lookupLayer(store, request(target));
    expect(a.annotationSets).toHaveLength(MAX_ANNOTATION_SETS);
    expect(a.annotationSets.map((s) => s.manifest)).toEqual(b.annotationSets.map((s) => s.manifest));
  });

  it('searches only namespaces with names containerd itself would accept', async () => {
    const store = new FakeContent();
    const target = randomBytes(300);
    store.manifest('k8s.io', [{ blob: target, annotations: keys('ok') }]);
    store.manifest('bad\u001b[31mname', [{ blob: randomBytes(300), annotations: keys('x') }]);
    const m = await lookupLayer(store, request(target));
    expect(m.stats.namespaces).toEqual(['k8s.io']);
  });

  it('an empty stdin is refused before containerd is asked anything', async () => {
    const store = new FakeContent();
    await expect(lookupLayer(store, request(Buffer.alloc(0)))).rejects.toThrow('stdin is empty');
    expect(store.reads).toBe(0);
  });
});
