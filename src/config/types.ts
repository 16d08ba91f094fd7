/**
 * The parsed `/etc/coco-decoder/config.toml`. Parsing and validation live in `load.ts`; every other module
 * receives this typed, fully-defaulted object.
 */
import type { LogLevel } from '../util/log.js';

/** KBS `tee` strings coco-decoder has an attester for (kbs-types ≥ 0.14 spelling); attest/attester.ts re-exports it. */
export type TeeType = 'sample' | 'tdx' | 'snp' | 'az-tdx-vtpm' | 'az-snp-vtpm';
export type TeeSelection = 'auto' | TeeType;
export type TeeKeyAlgorithm = 'ec-p256' | 'rsa-oaep-256';
export type KbsProtocol = 'auto' | '0.4.0' | '0.2.0';
/** How the Azure TEEs are spelled at /auth: kbs-types ≥ 0.14 (trustee ≥ v0.16) `az-snp-vtpm`, before `azsnpvtpm`. */
export type TeeNames = 'auto' | 'current' | 'legacy';
export type { LogLevel };

export interface KbsConfig {
  /** Base URL of the KBS, e.g. `https://kbs.example:8080`. Unset: attestation-agent layers fail with a clear message. */
  url: string | undefined;
  /** PEM file with CA certificate(s) trusted for the KBS, in addition to the system CAs. */
  cert: string | undefined;
  /** Trust exactly `cert` for the KBS, not the public/system roots too (pinning). Needs `cert`. */
  certOnly: boolean;
  /** Plain `http://` is refused unless this is true. */
  allowHttp: boolean;
  /** Deadline of every single HTTP request. */
  timeoutMs: number;
  /** Overall budget for getting one key (all retries included). */
  totalTimeoutMs: number;
  teeKeyAlgorithm: TeeKeyAlgorithm;
  /** `auto`: start with 0.4.0 and fall back to 0.2.0 on trustee's version-mismatch 401. */
  protocol: KbsProtocol;
  /** `auto`: legacy names with protocol 0.2.0, current ones with 0.4.0 (set `legacy` for trustee v0.14–v0.15). */
  teeNames: TeeNames;
}

export interface AttestationConfig {
  tee: TeeSelection;
  /** SEV-SNP VMPL requested in the report. */
  snpVmpl: number;
  /** Injectable paths (tests, unusual kernels). */
  configfsTsmRoot: string;
  tdxGuestDevice: string;
  sevGuestDevice: string;
  ccelPath: string;
  /** Where the N-API addon is looked for before falling back to the copy embedded in the executable. */
  addonPath: string;
  /** TPM character device of the Azure CVM vTPM attesters (kernel resource manager). */
  tpmDevice: string;
  /** Azure vTPM evidence format: 2 (trustee ≥ v0.21), 1 (trustee v0.18–v0.20 accept only up to 1). */
  azureEvidenceVersion: 1 | 2;
}

export interface CacheConfig {
  /** tmpfs directory for the token and the key it is bound to (0700, root). */
  dir: string;
  /** Refresh the token this long before its `exp`. */
  refreshMarginSeconds: number;
  /** How long a process waits for another one's attestation before giving up. */
  lockTimeoutMs: number;
}

export interface LogConfig {
  level: LogLevel;
  /** Audit log file: one line per decrypted layer. */
  file: string | undefined;
  /** Also send audit lines to syslog/journald through /dev/log. */
  syslog: boolean;
  /**
   * Send failed layers to syslog even when `syslog` is off (when /dev/log exists). containerd shows our error in
   * the pull error only when no plaintext was written yet; after that, its own extraction error wins.
   */
  syslogFailures: boolean;
  format: 'text' | 'json';
}

export interface IntegrityConfig {
  /**
   * Strict mode: a layer whose private options carry `digest` must decrypt to exactly that sha256, and a layer
   * without one fails. Off by default: containers/image-based encryptors record digests of blobs before
   * recompression, which the decrypted layer then does not match.
   */
  checkPlainDigest: boolean;
}

export interface KeyProviderConfig {
  /** Per-call deadline for external `cmd`/`grpc` key providers. */
  timeoutMs: number;
  /** `coco-decoder keyprovider` keywrap defaults, for clients that send no `keyid=`/`keypath=` parameters. */
  wrapKid: string | undefined;
  wrapKekFile: string | undefined;
}

export interface ContainerdConfig {
  /** containerd's socket for the content-store lookup; `$CONTAINERD_ADDRESS` overrides it. Unset: the default. */
  address: string | undefined;
  /** Look up the layer descriptor through containerd's API when there is no fd-3 payload. */
  lookup: boolean;
  /** Budget of the whole lookup (all calls). */
  timeoutMs: number;
}

export interface Config {
  /** The file it was read from, or undefined when defaults were used (no file). */
  source: string | undefined;
  kbs: KbsConfig;
  attestation: AttestationConfig;
  cache: CacheConfig;
  log: LogConfig;
  keyprovider: KeyProviderConfig;
  integrity: IntegrityConfig;
  containerd: ContainerdConfig;
}

export const DEFAULT_CONFIG_PATH = '/etc/coco-decoder/config.toml';

export function defaultConfig(): Config {
  return {
    source: undefined,
    kbs: {
      url: undefined,
      cert: undefined,
      certOnly: false,
      allowHttp: false,
      timeoutMs: 10_000,
      totalTimeoutMs: 60_000,
      teeKeyAlgorithm: 'ec-p256',
      protocol: 'auto',
      teeNames: 'auto',
    },
    attestation: {
      tee: 'auto',
      snpVmpl: 0,
      configfsTsmRoot: '/sys/kernel/config/tsm/report',
      tdxGuestDevice: '/dev/tdx_guest',
      sevGuestDevice: '/dev/sev-guest',
      ccelPath: '/sys/firmware/acpi/tables/data/CCEL',
      addonPath: '/usr/lib/coco-decoder/tee.node',
      tpmDevice: '/dev/tpmrm0',
      azureEvidenceVersion: 2,
    },
    cache: { dir: '/run/coco-decoder', refreshMarginSeconds: 30, lockTimeoutMs: 60_000 },
    log: { level: 'error', file: undefined, syslog: false, syslogFailures: true, format: 'text' },
    keyprovider: { timeoutMs: 30_000, wrapKid: undefined, wrapKekFile: undefined },
    integrity: { checkPlainDigest: false },
    containerd: { address: undefined, lookup: true, timeoutMs: 10_000 },
  };
}
