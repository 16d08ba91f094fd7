// LD_PRELOAD stand-in for /dev/tdx_guest and /dev/sev-guest, used by tee-native.test.ts to drive the real
// addon's ioctl code without TEE hardware. ioctl() calls on the file named by $FAKE_TDX / $FAKE_SEV are answered
// like the kernel drivers answer them (include/uapi/linux/{tdx,sev}-guest.h semantics); all other ioctls go to
// libc. SEV structs come from the system's <linux/sev-guest.h>, not from the addon's vendored header, so a
// layout disagreement shows up as a wrong answer. Every intercepted call is logged to $FAKE_LOG.
//
// Knobs: FAKE_EINTR=n (first n calls fail with EINTR), FAKE_ERRNO=e (fail with errno e, exitinfo2=$FAKE_EXITINFO2),
// FAKE_TDREPORT=file (1024 bytes), FAKE_SNP_REPORT=file (1184 bytes), FAKE_SNP_STATUS=n, FAKE_CERTS=file
// (certificate table), FAKE_CERTS_NEEDED=bytes (answer EIO/INVALID_LEN while the buffer is smaller).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/ioctl.h>
#include <linux/sev-guest.h>

// Kernel UAPI include/uapi/linux/tdx-guest.h (not shipped by Debian 12's linux-libc-dev 6.1).
struct shim_tdx_report_req {
  unsigned char reportdata[64];
  unsigned char tdreport[1024];
};
#define SHIM_TDX_CMD_GET_REPORT0 _IOWR('T', 1, struct shim_tdx_report_req)

static int calls;

static int fd_is(int fd, const char *env) {
  const char *want = getenv(env);
  if (!want) return 0;
  char link[64], target[PATH_MAX];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  if (n < 0) return 0;
  target[n] = 0;
  char resolved[PATH_MAX];
  if (!realpath(want, resolved)) return 0;
  return strcmp(target, resolved) == 0;
}

static void logf_(const char *fmt, ...) {
  const char *path = getenv("FAKE_LOG");
  if (!path) return;
  FILE *f = fopen(path, "a");
  if (!f) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fputc('\n', f);
  fclose(f);
}

static size_t read_file(const char *env, unsigned char *buf, size_t max) {
  const char *path = getenv(env);
  if (!path) return 0;
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  size_t n = fread(buf, 1, max, f);
  fclose(f);
  return n;
}

static int all_zero(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

static int injected_failure(void) {
  const char *eintr = getenv("FAKE_EINTR");
  if (eintr && calls <= atoi(eintr)) {
    errno = EINTR;
    return 1;
  }
  const char *e = getenv("FAKE_ERRNO");
  if (e) {
    errno = atoi(e);
    return 1;
  }
  return 0;
}

static int fake_tdx(unsigned long req, void *arg) {
  logf_("tdx call=%d req=0x%lx", calls, req);
  if (req != SHIM_TDX_CMD_GET_REPORT0) {
    errno = ENOTTY;
    return -1;
  }
  if (injected_failure()) return -1;
  struct shim_tdx_report_req *r = arg;
  char hex[129];
  for (int i = 0; i < 64; i++) sprintf(hex + 2 * i, "%02x", r->reportdata[i]);
  logf_("tdx reportdata=%s tdreport_zero=%d", hex, all_zero(r->tdreport, sizeof(r->tdreport)));
  unsigned char report[1024] = {0};
  read_file("FAKE_TDREPORT", report, sizeof(report));
  memcpy(report + 128, r->reportdata, 64);  // REPORTMACSTRUCT.reportdata
  memcpy(r->tdreport, report, sizeof(report));
  return 0;
}

static int fake_sev(unsigned long req, void *arg) {
  struct snp_guest_request_ioctl *io = arg;
  const unsigned char *raw = arg;
  logf_("sev call=%d req=0x%lx msg_version=%u pad_zero=%d exitinfo2_in=0x%llx", calls, req, io->msg_version,
        all_zero(raw + 1, 7), (unsigned long long)io->exitinfo2);
  if (req != SNP_GET_REPORT && req != SNP_GET_EXT_REPORT) {
    errno = ENOTTY;
    return -1;
  }
  if (!io->msg_version || !io->req_data || !io->resp_data) {
    errno = EINVAL;
    return -1;
  }
  if (injected_failure()) {
    const char *x = getenv("FAKE_EXITINFO2");
    if (x && errno == EIO) io->exitinfo2 = strtoull(x, NULL, 0);
    return -1;
  }
  struct snp_report_req *rr;
  struct snp_ext_report_req *ext = NULL;
  if (req == SNP_GET_EXT_REPORT) {
    ext = (struct snp_ext_report_req *)(uintptr_t)io->req_data;
    rr = &ext->data;
  } else {
    rr = (struct snp_report_req *)(uintptr_t)io->req_data;
  }
  logf_("sev vmpl=%u rsvd_zero=%d certs_len=%u certs_address_set=%d", rr->vmpl, all_zero(rr->rsvd, sizeof(rr->rsvd)),
        ext ? ext->certs_len : 0, ext ? ext->certs_address != 0 : 0);
  if (rr->vmpl > 3 || !all_zero(rr->rsvd, sizeof(rr->rsvd))) {
    errno = EINVAL;
    return -1;
  }
  if (ext && ext->certs_len && ext->certs_address) {
    if (ext->certs_len % 4096 || ext->certs_len > 0x4000 * 4) {
      errno = EINVAL;
      return -1;
    }
    const char *needed = getenv("FAKE_CERTS_NEEDED");
    unsigned int need = needed ? (unsigned int)atoi(needed) : 0;
    if (ext->certs_len < need) {
      // What get_ext_report() does when the host says the buffer is too small.
      ext->certs_len = need;
      io->exitinfo2 = (unsigned long long)SNP_GUEST_VMM_ERR_INVALID_LEN << SNP_GUEST_VMM_ERR_SHIFT;
      errno = EIO;
      return -1;
    }
    unsigned char *certs = (unsigned char *)(uintptr_t)ext->certs_address;
    memset(certs, 0, ext->certs_len);
    read_file("FAKE_CERTS", certs, ext->certs_len);
  }
  unsigned char *resp = (unsigned char *)(uintptr_t)io->resp_data;
  memset(resp, 0, sizeof(struct snp_report_resp));
  unsigned int status = getenv("FAKE_SNP_STATUS") ? (unsigned int)atoi(getenv("FAKE_SNP_STATUS")) : 0;
  unsigned int size = 1184;
  memcpy(resp, &status, 4);
  memcpy(resp + 4, &size, 4);
  read_file("FAKE_SNP_REPORT", resp + 0x20, 1184);
  memcpy(resp + 0x20 + 0x50, rr->user_data, 64);  // REPORT_DATA
  memcpy(resp + 0x20 + 0x30, &rr->vmpl, 4);       // VMPL
  return 0;
}

int ioctl(int fd, unsigned long req, ...) {
  va_list ap;
  va_start(ap, req);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  if (fd_is(fd, "FAKE_TDX")) {
    calls++;
    return fake_tdx(req, arg);
  }
  if (fd_is(fd, "FAKE_SEV")) {
    calls++;
    return fake_sev(req, arg);
  }
  int (*real)(int, unsigned long, ...) = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
  return real(fd, req, arg);
}
