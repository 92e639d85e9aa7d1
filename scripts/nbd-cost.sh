#!/usr/bin/env bash
# Where a 4k request's CPU time goes, by task: the kernel's NBD client against the nbd target, same nbdkit,
# same fio job. Runs in the guest, on the instruction clock:
#   UBLK_TS_VM_CPUS=1 scripts/vm-run --icount -- scripts/nbd-cost.sh
# With one CPU, guest time is instructions, so each task's time per request is its exact cost. With more
# CPUs the round-robin clock also charges a task for the turns of the other CPUs: compare IOPS only.
# RW ("randread randwrite"), RUNTIME (seconds, 4), QUEUES (1) and TRANSPORT (unix, or tcp over loopback)
# choose the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export UBLK_TS_STATE_DIR=${UBLK_TS_STATE_DIR:-/tmp/ublk-ts-cost}
runtime=${RUNTIME:-4}
work=$(mktemp -d)
cleanup() {
  [ -z "${id:-}" ] || node dist/ublk-ts.mjs del -n "$id" >/dev/null 2>&1 || true
  nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
  [ ! -f "$work/nbdkit.pid" ] || kill "$(cat "$work/nbdkit.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# nbdkit goes into the background once it listens.
if [ "${TRANSPORT:-unix}" = tcp ]; then
  ip link set lo up # the guest brings up no network of its own
  nbdkit -i 127.0.0.1 -p 10809 -P "$work/nbdkit.pid" memory 1G
  client=(127.0.0.1 10809) target=(--host 127.0.0.1 --port 10809)
else
  nbdkit -U "$work/nbd.sock" -P "$work/nbdkit.pid" memory 1G
  client=(-unix "$work/nbd.sock") target=(--socket "$work/nbd.sock")
fi
modprobe -d "$UBLK_TS_KMOD_DIR" nbd 2>/dev/null || true
nbd-client "${client[@]}" /dev/nbd0 >/dev/null 2>&1
# Written once, so reads return data rather than holes.
fio --name=fill --filename=/dev/nbd0 --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=8 --size=448M \
  --output-format=terse >/dev/null
added=$(node dist/ublk-ts.mjs add --target nbd "${target[@]}" --queues "${QUEUES:-1}" --json)
id=$(node -p 'JSON.parse(process.argv[1]).id' "$added")
dev=/dev/ublkb$id

# Every task's run time (ns) and context switches, by name (digits folded: one line for kworkers alike).
tasks() {
  for t in /proc/[0-9]*/task/[0-9]*; do
    { read -r ns _ sw <"$t/schedstat" && read -r comm <"$t/comm" && echo "${t##*/} $ns $sw $comm"; } 2>/dev/null || true
  done
}
for rw in ${RW:-randread randwrite}; do
  for d in /dev/nbd0 "$dev"; do
    tasks >"$work/before"
    fio --name=cost --filename="$d" --ioengine=io_uring --direct=1 --rw="$rw" --bs=4k --iodepth=64 --size=448M \
      --time_based --runtime="$runtime" --output-format=json >"$work/fio.json"
    tasks >"$work/after"
    # No process substitution: the guest has no /dev/fd.
    read -r iops fio_ns fio_sw <<<"$(node -e '
      const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).jobs[0];
      const io = process.argv[2] === "randread" ? j.read : j.write;
      const n = io.iops * process.argv[3];
      console.log(Math.round(io.iops), Math.round((j.usr_cpu + j.sys_cpu) / 100 * process.argv[3] * 1e9 / n), (j.ctx / n).toFixed(2));
    ' "$work/fio.json" "$rw" "$runtime")"
    echo "== $rw $d: $iops IOPS, $((1000000000 / iops)) ns of guest time per request"
    printf '  %-26s %8s ns/req %5s switches/req\n' fio "$fio_ns" "$fio_sw"
    awk -v n=$((iops * runtime)) '
      NR == FNR { ns[$1] = $2; sw[$1] = $3; next }
      { c = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ /, "", c); gsub(/[0-9]+/, "#", c); t[c] += $2 - ns[$1]; s[c] += $3 - sw[$1] }
      END { for (c in t) if (t[c] / n >= 500) printf "  %-26s %8d ns/req %5.2f switches/req\n", c, t[c] / n, s[c] / n }
    ' "$work/before" "$work/after" | sort -k2 -n -r
  done
done
