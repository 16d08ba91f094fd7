/**
 * ctd-decoder's command line, parsed as Go's `flag`/urfave packages parse it, so containerd configs written for
 * ctd-decoder work unchanged.
 */
import type { LogLevel } from '../util/log.js';
import { LOG_LEVELS, isLogLevel } from '../util/log.js';
import { DecoderError } from '../util/errors.js';

export interface DecodeArgs {
  keysPath: string | undefined;
  configPath: string | undefined;
  logLevel: LogLevel | undefined;
  help: boolean;
  version: boolean;
}

const STRING_FLAGS = new Set(['decryption-keys-path', 'config', 'log-level']);
const BOOL_FLAGS = new Set(['help', 'h', 'version', 'v']);

function parseBool(name: string, value: string): boolean {
  if (/^(1|t|true)$/i.test(value)) return true;
  if (/^(0|f|false)$/i.test(value)) return false;
  throw new DecoderError(`invalid boolean value "${value}" for -${name}`);
}

/**
 * Go `flag`/urfave syntax: `-name v`, `--name v`, `-name=v`, `--name=v`; the last occurrence wins; parsing stops at
 * the first positional argument or `--`; positional arguments are ignored except urfave's `help`/`h`.
 */
export function parseDecodeArgs(argv: readonly string[]): DecodeArgs {
  const args: DecodeArgs = { keysPath: undefined, configPath: undefined, logLevel: undefined, help: false, version: false };
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      i++;
      break;
    }
    if (arg.length < 2 || !arg.startsWith('-')) break;
    const body = arg.startsWith('--') ? arg.slice(2) : arg.slice(1);
    const eq = body.indexOf('=');
    const name = eq >= 0 ? body.slice(0, eq) : body;
    if (name === '' || name.startsWith('-')) throw new DecoderError(`bad flag syntax: ${arg}`);
    if (BOOL_FLAGS.has(name)) {
      const on = eq >= 0 ? parseBool(name, body.slice(eq + 1)) : true;
      if (name === 'help' || name === 'h') args.help = on;
      else args.version = on;
      continue;
    }
    if (!STRING_FLAGS.has(name)) throw new DecoderError(`flag provided but not defined: -${name}`);
    let value: string;
    if (eq >= 0) value = body.slice(eq + 1);
    else if (i + 1 < argv.length) value = argv[++i]!;
    else throw new DecoderError(`flag needs an argument: -${name}`);
    if (name === 'decryption-keys-path') args.keysPath = value;
    else if (name === 'config') args.configPath = value;
    else {
      if (!isLogLevel(value)) {
        throw new DecoderError(`invalid value "${value}" for -log-level: use ${LOG_LEVELS.join(', ')}`);
      }
      args.logLevel = value;
    }
  }
  const first = argv[i];
  if (first === 'help' || first === 'h') args.help = true;
  return args;
}
