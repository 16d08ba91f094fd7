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
 *
 * The serialised, typed calls are in native-calls.ts, the classification of their failures in native-errors.ts.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { AttestationConfig } from '../config/types.js';
import { DecoderError } from '../util/errors.js';

export { classifyDeviceError, TeeDeviceError, type TeeDeviceErrorKind } from './native-errors.js';
export { SNP_DEFAULT_CERTS_LEN, SNP_MSG_VERSION, snpGetExtReport, snpGetReport, tdxGetReport0 } from './native-calls.js';

/** Bumped in native/src/tee.cc whenever the exported functions change shape. */
export const ADDON_ABI_VERSION = 4;

/**
 * Linux UAPI layout the addon is compiled with (kernel `include/uapi/linux/{tdx,sev}-guest.h`). Kept here so
 * test/unit/attest/tee-layout.test.ts can hold the binary, these constants and the kernel headers to the same values.
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
  /** The layer cipher (native/src/layer_cipher.cc): AES-256-CTR + HMAC-SHA256 into caller buffers. */
  cipherNew(key: Buffer, nonce: Buffer): unknown;
  cipherUpdate(handle: unknown, src: Buffer, dst: Buffer): void;
  cipherFinal(handle: unknown): Buffer;
  cipherFree(handle: unknown): void;
  /** Its fd-to-fd pump (native/src/layer_pump.cc); see NativeLayerCipher in ocicrypt/layer-decipher.ts. */
  pumpNew(cipher: unknown, inFd: number, outFd: number, holdback: number, prefix: Buffer | null, cipherDigest: string, plainSha256: boolean): unknown;
  pumpRun(pump: unknown, cipher: unknown, done: (err: { stage: 'read' | 'write' | 'cipher'; errno: number } | null, outcome?: never) => void): void;
  pumpRelease(pump: unknown): number;
  pumpFree(pump: unknown): void;
  /** A pipe read to EOF within a size bound and a deadline (native/src/fd_read.cc). */
  readFd(fd: number, maxBytes: number, timeoutMs: number, done: (err: { reason: 'timeout' | 'too-large' | 'error'; errno: number } | null, data?: Buffer) => void): void;
}

/** The addon could not be found or loaded. */
export class AddonLoadError extends DecoderError {
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
