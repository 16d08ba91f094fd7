/**
 * KBS resource URIs as used in `kid`: `kbs:///<repo>/<type>/<tag>` (the norm) or `kbs://host:port/<repo>/<type>/<tag>`.
 * As in CoCo's CDH, the host part is ignored: the configured KBS is always used, so an image cannot point the
 * decoder at a KBS of its choosing. Segments are validated exactly as trustee's resource plugin does (three of
 * them, each `[A-Za-z0-9_-][A-Za-z0-9_.-]*`), so a bad kid fails here with a clear message instead of as an
 * opaque 401 after a full attestation. Parsed by hand rather than with WHATWG URL, which would normalise `..`.
 */
import { DecoderError } from '../util/errors.js';
import { quoteUntrusted } from '../util/quote.js';

export interface ResourceUri {
  /** The authority written in the kid (informational only; never used to connect). */
  readonly host: string;
  readonly repository: string;
  readonly type: string;
  readonly tag: string;
  /** `?…` forwarded verbatim to the KBS, or '' */
  readonly query: string;
  /** `repo/type/tag`, the path below `/kbs/v0/resource/`. */
  readonly path: string;
  /** Normalised `kbs:///repo/type/tag[?query]`, for messages and the audit log. */
  readonly uri: string;
}

const URI_RE = /^kbs(?:\+resource)?:\/\/([^/?#]*)(\/[^?#]*)(\?[^#]*)?$/;
const SEGMENT_RE = /^[A-Za-z0-9_-][A-Za-z0-9_.-]*$/;
const AUTHORITY_RE = /^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;
const QUERY_RE = /^\?[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*$/;
const MAX_URI_LENGTH = 2048;

export function parseResourceUri(kid: string): ResourceUri {
  const shown = quoteUntrusted(kid, 200);
  const bad = (why: string): DecoderError => new DecoderError(`invalid KBS resource URI ${shown} in kid: ${why}`);
  if (kid.length > MAX_URI_LENGTH) throw bad(`longer than ${MAX_URI_LENGTH} characters`);
  if (/^kbs\+[A-Za-z0-9-]+:/.test(kid) && !kid.startsWith('kbs+resource:')) {
    throw bad('only the KBS resource plugin (kbs:///repo/type/tag) is supported');
  }
  const m = URI_RE.exec(kid);
  if (!m) throw bad('expected kbs:///<repository>/<type>/<tag>');
  const [, host = '', rawPath = '', query = ''] = m;
  if (host !== '' && !AUTHORITY_RE.test(host)) throw bad(`malformed host ${quoteUntrusted(host, 64)}`);
  if (query !== '' && !QUERY_RE.test(query)) throw bad('malformed query');
  const segments = rawPath.slice(1).split('/');
  if (segments.length !== 3) {
    throw bad(`expected exactly 3 path segments <repository>/<type>/<tag>, got ${segments.length}`);
  }
  for (const seg of segments) {
    if (!SEGMENT_RE.test(seg)) {
      throw bad(`segment ${quoteUntrusted(seg, 64)} must match [A-Za-z0-9_-][A-Za-z0-9_.-]* (trustee's rule)`);
    }
  }
  const [repository, type, tag] = segments as [string, string, string];
  const path = `${repository}/${type}/${tag}`;
  return { host, repository, type, tag, query, path, uri: `kbs:///${path}${query}` };
}
