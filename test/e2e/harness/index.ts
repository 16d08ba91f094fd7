/**
 * The E2E harness: the stack (stack.ts) and its parts, plus the vitest hook that prints the stack's logs when a
 * test fails.
 */
import { beforeEach } from 'vitest';
import type { Stack } from './stack.js';

export * from './containerd.js';
export * from './cri.js';
export * from './oci-layout.js';
export * from './proc.js';
export * from './registry.js';
export * from './skopeo.js';
export * from './snapshot.js';
export * from './shared-containerd.js';
export * from './stack.js';

/** Registers a hook that prints the stack's diagnostics (containerd and registry log tails) when a test fails. */
export function printDiagnosticsOnFailure(getStack: () => Stack | undefined): void {
  beforeEach((ctx) => {
    ctx.onTestFailed(() => {
      const stack = getStack();
      if (stack) console.error(`[${ctx.task.name}] diagnostics:\n${stack.diagnostics(30)}`);
    });
  });
}
