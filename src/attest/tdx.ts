/**
 * Intel TDX attester. Evidence is what guest-components' TDX attester sends and trustee's TDX verifier parses:
 *   {"cc_eventlog": <base64 of the trimmed CCEL + end marker> | null, "quote": <base64 of the TD quote>}
 * The quote comes from configfs-tsm (the only upstream way to get a signed quote: `/dev/tdx_guest` only
 * yields a MAC'd TDREPORT). The TDREPORT helper below serves MRCONFIGID/RTMR reads on any kernel ≥ 6.2.
 */
import { promises as fsp } from 'node:fs';
import type { AttestationConfig } from '../config/types.js';
import type { Attester } from './attester.js';
import { DecoderError } from '../util/errors.js';
import { tsmGetReport, TsmError, type TsmFs } from './configfs-tsm.js';
import { parseTdQuote, parseTdReport, TDX_REPORT_DATA_LEN, type TdReport } from './tdx-quote.js';
import { abortable } from '../util/abortable.js';

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
        if (err instanceof TsmError && err.kind === 'TSM_UNAVAILABLE') {
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

/** Zero-pads the runtime-data digest to the 64-byte REPORTDATA field (trustee pads the expected value alike). */
export function padReportData(reportData: Uint8Array, tee: string): Buffer {
  if (reportData.length > TDX_REPORT_DATA_LEN) {
    throw new DecoderError(`${tee} report data must be at most ${TDX_REPORT_DATA_LEN} bytes, got ${reportData.length}`);
  }
  const out = Buffer.alloc(TDX_REPORT_DATA_LEN);
  out.set(reportData);
  return out;
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

// ---- CCEL (ACPI CC event log) ----

/** End-of-log marker appended by guest-components (`EL_END_FLAG`). */
const EVENTLOG_END = Buffer.alloc(8, 0xff);
const DIGEST_LEN: Record<number, number> = { 0x0b: 32, 0x0c: 48, 0x0d: 64, 0x12: 32 };

/**
 * `cc_eventlog` as guest-components builds it (`attester/src/utils.rs read_eventlog`, without the AA event
 * log, which coco-decoder never writes): the CCEL table data trimmed at its terminator, plus 8×0xFF, base64;
 * `null` when there is no CCEL.
 */
export async function readCcEventlog(ccelPath: string): Promise<string | null> {
  let raw: Buffer;
  try {
    raw = await fsp.readFile(ccelPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new DecoderError(`cannot read the CC event log ${ccelPath}: ${(err as Error).message}`, { cause: err });
  }
  let trimmed: Buffer;
  try {
    trimmed = trimCcel(raw);
  } catch (err) {
    throw new DecoderError(`invalid CC event log ${ccelPath}: ${(err as Error).message}`, { cause: err });
  }
  return Buffer.concat([trimmed, EVENTLOG_END]).toString('base64');
}

/**
 * Cuts the CCEL at its end: after the TCG spec-ID header event, walk crypto-agile events
 * (`mr_index u32, event_type u32, digests{count u32, (alg u16, digest)…}, size u32, data`) until an 8-byte
 * all-0xFF or all-0x00 word. Same algorithm and errors as guest-components' `trim_ccel`.
 */
export function trimCcel(ccel: Buffer): Buffer {
  let i = 4;
  const u32 = (at: number, what: string) => {
    if (ccel.length < at + 4) throw new Error(`not enough length (${what})`);
    return ccel.readUInt32LE(at);
  };
  const eventType = u32(i, 'first event type');
  i += 4 + 20; // event type, SHA-1 digest of the TCG_PCClientPCREvent header
  if (eventType === 0x3) {
    // EV_NO_ACTION: the spec-ID event
    const size = u32(i, 'spec-ID event size');
    i += 4 + size;
  }
  for (;;) {
    if (ccel.length < i + 8) throw new Error('no end marker');
    const word = ccel.subarray(i, i + 8);
    if (word.every((b) => b === 0xff) || word.every((b) => b === 0)) return Buffer.from(ccel.subarray(0, i));
    i += 8; // target MR, event type
    const count = u32(i, 'digest count');
    i += 4;
    for (let d = 0; d < count; d++) {
      if (ccel.length < i + 2) throw new Error('no digest algorithm');
      const alg = ccel.readUInt16LE(i);
      const len = DIGEST_LEN[alg];
      if (len === undefined) throw new Error(`unsupported digest algorithm 0x${alg.toString(16)}`);
      i += 2 + len;
    }
    const size = u32(i, 'event data size');
    i += 4 + size;
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

async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}
