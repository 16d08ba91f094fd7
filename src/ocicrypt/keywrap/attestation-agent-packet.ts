/**
 * The CoCo key-provider annotation packet: the JSON that coco_keyprovider returns as the keyprovider
 * `annotation` and that ocicrypt stores (base64) in `org.opencontainers.image.enc.keys.provider.attestation-agent`.
 * v1: `{kid, wrapped_data, iv, wrap_type}`; v2 (CDH) adds `version` ("0.1.0"), `provider` ("kbs"),
 * `provider_settings` and `annotations`. Unknown members are tolerated, as serde does in the CDH.
 *
 * Only `A256GCM` is accepted. coco_keyprovider writes nothing else, and the CDH's `A256CTR` is unauthenticated:
 * GCM with a 12-byte IV encrypts with the CTR keystream from `IV‖00000002`, so a registry could relabel a genuine
 * GCM packet as CTR and have the real KEK decrypt it into bit-flippable private options (a decryption oracle,
 * and a way to inject its own layer key by flipping the known `digest` bytes).
 */
import { DecoderError } from '../../util/errors.js';
import { isObject } from '../../util/is-object.js';
import { quoteUntrusted } from '../../util/quote.js';

export type WrapType = 'A256GCM';

export interface AnnotationPacket {
  kid: string;
  /** ciphertext‖16-byte tag for A256GCM. */
  wrappedData: Buffer;
  iv: Buffer;
  wrapType: WrapType;
}

const B64STD_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const GCM_IV_BYTES = 12;

export function parseAnnotationPacket(entry: Buffer): AnnotationPacket {
  const bad = (why: string): DecoderError => new DecoderError(`invalid attestation-agent annotation packet: ${why}`);
  let doc: unknown;
  try {
    doc = JSON.parse(entry.toString('utf8'));
  } catch {
    throw bad('not JSON');
  }
  if (!isObject(doc)) throw bad('not a JSON object');

  if (doc['version'] !== undefined && doc['version'] !== '0.1.0') {
    throw bad(`unsupported version ${quoteUntrusted(doc['version'])} (expected "0.1.0")`);
  }
  if (doc['provider'] !== undefined && doc['provider'] !== 'kbs') {
    throw bad(`provider ${quoteUntrusted(doc['provider'])} is not supported (only "kbs")`);
  }
  for (const m of ['provider_settings', 'annotations']) {
    if (doc[m] !== undefined && !isObject(doc[m])) throw bad(`"${m}" must be an object`);
  }

  const kid = doc['kid'];
  if (typeof kid !== 'string' || kid === '') throw bad('missing "kid"');
  const wrapType = doc['wrap_type'];
  if (wrapType !== 'A256GCM') {
    throw bad(`unsupported wrap_type ${quoteUntrusted(wrapType)} (only "A256GCM", as coco_keyprovider writes it)`);
  }
  const wrappedData = base64Member(doc, 'wrapped_data', bad);
  const iv = base64Member(doc, 'iv', bad);
  if (iv.length !== GCM_IV_BYTES) throw bad(`iv must be ${GCM_IV_BYTES} bytes for A256GCM, got ${iv.length}`);
  if (wrappedData.length <= 16) throw bad('wrapped_data is too short to hold an A256GCM tag');
  return { kid, wrappedData, iv, wrapType };
}

function base64Member(doc: Record<string, unknown>, name: string, bad: (why: string) => DecoderError): Buffer {
  const v = doc[name];
  if (typeof v !== 'string' || !B64STD_RE.test(v)) throw bad(`"${name}" is missing or not standard base64`);
  return Buffer.from(v, 'base64');
}
