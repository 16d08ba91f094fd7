/**
 * Init-data handling of trustee's built-in CoCo AS (trustee kbs/src/attestation/coco/builtin.rs
 * and attestation-service/src/lib.rs `parse_init_data`): only `format: "toml"` is accepted; the TOML must be
 * `{version: String, algorithm: sha256|sha384|sha512|sm3, data: {String: String}}`; the digest is over the
 * exact body bytes. The sample verifier checks nothing against it and only records it in the claims.
 */
import { createHash } from 'node:crypto';
import { parse as parseToml } from 'smol-toml';
import type { InitData } from './messages.js';

export interface ParsedInitData {
  digest: Buffer;
  claims: Record<string, string>;
}

const ALGORITHMS = new Set(['sha256', 'sha384', 'sha512', 'sm3']);

export function parseInitData(initData: InitData): ParsedInitData {
  if (initData.format !== 'toml') throw new Error(`Unsupported initdata format: ${initData.format}`);
  const doc = parseToml(initData.body) as Record<string, unknown>;
  if (typeof doc['version'] !== 'string') throw new Error('parse TOML structured data: missing `version`');
  const algorithm = doc['algorithm'];
  if (typeof algorithm !== 'string' || !ALGORITHMS.has(algorithm)) {
    throw new Error('parse TOML structured data: bad `algorithm`');
  }
  const data = doc['data'];
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new Error('parse TOML structured data: missing `data`');
  }
  const claims: Record<string, string> = {};
  for (const [k, v] of Object.entries(data)) {
    if (typeof v !== 'string') throw new Error(`parse TOML structured data: data.${k} is not a string`);
    claims[k] = v;
  }
  return { digest: createHash(algorithm).update(initData.body, 'utf8').digest(), claims };
}
