/**
 * Intel TDX attester. Evidence is what guest-components' TDX attester sends and trustee's TDX verifier parses:
 *   {"cc_eventlog": <base64 of the trimmed CCEL + end marker> | null, "quote": <base64 of the TD quote>}
 * The quote comes from configfs-tsm (the only upstream way to get a signed quote: `/dev/tdx_guest` only
 * yields a MAC'd TDREPORT). The TDREPORT helper below serves MRCONFIGID/RTMR reads on any kernel ≥ 6.2.
 */
export { padReportData } from './report-data.js';
export { readCcEventlog, trimCcel } from './ccel.js';
import type { AttestationConfig } from '../config/types.js';
import type { Attester } from './attester.js';
import { DecoderError } from '../util/errors.js';
import { tsmGetReport, TsmError, type TsmFs } from './configfs-tsm.js';
import { readCcEventlog } from './ccel.js';
import { padReportData } from './report-data.js';
import { parseTdQuote, parseTdReport, type TdReport } from './tdx-quote.js';
import { abortable } from '../util/abortable.js';
import { exists } from '../util/exists.js';

/** Test seams. */
export interface TdxAttesterOptions {
  tsmFs?: TsmFs;
  /** Cross-process lock for configfs-tsm; `null` disables it. */
  tsmLockPath?: string | null;
  tsmTimeoutMs?: number;
}

export function createTdxAttester(config: AttestationConfig, options: TdxAttesterOptions = {}): Attester {
  return {
    tee: 'tdx',
    hardware: true,
    getEvidence(reportData: Uint8Array, signal?: AbortSignal): Promise<unknown> {
      return abortable(tdxEvidence(reportData), signal, 'the TDX quote');
    },
  };

  async function tdxEvidence(reportData: Uint8Array): Promise<unknown> {
    {
      const inblob = padReportData(reportData, 'TDX');
      let quote: Buffer;
      try {
        ({ outblob: quote } = await tsmGetReport({
          root: config.configfsTsmRoot,
          provider: 'tdx_guest',
          inblob,
          lockPath: options.tsmLockPath,
          timeoutMs: options.tsmTimeoutMs,
          fs: options.tsmFs,
        }));
      } catch (err) {
        if (err instanceof TsmError && err.code === 'TSM_UNAVAILABLE') {
          const hasDevice = await exists(config.tdxGuestDevice);
          throw new DecoderError(
            `cannot get a TDX quote: ${err.message}` +
              (hasDevice
                ? `; ${config.tdxGuestDevice} exists but upstream kernels only return an unsigned TDREPORT through it, so a quote needs configfs-tsm (mount configfs, or use a kernel with TSM_REPORTS)`
                : ''),
            { cause: err },
          );
        }
        throw err;
      }
      checkQuoteReportData(quote, inblob);
      return { cc_eventlog: await readCcEventlog(config.ccelPath), quote: quote.toString('base64') };
    }
  }
}

/** Parses the quote and refuses to send one whose REPORTDATA is not ours (stale entry, race, broken host). */
export function checkQuoteReportData(quote: Uint8Array, expected: Buffer): void {
  const parsed = parseTdQuote(quote);
  if (!parsed.body.reportData.equals(expected)) {
    throw new DecoderError(
      `TDX quote REPORTDATA ${parsed.body.reportData.toString('hex')} does not match the runtime-data hash ${expected.toString('hex')}; refusing to send it`,
    );
  }
}

// ---- TDREPORT via /dev/tdx_guest ----

/**
 * TDX_CMD_GET_REPORT0: the local, MAC'd TDREPORT (MRCONFIGID, RTMRs) for `reportData` (≤ 64 bytes, padded).
 * Loads the addon on first use.
 */
export async function getTdReport(config: AttestationConfig, reportData: Uint8Array = new Uint8Array(0)): Promise<TdReport> {
  const { loadTeeAddon, tdxGetReport0 } = await import('./native.js');
  const addon = loadTeeAddon(config);
  const raw = await tdxGetReport0(addon, config.tdxGuestDevice, padReportData(reportData, 'TDX'));
  return parseTdReport(raw);
}
