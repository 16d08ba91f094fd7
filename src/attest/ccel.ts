/**
 * The ACPI CC event log (CCEL) that TDX evidence carries as `cc_eventlog`, read and trimmed as guest-components
 * does, so trustee can replay it against the quote's RTMRs.
 */
import { promises as fsp } from 'node:fs';
import { DecoderError } from '../util/errors.js';

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
    if (ccel.length < at + 4) throw new DecoderError(`not enough length (${what})`);
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
    if (ccel.length < i + 8) throw new DecoderError('no end marker');
    const word = ccel.subarray(i, i + 8);
    if (word.every((b) => b === 0xff) || word.every((b) => b === 0)) return Buffer.from(ccel.subarray(0, i));
    i += 8; // target MR, event type
    const count = u32(i, 'digest count');
    i += 4;
    for (let d = 0; d < count; d++) {
      if (ccel.length < i + 2) throw new DecoderError('no digest algorithm');
      const alg = ccel.readUInt16LE(i);
      const len = DIGEST_LEN[alg];
      if (len === undefined) throw new DecoderError(`unsupported digest algorithm 0x${alg.toString(16)}`);
      i += 2 + len;
    }
    const size = u32(i, 'event data size');
    i += 4 + size;
  }
}
