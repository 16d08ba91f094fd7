/**
 * AMD SEV-SNP ATTESTATION_REPORT (1184 bytes, little-endian), the MSG_REPORT_RSP that wraps it on the ioctl
 * path, the host's certificate table, and their conversion to the JSON trustee's SNP verifier deserialises.
 *
 * Trustee does not take the raw report: it deserialises `sev::firmware::guest::AttestationReport` (virtee/sev
 * 6.x/7.x, serde) from JSON, byte arrays as arrays of numbers, TCB versions as decoded structs whose layout
 * depends on the CPU generation, then re-encodes it to check the signature. So the conversion below mirrors
 * sev's `AttestationReport` decoder exactly (virtee/sev v6.3.0 `from_bytes`, v7.1.0 `Decoder`, identical):
 * version 0/1 rejected; v2 → generation from CHIP_ID (masked → error); v3/v4 → CPUID family/model; v5 adds
 * the mitigation vectors. Trustee ≥ v0.14 accepts versions 3..5 (guest-components ≥ v0.15 sends this shape).
 */
import { DecoderError } from '../util/errors.js';

export const SNP_REPORT_LEN = 0x4a0;
export const SNP_REPORT_DATA_LEN = 64;
/** Bytes covered by the report signature. */
export const SNP_SIGNED_LEN = 0x2a0;
/** `MSG_REPORT_RSP`: status u32 @0, report_size u32 @4, report @0x20. */
export const SNP_RSP_REPORT_OFFSET = 0x20;

/** Field offsets (go-sev-guest `abi/abi.go`, sev `AttestationReport` decoder). */
export const SNP = {
  version: [0x000, 4],
  guestSvn: [0x004, 4],
  policy: [0x008, 8],
  familyId: [0x010, 16],
  imageId: [0x020, 16],
  vmpl: [0x030, 4],
  sigAlgo: [0x034, 4],
  currentTcb: [0x038, 8],
  platInfo: [0x040, 8],
  keyInfo: [0x048, 4],
  reportData: [0x050, 64],
  measurement: [0x090, 48],
  hostData: [0x0c0, 32],
  idKeyDigest: [0x0e0, 48],
  authorKeyDigest: [0x110, 48],
  reportId: [0x140, 32],
  reportIdMa: [0x160, 32],
  reportedTcb: [0x180, 8],
  cpuidFamId: [0x188, 1],
  cpuidModId: [0x189, 1],
  cpuidStep: [0x18a, 1],
  chipId: [0x1a0, 64],
  committedTcb: [0x1e0, 8],
  current: [0x1e8, 3],
  committed: [0x1ec, 3],
  launchTcb: [0x1f0, 8],
  launchMitVector: [0x1f8, 8],
  currentMitVector: [0x200, 8],
  signatureR: [0x2a0, 72],
  signatureS: [0x2e8, 72],
} as const satisfies Record<string, readonly [number, number]>;

export class SnpReportError extends DecoderError {
}

export interface SnpReport {
  raw: Buffer;
  version: number;
  vmpl: number;
  reportData: Buffer;
  measurement: Buffer;
  hostData: Buffer;
  chipId: Buffer;
  /** KEY_INFO bits 4:2: 0 VCEK, 1 VLEK, 7 none. */
  signingKey: number;
  /** ECDSA P-384 r and s, little-endian, zero-padded to 72 bytes. */
  signatureR: Buffer;
  signatureS: Buffer;
  /** Bytes 0x000–0x29F: what the signature covers. */
  signedRegion: Buffer;
}

export function parseSnpReport(report: Uint8Array): SnpReport {
  const r = Buffer.from(report.buffer, report.byteOffset, report.byteLength);
  if (r.length !== SNP_REPORT_LEN) throw new SnpReportError(`SEV-SNP report must be ${SNP_REPORT_LEN} bytes, got ${r.length}`);
  const f = (x: readonly [number, number]) => Buffer.from(r.subarray(x[0], x[0] + x[1]));
  return {
    raw: Buffer.from(r),
    version: r.readUInt32LE(SNP.version[0]),
    vmpl: r.readUInt32LE(SNP.vmpl[0]),
    reportData: f(SNP.reportData),
    measurement: f(SNP.measurement),
    hostData: f(SNP.hostData),
    chipId: f(SNP.chipId),
    signingKey: (r.readUInt32LE(SNP.keyInfo[0]) >>> 2) & 0x7,
    signatureR: f(SNP.signatureR),
    signatureS: f(SNP.signatureS),
    signedRegion: Buffer.from(r.subarray(0, SNP_SIGNED_LEN)),
  };
}

/** Extracts the report from the ioctl's 4000-byte `MSG_REPORT_RSP`, checking status and size. */
export function reportFromResponse(resp: Uint8Array): Buffer {
  const b = Buffer.from(resp.buffer, resp.byteOffset, resp.byteLength);
  if (b.length < SNP_RSP_REPORT_OFFSET + SNP_REPORT_LEN) throw new SnpReportError(`SNP report response too short: ${b.length} bytes`);
  const status = b.readUInt32LE(0);
  if (status !== 0) throw new SnpReportError(`SNP report response status 0x${status.toString(16)}`);
  const size = b.readUInt32LE(4);
  if (size !== SNP_REPORT_LEN) throw new SnpReportError(`SNP report response announces ${size} report bytes, expected ${SNP_REPORT_LEN}`);
  return Buffer.from(b.subarray(SNP_RSP_REPORT_OFFSET, SNP_RSP_REPORT_OFFSET + SNP_REPORT_LEN));
}

// ---- JSON for trustee (serde of sev::firmware::guest::AttestationReport) ----

export type Generation = 'Milan' | 'Genoa' | 'Turin';

export interface SevTcbVersionJson {
  fmc: number | null;
  bootloader: number;
  tee: number;
  snp: number;
  microcode: number;
}

export interface SevVersionJson {
  major: number;
  minor: number;
  build: number;
}

export interface SevAttestationReportJson {
  version: number;
  guest_svn: number;
  policy: number;
  family_id: number[];
  image_id: number[];
  vmpl: number;
  sig_algo: number;
  current_tcb: SevTcbVersionJson;
  plat_info: number;
  key_info: number;
  report_data: number[];
  measurement: number[];
  host_data: number[];
  id_key_digest: number[];
  author_key_digest: number[];
  report_id: number[];
  report_id_ma: number[];
  reported_tcb: SevTcbVersionJson;
  cpuid_fam_id: number | null;
  cpuid_mod_id: number | null;
  cpuid_step: number | null;
  chip_id: number[];
  committed_tcb: SevTcbVersionJson;
  current: SevVersionJson;
  committed: SevVersionJson;
  launch_tcb: SevTcbVersionJson;
  launch_mit_vector: number | null;
  current_mit_vector: number | null;
  signature: { r: number[]; s: number[] };
}

/** sev `Generation::identify_cpu`. */
export function identifyGeneration(family: number, model: number): Generation {
  if (family === 0x19) {
    if (model <= 0x0f) return 'Milan';
    if ((model >= 0x10 && model <= 0x1f) || (model >= 0xa0 && model <= 0xaf)) return 'Genoa';
  } else if (family === 0x1a) {
    if (model <= 0x11) return 'Turin';
  }
  throw new SnpReportError(
    `SEV-SNP report names CPU family 0x${family.toString(16)} model 0x${model.toString(16)}, which the verifier's sev crate does not know`,
  );
}

/** The processor generation sev derives from a report (needed to decode its TCB fields). */
export function reportGeneration(report: Uint8Array): Generation {
  const r = Buffer.from(report.buffer, report.byteOffset, report.byteLength);
  const version = r.readUInt32LE(0);
  if (version === 2) {
    const chip = r.subarray(SNP.chipId[0], SNP.chipId[0] + SNP.chipId[1]);
    if (chip.every((b) => b === 0)) {
      throw new SnpReportError(
        'SEV-SNP report version 2 with a masked CHIP_ID: the processor generation cannot be determined (needs report version ≥ 3: update the SEV firmware)',
      );
    }
    return chip.subarray(8).every((b) => b === 0) ? 'Turin' : 'Genoa';
  }
  return identifyGeneration(r[SNP.cpuidFamId[0]]!, r[SNP.cpuidModId[0]]!);
}

/** Converts a raw 1184-byte report into sev's serde JSON (what guest-components' SNP attester sends). */
export function snpReportToSevJson(report: Uint8Array): SevAttestationReportJson {
  const r = Buffer.from(report.buffer, report.byteOffset, report.byteLength);
  if (r.length !== SNP_REPORT_LEN) throw new SnpReportError(`SEV-SNP report must be ${SNP_REPORT_LEN} bytes, got ${r.length}`);
  const version = r.readUInt32LE(0);
  if (version < 2) throw new SnpReportError(`SEV-SNP report version ${version} is not supported (needs ≥ 2)`);
  const v3plus = version >= 3;
  const v5plus = version >= 5;
  const generation = reportGeneration(r);

  const bytes = (x: readonly [number, number]) => Array.from(r.subarray(x[0], x[0] + x[1]));
  const u32 = (x: readonly [number, number]) => r.readUInt32LE(x[0]);
  const u64 = (x: readonly [number, number], name: string) => safeU64(r.readBigUInt64LE(x[0]), name);
  const tcb = (x: readonly [number, number]): SevTcbVersionJson => {
    const b = r.subarray(x[0], x[0] + 8);
    // sev TcbVersion::from_legacy_bytes / from_turin_bytes
    return generation === 'Turin'
      ? { fmc: b[0]!, bootloader: b[1]!, tee: b[2]!, snp: b[3]!, microcode: b[7]! }
      : { fmc: null, bootloader: b[0]!, tee: b[1]!, snp: b[6]!, microcode: b[7]! };
  };
  // Version is stored build, minor, major.
  const ver = (x: readonly [number, number]): SevVersionJson => ({ major: r[x[0] + 2]!, minor: r[x[0] + 1]!, build: r[x[0]]! });

  return {
    version,
    guest_svn: u32(SNP.guestSvn),
    policy: u64(SNP.policy, 'policy'),
    family_id: bytes(SNP.familyId),
    image_id: bytes(SNP.imageId),
    vmpl: u32(SNP.vmpl),
    sig_algo: u32(SNP.sigAlgo),
    current_tcb: tcb(SNP.currentTcb),
    plat_info: u64(SNP.platInfo, 'plat_info'),
    key_info: u32(SNP.keyInfo),
    report_data: bytes(SNP.reportData),
    measurement: bytes(SNP.measurement),
    host_data: bytes(SNP.hostData),
    id_key_digest: bytes(SNP.idKeyDigest),
    author_key_digest: bytes(SNP.authorKeyDigest),
    report_id: bytes(SNP.reportId),
    report_id_ma: bytes(SNP.reportIdMa),
    reported_tcb: tcb(SNP.reportedTcb),
    cpuid_fam_id: v3plus ? r[SNP.cpuidFamId[0]]! : null,
    cpuid_mod_id: v3plus ? r[SNP.cpuidModId[0]]! : null,
    cpuid_step: v3plus ? r[SNP.cpuidStep[0]]! : null,
    chip_id: bytes(SNP.chipId),
    committed_tcb: tcb(SNP.committedTcb),
    current: ver(SNP.current),
    committed: ver(SNP.committed),
    launch_tcb: tcb(SNP.launchTcb),
    launch_mit_vector: v5plus ? u64(SNP.launchMitVector, 'launch_mit_vector') : null,
    current_mit_vector: v5plus ? u64(SNP.currentMitVector, 'current_mit_vector') : null,
    signature: { r: bytes(SNP.signatureR), s: bytes(SNP.signatureS) },
  };
}

/** JSON numbers are doubles here: refuse a u64 that would silently lose bits rather than send a wrong report. */
function safeU64(v: bigint, name: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new SnpReportError(`SEV-SNP report field ${name} = 0x${v.toString(16)} cannot be represented exactly in JSON by this client`);
  }
  return Number(v);
}

// ---- certificate table (ext-report certs buffer / configfs auxblob) ----

export const SNP_CERT_GUIDS = {
  ARK: 'c0b406a4-a803-4952-9743-3fb6014cd0ae',
  ASK: '4ab7b379-bbac-4fe4-a02f-05aef327c782',
  VCEK: '63da758d-e664-4564-adc5-f4b93be8accd',
  VLEK: 'a8074bc2-a25a-483e-aae6-39c045a0b8a1',
  CRL: '92f81bc3-5811-4d3d-97ff-d19f88dc67ea',
} as const;
type KnownCertType = keyof typeof SNP_CERT_GUIDS;

export interface SnpCertEntry {
  guid: string;
  data: Buffer;
}

/** sev `CertType` serde: a unit variant name, or `{"OTHER": "<uuid>"}`. */
export type SevCertTypeJson = KnownCertType | 'Empty' | { OTHER: string };
export interface SevCertTableEntryJson {
  cert_type: SevCertTypeJson;
  data: number[];
}

const CERT_ENTRY_LEN = 24;

/**
 * Parses the GHCB certificate table: 24-byte entries `{guid[16], offset u32, length u32}` up to an all-zero
 * GUID, offsets from the start of the table. An empty or all-zero buffer means "no certificates".
 */
export function parseSnpCertTable(table: Uint8Array): SnpCertEntry[] {
  const t = Buffer.from(table.buffer, table.byteOffset, table.byteLength);
  const entries: SnpCertEntry[] = [];
  for (let off = 0; ; off += CERT_ENTRY_LEN) {
    if (off + 16 > t.length) {
      if (off === 0 && t.length === 0) return entries;
      throw new SnpReportError('SNP certificate table has no terminating entry');
    }
    const guidBytes = t.subarray(off, off + 16);
    if (guidBytes.every((b) => b === 0)) return entries;
    if (off + CERT_ENTRY_LEN > t.length) throw new SnpReportError('SNP certificate table entry truncated');
    const offset = t.readUInt32LE(off + 16);
    const length = t.readUInt32LE(off + 20);
    if (offset < off + CERT_ENTRY_LEN || offset + length > t.length) {
      throw new SnpReportError(`SNP certificate table entry ${entries.length} points outside the table (offset ${offset}, length ${length})`);
    }
    entries.push({ guid: guidString(guidBytes), data: Buffer.from(t.subarray(offset, offset + length)) });
  }
}

/**
 * The `cert_chain` value guest-components sends: entries in sev's `CertType` order (ARK, VCEK, VLEK, ASK, CRL,
 * OTHER by UUID), or null when the host supplied none. Null rather than `[]`: trustee treats an empty list as
 * "a chain without VCEK/VLEK" (an error) but null as "fetch the VCEK from AMD KDS".
 */
export function snpCertChainJson(entries: readonly SnpCertEntry[]): SevCertTableEntryJson[] | null {
  if (entries.length === 0) return null;
  const typed = entries.map((e) => ({ type: certType(e.guid), e }));
  const rank = (t: SevCertTypeJson) =>
    typeof t === 'object' ? 5 : ({ ARK: 0, VCEK: 1, VLEK: 2, ASK: 3, CRL: 4, Empty: 6 } as const)[t];
  typed.sort((a, b) => {
    const d = rank(a.type) - rank(b.type);
    if (d !== 0) return d;
    if (typeof a.type === 'object' && typeof b.type === 'object') return a.type.OTHER < b.type.OTHER ? -1 : a.type.OTHER > b.type.OTHER ? 1 : 0;
    return 0;
  });
  return typed.map(({ type, e }) => ({ cert_type: type, data: Array.from(e.data) }));
}

function certType(guid: string): SevCertTypeJson {
  for (const [name, g] of Object.entries(SNP_CERT_GUIDS)) if (g === guid) return name as KnownCertType;
  if (guid === '00000000-0000-0000-0000-000000000000') return 'Empty';
  return { OTHER: guid };
}

/** RFC 4122 byte order (what sev's `Uuid::from_bytes` and go-sev read). */
function guidString(b: Uint8Array): string {
  const h = Buffer.from(b).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
