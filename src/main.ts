/**
 * Entry point of the single executable. With no subcommand it is a containerd stream processor, invoked exactly
 * as `ctd-decoder` is; subcommands are operator tools. Each subcommand module is imported lazily so the
 * per-layer path loads only what it needs.
 */
import { describeError } from './util/errors.js';
import { boundedLine } from './util/quote.js';

type Subcommand = (argv: string[]) => Promise<number>;

const SUBCOMMANDS: Record<string, () => Promise<Subcommand>> = {
  evidence: async () => (await import('./cli/evidence.js')).run,
  doctor: async () => (await import('./cli/doctor.js')).run,
  encrypt: async () => (await import('./cli/encrypt.js')).run,
  keyprovider: async () => (await import('./cli/keyprovider.js')).run,
};

async function main(argv: string[]): Promise<number> {
  const first = argv[0];
  if (first !== undefined && Object.hasOwn(SUBCOMMANDS, first)) {
    const run = await SUBCOMMANDS[first]!();
    return run(argv.slice(1));
  }
  const { run } = await import('./cli/decode.js');
  return run(argv);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`${boundedLine(`coco-decoder: ${describeError(err)}`)}\n`);
    process.exitCode = 1;
  },
);
