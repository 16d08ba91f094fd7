/**
 * Rung 5 (`--kid`): the KBS releases that resource to this TEE and it has the shape of a key-encryption key
 * (32 raw bytes: attestation-agent layers are AES-256-GCM-wrapped). Only the size is ever shown; the bytes are
 * zeroed as soon as they are measured.
 */
import type { Config } from '../../config/types.js';
import { fetchResource } from '../../kbs/client.js';
import type { Attestation } from '../../kbs/client.js';
import { createDeadline } from '../../kbs/deadline.js';
import { KbsError } from '../../kbs/errors.js';
import type { KbsHttp } from '../../kbs/http.js';
import type { ResourceUri } from '../../kbs/resource-uri.js';
import { describeError } from '../../util/errors.js';
import { fail, pass } from './rung.js';
import type { RungResult } from './rung.js';
import { KEK_BYTES } from '../../ocicrypt/keywrap/attestation-agent-wrap.js';


export async function checkResource(config: Config, http: KbsHttp, attestation: Attestation, uri: ResourceUri): Promise<RungResult> {
  let data: Buffer;
  try {
    data = await fetchResource(
      http,
      uri,
      { token: attestation.token, keyPair: attestation.keyPair, cookie: attestation.cookie?.value },
      createDeadline(config.kbs.totalTimeoutMs, http.baseUrl),
    );
  } catch (err) {
    return fail('resource', describeError(err), resourceFix(err, uri));
  }
  try {
    if (data.length === KEK_BYTES) return pass('resource', `${uri.uri}: ${KEK_BYTES} bytes, the size of an AES-256 key-encryption key (contents not shown)`);
    const shape = textShape(data);
    return fail(
      'resource',
      `${uri.uri}: ${data.length} bytes, expected ${KEK_BYTES} bytes for a key-encryption key${shape ? ` (${shape})` : ''}`,
      `store the raw ${KEK_BYTES}-byte key at the KBS under ${uri.path}${shape ? ', not its text encoding' : ''}`,
    );
  } finally {
    data.fill(0);
  }
}

/**
 * Says whether the bytes look like a 32-byte key written as hex or base64 text (a common mistake) without showing
 * them, and without copying them into a string (strings cannot be zeroed).
 */
function textShape(data: Buffer): string | undefined {
  let end = data.length;
  if (end > 0 && data[end - 1] === 0x0a) end--;
  if (end > 0 && data[end - 1] === 0x0d) end--;
  const all = (from: number, to: number, ok: (b: number) => boolean): boolean => {
    for (let i = from; i < to; i++) if (!ok(data[i]!)) return false;
    return true;
  };
  const isHex = (b: number): boolean => (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
  const isAlnum = (b: number): boolean => (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a);
  if (end === 64 && all(0, 64, isHex)) return 'it looks like the key as hex text';
  if (end === 44 && data[43] === 0x3d && all(0, 43, (b) => isAlnum(b) || b === 0x2b || b === 0x2f)) return 'it looks like the key as base64 text';
  if (end === 43 && all(0, 43, (b) => isAlnum(b) || b === 0x2d || b === 0x5f)) return 'it looks like the key as base64url text';
  return undefined;
}

function resourceFix(err: unknown, uri: ResourceUri): string {
  if (!(err instanceof KbsError)) return 'read the KBS log for this request';
  switch (err.code) {
    case 'KBS_RESOURCE_MISSING':
      return `register the key at the KBS under ${uri.path} (e.g. kbs-client … set-resource --path ${uri.path})`;
    case 'KBS_POLICY_DENIED':
      return `allow ${uri.path} for this TEE in the KBS resource policy`;
    case 'KBS_TOKEN_REJECTED':
    case 'KBS_UNAUTHORIZED':
      return 'the KBS refused the token it just issued: check its token verifier configuration and clock';
    case 'KBS_DECRYPT_FAILED':
      return 'the KBS did not encrypt the resource to the TEE key in the token: check the KBS version';
    default:
      return 'read the KBS log for this request';
  }
}
