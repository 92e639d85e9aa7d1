#!/usr/bin/env bash
# npm run bench: the device table in the instruction-clock VM (repeatable; the bars are read here), then in
# the wall-clock VM. Writes results/bench-<time>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
share=$(mktemp -d)
chmod 777 "$share"
scripts/vm-run --icount -- node scripts/bench-guest.mjs "$share/icount.md" icount
scripts/vm-run -- node scripts/bench-guest.mjs "$share/wall.md" wall
{ echo "# ublk-ts benchmark, $stamp"; echo; cat "$share/icount.md"; echo; cat "$share/wall.md"; } > "results/bench-$stamp.md"
rm -rf "$share"
echo "bench: wrote results/bench-$stamp.md"
