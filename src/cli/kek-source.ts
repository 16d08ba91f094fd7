/**
 * Where attestation-agent KEKs come from, built at the edge and injected into the key wrapper: the KBS named in
 * the config, through the in-process attestation flow and the cross-process token cache (kbs/key-source.ts).
 * The key wrapper itself knows no config, no KBS client and no logger.
 */
import type { Config } from '../config/types.js';
import type { KeySource, ResourceStats } from '../kbs/key-source.js';
import { parseResourceUri } from '../kbs/resource-uri.js';
import type { GetKek } from '../ocicrypt/keywrap/attestation-agent.js';
import { DecoderError } from '../util/errors.js';

export interface KekSourceOptions {
  env?: NodeJS.ProcessEnv;
  /** Non-fatal problems (token cache, lock); callers route them by log level. */
  onWarning?: (message: string) => void;
  /** Per-key KBS facts (requests, attested or cached, lock wait): the benchmark, tests, debug logging. */
  onStats?: (stats: ResourceStats & { kid: string }) => void;
}

export function createKekSource(getConfig: () => Promise<Config>, opts: KekSourceOptions = {}): GetKek {
  let source: { config: Config; keySource: KeySource } | undefined;
  return async (kid, signal) => {
    const uri = parseResourceUri(kid);
    const config = await getConfig();
    if (config.kbs.url === undefined) {
      throw new DecoderError(
        `layer key ${uri.uri} must come from a KBS, but none is configured: set kbs.url in ` +
          `${config.source ?? '/etc/coco-decoder/config.toml (file not present)'}`,
      );
    }
    if (source?.config !== config) {
      // Loaded here, not at the top: a layer served by an external attestation-agent provider never needs the HTTP client.
      const { createKeySource } = await import('../kbs/key-source.js');
      source = { config, keySource: createKeySource({ config, env: opts.env ?? process.env, onWarning: opts.onWarning ?? (() => undefined) }) };
    }
    const { data, ...stats } = await source.keySource.getResource(uri, signal);
    opts.onStats?.({ ...stats, kid: uri.uri });
    return { kek: data, tokenFromCache: stats.tokenFromCache };
  };
}

/** The one-line debug summary of a KBS fetch. */
export function describeKbsStats(s: ResourceStats & { kid: string }): string {
  const r = s.requests;
  return (
    `kbs ${s.kid}: ${s.attested ? 'attested' : 'cached token'}, requests auth=${r.auth} attest=${r.attest} ` +
    `resource=${r.resource} retries=${r.retries}, lock wait ${s.lockWaitMs} ms, protocol ${s.dialect ?? '?'}, ${s.elapsedMs} ms`
  );
}
