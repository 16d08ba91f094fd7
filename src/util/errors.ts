/**
 * Errors that reach the user. containerd copies the stream processor's stderr verbatim into the pull error
 * (`kubectl describe pod`), so every failure must end up as exactly one readable line.
 */
import type { ErrorCode } from './error-codes.js';

/** An error whose message is meant for the operator, already phrased as the cause. */
export class DecoderError extends Error {
  override readonly name = 'DecoderError';
  /** Optional upstream-compatible prefix (e.g. `call to DecryptLayer failed`), kept so runbooks that grep for it still work. */
  readonly stage: string | undefined;
  /** The classified cause (util/error-codes.ts), when there is one: stable, unlike the message. */
  readonly code: ErrorCode | undefined;
  constructor(message: string, options?: { stage?: string; cause?: unknown; code?: ErrorCode }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.stage = options?.stage;
    this.code = options?.code;
  }
}

/** Collapses whitespace and newlines so a (possibly multi-line) message fits on one line. */
export function oneLine(text: string): string {
  return text
    .split(/\r?\n/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .join('; ')
    .replace(/\s+/g, ' ')
    .trim();
}

/** The operator-facing text of any thrown value: never a stack trace. */
export function describeError(err: unknown): string {
  if (err instanceof DecoderError) {
    return oneLine(err.stage ? `${err.stage}: ${err.message}` : err.message);
  }
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return oneLine(code && !err.message.includes(code) ? `${err.message} (${code})` : err.message);
  }
  return oneLine(String(err));
}
