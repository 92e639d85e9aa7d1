import { defineConfig } from 'vitest/config';

// Host tests only; the kernel suite has its own config (test/kernel/vitest.config.mjs) and runs in the VM.
export default defineConfig({
  test: { include: ['test/host/**/*.test.ts'] },
});
