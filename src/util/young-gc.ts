/**
 * Keeps memory flat in layer size on Node ≥ 22. Every `Decipher.update` returns a fresh Buffer whose bytes live
 * outside the V8 heap; V8 13 only scavenges once such external memory has grown by tens of MiB, so a 1 GiB layer
 * peaked at ~130 MiB RSS on Node 24 against ~88 MiB on Node 20. A minor GC (a young-generation scavenge: well
 * under a millisecond with our tiny heap) after every 16 MiB of plaintext frees the dead chunks promptly.
 *
 * `gc` is obtained on first need by turning on `--expose-gc` at run time, not as a start-up flag: as a start-up
 * flag it costs Node its built-in startup snapshot (+14 ms per layer, measured), and small layers never need it.
 * Turning it on also changes V8's flag hash, which is harmless here (the trained code cache was consumed at start)
 * but is why the build's training run, a small layer, must never reach this point.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

const EVERY_BYTES = 16 * 1024 * 1024;

type Gc = (options?: { type?: 'major' | 'minor' }) => void;

export class YoungGc {
  #gc: Gc | null | undefined;
  #since = 0;

  /** Counts `bytes` of freshly allocated (soon dead) buffers; scavenges every EVERY_BYTES. */
  allocated(bytes: number): void {
    this.#since += bytes;
    if (this.#since < EVERY_BYTES) return;
    this.#since = 0;
    if (this.#gc === undefined) this.#gc = exposeGc();
    this.#gc?.({ type: 'minor' });
  }
}

function exposeGc(): Gc | null {
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? (gc as Gc) : null;
  } catch {
    return null; // memory then grows as V8 decides, nothing worse
  }
}
