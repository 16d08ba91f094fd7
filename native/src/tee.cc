// coco-decoder's addon: the three guest-attestation ioctls Node cannot issue itself
// (TDX_CMD_GET_REPORT0, SNP_GET_REPORT, SNP_GET_EXT_REPORT), prctl, and the layer cipher's fast path
// (layer_cipher.cc). No policy: every result goes back as raw bytes and all parsing/decisions live in
// TypeScript (src/attest/native.ts).
//
// Each call runs as Napi::AsyncWorker (libuv pool thread) and is serialised per device with a
// process-wide mutex: the kernel serialises too, but a SEV VMPCK wiped after an error or a TDX
// request in flight affects every caller, and one request at a time is all a guest ever needs.
// Inputs are copied on the JS thread; kernel-facing buffers live only inside the worker.

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <vector>

#include <napi.h>

#include "layer_cipher.h"
#include "tee_uapi.h"

namespace {

constexpr uint32_t kAbiVersion = 4;  // 2: setNonDumpable; 3: the layer cipher (layer_cipher.cc); 4: its fd pump (layer_pump.cc), readFd (fd_read.cc)
constexpr size_t kPageSize = 4096;
// Upper bound for a host-requested certificate buffer: far above SEV_FW_BLOB_MAX_SIZE, only there so
// a corrupted certs_len can never make us allocate gigabytes.
constexpr uint32_t kMaxCertsLen = 1u << 20;

std::mutex g_tdx_mutex;
std::mutex g_sev_mutex;

int OpenDevice(const std::string& path) {
  int fd;
  do {
    fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

int IoctlRetry(int fd, unsigned long request, void* arg) {
  int rc;
  do {
    rc = ioctl(fd, request, arg);
  } while (rc < 0 && errno == EINTR);
  return rc;
}

uint32_t ReadLe32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

std::string Hex64(uint64_t v) {
  static const char digits[] = "0123456789abcdef";
  std::string s = "0x";
  for (int shift = 60; shift >= 0; shift -= 4) s.push_back(digits[(v >> shift) & 0xf]);
  return s;
}

// Failure details collected on the worker thread and turned into a JS Error on the main thread.
struct Failure {
  int err = 0;                  // errno of the failing syscall, 0 when the failure is not an errno
  const char* syscall = "";     // "open" | "ioctl"
  uint64_t exitinfo2 = 0;       // SNP: fw_error (low 32) | vmm_error (high 32)
  bool has_exitinfo2 = false;
  uint32_t required_certs_len = 0;
  bool status_failure = false;  // SNP MSG_REPORT_RSP.status != 0
  uint32_t status = 0;
};

Napi::Value MakeError(Napi::Env env, const std::string& op, const std::string& device, const Failure& f) {
  std::string msg;
  if (f.status_failure) {
    msg = op + " " + device + ": firmware response status " + Hex64(f.status);
  } else {
    msg = op + " " + device + ": " + f.syscall + " failed: " + strerror(f.err);
  }
  Napi::Error e = Napi::Error::New(env, msg);
  Napi::Object o = e.Value();
  o.Set("op", Napi::String::New(env, op));
  o.Set("path", Napi::String::New(env, device));
  if (f.status_failure) {
    o.Set("code", Napi::String::New(env, "SNP_REPORT_STATUS"));
    o.Set("status", Napi::Number::New(env, f.status));
  } else {
    o.Set("errno", Napi::Number::New(env, f.err));
    o.Set("syscall", Napi::String::New(env, f.syscall));
  }
  if (f.has_exitinfo2) {
    o.Set("exitinfo2", Napi::String::New(env, Hex64(f.exitinfo2)));
    o.Set("fwError", Napi::Number::New(env, static_cast<uint32_t>(f.exitinfo2 & 0xffffffffu)));
    o.Set("vmmError", Napi::Number::New(env, static_cast<uint32_t>(f.exitinfo2 >> CD_SNP_GUEST_VMM_ERR_SHIFT)));
  }
  if (f.required_certs_len != 0) o.Set("requiredCertsLen", Napi::Number::New(env, f.required_certs_len));
  return o;
}

class TdxReportWorker : public Napi::AsyncWorker {
 public:
  TdxReportWorker(Napi::Env env, std::string device, const uint8_t* report_data)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), device_(std::move(device)) {
    memcpy(report_data_, report_data, sizeof(report_data_));
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    std::lock_guard<std::mutex> lock(g_tdx_mutex);
    int fd = OpenDevice(device_);
    if (fd < 0) {
      failure_.err = errno;
      failure_.syscall = "open";
      return;
    }
    struct cd_tdx_report_req req;
    memset(&req, 0, sizeof(req));
    memcpy(req.reportdata, report_data_, sizeof(req.reportdata));
    if (IoctlRetry(fd, CD_TDX_CMD_GET_REPORT0, &req) < 0) {
      failure_.err = errno;
      failure_.syscall = "ioctl";
    } else {
      tdreport_.assign(req.tdreport, req.tdreport + sizeof(req.tdreport));
    }
    close(fd);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (failure_.err != 0) {
      deferred_.Reject(MakeError(env, "TDX_CMD_GET_REPORT0", device_, failure_));
      return;
    }
    deferred_.Resolve(Napi::Buffer<uint8_t>::Copy(env, tdreport_.data(), tdreport_.size()));
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::string device_;
  uint8_t report_data_[CD_TDX_REPORTDATA_LEN];
  Failure failure_;
  std::vector<uint8_t> tdreport_;
};

class SnpReportWorker : public Napi::AsyncWorker {
 public:
  SnpReportWorker(Napi::Env env, std::string device, const uint8_t* user_data, uint32_t vmpl, uint8_t msg_version,
                  bool extended, uint32_t certs_len)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        device_(std::move(device)),
        vmpl_(vmpl),
        msg_version_(msg_version),
        extended_(extended),
        certs_len_(certs_len) {
    memcpy(user_data_, user_data, sizeof(user_data_));
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    std::lock_guard<std::mutex> lock(g_sev_mutex);
    int fd = OpenDevice(device_);
    if (fd < 0) {
      failure_.err = errno;
      failure_.syscall = "open";
      return;
    }
    response_.assign(CD_SNP_REPORT_RESP_LEN, 0);
    if (extended_) {
      RunExtended(fd);
    } else {
      RunPlain(fd);
    }
    close(fd);
    if (failure_.err == 0) {
      // The ioctl path does not look at MSG_REPORT_RSP.status; a non-zero status is a failed report.
      uint32_t status = ReadLe32(response_.data() + CD_SNP_RSP_STATUS_OFFSET);
      if (status != 0) {
        failure_.status_failure = true;
        failure_.status = status;
      }
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    const char* op = extended_ ? "SNP_GET_EXT_REPORT" : "SNP_GET_REPORT";
    if (failure_.err != 0 || failure_.status_failure) {
      deferred_.Reject(MakeError(env, op, device_, failure_));
      return;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("response", Napi::Buffer<uint8_t>::Copy(env, response_.data(), response_.size()));
    if (extended_) o.Set("certs", Napi::Buffer<uint8_t>::Copy(env, certs_.data(), certs_.size()));
    deferred_.Resolve(o);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  void FillRequest(struct cd_snp_report_req* req) const {
    memset(req, 0, sizeof(*req));
    memcpy(req->user_data, user_data_, sizeof(req->user_data));
    req->vmpl = vmpl_;
  }

  void FillIoctl(struct cd_snp_guest_request_ioctl* io, void* req) {
    memset(io, 0, sizeof(*io));  // exitinfo2 = 0: the kernel copies the struct back only if it changed it
    io->msg_version = msg_version_;
    io->req_data = reinterpret_cast<uintptr_t>(req);
    io->resp_data = reinterpret_cast<uintptr_t>(response_.data());
  }

  void RecordIoctlFailure(int err, uint64_t exitinfo2) {
    failure_.err = err;
    failure_.syscall = "ioctl";
    // Only EIO carries firmware/VMM codes; some kernels copy back an uninitialised word otherwise.
    failure_.has_exitinfo2 = (err == EIO);
    failure_.exitinfo2 = (err == EIO) ? exitinfo2 : 0;
  }

  void RunPlain(int fd) {
    struct cd_snp_report_req req;
    FillRequest(&req);
    struct cd_snp_guest_request_ioctl io;
    FillIoctl(&io, &req);
    if (IoctlRetry(fd, CD_SNP_GET_REPORT, &io) < 0) RecordIoctlFailure(errno, io.exitinfo2);
  }

  void RunExtended(int fd) {
    uint32_t len = certs_len_;
    // Two-call protocol: if the host's certificates do not fit, the kernel fails with EIO,
    // vmm_error = INVALID_LEN and writes the size it needs into certs_len; retry once with that.
    for (int attempt = 0; attempt < 2; ++attempt) {
      certs_.assign(len, 0);
      struct cd_snp_ext_report_req req;
      memset(&req, 0, sizeof(req));
      FillRequest(&req.data);
      req.certs_address = len == 0 ? 0 : reinterpret_cast<uintptr_t>(certs_.data());
      req.certs_len = len;
      struct cd_snp_guest_request_ioctl io;
      FillIoctl(&io, &req);
      bool ok = IoctlRetry(fd, CD_SNP_GET_EXT_REPORT, &io) == 0;
      int err = ok ? 0 : errno;
      uint32_t vmm_error = static_cast<uint32_t>(io.exitinfo2 >> CD_SNP_GUEST_VMM_ERR_SHIFT);
      // Current kernels fail with EIO; kernels before 47894e0f (5.19) reported the same condition with success
      // and only vmm_error set (sev-rs keeps the same workaround).
      bool too_small = (ok || err == EIO) && vmm_error == CD_SNP_GUEST_VMM_ERR_INVALID_LEN && req.certs_len > len;
      if (ok && !too_small) {
        failure_ = Failure();
        return;
      }
      RecordIoctlFailure(ok ? EIO : err, io.exitinfo2);
      if (!too_small) return;
      failure_.required_certs_len = req.certs_len;
      if (req.certs_len > kMaxCertsLen) return;
      len = static_cast<uint32_t>((req.certs_len + kPageSize - 1) / kPageSize * kPageSize);
    }
  }

  Napi::Promise::Deferred deferred_;
  std::string device_;
  uint8_t user_data_[CD_SNP_USER_DATA_LEN];
  uint32_t vmpl_;
  uint8_t msg_version_;
  bool extended_;
  uint32_t certs_len_;
  Failure failure_;
  std::vector<uint8_t> response_;
  std::vector<uint8_t> certs_;
};

// ---- argument checking (synchronous TypeErrors: these are programming errors, not device errors) ----

bool ArgString(const Napi::CallbackInfo& info, size_t i, std::string* out) {
  if (info.Length() <= i || !info[i].IsString()) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a device path string")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = info[i].As<Napi::String>().Utf8Value();
  if (out->empty() || out->find('\0') != std::string::npos) {
    Napi::TypeError::New(info.Env(), "device path must be non-empty").ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

bool Arg64Bytes(const Napi::CallbackInfo& info, size_t i, const uint8_t** out) {
  if (info.Length() <= i || !info[i].IsBuffer() || info[i].As<Napi::Buffer<uint8_t>>().Length() != 64) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a 64-byte Buffer")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = info[i].As<Napi::Buffer<uint8_t>>().Data();
  return true;
}

bool ArgUint(const Napi::CallbackInfo& info, size_t i, uint32_t max, uint32_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be a number")
        .ThrowAsJavaScriptException();
    return false;
  }
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= max) || d != static_cast<double>(static_cast<uint32_t>(d))) {
    Napi::RangeError::New(info.Env(), "argument " + std::to_string(i) + " out of range")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<uint32_t>(d);
  return true;
}

// tdxGetReport0(device: string, reportData: Buffer(64)): Promise<Buffer(1024)>
Napi::Value TdxGetReport0(const Napi::CallbackInfo& info) {
  std::string device;
  const uint8_t* data = nullptr;
  if (!ArgString(info, 0, &device) || !Arg64Bytes(info, 1, &data)) return info.Env().Undefined();
  auto* w = new TdxReportWorker(info.Env(), device, data);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// snpGetReport(device, userData: Buffer(64), vmpl, msgVersion): Promise<{response: Buffer(4000)}>
Napi::Value SnpGetReport(const Napi::CallbackInfo& info) {
  std::string device;
  const uint8_t* data = nullptr;
  uint32_t vmpl = 0, msg_version = 0;
  if (!ArgString(info, 0, &device) || !Arg64Bytes(info, 1, &data) || !ArgUint(info, 2, 3, &vmpl) ||
      !ArgUint(info, 3, 255, &msg_version))
    return info.Env().Undefined();
  auto* w = new SnpReportWorker(info.Env(), device, data, vmpl, static_cast<uint8_t>(msg_version), false, 0);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// snpGetExtReport(device, userData, vmpl, msgVersion, certsLen): Promise<{response, certs}>
Napi::Value SnpGetExtReport(const Napi::CallbackInfo& info) {
  std::string device;
  const uint8_t* data = nullptr;
  uint32_t vmpl = 0, msg_version = 0, certs_len = 0;
  if (!ArgString(info, 0, &device) || !Arg64Bytes(info, 1, &data) || !ArgUint(info, 2, 3, &vmpl) ||
      !ArgUint(info, 3, 255, &msg_version) || !ArgUint(info, 4, kMaxCertsLen, &certs_len))
    return info.Env().Undefined();
  if (certs_len % kPageSize != 0) {
    Napi::RangeError::New(info.Env(), "certsLen must be a multiple of 4096").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  auto* w = new SnpReportWorker(info.Env(), device, data, vmpl, static_cast<uint8_t>(msg_version), true, certs_len);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// setNonDumpable(): prctl(PR_SET_DUMPABLE, 0), so a crash writes no core dump (which would hold keys) and
// other processes of the same uid cannot ptrace us or read /proc/<pid>/mem. Returns PR_GET_DUMPABLE afterwards
// (0 on success); throws with errno on failure. Synchronous: one syscall.
Napi::Value SetNonDumpable(const Napi::CallbackInfo& info) {
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    int err = errno;
    Napi::Error e = Napi::Error::New(info.Env(), std::string("prctl(PR_SET_DUMPABLE, 0): ") + strerror(err));
    e.Value().Set("errno", Napi::Number::New(info.Env(), err));
    e.ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  return Napi::Number::New(info.Env(), prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
}

// The compiled-in layout, so tests can hold the binary to the kernel headers and the TS constants.
Napi::Object Layout(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  auto set = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
  set("TDX_CMD_GET_REPORT0", CD_TDX_CMD_GET_REPORT0);
  set("SNP_GET_REPORT", CD_SNP_GET_REPORT);
  set("SNP_GET_EXT_REPORT", CD_SNP_GET_EXT_REPORT);
  set("sizeof_tdx_report_req", sizeof(struct cd_tdx_report_req));
  set("offsetof_tdx_report_req_tdreport", offsetof(struct cd_tdx_report_req, tdreport));
  set("sizeof_snp_report_req", sizeof(struct cd_snp_report_req));
  set("offsetof_snp_report_req_vmpl", offsetof(struct cd_snp_report_req, vmpl));
  set("offsetof_snp_report_req_rsvd", offsetof(struct cd_snp_report_req, rsvd));
  set("sizeof_snp_report_resp", sizeof(struct cd_snp_report_resp));
  set("sizeof_snp_ext_report_req", sizeof(struct cd_snp_ext_report_req));
  set("offsetof_snp_ext_report_req_certs_address", offsetof(struct cd_snp_ext_report_req, certs_address));
  set("offsetof_snp_ext_report_req_certs_len", offsetof(struct cd_snp_ext_report_req, certs_len));
  set("sizeof_snp_guest_request_ioctl", sizeof(struct cd_snp_guest_request_ioctl));
  set("offsetof_snp_guest_request_ioctl_req_data", offsetof(struct cd_snp_guest_request_ioctl, req_data));
  set("offsetof_snp_guest_request_ioctl_resp_data", offsetof(struct cd_snp_guest_request_ioctl, resp_data));
  set("offsetof_snp_guest_request_ioctl_exitinfo2", offsetof(struct cd_snp_guest_request_ioctl, exitinfo2));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, kAbiVersion));
  exports.Set("tdxGetReport0", Napi::Function::New(env, TdxGetReport0, "tdxGetReport0"));
  exports.Set("snpGetReport", Napi::Function::New(env, SnpGetReport, "snpGetReport"));
  exports.Set("snpGetExtReport", Napi::Function::New(env, SnpGetExtReport, "snpGetExtReport"));
  exports.Set("setNonDumpable", Napi::Function::New(env, SetNonDumpable, "setNonDumpable"));
  exports.Set("layout", Layout(env));
  coco::RegisterLayerCipher(env, exports);
  coco::RegisterLayerPump(env, exports);
  coco::RegisterFdRead(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(tee, Init)
