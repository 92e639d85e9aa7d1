#!/usr/bin/env bash
# Runs the kernel suite; meant for inside the VM (npm test does: scripts/vm-run -- scripts/kernel-tests.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -e /dev/ublk-control ] || { echo "kernel-tests: /dev/ublk-control missing: not in the VM, or ublk_drv did not load" >&2; exit 1; }
echo "kernel-tests: guest kernel $(uname -r)"
cp test/kernel/vitest.config.mjs /tmp/vitest.kernel.config.mjs
# Piped: the VM console is a tty, and vitest would redraw its progress on it line after line.
node_modules/.bin/vitest run --config /tmp/vitest.kernel.config.mjs --root "$PWD" "$@" | cat
