/**
 * AMD SEV-SNP attester. Evidence is what guest-components' SNP attester sends and trustee's SNP verifier parses:
 *   {"attestation_report": <sev crate serde JSON>, "cert_chain": [{"cert_type": …, "data": [u8…]}] | null}
 * Report source: configfs-tsm (provider `sev_guest`, `privlevel` = VMPL, `auxblob` = certificate table) when
 * the kernel has it, otherwise `SNP_GET_EXT_REPORT` on /dev/sev-guest through the addon (kernels < 6.7).
 */
import type { AttestationConfig } from '../config/types.js';
import type { Attester } from './attester.js';
import { DecoderError } from '../util/errors.js';
import { tsmGetReport, TsmError, type TsmFs } from './configfs-tsm.js';
import { padReportData } from './report-data.js';
import {
  parseSnpCertTable,
  parseSnpReport,
  reportFromResponse,
  snpCertChainJson,
  snpReportToSevJson,
  type SnpCertEntry,
} from './snp-report.js';
import type { TeeAddon } from './native.js';
import { abortable } from '../util/abortable.js';
import { exists } from '../util/exists.js';

/** Test seams. */
export interface SnpAttesterOptions {
  tsmFs?: TsmFs;
  tsmLockPath?: string | null;
  tsmTimeoutMs?: number;
  /** Replaces the addon loader (tests pass a double or a pre-loaded addon). */
  loadAddon?: () => TeeAddon | Promise<TeeAddon>;
}

export function createSnpAttester(config: AttestationConfig, options: SnpAttesterOptions = {}): Attester {
  const vmpl = config.snpVmpl;
  if (!(Number.isInteger(vmpl) && vmpl >= 0 && vmpl <= 3)) {
    throw new DecoderError(`attestation.snp_vmpl must be 0..3, got ${vmpl}`);
  }
  return {
    tee: 'snp',
    hardware: true,
    getEvidence(reportData: Uint8Array, signal?: AbortSignal): Promise<unknown> {
      return abortable(snpEvidence(reportData), signal, 'the SEV-SNP report');
    },
  };

  async function snpEvidence(reportData: Uint8Array): Promise<unknown> {
    {
      const userData = padReportData(reportData, 'SEV-SNP');
      const { report, certs } = await acquire(config, options, userData, vmpl);
      const parsed = parseSnpReport(report);
      if (!parsed.reportData.equals(userData)) {
        throw new DecoderError(
          `SEV-SNP report REPORT_DATA ${parsed.reportData.toString('hex')} does not match the runtime-data hash ${userData.toString('hex')}; refusing to send it`,
        );
      }
      if (parsed.vmpl !== vmpl) {
        throw new DecoderError(`SEV-SNP report is for VMPL ${parsed.vmpl}, requested ${vmpl}; refusing to send it`);
      }
      return { attestation_report: snpReportToSevJson(report), cert_chain: snpCertChainJson(certs) };
    }
  }
}

async function acquire(
  config: AttestationConfig,
  options: SnpAttesterOptions,
  userData: Buffer,
  vmpl: number,
): Promise<{ report: Buffer; certs: SnpCertEntry[] }> {
  try {
    const r = await tsmGetReport({
      root: config.configfsTsmRoot,
      provider: 'sev_guest',
      inblob: userData,
      privlevel: vmpl,
      auxblob: true,
      lockPath: options.tsmLockPath,
      timeoutMs: options.tsmTimeoutMs,
      fs: options.tsmFs,
    });
    return { report: r.outblob, certs: parseSnpCertTable(r.auxblob ?? Buffer.alloc(0)) };
  } catch (err) {
    // Only "configfs-tsm cannot serve SNP here" falls back to the device; every other failure is real.
    if (!(err instanceof TsmError && (err.code === 'TSM_UNAVAILABLE' || err.code === 'TSM_NO_PROVIDER'))) throw err;
    if (!(await exists(config.sevGuestDevice))) {
      throw new DecoderError(
        `cannot get an SEV-SNP report: ${err.message}, and ${config.sevGuestDevice} does not exist (not an SEV-SNP guest, sev-guest driver not loaded, or the device is not passed into this container)`,
        { cause: err },
      );
    }
  }
  const { loadTeeAddon, snpGetExtReport } = await import('./native.js');
  const addon = options.loadAddon ? await options.loadAddon() : loadTeeAddon(config);
  const { response, certs } = await snpGetExtReport(addon, config.sevGuestDevice, userData, vmpl);
  return { report: reportFromResponse(response), certs: parseSnpCertTable(certs) };
}
