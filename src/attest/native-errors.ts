/**
 * What a failed guest-device request means: the addon rejects with the raw errno, syscall and firmware/VMM words;
 * this turns them into a {@link TeeDeviceError} with a kind an operator can act on, keeping the raw codes.
 */
import { constants as osConstants } from 'node:os';
import type { TeeErrorCode } from '../util/error-codes.js';
import { DecoderError } from '../util/errors.js';

/** `SNP_GUEST_VMM_ERR_INVALID_LEN` / `_BUSY` (in `vmm_error`, the upper half of `exitinfo2`). */
const SNP_VMM_ERR_INVALID_LEN = 1;
const SNP_VMM_ERR_BUSY = 2;

/** The codes a failed guest-device request can have (util/error-codes.ts). */
export type TeeDeviceErrorKind = Extract<
  TeeErrorCode,
  `TEE_${string}` | 'TDX_REPORT_FAILED' | 'SNP_BAD_REQUEST' | 'SNP_CERTS_TOO_SMALL' | 'SNP_FIRMWARE_ERROR' | 'SNP_VMPCK_DISABLED' | 'SNP_REPORT_STATUS'
>;

/** A failed ioctl request, classified (errno meanings from the Linux sev-guest and tdx-guest drivers) with the raw codes kept for operators. */
export class TeeDeviceError extends DecoderError {
  declare readonly code: TeeDeviceErrorKind;
  constructor(
    message: string,
    code: TeeDeviceErrorKind,
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
    super(message, { cause, code });
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
