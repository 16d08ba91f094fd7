/**
 * `oci-archive:` images: an OCI layout in a tar file (what `skopeo copy … oci-archive:F.tar` writes). Unpacked
 * into a private directory to be read like any layout, and packed from one. Archives are untrusted: only the
 * layout's own entries are taken (`oci-layout`, `index.json`, `blobs/sha256/<64 hex>`), regular files only, no
 * path can leave the directory, and the entry count is bounded.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { DecoderError } from '../util/errors.js';
import { exists } from '../util/exists.js';
import { quoteUntrusted } from '../util/quote.js';

const MAX_ENTRIES = 100_000;
const ENTRY_RE = /^(?:oci-layout|index\.json|blobs\/sha256\/[0-9a-f]{64})$/;
const DIR_RE = /^(?:blobs|blobs\/sha256)\/?$/;

/** Unpacks `file` into `dir` (which must exist and be empty). */
export async function unpackOciArchive(file: string, dir: string): Promise<void> {
  const extract = tar.extract();
  let entries = 0;
  extract.on('entry', (header, stream, next) => {
    const name = header.name.replace(/^\.\//, '');
    stream.on('error', () => undefined); // destroyed with the extractor on a refusal; the pipeline reports it
    const fail = (why: string): void => {
      extract.destroy(new DecoderError(`oci-archive ${file}: ${why}`));
    };
    if (++entries > MAX_ENTRIES) return fail(`more than ${MAX_ENTRIES} entries`);
    if (header.type === 'directory' && (DIR_RE.test(name) || name === '' || name === '.')) {
      stream.resume();
      stream.on('end', next);
      return;
    }
    if (header.type !== 'file' || !ENTRY_RE.test(name)) return fail(`unexpected entry ${quoteUntrusted(name, 100)} (${header.type ?? 'unknown'}) for an OCI layout`);
    const dest = path.join(dir, ...name.split('/'));
    void (async () => {
      try {
        await mkdir(path.dirname(dest), { recursive: true, mode: 0o700 });
        await pipeline(stream, createWriteStream(dest, { flags: 'wx', mode: 0o600 }));
        next();
      } catch (err) {
        extract.destroy(new DecoderError(`oci-archive ${file}: cannot unpack ${quoteUntrusted(name, 100)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err }));
      }
    })();
  });
  try {
    await pipeline(createReadStream(file), extract);
  } catch (err) {
    if (err instanceof DecoderError) throw err;
    throw new DecoderError(`oci-archive ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : `not a readable tar archive (${(err as Error).message.slice(0, 80)})`}`, { cause: err });
  }
}

/** Packs the layout in `dir` into `file`, written under a temporary name and renamed into place when complete. */
export async function packOciArchive(dir: string, file: string): Promise<void> {
  if (await exists(file)) throw new DecoderError(`${file} already exists: choose a new destination`);
  const tmp = path.join(path.dirname(path.resolve(file)), `.${path.basename(file)}.partial-${process.pid}`);
  const pack = tar.pack();
  const written = pipeline(pack, createWriteStream(tmp, { flags: 'wx', mode: 0o644 }));
  try {
    const add = async (name: string, src: string): Promise<void> => {
      const st = await stat(src);
      await new Promise<void>((resolve, reject) => {
        const entry = pack.entry({ name, size: st.size, mode: 0o644, mtime: new Date(0), type: 'file' }, (err) => (err ? reject(err) : resolve()));
        pipeline(createReadStream(src), entry).catch(reject);
      });
    };
    pack.entry({ name: 'blobs/', type: 'directory', mode: 0o755, mtime: new Date(0) });
    pack.entry({ name: 'blobs/sha256/', type: 'directory', mode: 0o755, mtime: new Date(0) });
    for (const blob of (await readdir(path.join(dir, 'blobs', 'sha256'))).sort()) await add(`blobs/sha256/${blob}`, path.join(dir, 'blobs', 'sha256', blob));
    await add('oci-layout', path.join(dir, 'oci-layout'));
    await add('index.json', path.join(dir, 'index.json'));
    pack.finalize();
    await written;
    await rename(tmp, file);
  } catch (err) {
    pack.destroy();
    await written.catch(() => undefined);
    await rm(tmp, { force: true });
    throw err instanceof DecoderError ? err : new DecoderError(`cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}
