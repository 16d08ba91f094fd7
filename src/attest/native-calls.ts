/**
 * The addon's ioctls as typed, serialised calls (at most one in flight per process), failures classified.
 */
import type { TeeAddon } from './native.js';
import { classifyDeviceError } from './native-errors.js';

/** `msg_version` for report requests: what the kernel's own TSM path and sev-rs (guest-components) send. */
export const SNP_MSG_VERSION = 1;
/** Upstream `SEV_FW_BLOB_MAX_SIZE`: the first certificate buffer offered; the kernel asks for more if needed. */
export const SNP_DEFAULT_CERTS_LEN = 0x4000;

/** At most one ioctl in flight per process, so a 30–60 s firmware call occupies one libuv thread, not four. */
let queue: Promise<unknown> = Promise.resolve();
function serialised<T>(fn: () => Promise<T>): Promise<T> {
  const run = queue.then(fn, fn);
  queue = run.then(
    () => undefined,
    () => undefined,
  );
  return run;
}

/** `TDX_CMD_GET_REPORT0`: the 1024-byte TDREPORT for `reportData` (64 bytes). */
export function tdxGetReport0(addon: TeeAddon, device: string, reportData: Buffer): Promise<Buffer> {
  return serialised(() => addon.tdxGetReport0(device, reportData)).catch((err: unknown) => {
    throw classifyDeviceError(err);
  });
}

/** `SNP_GET_REPORT`: the 4000-byte `MSG_REPORT_RSP` (status already checked by the addon). */
export async function snpGetReport(addon: TeeAddon, device: string, userData: Buffer, vmpl: number): Promise<Buffer> {
  try {
    return (await serialised(() => addon.snpGetReport(device, userData, vmpl, SNP_MSG_VERSION))).response;
  } catch (err) {
    throw classifyDeviceError(err);
  }
}

/** `SNP_GET_EXT_REPORT`: response plus the host's certificate table (zeros/empty when the host has none). */
export async function snpGetExtReport(
  addon: TeeAddon,
  device: string,
  userData: Buffer,
  vmpl: number,
  certsLen = SNP_DEFAULT_CERTS_LEN,
): Promise<{ response: Buffer; certs: Buffer }> {
  try {
    return await serialised(() => addon.snpGetExtReport(device, userData, vmpl, SNP_MSG_VERSION, certsLen));
  } catch (err) {
    throw classifyDeviceError(err);
  }
}
