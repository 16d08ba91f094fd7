/**
 * The socket path of a containerd-style address: `/path`, `unix:///path` or `unix:/path` (the spellings ctr,
 * grpc-go and containerd's `[grpc] address` accept), or undefined when it is not an absolute path (TCP, a relative
 * path, a NUL byte). One rule for the config file's `[containerd] address` and the address the lookup dials.
 */
export function unixSocketPath(value: string): string | undefined {
  const path = value.replace(/^unix:(?:\/\/)?/, '');
  return path.startsWith('/') && !path.includes('\0') ? path : undefined;
}
