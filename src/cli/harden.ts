/**
 * Process hardening for every layer process, before any key is read: non-dumpable (prctl(PR_SET_DUMPABLE, 0)
 * through the TEE addon), so a crash leaves no core file with keys in it and no other process of our uid can
 * ptrace us or read our memory through /proc. Node has no prctl; the addon is the one native piece we ship.
 */
import { defaultConfig } from '../config/types.js';
import { describeError } from '../util/errors.js';

export type HardenResult = { ok: true } | { ok: false; why: string };

/** Never throws: a host where the addon cannot load (noexec TMPDIR, a development run) still decrypts. */
export async function makeNonDumpable(addonPath = defaultConfig().attestation.addonPath): Promise<HardenResult> {
  try {
    const { loadTeeAddon } = await import('../attest/native.js');
    const dumpable = loadTeeAddon({ addonPath }).setNonDumpable();
    return dumpable === 0 ? { ok: true } : { ok: false, why: `PR_GET_DUMPABLE is still ${dumpable}` };
  } catch (err) {
    return { ok: false, why: describeError(err) };
  }
}
