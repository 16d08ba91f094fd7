/**
 * The https side of the KBS transport (http.ts), loaded only for an https KBS: node:tls starts parsing Node's
 * bundled root certificates on a second thread as soon as it is required, which a plain-http KBS should not pay.
 * Trust is Node's roots plus NODE_EXTRA_CA_CERTS plus `kbs.cert`, or only `kbs.cert` (`kbs.cert_only`); proxies
 * are CONNECT tunnels, with TLS end to end.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect, createSecureContext, rootCertificates } from 'node:tls';
import type { ConnectionOptions, SecureContext } from 'node:tls';
import { DecoderError } from '../util/errors.js';
import { proxyAuthorization } from './proxy-env.js';

export interface HttpsTransportOptions {
  certPath: string | undefined;
  certOnly: boolean;
  /** From HTTPS_PROXY/NO_PROXY for this KBS, if any. */
  proxy: URL | undefined;
  /** `timeout` is the per-request deadline; a proxy's CONNECT gets the same. */
  agentOptions: https.AgentOptions & { timeout: number };
}

/** The agent (direct, or tunnelling through the proxy) and the request function for an https KBS. */
export function httpsTransport(opts: HttpsTransportOptions): { agent: https.Agent; request: typeof https.request } {
  const secureContext = trustFor(opts.certPath, opts.certOnly);
  const agentOptions = { ...opts.agentOptions, ...(secureContext ? { secureContext } : {}) };
  const agent = opts.proxy ? new TunnelAgent(opts.proxy, agentOptions.timeout, agentOptions) : new https.Agent(agentOptions);
  return { agent, request: https.request };
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
function trustFor(certPath: string | undefined, certOnly: boolean): SecureContext | undefined {
  if (certPath === undefined) return undefined;
  let pem: string;
  try {
    pem = readFileSync(certPath, 'utf8'); // one small file; sync keeps node:fs/promises off this path
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
  const extra = extraFile ? pemCertificates(readOptional(extraFile)) : [];
  const context = createSecureContext();
  const native = (context as unknown as { context?: { addCACert?: (pem: string) => void } }).context;
  if (typeof native?.addCACert === 'function') {
    for (const block of [...extra, ...blocks]) native.addCACert(block);
    return context;
  }
  return createSecureContext({ ca: [...rootCertificates, ...extra, ...blocks] });
}

function readOptional(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

function pemCertificates(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}
