#!/usr/bin/env bash
# npm run bench:ab -- REV: the hot path before and after, in the same instruction-clock boot. Builds REV
# (default: HEAD) in a scratch tree, then the guest runs file (auto-lease) and null at 4k QD64 with both
# builds, alternating A B A B so that drift within the boot cancels. Prints after/before per row.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-HEAD}
tree="${XDG_CACHE_HOME:-$HOME/.cache}/ublk-ts/ab-tree"
rm -rf "$tree"
git worktree prune
git worktree add --detach -f "$tree" "$rev" >/dev/null
ln -s "$PWD/node_modules" "$tree/node_modules"
(cd "$tree" && "$OLDPWD/node_modules/.bin/node-gyp" rebuild --nodedir="$(npm config get nodedir)" >/dev/null && "$OLDPWD/node_modules/.bin/tsc" -p tsconfig.json \
  && node scripts/bundle.mjs)
exec scripts/vm-run --icount -- node scripts/bench-ab-guest.mjs "$tree" "$PWD"
