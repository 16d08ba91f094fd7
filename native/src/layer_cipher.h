// The layer cipher's fast path (layer_cipher.cc): registers its functions on the addon's exports.
#pragma once

#include <napi.h>

namespace coco {
void RegisterLayerCipher(Napi::Env env, Napi::Object exports);
}
