// readFd: everything from a pipe until EOF, bounded in size and time, on a worker thread. containerd's payload pipe
// (fd 3) is read this way so that the deadline holds without a libuv stream on the descriptor (node:net is the
// only other way to get one, and loading it costs every layer several milliseconds). poll() waits at most until
// the deadline; the descriptor may be blocking or not.

#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <vector>

#include "layer_cipher.h"

namespace coco {
namespace {

constexpr size_t kChunk = 64 * 1024;
constexpr int64_t kMaxBytes = 64 * 1024 * 1024;
constexpr int64_t kMaxTimeoutMs = 10 * 60 * 1000;

int64_t NowMs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

class ReadWorker : public Napi::AsyncWorker {
 public:
  ReadWorker(const Napi::Function& cb, int fd, size_t max, int64_t timeout_ms)
      : Napi::AsyncWorker(cb, "coco-decoder.readFd"), fd_(fd), max_(max), timeout_ms_(timeout_ms) {}

  void Execute() override {
    const int64_t deadline = NowMs() + timeout_ms_;
    for (;;) {
      const int64_t left = deadline - NowMs();
      if (left <= 0) return void(outcome_ = "timeout");
      pollfd pfd{fd_, POLLIN, 0};
      const int r = poll(&pfd, 1, static_cast<int>(left));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return Failed(errno);
      if (r == 0) return void(outcome_ = "timeout");
      const size_t at = data_.size();
      data_.resize(at + kChunk);
      const ssize_t n = read(fd_, data_.data() + at, kChunk);
      data_.resize(at + (n > 0 ? static_cast<size_t>(n) : 0));
      if (n == 0) return;
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
        return Failed(errno);
      }
      if (data_.size() > max_) return void(outcome_ = "too-large");
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (outcome_ != nullptr) {
      Napi::Object e = Napi::Object::New(env);
      e.Set("reason", Napi::String::New(env, outcome_));
      e.Set("errno", Napi::Number::New(env, errno_));
      Callback().Call({e});
      return;
    }
    Callback().Call({env.Null(), Napi::Buffer<uint8_t>::Copy(env, data_.data(), data_.size())});
  }

 private:
  void Failed(int err) {
    outcome_ = "error";
    errno_ = err;
  }
  int fd_;
  size_t max_;
  int64_t timeout_ms_;
  std::vector<uint8_t> data_;
  const char* outcome_ = nullptr;  // "timeout", "too-large", "error"; nullptr: EOF reached
  int errno_ = 0;
};

// readFd(fd, maxBytes, timeoutMs, callback(err: {reason, errno} | null, data: Buffer))
Napi::Value ReadFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsFunction()) {
    Napi::TypeError::New(env, "readFd(fd, maxBytes, timeoutMs, callback) expected").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int64_t fd = info[0].As<Napi::Number>().Int64Value();
  const int64_t max = info[1].As<Napi::Number>().Int64Value();
  const int64_t timeout = info[2].As<Napi::Number>().Int64Value();
  if (fd < 0 || fd > INT32_MAX || max < 0 || max > kMaxBytes || timeout < 0 || timeout > kMaxTimeoutMs) {
    Napi::RangeError::New(env, "readFd: fd, maxBytes or timeoutMs out of range").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* worker = new ReadWorker(info[3].As<Napi::Function>(), static_cast<int>(fd), static_cast<size_t>(max), timeout);
  worker->Queue();
  return env.Undefined();
}

}  // namespace

void RegisterFdRead(Napi::Env env, Napi::Object exports) {
  exports.Set("readFd", Napi::Function::New(env, ReadFd, "readFd"));
}

}  // namespace coco
