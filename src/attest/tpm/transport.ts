/**
 * How TPM command buffers reach a TPM. Production talks to the kernel's resource-managed character device; tests
 * substitute a simulator. One command in, one complete response out.
 */
import { promises as fsp } from 'node:fs';
import { DecoderError } from '../../util/errors.js';

/** Sends one marshalled TPM command, resolves with the whole response. */
export type TpmTransport = (command: Buffer) => Promise<Buffer>;

/** Largest response we accept: TPM2_Quote with an RSA-4096 key is well under this. */
const MAX_RESPONSE = 8192;

/**
 * `/dev/tpmrm0`: write the command in one write(), read the response in one read() (the kernel returns the
 * whole response). The device is opened per command so a stalled TPM never leaves a handle behind; libuv runs
 * the blocking read on its thread pool and the deadline keeps the caller from waiting forever. On a timeout the
 * handle is closed in the background: `FileHandle.close()` waits for the pending read, so awaiting it would make
 * the deadline wait for the very device that is stuck.
 */
export function deviceTpmTransport(device: string, timeoutMs = 30_000): TpmTransport {
  return async (command) => {
    const fh = await fsp.open(device, 'r+');
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    try {
      const roundTrip = (async () => {
        await fh.write(command, 0, command.length, null);
        const buf = Buffer.alloc(MAX_RESPONSE);
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        return buf.subarray(0, bytesRead);
      })();
      const deadline = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          timedOut = true;
          reject(new DecoderError(`TPM device ${device} did not answer within ${timeoutMs} ms`));
        }, timeoutMs);
      });
      roundTrip.catch(() => undefined);
      return await Promise.race([roundTrip, deadline]);
    } finally {
      clearTimeout(timer);
      const closing = fh.close().catch(() => undefined);
      if (!timedOut) await closing;
    }
  };
}
