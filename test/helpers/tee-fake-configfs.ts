/**
 * An in-memory configfs-tsm that behaves like the kernel's `drivers/virt/coco/guest/report.c` plus the
 * tdx_guest / sev_guest providers (–1.3), modelled on go-configfs-tsm's faketsm:
 *  - mkdir creates an entry (ENXIO without a provider); rmdir removes it;
 *  - `inblob` writes are committed at close: > 64 bytes fail at write() with EFBIG, a refused commit (EBUSY) is
 *    invisible to the writer; every committed write advances `generation`;
 *  - reading `outblob`/`auxblob` regenerates when read_generation != write_generation, EINVAL without an inblob
 *    or when the provider needs exactly 64 bytes and got fewer;
 *  - `privlevel` (sev only) is parsed as ASCII, checked against `privlevel_floor`, and advances the generation;
 *  - `auxblob`, `privlevel`, `privlevel_floor` exist only for sev_guest;
 *  - knobs: empty outblob (TDX QGS failure), read errors (EBUSY/EIO/…), a concurrent writer hook.
 */
import path from 'node:path';
import type { TsmFs } from '../../src/attest/configfs-tsm.js';

export interface FakeEntry {
  name: string;
  writeGeneration: bigint;
  readGeneration: bigint;
  inblob: Buffer;
  privlevel: number;
  outblob: Buffer | undefined;
  auxblob: Buffer | undefined;
}

export interface FakeTsmOptions {
  root: string;
  provider: 'tdx_guest' | 'sev_guest' | undefined;
  /** Produces the report for a committed inblob (and privlevel for sev). */
  generate: (inblob: Buffer, privlevel: number) => { outblob: Buffer; auxblob?: Buffer };
  privlevelFloor?: number;
}

export class FakeTsm implements TsmFs {
  readonly entries = new Map<string, FakeEntry>();
  /** Every entry ever created (to check cleanup). */
  readonly created: string[] = [];
  /** How many times a report was generated. */
  generations = 0;
  /** Next outblob/auxblob read fails with this errno code (one-shot each). */
  readErrors: string[] = [];
  /** Commit of the next inblob write is refused (EBUSY), invisibly, like the kernel's write-generation wrap. */
  refuseNextCommit = false;
  /** Called after a committed inblob write and before the outblob read: lets a test act as another process. */
  afterInblobCommit: ((entry: FakeEntry, fake: FakeTsm) => void) | undefined;
  beforeOutblobRead: ((entry: FakeEntry, fake: FakeTsm) => void) | undefined;
  private seq = 0;

  constructor(readonly opts: FakeTsmOptions) {}

  async exists(p: string): Promise<boolean> {
    return p === this.opts.root || this.entries.has(p);
  }

  async mkdtemp(prefix: string): Promise<string> {
    if (path.dirname(prefix) !== this.opts.root) throw errno('ENOENT', 'mkdir', prefix);
    if (!this.opts.provider) throw errno('ENXIO', 'mkdir', prefix);
    const name = `${prefix}${(this.seq++).toString(36).padStart(6, 'x')}`;
    this.entries.set(name, {
      name,
      writeGeneration: 0n,
      readGeneration: 0n,
      inblob: Buffer.alloc(0),
      privlevel: 0,
      outblob: undefined,
      auxblob: undefined,
    });
    this.created.push(name);
    return name;
  }

  async rmdir(dir: string): Promise<void> {
    if (!this.entries.delete(dir)) throw errno('ENOENT', 'rmdir', dir);
  }

  async readFile(file: string): Promise<Buffer> {
    const { entry, attr } = this.lookup(file);
    const sev = this.opts.provider === 'sev_guest';
    switch (attr) {
      case 'provider':
        return Buffer.from(`${this.opts.provider}\n`);
      case 'generation':
        return Buffer.from(`${entry.writeGeneration}\n`);
      case 'privlevel_floor':
        if (!sev) break;
        return Buffer.from(`${this.opts.privlevelFloor ?? 0}\n`);
      case 'outblob':
      case 'auxblob': {
        if (attr === 'auxblob' && !sev) break;
        if (attr === 'outblob') this.beforeOutblobRead?.(entry, this);
        const err = this.readErrors.shift();
        if (err) throw errno(err, 'read', file);
        if (entry.inblob.length === 0) throw errno('EINVAL', 'read', file);
        if (entry.readGeneration !== entry.writeGeneration || entry.outblob === undefined) {
          // both providers require exactly TDX_REPORTDATA_LEN / SNP_REPORT_USER_DATA_SIZE bytes
          if (entry.inblob.length !== 64) throw errno('EINVAL', 'read', file);
          const r = this.opts.generate(Buffer.from(entry.inblob), entry.privlevel);
          this.generations++;
          entry.outblob = r.outblob;
          entry.auxblob = r.auxblob ?? Buffer.alloc(0);
          entry.readGeneration = entry.writeGeneration;
        }
        return Buffer.from(attr === 'outblob' ? entry.outblob : entry.auxblob!);
      }
      default:
        break;
    }
    // write-only attributes are mode 0200 (root bypasses that, but reading them is meaningless); others absent
    throw errno(attr === 'inblob' || attr === 'privlevel' ? 'EACCES' : 'ENOENT', 'open', file);
  }

  async writeFile(file: string, data: Buffer): Promise<void> {
    const { entry, attr } = this.lookup(file);
    const sev = this.opts.provider === 'sev_guest';
    if (attr === 'inblob') {
      if (data.length > 64) throw errno('EFBIG', 'write', file);
      // configfs calls ->write() at release(); its result is ignored
      if (this.refuseNextCommit) {
        this.refuseNextCommit = false;
        return;
      }
      this.commitInblob(entry, data);
      this.afterInblobCommit?.(entry, this);
      return;
    }
    if (attr === 'privlevel' && sev) {
      const text = data.toString('latin1');
      const m = /^\s*(\d+)\s*$/.exec(text);
      if (!m) throw errno('EINVAL', 'write', file);
      const v = Number(m[1]);
      if (v > 3 || v < (this.opts.privlevelFloor ?? 0)) throw errno('EINVAL', 'write', file);
      entry.privlevel = v;
      entry.writeGeneration++;
      return;
    }
    throw errno('ENOENT', 'open', file);
  }

  /** What another process writing our entry's inblob does. */
  commitInblob(entry: FakeEntry, data: Buffer): void {
    entry.inblob = Buffer.from(data);
    entry.writeGeneration++;
  }

  private lookup(file: string): { entry: FakeEntry; attr: string } {
    const entry = this.entries.get(path.dirname(file));
    if (!entry) throw errno('ENOENT', 'open', file);
    return { entry, attr: path.basename(file) };
  }
}

export function errno(code: string, syscall: string, p: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: ${syscall} '${p}'`) as NodeJS.ErrnoException;
  e.code = code;
  e.syscall = syscall;
  e.path = p;
  return e;
}
