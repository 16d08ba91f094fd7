/**
 * The copy of stdin to stdout through Node streams, behind one lazy import in decode.ts: only when the addon's fd
 * pump cannot run (no addon, or COCO_DECODER_NATIVE_CIPHER=0). It loads node:net and the stream machinery, which
 * the pump does not need.
 */
export { decryptLayerFd, decryptLayerStream } from '../ocicrypt/layer-stream.js';
export { openStdout } from '../streamprocessor/stdout.js';
