/**
 * Text from the registry, the network or the host, made safe to show: quoted, truncated, and with no control
 * character (C0, DEL, C1, line/paragraph separators, bidirectional controls) left raw, so it cannot forge a second
 * log line, move the cursor, retitle a terminal (`ESC ] 0 ; … BEL`) or reorder what a reader sees (U+202E) in
 * `kubectl describe`, a journal or an audit log.
 */

/** C0 (but tab), DEL, C1, U+2028/U+2029, and the bidirectional controls (ALM, LRM/RLM, LRE…RLO, LRI…PDI). */
// eslint-disable-next-line no-control-regex
const CONTROL_RE = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

const escapeControl = (c: string): string => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;

/** `s` with every control character written as `\uXXXX` (tab kept): for a line that already quotes its parts. */
export function withoutControlChars(s: string): string {
  return s.replace(CONTROL_RE, escapeControl);
}

/**
 * A JSON-quoted, control-free rendering of an untrusted value, cut to `max` characters of the original (an
 * ellipsis marks the cut). Non-strings are shown by their JSON form (or type), never by calling their methods.
 */
export function quoteUntrusted(value: unknown, max = 120): string {
  let s: string;
  if (typeof value === 'string') s = value;
  else if (value === undefined) return 'undefined';
  else {
    try {
      s = JSON.stringify(value) ?? typeof value;
    } catch {
      s = typeof value;
    }
    if (typeof value !== 'object' || value === null) return withoutControlChars(cut(s, max));
  }
  // JSON.stringify escapes C0, quotes and backslashes; DEL, C1 and the separators are escaped here.
  return withoutControlChars(JSON.stringify(cut(s, max)));
}

function cut(s: string, max: number): string {
  if (s.length <= max) return s;
  // Never split a surrogate pair: a lone surrogate would be escaped oddly and look like garbage.
  let end = max;
  const code = s.charCodeAt(end - 1);
  if (code >= 0xd800 && code <= 0xdbff) end--;
  return `${s.slice(0, end)}…`;
}

/** The last line a failing layer writes: containerd puts it into the pull error, so it is bounded too. */
export const MAX_ERROR_LINE_BYTES = 4096;

/** One line, control-free, at most `maxBytes` UTF-8 bytes (the cut marked with `…`). */
export function boundedLine(s: string, maxBytes = MAX_ERROR_LINE_BYTES): string {
  const line = withoutControlChars(s.replace(/\r?\n/g, ' '));
  if (Buffer.byteLength(line, 'utf8') <= maxBytes) return line;
  const buf = Buffer.from(line, 'utf8').subarray(0, maxBytes - 3);
  // Drop a partial UTF-8 sequence at the cut.
  let end = buf.length;
  let i = end - 1;
  while (i >= 0 && (buf[i]! & 0xc0) === 0x80) i--;
  if (i >= 0) {
    const lead = buf[i]!;
    const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
    if (end - i < need) end = i;
  }
  return `${buf.subarray(0, end).toString('utf8')}…`;
}
