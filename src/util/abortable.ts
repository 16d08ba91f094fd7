/**
 * Device reads and quote generation cannot always be cancelled (a blocking read on /dev/tpmrm0 holds a libuv
 * thread until the device answers), but the caller must still be able to stop waiting: the layer has a deadline.
 */
import { DecoderError } from './errors.js';

/** `work`, or a rejection as soon as `signal` aborts (the work itself may go on in the background). */
export function abortable<T>(work: Promise<T>, signal: AbortSignal | undefined, what: string): Promise<T> {
  if (signal === undefined) return work;
  const abandoned = (): DecoderError => new DecoderError(`${what} abandoned: the layer deadline passed`, { cause: signal.reason });
  if (signal.aborted) {
    work.catch(() => undefined);
    return Promise.reject(abandoned());
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abandoned());
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
