/**
 * Lazy loader and typed wrappers for the `tee.node` addon (native/src/tee.cc): the guest-attestation ioctls
 * Node cannot issue. Nothing here runs at import time; the addon is opened on the first ioctl a hardware
 * attester actually needs, so decoding with local keys, a warm token or `sample` never touches it.
 *
 * Where the addon comes from, in order:
 *  1. `attestation.addon_path` (default `/usr/lib/coco-decoder/tee.node`, installed by the .deb/.rpm);
 *  2. inside the single executable: `tee.node` next to the executable, then the SEA asset `tee.node`, written
 *     to a private `mkdtemp` directory and `process.dlopen`ed (the file is deleted right after; the mapping
 *     stays). A `noexec` temp directory makes that fail: the error names the fixes;
 *  3. outside a SEA (development, tests): `native/build/Release/tee.node` in the repository.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { AttestationConfig } from '../config/types.js';
import { DecoderError } from '../util/errors.js';

/** Bumped in native/src/tee.cc whenever the exported functions change shape. */
export const ADDON_ABI_VERSION = 2;

/**
 * Linux UAPI layout the addon is compiled with (kernel `include/uapi/linux/{tdx,sev}-guest.h`). Kept here so
 * test/unit/tee-layout.test.ts can hold the binary, these constants and the kernel headers to the same values.
 */
export const UAPI_LAYOUT = {
  TDX_CMD_GET_REPORT0: 0xc4405401,
  SNP_GET_REPORT: 0xc0205300,
  SNP_GET_EXT_REPORT: 0xc0205302,
  sizeof_tdx_report_req: 1088,
  offsetof_tdx_report_req_tdreport: 64,
  sizeof_snp_report_req: 96,
  offsetof_snp_report_req_vmpl: 64,
  offsetof_snp_report_req_rsvd: 68,
  sizeof_snp_report_resp: 4000,
  sizeof_snp_ext_report_req: 112,
  offsetof_snp_ext_report_req_certs_address: 96,
  offsetof_snp_ext_report_req_certs_len: 104,
  sizeof_snp_guest_request_ioctl: 32,
  offsetof_snp_guest_request_ioctl_req_data: 8,
  offsetof_snp_guest_request_ioctl_resp_data: 16,
  offsetof_snp_guest_request_ioctl_exitinfo2: 24,
} as const;

/** `msg_version` for report requests: what the kernel's own TSM path and sev-rs (guest-components) send. */
export const SNP_MSG_VERSION = 1;
/** Upstream `SEV_FW_BLOB_MAX_SIZE`: the first certificate buffer offered; the kernel asks for more if needed. */
export const SNP_DEFAULT_CERTS_LEN = 0x4000;
/** `SNP_GUEST_VMM_ERR_INVALID_LEN` / `_BUSY` (in `vmm_error`, the upper half of `exitinfo2`). */
const SNP_VMM_ERR_INVALID_LEN = 1;
const SNP_VMM_ERR_BUSY = 2;

/** The raw addon surface (native/src/tee.cc `Init`). */
export interface TeeAddon {
  readonly abiVersion: number;
  readonly layout: Readonly<Record<string, number>>;
  tdxGetReport0(device: string, reportData: Buffer): Promise<Buffer>;
  snpGetReport(device: string, userData: Buffer, vmpl: number, msgVersion: number): Promise<{ response: Buffer }>;
  snpGetExtReport(
    device: string,
    userData: Buffer,
    vmpl: number,
    msgVersion: number,
    certsLen: number,
  ): Promise<{ response: Buffer; certs: Buffer }>;
  /** prctl(PR_SET_DUMPABLE, 0); returns PR_GET_DUMPABLE afterwards (0). */
  setNonDumpable(): number;
}

/** The addon could not be found or loaded. */
export class AddonLoadError extends DecoderError {
}

export type TeeDeviceErrorKind =
  | 'TEE_DEVICE_MISSING'
  | 'TEE_PERMISSION'
  | 'TEE_BAD_IOCTL'
  | 'TEE_BUSY'
  | 'TEE_IO'
  | 'TDX_REPORT_FAILED'
  | 'SNP_BAD_REQUEST'
  | 'SNP_CERTS_TOO_SMALL'
  | 'SNP_FIRMWARE_ERROR'
  | 'SNP_VMPCK_DISABLED'
  | 'SNP_REPORT_STATUS';

/** A failed ioctl request, classified (errno meanings from the Linux sev-guest and tdx-guest drivers) with the raw codes kept for operators. */
export class TeeDeviceError extends DecoderError {
  constructor(
    message: string,
    readonly kind: TeeDeviceErrorKind,
    readonly details: {
      op: string;
      path: string;
      errno?: number;
      code?: string;
      syscall?: string;
      fwError?: number;
      vmmError?: number;
      exitinfo2?: string;
      requiredCertsLen?: number;
      status?: number;
    },
    cause?: unknown,
  ) {
    super(message, { cause });
  }
}

/** Seams for tests; production uses the defaults. */
export interface AddonLocator {
  /** The installed copy (`attestation.addon_path`). */
  addonPath: string;
  /** `node:sea`-like: present only when running as the single executable. */
  sea?: { isSea(): boolean; getAsset(key: string): ArrayBuffer } | undefined;
  /** The running executable (a sibling `tee.node` is tried inside a SEA). */
  execPath?: string;
  /** Where the SEA asset is unpacked (default `os.tmpdir()`). */
  tmpDir?: string;
  /** Development copy used outside a SEA. */
  devPath?: string | undefined;
}

let cached: { key: string; addon: TeeAddon } | undefined;

/** Loads (once per process and path) and returns the addon. Throws {@link AddonLoadError}. */
export function loadTeeAddon(config: Pick<AttestationConfig, 'addonPath'>): TeeAddon {
  const key = config.addonPath;
  if (cached?.key === key) return cached.addon;
  const addon = loadTeeAddonFrom({ addonPath: config.addonPath, sea: seaModule(), execPath: process.execPath, devPath: devAddonPath() });
  cached = { key, addon };
  return addon;
}

/** The uncached loader behind {@link loadTeeAddon}, with every source injectable. */
export function loadTeeAddonFrom(loc: AddonLocator): TeeAddon {
  if (existsSync(loc.addonPath)) return dlopenChecked(loc.addonPath, 'attestation.addon_path');
  const inSea = loc.sea?.isSea() === true;
  if (inSea) {
    const sibling = loc.execPath ? path.join(path.dirname(loc.execPath), 'tee.node') : undefined;
    if (sibling && existsSync(sibling)) return dlopenChecked(sibling, 'the copy next to the executable');
    return loadFromSeaAsset(loc.sea!, loc.tmpDir ?? tmpdir(), loc.addonPath);
  }
  if (loc.devPath && existsSync(loc.devPath)) return dlopenChecked(loc.devPath, 'the development build');
  throw new AddonLoadError(
    `TEE addon not found: no ${loc.addonPath}` +
      (loc.devPath ? ` and no development build at ${loc.devPath} (run npm run build)` : '') +
      '; install the coco-decoder package or set attestation.addon_path',
  );
}

function loadFromSeaAsset(
  sea: NonNullable<AddonLocator['sea']>,
  tmpDir: string,
  addonPath: string,
): TeeAddon {
  let bytes: Buffer;
  try {
    bytes = Buffer.from(sea.getAsset('tee.node'));
  } catch (err) {
    throw new AddonLoadError(
      `TEE addon not found: no ${addonPath} and this executable carries no tee.node asset; ` +
        'install the coco-decoder package or set attestation.addon_path',
      { cause: err },
    );
  }
  // mkdtemp creates the directory 0700: nobody else can swap the file between write and dlopen.
  let dir: string;
  try {
    dir = mkdtempSync(path.join(tmpDir, 'coco-decoder-addon-'));
  } catch (err) {
    throw new AddonLoadError(
      `cannot unpack the embedded TEE addon: ${errText(err)} in ${tmpDir}; ` +
        'install the coco-decoder package (it ships /usr/lib/coco-decoder/tee.node) or set attestation.addon_path',
      { cause: err },
    );
  }
  try {
    const file = path.join(dir, 'tee.node');
    writeFileSync(file, bytes, { mode: 0o500, flag: 'wx' });
    return dlopenChecked(file, 'the copy embedded in the executable');
  } catch (err) {
    if (err instanceof AddonLoadError && isNoExec(err.cause)) {
      throw new AddonLoadError(
        `cannot load the embedded TEE addon: ${tmpDir} does not allow executable mappings (mounted noexec?); ` +
          'install the coco-decoder package (it ships /usr/lib/coco-decoder/tee.node), set attestation.addon_path ' +
          'to an installed tee.node, or point TMPDIR at a directory without noexec',
        { cause: err.cause },
      );
    }
    throw err;
  } finally {
    // The loaded image stays mapped; nothing needs the file afterwards.
    rmSync(dir, { recursive: true, force: true });
  }
}

function dlopenChecked(file: string, what: string): TeeAddon {
  const mod: { exports: unknown } = { exports: {} };
  try {
    process.dlopen(mod, file, osConstants.dlopen.RTLD_NOW);
  } catch (err) {
    throw new AddonLoadError(`cannot load the TEE addon ${file} (${what}): ${errText(err)}`, { cause: err });
  }
  const addon = mod.exports as Partial<TeeAddon>;
  if (addon.abiVersion !== ADDON_ABI_VERSION || typeof addon.tdxGetReport0 !== 'function') {
    throw new AddonLoadError(
      `the TEE addon ${file} (${what}) has ABI version ${String(addon.abiVersion)}, this coco-decoder needs ` +
        `${ADDON_ABI_VERSION}; reinstall the coco-decoder package so binary and addon match`,
    );
  }
  return addon as TeeAddon;
}

/** dlopen on a noexec mount fails in mmap with EPERM ("failed to map segment from shared object"). */
function isNoExec(err: unknown): boolean {
  const text = err instanceof Error ? err.message : String(err);
  return /failed to map segment|Operation not permitted|Permission denied/i.test(text);
}

function errText(err: unknown): string {
  if (err instanceof Error) return err.message.split('\n')[0] ?? err.message;
  return String(err);
}

function seaModule(): AddonLocator['sea'] {
  try {
    // `node:sea` exists in every Node ≥ 20.12; require keeps this synchronous in the CJS bundle and in ESM.
    const req = typeof require === 'function' ? require : createRequire(import.meta.url);
    return req('node:sea') as AddonLocator['sea'];
  } catch {
    return undefined;
  }
}

function devAddonPath(): string | undefined {
  try {
    // src/attest/native.ts → <repo>/native/build/Release/tee.node. In the bundled executable import.meta.url
    // is not a file URL of the repository; the SEA branch is taken there anyway.
    const here = path.dirname(fileURLToPath(import.meta.url));
    return path.resolve(here, '..', '..', 'native', 'build', 'Release', 'tee.node');
  } catch {
    return undefined;
  }
}

// ---- serialised, typed calls ----

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

interface RawAddonError {
  message?: string;
  op?: string;
  path?: string;
  errno?: number;
  syscall?: string;
  code?: string;
  fwError?: number;
  vmmError?: number;
  exitinfo2?: string;
  requiredCertsLen?: number;
  status?: number;
}

/** Maps the addon's raw rejection (errno + firmware/VMM words) to a {@link TeeDeviceError}. */
export function classifyDeviceError(err: unknown): unknown {
  if (!(err instanceof Error) || err instanceof DecoderError) return err;
  const raw = err as Error & RawAddonError;
  if (raw.op === undefined || raw.path === undefined) return err;
  const op = raw.op;
  const device = raw.path;
  const code = raw.errno !== undefined ? errnoName(raw.errno) : raw.code;
  const details = {
    op,
    path: device,
    errno: raw.errno,
    code,
    syscall: raw.syscall,
    fwError: raw.fwError,
    vmmError: raw.vmmError,
    exitinfo2: raw.exitinfo2,
    requiredCertsLen: raw.requiredCertsLen,
    status: raw.status,
  };
  const isSnp = op.startsWith('SNP_');
  const fail = (kind: TeeDeviceErrorKind, text: string) =>
    new TeeDeviceError(`${op} on ${device}: ${text}`, kind, details, err);

  if (raw.code === 'SNP_REPORT_STATUS') {
    return fail('SNP_REPORT_STATUS', `the firmware answered status ${hex32(raw.status ?? 0)} (${sevStatusName(raw.status ?? 0)})`);
  }
  if (raw.syscall === 'open') {
    switch (code) {
      case 'ENOENT':
      case 'ENODEV':
      case 'ENXIO':
        return fail(
          'TEE_DEVICE_MISSING',
          `device not found (${code}): not a ${isSnp ? 'SEV-SNP' : 'TDX'} guest, the ${isSnp ? 'sev-guest' : 'tdx_guest'} driver is not loaded, or the device is not passed into this container`,
        );
      case 'EACCES':
      case 'EPERM':
        return fail('TEE_PERMISSION', `permission denied (${code}); run as root or grant access to ${device}`);
      default:
        return fail('TEE_IO', `open failed: ${code ?? 'unknown error'}`);
    }
  }
  switch (code) {
    case 'ENOTTY':
      return isSnp
        ? fail(
            'SNP_VMPCK_DISABLED',
            'ENOTTY: not a sev-guest device, or the kernel disabled the VMPCK after an earlier firmware error (reboot the guest)',
          )
        : fail('TEE_BAD_IOCTL', 'ENOTTY: the device does not implement TDX_CMD_GET_REPORT0 (not a tdx_guest device?)');
    case 'EACCES':
    case 'EPERM':
      return fail('TEE_PERMISSION', `permission denied (${code})`);
    case 'EAGAIN':
    case 'ETIMEDOUT':
    case 'EBUSY':
      return fail('TEE_BUSY', `${code}: the host is busy or throttling guest requests; retry later`);
    case 'EINVAL':
      return isSnp
        ? fail('SNP_BAD_REQUEST', 'EINVAL: request rejected by the kernel (message version, VMPL below the guest\'s, or certificate buffer size)')
        : fail('TEE_IO', 'EINVAL: request rejected by the kernel');
    case 'EIO':
      if (!isSnp) return fail('TDX_REPORT_FAILED', 'EIO: the TDCALL TDG.MR.REPORT failed');
      if (raw.vmmError === SNP_VMM_ERR_INVALID_LEN) {
        return fail(
          'SNP_CERTS_TOO_SMALL',
          `EIO: the host's certificates need ${raw.requiredCertsLen ?? '?'} bytes, more than the kernel accepts`,
        );
      }
      if (raw.vmmError === SNP_VMM_ERR_BUSY) return fail('TEE_BUSY', 'EIO: the host reported busy; retry later');
      return fail(
        'SNP_FIRMWARE_ERROR',
        `EIO: firmware error ${hex32(raw.fwError ?? 0)} (${sevStatusName(raw.fwError ?? 0)}), VMM error ${hex32(raw.vmmError ?? 0)}`,
      );
    default:
      return fail('TEE_IO', `${raw.syscall ?? 'ioctl'} failed: ${code ?? raw.message ?? 'unknown error'}`);
  }
}

function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(osConstants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}

function hex32(v: number): string {
  return `0x${(v >>> 0).toString(16)}`;
}

/** The SEV firmware status codes a guest request can realistically return (uapi/linux/psp-sev.h). */
function sevStatusName(status: number): string {
  const names: Record<number, string> = {
    0x0: 'SUCCESS',
    0x7: 'INVALID_GUEST',
    0x16: 'INVALID_PARAM',
    0x17: 'RESOURCE_LIMIT',
    0x1f: 'INVALID_ADDRESS',
    0x27: 'INVALID_KEY',
  };
  return names[status] ?? 'unknown';
}
