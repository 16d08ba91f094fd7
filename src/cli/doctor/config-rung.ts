/** Rung 1: the coco-decoder config file parses and validates (the same loader the decoder uses). */
import { loadConfig } from '../../config/load.js';
import { DEFAULT_CONFIG_PATH } from '../../config/types.js';
import type { Config } from '../../config/types.js';
import { describeError } from '../../util/errors.js';
import { fail, pass } from './rung.js';
import type { RungResult } from './rung.js';

export interface ConfigOutcome {
  result: RungResult;
  config?: Config;
}

export async function checkConfig(path: string | undefined, env: NodeJS.ProcessEnv): Promise<ConfigOutcome> {
  let config: Config;
  try {
    config = await loadConfig(path === undefined ? { env } : { path, env });
  } catch (err) {
    const message = describeError(err);
    const fix = /file not found/.test(message)
      ? 'create the file, or point --config / COCO_DECODER_CONFIG at the right one'
      : 'correct the file: unknown tables, unknown keys and bad values are errors (see the comments in the packaged config.toml)';
    return { result: fail('config', message, fix) };
  }
  const where = config.source ?? `defaults (no ${DEFAULT_CONFIG_PATH})`;
  const facts = [`kbs ${config.kbs.url ?? 'not set'}`, `tee ${config.attestation.tee}`, `cache ${config.cache.dir}`];
  return { result: pass('config', `${where} (${facts.join(', ')})`), config };
}
