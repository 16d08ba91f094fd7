/**
 * Everything decoding a layer always needs, behind one lazy import in decode.ts: `--version`, `--help` and
 * argument errors load none of it, and a layer loads it in one go. The optional paths keep their own lazy imports:
 * the content-store lookup (gRPC), the keys directory, the KBS client, key providers, the audit log, the
 * stdout holder of a failure, and the Node-stream copy of stdin to stdout (decode-streams.ts) where the addon's
 * fd pump cannot run.
 */
export { MISSING_PAYLOAD_HELP, probePayloadFd, readPayloadFd } from '../streamprocessor/fd3.js';
export { decodePayload } from '../streamprocessor/payload.js';
export { checkLayerMediaType } from '../streamprocessor/mediatype.js';
export { decryptLayer, layerKeySchemes, layerPublicOptions } from '../ocicrypt/decrypt-layer.js';
export { buildKeyWrappers } from '../ocicrypt/keywrap/registry.js';
export { nativeLayerCipher } from './native-cipher.js';
export { nativePipeReader } from './native-pipe-reader.js';
