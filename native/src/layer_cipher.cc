// AES-256-CTR + HMAC-SHA256 over caller-owned buffers, with the OpenSSL that the embedding node binary already
// contains and exports (the addon links against no libcrypto of its own: the symbols resolve to node's at
// dlopen). ocicrypt's layer cipher (blockcipher_aes_ctr.go): the HMAC covers the ciphertext, so every chunk is
// MACed before it is decrypted into `dst` (which may be `src`). Node's Decipher.update returns a fresh Buffer
// per call; this writes into buffers the caller reuses, which is the whole point. Policy (holdback, verify
// before release, constant-time compare) stays in TypeScript: this only computes.
//
// Synchronous on the JS thread: a 64 KiB chunk costs ~50 µs, less than a thread-pool round trip.

#include "layer_cipher.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <climits>

namespace coco {
namespace {

void Release(LayerCipher* lc) {
  if (lc == nullptr) return;
  EVP_CIPHER_CTX_free(lc->cipher);  // frees cleanse their key schedules
  EVP_MAC_CTX_free(lc->mac);
  lc->cipher = nullptr;
  lc->mac = nullptr;
}

LayerCipher* Unwrap(const Napi::CallbackInfo& info) {
  return info.Length() < 1 ? nullptr : LayerCipherOf(info[0]);
}

Napi::Value Fail(Napi::Env env, const char* what) {
  Napi::Error::New(env, what).ThrowAsJavaScriptException();
  return env.Undefined();
}

// cipherNew(key: Buffer(32), nonce: Buffer(16)) -> External
Napi::Value CipherNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsBuffer()) return Fail(env, "cipherNew(key, nonce): Buffers expected");
  auto key = info[0].As<Napi::Buffer<uint8_t>>();
  auto nonce = info[1].As<Napi::Buffer<uint8_t>>();
  if (key.Length() != 32 || nonce.Length() != 16) return Fail(env, "cipherNew: a 32-byte key and a 16-byte nonce expected");
  auto* lc = new LayerCipher();
  lc->cipher = EVP_CIPHER_CTX_new();
  EVP_MAC* hmac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (hmac != nullptr) lc->mac = EVP_MAC_CTX_new(hmac);
  EVP_MAC_free(hmac);
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
  bool ok = lc->cipher != nullptr && lc->mac != nullptr &&
            EVP_DecryptInit_ex2(lc->cipher, EVP_aes_256_ctr(), key.Data(), nonce.Data(), nullptr) == 1 &&
            EVP_MAC_init(lc->mac, key.Data(), key.Length(), params) == 1;
  if (!ok) {
    Release(lc);
    delete lc;
    return Fail(env, "cipherNew: OpenSSL could not set up AES-256-CTR and HMAC-SHA256");
  }
  return Napi::External<LayerCipher>::New(env, lc, [](Napi::Env, LayerCipher* p) {
    Release(p);
    delete p;
  });
}

// cipherUpdate(handle, src: Buffer, dst: Buffer) -> undefined. HMAC over src, then src decrypted into dst.
Napi::Value CipherUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LayerCipher* lc = Unwrap(info);
  if (lc == nullptr) return Fail(env, "cipherUpdate: not a live cipher handle");
  if (info.Length() < 3 || !info[1].IsBuffer() || !info[2].IsBuffer()) return Fail(env, "cipherUpdate(handle, src, dst): Buffers expected");
  auto src = info[1].As<Napi::Buffer<uint8_t>>();
  auto dst = info[2].As<Napi::Buffer<uint8_t>>();
  if (dst.Length() < src.Length() || src.Length() > static_cast<size_t>(INT_MAX)) return Fail(env, "cipherUpdate: dst shorter than src");
  if (src.Length() == 0) return env.Undefined();
  int out = 0;
  if (EVP_MAC_update(lc->mac, src.Data(), src.Length()) != 1 ||
      EVP_DecryptUpdate(lc->cipher, dst.Data(), &out, src.Data(), static_cast<int>(src.Length())) != 1 ||
      static_cast<size_t>(out) != src.Length()) {
    return Fail(env, "cipherUpdate: OpenSSL failed");
  }
  return env.Undefined();
}

// cipherFinal(handle) -> Buffer(32): the HMAC over all ciphertext; the handle is released.
Napi::Value CipherFinal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LayerCipher* lc = Unwrap(info);
  if (lc == nullptr) return Fail(env, "cipherFinal: not a live cipher handle");
  unsigned char mac[EVP_MAX_MD_SIZE];
  size_t len = 0;
  bool ok = EVP_MAC_final(lc->mac, mac, &len, sizeof mac) == 1 && len == 32;
  Release(lc);
  if (!ok) return Fail(env, "cipherFinal: OpenSSL failed");
  auto result = Napi::Buffer<uint8_t>::Copy(env, mac, len);
  OPENSSL_cleanse(mac, sizeof mac);
  return result;
}

// cipherFree(handle): releases early (a failed layer); the finalizer would do it later otherwise. A cipher a
// pump is using is left to the pump's end (its JS object keeps the handle alive until then).
Napi::Value CipherFree(const Napi::CallbackInfo& info) {
  if (info.Length() >= 1 && info[0].IsExternal()) {
    LayerCipher* lc = info[0].As<Napi::External<LayerCipher>>().Data();
    if (lc != nullptr && !lc->busy) Release(lc);
  }
  return info.Env().Undefined();
}

}  // namespace

LayerCipher* LayerCipherOf(const Napi::Value& handle) {
  if (!handle.IsExternal()) return nullptr;
  LayerCipher* lc = handle.As<Napi::External<LayerCipher>>().Data();
  return lc != nullptr && lc->cipher != nullptr && lc->mac != nullptr && !lc->busy ? lc : nullptr;
}

bool LayerCipherUpdateInPlace(LayerCipher* lc, unsigned char* data, size_t len) {
  while (len > 0) {
    const int n = len > (1u << 30) ? (1 << 30) : static_cast<int>(len);
    int out = 0;
    if (EVP_MAC_update(lc->mac, data, static_cast<size_t>(n)) != 1 || EVP_DecryptUpdate(lc->cipher, data, &out, data, n) != 1 || out != n) {
      return false;
    }
    data += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

void RegisterLayerCipher(Napi::Env env, Napi::Object exports) {
  exports.Set("cipherNew", Napi::Function::New(env, CipherNew, "cipherNew"));
  exports.Set("cipherUpdate", Napi::Function::New(env, CipherUpdate, "cipherUpdate"));
  exports.Set("cipherFinal", Napi::Function::New(env, CipherFinal, "cipherFinal"));
  exports.Set("cipherFree", Napi::Function::New(env, CipherFree, "cipherFree"));
}

}  // namespace coco
