/**
 * The `pkcs7` key-wrap scheme (ocicrypt `keywrap/pkcs7`, spec §5.2): the annotation entry is a DER/BER
 * PKCS#7 EnvelopedData whose content is the privopts JSON. The RecipientInfo is chosen by matching issuer and
 * serial number against the certificates in `x509s`, as smallstep/pkcs7 does.
 *
 * RSA PKCS#1 v1.5 key transport: Node 20 refuses RSA_PKCS1_PADDING for private decryption (Marvin hardening,
 * CVE-2023-46809). We decrypt with RSA_NO_PADDING and strip the padding ourselves without data-dependent
 * branches, substituting a synthetic key of the expected length when the padding is bad ("implicit rejection",
 * as OpenSSL ≥ 3.2 does). The synthetic key is derived from the private key and the ciphertext (OpenSSL's
 * `ossl_rsa_prf` construction), so asking twice with the same ciphertext gives the same answer. Every failure then surfaces the same way — at the content decryption step — so the
 * padding check is not an oracle. No process-wide security switch is touched.
 */
import {
  constants,
  createDecipheriv,
  createPublicKey,
  privateDecrypt,
  createHash,
  createHmac,
  X509Certificate,
  type KeyObject,
} from 'node:crypto';
import { DecoderError } from '../../util/errors.js';
import {
  BerError,
  children,
  expect,
  expectSequence,
  is,
  readInteger,
  readOctetString,
  readOid,
  readSingle,
  readSmallInteger,
  readTlv,
  stringOctets,
  TagClass,
  UniversalTag,
  type Tlv,
} from '../asn1/ber.js';
import { parsePrivateKey, UnsupportedPrivateKeyError } from '../keys/private-key.js';
import { privateKeysOf, type DecryptParameters, type KeyWrapper, type UnwrapContext } from './keywrapper.js';

const OID = {
  envelopedData: '1.2.840.113549.1.7.3',
  rsaEncryption: '1.2.840.113549.1.1.1',
  rsaesOaep: '1.2.840.113549.1.1.7',
  mgf1: '1.2.840.113549.1.1.8',
  pSpecified: '1.2.840.113549.1.1.9',
} as const;

const HASHES: Readonly<Record<string, string>> = {
  '1.3.14.3.2.26': 'sha1',
  '2.16.840.1.101.3.4.2.4': 'sha224',
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};

interface ContentCipher {
  readonly name: 'aes-128-gcm' | 'aes-192-gcm' | 'aes-256-gcm';
  readonly keyLength: number;
}

/**
 * AES-GCM only: ocicrypt writes aes-128-gcm (`pkcs7.EncryptionAlgorithmAES128GCM`). CBC is refused because the
 * registry picks the OID: CBC content under a genuine wrapped key would be a padding oracle.
 */
const CONTENT_CIPHERS: Readonly<Record<string, ContentCipher>> = {
  '2.16.840.1.101.3.4.1.6': { name: 'aes-128-gcm', keyLength: 16 },
  '2.16.840.1.101.3.4.1.26': { name: 'aes-192-gcm', keyLength: 24 },
  '2.16.840.1.101.3.4.1.46': { name: 'aes-256-gcm', keyLength: 32 },
};

const CBC_CIPHERS: Readonly<Record<string, string>> = {
  '2.16.840.1.101.3.4.1.2': 'aes-128-cbc',
  '2.16.840.1.101.3.4.1.22': 'aes-192-cbc',
  '2.16.840.1.101.3.4.1.42': 'aes-256-cbc',
};

type KeyTransport =
  | { readonly kind: 'pkcs1v15' }
  | { readonly kind: 'oaep'; readonly hash: string; readonly label: Buffer }
  | { readonly kind: 'unsupported'; readonly oid: string };

interface KeyTransRecipient {
  readonly issuer: Buffer;
  readonly serial: bigint;
  readonly transport: KeyTransport;
  readonly encryptedKey: Buffer;
}

interface EncryptedContent {
  readonly cipher: ContentCipher;
  readonly iv: Buffer;
  readonly tagLength: number;
  readonly data: Buffer;
}

export interface EnvelopedData {
  readonly recipients: readonly KeyTransRecipient[];
  readonly content: EncryptedContent;
}

function parseOaepParams(params: Tlv | undefined): KeyTransport {
  // RSAES-OAEP-params ::= SEQUENCE { hashAlgorithm [0] DEFAULT sha1, maskGenAlgorithm [1] DEFAULT mgf1SHA1,
  //                                  pSourceAlgorithm [2] DEFAULT pSpecifiedEmpty }
  let hash = 'sha1';
  let mgfHash = 'sha1';
  let label: Buffer = Buffer.alloc(0);
  if (params !== undefined && !is(params, TagClass.universal, UniversalTag.null)) {
    for (const field of expectSequence(params, 'RSAES-OAEP-params')) {
      if (field.tagClass !== TagClass.context || !field.constructed) throw new BerError('malformed BER: unexpected field in RSAES-OAEP-params');
      const alg = expectSequence(children(field)[0], 'RSAES-OAEP-params algorithm');
      const oid = readOid(alg[0], 'RSAES-OAEP-params algorithm');
      if (field.tagNumber === 0) {
        const h = HASHES[oid];
        if (!h) return { kind: 'unsupported', oid: `${OID.rsaesOaep} with hash ${oid}` };
        hash = h;
      } else if (field.tagNumber === 1) {
        if (oid !== OID.mgf1) return { kind: 'unsupported', oid: `${OID.rsaesOaep} with mask generation ${oid}` };
        const h = HASHES[readOid(expectSequence(alg[1], 'MGF1 hash')[0], 'MGF1 hash')];
        if (!h) return { kind: 'unsupported', oid: `${OID.rsaesOaep} with an unknown MGF1 hash` };
        mgfHash = h;
      } else if (field.tagNumber === 2) {
        if (oid !== OID.pSpecified) return { kind: 'unsupported', oid: `${OID.rsaesOaep} with label source ${oid}` };
        label = readOctetString(alg[1], 'OAEP label');
      }
    }
  }
  // Node (like Go's rsa.DecryptOAEP) uses one hash for OAEP and MGF1.
  if (mgfHash !== hash) return { kind: 'unsupported', oid: `${OID.rsaesOaep} with different OAEP and MGF1 hashes` };
  return { kind: 'oaep', hash, label };
}

function parseRecipient(ri: Tlv): KeyTransRecipient | undefined {
  // Only KeyTransRecipientInfo (a plain SEQUENCE) exists in ocicrypt's world; [1]..[4] choices are skipped.
  if (!is(ri, TagClass.universal, UniversalTag.sequence, true)) return undefined;
  const [version, rid, keyAlg, encryptedKey] = children(ri);
  const v = readSmallInteger(version, 'KeyTransRecipientInfo version');
  if (v !== 0 && v !== 2) throw new BerError(`malformed BER: KeyTransRecipientInfo version ${v}`);
  // rid: issuerAndSerialNumber, or [0] subjectKeyIdentifier (not matched by upstream either; skipped).
  if (!is(rid, TagClass.universal, UniversalTag.sequence, true)) return undefined;
  const [issuer, serial] = children(rid!);
  expect(issuer, TagClass.universal, UniversalTag.sequence, 'issuer Name', true);
  const alg = expectSequence(keyAlg, 'keyEncryptionAlgorithm');
  const oid = readOid(alg[0], 'keyEncryptionAlgorithm');
  const transport: KeyTransport =
    oid === OID.rsaEncryption ? { kind: 'pkcs1v15' } : oid === OID.rsaesOaep ? parseOaepParams(alg[1]) : { kind: 'unsupported', oid };
  return {
    issuer: issuer!.raw,
    serial: readInteger(serial, 'serialNumber'),
    transport,
    encryptedKey: readOctetString(encryptedKey, 'encryptedKey'),
  };
}

/**
 * GCMParameters ::= SEQUENCE { aes-nonce OCTET STRING, aes-ICVlen INTEGER DEFAULT 12 }. Go's pkcs7 writes it
 * as a primitive 0x10 whose contents are a whole SEQUENCE TLV, with the nonce tagged [4] (0x84); accept that
 * and the standard form.
 */
function parseGcmParams(params: Tlv | undefined): { iv: Buffer; tagLength: number } {
  if (params === undefined) throw new BerError('malformed BER: missing GCM parameters');
  if (params.tagClass !== TagClass.universal || params.tagNumber !== UniversalTag.sequence) {
    throw new BerError('malformed BER: GCM parameters are not a SEQUENCE');
  }
  let body = params.value;
  if (body[0] === 0x30) {
    const inner = readTlv(body, 0);
    if (inner.raw.length === body.length) body = inner.value;
  }
  const fields: Tlv[] = [];
  for (let pos = 0; pos < body.length; ) {
    const f = readTlv(body, pos);
    fields.push(f);
    pos += f.raw.length;
  }
  const nonce = fields[0];
  if (!is(nonce, TagClass.universal, UniversalTag.octetString) && !is(nonce, TagClass.context, 4)) {
    throw new BerError('malformed BER: GCM nonce is neither OCTET STRING nor [4]');
  }
  const iv = stringOctets(nonce!, 'GCM nonce');
  const tagLength = fields[1] === undefined ? 12 : readSmallInteger(fields[1], 'GCM ICV length');
  if (fields.length > 2) throw new BerError('malformed BER: trailing fields in GCM parameters');
  return { iv, tagLength };
}

function parseEncryptedContentInfo(eci: Tlv | undefined): EncryptedContent {
  const [contentType, algTlv, content] = expectSequence(eci, 'EncryptedContentInfo');
  readOid(contentType, 'encrypted contentType'); // any type: the content is the privopts JSON whatever it is called
  const alg = expectSequence(algTlv, 'contentEncryptionAlgorithm');
  const oid = readOid(alg[0], 'contentEncryptionAlgorithm');
  const cipher = CONTENT_CIPHERS[oid];
  if (!cipher) {
    const cbc = CBC_CIPHERS[oid];
    throw new DecoderError(
      cbc
        ? `PKCS7: content encryption ${cbc} is refused (unauthenticated); only AES-GCM, as ocicrypt writes it`
        : `PKCS7: unsupported content encryption algorithm ${oid} (only AES-GCM)`,
    );
  }
  // [0] IMPLICIT OCTET STRING: primitive (Go) or constructed segments (older encoders, BER).
  if (content === undefined) throw new DecoderError('PKCS7: EnvelopedData has no encrypted content (detached content is not supported)');
  expect(content, TagClass.context, 0, 'encryptedContent');
  const data = stringOctets(content, 'encryptedContent');
  const { iv, tagLength } = parseGcmParams(alg[1]);
  if (iv.length !== 12) throw new DecoderError(`PKCS7: unsupported GCM nonce length ${iv.length}, need 12`);
  if (tagLength < 12 || tagLength > 16) throw new DecoderError(`PKCS7: unsupported GCM ICV length ${tagLength}`);
  if (data.length < tagLength) throw new DecoderError('PKCS7: encrypted content shorter than its GCM tag');
  return { cipher, iv, tagLength, data };
}

/** Parses a ContentInfo holding EnvelopedData (exported for tests). */
export function parseEnvelopedData(der: Buffer): EnvelopedData {
  const [contentType, explicit] = expectSequence(readSingle(der), 'ContentInfo');
  const type = readOid(contentType, 'contentType');
  if (type !== OID.envelopedData) throw new DecoderError(`PKCS7: content type ${type} is not enveloped data`);
  const [envelope] = children(expect(explicit, TagClass.context, 0, 'ContentInfo content', true));
  const fields = expectSequence(envelope, 'EnvelopedData');
  let i = 0;
  const version = readSmallInteger(fields[i++], 'EnvelopedData version');
  if (![0, 2, 3, 4].includes(version)) throw new BerError(`malformed BER: EnvelopedData version ${version}`);
  if (is(fields[i], TagClass.context, 0)) i++; // originatorInfo
  const recipientSet = expect(fields[i++], TagClass.universal, UniversalTag.set, 'recipientInfos', true);
  const recipients = children(recipientSet)
    .map(parseRecipient)
    .filter((r): r is KeyTransRecipient => r !== undefined);
  const content = parseEncryptedContentInfo(fields[i]);
  return { recipients, content };
}

interface CertificateId {
  readonly issuer: Buffer;
  readonly serial: bigint;
  readonly spki: Buffer;
}

function parseCertificate(data: Buffer): CertificateId {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(data);
  } catch {
    throw new DecoderError('PKCS7: Could not parse x509 certificate');
  }
  // Node exposes neither the raw issuer nor the serial as a number: read them from the TBSCertificate.
  const [tbs] = expectSequence(readSingle(cert.raw), 'Certificate');
  const tbsFields = expectSequence(tbs, 'TBSCertificate');
  const off = is(tbsFields[0], TagClass.context, 0) ? 1 : 0;
  return {
    serial: readInteger(tbsFields[off], 'certificate serialNumber'),
    issuer: expect(tbsFields[off + 2], TagClass.universal, UniversalTag.sequence, 'certificate issuer', true).raw,
    spki: cert.publicKey.export({ format: 'der', type: 'spki' }),
  };
}

// --- constant-time-ish helpers over small non-negative integers (no data-dependent branches) ---
/** 1 if x === 0 else 0, for 0 <= x < 2^31. */
const isZero = (x: number): number => ((x - 1) >>> 31) & 1;
/** 1 if a >= b else 0, for 0 <= a, b < 2^30. */
const ge = (a: number, b: number): number => 1 - (((a - b) >>> 31) & 1);

/**
 * EME-PKCS1-v1_5 decoding of `em` (k bytes: 00 02 PS≥8 nonzero 00 M) into a `length`-byte message. On any
 * padding error, or if M has another length, returns `synthetic` (a `length`-byte substitute) instead: the caller
 * cannot tell from here. `synthetic` is consumed (its bytes become the result's).
 */
export function unpadPkcs1v15(em: Buffer, length: number, synthetic: Buffer): Buffer {
  const k = em.length;
  if (synthetic.length !== length) throw new RangeError('synthetic message length mismatch');
  const out = synthetic;
  if (k < length + 11) return out; // depends only on public sizes
  let good = isZero(em[0]!) & isZero(em[1]! ^ 2);
  let zeroIndex = 0;
  let looking = 1;
  for (let i = 2; i < k; i++) {
    const z = isZero(em[i]!) & looking;
    zeroIndex = (zeroIndex & ~-z) | (i & -z);
    looking &= 1 - z;
  }
  good &= 1 - looking; // a separator exists
  good &= ge(zeroIndex, 10); // at least 8 bytes of PS
  good &= isZero((k - zeroIndex - 1) ^ length); // both sides are >= 0
  const mask = -good & 0xff;
  const start = k - length;
  for (let j = 0; j < length; j++) out[j] = (em[start + j]! & mask) | (out[j]! & ~mask & 0xff);
  return out;
}

const kdkKeys = new WeakMap<KeyObject, Buffer>();

/**
 * The implicit-rejection substitute for `ciphertext`: OpenSSL's construction (rsa_pk1.c,
 * `ossl_rsa_padding_check_PKCS1_type_2` with `ossl_rsa_prf`): KDK = HMAC-SHA256(SHA256(d as k bytes), C as k bytes),
 * then HMAC-SHA256(KDK, BE16(i) ‖ "message" ‖ BE16(bits)) blocks. Deterministic per (key, ciphertext).
 */
export function syntheticKey(key: KeyObject, ciphertext: Buffer, length: number): Buffer {
  const k = ((key.asymmetricKeyDetails?.modulusLength ?? 2048) + 7) >> 3;
  let dHash = kdkKeys.get(key);
  if (dHash === undefined) {
    const d = Buffer.from(key.export({ format: 'jwk' }).d ?? '', 'base64url');
    const padded = Buffer.alloc(Math.max(k, d.length));
    d.copy(padded, padded.length - d.length);
    dHash = createHash('sha256').update(padded).digest();
    d.fill(0);
    padded.fill(0);
    kdkKeys.set(key, dHash);
  }
  const c = Buffer.alloc(Math.max(k, ciphertext.length));
  ciphertext.copy(c, c.length - ciphertext.length);
  const kdk = createHmac('sha256', dHash).update(c).digest();
  const blocks: Buffer[] = [];
  const bits = Buffer.alloc(2);
  bits.writeUInt16BE((length * 8) & 0xffff);
  for (let i = 0, have = 0; have < length; i++, have += 32) {
    const counter = Buffer.alloc(2);
    counter.writeUInt16BE(i);
    blocks.push(createHmac('sha256', kdk).update(counter).update('message').update(bits).digest());
  }
  kdk.fill(0);
  const out = Buffer.concat(blocks).subarray(0, length);
  for (const b of blocks) b.fill(0);
  return Buffer.from(out);
}

/** Recovers the content-encryption key; a key of the right length always comes back (synthetic if unwrap failed). */
function unwrapContentKey(key: KeyObject, r: KeyTransRecipient, keyLength: number): Buffer {
  if (r.transport.kind === 'pkcs1v15') {
    let em: Buffer;
    try {
      em = privateDecrypt({ key, padding: constants.RSA_NO_PADDING }, r.encryptedKey);
    } catch {
      // Only ciphertext length / value ≥ modulus get here: public properties, not an oracle.
      return syntheticKey(key, r.encryptedKey, keyLength);
    }
    const cek = unpadPkcs1v15(em, keyLength, syntheticKey(key, r.encryptedKey, keyLength));
    em.fill(0);
    return cek;
  }
  if (r.transport.kind === 'oaep') {
    try {
      const cek = privateDecrypt(
        { key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: r.transport.hash, oaepLabel: r.transport.label },
        r.encryptedKey,
      );
      if (cek.length === keyLength) return cek;
      cek.fill(0);
    } catch {
      // fall through to the same uniform failure as bad PKCS#1 v1.5 padding
    }
  }
  return syntheticKey(key, r.encryptedKey, keyLength);
}

function decryptContent(c: EncryptedContent, cek: Buffer): Buffer | undefined {
  const ct = c.data.subarray(0, c.data.length - c.tagLength);
  const tag = c.data.subarray(c.data.length - c.tagLength);
  let head: Buffer | undefined;
  try {
    const d = createDecipheriv(c.cipher.name, cek, c.iv, { authTagLength: c.tagLength });
    d.setAuthTag(tag);
    head = d.update(ct);
    const plain = Buffer.concat([head, d.final()]);
    return plain;
  } catch {
    return undefined;
  } finally {
    head?.fill(0); // unauthenticated until final(); the concatenated copy is what we return
  }
}

function sameIssuerAndSerial(r: KeyTransRecipient, cert: CertificateId): boolean {
  return r.serial === cert.serial && r.issuer.equals(cert.issuer);
}

export const pkcs7KeyWrapper: KeyWrapper = {
  scheme: 'pkcs7',
  supported: true,

  noPossibleKeys(params: DecryptParameters): boolean {
    return privateKeysOf(params).length === 0;
  },

  hasPrivateKeys(params: DecryptParameters): boolean {
    return privateKeysOf(params).length > 0;
  },

  async unwrap(entry: Buffer, ctx: UnwrapContext): Promise<Buffer | null> {
    const keys = privateKeysOf(ctx.params);
    if (keys.length === 0) throw new DecoderError('no private keys found for PKCS7 decryption');
    const passwords = ctx.params['privkeys-passwords'] ?? [];
    if (passwords.length !== keys.length) {
      throw new DecoderError('private key password array length must be same as that of private keys');
    }
    const certs = (ctx.params['x509s'] ?? []).map((c) => parseCertificate(c ?? Buffer.alloc(0)));
    if (certs.length === 0) throw new DecoderError('no x509 certificates found needed for PKCS7 decryption');

    let envelope: EnvelopedData;
    try {
      envelope = parseEnvelopedData(entry);
    } catch (err) {
      if (err instanceof BerError) throw new DecoderError(`could not parse PKCS7 packet: ${err.message}`);
      throw err;
    }
    const { content } = envelope;
    let unsupportedTransport: string | undefined;

    for (let i = 0; i < keys.length; i++) {
      let key: KeyObject;
      try {
        key = parsePrivateKey(keys[i] ?? Buffer.alloc(0), passwords[i] ?? null, 'PKCS7');
      } catch (err) {
        if (err instanceof UnsupportedPrivateKeyError) continue;
        throw err; // upstream aborts the scheme on an unparsable key (e.g. wrong password)
      }
      if (key.asymmetricKeyType !== 'rsa') continue; // key transport is RSA only
      const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
      for (const cert of certs) {
        // Pairing the key with its own certificate first keeps a mismatched key from producing garbage
        // through an unauthenticated (CBC) content cipher.
        if (!spki.equals(cert.spki)) continue;
        const recipient = envelope.recipients.find((r) => sameIssuerAndSerial(r, cert));
        if (!recipient) continue;
        if (recipient.transport.kind === 'unsupported') {
          unsupportedTransport = recipient.transport.oid;
          continue;
        }
        const cek = unwrapContentKey(key, recipient, content.cipher.keyLength);
        const plain = decryptContent(content, cek);
        cek.fill(0);
        if (plain) {
          ctx.audit.scheme = 'pkcs7';
          return plain;
        }
      }
    }
    const hint = unsupportedTransport ? ` (key transport ${unsupportedTransport} is not supported)` : '';
    throw new DecoderError(`PKCS7: No suitable private key found for decryption${hint}`);
  },
};
