/**
 * The audit log: one line per layer (decrypted or failed) appended to `log.file` and/or sent to syslog/journald,
 * as `key=value` text or JSON (`log.format`). It records which key unlocked which layer, never a key.
 *
 * File: opened with O_APPEND and written with one `write` per line, so the lines of concurrent layer processes
 * never interleave (Linux serialises appends to a regular file); created 0640; O_NOFOLLOW, so a symlink planted
 * at the path cannot redirect root's appends into another file.
 *
 * Syslog: `/dev/log` is a unix *datagram* socket under journald and rsyslog, and Node can only open unix stream
 * sockets. Rather than ship native socket code, the line is handed to `logger(1)` from util-linux (present on every
 * systemd distribution: Essential `bsdutils` on Debian, `util-linux` on RHEL/SUSE), which speaks both socket types.
 * The extra process is spawned only when `log.syslog = true`, once per layer, with a deadline.
 *
 * Auditing must never fail a decryption: every problem becomes a warning, and the whole write is bounded in time.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { describeError, oneLine } from './errors.js';
import { formatFields, redact } from './log.js';
import { withoutControlChars } from './quote.js';
import { DecoderError } from './errors.js';

/** Where audit lines go (the `[log]` table's file, syslog and format keys). */
export interface AuditConfig {
  file: string | undefined;
  syslog: boolean;
  format: 'text' | 'json';
}

export interface AuditRecord {
  /** ISO 8601, UTC. */
  time: string;
  /** The layer digest from the descriptor (untrusted input: quoted/escaped when printed). */
  layer: string;
  mediaType?: string;
  /** Where the layer descriptor came from: containerd's fd-3 `payload`, or its `content-store` (lookup). */
  descriptor?: 'payload' | 'content-store';
  /** Key-wrap scheme that unwrapped the layer key: `jwe`, `pkcs7`, `provider.attestation-agent`, ... */
  scheme?: string;
  /** KBS resource URI of the key-encryption key, for attestation-agent layers. */
  kid?: string;
  /** Decrypted bytes written to stdout. */
  bytes?: number;
  durationMs: number;
  /** For KBS keys: true when no attestation was needed (token from the cross-process cache). */
  tokenFromCache?: boolean;
  result: 'ok' | 'error';
  /** The one-line error, for result=error. */
  error?: string;
}

export interface AuditOptions {
  config: AuditConfig;
  /** Where problems go (the stderr logger's warn): auditing never throws. */
  warn: (message: string) => void;
  /** Deadline for the whole audit write (file and syslog). Default 3000 ms. */
  timeoutMs?: number;
  /** Test seams. */
  syslogSocket?: string;
  loggerCommand?: string;
}

const MAX_ERROR = 1000;
const MAX_FIELD = 512;
const DEFAULT_TIMEOUT_MS = 3000;
const SYSLOG_TAG = 'coco-decoder';
/** logger(1) truncates messages at 1 KiB by default; our lines are bounded well below this. */
const SYSLOG_MAX_BYTES = 8192;

export function auditEnabled(config: Pick<AuditConfig, 'file' | 'syslog'>): boolean {
  return config.file !== undefined || config.syslog;
}

/** The record as one line (no newline): fixed field order, undefined fields left out. */
export function formatAuditRecord(record: AuditRecord, format: 'text' | 'json'): string {
  const fields = {
    time: record.time,
    layer: bounded(record.layer, MAX_FIELD),
    mediaType: optionalBounded(record.mediaType),
    descriptor: record.descriptor,
    scheme: optionalBounded(record.scheme),
    kid: optionalBounded(record.kid),
    bytes: record.bytes,
    durationMs: Math.round(record.durationMs),
    tokenFromCache: record.tokenFromCache,
    result: record.result,
    error: record.error === undefined ? undefined : bounded(redact('error', oneLine(record.error)), MAX_ERROR),
  };
  if (format === 'text') return withoutControlChars(formatFields(fields));
  const json: Record<string, string | number | boolean> = {};
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) json[k] = v;
  // Escapes (\uXXXX) only ever land inside JSON strings: the line stays valid JSON.
  return withoutControlChars(JSON.stringify(json));
}

/** Appends/sends the record wherever `log.*` says. Never throws; problems go to `warn`. */
export async function writeAudit(record: AuditRecord, opts: AuditOptions): Promise<void> {
  const { config } = opts;
  if (!auditEnabled(config)) return;
  const line = formatAuditRecord(record, config.format);
  const jobs: Array<Promise<void>> = [];
  if (config.file !== undefined) {
    const file = config.file;
    jobs.push(appendLine(file, line).catch((err) => opts.warn(`audit log ${file}: cannot append (${describeError(err)}); the layer result is unaffected`)));
  }
  if (config.syslog) {
    jobs.push(
      sendToSyslog(line, record.result, opts).catch((err) =>
        opts.warn(`audit log to syslog failed (${describeError(err)}); the layer result is unaffected`),
      ),
    );
  }
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
    timer.unref();
  });
  const outcome = await Promise.race([Promise.all(jobs).then(() => 'done' as const), timeout]);
  clearTimeout(timer);
  if (outcome === 'timeout') opts.warn(`audit log: writing took longer than ${timeoutMs} ms; gave up`);
}

/** One O_APPEND write of the whole line: atomic with respect to other appenders of the same regular file. */
async function appendLine(file: string, line: string): Promise<void> {
  const bytes = Buffer.from(`${line}\n`, 'utf8');
  const fh = await open(file, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o640);
  try {
    const { bytesWritten } = await fh.write(bytes, 0, bytes.length);
    if (bytesWritten !== bytes.length) throw new DecoderError(`short write (${bytesWritten} of ${bytes.length} bytes)`);
  } finally {
    await fh.close();
  }
}

function sendToSyslog(line: string, result: AuditRecord['result'], opts: AuditOptions): Promise<void> {
  const args = [
    `--id=${process.pid}`,
    '-t',
    SYSLOG_TAG,
    '-p',
    result === 'ok' ? 'daemon.info' : 'daemon.err',
    '--size',
    String(SYSLOG_MAX_BYTES),
    '--socket-errors=on',
    '-u',
    opts.syslogSocket ?? '/dev/log',
  ];
  // The line goes on stdin, never in argv: any local user can read /proc/<pid>/cmdline.
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(opts.loggerCommand ?? 'logger', args, { stdio: ['pipe', 'ignore', 'pipe'], timeout: timeoutMs });
    child.stdin.on('error', () => undefined); // a logger that exits early reports through 'close'
    child.stdin.end(`${line}\n`);
    const err: Buffer[] = [];
    child.stderr.on('data', (c: Buffer) => {
      if (err.length < 16) err.push(c);
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(e.code === 'ENOENT' ? new Error('logger(1) from util-linux is not installed or not in PATH') : e);
    });
    child.on('close', (code, signal) => {
      if (code === 0) return resolve();
      const text = oneLine(Buffer.concat(err).toString('utf8')).slice(0, 300);
      reject(new Error(signal ? `logger(1) killed by ${signal}` : `logger(1) exited with ${code}${text ? `: ${text}` : ''}`));
    });
  });
}

function bounded(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

function optionalBounded(text: string | undefined): string | undefined {
  return text === undefined ? undefined : bounded(text, MAX_FIELD);
}
