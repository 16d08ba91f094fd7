/**
 * The stable codes of coco-decoder's errors: one spelling (UPPER_SNAKE, like Node's own `ERR_*`), one list, so
 * scripts, tests and the doctor can branch on a code instead of a message. A DecoderError carries one when its
 * cause is classified; messages stay free to improve.
 */
export const KBS_ERROR_CODES = [
  'KBS_VERSION_MISMATCH',
  'KBS_ATTESTATION_FAILED',
  'KBS_POLICY_DENIED',
  'KBS_RESOURCE_MISSING',
  'KBS_TOKEN_REJECTED',
  'KBS_DECRYPT_FAILED',
  'KBS_MALFORMED',
  'KBS_UNAUTHORIZED',
  'KBS_HTTP_STATUS',
  'KBS_UNREACHABLE',
  'KBS_TLS',
  'KBS_TIMEOUT',
  'KBS_ABORTED',
] as const;

/** Guest devices and configfs-tsm (TEE_* are shared by both paths to the hardware). */
export const TEE_ERROR_CODES = [
  'TEE_DEVICE_MISSING',
  'TEE_PERMISSION',
  'TEE_BAD_IOCTL',
  'TEE_BUSY',
  'TEE_IO',
  'TSM_UNAVAILABLE',
  'TSM_NO_PROVIDER',
  'TSM_WRONG_PROVIDER',
  'TSM_PRIVLEVEL',
  'TSM_BAD_INBLOB',
  'TSM_GENERATION_RACE',
  'TSM_IO',
  'TDX_REPORT_FAILED',
  'TDX_QUOTE_FAILED',
  'TDX_QUOTE_EMPTY',
  'SNP_BAD_REQUEST',
  'SNP_CERTS_TOO_SMALL',
  'SNP_FIRMWARE_ERROR',
  'SNP_VMPCK_DISABLED',
  'SNP_REPORT_STATUS',
] as const;

export type KbsErrorCode = (typeof KBS_ERROR_CODES)[number];
export type TeeErrorCode = (typeof TEE_ERROR_CODES)[number];
export type ErrorCode = KbsErrorCode | TeeErrorCode;
