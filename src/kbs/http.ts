/**
 * HTTP transport to the KBS (node:http/https): TLS trust (Node's roots plus `kbs.cert`), proxies from the
 * environment (CONNECT tunnels), a deadline on every request, bounded retries with backoff for transient failures
 * (connection errors, 5xx, 429), size-limited bodies, and a count of the requests actually sent (for the audit log
 * and the benchmark).
 *
 * Not undici: the warm path (a cached token, one resource GET) is one request per process, and loading undici
 * measured ~80 ms in the embedded Node 24 (it pulls in llhttp's WebAssembly and a dozen Node internals) against
 * ~10 ms for node:http and node:https, which Node already ships compiled.
 */
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect as tlsConnect, createSecureContext, rootCertificates } from 'node:tls';
import type { ConnectionOptions, SecureContext } from 'node:tls';
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
  'ECONNABORTED',
]);
const USER_AGENT = 'coco-decoder-kbs-client';

export class KbsHttp {
  readonly counts: KbsRequestCounts = { auth: 0, attest: 0, resource: 0, retries: 0 };
  private constructor(
    private readonly opts: KbsHttpOptions,
    private readonly agent: http.Agent,
    /** A plain-http KBS behind an HTTP proxy: requests go to the proxy with the absolute URL. */
    private readonly httpProxy: URL | undefined,
    private readonly retry: RetryPolicy,
  ) {}

  static async create(opts: KbsHttpOptions): Promise<KbsHttp> {
    const base = new URL(opts.baseUrl);
    const secure = base.protocol === 'https:';
    const secureContext = secure ? await trustFor(opts.certPath, opts.certOnly === true) : undefined;
    const proxyUri = proxyFor(base, opts.env);
    const proxy = proxyUri === undefined ? undefined : new URL(proxyUri);
    const agentOpts = { keepAlive: true, timeout: opts.timeoutMs, ...(secureContext ? { secureContext } : {}) };
    const agent = secure ? (proxy ? new TunnelAgent(proxy, opts.timeoutMs, agentOpts) : new https.Agent(agentOpts)) : new http.Agent(agentOpts);
    return new KbsHttp(opts, agent, secure ? undefined : proxy, opts.retry ?? DEFAULT_RETRY);
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
        await sleep(delay + Math.floor(Math.random() * (delay / 4)), undefined, { signal: deadline.signal });
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
    const send = target.protocol === 'https:' && !viaProxy ? https.request : http.request;
    return new Promise((resolve, reject) => {
      const r = send({ ...options, method, agent: this.agent, signal, ...(body === undefined ? {} : { headers: { ...options.headers, 'content-length': String(Buffer.byteLength(body)) } }) });
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

/** `Proxy-Authorization` for credentials in the proxy URL (`http://user:pass@proxy:3128`). */
function proxyAuthorization(proxy: URL): Record<string, string> {
  if (proxy.username === '') return {};
  const user = decodeURIComponent(proxy.username);
  const pass = decodeURIComponent(proxy.password);
  return { 'proxy-authorization': `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}` };
}

/**
 * An https.Agent whose connections are TLS over a CONNECT tunnel through an HTTP(S) proxy (what HTTPS_PROXY
 * means): the proxy sees only the KBS host and port, TLS (and kbs.cert's verification) is end to end.
 */
class TunnelAgent extends https.Agent {
  constructor(
    private readonly proxy: URL,
    private readonly timeoutMs: number,
    options: https.AgentOptions,
  ) {
    super(options);
  }

  override createConnection(options: ConnectionOptions & { host?: string; port?: number }, callback: (err: Error | null, socket?: Duplex) => void): undefined {
    const authority = `${options.host ?? 'localhost'}:${options.port ?? 443}`;
    const send = this.proxy.protocol === 'https:' ? https.request : http.request;
    const req = send({
      host: this.proxy.hostname,
      port: this.proxy.port || (this.proxy.protocol === 'https:' ? 443 : 80),
      method: 'CONNECT',
      path: authority,
      headers: { host: authority, ...proxyAuthorization(this.proxy) },
      agent: false,
      timeout: this.timeoutMs,
    });
    let done = false;
    const finish = (err: Error | null, socket?: Duplex): void => {
      if (done) return;
      done = true;
      callback(err, socket);
    };
    req.once('connect', (res, socket) => {
      if (res.statusCode !== 200) {
        socket.destroy();
        const err = Object.assign(new Error(`the proxy ${this.proxy.host} refused to tunnel to ${authority} (HTTP ${res.statusCode})`), { code: 'ECONNREFUSED' });
        return finish(err);
      }
      finish(null, tlsConnect({ ...options, socket }));
    });
    req.once('timeout', () => req.destroy(Object.assign(new Error(`the proxy ${this.proxy.host} did not answer CONNECT`), { code: 'ETIMEDOUT' })));
    req.once('error', (err) => finish(err));
    req.end();
    return undefined;
  }
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
