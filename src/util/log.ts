/**
 * The stderr logger. containerd copies a failing stream processor's whole stderr into the pull error and throws
 * it away on success, so the default level is `error`: a successful layer prints nothing, a failed one prints its
 * one error line. `--log-level` (or `log.level`) adds warnings (e.g. skipped key files), info and debug lines.
 *
 * Never logs key material: callers pass a fixed message and structured fields of primitive values (no Buffers,
 * no objects), and as a safety net fields named like secrets and values shaped like tokens or PEM keys are
 * replaced by `[redacted]`.
 */
import { oneLine } from './errors.js';
import { withoutControlChars } from './quote.js';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];

export type LogValue = string | number | boolean | undefined;
export type LogFields = Readonly<Record<string, LogValue>>;

export interface Logger {
  /** Mutable: the config file's `log.level` applies once it is read, unless `--log-level` was given. */
  level: LogLevel;
  enabled(level: LogLevel): boolean;
  error(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  debug(message: string, fields?: LogFields): void;
}

export function isLogLevel(value: string): value is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(value);
}

/** `sink` receives whole lines (newline included); default: one `write` to stderr per line. */
export function createLogger(level: LogLevel, sink: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const logger: Logger = {
    level,
    enabled: (at) => LOG_LEVELS.indexOf(at) <= LOG_LEVELS.indexOf(logger.level),
    error: (m, f) => emit('error', m, f),
    warn: (m, f) => emit('warn', m, f),
    info: (m, f) => emit('info', m, f),
    debug: (m, f) => emit('debug', m, f),
  };
  function emit(at: LogLevel, message: string, fields: LogFields | undefined): void {
    if (!logger.enabled(at)) return;
    const rest = fields ? formatFields(fields) : '';
    // Messages may embed registry-supplied text: no control character reaches the terminal or journal raw.
    sink(`coco-decoder: ${at}: ${withoutControlChars(bounded(oneLine(message), MAX_MESSAGE))}${rest ? ` ${rest}` : ''}\n`);
  }
  return logger;
}

const MAX_MESSAGE = 2000;
const MAX_VALUE = 1024;
/** Field names that may only ever carry secrets. */
const SECRET_NAMES = /^(?:key|keys|kek|symkey|privopts|token|secret|password|passphrase|cookie|private[-_]?key)$/i;
/** A JWT/JWS/JWE compact serialization, or PEM private key material. */
const SECRET_SHAPES = [/eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*/, /-----BEGIN [A-Z ]*PRIVATE KEY-----/];
/** Values printed without quotes; anything else is JSON-quoted so it can never break the line (log injection). */
const BARE = /^[A-Za-z0-9._:/+@%-]+$/;

/** `name=value` pairs (logfmt style), undefined fields omitted, unsafe values quoted, secrets redacted. */
export function formatFields(fields: LogFields): string {
  const parts: string[] = [];
  for (const [name, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    if (!/^[A-Za-z][A-Za-z0-9_.-]*$/.test(name)) continue;
    parts.push(`${name}=${formatValue(name, value)}`);
  }
  return parts.join(' ');
}

function formatValue(name: string, value: string | number | boolean): string {
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : JSON.stringify(String(value));
  if (typeof value === 'boolean') return String(value);
  if (typeof value !== 'string') return '"[omitted]"'; // a caller bypassing the types (e.g. a Buffer): never printed
  const safe = redact(name, value);
  const text = bounded(safe, MAX_VALUE);
  // JSON.stringify escapes C0; DEL, C1 and the Unicode line separators are escaped on top.
  return BARE.test(text) ? text : withoutControlChars(JSON.stringify(text));
}

/** The value, or `[redacted]` when its name or shape says it is a secret. */
export function redact(name: string, value: string): string {
  if (SECRET_NAMES.test(name)) return '[redacted]';
  return SECRET_SHAPES.some((re) => re.test(value)) ? '[redacted]' : value;
}

function bounded(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}
