#!/usr/bin/env bash
# Runs the data path under AddressSanitizer on the real driver: builds an ASan copy of the addon in a
# scratch tree, then in the VM serves fio verify in every data mode and the del-under-load path, the fault
# target's held and copied requests, null's zero-filled reads, a block device's discards (file, mirror,
# stripe), a mirror's resync, re-add and scrub, the bridge's
# copies (memory, overlay), nbd's receives, its handover (upgrade) and its teardown under a slow server, and fails on any ASan
# report in the servers' logs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${UBLK_TS_IN_VM:-}" ]; then
  tree="${XDG_CACHE_HOME:-$HOME/.cache}/ublk-ts/asan-tree"
  rm -rf "$tree" && mkdir -p "$tree/node_modules"
  cp -r package.json binding.gyp native targets dist scripts "$tree/"
  cp -r node_modules/node-addon-api "$tree/node_modules/"
  (cd "$tree" && UBLK_TS_ASAN=1 "$OLDPWD/node_modules/.bin/node-gyp" rebuild --nodedir="$(npm config get nodedir)" >/dev/null)
  cd "$tree"
  exec "$OLDPWD/scripts/vm-run" -- scripts/asan-check.sh
fi
export LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 UBLK_TS_STATE_DIR=/tmp/asan-state
ublk() { node dist/ublk-ts.mjs "$@"; }
add_id() { ublk add "$@" --json | node -e 'console.log(JSON.parse(require("fs").readFileSync(0)).id)'; }
# fio load in the background, then a delete under it (--force: the device is open).
del_under_load() {
  fio --name=load --filename=/dev/ublkb$1 --ioengine=io_uring --direct=1 --rw=${2:-randrw} --bs=4k --iodepth=64 --time_based --runtime=60 >/dev/null 2>&1 &
  local fio_pid=$!
  sleep 3
  ublk del --force -n $1
  wait $fio_pid || true
}
mirror_clean() { until ublk mirror status -n $1 --json | grep -q '"mirror": "clean"'; do sleep 1; done; }
verify() {
  fio --name=v --filename=/dev/ublkb$1 --ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-256k --iodepth=64 \
    --size=${2:-256M} --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output-format=terse >/dev/null
}
for mode in auto-lease lease user-copy copy; do
  id=$(add_id --target file --file /tmp/asan-$mode.img --size 256M --data-mode $mode --queues 2)
  verify $id
  fio --name=flush --filename=/dev/ublkb$id --ioengine=io_uring --direct=1 --rw=write --bs=64k --fsync=4 --size=16M --output-format=terse >/dev/null
  blkdiscard /dev/ublkb$id
  del_under_load $id
  rm -f /tmp/asan-$mode.img
  echo "asan-check: $mode served verify, flush, discard and delete under load"
done
# The asynchronous paths: requests held behind the target's own timeouts, reads served through a
# per-request copy beside the lease, and a delete while requests are stalled.
id=$(add_id --target fault --over file --file /tmp/asan-fault.img --size 64M --delay-us 2000 --corrupt-range 1M:1M --queues 2)
fio --name=f --filename=/dev/ublkb$id --ioengine=io_uring --direct=1 --rw=randrw --bsrange=4k-128k --iodepth=64 \
  --size=64M --time_based --runtime=10 --output-format=terse >/dev/null
ublk del -n $id
id=$(add_id --target fault --over file --file /tmp/asan-fault.img --stall-range 0:64M --queues 2)
del_under_load $id randread
rm -f /tmp/asan-fault.img
echo "asan-check: fault served delays, per-request copies and a delete under stalled requests"
# null fills reads from /dev/zero: one member per read, in every mode.
for mode in auto-lease lease user-copy copy; do
  id=$(add_id --target null --size 256M --data-mode $mode --queues 2)
  fio --name=n --filename=/dev/ublkb$id --ioengine=io_uring --direct=1 --rw=randrw --bsrange=4k-256k --iodepth=64 \
    --size=256M --time_based --runtime=5 --output-format=terse >/dev/null
  cmp -n 8388608 /dev/ublkb$id /dev/zero
  ublk del -n $id
done
echo "asan-check: null filled reads with zeroes in every data mode"
# A block device's discards are the target's own ring ops (io_uring block discard), plain and under fault.
truncate -s 128M /tmp/asan-blk.img
loop=$(losetup --show -f --sector-size 4096 --direct-io=on /tmp/asan-blk.img)
for over in "--target file" "--target fault --over file --delay-us 500"; do
  id=$(add_id $over --file $loop --queues 2)
  fio --name=v --filename=/dev/ublkb$id --ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-64k --iodepth=16 \
    --size=32M --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output-format=terse >/dev/null
  blkdiscard /dev/ublkb$id
  del_under_load $id randtrim
done
losetup -d $loop
rm -f /tmp/asan-blk.img
echo "asan-check: block discards served, plain and delayed, and a delete under discard load"
# mirror and stripe over block-device legs: each leg's share of a discard is a block discard of its own.
truncate -s 64M /tmp/asan-leg0.img /tmp/asan-leg1.img
legs=($(losetup --show -f --direct-io=on /tmp/asan-leg0.img) $(losetup --show -f --direct-io=on /tmp/asan-leg1.img))
for target in mirror stripe; do
  id=$(add_id --target $target --leg ${legs[0]} --leg ${legs[1]} --queues 2)
  verify $id 32M
  blkdiscard /dev/ublkb$id
  del_under_load $id randtrim
done
losetup -d "${legs[@]}"
rm -f /tmp/asan-leg0.img /tmp/asan-leg1.img
echo "asan-check: mirror and stripe discarded block-device legs, and a delete under discard load"
# mirror's sync thread beside the queues: an initial resync under verify, a leg failed and re-added
# (bitmap resync), a scrub with repair, a replace and an added leg (new files in the rings) whose resync
# gets new rates, a resize under load, a delete under load.
truncate -s 64M /tmp/asan-m0.img /tmp/asan-m1.img
id=$(add_id --target mirror --leg /tmp/asan-m0.img --leg /tmp/asan-m1.img --queues 2 --resync-rate 16)
verify $id 32M
ublk mirror fail -n $id --leg 2 >/dev/null
verify $id 16M
ublk mirror re-add -n $id --leg 2 >/dev/null
mirror_clean $id
ublk mirror check -n $id --repair >/dev/null
truncate -s 64M /tmp/asan-m2.img /tmp/asan-m3.img
ublk mirror replace -n $id --leg 1 --with /tmp/asan-m2.img >/dev/null
verify $id 16M
mirror_clean $id # one new leg at a time: the replace ends first
ublk mirror add-leg -n $id --with /tmp/asan-m3.img >/dev/null
ublk mirror rate -n $id --resync-rate 4 --resync-min-rate 1 >/dev/null # the pacing resync takes new rates
verify $id 16M
ublk mirror rate -n $id --resync-rate 0 >/dev/null
# resize under load: the legs and the bitmap's table grow while the queues use it
mirror_clean $id
fio --name=load --filename=/dev/ublkb$id --ioengine=io_uring --direct=1 --rw=randrw --bs=4k --iodepth=32 --size=32M --time_based --runtime=6 >/dev/null 2>&1 &
load=$!
sleep 2
ublk resize -n $id --size 96M >/dev/null
wait $load
verify $id 80M
del_under_load $id
rm -f /tmp/asan-m[0-3].img
echo "asan-check: mirror resynced, re-added, scrubbed, replaced, given a leg (its resync re-rated), resized and deleted under load"
# The bridge: the queue threads copy into and out of JavaScript's tag buffers (memory), and a routing
# target's writes are copied in by JavaScript (overlay).
id=$(add_id --target memory --size 128M --queues 2)
verify $id 128M
del_under_load $id
truncate -s 64M /tmp/asan-base.img
id=$(add_id --target overlay --base /tmp/asan-base.img --overlay /tmp/asan-overlay.map --queues 2)
fio --name=o --filename=/dev/ublkb$id --ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-64k --iodepth=32 \
  --size=64M --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output-format=terse >/dev/null
del_under_load $id
rm -f /tmp/asan-base.img /tmp/asan-overlay.map*
echo "asan-check: the bridge served verify and a delete under load, copying and routing"
# nbd: a read's payload received into the request's buffer, headers gathered into one send.
nbdkit -f --exit-with-parent -U /tmp/asan-nbd.sock memory 256M &
nbdkit_pid=$!
for i in $(seq 50); do [ -S /tmp/asan-nbd.sock ] && break; sleep 0.1; done
id=$(add_id --target nbd --socket /tmp/asan-nbd.sock --queues 2)
verify $id
# A handover: each queue flushes what its connection acknowledged (queue_settle), then the next server serves.
dd if=/dev/urandom of=/dev/ublkb$id bs=64k count=16 oflag=direct status=none
ublk upgrade -n $id >/dev/null
del_under_load $id randread
kill $nbdkit_pid 2>/dev/null || true # nbdkit may have ended on the delete (its own assertion)
wait $nbdkit_pid || true
echo "asan-check: nbd served verify, was upgraded after unflushed writes, and deleted under read load"
# nbd teardown: a delete while requests wait on a slow server, so replies arrive for requests the engine has
# already ended (the target must not receive them into a buffer the tag's next request may own).
# A fresh nbdkit per delete: nbdkit may end on one (its own assertion).
for mode in auto-lease copy; do
  rm -f /tmp/asan-nbd-slow.sock
  nbdkit -f --exit-with-parent -U /tmp/asan-nbd-slow.sock --filter=delay memory 64M rdelay=300ms wdelay=300ms &
  nbdkit_pid=$!
  for i in $(seq 50); do [ -S /tmp/asan-nbd-slow.sock ] && break; sleep 0.1; done
  id=$(add_id --target nbd --socket /tmp/asan-nbd-slow.sock --data-mode $mode)
  fio --name=slow --filename=/dev/ublkb$id --ioengine=io_uring --direct=1 --rw=randrw --bs=4k --iodepth=64 \
    --time_based --runtime=60 >/dev/null 2>&1 &
  fio_pid=$!
  sleep 2
  read -r reads writes < /sys/block/ublkb$id/inflight
  [ $((reads + writes)) -gt 0 ] || { echo "asan-check: nothing in flight on ublkb$id before the delete" >&2; exit 1; }
  ublk del --force -n $id
  wait $fio_pid || true
  kill -KILL $nbdkit_pid 2>/dev/null || true # SIGTERM may wait on connections that never end
  wait $nbdkit_pid || true
  echo "asan-check: nbd ($mode) deleted with $((reads + writes)) requests waiting on a slow server"
done
if grep -l "AddressSanitizer" /tmp/asan-state/*.log; then
  grep -h -A30 "AddressSanitizer" /tmp/asan-state/*.log | head -60
  exit 1
fi
echo "asan-check: no AddressSanitizer report in $(ls /tmp/asan-state/*.log | wc -l) server logs"
