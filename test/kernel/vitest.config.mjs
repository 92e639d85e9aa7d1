// The kernel suite: runs inside the VM on the real ublk driver (scripts/kernel-tests.sh copies this file
// to /tmp first, because the project tree is read-only in the guest).
// A plain object: copied to /tmp, this file cannot import vitest.
export default {
  cacheDir: '/tmp/vite-cache',
  test: {
    include: ['test/kernel/**/*.test.ts'],
    testTimeout: 900_000,
    hookTimeout: 300_000,
    fileParallelism: false,
    // One worker for every file, its modules kept: a new worker and fresh imports per file cost about 3 s
    // each under TCG.
    isolate: false,
    poolOptions: { forks: { singleFork: true } },
    reporters: ['verbose'],
  },
};
