/**
 * Stream-processor mode: what containerd runs for every encrypted layer, as it runs `ctd-decoder` (containerd `diff/stream_processor.go`). The
 * payload (layer descriptor + decrypt parameters) comes on fd 3, ciphertext on stdin, plaintext goes to stdout.
 * Every failure is one line on stderr and exit code 1. Imports are kept light: this starts once per layer, and
 * the modules of the decoding path (node:crypto, node:net, streams) are loaded only when a layer is decoded, not
 * for --version/--help or argument errors.
 */
import { existsSync, fstatSync } from 'node:fs';
import { DEFAULT_CONFIG_PATH, defaultConfig } from '../config/types.js';
import type { Config } from '../config/types.js';
import type { LayerDecipher, LayerDecipherOptions } from '../ocicrypt/layer-decipher.js';
import type { DecoderPayload, LayerDescriptor, PayloadParameters } from '../streamprocessor/payload.js';
import type { StdinHead } from '../streamprocessor/stdin-head.js';
import type { DecryptParameters, UnwrapAudit } from '../ocicrypt/keywrap/keywrapper.js';
import { mergeParameters, zeroParameters } from '../ocicrypt/decrypt-parameters.js';
import { DecoderError, describeError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { boundedLine, quoteUntrusted } from '../util/quote.js';
import type { Logger } from '../util/log.js';
import { VERSION } from '../version.js';
import { parseDecodeArgs, type DecodeArgs } from './decode-args.js';

type DecodePath = typeof import('./decode-path.js');

/** argv[0] of the hidden stdout-holding mode (see hold-stdout.ts; that module is loaded only on failure). Not a user flag. */
const HOLD_STDOUT_ARG = '__coco-decoder-hold-stdout';

/** Unwrapping may attest to a KBS or run key providers; it must still end. Extended to the configured budgets. */
const UNWRAP_DEADLINE_MS = 120_000;
/** Plaintext that may be queued ahead of a slow reader of stdout (bounded memory, keeps the CPU busy meanwhile). */
const STDOUT_BUFFER_BYTES = 1024 * 1024;
/** Once `run` has settled, a leaked handle must not keep the process (and containerd's unpack) waiting. */
const EXIT_GRACE_MS = 5_000;

/** As in config/load.ts (not imported from there: that module pulls in the TOML parser). */
const CONFIG_ENV = 'COCO_DECODER_CONFIG';

export const USAGE = `Usage: coco-decoder [options]          (containerd stream processor, drop-in for ctd-decoder)
       coco-decoder evidence [options]  (print this TEE's attestation evidence)
       coco-decoder doctor [options]    (check config, TEE, KBS, attestation, containerd and cache setup)
       coco-decoder encrypt [options] oci:SRC oci:DST  (encrypt an image for the attestation-agent provider)
       coco-decoder keyprovider [--grpc ADDR]  (an ocicrypt key provider for CRI-O, podman, skopeo, ...)

As a stream processor, coco-decoder reads the encrypted layer on stdin, the layer descriptor from containerd on
fd 3, and writes the decrypted layer to stdout. Keys come from --decryption-keys-path, from the payload, from
key providers ($OCICRYPT_KEYPROVIDER_CONFIG) or, for provider:attestation-agent layers, from the KBS configured in
the config file (attesting in-process).

Options:
  --decryption-keys-path DIR  load private keys and certificates from DIR (as ctd-decoder)
  --config FILE               config file (default: $COCO_DECODER_CONFIG, else /etc/coco-decoder/config.toml)
  --log-level LEVEL           error, warn, info or debug (default: the config file's log.level, else error:
                              a successful layer prints nothing on stderr)
  --version                   print the version and exit
  -h, --help                  print this help and exit

Run "coco-decoder <subcommand> --help" for the options of evidence, doctor, encrypt and keyprovider.
`;

/** An abort signal for the unwrap phase whose deadline can only grow. */
class Deadline {
  readonly controller = new AbortController();
  #timer: NodeJS.Timeout | undefined;
  #ms = 0;
  extendTo(ms: number): void {
    if (ms <= this.#ms) return;
    this.#ms = ms;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.controller.abort(new DecoderError(`deadline of ${ms} ms exceeded`)), ms);
    this.#timer.unref();
  }
  clear(): void {
    clearTimeout(this.#timer);
  }
}

const isPipe = (fd: number): boolean => {
  const st = fstatSync(fd);
  return st.isFIFO() || st.isSocket();
};

/**
 * stdin (ciphertext) to stdout: fd to fd on the addon's worker thread when it can, else through Node streams
 * (containerd's pipes read with a reused buffer, anything else as a stream).
 */
async function decryptStdio(decipher: LayerDecipher, prefix: Buffer | undefined): Promise<number> {
  if (decipher.canDecryptFd) return decipher.decryptFd(0, 1, { prefix });
  const { decryptLayerFd, decryptLayerStream, openStdout } = await import('./decode-streams.js');
  const stdout = openStdout(STDOUT_BUFFER_BYTES);
  try {
    return isPipe(0)
      ? await decryptLayerFd(0, stdout.out, decipher, { prefix })
      : await decryptLayerStream(process.stdin, stdout.out, decipher, { prefix });
  } finally {
    stdout.close();
  }
}

/** The digest comes from untrusted JSON: show it only if it looks like one, else quoted and bounded. */
function printableDigest(digest: string): string {
  if (/^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{1,256}$/.test(digest)) return digest;
  return quoteUntrusted(digest, 80);
}

/** What the audit log records about a layer, filled in as decoding proceeds. */
interface LayerFacts {
  digest?: string;
  mediaType?: string;
  bytes?: number;
  /** Whether the descriptor came from containerd's fd-3 payload or from its content store. */
  descriptorSource?: 'payload' | 'content-store';
  /** The scheme that unwrapped the key, with its kid and token-cache flag (see unwrap-layer-key.ts). */
  readonly unwrap: UnwrapAudit;
}

/**
 * The config file. Read for every layer when there is one, since its `log.*` settings (level, audit log) apply to
 * every layer; without a file (the default path is absent) nothing is loaded unless a key-provider layer needs the
 * defaults. A config that does not load fails only the layers that need it (key providers, the KBS), exactly as
 * before the audit log existed; for the others it just means its log settings are not applied.
 */
class ConfigSource {
  readonly #path: string | undefined;
  readonly #early: Promise<Config | undefined>;
  #full: Promise<Config> | undefined;

  constructor(path: string | undefined, env: NodeJS.ProcessEnv) {
    this.#path = path;
    const named = (path !== undefined && path !== '') || (env[CONFIG_ENV] ?? '') !== '';
    this.#early = named || existsSync(DEFAULT_CONFIG_PATH) ? this.#load() : Promise.resolve(undefined);
    this.#early.catch(() => undefined);
  }

  #load(): Promise<Config> {
    return import('../config/load.js').then(({ loadConfig }) => loadConfig({ path: this.#path, env: process.env }));
  }

  /** The config if a file was read; undefined when there is none. Rejects when it does not load. */
  early(): Promise<Config | undefined> {
    return this.#early;
  }

  /** The config, or the defaults when there is no file; rejects with the load error (a one-line DecoderError). */
  get(): Promise<Config> {
    this.#full ??= this.#early.then((cfg) => cfg ?? this.#load());
    return this.#full;
  }
}

/** ctd-decoder's prefix for everything its DecryptLayer call reports (media type, options, keys), added here once. */
const DECRYPT_LAYER_STAGE = 'call to DecryptLayer failed';

function asDecryptLayerError(err: unknown): DecoderError {
  if (err instanceof DecoderError && err.stage !== undefined) return err;
  const message = err instanceof DecoderError ? err.message : describeError(err);
  return new DecoderError(message, { stage: DECRYPT_LAYER_STAGE, cause: err, ...(err instanceof DecoderError && err.code ? { code: err.code } : {}) });
}

/** One descriptor to try: containerd's (payload) or one of the content store's annotation sets for the layer. */
interface LayerCandidate {
  descriptor: LayerDescriptor;
  /** Set for content-store descriptors: the stream must be this blob before its tail is released. */
  cipherDigest?: LayerDecipherOptions['cipherDigest'];
}

/** Where the layer's descriptor comes from: containerd's fd-3 payload, or (without one) containerd's content store. */
async function layerCandidates(
  p: DecodePath,
  logger: Logger,
  early: Config | undefined,
  facts: LayerFacts,
  signal: AbortSignal,
): Promise<{ params: PayloadParameters; candidates: LayerCandidate[]; head: StdinHead | undefined }> {
  const { probePayloadFd, readPayloadFd, MISSING_PAYLOAD_HELP, decodePayload, layerKeySchemes } = p;
  const probe = probePayloadFd();
  let payload: DecoderPayload | undefined;
  if (probe.present) {
    const readPipe = probe.kind === 'file' ? undefined : await p.nativePipeReader();
    const payloadBytes = await readPayloadFd({ probe, readPipe });
    payload = decodePayload(payloadBytes);
    payloadBytes.fill(0); // ctr-enc payloads carry private keys
    if (layerKeySchemes(payload.descriptor.annotations).length > 0) {
      facts.descriptorSource = 'payload';
      return { params: payload.params, candidates: [{ descriptor: payload.descriptor }], head: undefined };
    }
  }
  const missing = probe.present ? 'the fd-3 payload lists no wrapped keys for the layer' : `no payload: ${probe.reason}`;
  const config = early?.containerd ?? defaultConfig().containerd;
  if (!config.lookup) {
    throw new DecoderError(`${missing}; ${MISSING_PAYLOAD_HELP} ([containerd] lookup = false)`, { stage: 'read payload' });
  }
  const [{ lookupLayerDescriptor, cipherDigestOf }, { StdinHead }] = await Promise.all([
    import('./layer-lookup.js'),
    import('../streamprocessor/stdin-head.js'),
  ]);
  const head = new StdinHead(0, config.timeoutMs);
  let match: Awaited<ReturnType<typeof lookupLayerDescriptor>>;
  try {
    match = await lookupLayerDescriptor({ head, config, env: process.env, mediaType: process.env['STREAM_PROCESSOR_MEDIATYPE'], signal });
  } catch (err) {
    throw new DecoderError(`${missing}, and finding the layer in containerd's content store failed: ${describeError(err)}; ${MISSING_PAYLOAD_HELP}`, {
      stage: 'read payload',
      cause: err,
    });
  }
  facts.descriptorSource = 'content-store';
  logger.debug('layer descriptor found in the content store', {
    layer: match.digest,
    annotationSets: match.annotationSets.length,
    manifests: match.stats.documents,
    reads: match.stats.reads,
  });
  const cipherDigest = cipherDigestOf(match);
  const candidates = match.annotationSets.map((set) => ({
    descriptor: { mediaType: match.mediaType, digest: match.digest, size: match.size, annotations: { ...set.annotations } },
    cipherDigest,
  }));
  return { params: payload?.params ?? {}, candidates, head };
}


async function decodeLayer(args: DecodeArgs, logger: Logger, configs: ConfigSource, facts: LayerFacts): Promise<void> {
  // The one lazy-import boundary of the decoding path (decode-path.ts; the optional paths load on their own).
  const p = await import('./decode-path.js');
  const { checkLayerMediaType, decryptLayer, layerKeySchemes, layerPublicOptions, buildKeyWrappers } = p;
  const deadline = new Deadline();
  deadline.extendTo(UNWRAP_DEADLINE_MS);
  // The config was read while fd 3 was; its log.level must be in force before the first warning.
  const early = await configs.early().catch(() => undefined);
  if (early && args.logLevel === undefined) logger.level = early.log.level;
  const found = await layerCandidates(p, logger, early, facts, deadline.controller.signal);
  const first = found.candidates[0]!.descriptor;
  facts.digest = first.digest;
  facts.mediaType = first.mediaType;
  try {
    checkLayerMediaType(first.mediaType);
  } catch (err) {
    throw asDecryptLayerError(err);
  }

  let params = found.params;
  if (args.keysPath !== undefined) {
    const { loadKeysDirectory } = await import('../ocicrypt/keys/keysdir.js');
    let dirParams: DecryptParameters;
    try {
      dirParams = await loadKeysDirectory(args.keysPath, (m) => logger.warn(m));
    } catch (err) {
      throw new DecoderError(describeError(err), { stage: 'unable to get decryption keys in provided key path', cause: err });
    }
    params = mergeParameters(dirParams, params);
  }

  const getConfig = (): Promise<Config> =>
    configs.get().then((cfg) => {
      if (args.logLevel === undefined) logger.level = cfg.log.level;
      deadline.extendTo(cfg.cache.lockTimeoutMs + cfg.kbs.totalTimeoutMs + cfg.keyprovider.timeoutMs + 10_000);
      return cfg;
    });

  const native = await p.nativeLayerCipher(process.env);
  logger.debug(`layer cipher: ${native ? 'native (addon, node binary OpenSSL)' : 'node:crypto'}`);
  let decipher: LayerDecipher | undefined;
  try {
    // The content store may list the same blob with several annotation sets (tags, platforms, re-wrapped
    // recipients): each is tried in turn; the first whose key unwraps wins. A payload gives exactly one.
    let lastError: unknown;
    for (const { descriptor, cipherDigest } of found.candidates) {
      try {
        let publicOptions: ReturnType<typeof layerPublicOptions>;
        try {
          publicOptions = layerPublicOptions(descriptor.annotations);
        } catch (err) {
          throw asDecryptLayerError(err);
        }
        const schemes = layerKeySchemes(descriptor.annotations);
        const needsKbs = schemes.includes('provider.attestation-agent');
        if (needsKbs && early?.kbs.url !== undefined) (await import('../kbs/http.js')).preloadTransport(early.kbs.url);
        const getKek = needsKbs
          ? await import('./kek-source.js').then(({ createKekSource, describeKbsStats }) =>
              createKekSource(getConfig, { onWarning: (m) => logger.warn(m), onStats: (st) => logger.debug(describeKbsStats(st)) }),
            )
          : () => Promise.reject(new DecoderError('no KBS key source for this layer'));
        const wrappers = await buildKeyWrappers(schemes, {
          env: process.env,
          warn: (m) => logger.warn(m),
          getConfig,
          getKek,
        });
        decipher = await decryptLayer({
          annotations: descriptor.annotations,
          publicOptions,
          layerDigest: descriptor.digest,
          params,
          wrappers,
          signal: deadline.controller.signal,
          audit: facts.unwrap,
          checkPlainDigest: early?.integrity.checkPlainDigest === true,
          cipherDigest,
          native,
        }).catch((err: unknown) => Promise.reject(asDecryptLayerError(err)));
        break;
      } catch (err) {
        lastError = err;
        if (found.candidates.length > 1) logger.debug(`annotation set failed: ${describeError(err)}`);
      }
    }
    if (decipher === undefined) {
      if (found.candidates.length === 1) throw lastError;
      const last = lastError instanceof DecoderError ? lastError : new DecoderError(describeError(lastError), { cause: lastError });
      throw new DecoderError(`${last.message} (none of the ${found.candidates.length} manifests listing this layer gave a usable key)`, {
        stage: last.stage,
        cause: lastError,
      });
    }
  } finally {
    deadline.clear();
    zeroParameters(params);
  }
  // Field values are quoted and bounded by the logger: the digest is untrusted input.
  const layer = first.digest;
  logger.debug('layer key unwrapped', { layer, ...facts.unwrap });

  facts.bytes = await decryptStdio(decipher, found.head?.bytes);
  logger.info('layer decrypted', { layer, bytes: facts.bytes });
}

/** Where syslog listens; failed layers go there by default (see `log.syslog_failures`). */
const SYSLOG_SOCKET = '/dev/log';

/**
 * One audit record per layer whose digest is known, when the config asks for an audit log; and a failed layer goes
 * to syslog unless `log.syslog_failures` is off: once plaintext has been written, containerd reports its own
 * extraction error ("unexpected EOF", "wrong diff id") instead of our stderr, so syslog is where the cause stays
 * visible (`journalctl -t coco-decoder`). Never throws.
 */
async function auditLayer(configs: ConfigSource, logger: Logger, facts: LayerFacts, startedMs: number, error: string | undefined): Promise<void> {
  if (facts.digest === undefined) return;
  let config: Config | undefined;
  try {
    config = await configs.early();
  } catch (err) {
    // A layer that failed because of it already said so; a successful one should not hide it at warn level.
    if (error === undefined) logger.warn(`${describeError(err)}; log settings (audit log, log.level) not applied`);
  }
  const log = config?.log ?? defaultConfig().log;
  const configured = log.file !== undefined || log.syslog;
  const failureToSyslog = error !== undefined && !log.syslog && log.syslogFailures && existsSync(SYSLOG_SOCKET);
  if (!configured && !failureToSyslog) return;
  try {
    const { writeAudit } = await import('../util/audit.js');
    const record = {
      time: new Date().toISOString(),
      layer: facts.digest,
      mediaType: facts.mediaType,
      descriptor: facts.descriptorSource,
      ...facts.unwrap,
      bytes: facts.bytes,
      durationMs: nowMs() - startedMs,
      result: error === undefined ? ('ok' as const) : ('error' as const),
      error,
    };
    const jobs: Array<Promise<void>> = [];
    if (configured) jobs.push(writeAudit(record, { config: log, warn: (m) => logger.warn(m) }));
    // Best effort and quiet: stderr is the one line containerd may show.
    if (failureToSyslog) jobs.push(writeAudit(record, { config: { ...log, file: undefined, syslog: true }, warn: (m) => logger.debug(m) }));
    await Promise.all(jobs);
  } catch (err) {
    logger.warn(`audit log: ${describeError(err)}`);
  }
}

/** Monotonic milliseconds. Not `performance.now()`: that global loads all of perf_hooks on first use (~1 ms). */
const nowMs = (): number => Number(process.hrtime.bigint()) / 1e6;

/** On failure with stdout on a pipe (containerd), keep stdout open briefly after we exit: see hold-stdout.ts. */
async function holdStdoutOnFailure(): Promise<void> {
  let pipe: boolean;
  try {
    pipe = isPipe(1);
  } catch {
    return; // fd 1 closed: nothing to hold
  }
  if (!pipe) return;
  const { holdStdoutAfterExit } = await import('../streamprocessor/hold-stdout.js');
  await holdStdoutAfterExit(HOLD_STDOUT_ARG);
}

export async function run(argv: string[]): Promise<number> {
  const startedMs = nowMs();
  if (argv[0] === HOLD_STDOUT_ARG) {
    const { holdStdoutHere } = await import('../streamprocessor/hold-stdout.js');
    return holdStdoutHere();
  }
  let args: DecodeArgs;
  try {
    args = parseDecodeArgs(argv);
  } catch (err) {
    process.stderr.write(`${boundedLine(`coco-decoder: ${describeError(err)} (see --help)`)}\n`);
    return 1;
  }
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (args.version) {
    // The embedded runtime too: its Node line and OpenSSL decide which fixes a deployed binary carries.
    process.stdout.write(`coco-decoder ${VERSION} (node ${process.version}, openssl ${process.versions.openssl})\n`);
    return 0;
  }

  const logger = createLogger(args.logLevel ?? 'error');
  // Before fd 3 (which may carry private keys) or any key file is read.
  const hardened = await (await import('./harden.js')).makeNonDumpable();
  if (!hardened.ok) logger.warn(`could not make the process non-dumpable (core dumps could hold keys): ${hardened.why}`);
  const configs = new ConfigSource(args.configPath, process.env);
  const facts: LayerFacts = { unwrap: {} };
  let code = 0;
  let error: string | undefined;
  try {
    await decodeLayer(args, logger, configs, facts);
  } catch (err) {
    code = 1;
    error = describeError(err);
    const where = facts.digest ? `layer ${printableDigest(facts.digest)}: ` : '';
    // containerd puts this line into the pull error (kubectl describe): one line, control-free, at most 4 KiB.
    process.stderr.write(`${boundedLine(`coco-decoder: ${where}${error}`)}\n`);
  }
  await auditLayer(configs, logger, facts, startedMs, error);
  if (code !== 0) await holdStdoutOnFailure();
  setTimeout(() => process.exit(code), EXIT_GRACE_MS).unref();
  return code;
}
