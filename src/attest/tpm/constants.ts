/** TPM 2.0 constants used by the raw-command vTPM code (TPM 2.0 Library Part 2). */
export const TPM_ST_NO_SESSIONS = 0x8001;
export const TPM_ST_SESSIONS = 0x8002;
export const TPM_ST_ATTEST_QUOTE = 0x8018;
export const TPM_GENERATED_VALUE = 0xff544347;

export const TPM_CC = {
  NV_UndefineSpace: 0x122,
  NV_DefineSpace: 0x12a,
  NV_Write: 0x137,
  NV_Read: 0x14e,
  Quote: 0x158,
  NV_ReadPublic: 0x169,
  PCR_Read: 0x17e,
} as const;

export const TPM_RH_OWNER = 0x40000001;
export const TPM_RS_PW = 0x40000009;
export const TPM_ALG_SHA256 = 0x000b;
export const TPM_ALG_RSASSA = 0x0014;
export const TPM_ALG_NULL = 0x0010;

/** TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD (bits 1 and 17), what az-cvm-vtpm defines the report-data index with. */
export const TPMA_NV_OWNERWRITE_OWNERREAD = 0x00020002;

/** Response codes we act on (format-one codes have the handle/parameter number masked off). */
export const TPM_RC_SUCCESS = 0;
export const TPM_RC_HANDLE = 0x08b;
