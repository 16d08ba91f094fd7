// Linux guest-attestation UAPI, vendored (as Intel DCAP does) because distributions ship
// <linux/tdx-guest.h> / <linux/sev-guest.h> in different packages and versions (Debian 12's
// linux-libc-dev 6.1 has no tdx-guest.h at all). Layouts follow include/uapi/linux/tdx-guest.h and
// include/uapi/linux/sev-guest.h; the static_asserts pin them, and test/unit/attest/tee-layout.test.ts
// compares them with the kernel headers when those are installed.
#ifndef COCO_DECODER_TEE_UAPI_H_
#define COCO_DECODER_TEE_UAPI_H_

#include <linux/ioctl.h>
#include <linux/types.h>
#include <stddef.h>

// ---- Intel TDX: /dev/tdx_guest ----
#define CD_TDX_REPORTDATA_LEN 64
#define CD_TDX_REPORT_LEN 1024

struct cd_tdx_report_req {
  __u8 reportdata[CD_TDX_REPORTDATA_LEN];
  __u8 tdreport[CD_TDX_REPORT_LEN];
};

#define CD_TDX_CMD_GET_REPORT0 _IOWR('T', 1, struct cd_tdx_report_req)

// ---- AMD SEV-SNP: /dev/sev-guest ----
#define CD_SNP_USER_DATA_LEN 64
#define CD_SNP_REPORT_RESP_LEN 4000

struct cd_snp_report_req {
  __u8 user_data[CD_SNP_USER_DATA_LEN];
  __u32 vmpl;
  __u8 rsvd[28];
};

struct cd_snp_report_resp {
  __u8 data[CD_SNP_REPORT_RESP_LEN];
};

struct cd_snp_ext_report_req {
  struct cd_snp_report_req data;
  __u64 certs_address;
  __u32 certs_len;
};

struct cd_snp_guest_request_ioctl {
  __u8 msg_version;
  __u64 req_data;
  __u64 resp_data;
  // exitinfo2: firmware error in the low 32 bits, VMM error in the high 32 bits (older kernels name the
  // whole word fw_err).
  __u64 exitinfo2;
};

#define CD_SNP_GET_REPORT _IOWR('S', 0x0, struct cd_snp_guest_request_ioctl)
#define CD_SNP_GET_EXT_REPORT _IOWR('S', 0x2, struct cd_snp_guest_request_ioctl)

#define CD_SNP_GUEST_VMM_ERR_SHIFT 32
#define CD_SNP_GUEST_VMM_ERR_INVALID_LEN 1
#define CD_SNP_GUEST_VMM_ERR_BUSY 2
// Upstream include/linux/psp-sev.h SEV_FW_BLOB_MAX_SIZE: the largest certificate buffer the kernel accepts.
#define CD_SEV_FW_BLOB_MAX_SIZE 0x4000

// MSG_REPORT_RSP header inside cd_snp_report_resp.data.
#define CD_SNP_RSP_STATUS_OFFSET 0
#define CD_SNP_RSP_REPORT_SIZE_OFFSET 4
#define CD_SNP_RSP_REPORT_OFFSET 0x20

#ifdef __cplusplus
static_assert(sizeof(struct cd_tdx_report_req) == 1088, "tdx_report_req");
static_assert(CD_TDX_CMD_GET_REPORT0 == 0xC4405401u, "TDX_CMD_GET_REPORT0");
static_assert(sizeof(struct cd_snp_report_req) == 96, "snp_report_req");
static_assert(offsetof(struct cd_snp_report_req, vmpl) == 64, "snp_report_req.vmpl");
static_assert(sizeof(struct cd_snp_report_resp) == 4000, "snp_report_resp");
static_assert(sizeof(struct cd_snp_ext_report_req) == 112, "snp_ext_report_req");
static_assert(offsetof(struct cd_snp_ext_report_req, certs_address) == 96, "certs_address");
static_assert(offsetof(struct cd_snp_ext_report_req, certs_len) == 104, "certs_len");
static_assert(sizeof(struct cd_snp_guest_request_ioctl) == 32, "snp_guest_request_ioctl");
static_assert(offsetof(struct cd_snp_guest_request_ioctl, req_data) == 8, "req_data");
static_assert(offsetof(struct cd_snp_guest_request_ioctl, resp_data) == 16, "resp_data");
static_assert(offsetof(struct cd_snp_guest_request_ioctl, exitinfo2) == 24, "exitinfo2");
static_assert(CD_SNP_GET_REPORT == 0xC0205300u, "SNP_GET_REPORT");
static_assert(CD_SNP_GET_EXT_REPORT == 0xC0205302u, "SNP_GET_EXT_REPORT");
#endif

#endif  // COCO_DECODER_TEE_UAPI_H_
