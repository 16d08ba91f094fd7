/**
 * PKCS#7 / CMS EnvelopedData as ocicrypt's `keywrap/pkcs7` (smallstep/pkcs7) writes it, read with the lenient BER
 * walker: the recipients (issuer, serial, key transport) and the AES-GCM encrypted content. Parsing only; the
 * scheme (pkcs7.ts) pairs recipients with keys.
 */
import { X509Certificate } from 'node:crypto';
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

export interface ContentCipher {
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

export type KeyTransport =
  | { readonly kind: 'pkcs1v15' }
  | { readonly kind: 'oaep'; readonly hash: string; readonly label: Buffer }
  | { readonly kind: 'unsupported'; readonly oid: string };

export interface KeyTransRecipient {
  readonly issuer: Buffer;
  readonly serial: bigint;
  readonly transport: KeyTransport;
  readonly encryptedKey: Buffer;
}

export interface EncryptedContent {
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

export interface CertificateId {
  readonly issuer: Buffer;
  readonly serial: bigint;
  readonly spki: Buffer;
}

export function parseCertificate(data: Buffer): CertificateId {
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

