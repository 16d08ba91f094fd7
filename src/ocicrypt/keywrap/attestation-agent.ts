/**
 * `provider.attestation-agent`: layers wrapped by CoCo's coco_keyprovider, unwrapped in-process (no
 * attestation-agent daemon, no CDH). The annotation packet names a KBS resource (the KEK); the KEK comes from the
 * KBS after attestation (src/kbs/key-source.ts, token cached across layer processes) and AES-256-GCM-unwraps the
 * private layer options. Loaded lazily, only for layers carrying this annotation.
 */
import { createDecipheriv } from 'node:crypto';
import type { Config, LogLevel } from '../../config/types.js';
import { parseAnnotationPacket } from './attestation-agent-packet.js';
import type { AnnotationPacket } from './attestation-agent-packet.js';
import { createKeySource } from '../../kbs/key-source.js';
import type { KeySource, ResourceStats } from '../../kbs/key-source.js';
import { parseResourceUri } from '../../kbs/resource-uri.js';
import { DecoderError, oneLine } from '../../util/errors.js';
import { boundedLine } from '../../util/quote.js';
import type { DecryptParameters, KeyWrapper, UnwrapContext } from './keywrapper.js';

export const ATTESTATION_AGENT_SCHEME = 'provider.attestation-agent';
const KEK_BYTES = 32;
const GCM_TAG_BYTES = 16;

export interface AttestationAgentOptions {
  /** Non-fatal problems (token cache, lock). Default: stderr when `log.level` is warn or more verbose. */
  onWarning?: (message: string) => void;
  /** Per-key KBS facts (requests sent, attested or cached, lock wait), e.g. for an audit log or the benchmark. */
  onStats?: (stats: ResourceStats & { kid: string }) => void;
  env?: NodeJS.ProcessEnv;
}

export function createAttestationAgentWrapper(getConfig: () => Promise<Config>, opts: AttestationAgentOptions = {}): KeyWrapper {
  let source: { config: Config; keySource: KeySource } | undefined;

  function keySourceFor(config: Config): KeySource {
    if (source?.config !== config) {
      const level = config.log.level;
      source = {
        config,
        keySource: createKeySource({
          config,
          env: opts.env ?? process.env,
          onWarning: opts.onWarning ?? ((m) => logLine(level, 'warn', m)),
        }),
      };
    }
    return source.keySource;
  }

  return {
    scheme: ATTESTATION_AGENT_SCHEME,
    supported: true,
    // The key comes from the KBS, not from decryption parameters: always worth trying, never a "private key".
    noPossibleKeys: (_params: DecryptParameters) => false,
    hasPrivateKeys: (_params: DecryptParameters) => false,

    async unwrap(entry: Buffer, ctx: UnwrapContext): Promise<Buffer | null> {
      ctx.audit.scheme = ATTESTATION_AGENT_SCHEME;
      const packet = parseAnnotationPacket(entry);
      const uri = parseResourceUri(packet.kid);
      ctx.audit.kid = uri.uri;
      if (ctx.signal.aborted) throw new DecoderError(`fetching ${uri.uri} from the KBS was abandoned: the layer deadline passed`);

      const config = await getConfig();
      if (config.kbs.url === undefined) {
        throw new DecoderError(
          `layer key ${uri.uri} must come from a KBS, but none is configured: set kbs.url in ` +
            `${config.source ?? '/etc/coco-decoder/config.toml (file not present)'}`,
        );
      }
      const result = await keySourceFor(config).getResource(uri, ctx.signal);
      const kek = result.data;
      try {
        ctx.audit.tokenFromCache = result.tokenFromCache;
        const { data: _data, ...stats } = result;
        if (opts.onStats) opts.onStats({ ...stats, kid: uri.uri });
        else if (config.log.level === 'debug') {
          logLine(config.log.level, 'debug', describeStats(uri.uri, stats));
        }
        if (kek.length !== KEK_BYTES) {
          throw new DecoderError(`the KBS resource ${uri.uri} is ${kek.length} bytes, not a ${KEK_BYTES}-byte AES-256 key encryption key`);
        }
        return unwrapLayerKey(kek, packet, uri.uri);
      } finally {
        kek.fill(0);
      }
    },
  };
}

/** AES-256-GCM (12-byte IV, tag appended, no AAD) as coco_keyprovider writes it (the only wrap type accepted). */
function unwrapLayerKey(kek: Buffer, p: AnnotationPacket, kid: string): Buffer {
  const body = p.wrappedData.subarray(0, p.wrappedData.length - GCM_TAG_BYTES);
  const tag = p.wrappedData.subarray(p.wrappedData.length - GCM_TAG_BYTES);
  const d = createDecipheriv('aes-256-gcm', kek, p.iv);
  d.setAuthTag(tag);
  const head = d.update(body);
  try {
    return Buffer.concat([head, d.final()]);
  } catch {
    throw new DecoderError(
      `the key ${kid} from the KBS does not unwrap this layer's key (AES-256-GCM authentication failed): ` +
        'the KBS holds a different key under that path than the one the image was encrypted with',
    );
  } finally {
    head.fill(0); // the concatenated copy is what the caller gets (and zeroes)
  }
}

function describeStats(kid: string, s: ResourceStats): string {
  const r = s.requests;
  return (
    `kbs ${kid}: ${s.attested ? 'attested' : 'cached token'}, requests auth=${r.auth} attest=${r.attest} ` +
    `resource=${r.resource} retries=${r.retries}, lock wait ${s.lockWaitMs} ms, protocol ${s.dialect ?? '?'}, ${s.elapsedMs} ms`
  );
}

const LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];

/**
 * containerd turns a failing stream processor's whole stderr into the pull error, so extra lines are written only
 * when the operator asked for them with `log.level`.
 */
function logLine(configured: LogLevel, level: LogLevel, message: string): void {
  if (LEVELS.indexOf(level) > LEVELS.indexOf(configured)) return;
  process.stderr.write(`${boundedLine(`coco-decoder: ${level}: ${oneLine(message)}`)}\n`);
}
