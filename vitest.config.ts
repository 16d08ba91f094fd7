import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts', 'test/fuzz/**/*.test.ts', 'test/e2e/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 120_000,
    // E2E suites start real containerd/registry instances; run files one at a time so they never fight over ports or CPU.
    fileParallelism: false,
    pool: 'forks',
    // The JSON report lets .ci/run print one 'N passed, N failed' line.
    reporters: ['default', 'json'],
    outputFile: { json: 'dist/vitest-report.json' },
  },
});
