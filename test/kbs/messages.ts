/**
 * The RCAR wire messages, parsed the way trustee's serde types do (kbs-types):
 * required fields must be present with the right JSON type, unknown fields are ignored, and the TEE public
 * key is re-serialised through its typed fields only — which drops `ext`, `key_ops`, `kid`, ….
 * Every function throws a plain Error naming the first problem; the server maps it to trustee's response.
 */

export type ProtocolVersion = '0.4.0' | '0.2.0';

/** kbs-types ≥ 0.14 (trustee ≥ v0.16, protocol 0.4.0) serde names. */
const TEES_0_4_0 = [
  'az-snp-vtpm', 'az-tdx-vtpm', 'nvidia', 'sgx', 'snp', 'tdx', 'cca', 'csv', 'se', 'hygondcu', 'tpm', 'sample', 'sampledevice',
] as const;
/** kbs-types 0.10 (trustee v0.12/v0.13, protocol 0.2.0) serde names. */
const TEES_0_2_0 = ['azsnpvtpm', 'aztdxvtpm', 'sev', 'sgx', 'snp', 'tdx', 'cca', 'csv', 'se', 'sample'] as const;

export function knownTees(protocol: ProtocolVersion): readonly string[] {
  return protocol === '0.4.0' ? TEES_0_4_0 : TEES_0_2_0;
}

/** `kbs_types::TeePubKey`, fields in serde declaration order (what trustee re-serialises and hashes). */
export type TeePubKey =
  | { kty: 'RSA'; alg: string; n: string; e: string }
  | { kty: 'EC'; crv: string; alg: string; x: string; y: string }
  | { kty: 'AKP'; alg: string; pub: string };

export interface AuthRequest {
  version: string;
  tee: string;
  extraParams: unknown;
}

export interface InitData {
  format: string;
  body: string;
}

export interface Attestation {
  initData: InitData | null;
  /** Present in 0.4.0 only; 0.2.0 bodies carry no nonce and the session's nonce is used. */
  nonce: string | null;
  teePubKey: TeePubKey;
  primaryEvidence: unknown;
  /** The exact `additional_evidence` string (0.4.0), `""` for 0.2.0. */
  additionalEvidence: string;
}

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function requireField(obj: JsonObject, name: string): unknown {
  if (!Object.prototype.hasOwnProperty.call(obj, name)) throw new Error(`missing field \`${name}\``);
  return obj[name];
}

function requireString(obj: JsonObject, name: string): string {
  const v = requireField(obj, name);
  if (typeof v !== 'string') throw new Error(`invalid type for \`${name}\`: expected a string`);
  return v;
}

export function parseJson(body: Buffer): unknown {
  return JSON.parse(body.toString('utf8'));
}

/** kbs-types `Request`: `{version, tee, extra-params}`, all three required (extra-params may be any value, even null). */
export function parseAuthRequest(value: unknown, protocol: ProtocolVersion): AuthRequest {
  if (!isObject(value)) throw new Error('Request is not a JSON object');
  const version = requireString(value, 'version');
  const tee = requireString(value, 'tee');
  if (!knownTees(protocol).includes(tee)) throw new Error(`unknown variant \`${tee}\``);
  const extraParams = requireField(value, 'extra-params');
  return { version, tee, extraParams };
}

/** serde's internally tagged `TeePubKey` (`#[serde(tag = "kty")]`); AKP exists from kbs-types 0.18 (0.4.0 only). */
export function parseTeePubKey(value: unknown, protocol: ProtocolVersion): TeePubKey {
  if (!isObject(value)) throw new Error('tee-pubkey is not a JSON object');
  const kty = requireString(value, 'kty');
  switch (kty) {
    case 'RSA':
      return { kty, alg: requireString(value, 'alg'), n: requireString(value, 'n'), e: requireString(value, 'e') };
    case 'EC':
      return {
        kty,
        crv: requireString(value, 'crv'),
        alg: requireString(value, 'alg'),
        x: requireString(value, 'x'),
        y: requireString(value, 'y'),
      };
    case 'AKP':
      if (protocol === '0.4.0') return { kty, alg: requireString(value, 'alg'), pub: requireString(value, 'pub') };
      break;
  }
  throw new Error(`unknown variant \`${kty}\` for tee-pubkey`);
}

function parseInitData(value: unknown): InitData | null {
  if (value === null || value === undefined) return null;
  if (!isObject(value)) throw new Error('init-data is not a JSON object');
  return { format: requireString(value, 'format'), body: requireString(value, 'body') };
}

/**
 * Protocol 0.4.0 `Attestation` (kebab-case top level, snake_case inside `tee-evidence`):
 * `{"init-data"?, "runtime-data":{nonce, tee-pubkey}, "tee-evidence":{primary_evidence, additional_evidence}}`.
 */
export function parseAttestation040(value: unknown): Attestation {
  if (!isObject(value)) throw new Error('Attestation is not a JSON object');
  const initData = parseInitData(value['init-data']);
  const runtimeData = requireField(value, 'runtime-data');
  if (!isObject(runtimeData)) throw new Error('runtime-data is not a JSON object');
  const nonce = requireString(runtimeData, 'nonce');
  const teePubKey = parseTeePubKey(requireField(runtimeData, 'tee-pubkey'), '0.4.0');
  const teeEvidence = requireField(value, 'tee-evidence');
  if (!isObject(teeEvidence)) throw new Error('tee-evidence is not a JSON object');
  const primaryEvidence = requireField(teeEvidence, 'primary_evidence');
  const additionalEvidence = requireString(teeEvidence, 'additional_evidence');
  return { initData, nonce, teePubKey, primaryEvidence, additionalEvidence };
}

/** Protocol 0.1.1/0.2.0 `Attestation` (kbs-types 0.10): `{"tee-pubkey", "tee-evidence"}`. */
export function parseAttestation020(value: unknown): Attestation {
  if (!isObject(value)) throw new Error('Attestation is not a JSON object');
  const teePubKey = parseTeePubKey(requireField(value, 'tee-pubkey'), '0.2.0');
  const primaryEvidence = requireField(value, 'tee-evidence');
  return { initData: null, nonce: null, teePubKey, primaryEvidence, additionalEvidence: '' };
}

/** The typed key as a plain object in serde field order: what trustee puts in runtime data and the token. */
export function teePubKeyJson(key: TeePubKey): Record<string, string> {
  return { ...key };
}
