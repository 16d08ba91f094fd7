/** Replaced at bundle time by build/build.mjs (esbuild `define`); falls back to package.json in dev runs. */
declare const __COCO_DECODER_VERSION__: string | undefined;

export const VERSION: string =
  typeof __COCO_DECODER_VERSION__ === 'string' ? __COCO_DECODER_VERSION__ : '0.0.0-dev';
