#!/usr/bin/env node
// Inside one VM boot: fio on the kernel loop device (direct IO over a tmpfs file), kernel null_blk, and
// ublk-ts (file in every data mode over the same kind of file, stripe and mirror over 2 such files, and
// null), the nbd target beside the kernel's nbd-client over one nbdkit, and the TypeScript targets: memory,
// and overlay reading its base beside the file target over that base. Prints a markdown table with each
// device's ratio to the loop device, then each target's ratio to its own reference, and writes it to
// $UBLK_TS_VM_OUT/<clock>.md. BENCH_ROWS=memory,null,overlay (say) makes only those rows and the loop device,
// to try rows without the whole table; the keys are in wanted(...) below.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

const clock = process.argv[2] ?? 'wall';
const out = `${process.env.UBLK_TS_VM_OUT ?? '/tmp'}/${clock}.md`;
const runtime = process.env.BENCH_RUNTIME ?? '8';
const sh = (cmd) => execFileSync('bash', ['-c', cmd], { encoding: 'utf8', maxBuffer: 64 << 20 }).trim();
const ublk = (...args) => JSON.parse(execFileSync(process.execPath, ['dist/ublk-ts.mjs', ...args, '--json'], { encoding: 'utf8' }));
const only = process.env.BENCH_ROWS?.split(',');
const wanted = (key) => !only || only.includes(key);

const JOBS = [
  { name: '4k randread', args: '--rw=randread --bs=4k --iodepth=64', unit: 'iops' },
  { name: '4k randwrite', args: '--rw=randwrite --bs=4k --iodepth=64', unit: 'iops' },
  { name: '1M seqread', args: '--rw=read --bs=1M --iodepth=16', unit: 'mbs' },
  { name: '1M seqwrite', args: '--rw=write --bs=1M --iodepth=16', unit: 'mbs' },
];

const writes = (job) => job.args.includes('write');

function fio(dev, job) {
  const json = sh(
    `fio --output-format=json --name=b --filename=${dev} --ioengine=io_uring --direct=1 ${job.args} ` +
      `--time_based --runtime=${runtime} --ramp_time=1 --size=448M --numjobs=1 --group_reporting`,
  );
  const j = JSON.parse(json.slice(json.indexOf('{'))).jobs[0];
  const side = writes(job) ? j.write : j.read;
  return { iops: side.iops, mbs: side.bw_bytes / 1e6 };
}

sh('mkdir -p /tmp/bench');
const devices = [];
function image(name, mb = 512) {
  const f = `/tmp/bench/${name}.img`;
  sh(`rm -f ${f} && truncate -s ${mb}M ${f} && dd if=/dev/zero of=${f} bs=1M count=${mb} conv=notrunc status=none`);
  return f;
}

const loop = sh(`losetup --direct-io=on -f --show ${image('loop')}`);
devices.push({ name: 'kernel loop (direct IO)', dev: loop, cleanup: () => sh(`losetup -d ${loop}`) });
if (wanted('null_blk'))
  try {
    sh(`modprobe -d ${process.env.UBLK_TS_KMOD_DIR} null_blk nr_devices=1 queue_mode=2 gb=1 submit_queues=2 hw_queue_depth=128`);
    devices.push({ name: 'kernel null_blk', dev: '/dev/nullb0', cleanup: () => sh('rmmod null_blk') });
  } catch {
    console.error('bench: null_blk not available, row skipped');
  }
for (const mode of ['auto-lease', 'lease', 'user-copy', 'copy'].filter(() => wanted('file'))) {
  const d = ublk('add', '--target', 'file', '--file', image(`ublk-${mode}`), '--data-mode', mode, '--queues', '2');
  devices.push({ name: `ublk-ts file ${mode}`, dev: d.blockDevice, cleanup: () => ublk('del', '-n', String(d.id)) });
}
// The fan-out targets on the same kind of file, default data mode: stripe over 2 legs (128k chunks) and a
// mirror over 2 legs; legs just large enough for fio's 448M (the guest's /tmp is its RAM).
for (const [target, mb] of [['stripe', 224], ['mirror', 448]].filter(([t]) => wanted(t))) {
  const legs = [0, 1].flatMap((i) => ['--leg', image(`${target}-${i}`, mb)]);
  const d = ublk('add', '--target', target, ...legs, '--queues', '2');
  devices.push({ name: `ublk-ts ${target} 2 legs (${d.mode})`, dev: d.blockDevice, cleanup: () => ublk('del', '-n', String(d.id)) });
}
if (wanted('null')) {
  const n = ublk('add', '--target', 'null', '--size', '1G', '--queues', '2');
  devices.push({ name: `ublk-ts null (${n.mode})`, dev: n.blockDevice, key: 'null', cleanup: () => ublk('del', '-n', String(n.id)) });
}
// TypeScript targets. memory against null: what the bridge costs (its reads of unwritten blocks are zeroes
// too). overlay over a base of real data with an empty overlay, so every read is of an unwritten chunk and
// routed to the base on the lease, against the file target over the same base; reads only, as writes would
// change what both read.
if (wanted('memory')) {
  const d = ublk('add', '--target', 'memory', '--size', '256M', '--queues', '2');
  devices.push({ name: `ublk-ts memory, TypeScript (${d.mode})`, dev: d.blockDevice, key: 'memory', cleanup: () => ublk('del', '-n', String(d.id)) });
}
if (wanted('overlay')) {
  const base = '/tmp/bench/overlay-base.img';
  sh(`head -c 256M /dev/urandom > ${base} && rm -f /tmp/bench/overlay.img /tmp/bench/overlay.img.map`);
  const f = ublk('add', '--target', 'file', '--file', base, '--queues', '2');
  devices.push({ name: `ublk-ts file over the overlay's base (${f.mode})`, dev: f.blockDevice, key: 'base', readOnly: true, cleanup: () => ublk('del', '-n', String(f.id)) });
  const o = ublk('add', '--target', 'overlay', '--base', base, '--overlay', '/tmp/bench/overlay.img', '--queues', '2');
  devices.push({ name: `ublk-ts overlay unwritten, TypeScript (${o.mode})`, dev: o.blockDevice, key: 'overlay', readOnly: true, cleanup: () => ublk('del', '-n', String(o.id)) });
}

// nbd: the nbd target and the kernel's own NBD client (nbd-client) against the same nbdkit memory export,
// with one connection each (nbd-client's default; the target then serves one queue), the target in the
// default data mode and in copy mode (the lease against the copy at 1M); then with two connections each
// (the export offers multi-conn: the target serves a queue per connection, the kernel a hardware queue).
let nbdkitPid;
if (wanted('nbd'))
  try {
    sh('nbdkit -U /tmp/bench/nbd.sock -P /tmp/bench/nbdkit.pid memory 1G');
    nbdkitPid = sh('cat /tmp/bench/nbdkit.pid');
    // Written once before anything is measured, so every device reads the same data, not holes.
    sh('nbd-client -unix /tmp/bench/nbd.sock /dev/nbd0 && fio --name=fill --filename=/dev/nbd0 --ioengine=io_uring ' +
      '--direct=1 --rw=write --bs=1M --iodepth=16 --size=448M --output-format=terse > /dev/null; nbd-client -d /dev/nbd0 || true');
    for (const conns of [1, 2]) {
      const nbd = `/dev/nbd${conns - 1}`;
      const many = conns > 1 ? 's' : '';
      try {
        sh(`nbd-client -unix /tmp/bench/nbd.sock ${nbd} -connections ${conns}`);
        devices.push({ name: `kernel nbd-client (${conns} connection${many})`, dev: nbd, key: `nbd-kernel-${conns}`, cleanup: () => sh(`nbd-client -d ${nbd}`) });
      } catch (e) {
        console.error(`bench: nbd-client with ${conns} connection${many} failed, row skipped: ${e.message}`);
      }
      for (const mode of conns === 1 ? ['auto', 'copy'] : ['auto']) {
        const d = ublk('add', '--target', 'nbd', '--socket', '/tmp/bench/nbd.sock', '--data-mode', mode, '--queues', String(conns));
        devices.push({ name: `ublk-ts nbd ${d.mode}, ${conns} queue${many} (send ${d.info.send})`, dev: d.blockDevice, key: `nbd-${mode}-${conns}`, cleanup: () => ublk('del', '-n', String(d.id)) });
      }
    }
  } catch (e) {
    console.error(`bench: nbd rows skipped: ${e.message}`);
  }

// Each device goes once measured: the next rows run without its server's memory (the memory target's data).
const results = devices.map((d) => {
  const r = JOBS.map((job) => {
    if (d.readOnly && writes(job)) return undefined;
    const v = fio(d.dev, job);
    console.error(`bench: ${d.name} ${job.name}: ${Math.round(v.iops)} IOPS ${v.mbs.toFixed(1)} MB/s`);
    return v;
  });
  d.cleanup();
  return { ...d, r };
});
if (nbdkitPid) sh(`kill ${nbdkitPid}`);

const base = results[0].r;
const cell = (v, i) => {
  if (!v) return '—';
  const job = JOBS[i];
  const val = job.unit === 'iops' ? `${Math.round(v.iops)} IOPS` : `${v.mbs.toFixed(1)} MB/s`;
  const ratio = job.unit === 'iops' ? v.iops / base[i].iops : v.mbs / base[i].mbs;
  return `${val} (${ratio.toFixed(2)}×)`;
};
const lines = [
  `### ${clock === 'icount' ? 'Instruction clock (TCG -icount shift=2): ranks CPU cost per IO' : 'Wall clock (multi-threaded TCG): noisy, ±20–30 % between boots'}`,
  '',
  `kernel ${sh('uname -r')}, fio io_uring direct, ${runtime}s per job, ublk-ts with 2 queues × depth 128; ratio to the kernel loop device in the same boot`,
  '',
  `| device | ${JOBS.map((j) => j.name).join(' | ')} |`,
  `|---|${JOBS.map(() => '---').join('|')}|`,
  ...results.map((d) => `| ${d.name} | ${d.r.map(cell).join(' | ')} |`),
  '',
  ...nbdRatios(),
  ...typescriptRatios(),
];
fs.writeFileSync(out, lines.join('\n'));
console.log(lines.join('\n'));

function has(key) {
  return results.some((d) => d.key === key);
}

/** Row a's result over row b's (by key) in job i, in the job's unit. */
function ratio(a, b, i) {
  const [x, y] = [a, b].map((k) => results.find((d) => d.key === k)?.r[i]);
  return x && y ? `${(x[JOBS[i].unit] / y[JOBS[i].unit]).toFixed(2)}×` : 'n/a';
}

/** The nbd target against the kernel's client (4k, same nbdkit, same connections) and its lease against its
 * copy mode (1M). */
function nbdRatios() {
  if (!has('nbd-auto-1')) return [];
  const client = (c) =>
    `4k randread ${ratio(`nbd-auto-${c}`, `nbd-kernel-${c}`, 0)}, 4k randwrite ${ratio(`nbd-auto-${c}`, `nbd-kernel-${c}`, 1)}`;
  return [
    `nbd target / kernel nbd-client (same nbdkit memory export): 1 connection: ${client(1)}; 2 connections: ${client(2)} (bar ≥ 1.1×); ` +
      `nbd target lease / copy mode: 1M seqread ${ratio('nbd-auto-1', 'nbd-copy-1', 2)}, 1M seqwrite ${ratio('nbd-auto-1', 'nbd-copy-1', 3)} (bar ≥ 1.2×)`,
    '',
  ];
}

/** The TypeScript targets against their native references, with the bars they are held to. */
function typescriptRatios() {
  return [
    has('memory') && `memory (TypeScript) / null (native): 4k randread ${ratio('memory', 'null', 0)} (bar ≥ 0.3×)`,
    has('overlay') &&
      `overlay reading unwritten blocks / file over the same base: 4k randread ${ratio('overlay', 'base', 0)} (bar ≥ 0.5×), ` +
        `1M seqread ${ratio('overlay', 'base', 2)} (bar ≥ 0.9×)`,
  ]
    .filter(Boolean)
    .flatMap((line) => [line, '']);
}
