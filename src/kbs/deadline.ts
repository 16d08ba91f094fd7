/**
 * The time budget of one key fetch: the caller's signal (the layer's overall deadline) combined with
 * `kbs.total_timeout_ms`. Every request, backoff sleep and lock wait is bounded by it, so a KBS that hangs or keeps
 * failing ends in a clear error instead of a stuck image pull.
 */
import { DecoderError } from '../util/errors.js';
import { KbsError, timeoutError } from './errors.js';

export interface Deadline {
  readonly signal: AbortSignal;
  /** The error to report once `signal` has fired, for the operation `what`. */
  error(what: string): DecoderError;
}

export function createDeadline(totalMs: number, kbsUrl: string, outer?: AbortSignal): Deadline {
  const total = AbortSignal.timeout(totalMs);
  const signal = outer ? AbortSignal.any([outer, total]) : total;
  return {
    signal,
    error(what: string): DecoderError {
      if (outer?.aborted) {
        const reason = outer.reason instanceof Error ? outer.reason.message : 'cancelled';
        return new KbsError('KBS_ABORTED', `${what} at the KBS ${kbsUrl} was abandoned: ${reason}`, { cause: outer.reason });
      }
      return timeoutError({ kbsUrl, what, timeoutMs: totalMs, setting: 'kbs.total_timeout_ms', certPath: undefined, attempts: 1 });
    },
  };
}
