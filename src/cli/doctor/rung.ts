/**
 * One rung of the `coco-decoder doctor` ladder: a named check with one line of outcome and, when it fails, one line
 * saying what to do. Rungs never throw; `skip` marks a rung that was not run (a prerequisite failed, or the
 * optional input such as `--kid` was not given) and never fails the ladder on its own.
 */
export type RungStatus = 'pass' | 'fail' | 'skip';

export interface RungResult {
  rung: string;
  status: RungStatus;
  /** What was found, one line. Never contains key material or tokens. */
  detail: string;
  /** For `fail`: the action that fixes it. */
  fix?: string;
}

export const pass = (rung: string, detail: string): RungResult => ({ rung, status: 'pass', detail });
export const fail = (rung: string, detail: string, fix: string): RungResult => ({ rung, status: 'fail', detail, fix });
export const skip = (rung: string, detail: string): RungResult => ({ rung, status: 'skip', detail });

const SYMBOL: Record<RungStatus, string> = { pass: '✓', fail: '✗', skip: '-' };

/** `✓ config: /etc/coco-decoder/config.toml`, `✗ kbs: cannot connect … — fix: …`, `- resource: skipped: …` */
export function formatRung(r: RungResult): string {
  const detail = r.status === 'skip' ? `skipped: ${r.detail}` : r.detail;
  return `${SYMBOL[r.status]} ${r.rung}: ${detail}${r.fix ? ` — fix: ${r.fix}` : ''}`;
}

/** A promise bounded in time (the underlying work cannot always be cancelled, e.g. a TEE ioctl). */
export async function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
    timer.unref();
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
