#!/usr/bin/env bash
# The main job, end to end: a file-backed ublk device carrying ext4. Runs natively where the kernel has
# ublk, otherwise inside the test VM.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /dev/ublk-control ] && [ -z "${UBLK_TS_IN_VM:-}" ]; then
  modprobe ublk_drv 2>/dev/null || true
fi
if [ ! -e /dev/ublk-control ]; then
  echo "demo: this kernel has no ublk driver; running in the VM (scripts/vm-run)"
  exec scripts/vm-run -- scripts/demo.sh
fi
ublk() { node dist/ublk-ts.mjs "$@"; }
step() { printf '\n== %s\n' "$*"; }
work=$(mktemp -d /tmp/ublk-ts-demo.XXXXXX)
mnt="$work/mnt"
mkdir -p "$mnt"
cleanup() { mountpoint -q "$mnt" && umount "$mnt"; [ -n "${id:-}" ] && ublk del -n "$id" >/dev/null 2>&1; rm -rf "$work"; }
trap cleanup EXIT

step "kernel $(uname -r): ublk features"
ublk features
step "add a file-backed device: ublk-ts add --target file --file $work/disk.img --size 1G"
json=$(ublk add --target file --file "$work/disk.img" --size 1G --json)
id=$(node -e 'console.log(JSON.parse(process.argv[1]).id)' "$json")
dev=/dev/ublkb$id
echo "$json"
step "mkfs.ext4 $dev and mount it"
mkfs.ext4 -q -F "$dev"
mount "$dev" "$mnt"
step "write files, sync, read them back"
head -c 64M /dev/urandom > "$work/data"
for i in 1 2 3 4; do cp "$work/data" "$mnt/file$i"; done
sync
echo 3 > /proc/sys/vm/drop_caches
for i in 1 2 3 4; do cmp "$work/data" "$mnt/file$i"; done
df -h "$mnt" | tail -1
echo "4 files of 64 MiB read back identical"
step "ublk-ts list"
ublk list
step "unmount and delete"
umount "$mnt"
ublk del -n "$id"
id=
ublk list
step "done"
