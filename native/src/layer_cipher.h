// The layer cipher's fast path (layer_cipher.cc), the fd-to-fd pump built on it (layer_pump.cc) and the bounded
// pipe read of the payload (fd_read.cc): each registers its functions on the addon's exports.
#pragma once

#include <napi.h>
#include <openssl/evp.h>

namespace coco {

// One layer's AES-256-CTR + HMAC-SHA256 state. `busy` while a pump owns it on a worker thread: the JS-thread
// calls refuse it then, so the two never touch the contexts at once.
struct LayerCipher {
  EVP_CIPHER_CTX* cipher = nullptr;
  EVP_MAC_CTX* mac = nullptr;
  bool busy = false;
};

// The live, idle cipher behind a handle (an External from cipherNew), or nullptr.
LayerCipher* LayerCipherOf(const Napi::Value& handle);
// HMAC over `len` bytes at `data`, then those bytes decrypted in place. False: OpenSSL failed.
bool LayerCipherUpdateInPlace(LayerCipher* lc, unsigned char* data, size_t len);

void RegisterLayerCipher(Napi::Env env, Napi::Object exports);
void RegisterLayerPump(Napi::Env env, Napi::Object exports);
// fd_read.cc: a pipe read to EOF with a size bound and a deadline.
void RegisterFdRead(Napi::Env env, Napi::Object exports);

}  // namespace coco
