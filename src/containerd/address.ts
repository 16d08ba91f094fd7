/**
 * Which containerd socket the content-store lookup talks to: `CONTAINERD_ADDRESS` (ctr's convention, and what a
 * stream processor's `env` in containerd's config can set), else the config file's `[containerd] address`, else
 * containerd's default. Only Unix sockets: containerd's TCP listener needs TLS client certificates we do not have.
 */
import { DecoderError } from '../util/errors.js';
import { quoteUntrusted } from '../util/quote.js';
import { unixSocketPath } from '../util/unix-socket-path.js';

export const DEFAULT_CONTAINERD_ADDRESS = '/run/containerd/containerd.sock';
export const CONTAINERD_ADDRESS_ENV = 'CONTAINERD_ADDRESS';

export interface ContainerdAddress {
  /** The socket path. */
  readonly path: string;
  /** Where it came from, for messages: `$CONTAINERD_ADDRESS`, `[containerd] address` or `default`. */
  readonly source: string;
}

/** A path, `unix:///path` or `unix:/path` (both spellings ctr and grpc-go accept). */
export function parseContainerdAddress(value: string, source: string): ContainerdAddress {
  const path = unixSocketPath(value);
  if (path === undefined) {
    throw new DecoderError(`${source} ${quoteUntrusted(value, 120)} is not the absolute path of a Unix socket (unix:///path or /path)`);
  }
  return { path, source };
}

export function resolveContainerdAddress(env: NodeJS.ProcessEnv, configured: string | undefined): ContainerdAddress {
  const fromEnv = env[CONTAINERD_ADDRESS_ENV];
  if (fromEnv !== undefined && fromEnv !== '') return parseContainerdAddress(fromEnv, `$${CONTAINERD_ADDRESS_ENV}`);
  if (configured !== undefined) return parseContainerdAddress(configured, '[containerd] address');
  return { path: DEFAULT_CONTAINERD_ADDRESS, source: 'default' };
}
