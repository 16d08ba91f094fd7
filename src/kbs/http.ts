/**
 * HTTP transport to the KBS (undici): TLS trust (Node's roots plus `kbs.cert`), proxies from the environment, a
 * deadline on every request, bounded retries with backoff for transient failures (connection errors, 5xx, 429),
 * size-limited bodies, and a count of the requests actually sent (for the audit log and the benchmark).
 */
// Before undici: see wasm-tier.ts.
import './wasm-tier.js';
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { IncomingHttpHeaders } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { createSecureContext, rootCertificates } from 'node:tls';
import type { SecureContext } from 'node:tls';
import { Agent, ProxyAgent, request } from 'undici';
import type { Dispatcher } from 'undici';
import { DecoderError } from '../util/errors.js';
import type { Deadline } from './deadline.js';
import { KbsError, errorCodes, isTlsFailure, timeoutError, tlsError, unreachableError } from './errors.js';
import { proxyFor } from './proxy-env.js';

export interface KbsHttpOptions {
  /** Normalised base URL (no trailing slash), e.g. `https://kbs.example:8080`. */
  baseUrl: string;
  /** PEM CA file trusted in addition to Node's root store (`kbs.cert`). */
  certPath: string | undefined;
  /** Trust only `certPath`'s CAs, not Node's roots or NODE_EXTRA_CA_CERTS (`kbs.cert_only`). */
  certOnly?: boolean;
  /** Deadline of each request (`kbs.timeout_ms`). */
  timeoutMs: number;
  env: NodeJS.ProcessEnv;
  /** Retry schedule; defaults to 4 attempts with 200 ms doubling backoff (capped at 2 s). */
  retry?: RetryPolicy;
}

export interface RetryPolicy {
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export interface KbsRequest {
  method: 'GET' | 'POST';
  /** Path below the base URL, starting with `/kbs/v0/`. */
  path: string;
  json?: unknown;
  headers?: Record<string, string>;
  /** Bodies larger than this are refused (no unbounded buffering of a hostile answer). */
  maxBytes: number;
  /** For messages, e.g. `POST /kbs/v0/auth`. */
  what: string;
}

export interface KbsResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** Requests actually put on the wire, by endpoint (retries included). */
export interface KbsRequestCounts {
  auth: number;
  attest: number;
  resource: number;
  /** Transient failures that were retried. */
  retries: number;
}

const DEFAULT_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 200, maxDelayMs: 2000 };
const RETRYABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'ENOTFOUND',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
]);
const USER_AGENT = 'coco-decoder-kbs-client';

export class KbsHttp {
  readonly counts: KbsRequestCounts = { auth: 0, attest: 0, resource: 0, retries: 0 };
  private constructor(
    private readonly opts: KbsHttpOptions,
    private readonly dispatcher: Dispatcher,
    private readonly retry: RetryPolicy,
  ) {}

  static async create(opts: KbsHttpOptions): Promise<KbsHttp> {
    const base = new URL(opts.baseUrl);
    const secureContext = base.protocol === 'https:' ? await trustFor(opts.certPath, opts.certOnly === true) : undefined;
    const tlsOpts = secureContext ? { secureContext } : {};
    const proxy = proxyFor(base, opts.env);
    const dispatcher: Dispatcher = proxy
      ? new ProxyAgent({ uri: proxy, requestTls: tlsOpts, connect: { timeout: opts.timeoutMs } })
      : new Agent({ connect: { ...tlsOpts, timeout: opts.timeoutMs }, keepAliveTimeout: 4000 });
    return new KbsHttp(opts, dispatcher, opts.retry ?? DEFAULT_RETRY);
  }

  get baseUrl(): string {
    return this.opts.baseUrl;
  }

  async close(): Promise<void> {
    await this.dispatcher.close().catch(() => undefined);
  }

  /**
   * Sends one request, retrying transient failures within `deadline`. Returns any HTTP status the retries did
   * not absorb; throws a KbsError for transport failures (unreachable, TLS, per-request timeout, deadline).
   */
  async send(req: KbsRequest, deadline: Deadline): Promise<KbsResponse> {
    const url = `${this.opts.baseUrl}${req.path}`;
    const ctx = { kbsUrl: this.opts.baseUrl, what: req.what, certPath: this.opts.certPath };
    const body = req.json === undefined ? undefined : JSON.stringify(req.json);
    const headers: Record<string, string> = {
      'user-agent': USER_AGENT,
      accept: 'application/json',
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      ...req.headers,
    };
    for (let attempt = 1; ; attempt++) {
      if (deadline.signal.aborted) throw deadline.error(req.what);
      const perRequest = AbortSignal.timeout(this.opts.timeoutMs);
      const signal = AbortSignal.any([deadline.signal, perRequest]);
      this.count(req.path);
      try {
        const res = await request(url, {
          method: req.method,
          headers,
          body,
          signal,
          dispatcher: this.dispatcher,
          // Backstops only: our AbortSignal fires first and yields the kbs.timeout_ms message.
          headersTimeout: this.opts.timeoutMs + 1000,
          bodyTimeout: this.opts.timeoutMs + 1000,
        });
        const status = res.statusCode;
        const transient = status >= 500 || status === 429;
        if (!transient || attempt >= this.retry.attempts) {
          const bytes = await readLimited(res.body, req.maxBytes, req.what);
          return { status, headers: res.headers, body: bytes };
        }
        await res.body.dump().catch(() => undefined);
      } catch (err) {
        if (deadline.signal.aborted) throw deadline.error(req.what);
        if (perRequest.aborted) {
          throw timeoutError({ ...ctx, attempts: attempt, timeoutMs: this.opts.timeoutMs, setting: 'kbs.timeout_ms' });
        }
        if (err instanceof DecoderError) throw err;
        if (isTlsFailure(err)) throw tlsError(err, { ...ctx, attempts: attempt });
        if (!isRetryable(err) || attempt >= this.retry.attempts) {
          throw unreachableError(err, { ...ctx, attempts: attempt });
        }
      }
      this.counts.retries++;
      const delay = Math.min(this.retry.maxDelayMs, this.retry.baseDelayMs * 2 ** (attempt - 1));
      try {
        await sleep(delay + Math.floor(Math.random() * (delay / 4)), undefined, { signal: deadline.signal });
      } catch {
        throw deadline.error(req.what);
      }
    }
  }

  private count(path: string): void {
    if (path.startsWith('/kbs/v0/auth')) this.counts.auth++;
    else if (path.startsWith('/kbs/v0/attest')) this.counts.attest++;
    else if (path.startsWith('/kbs/v0/resource/')) this.counts.resource++;
  }
}

function isRetryable(err: unknown): boolean {
  return errorCodes(err).some((c) => RETRYABLE_CODES.has(c));
}

async function readLimited(body: Dispatcher.ResponseData['body'], maxBytes: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body) {
    total += chunk.length;
    if (total > maxBytes) {
      body.on('error', () => undefined);
      body.destroy();
      throw new KbsError('http-status', `the KBS answer to ${what} is larger than ${maxBytes} bytes; refusing it`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, total);
}

/**
 * Node's root store (bundled Mozilla roots, or the OpenSSL/system store under `--use-openssl-ca`), plus
 * NODE_EXTRA_CA_CERTS, plus the CA(s) in `kbs.cert`. Passing `ca:` would replace the roots, and re-parsing them all
 * costs ~150 ms per process, so the CAs are added to a default context instead: on the first addition Node copies
 * its already-parsed root store — without NODE_EXTRA_CA_CERTS, which is therefore added here as well.
 */
async function trustFor(certPath: string | undefined, certOnly: boolean): Promise<SecureContext | undefined> {
  if (certPath === undefined) return undefined;
  let pem: string;
  try {
    pem = await readFile(certPath, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new DecoderError(`cannot read the KBS CA file ${certPath} (kbs.cert): ${code}`);
  }
  const blocks = pemCertificates(pem);
  if (blocks.length === 0) throw new DecoderError(`the KBS CA file ${certPath} (kbs.cert) contains no PEM certificate`);
  for (const block of blocks) {
    try {
      new X509Certificate(block);
    } catch {
      throw new DecoderError(`the KBS CA file ${certPath} (kbs.cert) contains an unreadable certificate`);
    }
  }
  // Pinning: `ca:` replaces the root store, which is exactly what cert_only asks for (and costs nothing to parse).
  if (certOnly) return createSecureContext({ ca: blocks });
  // Node itself only warns about an unreadable NODE_EXTRA_CA_CERTS; so do we (by ignoring it).
  const extraFile = process.env['NODE_EXTRA_CA_CERTS'];
  const extra = extraFile ? pemCertificates(await readFile(extraFile, 'utf8').catch(() => '')) : [];
  const context = createSecureContext();
  const native = (context as unknown as { context?: { addCACert?: (pem: string) => void } }).context;
  if (typeof native?.addCACert === 'function') {
    for (const block of [...extra, ...blocks]) native.addCACert(block);
    return context;
  }
  return createSecureContext({ ca: [...rootCertificates, ...extra, ...blocks] });
}

function pemCertificates(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}
