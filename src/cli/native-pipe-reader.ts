/**
 * containerd's payload pipe (fd 3) read by the addon's readFd (poll with a deadline on a worker thread) instead of
 * a libuv stream: that would load node:net, several milliseconds of every layer. Without the addon, fd3.ts falls
 * back to the stream.
 */
import { getSystemErrorName } from 'node:util';
import { defaultConfig } from '../config/types.js';
import type { PipeReader } from '../streamprocessor/fd3.js';
import { optionalTeeAddon } from './optional-addon.js';

export async function nativePipeReader(addonPath = defaultConfig().attestation.addonPath): Promise<PipeReader | undefined> {
  const readFd = (await optionalTeeAddon(addonPath))?.readFd;
  if (typeof readFd !== 'function') return undefined;
  return (fd, maxBytes, timeoutMs) =>
    new Promise((resolve) =>
      readFd(fd, maxBytes, timeoutMs, (err, data) => {
        if (err === null) return resolve(data!);
        if (err.reason === 'error') return resolve({ reason: 'error', code: err.errno > 0 ? getSystemErrorName(-err.errno) : 'unknown error' });
        resolve({ reason: err.reason });
      }),
    );
}
