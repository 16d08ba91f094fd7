/**
 * A key-encryption key file, as `coco-decoder encrypt --kek-file` and the keyprovider's `keypath=` name it: exactly
 * 32 raw bytes (what the KBS stores as the resource). Read whole into memory; the caller zeroes it.
 */
import { readFile, stat } from 'node:fs/promises';
import { KEK_BYTES } from '../ocicrypt/keywrap/attestation-agent-wrap.js';

export interface ReadKekOptions {
  /** How the file is named in messages, e.g. `--kek-file` or `KEK file`. */
  what: string;
  /** The error to throw (the keyprovider's gRPC server maps its request errors to INVALID_ARGUMENT). */
  fail: (message: string) => Error;
  /** Called when group or others may read the file. */
  onLooseMode?: (mode: number) => void;
}

export async function readKekFile(file: string, o: ReadKekOptions): Promise<Buffer> {
  const st = await stat(file).catch((err: NodeJS.ErrnoException) => {
    throw o.fail(`${o.what} ${file}: ${err.code ?? 'unreadable'}`);
  });
  if (!st.isFile() || st.size !== KEK_BYTES) {
    throw o.fail(
      `${o.what} ${file} must hold exactly ${KEK_BYTES} raw bytes (it has ${st.isFile() ? st.size : 'no regular file with'} bytes); ` +
        'create one with coco-decoder encrypt --kek-generate',
    );
  }
  if ((st.mode & 0o077) !== 0) o.onLooseMode?.(st.mode & 0o777);
  return readFile(file);
}
