// Bundles the CLI and the server into one file each: under emulation half of a command's start-up is
// module resolution and compilation, and `del` must answer quickly while the device is busy.
import { build } from 'esbuild';

const banner = { js: "import { createRequire as __ublkRequire } from 'node:module'; const require = __ublkRequire(import.meta.url);" };
for (const [entry, out] of [
  ['dist/src/cli.js', 'dist/ublk-ts.mjs'],
  ['dist/src/daemon.js', 'dist/ublk-ts-daemon.mjs'],
]) {
  await build({ entryPoints: [entry], outfile: out, bundle: true, platform: 'node', format: 'esm', target: 'node20', banner, logLevel: 'warning' });
}
