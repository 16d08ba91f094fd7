/**
 * `coco-decoder evidence [--config PATH] [--tee T] [--report-data HEX]`: prints the TEE evidence JSON the
 * decoder would send to the KBS (`primary_evidence`), like attestation-agent's `/aa/evidence`, so operators can
 * check a real CVM (device access, configfs-tsm, quote service, certificates) without a KBS.
 *
 * `--report-data` is the raw report data, at most 64 bytes as hex; TDX/SNP zero-pad it to 64 as for a KBS
 * session. Default: 48 zero bytes (the size of the SHA-384 runtime-data digest a KBS session binds), so the
 * output is recognisably not bound to any session. stdout carries only the JSON; the chosen TEE goes to stderr.
 */
import { parseArgs } from 'node:util';
import type { TeeSelection } from '../config/types.js';
import { TEE_TYPES } from '../attest/attester.js';
import { DecoderError, describeError } from '../util/errors.js';
import { boundedLine } from '../util/quote.js';

const USAGE =
  'usage: coco-decoder evidence [--config PATH] [--tee auto|tdx|snp|az-tdx-vtpm|az-snp-vtpm|sample] [--report-data HEX]';
const DEFAULT_REPORT_DATA_LEN = 48;
const MAX_REPORT_DATA_LEN = 64;

export async function run(argv: string[]): Promise<number> {
  let opts: { config?: string; tee?: string; 'report-data'?: string; help?: boolean };
  try {
    opts = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: 'string' },
        tee: { type: 'string' },
        'report-data': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (err) {
    process.stderr.write(`${boundedLine(`coco-decoder evidence: ${describeError(err)}`)}\n${USAGE}\n`);
    return 2;
  }
  if (opts.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  try {
    const reportData = parseReportData(opts['report-data']);
    const tee = parseTee(opts.tee);
    const { loadConfig } = await import('../config/load.js');
    const config = await loadConfig(opts.config === undefined ? { env: process.env } : { path: opts.config, env: process.env });
    const attestation = { ...config.attestation, tee: tee ?? config.attestation.tee };
    const { createAttester } = await import('../attest/select.js');
    const attester = await createAttester(attestation);
    const evidence = await attester.getEvidence(reportData);
    process.stderr.write(`coco-decoder evidence: tee=${attester.tee}${attester.hardware ? '' : ' (NOT hardware evidence)'}\n`);
    process.stdout.write(`${JSON.stringify(evidence)}\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`${boundedLine(`coco-decoder evidence: ${describeError(err)}`)}\n`);
    return 1;
  }
}

function parseReportData(hex: string | undefined): Uint8Array {
  if (hex === undefined) return new Uint8Array(DEFAULT_REPORT_DATA_LEN);
  const clean = hex.startsWith('0x') ? hex.slice(2) : hex;
  if (clean.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(clean)) {
    throw new DecoderError(`--report-data must be hex (an even number of 0-9a-f digits), got ${JSON.stringify(hex)}`);
  }
  const bytes = Buffer.from(clean, 'hex');
  if (bytes.length > MAX_REPORT_DATA_LEN) {
    throw new DecoderError(`--report-data is ${bytes.length} bytes; at most ${MAX_REPORT_DATA_LEN} fit in REPORTDATA`);
  }
  return bytes;
}

function parseTee(tee: string | undefined): TeeSelection | undefined {
  if (tee === undefined) return undefined;
  if (tee === 'auto' || (TEE_TYPES as readonly string[]).includes(tee)) return tee as TeeSelection;
  throw new DecoderError(`--tee ${JSON.stringify(tee)} is not one of auto, ${TEE_TYPES.join(', ')}`);
}
