/**
 * configfs-tsm (`/sys/kernel/config/tsm/report`, Linux ≥ 6.7): the kernel's provider-neutral way to get a
 * signed TDX quote or SEV-SNP report. Plain files, so no native code: mkdir an entry, check `provider`, write
 * exactly 64 bytes to `inblob`, read `outblob` (and `auxblob`: the SNP certificate table), rmdir.
 *
 * Kernel facts this relies on (Linux `drivers/virt/coco/tsm.c`, `Documentation/ABI/testing/configfs-tsm`): an `inblob` write is committed at close() and a
 * failed commit is invisible to the writer, so the `generation` counter is the only proof our inblob landed
 * and that nobody rewrote it before we read `outblob`; the TDX provider can return an *empty* outblob with no
 * error when the host's quote service failed. Entries are private only by convention, and a second process
 * asking for a TDX quote while one is in flight gets EBUSY, hence the cross-process lock.
 */
import { constants as fsConstants, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { TeeErrorCode } from '../util/error-codes.js';
import { DecoderError } from '../util/errors.js';
import { quoteUntrusted } from '../util/quote.js';

export type TsmProvider = 'tdx_guest' | 'sev_guest' | 'arm_cca_guest';
const KNOWN_PROVIDERS: readonly string[] = ['tdx_guest', 'sev_guest', 'arm_cca_guest'];

/** `TSM_REPORT_INBLOB_MAX`; both TDX and SEV providers also require exactly this length. */
export const TSM_INBLOB_LEN = 64;

/** Default cross-process lock: under /run so only root (the only user who can use configfs-tsm) creates it. */
export const DEFAULT_TSM_LOCK_PATH = '/run/coco-decoder-tsm.lock';

/** File operations used on the configfs tree: a seam so tests can run a kernel-faithful fake. */
export interface TsmFs {
  /** Creates a fresh entry directory under `root` (like `mkdtemp`), returning its path. */
  mkdtemp(prefix: string): Promise<string>;
  readFile(file: string): Promise<Buffer>;
  /** One open → write(all bytes) → close: configfs commits binary attributes on close. */
  writeFile(file: string, data: Buffer): Promise<void>;
  rmdir(dir: string): Promise<void>;
  exists(p: string): Promise<boolean>;
}

export const nodeTsmFs: TsmFs = {
  mkdtemp: (prefix) => fsp.mkdtemp(prefix),
  readFile: (file) => fsp.readFile(file),
  async writeFile(file, data) {
    // No O_CREAT/O_TRUNC: attributes exist already, and truncation means nothing to configfs.
    const fh = await fsp.open(file, fsConstants.O_WRONLY);
    try {
      let off = 0;
      while (off < data.length) {
        const { bytesWritten } = await fh.write(data, off, data.length - off, null);
        if (bytesWritten <= 0) throw new DecoderError(`short write to ${file}`);
        off += bytesWritten;
      }
    } finally {
      await fh.close();
    }
  },
  rmdir: (dir) => fsp.rmdir(dir),
  exists: (p) =>
    fsp.access(p).then(
      () => true,
      () => false,
    ),
};

/** The codes a configfs-tsm failure can have (util/error-codes.ts; TEE_* shared with the ioctl path). */
export type TsmErrorKind = Extract<TeeErrorCode, `TSM_${string}` | 'TEE_PERMISSION' | 'TEE_BUSY' | 'TDX_QUOTE_FAILED' | 'TDX_QUOTE_EMPTY' | 'SNP_FIRMWARE_ERROR'>;

export class TsmError extends DecoderError {
  declare readonly code: TsmErrorKind;
  constructor(
    message: string,
    code: TsmErrorKind,
    readonly errnoCode?: string,
    cause?: unknown,
  ) {
    super(message, { cause, code });
  }
}

export interface TsmRequest {
  /** The report root, normally `/sys/kernel/config/tsm/report` (`attestation.configfs_tsm_root`). */
  root: string;
  /** The provider the caller can parse; any other is refused. */
  provider: TsmProvider;
  /** Exactly 64 bytes (the report data, already zero-padded). */
  inblob: Uint8Array;
  /** SEV only: `privlevel` = the VMPL put in the report. Written as ASCII decimal. */
  privlevel?: number | undefined;
  /** SEV only: also read `auxblob` (the host's certificate table). */
  auxblob?: boolean;
  /** Cross-process lock file; `null` disables it (tests). Default {@link DEFAULT_TSM_LOCK_PATH}. */
  lockPath?: string | null;
  /** How long to wait for the lock and for a busy provider. Default 90 s (a TDX quote may take 30 s). */
  timeoutMs?: number;
  fs?: TsmFs;
}

export interface TsmReport {
  provider: TsmProvider;
  outblob: Buffer;
  /** Present when requested; may be empty (the host supplied no certificates). */
  auxblob?: Buffer;
  /** The entry's generation the report belongs to. */
  generation: bigint;
}

const MAX_ATTEMPTS = 3;
const BUSY_BACKOFF_MS = 1000;

/** Gets one report from configfs-tsm. Retries (with a new entry) after a generation race or EBUSY. */
export async function tsmGetReport(req: TsmRequest): Promise<TsmReport> {
  const fs = req.fs ?? nodeTsmFs;
  if (req.inblob.length !== TSM_INBLOB_LEN) {
    throw new TsmError(`configfs-tsm inblob must be exactly ${TSM_INBLOB_LEN} bytes, got ${req.inblob.length}`, 'TSM_BAD_INBLOB');
  }
  if (req.privlevel !== undefined && !(Number.isInteger(req.privlevel) && req.privlevel >= 0 && req.privlevel <= 3)) {
    throw new TsmError(`configfs-tsm privlevel must be 0..3, got ${req.privlevel}`, 'TSM_PRIVLEVEL');
  }
  if (!(await fs.exists(req.root))) {
    throw new TsmError(
      `configfs-tsm is not available: ${req.root} does not exist (needs Linux ≥ 6.7 with TSM_REPORTS and configfs mounted at /sys/kernel/config)`,
      'TSM_UNAVAILABLE',
    );
  }
  const timeoutMs = req.timeoutMs ?? 90_000;
  const deadline = Date.now() + timeoutMs;
  const lockPath = req.lockPath === undefined ? DEFAULT_TSM_LOCK_PATH : req.lockPath;
  return withLock(lockPath, deadline, async () => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await oneReport(fs, req);
      } catch (err) {
        const retriable = err instanceof TsmError && (err.code === 'TSM_GENERATION_RACE' || err.code === 'TEE_BUSY');
        if (!retriable || attempt >= MAX_ATTEMPTS || Date.now() + BUSY_BACKOFF_MS > deadline) throw err;
        if (err.code === 'TEE_BUSY') await sleep(BUSY_BACKOFF_MS);
      }
    }
  });
}

async function oneReport(fs: TsmFs, req: TsmRequest): Promise<TsmReport> {
  const dir = await createEntry(fs, req.root);
  try {
    const provider = await readProvider(fs, dir);
    if (provider !== req.provider) {
      throw new TsmError(
        `configfs-tsm provider is ${provider}, expected ${req.provider}: this guest is not the TEE the attester was configured for (check attestation.tee)`,
        'TSM_WRONG_PROVIDER',
      );
    }
    let expected = await readGeneration(fs, dir);
    if (req.privlevel !== undefined) {
      await writePrivlevel(fs, dir, req.privlevel);
      expected++;
    }
    await writeAttr(fs, dir, 'inblob', Buffer.from(req.inblob));
    expected++;
    // A store the kernel refused (EBUSY/ENXIO at close) is invisible except through the generation.
    await checkGeneration(fs, dir, expected, 'after writing inblob');
    const outblob = await readBlob(fs, dir, 'outblob', req.provider);
    const auxblob = req.auxblob ? await readBlob(fs, dir, 'auxblob', req.provider) : undefined;
    await checkGeneration(fs, dir, expected, 'after reading the report');
    if (outblob.length === 0) {
      throw new TsmError(
        req.provider === 'tdx_guest'
          ? 'configfs-tsm returned an empty TDX quote: the host quote service failed (QGS not reachable from QEMU, or a QGS/DCAP too old); see the host QGS logs'
          : `configfs-tsm returned an empty report from ${req.provider}`,
        'TDX_QUOTE_EMPTY',
      );
    }
    return auxblob === undefined
      ? { provider, outblob, generation: expected }
      : { provider, outblob, auxblob, generation: expected };
  } finally {
    // rmdir, never a recursive delete: configfs attributes are not files one can unlink.
    await fs.rmdir(dir).catch(() => undefined);
  }
}

/**
 * Detection helper: the provider registered with configfs-tsm, `undefined` when there is none or configfs-tsm
 * is absent/unusable here (not root, not mounted). Creates and removes one entry.
 */
export async function tsmProbeProvider(root: string, fs: TsmFs = nodeTsmFs): Promise<TsmProvider | undefined> {
  if (!(await fs.exists(root))) return undefined;
  let dir: string;
  try {
    dir = await fs.mkdtemp(path.join(root, 'coco-decoder-probe-'));
  } catch {
    return undefined;
  }
  try {
    const text = (await fs.readFile(path.join(dir, 'provider'))).toString('utf8');
    const name = text.endsWith('\n') ? text.slice(0, -1) : text;
    return KNOWN_PROVIDERS.includes(name) ? (name as TsmProvider) : undefined;
  } catch {
    return undefined;
  } finally {
    await fs.rmdir(dir).catch(() => undefined);
  }
}

async function createEntry(fs: TsmFs, root: string): Promise<string> {
  try {
    return await fs.mkdtemp(path.join(root, 'coco-decoder-'));
  } catch (err) {
    const code = errCode(err);
    switch (code) {
      case 'ENXIO':
        throw new TsmError(`configfs-tsm at ${root} has no provider registered (ENXIO): the TEE guest driver is not loaded`, 'TSM_NO_PROVIDER', code, err);
      case 'EACCES':
      case 'EPERM':
        throw new TsmError(`cannot create a configfs-tsm entry in ${root} (${code}): run as root`, 'TEE_PERMISSION', code, err);
      case 'ENOENT':
        throw new TsmError(`configfs-tsm is not available: ${root} does not exist`, 'TSM_UNAVAILABLE', code, err);
      default:
        throw new TsmError(`cannot create a configfs-tsm entry in ${root}: ${errText(err)}`, 'TSM_IO', code, err);
    }
  }
}

async function readProvider(fs: TsmFs, dir: string): Promise<string> {
  let text: string;
  try {
    text = (await fs.readFile(path.join(dir, 'provider'))).toString('utf8');
  } catch (err) {
    throw new TsmError(`cannot read ${path.join(dir, 'provider')}: ${errText(err)} (is ${path.dirname(dir)} really configfs-tsm?)`, 'TSM_IO', errCode(err), err);
  }
  // The kernel prints "<name>\n"; anything else is not a provider we know how to talk to.
  const name = text.endsWith('\n') ? text.slice(0, -1) : text;
  if (!KNOWN_PROVIDERS.includes(name)) {
    throw new TsmError(`configfs-tsm provider ${quoteUntrusted(text, 80)} is not one coco-decoder supports`, 'TSM_WRONG_PROVIDER');
  }
  return name;
}

async function readGeneration(fs: TsmFs, dir: string): Promise<bigint> {
  const file = path.join(dir, 'generation');
  let text: string;
  try {
    text = (await fs.readFile(file)).toString('utf8');
  } catch (err) {
    throw new TsmError(`cannot read ${file}: ${errText(err)}`, 'TSM_IO', errCode(err), err);
  }
  const m = /^(\d{1,20})\n?$/.exec(text);
  if (!m) throw new TsmError(`${file} holds ${quoteUntrusted(text, 80)}, not a generation number`, 'TSM_IO');
  return BigInt(m[1]!);
}

async function checkGeneration(fs: TsmFs, dir: string, expected: bigint, when: string): Promise<void> {
  const actual = await readGeneration(fs, dir);
  if (actual !== expected) {
    throw new TsmError(
      `configfs-tsm generation is ${actual} ${when}, expected ${expected}: another process wrote to this report entry (or the kernel rejected our write)`,
      'TSM_GENERATION_RACE',
    );
  }
}

async function writePrivlevel(fs: TsmFs, dir: string, privlevel: number): Promise<void> {
  try {
    // ASCII: the kernel parses it with kstrtouint (guest-components' raw-byte write is a known bug).
    await fs.writeFile(path.join(dir, 'privlevel'), Buffer.from(`${privlevel}\n`, 'ascii'));
  } catch (err) {
    const code = errCode(err);
    let floor = '';
    try {
      floor = (await fs.readFile(path.join(dir, 'privlevel_floor'))).toString('utf8').trim();
    } catch {
      // privlevel_floor is informative only
    }
    throw new TsmError(
      code === 'EINVAL'
        ? `configfs-tsm refused VMPL ${privlevel}${floor ? ` (this guest runs at VMPL ${floor}; the report VMPL must be ${floor}..3)` : ''}: set attestation.snp_vmpl`
        : `cannot write ${path.join(dir, 'privlevel')}: ${errText(err)}`,
      'TSM_PRIVLEVEL',
      code,
      err,
    );
  }
}

async function writeAttr(fs: TsmFs, dir: string, name: string, data: Buffer): Promise<void> {
  try {
    await fs.writeFile(path.join(dir, name), data);
  } catch (err) {
    const code = errCode(err);
    throw new TsmError(
      code === 'EFBIG' ? `configfs-tsm refused ${data.length} bytes of ${name} (EFBIG): the limit is ${TSM_INBLOB_LEN}` : `cannot write ${path.join(dir, name)}: ${errText(err)}`,
      code === 'EFBIG' ? 'TSM_BAD_INBLOB' : 'TSM_IO',
      code,
      err,
    );
  }
}

async function readBlob(fs: TsmFs, dir: string, name: 'outblob' | 'auxblob', provider: TsmProvider): Promise<Buffer> {
  try {
    // Reading outblob is what triggers the report; for TDX the kernel may wait up to 30 s for the host.
    return await fs.readFile(path.join(dir, name));
  } catch (err) {
    const code = errCode(err);
    const where = `reading ${name} from ${provider}`;
    switch (code) {
      case 'EINVAL':
        throw new TsmError(`${where} failed (EINVAL): the kernel did not accept our 64-byte inblob`, 'TSM_BAD_INBLOB', code, err);
      case 'EBUSY':
        throw new TsmError(`${where} failed (EBUSY): a previous quote request is still in flight`, 'TEE_BUSY', code, err);
      case 'EIO':
      case 'ETIMEDOUT':
      case 'EINTR':
        throw new TsmError(
          provider === 'tdx_guest'
            ? `${where} failed (${code}): the GetQuote request to the host failed or timed out; check the host quote service (QGS) and QEMU's quote-generation-socket`
            : `${where} failed (${code})`,
          provider === 'tdx_guest' ? 'TDX_QUOTE_FAILED' : 'TSM_IO',
          code,
          err,
        );
      case 'ENXIO':
        throw new TsmError(
          provider === 'sev_guest'
            ? `${where} failed (ENXIO): the SEV firmware rejected the request or the provider went away`
            : `${where} failed (ENXIO): the provider went away`,
          provider === 'sev_guest' ? 'SNP_FIRMWARE_ERROR' : 'TSM_IO',
          code,
          err,
        );
      default:
        throw new TsmError(`${where} failed: ${errText(err)}`, 'TSM_IO', code, err);
    }
  }
}

// ---- cross-process lock ----

/**
 * Serialises configfs-tsm use between coco-decoder processes: a second TDX quote while one is in flight gets
 * EBUSY. The flock of util/file-lock.ts on a file under root-only /run. If the lock cannot be taken at all (no
 * flock(1), read-only /run, not root), the request goes ahead unlocked: the generation checks keep it correct and
 * EBUSY is retried.
 */
async function withLock<T>(lockPath: string | null, deadline: number, fn: () => Promise<T>): Promise<T> {
  if (lockPath === null) return fn();
  const { acquireLock } = await import('../util/file-lock.js');
  const outcome = await acquireLock(lockPath, Math.max(deadline - Date.now(), 0), new AbortController().signal);
  if (!outcome.acquired && outcome.reason === 'timeout') {
    throw new TsmError(`timed out waiting for another coco-decoder's attestation (lock ${lockPath})`, 'TEE_BUSY');
  }
  try {
    return await fn();
  } finally {
    if (outcome.acquired) await outcome.lock.release();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function errCode(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
