/**
 * Parsers for the Intel TDX structures the attester handles: the DCAP TD quote (v4 and v5) that configfs-tsm
 * returns, and the 1024-byte TDREPORT from `TDX_CMD_GET_REPORT0`. Used to check, before anything is sent, that
 * the quote really carries our REPORTDATA. Offsets: Intel TDX DCAP quote layout as in google/go-tdx-guest
 * `abi/abi.go` and trustee `deps/verifier/src/intel_dcap/quote.rs`; TDREPORT as in the kernel's tdx-guest.c.
 * All integers are little-endian.
 */
import { DecoderError } from '../util/errors.js';

export const TDX_REPORT_DATA_LEN = 64;
export const TDX_TEE_TYPE = 0x81;
const ATT_KEY_TYPE_ECDSA_P256 = 2;

export const QUOTE_HEADER_LEN = 0x30;
/** TD quote v5 body descriptor: `type u16`, `size u32`. */
const V5_DESCRIPTOR_LEN = 6;
/** TDX 1.0 report body (quote v4, v5 type 2) and TDX 1.5 body (v5 type 3). */
export const TD_REPORT_BODY_LEN_10 = 584;
export const TD_REPORT_BODY_LEN_15 = 648;

/** Offsets inside the TD report body (identical for v4 and v5; v5 moves the body by 6 bytes). */
export const TD_BODY = {
  teeTcbSvn: [0, 16],
  mrSeam: [16, 48],
  mrSignerSeam: [64, 48],
  seamAttributes: [112, 8],
  tdAttributes: [120, 8],
  xfam: [128, 8],
  mrTd: [136, 48],
  mrConfigId: [184, 48],
  mrOwner: [232, 48],
  mrOwnerConfig: [280, 48],
  rtmr0: [328, 48],
  rtmr1: [376, 48],
  rtmr2: [424, 48],
  rtmr3: [472, 48],
  reportData: [520, 64],
  /** TDX 1.5 only (v5 body type 3). */
  teeTcbSvn2: [584, 16],
  mrServiceTd: [600, 48],
} as const satisfies Record<string, readonly [number, number]>;

export interface TdReportBody {
  teeTcbSvn: Buffer;
  mrSeam: Buffer;
  mrSignerSeam: Buffer;
  seamAttributes: Buffer;
  tdAttributes: Buffer;
  xfam: Buffer;
  mrTd: Buffer;
  mrConfigId: Buffer;
  mrOwner: Buffer;
  mrOwnerConfig: Buffer;
  rtmr: [Buffer, Buffer, Buffer, Buffer];
  reportData: Buffer;
  teeTcbSvn2?: Buffer;
  mrServiceTd?: Buffer;
}

export interface TdQuote {
  version: 4 | 5;
  attKeyType: number;
  teeType: number;
  qeSvn: number;
  pceSvn: number;
  qeVendorId: Buffer;
  userData: Buffer;
  /** 2 = TDX 1.0 body, 3 = TDX 1.5 body (v4 quotes are always 2). */
  bodyType: 2 | 3;
  /** Absolute offset of the report body in the quote. */
  bodyOffset: number;
  body: TdReportBody;
  /** Header + (descriptor +) body: the bytes the quote's ECDSA signature covers. */
  signedRegion: Buffer;
  signedDataSize: number;
  /** ECDSA P-256 signature r‖s (big-endian, 32 bytes each). */
  signature: Buffer;
  /** The attestation public key x‖y (big-endian, 32 bytes each). */
  attestationKey: Buffer;
  /** Certification data type (6 = QE report certification data in TDX quotes). */
  certDataType: number;
}

export class TdQuoteError extends DecoderError {
}

/** Parses a TD quote; throws {@link TdQuoteError} for anything that is not a well-formed v4/v5 TDX quote. */
export function parseTdQuote(quote: Uint8Array): TdQuote {
  const q = Buffer.from(quote.buffer, quote.byteOffset, quote.byteLength);
  if (q.length < QUOTE_HEADER_LEN) throw new TdQuoteError(`TD quote too short: ${q.length} bytes`);
  const version = q.readUInt16LE(0);
  const attKeyType = q.readUInt16LE(2);
  const teeType = q.readUInt32LE(4);
  if (version === 3 || teeType === 0) throw new TdQuoteError(`not a TDX quote: SGX quote (version ${version}, tee_type ${hex(teeType)})`);
  if (version !== 4 && version !== 5) throw new TdQuoteError(`unsupported TD quote version ${version} (expected 4 or 5)`);
  if (teeType !== TDX_TEE_TYPE) throw new TdQuoteError(`TD quote tee_type is ${hex(teeType)}, expected 0x81 (TDX)`);
  if (attKeyType !== ATT_KEY_TYPE_ECDSA_P256) {
    throw new TdQuoteError(`TD quote attestation key type ${attKeyType} is not 2 (ECDSA-256-with-P-256)`);
  }

  let bodyType: 2 | 3 = 2;
  let bodyOffset = QUOTE_HEADER_LEN;
  let bodyLen = TD_REPORT_BODY_LEN_10;
  if (version === 5) {
    need(q, QUOTE_HEADER_LEN + V5_DESCRIPTOR_LEN, 'v5 body descriptor');
    const type = q.readUInt16LE(QUOTE_HEADER_LEN);
    const size = q.readUInt32LE(QUOTE_HEADER_LEN + 2);
    if (type === 2 && size === TD_REPORT_BODY_LEN_10) bodyType = 2;
    else if (type === 3 && size === TD_REPORT_BODY_LEN_15) bodyType = 3;
    else throw new TdQuoteError(`unsupported TD quote v5 body: type ${type}, size ${size} (expected type 2/584 or 3/648)`);
    bodyOffset = QUOTE_HEADER_LEN + V5_DESCRIPTOR_LEN;
    bodyLen = size;
  }
  const sigSizeOffset = bodyOffset + bodyLen;
  need(q, sigSizeOffset + 4, 'report body');
  const signedDataSize = q.readUInt32LE(sigSizeOffset);
  const sigDataOffset = sigSizeOffset + 4;
  // signature (64) + attestation key (64) + certification data type (2) + size (4)
  if (signedDataSize < 134) throw new TdQuoteError(`TD quote signature data too short: ${signedDataSize} bytes`);
  need(q, sigDataOffset + signedDataSize, `signature data (${signedDataSize} bytes)`);

  const at = (off: number, len: number) => Buffer.from(q.subarray(off, off + len));
  const field = (f: readonly [number, number]) => at(bodyOffset + f[0], f[1]);
  const body: TdReportBody = {
    teeTcbSvn: field(TD_BODY.teeTcbSvn),
    mrSeam: field(TD_BODY.mrSeam),
    mrSignerSeam: field(TD_BODY.mrSignerSeam),
    seamAttributes: field(TD_BODY.seamAttributes),
    tdAttributes: field(TD_BODY.tdAttributes),
    xfam: field(TD_BODY.xfam),
    mrTd: field(TD_BODY.mrTd),
    mrConfigId: field(TD_BODY.mrConfigId),
    mrOwner: field(TD_BODY.mrOwner),
    mrOwnerConfig: field(TD_BODY.mrOwnerConfig),
    rtmr: [field(TD_BODY.rtmr0), field(TD_BODY.rtmr1), field(TD_BODY.rtmr2), field(TD_BODY.rtmr3)],
    reportData: field(TD_BODY.reportData),
  };
  if (bodyType === 3) {
    body.teeTcbSvn2 = field(TD_BODY.teeTcbSvn2);
    body.mrServiceTd = field(TD_BODY.mrServiceTd);
  }
  return {
    version,
    attKeyType,
    teeType,
    qeSvn: q.readUInt16LE(0x0a),
    pceSvn: q.readUInt16LE(0x08),
    qeVendorId: at(0x0c, 16),
    userData: at(0x1c, 20),
    bodyType,
    bodyOffset,
    body,
    signedRegion: at(0, sigSizeOffset),
    signedDataSize,
    signature: at(sigDataOffset, 64),
    attestationKey: at(sigDataOffset + 64, 64),
    certDataType: q.readUInt16LE(sigDataOffset + 128),
  };
}

// ---- TDREPORT (TDX_CMD_GET_REPORT0) ----

export const TDREPORT_LEN = 1024;

/** Offsets in TDREPORT_STRUCT: REPORTMACSTRUCT @0 (256), TEE_TCB_INFO @256 (256), TDINFO @512. */
export const TDREPORT = {
  reportType: [0, 4],
  cpuSvn: [16, 16],
  teeTcbInfoHash: [32, 48],
  teeInfoHash: [80, 48],
  reportData: [128, 64],
  mac: [224, 32],
  teeTcbInfo: [256, 239],
  attributes: [512, 8],
  xfam: [520, 8],
  mrTd: [528, 48],
  mrConfigId: [576, 48],
  mrOwner: [624, 48],
  mrOwnerConfig: [672, 48],
  rtmr0: [720, 48],
  rtmr1: [768, 48],
  rtmr2: [816, 48],
  rtmr3: [864, 48],
  servTdHash: [912, 48],
} as const satisfies Record<string, readonly [number, number]>;

export interface TdReport {
  /** REPORTTYPE: type (0x81 = TDX), subtype, version, reserved. */
  reportType: Buffer;
  cpuSvn: Buffer;
  reportData: Buffer;
  mac: Buffer;
  attributes: Buffer;
  xfam: Buffer;
  mrTd: Buffer;
  mrConfigId: Buffer;
  mrOwner: Buffer;
  mrOwnerConfig: Buffer;
  rtmr: [Buffer, Buffer, Buffer, Buffer];
  servTdHash: Buffer;
}

export function parseTdReport(report: Uint8Array): TdReport {
  const r = Buffer.from(report.buffer, report.byteOffset, report.byteLength);
  if (r.length !== TDREPORT_LEN) throw new TdQuoteError(`TDREPORT must be ${TDREPORT_LEN} bytes, got ${r.length}`);
  if (r[0] !== TDX_TEE_TYPE) throw new TdQuoteError(`TDREPORT type is ${hex(r[0] ?? 0)}, expected 0x81 (TDX)`);
  const f = (x: readonly [number, number]) => Buffer.from(r.subarray(x[0], x[0] + x[1]));
  return {
    reportType: f(TDREPORT.reportType),
    cpuSvn: f(TDREPORT.cpuSvn),
    reportData: f(TDREPORT.reportData),
    mac: f(TDREPORT.mac),
    attributes: f(TDREPORT.attributes),
    xfam: f(TDREPORT.xfam),
    mrTd: f(TDREPORT.mrTd),
    mrConfigId: f(TDREPORT.mrConfigId),
    mrOwner: f(TDREPORT.mrOwner),
    mrOwnerConfig: f(TDREPORT.mrOwnerConfig),
    rtmr: [f(TDREPORT.rtmr0), f(TDREPORT.rtmr1), f(TDREPORT.rtmr2), f(TDREPORT.rtmr3)],
    servTdHash: f(TDREPORT.servTdHash),
  };
}

function need(q: Buffer, len: number, what: string): void {
  if (q.length < len) throw new TdQuoteError(`TD quote truncated: ${q.length} bytes, ${what} needs ${len}`);
}

function hex(v: number): string {
  return `0x${v.toString(16)}`;
}
