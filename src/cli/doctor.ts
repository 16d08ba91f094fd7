/**
 * `coco-decoder doctor [--config FILE] [--kid kbs:///repo/type/tag] [--containerd-config FILE] [--allow-sample] [--json]`
 *
 * The CoCo debugging ladder in one command: config → TEE evidence → KBS (reachability, TLS, protocol dialect) →
 * attestation token → the `--kid` resource → containerd stream processors → CRI payload → token cache directory →
 * audit log. One line per rung, `✓`/`✗` (with the fix) or `-` when skipped; a rung whose prerequisite failed is
 * skipped, independent ones still run. Exit 0 only when no rung failed. Never prints key material or tokens.
 */
import { parseArgs } from 'node:util';
import { defaultConfig } from '../config/types.js';
import type { Attester } from '../attest/attester.js';
import type { Attestation } from '../kbs/client.js';
import type { KbsHttp } from '../kbs/http.js';
import { parseResourceUri } from '../kbs/resource-uri.js';
import type { ResourceUri } from '../kbs/resource-uri.js';
import { describeError } from '../util/errors.js';
import { boundedLine } from '../util/quote.js';
import { VERSION } from '../version.js';
import { checkAttestation } from './doctor/attestation-rung.js';
import { checkCache } from './doctor/cache-rung.js';
import { checkConfig } from './doctor/config-rung.js';
import { DEFAULT_CONTAINERD_CONFIG } from './doctor/containerd-config.js';
import { checkContainerd } from './doctor/containerd-rung.js';
import { checkKbs } from './doctor/kbs-rung.js';
import { checkLog } from './doctor/log-rung.js';
import { checkResource } from './doctor/resource-rung.js';
import { formatRung, skip } from './doctor/rung.js';
import type { RungResult } from './doctor/rung.js';
import { checkTee } from './doctor/tee-rung.js';

export type { RungResult } from './doctor/rung.js';

const USAGE = `Usage: coco-decoder doctor [options]

Checks, one line each, everything an encrypted image pull depends on: the config file, the TEE and its
evidence, the KBS (reachable, TLS, protocol), attestation (a token and its expiry), the --kid resource,
containerd's stream processors and CRI settings, the token cache directory and the audit log.
Exit status 0 only when no check failed. Key material and tokens are never printed.

Options:
  --config FILE             coco-decoder config (default: $COCO_DECODER_CONFIG, else /etc/coco-decoder/config.toml)
  --kid URI                 also fetch this KBS resource (kbs:///repository/type/tag) and check it is a 32-byte key
  --containerd-config FILE  containerd config to inspect (default: ${DEFAULT_CONTAINERD_CONFIG})
  --allow-sample            accept the "sample" TEE (no hardware evidence) as passing: test setups only
  --json                    print one JSON object instead of lines
  -h, --help                print this help
`;

export interface DoctorOptions {
  configPath?: string;
  kid?: ResourceUri;
  containerdConfig: string;
  allowSample: boolean;
  env: NodeJS.ProcessEnv;
  /** Test seam for the log rung (default /dev/log). */
  syslogSocket?: string;
}

/** Runs every rung in order; `onResult` sees each as soon as it is known (the text output streams). */
export async function runDoctor(o: DoctorOptions, onResult: (r: RungResult) => void = () => undefined): Promise<RungResult[]> {
  const results: RungResult[] = [];
  const add = (r: RungResult): void => {
    results.push(r);
    onResult(r);
  };

  const { result: configResult, config } = await checkConfig(o.configPath, o.env);
  add(configResult);

  if (config === undefined) {
    for (const rung of ['tee', 'kbs', 'attestation', 'resource']) add(skip(rung, 'needs a valid config'));
  } else {
    let http: KbsHttp | undefined;
    try {
      const tee = await checkTee(config, { allowSample: o.allowSample });
      add(tee.result);
      const attester: Attester | undefined = tee.attester;
      // The /auth probe names a TEE; without an attester, the configured one (or `sample`, which every KBS parses).
      const probeTee = attester?.tee ?? (config.attestation.tee === 'auto' ? 'sample' : config.attestation.tee);
      const kbs = await checkKbs(config, probeTee, o.env);
      add(kbs.result);
      http = kbs.http;

      let attestation: Attestation | undefined;
      if (kbs.result.status !== 'pass' || http === undefined) add(skip('attestation', 'needs a reachable KBS'));
      else if (attester === undefined) add(skip('attestation', 'needs TEE evidence'));
      else {
        const a = await checkAttestation(config, http, attester, kbs.dialect);
        add(a.result);
        attestation = a.attestation;
      }

      if (o.kid === undefined) add(skip('resource', 'no --kid given'));
      else if (attestation === undefined || http === undefined) add(skip('resource', `needs a token (to fetch ${o.kid.uri})`));
      else add(await checkResource(config, http, attestation, o.kid));
    } finally {
      await http?.close();
    }
  }

  for (const r of await checkContainerd({ configPath: o.containerdConfig, env: o.env, decoderConfig: config?.source, lookup: { enabled: (config ?? defaultConfig()).containerd.lookup, address: (config ?? defaultConfig()).containerd.address, timeoutMs: (config ?? defaultConfig()).containerd.timeoutMs } })) add(r);
  add(await checkCache(config?.cache.dir ?? defaultConfig().cache.dir, config !== undefined));
  add(config === undefined ? skip('log', 'needs a valid config') : await checkLog(config, { env: o.env, syslogSocket: o.syslogSocket }));
  return results;
}

export async function run(argv: string[]): Promise<number> {
  let values: { config?: string; kid?: string; 'containerd-config'?: string; json?: boolean; 'allow-sample'?: boolean; help?: boolean };
  let kid: ResourceUri | undefined;
  try {
    values = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: 'string' },
        kid: { type: 'string' },
        'containerd-config': { type: 'string' },
        json: { type: 'boolean' },
        'allow-sample': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
    if (values.kid !== undefined) kid = parseResourceUri(values.kid);
  } catch (err) {
    process.stderr.write(`${boundedLine(`coco-decoder doctor: ${describeError(err)} (see --help)`)}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const json = values.json === true;
  const options: DoctorOptions = {
    configPath: values.config,
    kid,
    containerdConfig: values['containerd-config'] ?? DEFAULT_CONTAINERD_CONFIG,
    allowSample: values['allow-sample'] === true,
    env: process.env,
  };
  const results = await runDoctor(options, json ? undefined : (r) => process.stdout.write(`${formatRung(r)}\n`));
  const failed = results.filter((r) => r.status === 'fail');
  if (json) {
    process.stdout.write(`${JSON.stringify({ version: VERSION, ok: failed.length === 0, rungs: results })}\n`);
  } else {
    const names = failed.map((r) => r.rung).join(', ');
    process.stdout.write(failed.length === 0 ? 'all checks passed\n' : `${failed.length} check${failed.length > 1 ? 's' : ''} failed: ${names}\n`);
  }
  return failed.length === 0 ? 0 : 1;
}
