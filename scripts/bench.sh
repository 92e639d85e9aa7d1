#!/usr/bin/env bash
# npm run bench: the device table in the instruction-clock VM (repeatable; the bars are read here), then in
# the wall-clock VM. Writes results/bench-<time>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=$(date -u +%Y%m%dT%H%M%SZ)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/vm-run --icount --out "$tmp" -- node scripts/bench-guest.mjs icount
scripts/vm-run --out "$tmp" -- node scripts/bench-guest.mjs wall
mkdir -p results
{ echo "# ublk-ts benchmark, $stamp"; echo; cat "$tmp/icount.md"; echo; cat "$tmp/wall.md"; } > "results/bench-$stamp.md"
echo "bench: wrote results/bench-$stamp.md"
