/**
 * `@grpc/grpc-js`, loaded on first use only (it is ~300 kB of bundle that the common decoding path never needs),
 * and silenced: grpc-js logs to stderr by itself at ERROR verbosity, and our stderr is the single error line
 * containerd shows. `GRPC_VERBOSITY` in the environment still wins, for debugging.
 */
import type * as GrpcJs from '@grpc/grpc-js';

let grpcModule: Promise<typeof GrpcJs> | undefined;

export function loadGrpc(): Promise<typeof GrpcJs> {
  grpcModule ??= import('@grpc/grpc-js').then((m) => {
    if (process.env['GRPC_VERBOSITY'] === undefined) m.setLogVerbosity(m.logVerbosity.NONE);
    return m;
  });
  return grpcModule;
}

export type { GrpcJs };
