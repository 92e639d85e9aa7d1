#!/usr/bin/env bash
# npm run soak: many devices and create/delete churn, in the VM (not part of npm test: it takes long).
#
#   scripts/soak.sh [--devices N] [--cycles N] [--at-once N] [--minutes M]
#
# 1. N null devices at once (default 256, `add --count`), each serving a 4k read; the memory and fds of a
#    device's server are measured and printed (one server process per device: a crash or a stuck backend
#    takes one device with it, never its neighbours).
# 2. Churn: cycles (default 1000) of add -> fio 1 s -> del, --at-once of them at a time (default 4); with
#    --minutes, no new cycle starts after M minutes (the count done and the time per cycle are printed).
# 3. Nothing is left: no ublk device, no server process, no state record, socket or counters, and no kernel
#    warning in dmesg since the soak started.
# Run on the host, it runs itself in the VM (scripts/vm-run, with RAM for the devices' servers).
set -euo pipefail
cd "$(dirname "$0")/.."
devices=256 cycles=1000 at_once=4 minutes=
while [ $# -gt 0 ]; do
  case "$1" in
    --devices) devices=$2; shift 2 ;;
    --cycles) cycles=$2; shift 2 ;;
    --at-once) at_once=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
for v in "$devices" "$cycles" "$at_once" ${minutes:+"$minutes"}; do
  [[ $v =~ ^[0-9]+$ ]] || { echo "soak: a count or minutes must be a whole number, not '$v'" >&2; exit 2; }
done
[ "$at_once" -ge 1 ] || { echo "soak: --at-once must be at least 1" >&2; exit 2; }

if [ -z "${UBLK_TS_IN_VM:-}" ]; then
  # Each server is a node process (about 50 MB resident, 13 MB of it its own); room for all of them at once.
  mem=$((6144 + devices * 24))
  limit=$(( ${minutes:-240} * 60 + 3600 ))
  exec scripts/vm-run --mem "$mem" --timeout "$limit" -- scripts/soak.sh --devices "$devices" --cycles "$cycles" --at-once "$at_once" ${minutes:+--minutes "$minutes"}
fi

cli() { node dist/ublk-ts.mjs "$@"; }
state=${UBLK_TS_STATE_DIR:-/run/ublk-ts}
work=$(mktemp -d /tmp/soak.XXXXXX)
klog_start=$(dmesg | wc -l)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
fail() { echo "soak: FAILED: $*" >&2; cli del --all --force >/dev/null 2>&1 || true; exit 1; }

# --- 1. many devices at once -------------------------------------------------------------------------------
echo "soak: $devices null devices at once (add --count $devices)"
avail_before=$(awk '/^MemAvailable/ { print $2 }' /proc/meminfo)
t=$(now)
cli add --target null --size 1M --queues 1 --depth 16 --count "$devices" --json >"$work/devices.json" || fail "add --count $devices"
echo "soak: added $devices in $(since "$t") s"
ids=$(sed -n 's/^    "id": \([0-9]*\),$/\1/p' "$work/devices.json")
[ "$(echo "$ids" | wc -l)" = "$devices" ] || fail "add --count printed $(echo "$ids" | wc -l) devices, not $devices"
t=$(now)
for id in $ids; do
  timeout 60 dd if="/dev/ublkb$id" of=/dev/null bs=4k count=1 iflag=direct status=none || fail "4k read of /dev/ublkb$id"
done
echo "soak: every device served a 4k read ($(since "$t") s)"
avail_after=$(awk '/^MemAvailable/ { print $2 }' /proc/meminfo)
pids=$(pgrep -f ublk-ts-daemon.mjs)
[ "$(echo "$pids" | wc -l)" = "$devices" ] || fail "$(echo "$pids" | wc -l) server processes for $devices devices"
for p in $pids; do
  printf '%s %s %s\n' "$(awk '/^VmRSS/ { print $2 }' "/proc/$p/status")" \
    "$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup")" "$(find "/proc/$p/fd" -mindepth 1 | wc -l)"
done | awk -v n="$devices" -v used=$((avail_before - avail_after)) '
  { rss += $1; pss += $2; fds += $3; if ($3 > maxfd) maxfd = $3 }
  END {
    printf "soak: per device server: RSS %.1f MiB, PSS %.1f MiB (its own share of pages), %.1f fds (max %d)\n", rss / n / 1024, pss / n / 1024, fds / n, maxfd
    printf "soak: per device, the whole system (MemAvailable drop / devices): %.1f MiB\n", used / n / 1024
  }'
t=$(now)
cli del --all >/dev/null || fail "del --all of $devices devices"
echo "soak: del --all of $devices devices took $(since "$t") s"

# --- 2. churn ----------------------------------------------------------------------------------------------
echo "soak: churn: $cycles cycles of add -> fio 1 s -> del, $at_once at a time${minutes:+, starting none after $minutes min}"
deadline=
[ -n "$minutes" ] && deadline=$(( $(date +%s) + minutes * 60 ))
echo 0 >"$work/next"
worker() { # $1: worker number. Takes cycle numbers from $work/next until all are taken or the time is up.
  local n id
  while :; do
    n=$(flock "$work/next" bash -c 'n=$(cat "$1"); echo $((n + 1)) >"$1"; echo "$n"' _ "$work/next")
    [ "$n" -lt "$cycles" ] || return 0
    [ -z "$deadline" ] || [ "$(date +%s)" -lt "$deadline" ] || return 0
    id=$(cli add --target null --size 64M --queues 1 --json | sed -n 's/^  "id": \([0-9]*\),$/\1/p') || { echo "cycle $n: add failed" >>"$work/errors"; return 1; }
    [ -n "$id" ] || { echo "cycle $n: add printed no id" >>"$work/errors"; return 1; }
    fio --name=c --filename="/dev/ublkb$id" --rw=randrw --bs=4k --direct=1 --ioengine=io_uring --iodepth=8 \
      --time_based --runtime=1 --output="$work/fio.$1" \
      || { echo "cycle $n: fio on /dev/ublkb$id ($(cat "/sys/block/ublkb$id/size" 2>&1) sectors) failed: $(cat "$work/fio.$1")" >>"$work/errors"; return 1; }
    cli del -n "$id" >/dev/null || { echo "cycle $n: del -n $id failed" >>"$work/errors"; return 1; }
    echo "$n" >>"$work/done"
  done
}
: >"$work/done"
t=$(now)
wpids=()
for w in $(seq "$at_once"); do worker "$w" & wpids+=($!); done
ok=1
for p in "${wpids[@]}"; do wait "$p" || ok=; done
took=$(since "$t")
done_n=$(wc -l <"$work/done")
[ -n "$ok" ] || fail "after $done_n cycles in $took s: $(cat "$work/errors")"
echo "soak: $done_n churn cycles in $took s: $(awk -v t="$took" -v n="$done_n" 'BEGIN { printf "%.2f", n ? t / n : 0 }') s per cycle ($at_once at a time; $(awk -v t="$took" -v n="$done_n" -v k="$at_once" 'BEGIN { printf "%.2f", n ? t * k / n : 0 }') s each)"

# --- 3. nothing left ---------------------------------------------------------------------------------------
for _ in $(seq 100); do
  [ -z "$(ls /sys/class/ublk-char 2>/dev/null)" ] && ! pgrep -f ublk-ts-daemon.mjs >/dev/null && break
  sleep 0.1
done
left=$(ls /sys/class/ublk-char 2>/dev/null | tr '\n' ' ')
[ -z "$left" ] || fail "devices left: $left"
! pgrep -fa ublk-ts-daemon.mjs || fail "server processes left (above)"
files=$(cd "$state" 2>/dev/null && ls -- ublkb* 2>/dev/null | tr '\n' ' ' || true)
[ -z "$files" ] || fail "state files left in $state: $files"
# The kernel's reports since the soak began, each "cut here" block whole. One is known and the kernel's own:
# Linux 7.2's io_buffer_register_bvec (io_uring/rsrc.c, the zero-copy lease) fills imu->bvec[] before it
# sets nr_bvecs, the count __counted_by bounds that array by, so UBSAN reports index 0 (once per boot). It
# is named, not counted against ublk-ts; any other report fails the soak.
dmesg | tail -n +"$((klog_start + 1))" >"$work/klog"
awk -v known="$work/known" '
  /cut here/ { block = ""; inside = 1 }
  inside { block = block $0 "\n"; if (/end trace/) { inside = 0; if (block ~ /io_uring\/rsrc\.c/ && block ~ /io_buffer_register_bvec/) printf "%s", block >known; else printf "%s", block }; next }
  { print }' "$work/klog" | grep -i 'warn\|bug\|oops\|ubsan\|call trace\|cut here' >"$work/warnings" || true
[ ! -s "$work/warnings" ] || fail "kernel warnings: $(cat "$work/warnings")"
[ ! -s "$work/known" ] || echo "soak: the kernel's own known report (not ublk-ts's): $(grep -m1 UBSAN "$work/known" | sed 's/^\[[^]]*\] //'), in io_buffer_register_bvec: bvec[] filled before its __counted_by count"
echo "soak: nothing left: no ublk device, no server process, no state record, no other kernel warning ($(wc -l <"$work/klog") new kernel log lines; $(ls "$state"/server-*.log 2>/dev/null | wc -l) server logs kept in $state)"
rm -rf "$work"
