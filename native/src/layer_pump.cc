// A layer decrypted from one file descriptor to another on a worker thread: ciphertext is read from `in`, MACed
// and decrypted in place in a ring buffer, and plaintext is written to `out` while at least `holdback` bytes stay
// behind it. At EOF the worker stops with that tail still held; TypeScript verifies (LayerDecipher.verify: HMAC,
// digests) and only then calls pumpRelease, which writes the tail. These are the rules of the TypeScript LayerPump
// (src/ocicrypt/layer-decipher.ts), without a JS buffer per chunk, a JS stream on either descriptor or the JS
// thread in the loop: one copy of each byte, from the kernel into the ring and back.
//
// Policy stays in TypeScript: this never decides whether a layer is good, it only withholds until told.

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "layer_cipher.h"

namespace coco {
namespace {

// A pipe holds 64 KiB: one read drains it. The ring holds the holdback plus a few reads, so it stays in L2.
constexpr size_t kReadBytes = 64 * 1024;
constexpr size_t kSlackBytes = 4 * kReadBytes;
constexpr size_t kMaxHoldback = 16 * 1024 * 1024;
constexpr size_t kMaxPrefix = 1024 * 1024;
constexpr int kOutPipeBytes = 1024 * 1024;

struct Pump {
  LayerCipher* lc = nullptr;
  int in_fd = -1;
  int out_fd = -1;
  size_t holdback = 0;
  // Ciphertext already read by the caller (the content-store lookup's head), processed before `in`.
  unsigned char* prefix = nullptr;
  size_t prefix_len = 0;
  size_t prefix_off = 0;
  // Plaintext not yet written: `count` bytes from `head`, wrapping at `cap`.
  unsigned char* ring = nullptr;
  size_t cap = 0;
  size_t head = 0;
  size_t count = 0;
  EVP_MD_CTX* cipher_md = nullptr;  // the ciphertext's digest, when the descriptor came from the lookup
  EVP_MD_CTX* plain_md = nullptr;   // the plaintext's sha256, in strict mode
  uint64_t cipher_bytes = 0;
  uint64_t written = 0;
  // The worker's outcome: 0, or the errno of the failed `stage` ("read", "write"; "cipher" has no errno).
  int err = 0;
  const char* stage = nullptr;
  bool started = false;
  bool running = false;
  bool finished = false;
};

void Destroy(Pump* p) {
  if (p == nullptr) return;
  if (p->ring != nullptr) {
    OPENSSL_cleanse(p->ring, p->cap);  // unauthenticated or not yet written plaintext
    std::free(p->ring);
  }
  if (p->prefix != nullptr) std::free(p->prefix);
  EVP_MD_CTX_free(p->cipher_md);
  EVP_MD_CTX_free(p->plain_md);
  p->ring = nullptr;
  p->prefix = nullptr;
  p->cipher_md = nullptr;
  p->plain_md = nullptr;
  p->count = 0;
}

bool WaitFor(int fd, short events) {
  pollfd pfd{fd, events, 0};
  for (;;) {
    const int r = poll(&pfd, 1, -1);
    if (r >= 0 || errno != EINTR) return r >= 0;
  }
}

// Up to `max` bytes of ciphertext: the prefix first, then `in`. 0 is EOF; -1 sets p->err.
ssize_t ReadSome(Pump* p, unsigned char* dst, size_t max) {
  if (p->prefix_off < p->prefix_len) {
    const size_t n = p->prefix_len - p->prefix_off < max ? p->prefix_len - p->prefix_off : max;
    std::memcpy(dst, p->prefix + p->prefix_off, n);
    p->prefix_off += n;
    return static_cast<ssize_t>(n);
  }
  for (;;) {
    const ssize_t n = read(p->in_fd, dst, max);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if ((errno == EAGAIN || errno == EWOULDBLOCK) && WaitFor(p->in_fd, POLLIN)) continue;
    p->err = errno;
    return -1;
  }
}

// Writes the oldest `len` buffered bytes (len <= count) and drops them from the ring. False sets p->err.
bool WriteOut(Pump* p, size_t len) {
  while (len > 0) {
    const size_t first = p->cap - p->head < len ? p->cap - p->head : len;
    iovec iov[2] = {{p->ring + p->head, first}, {p->ring, len - first}};
    const ssize_t n = writev(p->out_fd, iov, len > first ? 2 : 1);
    if (n < 0) {
      if (errno == EINTR) continue;
      if ((errno == EAGAIN || errno == EWOULDBLOCK) && WaitFor(p->out_fd, POLLOUT)) continue;
      p->err = errno;
      return false;
    }
    const size_t w = static_cast<size_t>(n);
    p->head = (p->head + w) % p->cap;
    p->count -= w;
    p->written += w;
    len -= w;
  }
  if (p->count == 0) p->head = 0;
  return true;
}

// The worker: runs until EOF or the first failure; the tail (at most `holdback` bytes) is left in the ring.
void Run(Pump* p) {
  // A stdout pipe of 1 MiB lets us decrypt ahead of a reader that is briefly slow, as the TypeScript path's 1 MiB
  // write queue did, in kernel memory. Best effort: not a pipe, or above /proc/sys/fs/pipe-max-size.
  (void)fcntl(p->out_fd, F_SETPIPE_SZ, kOutPipeBytes);
  for (;;) {
    // The free space after the buffered bytes, contiguous up to the end of the ring or up to `head`.
    const size_t end = p->head + p->count;
    unsigned char* at = end < p->cap ? p->ring + end : p->ring + (end - p->cap);
    const size_t room = end < p->cap ? p->cap - end : p->head - (end - p->cap);
    if (room == 0) {
      // Cannot happen while cap > holdback (the flush below keeps count <= holdback + kReadBytes); be safe.
      if (!WriteOut(p, p->count - p->holdback)) return void(p->stage = "write");
      continue;
    }
    const ssize_t n = ReadSome(p, at, room < kReadBytes ? room : kReadBytes);
    if (n < 0) return void(p->stage = "read");
    if (n == 0) return;
    const size_t len = static_cast<size_t>(n);
    if (p->cipher_md != nullptr && EVP_DigestUpdate(p->cipher_md, at, len) != 1) return void(p->stage = "cipher");
    if (!LayerCipherUpdateInPlace(p->lc, at, len)) return void(p->stage = "cipher");
    if (p->plain_md != nullptr && EVP_DigestUpdate(p->plain_md, at, len) != 1) return void(p->stage = "cipher");
    p->cipher_bytes += len;
    p->count += len;
    if (p->count >= p->holdback + kReadBytes && !WriteOut(p, p->count - p->holdback)) return void(p->stage = "write");
  }
}

Napi::Value Fail(Napi::Env env, const char* what) {
  Napi::Error::New(env, what).ThrowAsJavaScriptException();
  return env.Undefined();
}

Pump* PumpOf(const Napi::Value& v) {
  return v.IsExternal() ? v.As<Napi::External<Pump>>().Data() : nullptr;
}

Napi::Object ErrorInfo(Napi::Env env, const Pump* p) {
  Napi::Object e = Napi::Object::New(env);
  e.Set("stage", Napi::String::New(env, p->stage != nullptr ? p->stage : "cipher"));
  e.Set("errno", Napi::Number::New(env, p->err));
  return e;
}

class PumpWorker : public Napi::AsyncWorker {
 public:
  PumpWorker(const Napi::Function& cb, const Napi::Value& pump, const Napi::Value& cipher, Pump* p)
      : Napi::AsyncWorker(cb, "coco-decoder.layerPump"), p_(p) {
    // Both handles stay reachable (not finalized) while the worker uses what they own.
    pump_ = Napi::Persistent(pump);
    cipher_ = Napi::Persistent(cipher);
  }
  void Execute() override { Run(p_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    p_->running = false;
    p_->finished = true;
    p_->lc->busy = false;
    if (p_->stage != nullptr) {
      Callback().Call({ErrorInfo(env, p_)});
      return;
    }
    Napi::Object r = Napi::Object::New(env);
    r.Set("cipherBytes", Napi::Number::New(env, static_cast<double>(p_->cipher_bytes)));
    r.Set("written", Napi::Number::New(env, static_cast<double>(p_->written)));
    r.Set("held", Napi::Number::New(env, static_cast<double>(p_->count)));
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (p_->cipher_md != nullptr && EVP_DigestFinal_ex(p_->cipher_md, md, &len) == 1) {
      r.Set("cipherDigest", Napi::Buffer<uint8_t>::Copy(env, md, len));
    }
    if (p_->plain_md != nullptr && EVP_DigestFinal_ex(p_->plain_md, md, &len) == 1) {
      r.Set("plainDigest", Napi::Buffer<uint8_t>::Copy(env, md, len));
    }
    OPENSSL_cleanse(md, sizeof md);
    Callback().Call({env.Null(), r});
  }

 private:
  Pump* p_;
  Napi::Reference<Napi::Value> pump_;
  Napi::Reference<Napi::Value> cipher_;
};

// pumpNew(cipher, inFd, outFd, holdback, prefix: Buffer|null, cipherDigest: ''|'sha256'|'sha384'|'sha512',
//         plainSha256: boolean) -> External
Napi::Value PumpNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 7) return Fail(env, "pumpNew(cipher, inFd, outFd, holdback, prefix, cipherDigest, plainSha256) expected");
  LayerCipher* lc = LayerCipherOf(info[0]);
  if (lc == nullptr) return Fail(env, "pumpNew: not a live, idle cipher handle");
  if (!info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber() || !info[5].IsString() || !info[6].IsBoolean()) {
    return Fail(env, "pumpNew: bad argument types");
  }
  const int64_t in_fd = info[1].As<Napi::Number>().Int64Value();
  const int64_t out_fd = info[2].As<Napi::Number>().Int64Value();
  const int64_t holdback = info[3].As<Napi::Number>().Int64Value();
  if (in_fd < 0 || out_fd < 0 || in_fd > INT32_MAX || out_fd > INT32_MAX) return Fail(env, "pumpNew: bad file descriptor");
  if (holdback < 0 || static_cast<uint64_t>(holdback) > kMaxHoldback) return Fail(env, "pumpNew: holdback out of range");
  const std::string digest = info[5].As<Napi::String>().Utf8Value();
  const EVP_MD* md = digest.empty() ? nullptr
                     : digest == "sha256" ? EVP_sha256()
                     : digest == "sha384" ? EVP_sha384()
                     : digest == "sha512" ? EVP_sha512()
                                          : nullptr;
  if (!digest.empty() && md == nullptr) return Fail(env, "pumpNew: cipherDigest must be '', sha256, sha384 or sha512");

  auto* p = new Pump();
  p->lc = lc;
  p->in_fd = static_cast<int>(in_fd);
  p->out_fd = static_cast<int>(out_fd);
  p->holdback = static_cast<size_t>(holdback);
  p->cap = p->holdback + kSlackBytes;
  p->ring = static_cast<unsigned char*>(std::malloc(p->cap));
  bool ok = p->ring != nullptr;
  if (ok && info[4].IsBuffer()) {
    auto prefix = info[4].As<Napi::Buffer<uint8_t>>();
    if (prefix.Length() > kMaxPrefix) ok = false;
    else if (prefix.Length() > 0) {
      p->prefix = static_cast<unsigned char*>(std::malloc(prefix.Length()));
      ok = p->prefix != nullptr;
      if (ok) std::memcpy(p->prefix, prefix.Data(), prefix.Length());
      p->prefix_len = prefix.Length();
    }
  }
  if (ok && md != nullptr) ok = (p->cipher_md = EVP_MD_CTX_new()) != nullptr && EVP_DigestInit_ex(p->cipher_md, md, nullptr) == 1;
  if (ok && info[6].As<Napi::Boolean>().Value()) {
    ok = (p->plain_md = EVP_MD_CTX_new()) != nullptr && EVP_DigestInit_ex(p->plain_md, EVP_sha256(), nullptr) == 1;
  }
  if (!ok) {
    Destroy(p);
    delete p;
    return Fail(env, "pumpNew: out of memory, prefix too long, or OpenSSL could not set up the digest");
  }
  return Napi::External<Pump>::New(env, p, [](Napi::Env, Pump* q) {
    Destroy(q);
    delete q;
  });
}

// pumpRun(pump, cipher, callback(err: {stage, errno} | null, result: {cipherBytes, written, held, cipherDigest?,
// plainDigest?})): once per pump; the cipher is the one pumpNew was given.
Napi::Value PumpRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Pump* p = info.Length() >= 3 ? PumpOf(info[0]) : nullptr;
  if (p == nullptr || p->ring == nullptr || p->started) return Fail(env, "pumpRun: not a fresh pump");
  if (LayerCipherOf(info[1]) != p->lc) return Fail(env, "pumpRun: not this pump's idle cipher");
  if (!info[2].IsFunction()) return Fail(env, "pumpRun: callback expected");
  p->started = true;
  p->running = true;
  p->lc->busy = true;
  auto* worker = new PumpWorker(info[2].As<Napi::Function>(), info[0], info[1], p);
  worker->Queue();
  return env.Undefined();
}

// pumpRelease(pump) -> total bytes written: the held tail goes out (on the JS thread: it is at most the
// holdback). Only after a successful run, and only once; throws {stage: 'write', errno} as an Error.
Napi::Value PumpRelease(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Pump* p = info.Length() >= 1 ? PumpOf(info[0]) : nullptr;
  if (p == nullptr || !p->finished || p->stage != nullptr || p->ring == nullptr) return Fail(env, "pumpRelease: no finished, successful pump");
  const bool ok = WriteOut(p, p->count);
  const uint64_t written = p->written;
  if (!ok) {
    p->stage = "write";
    Napi::Error e = Napi::Error::New(env, "pumpRelease: write failed");
    e.Set("errno", Napi::Number::New(env, p->err));
    Destroy(p);
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Destroy(p);
  return Napi::Number::New(env, static_cast<double>(written));
}

// pumpFree(pump): zeroes and frees what is held (a failed layer). A running pump is left to its finalizer.
Napi::Value PumpFree(const Napi::CallbackInfo& info) {
  Pump* p = info.Length() >= 1 ? PumpOf(info[0]) : nullptr;
  if (p != nullptr && !p->running) Destroy(p);
  return info.Env().Undefined();
}

}  // namespace

void RegisterLayerPump(Napi::Env env, Napi::Object exports) {
  exports.Set("pumpNew", Napi::Function::New(env, PumpNew, "pumpNew"));
  exports.Set("pumpRun", Napi::Function::New(env, PumpRun, "pumpRun"));
  exports.Set("pumpRelease", Napi::Function::New(env, PumpRelease, "pumpRelease"));
  exports.Set("pumpFree", Napi::Function::New(env, PumpFree, "pumpFree"));
}

}  // namespace coco
