/**
 * containerd 1.6 (containerd#6914) checks a stream processor's Err() as soon as its stdout reaches EOF, but Err()
 * is only set once the process has been reaped and its stderr drained. When we exit, stdout and the process end
 * at the same instant and containerd often reports a bare "wrong diff id" instead of our one-line error. On
 * failure, a detached helper holding only our stdout keeps that EOF back for a moment, so containerd reaps us and
 * reads stderr first. Never used on success: the plaintext stream must end when we are done.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { isSea } from 'node:sea';

/** How long stdout stays open after we exit; containerd needs well under 100 ms to reap and drain stderr. */
export const HOLD_STDOUT_MS = 300;
/** Starting the helper must never be what delays the failure report. */
const SPAWN_DEADLINE_MS = 2_000;

/** The hidden mode: keep the inherited stdout open for HOLD_STDOUT_MS, touch nothing, exit 0. */
export function holdStdoutHere(): Promise<number> {
  return new Promise((resolve) => setTimeout(() => resolve(0), HOLD_STDOUT_MS));
}

/** Our own executable with `hiddenArg`: the SEA binary itself, or node with the script (tests, tsx). */
function selfCommand(hiddenArg: string): [string, string[]] {
  if (isSea()) return [process.execPath, [hiddenArg]];
  return [process.execPath, [...process.execArgv, process.argv[1]!, hiddenArg]];
}

function started(child: ChildProcess): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), SPAWN_DEADLINE_MS);
    timer.unref();
    child.once('spawn', () => {
      clearTimeout(timer);
      resolve(true);
    });
    child.once('error', () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
}

async function spawnHolder(file: string, args: string[]): Promise<boolean> {
  let child: ChildProcess;
  try {
    // Only fd 1 is shared: stdin and stderr are /dev/null, so containerd sees our stderr end when we exit.
    child = spawn(file, args, { stdio: ['ignore', 1, 'ignore'], detached: true, env: {} });
  } catch {
    return false;
  }
  const ok = await started(child);
  child.unref();
  return ok;
}

/**
 * Starts the helper and resolves once it runs (or could not be started: then nothing is held, as before).
 * The helper is /bin/sleep, else our own executable with `hiddenArg`, which must run `holdStdoutHere`.
 * Never rejects.
 */
export async function holdStdoutAfterExit(hiddenArg: string, sleep = '/bin/sleep'): Promise<void> {
  if (await spawnHolder(sleep, [String(HOLD_STDOUT_MS / 1000)])) return;
  try {
    const [file, args] = selfCommand(hiddenArg);
    await spawnHolder(file, args);
  } catch {
    // Best effort: the failure itself is already on stderr.
  }
}
