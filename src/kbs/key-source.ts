/**
 * The one place a KBS resource (a KEK) comes from. Warm path: a cached token and its key → one GET. Cold path:
 * take the cross-process lock, re-check the cache (another process may just have attested), attest, store, GET.
 * A cached token the KBS refuses (401) triggers one re-attestation, once per process: a layer whose annotation
 * lists many kids must not turn into many attestations. A policy denial is final: a new token would be judged by
 * the same policy, so it is not a stale-token symptom.
 */
import type { Attester } from '../attest/attester.js';
import type { Config } from '../config/types.js';
import { DecoderError } from '../util/errors.js';
import { attest, fetchResource } from './client.js';
import type { Attestation, SessionCookie } from './client.js';
import { createDeadline } from './deadline.js';
import type { Deadline } from './deadline.js';
import { KbsError } from './errors.js';
import { KbsHttp } from './http.js';
import type { KbsRequestCounts } from './http.js';
import type { ProtocolVersion } from './protocol.js';
import type { ResourceUri } from './resource-uri.js';
import type { TeeKeyPair } from './tee-key.js';
import { TokenCache } from './token-cache.js';
import type { CacheScope, CachedToken } from './token-cache.js';
import { localExpiry, readTokenTimes } from './token-claims.js';

export interface KeySourceOptions {
  config: Config;
  env?: NodeJS.ProcessEnv;
  /** Warnings (cache problems, lock timeouts); they must not go to stderr unconditionally (see attestation-agent.ts). */
  onWarning?: (message: string) => void;
  /** Test/tool hook; defaults to `createAttester(config.attestation)` (loaded only when attestation is needed). */
  createAttester?: () => Promise<Attester>;
}

/** Per-call facts for the audit log and the benchmark. */
export interface ResourceStats {
  /** True when no attestation was done by this call (token from the cache, possibly written by another process). */
  tokenFromCache: boolean;
  /** True when this call ran /auth + /attest. */
  attested: boolean;
  /** HTTP requests sent to the KBS by this call, retries included. */
  requests: KbsRequestCounts;
  /** Time spent waiting for another process's attestation. */
  lockWaitMs: number;
  dialect: ProtocolVersion | undefined;
  elapsedMs: number;
}

export interface ResourceResult extends ResourceStats {
  /** The raw resource bytes (a KEK): the caller must zero them when done. */
  data: Buffer;
}

export interface KeySource {
  getResource(uri: ResourceUri, signal?: AbortSignal): Promise<ResourceResult>;
  close(): Promise<void>;
}

interface Credentials {
  token: string;
  keyPair: TeeKeyPair;
  dialect: ProtocolVersion;
  cookie: SessionCookie | undefined;
  expiresAtMs: number | undefined;
  /** Obtained by this call's own attestation (a 401 then is final, not a reason to re-attest). */
  fresh: boolean;
}

const MAX_CREDENTIAL_ROUNDS = 3;
/** Re-attestations after a cached token was refused, for the whole process (every getResource call together). */
const MAX_REATTESTATIONS_PER_PROCESS = 1;
const COOKIE_SAFETY_MS = 5000;

export function createKeySource(opts: KeySourceOptions): KeySource {
  const { config } = opts;
  const kbsUrl = config.kbs.url;
  if (kbsUrl === undefined) {
    throw new DecoderError(`no KBS configured: set kbs.url in ${config.source ?? '/etc/coco-decoder/config.toml (file not present)'}`);
  }
  const warn = opts.onWarning ?? (() => undefined);
  const scope: CacheScope = { kbsUrl, tee: config.attestation.tee, keyAlgorithm: config.kbs.teeKeyAlgorithm };

  let httpP: Promise<KbsHttp> | undefined;
  let cacheP: Promise<TokenCache | undefined> | undefined;
  let attesterP: Promise<Attester> | undefined;
  /** Process-local copy, so several keys in one layer (or a cache-less setup) attest once. */
  let memo: Credentials | undefined;
  let reattestations = 0;

  const http = (): Promise<KbsHttp> =>
    (httpP ??= KbsHttp.create({ baseUrl: kbsUrl, certPath: config.kbs.cert, certOnly: config.kbs.certOnly, timeoutMs: config.kbs.timeoutMs, env: opts.env ?? process.env }));
  const cache = (): Promise<TokenCache | undefined> =>
    (cacheP ??= TokenCache.open({ dir: config.cache.dir, refreshMarginSeconds: config.cache.refreshMarginSeconds, onWarning: warn }));
  const attester = (): Promise<Attester> =>
    (attesterP ??= opts.createAttester?.() ?? import('../attest/select.js').then((m) => m.createAttester(config.attestation)));

  const usable = (c: Credentials | undefined): c is Credentials =>
    c !== undefined && c.expiresAtMs !== undefined && Date.now() < c.expiresAtMs - config.cache.refreshMarginSeconds * 1000;

  async function fromCache(tc: TokenCache | undefined, rejected: Set<string>): Promise<{ creds?: Credentials; hint?: ProtocolVersion }> {
    if (usable(memo) && !rejected.has(memo.token)) return { creds: { ...memo, fresh: false } };
    if (!tc) return { hint: memo?.dialect };
    const found = await tc.lookup(scope);
    if (found.state === 'fresh' && !rejected.has(found.entry.token)) return { creds: { ...found.entry, fresh: false } };
    return { hint: found.state === 'absent' ? memo?.dialect : found.state === 'stale' ? found.dialect : found.entry.dialect };
  }

  return {
    async getResource(uri: ResourceUri, signal?: AbortSignal): Promise<ResourceResult> {
      const started = Date.now();
      let deadline = createDeadline(config.kbs.totalTimeoutMs, kbsUrl, signal);
      const h = await http();
      const before = { ...h.counts };
      const tc = await cache();
      const rejected = new Set<string>();
      let attested = false;
      let lockWaitMs = 0;
      /** Dialect of a token seen in this call: still the right one to start with after that token is refused. */
      let knownDialect: ProtocolVersion | undefined;

      for (let round = 1; ; round++) {
        let { creds } = await fromCache(tc, rejected);
        if (!creds) {
          if (attested) throw new KbsError('KBS_TOKEN_REJECTED', `the KBS ${kbsUrl} keeps refusing fresh attestation tokens`);
          // The wait is bounded by cache.lock_timeout_ms and the layer's own signal, never by the KBS budget: a slow
          // peer's attestation must not leave us too little time for our own.
          const lockSignal = signal ?? new AbortController().signal;
          // Loaded on the cold path only: the lock module brings node:child_process (for flock(1)).
          const { acquireLock, lockPathFor } = await import('../util/file-lock.js');
          const lock = tc
            ? await acquireLock(lockPathFor(tc.fileFor(scope)), config.cache.lockTimeoutMs, lockSignal, {
                recheck: async () => (await fromCache(tc, rejected)).creds !== undefined,
              })
            : undefined;
          if (lock) {
            lockWaitMs += lock.waitedMs;
            if (lock.waitedMs > 0) deadline = createDeadline(config.kbs.totalTimeoutMs, kbsUrl, signal);
          }
          if (lock && !lock.acquired) {
            if (lock.reason === 'timeout') {
              warn(`waited ${config.cache.lockTimeoutMs} ms (cache.lock_timeout_ms) for another attestation; attesting without the lock`);
            } else if (lock.reason === 'unavailable') {
              warn(`attestation lock unavailable (${lock.detail ?? 'unknown'}); attesting without it`);
            }
          }
          try {
            if (deadline.signal.aborted) throw deadline.error('waiting for another attestation');
            // Another process may have attested while we waited for the lock.
            const again = await fromCache(tc, rejected);
            creds = again.creds;
            if (!creds) {
              creds = await attestOnce(h, again.hint ?? knownDialect, deadline);
              attested = true;
              if (tc && creds.expiresAtMs !== undefined) await tc.store(scope, toCached(creds));
            }
          } finally {
            if (lock?.acquired) await lock.lock.release();
          }
        }
        memo = creds;
        knownDialect = creds.dialect;

        try {
          const data = await fetchResource(
            h,
            uri,
            { token: creds.token, keyPair: creds.keyPair, cookie: cookieIfValid(creds.cookie) },
            deadline,
          );
          const requests = diff(h.counts, before);
          return { data, tokenFromCache: !attested, attested, requests, lockWaitMs, dialect: creds.dialect, elapsedMs: Date.now() - started };
        } catch (err) {
          // A token we did not just obtain may have expired or been revoked server-side: re-attest (once).
          if (creds.fresh || !isTokenProblem(err) || round >= MAX_CREDENTIAL_ROUNDS) throw err;
          if (reattestations >= MAX_REATTESTATIONS_PER_PROCESS) throw err;
          reattestations++;
          // Not deleted from the cache: the new attestation overwrites it, and meanwhile it still carries the dialect.
          rejected.add(creds.token);
          memo = undefined;
        }
      }
    },

    async close(): Promise<void> {
      const h = await httpP?.catch(() => undefined);
      await h?.close();
    },
  };

  async function attestOnce(h: KbsHttp, hint: ProtocolVersion | undefined, deadline: Deadline): Promise<Credentials> {
    const a: Attestation = await attest({
      http: h,
      attester: await attester(),
      keyAlgorithm: config.kbs.teeKeyAlgorithm,
      protocol: config.kbs.protocol,
      dialectHint: hint,
      deadline,
      teeNames: config.kbs.teeNames,
    });
    const expiresAtMs = localExpiry(readTokenTimes(a.token), a.receivedAtMs);
    return { token: a.token, keyPair: a.keyPair, dialect: a.dialect, cookie: a.cookie, expiresAtMs, fresh: true };
  }
}

/**
 * 401s that a new token can fix. Not a missing resource (trustee's PluginInternalError 401), and not a policy
 * denial: the policy would judge a new token's claims the same way, so re-attesting only amplifies the load.
 */
function isTokenProblem(err: unknown): boolean {
  return err instanceof KbsError && (['KBS_TOKEN_REJECTED', 'KBS_UNAUTHORIZED', 'KBS_DECRYPT_FAILED'] as const).some((c) => c === err.code);
}

function cookieIfValid(cookie: SessionCookie | undefined): string | undefined {
  if (cookie === undefined) return undefined;
  if (cookie.expiresAtMs !== undefined && Date.now() > cookie.expiresAtMs - COOKIE_SAFETY_MS) return undefined;
  return cookie.value;
}

function toCached(c: Credentials): CachedToken {
  return { token: c.token, keyPair: c.keyPair, dialect: c.dialect, cookie: c.cookie, expiresAtMs: c.expiresAtMs };
}

function diff(now: KbsRequestCounts, before: KbsRequestCounts): KbsRequestCounts {
  return {
    auth: now.auth - before.auth,
    attest: now.attest - before.attest,
    resource: now.resource - before.resource,
    retries: now.retries - before.retries,
  };
}
