/**
 * HTTP transport to the KBS (node:http/https): TLS trust (Node's roots plus `kbs.cert`), proxies from the
 * environment (CONNECT tunnels), a deadline on every request, bounded retries with backoff for transient failures
 * (connection errors, 5xx, 429), size-limited bodies, and a count of the requests actually sent (for the audit log
 * and the benchmark).
 *
 * Not undici: the warm path (a cached token, one resource GET) is one request per process, and loading undici
 * measured ~80 ms in the embedded Node 24 (it pulls in llhttp's WebAssembly and a dozen Node internals) against
 * ~10 ms for node:http and node:https, which Node already ships compiled.
 *
 * node:https (and with it node:tls) is loaded only for an https KBS (https-agent.ts): requiring node:tls starts
 * Node's parse of its ~150 bundled root certificates on a second thread, ~9 ms of every process that loads it.
 */
import http from 'node:http';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { DecoderError } from '../util/errors.js';
import type { Deadline } from './deadline.js';
import { KbsError, errorCodes, isTlsFailure, timeoutError, tlsError, unreachableError } from './errors.js';
import { proxyAuthorization, proxyFor } from './proxy-env.js';

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
  'ECONNABORTED',
]);
const USER_AGENT = 'coco-decoder-kbs-client';

/**
 * Starts loading the https transport for an https KBS without waiting: requiring node:tls sets Node's parse of its
 * root store going on another thread, which then runs while the caller prepares the layer instead of while the
 * first request waits for it in `createSecureContext`. A plain-http URL loads nothing.
 */
export function preloadTransport(baseUrl: string): void {
  if (baseUrl.startsWith('https:')) void import('./https-agent.js').catch(() => undefined);
}

export class KbsHttp {
  readonly counts: KbsRequestCounts = { auth: 0, attest: 0, resource: 0, retries: 0 };
  private constructor(
    private readonly opts: KbsHttpOptions,
    private readonly agent: http.Agent,
    /** `http.request` (an http KBS, directly or through an HTTP proxy), or `https.request` (an https KBS). */
    private readonly request: typeof http.request,
    /** A plain-http KBS behind an HTTP proxy: requests go to the proxy with the absolute URL. */
    private readonly httpProxy: URL | undefined,
    private readonly retry: RetryPolicy,
  ) {}

  static async create(opts: KbsHttpOptions): Promise<KbsHttp> {
    const base = new URL(opts.baseUrl);
    const proxyUri = proxyFor(base, opts.env);
    const proxy = proxyUri === undefined ? undefined : new URL(proxyUri);
    const agentOpts = { keepAlive: true, timeout: opts.timeoutMs };
    const retry = opts.retry ?? DEFAULT_RETRY;
    if (base.protocol !== 'https:') return new KbsHttp(opts, new http.Agent(agentOpts), http.request, proxy, retry);
    const { httpsTransport } = await import('./https-agent.js');
    const { agent, request } = httpsTransport({ certPath: opts.certPath, certOnly: opts.certOnly === true, proxy, agentOptions: agentOpts });
    // Through a proxy the agent tunnels (CONNECT) and the request itself is an ordinary https one.
    return new KbsHttp(opts, agent, request, undefined, retry);
  }

  get baseUrl(): string {
    return this.opts.baseUrl;
  }

  async close(): Promise<void> {
    this.agent.destroy();
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
        const res = await this.#request(url, req.method, headers, body, signal);
        const status = res.statusCode ?? 0;
        const transient = status >= 500 || status === 429;
        if (!transient || attempt >= this.retry.attempts) {
          const bytes = await readLimited(res, req.maxBytes, req.what);
          return { status, headers: res.headers, body: bytes };
        }
        res.resume();
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
        await sleep(delay + Math.floor(Math.random() * (delay / 4)), deadline.signal);
      } catch {
        throw deadline.error(req.what);
      }
    }
  }

  /** One request; resolves with the response head (the body is still to be read), rejects on transport errors. */
  #request(url: string, method: string, headers: Record<string, string>, body: string | undefined, signal: AbortSignal): Promise<IncomingMessage> {
    const target = new URL(url);
    const viaProxy = this.httpProxy;
    const options: http.RequestOptions = viaProxy
      ? { host: viaProxy.hostname, port: viaProxy.port || 80, path: target.href, headers: { ...headers, host: target.host, ...proxyAuthorization(viaProxy) } }
      : { host: target.hostname, port: target.port || (target.protocol === 'https:' ? 443 : 80), path: `${target.pathname}${target.search}`, headers };
    return new Promise((resolve, reject) => {
      const r = this.request({ ...options, method, agent: this.agent, signal, ...(body === undefined ? {} : { headers: { ...options.headers, 'content-length': String(Buffer.byteLength(body)) } }) });
      r.once('response', resolve);
      r.once('error', reject);
      r.end(body);
    });
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

async function readLimited(body: IncomingMessage, maxBytes: number, what: string): Promise<Buffer> {
  const declared = Number(body.headers['content-length']);
  const tooLarge = (): KbsError => new KbsError('KBS_HTTP_STATUS', `the KBS answer to ${what} is larger than ${maxBytes} bytes; refusing it`);
  if (Number.isFinite(declared) && declared > maxBytes) {
    body.on('error', () => undefined);
    body.destroy();
    throw tooLarge();
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > maxBytes) {
      body.on('error', () => undefined);
      body.destroy();
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, total);
}

/** Waits `ms`, or rejects once `signal` aborts (node:timers/promises would cost a module load on the warm path). */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}


