/**
 * A test Key Broker Service that speaks trustee's RCAR protocol byte for byte where a client can observe it
 * (trustee itself cannot be built here). Section numbers (§) refer to /work/shared/spec/kbs-protocol.md.
 *
 * Configuration it mirrors: trustee's shipped development setup (`kbs/config/kbs-config.toml`) — built-in AS
 * with the `sample` verifier, an allow-all resource policy (faults can deny), `InsecureAllowAll` admin for
 * resource writes. Known, documented deviations:
 *   - token `exp` leeway defaults to 0 s (trustee: 60 s), see token.ts;
 *   - `RSA1_5` TEE keys get `JweError` (jose v6 cannot produce it), see resource-jwe.ts;
 *   - tees in `allowedTees` other than `sample`/`sampledevice` are verified with the sample verifier;
 *   - the admin policy endpoints (`resource-policy`, `attestation-policy`, `reference-value`) are not served.
 */
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { sha384Canonical, canonicalJson } from './canonical-json.js';
import {
  KbsError,
  attestFailed,
  authFailed,
  jweError,
  pluginInternalError,
  pluginNotFound,
  policyDeny,
  tokenNotFound,
  tokenVerifierError,
} from './errors.js';
import {
  knownTees,
  parseAttestation020,
  parseAttestation040,
  parseAuthRequest,
  parseJson,
  parseTeePubKey,
  teePubKeyJson,
  type Attestation,
  type ProtocolVersion,
} from './messages.js';
import { checkVersion } from './version-req.js';
import { SessionMap, sessionCookie, sessionIdFromCookieHeader } from './session.js';
import { TokenAuthority, teePubKeyFromClaims } from './token.js';
import { verifySampleEvidence } from './sample-verifier.js';
import { parseInitData, type ParsedInitData } from './init-data.js';
import { encryptResource } from './resource-jwe.js';

export interface TestKbsOptions {
  protocol?: '0.4.0' | '0.2.0'; // exact version accepted at /auth (trustee is exact: "=0.4.0")
  resources?: Record<string, Buffer>; // 'repo/type/tag' -> raw bytes
  tls?: { cert: string; key: string }; // PEM strings; omitted -> plain http
  host?: string;
  port?: number; // default 127.0.0.1, 0 (ephemeral)
  tokenTtlSeconds?: number; // default 300
  sessionTtlSeconds?: number; // default 300
  allowedTees?: string[]; // default ['sample']
  /** Bearer/session token `exp` leeway (trustee: 60). Default 0: expired means rejected. */
  tokenLeewaySeconds?: number;
}

export interface TestKbsCounters {
  auth: number;
  attest: number;
  attestOk: number;
  resource: number;
  resourceOk: number;
}

/**
 * Milliseconds the server spent on each kind of request, from its arrival (head parsed) to the last byte of the
 * answer handed to the socket, summed over requests: the KBS's share of a client's wall time (the bench splits
 * the attesting layer's time into ours and the KBS's). Transport (TCP, TLS handshakes) is not in it.
 */
export interface TestKbsServiceTimes {
  auth: number;
  attest: number;
  resource: number;
}

export interface TestKbsFaults {
  status503Next: number; // answer the next N requests (any /kbs/v0 endpoint) with 503 (non-JSON body), then normal
  delayMs: number; // delay every /kbs/v0 response
  denyAll: boolean; // resource policy denies everything (401 PolicyDeny)
  denyPaths: Set<string>; // deny these 'repo/type/tag'
  rejectAttestation: boolean; // /attest fails (401 AttestationError "RCAR handshake Attest failed")
  hangResource: boolean; // resource GET never answers (tests client deadlines)
}

export interface TestKbs {
  url: string;
  counters: TestKbsCounters;
  serviceMs: TestKbsServiceTimes;
  faults: TestKbsFaults;
  setResource(path: string, bytes: Buffer): void;
  /** Removes a resource (a later GET gets trustee's collapsed 401 PluginInternalError). */
  deleteResource(path: string): void;
  expireAllTokens(): void; // tokens issued so far are rejected (401 TokenVerifierError), like an expired token
  stop(): Promise<void>;
}

const KBS_PREFIX = '/kbs/v0/';
/** actix `PayloadConfig` default `payload_request_size` = 2 MiB. */
const MAX_BODY_BYTES = 2 * 1024 * 1024;
/** trustee ResourceDesc regex. */
const RESOURCE_SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9_.-]*$/;

interface Reply {
  status: number;
  headers?: Record<string, string>;
  body?: string | Buffer;
}

const errorReply = (e: KbsError): Reply => ({ status: e.status, body: e.body() });
const jsonReply = (value: unknown, headers: Record<string, string> = {}): Reply => ({
  status: 200,
  headers: { 'Content-Type': 'application/json', ...headers },
  body: JSON.stringify(value),
});

export async function startTestKbs(opts: TestKbsOptions = {}): Promise<TestKbs> {
  const protocol: ProtocolVersion = opts.protocol ?? '0.4.0';
  const tokenTtl = opts.tokenTtlSeconds ?? 300;
  const sessionTtl = opts.sessionTtlSeconds ?? 300;
  const leeway = opts.tokenLeewaySeconds ?? 0;
  const allowedTees = new Set(opts.allowedTees ?? ['sample']);
  const resources = new Map<string, Buffer>();
  for (const [path, bytes] of Object.entries(opts.resources ?? {})) resources.set(path, Buffer.from(bytes));

  const sessions = new SessionMap();
  const tokens = new TokenAuthority();
  const counters: TestKbsCounters = { auth: 0, attest: 0, attestOk: 0, resource: 0, resourceOk: 0 };
  const serviceMs: TestKbsServiceTimes = { auth: 0, attest: 0, resource: 0 };
  const faults: TestKbsFaults = {
    status503Next: 0,
    delayMs: 0,
    denyAll: false,
    denyPaths: new Set(),
    rejectAttestation: false,
    hangResource: false,
  };
  const timers = new Set<NodeJS.Timeout>();
  const sockets = new Set<Socket>();
  let stopped = false;

  const sleep = (ms: number): Promise<void> =>
    new Promise((resolve) => {
      const t = setTimeout(() => {
        timers.delete(t);
        resolve();
      }, ms);
      timers.add(t);
    });

  // ---- /kbs/v0/auth ----
  function auth(body: Buffer): Reply {
    let request;
    try {
      request = parseAuthRequest(parseJson(body), protocol);
    } catch {
      return errorReply(authFailed('deserialize Request'));
    }
    const version = checkVersion(request.version, protocol);
    if (!version.ok) return errorReply(authFailed(version.cause));
    // 32 random bytes, base64 STANDARD with padding (backend.rs make_nonce); extra-params is the string "".
    const nonce = randomBytes(32).toString('base64');
    const session = sessions.create(request.tee, nonce, sessionTtl);
    return jsonReply({ nonce, 'extra-params': '' }, { 'Set-Cookie': sessionCookie(session) });
  }

  // ---- /kbs/v0/attest ----
  async function attest(req: http.IncomingMessage, body: Buffer): Promise<Reply> {
    // Every failure collapses into the one generic detail; the reason would only be in trustee's log.
    if (faults.rejectAttestation) return errorReply(attestFailed());
    const sessionId = sessionIdFromCookieHeader(req.headers.cookie);
    if (sessionId === undefined) return errorReply(attestFailed());
    let attestation: Attestation;
    try {
      const value = parseJson(body);
      attestation = protocol === '0.4.0' ? parseAttestation040(value) : parseAttestation020(value);
    } catch {
      return errorReply(attestFailed());
    }
    const session = sessions.get(sessionId);
    if (!session) return errorReply(attestFailed());
    if (session.state === 'attested') {
      // An attested session gets its stored token back without any re-verification.
      counters.attestOk++;
      return jsonReply({ token: session.token }, { 'Set-Cookie': sessionCookie(session) });
    }
    if (attestation.nonce !== null && attestation.nonce !== session.nonce) return errorReply(attestFailed());

    let token: string;
    try {
      token = await verifyAndIssue(session.tee, session.nonce, attestation);
    } catch {
      return errorReply(attestFailed());
    }
    const attested = sessions.attest(session.id, token);
    if (!attested) return errorReply(attestFailed());
    counters.attestOk++;
    return jsonReply({ token }, { 'Set-Cookie': sessionCookie(attested) });
  }

  async function verifyAndIssue(tee: string, nonce: string, attestation: Attestation): Promise<string> {
    if (!allowedTees.has(tee)) throw new Error(`no verifier for ${tee}`);
    const teePubKey = teePubKeyJson(attestation.teePubKey);
    // 0.4.0: the primary runtime data always carries "additional-evidence", even when "".
    // 0.2.0: {"tee-pubkey", "nonce"} only.
    const runtimeData: Record<string, unknown> =
      protocol === '0.4.0'
        ? { 'tee-pubkey': teePubKey, nonce, 'additional-evidence': attestation.additionalEvidence }
        : { 'tee-pubkey': teePubKey, nonce };
    const reportData =
      tee === 'se'
        ? createHash('sha512').update(canonicalJson(runtimeData)).digest()
        : sha384Canonical(runtimeData);

    let initData: ParsedInitData | null = null;
    if (attestation.initData) initData = parseInitData(attestation.initData);

    const teeClaims = verifySampleEvidence(attestation.primaryEvidence, reportData, initData?.digest ?? null);

    // Additional (device) evidence: a JSON map {tee: evidence}, each bound to H(JCS({tee-pubkey, nonce})).
    const extraSubmods: Record<string, Record<string, unknown>> = {};
    if (attestation.additionalEvidence !== '') {
      const map = JSON.parse(attestation.additionalEvidence) as unknown;
      if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new Error('additional evidence');
      const deviceReportData = sha384Canonical({ 'tee-pubkey': teePubKey, nonce });
      let gpu = 0;
      for (const [deviceTee, evidence] of Object.entries(map)) {
        if (!knownTees(protocol).includes(deviceTee) || !allowedTees.has(deviceTee)) throw new Error(`no verifier for ${deviceTee}`);
        const claims = verifySampleEvidence(evidence, deviceReportData, null);
        extraSubmods[`gpu${gpu++}`] = {
          'ear.status': 'affirming',
          'ear.veraison.annotated-evidence': { [deviceTee]: claims },
        };
      }
    }

    return tokens.issue(
      {
        tee,
        runtimeDataClaims: runtimeData,
        reportData,
        teeClaims: teeClaims as unknown as Record<string, unknown>,
        initDataDigest: initData?.digest ?? null,
        initDataClaims: initData?.claims ?? null,
        extraSubmods,
      },
      tokenTtl,
    );
  }

  // ---- /kbs/v0/resource/<repo>/<type>/<tag> ----
  /** api_server.rs `get_attestation_token`: an attested, unexpired session's token first, else `Authorization: Bearer`. */
  function credentialToken(req: http.IncomingMessage): string | undefined {
    const sessionId = sessionIdFromCookieHeader(req.headers.cookie);
    if (sessionId !== undefined) {
      const session = sessions.get(sessionId);
      if (session?.state === 'attested') return session.token;
    }
    const auth = req.headers.authorization;
    if (auth === undefined) return undefined;
    const space = auth.indexOf(' ');
    if (space < 0 || auth.slice(0, space) !== 'Bearer') return undefined;
    const token = auth.slice(space + 1).trim();
    return token === '' ? undefined : token;
  }

  async function resourceRequest(req: http.IncomingMessage, method: string, segments: string[]): Promise<Reply> {
    const token = credentialToken(req);
    if (token === undefined) return errorReply(tokenNotFound());
    let claims;
    try {
      claims = await tokens.verify(token, leeway);
    } catch {
      return errorReply(tokenVerifierError());
    }
    const path = segments.join('/');
    if (faults.denyAll || faults.denyPaths.has(path)) return errorReply(policyDeny());
    // The plugin runs only after the policy: a malformed path or a missing resource is the same collapsed 401.
    if (method !== 'GET') return errorReply(pluginInternalError());
    if (segments.length !== 3 || !segments.every((s) => RESOURCE_SEGMENT.test(s))) return errorReply(pluginInternalError());
    const resource = resources.get(path);
    if (resource === undefined) return errorReply(pluginInternalError());
    let teePubKey;
    try {
      teePubKey = parseTeePubKey(teePubKeyFromClaims(claims), protocol);
    } catch {
      return errorReply(tokenVerifierError());
    }
    let jwe;
    try {
      jwe = await encryptResource(teePubKey, resource);
    } catch {
      return errorReply(jweError());
    }
    counters.resourceOk++;
    return jsonReply(jwe);
  }

  /** Resource registration (`POST`/`DELETE`), admin = InsecureAllowAll as in the development config. */
  function resourceAdmin(method: string, segments: string[], body: Buffer): Reply {
    const path = segments.join('/');
    if (segments.length !== 3 || !segments.every((s) => RESOURCE_SEGMENT.test(s))) return errorReply(pluginInternalError());
    if (method === 'POST') resources.set(path, Buffer.from(body));
    else resources.delete(path);
    return { status: 200, headers: { 'Content-Type': 'text/xml' }, body: '' };
  }

  async function route(req: http.IncomingMessage, method: string, pathname: string, body: Buffer): Promise<Reply> {
    // api_server.rs: the first segment picks a built-in or a plugin, the rest is the plugin's path.
    const parts = pathname.slice(KBS_PREFIX.length).split('/');
    let segments: string[];
    try {
      segments = parts.map((p) => decodeURIComponent(p));
    } catch {
      segments = parts;
    }
    const plugin = segments[0] ?? '';
    const rest = segments.slice(1);
    if (plugin === 'auth' && method === 'POST') return auth(body);
    if (plugin === 'attest' && method === 'POST') return attest(req, body);
    if (plugin === 'resource') {
      if (method === 'POST' || method === 'DELETE') return resourceAdmin(method, rest, body);
      return resourceRequest(req, method, rest);
    }
    // A wrong method on a built-in name falls through to the plugin lookup too.
    return errorReply(pluginNotFound(plugin));
  }

  /** Counts the request; returns its kind for the service time, if it is one of the three counted. */
  function countRequest(method: string, pathname: string): keyof TestKbsServiceTimes | undefined {
    const plugin = pathname.slice(KBS_PREFIX.length).split('/')[0];
    const kind = plugin === 'auth' && method === 'POST' ? 'auth' : plugin === 'attest' && method === 'POST' ? 'attest' : plugin === 'resource' && method === 'GET' ? 'resource' : undefined;
    if (kind !== undefined) counters[kind]++;
    return kind;
  }

  function send(res: http.ServerResponse, reply: Reply): void {
    if (res.destroyed || res.writableEnded) return;
    const body = reply.body ?? '';
    res.writeHead(reply.status, { ...reply.headers, 'Content-Length': String(Buffer.byteLength(body)) });
    res.end(body);
  }

  function readBody(req: http.IncomingMessage): Promise<Buffer | 'too-large'> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let tooLarge = false;
      req.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_BODY_BYTES) tooLarge = true;
        else chunks.push(chunk);
      });
      req.on('end', () => resolve(tooLarge ? 'too-large' : Buffer.concat(chunks)));
      req.on('error', reject);
    });
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const pathname = new URL(req.url ?? '/', 'http://kbs.invalid').pathname;
    if (pathname === '/healthz') {
      // Never faulted, so readiness probes do not consume `status503Next`.
      await readBody(req);
      return send(res, method === 'GET' ? { status: 200 } : { status: 404 });
    }
    if (!pathname.startsWith(KBS_PREFIX)) {
      await readBody(req);
      return send(res, { status: 404 });
    }
    if (!['GET', 'POST', 'PUT', 'DELETE'].includes(method)) {
      await readBody(req);
      return send(res, { status: 405 });
    }
    const kind = countRequest(method, pathname);
    if (kind !== undefined) {
      const arrived = performance.now();
      res.once('finish', () => (serviceMs[kind] += performance.now() - arrived));
    }
    const body = await readBody(req);
    if (faults.delayMs > 0) await sleep(faults.delayMs);
    if (stopped) return;
    if (faults.status503Next > 0) {
      faults.status503Next--;
      return send(res, { status: 503, headers: { 'Content-Type': 'text/plain' }, body: 'Service Unavailable' });
    }
    if (body === 'too-large') {
      // actix answers an oversized payload with 413 and a non-JSON body.
      return send(res, { status: 413, headers: { 'Content-Type': 'text/plain', Connection: 'close' }, body: 'A payload reached size limit.' });
    }
    if (faults.hangResource && method === 'GET' && pathname.startsWith(`${KBS_PREFIX}resource/`)) {
      return; // never answered; the socket is destroyed by the client's deadline or by stop()
    }
    send(res, await route(req, method, pathname, body));
  }

  const listener = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    handle(req, res).catch((err: unknown) => {
      // A bug in the test server, not a protocol answer: make it loud.
      send(res, { status: 500, headers: { 'Content-Type': 'text/plain' }, body: `test-kbs internal error: ${String(err)}` });
    });
  };

  const server = opts.tls
    ? https.createServer({ cert: opts.tls.cert, key: opts.tls.key }, listener)
    : http.createServer(listener);
  // Raw TCP sockets (for https too, including ones that never finish a handshake), so stop() can end them all.
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const urlHost = host.includes(':') ? `[${host}]` : host;
  const url = `${opts.tls ? 'https' : 'http'}://${urlHost}:${port}`;

  return {
    serviceMs,
    url,
    counters,
    faults,
    setResource(path: string, bytes: Buffer): void {
      resources.set(path, Buffer.from(bytes));
    },
    deleteResource(path: string): void {
      resources.delete(path);
    },
    expireAllTokens(): void {
      tokens.expireAll();
    },
    stop(): Promise<void> {
      stopped = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        for (const s of sockets) s.destroy();
      });
    },
  };
}
