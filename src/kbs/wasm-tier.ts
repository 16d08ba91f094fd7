/**
 * undici parses HTTP with llhttp compiled to WebAssembly. After a few KBS responses V8 starts tiering its parser up
 * to TurboFan on a background thread (100-200 ms of CPU for that one huge function), and at exit the main thread
 * waits for that job: the layer was done, but the process (and containerd's unpack) ended ~120 ms later. We make
 * a handful of requests per process, for which Liftoff's baseline code is plenty. V8 reads the flag when it
 * compiles a module, so this must run before undici compiles llhttp: http.ts imports this module ahead of undici,
 * so it takes effect whenever the KBS client is loaded, and only then.
 */
import { setFlagsFromString } from 'node:v8';

setFlagsFromString('--liftoff-only');
