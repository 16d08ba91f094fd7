/**
 * The attestation token: an EAR-shaped JWT signed ES256 like trustee's EAR broker (* attestation-service/src/ear_token/broker.rs), with the signer's public JWK in the header. Unlike a KBS
 * configured with `insecure_header_jwk = true`, verification uses the server's own key, never the header's.
 *
 * Verification mirrors trustee's `jsonwebtoken::Validation::new(ES256)` (kbs/src/crypto/jwt.rs): signature,
 * `exp` required and checked, `aud` not checked. Trustee's default leeway is 60 s; ours defaults to 0 so an
 * expired token is rejected at once (a client must never rely on the leeway) — configurable.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { SignJWT, jwtVerify, type JWTPayload } from 'jose';
import type { TeePubKey } from './messages.js';

/** Where trustee's TokenVerifier finds the TEE key in an EAR token (kbs/src/token/mod.rs, TOKEN_TEE_PUBKEY_PATH_EAR). */
export const EAR_TEE_PUBKEY_PATH = ['submods', 'cpu0', 'ear.veraison.annotated-evidence', 'runtime_data_claims', 'tee-pubkey'] as const;

export interface TokenContent {
  tee: string;
  /** `{"tee-pubkey", "nonce", "additional-evidence"?}` exactly as hashed. */
  runtimeDataClaims: Record<string, unknown>;
  reportData: Buffer;
  teeClaims: Record<string, unknown>;
  initDataDigest: Buffer | null;
  initDataClaims: Record<string, string> | null;
  /** Additional-device claims, keyed by submod name (`gpu0`, …). */
  extraSubmods: Record<string, Record<string, unknown>>;
}

export class TokenAuthority {
  private readonly privateKey: KeyObject;
  private readonly publicKey: KeyObject;
  private readonly headerJwk: Record<string, unknown>;
  /** Tokens issued and not yet expired by `expireAll()`; a verified token outside this set is treated as expired. */
  private readonly live = new Set<string>();

  constructor() {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    this.privateKey = privateKey;
    this.publicKey = publicKey;
    this.headerJwk = { ...publicKey.export({ format: 'jwk' }), alg: 'ES256' };
  }

  async issue(content: TokenContent, ttlSeconds: number): Promise<string> {
    const iat = Math.floor(Date.now() / 1000);
    const annotated: Record<string, unknown> = {
      init_data: content.initDataDigest ? content.initDataDigest.toString('hex') : null,
      init_data_claims: content.initDataClaims,
      report_data: content.reportData.toString('hex'),
      runtime_data_claims: content.runtimeDataClaims,
      [content.tee]: content.teeClaims,
    };
    const token = await new SignJWT({
      eat_profile: 'tag:github.com,2024:confidential-containers/Trustee',
      'ear.verifier-id': { developer: 'https://confidentialcontainers.org', build: 'coco-decoder test-kbs' },
      iss: 'CoCo-Attestation-Service',
      submods: {
        cpu0: {
          'ear.status': 'affirming',
          'ear.trustworthiness-vector': { configuration: 2, executables: 2, hardware: 2 },
          'ear.appraisal-policy-id': 'default',
          'ear.veraison.annotated-evidence': annotated,
        },
        ...content.extraSubmods,
      },
    })
      .setProtectedHeader({ alg: 'ES256', typ: 'JWT', jwk: this.headerJwk as never })
      .setIssuedAt(iat)
      .setExpirationTime(iat + ttlSeconds)
      .sign(this.privateKey);
    this.live.add(token);
    return token;
  }

  /** Throws if the signature, `exp` or liveness check fails; returns the claims otherwise. */
  async verify(token: string, leewaySeconds: number): Promise<JWTPayload> {
    const { payload } = await jwtVerify(token, this.publicKey, {
      algorithms: ['ES256'],
      requiredClaims: ['exp'],
      clockTolerance: leewaySeconds,
    });
    if (!this.live.has(token)) throw new Error('token expired by the test KBS');
    return payload;
  }

  expireAll(): void {
    this.live.clear();
  }
}

/** Reads the TEE key from the EAR claims (trustee `extract_tee_public_key`, typed re-parse happens in the caller). */
export function teePubKeyFromClaims(claims: JWTPayload): unknown {
  let node: unknown = claims;
  for (const key of EAR_TEE_PUBKEY_PATH) {
    if (typeof node !== 'object' || node === null) return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

export type { TeePubKey };
