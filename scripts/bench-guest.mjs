#!/usr/bin/env node
// Inside one VM boot: fio on the kernel loop device (direct IO over a file), kernel null_blk, and
// ublk-ts (file in every data mode over the same kind of file, stripe and mirror over 2 such files, and
// null), the kernel's md RAID1 beside the mirror target over the same kind of legs (loop devices), the nbd
// target beside the kernel's nbd-client over one nbdkit, and the TypeScript targets: memory, and overlay
// reading its base beside the file target over that base. Then md and the mirror bring back a 1 GiB leg: in
// full, and after 1 % of its chunks were written while it was failed. Prints a markdown table with each
// device's ratio to the loop device, then each target's ratio to its own reference, then the resync table,
// and writes it to $UBLK_TS_VM_OUT/<clock>.md. BENCH_ROWS=memory,null,overlay (say) makes only those rows and
// the loop device, to try rows without the whole table; the keys are in wanted(...) below. The files are on
// tmpfs, or on ext4 over a RAM disk with BENCH_BACKING=ext4 (backingDir below says what differs).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const clock = process.argv[2] ?? 'wall';
const out = `${process.env.UBLK_TS_VM_OUT ?? '/tmp'}/${clock}.md`;
const runtime = process.env.BENCH_RUNTIME ?? '8';
const sh = (cmd) => execFileSync('bash', ['-c', cmd], { encoding: 'utf8', maxBuffer: 64 << 20 }).trim();
const cli = ['dist/ublk-ts.mjs'];
const ublk = (...args) => JSON.parse(execFileSync(process.execPath, [...cli, ...args, '--json'], { encoding: 'utf8' }));
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

// Where the images are: tmpfs (the default, on which the issues' bars were read), or ext4 on a RAM disk
// (BENCH_BACKING=ext4). tmpfs takes no non-blocking write (its files have no FMODE_NOWAIT), so io_uring
// hands every write to a file there to an io-wq worker, hashed by inode: a thread hop per write and one
// write at a time per file (the io_uring_queue_async_work trace counts one per WRITE_FIXED); the loop
// device writes from its own worker and pays none of that. ext4 takes io_uring's O_DIRECT writes in line,
// as it does on a disk; over a RAM disk (brd) it measures that path without the disk's own time. Mounted
// with discard, so a row's deleted images give the RAM disk its pages back.
const backing = process.env.BENCH_BACKING ?? 'tmpfs';
function backingDir(dir) {
  sh(`mkdir -p ${dir}`);
  if (backing === 'tmpfs') return 'tmpfs';
  if (backing !== 'ext4') throw new Error(`BENCH_BACKING=${backing}: tmpfs or ext4`);
  sh(`modprobe -d ${process.env.UBLK_TS_KMOD_DIR} brd rd_nr=1 rd_size=${3 << 20}`);
  sh(`mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/ram0 && mount -o discard /dev/ram0 ${dir}`);
  return 'ext4 on a RAM disk (brd)';
}
const backingName = backingDir('/tmp/bench');
function image(name, mb = 512) {
  const f = `/tmp/bench/${name}.img`;
  // O_DIRECT: no dirty page of it is left for a reader's O_DIRECT to write back first (on ext4, io_uring then
  // hands the read to a worker), or for the flusher to write back while a row is measured.
  sh(`rm -f ${f} && truncate -s ${mb}M ${f} && dd if=/dev/zero of=${f} bs=1M count=${mb} conv=notrunc oflag=direct status=none`);
  return f;
}
const dropImages = (files) => files.forEach((f) => fs.rmSync(f, { force: true }));

/** A ublk-ts device with 2 queues; deleting it deletes the images it was made over. */
function ublkDevice(args, files = []) {
  const d = ublk('add', ...args, '--queues', '2');
  return { d, dev: d.blockDevice, cleanup: () => (ublk('del', '-n', String(d.id)), dropImages(files)) };
}

/** Two legs of the same kind for md and the mirror: loop devices (direct IO) over images of mb MiB. */
function loopLegs(name, mb) {
  const files = [0, 1].map((i) => image(`${name}-${i}`, mb));
  const devs = files.map((f) => sh(`losetup --direct-io=on -f --show ${f}`));
  return { devs, drop: () => (devs.forEach((d) => sh(`losetup -d ${d}`)), dropImages(files)) };
}

/** make(devs) over fresh loop legs of 456 MiB (fio's 448M and the metadata); the legs go with the device, or
 * at once if it cannot be made. */
function overLoopLegs(name, make) {
  const legs = loopLegs(name, 456);
  try {
    const o = make(legs.devs);
    return { ...o, cleanup: () => (o.cleanup(), legs.drop()) };
  } catch (e) {
    legs.drop();
    throw e;
  }
}

// md RAID1 as the issue sets it beside the mirror: version 1.2 metadata, an internal write-intent bitmap of
// 64 KiB chunks (the mirror's default chunk), no initial resync (the mirror gets --assume-clean too).
const MD = '/dev/md0';
function mdCreate(legs) {
  sh(`modprobe -d ${process.env.UBLK_TS_KMOD_DIR} raid1`);
  sh(`mdadm --create ${MD} --quiet --run --level=1 --raid-devices=2 --metadata=1.2 --bitmap=internal --bitmap-chunk=64K --assume-clean ${legs.join(' ')}`);
  return MD;
}
const mirrorArgs = (legs) => ['--target', 'mirror', ...legs.flatMap((l) => ['--leg', l]), '--assume-clean', '--bitmap-chunk', '64k'];

// Rows: each made just before its jobs run and unmade right after (the next rows run without its server's
// memory), so the guest's /tmp, which is its RAM, holds one row's images at a time. open() returns the
// device, what unmakes it, and the row's name where the device completes it (its data mode).
const rows = [];
const row = (name, open, more = {}) => rows.push({ name, open, ...more });

row('kernel loop (direct IO)', () => {
  const f = image('loop');
  const dev = sh(`losetup --direct-io=on -f --show ${f}`);
  return { dev, cleanup: () => (sh(`losetup -d ${dev}`), dropImages([f])) };
}, { key: 'loop' });
if (wanted('null_blk'))
  row('kernel null_blk', () => {
    sh(`modprobe -d ${process.env.UBLK_TS_KMOD_DIR} null_blk nr_devices=1 queue_mode=2 gb=1 submit_queues=2 hw_queue_depth=128`);
    return { dev: '/dev/nullb0', cleanup: () => sh('rmmod null_blk') };
  });
for (const mode of ['auto-lease', 'lease', 'user-copy', 'copy'].filter(() => wanted('file'))) {
  const open = () => {
    const f = image(`ublk-${mode}`);
    return ublkDevice(['--target', 'file', '--file', f, '--data-mode', mode], [f]);
  };
  row(`ublk-ts file ${mode}`, open, { key: `file-${mode}` });
}
// The fan-out targets on the same kind of file, default data mode: stripe over 2 legs (128k chunks) and a
// mirror over 2 legs; legs just large enough for fio's 448M (the mirror's metadata takes a little of each).
// The images are zeroes alike: the mirror is told so (--assume-clean, as md's rows are), else its initial
// resync would run beside fio.
for (const [target, mb, more] of [['stripe', 224, []], ['mirror', 456, ['--assume-clean']]].filter(([t]) => wanted(t)))
  row(`ublk-ts ${target}`, () => {
    const files = [0, 1].map((i) => image(`${target}-${i}`, mb));
    const o = ublkDevice(['--target', target, ...files.flatMap((f) => ['--leg', f]), ...more], files);
    return { ...o, name: `ublk-ts ${target} 2 legs (${o.d.mode})` };
  }, { key: target });
// The mirror beside md RAID1, both over two loop devices of the same kind.
if (wanted('md')) {
  row('kernel md RAID1, 2 loop legs (bitmap)', () =>
    overLoopLegs('md', (devs) => ({ dev: mdCreate(devs), cleanup: () => sh(`mdadm --quiet --stop ${MD}`) })), { key: 'md' });
  row('ublk-ts mirror, 2 loop legs', () =>
    overLoopLegs('mirror-loop', (devs) => {
      const o = ublkDevice(mirrorArgs(devs));
      return { ...o, name: `ublk-ts mirror, 2 loop legs (${o.d.mode})` };
    }), { key: 'mirror-md' });
  // The hop a ublk server adds on one such leg (md adds none): how near md the mirror over these legs can be.
  row('ublk-ts file over one loop leg', () => {
    const f = image('file-loop', 456);
    const dev = sh(`losetup --direct-io=on -f --show ${f}`);
    const o = ublkDevice(['--target', 'file', '--file', dev]);
    return { ...o, name: `ublk-ts file over one loop leg (${o.d.mode})`, cleanup: () => (o.cleanup(), sh(`losetup -d ${dev}`), dropImages([f])) };
  }, { key: 'file-loop' });
}
if (wanted('null'))
  row('ublk-ts null', () => {
    const o = ublkDevice(['--target', 'null', '--size', '1G']);
    return { ...o, name: `ublk-ts null (${o.d.mode})` };
  }, { key: 'null' });
// TypeScript targets. memory against null: what the bridge costs (its reads of unwritten blocks are zeroes
// too). overlay over a base of real data with an empty overlay, so every read is of an unwritten chunk and
// routed to the base on the lease, against the file target over the same base; reads only, as writes would
// change what both read.
if (wanted('memory'))
  row('ublk-ts memory', () => {
    const o = ublkDevice(['--target', 'memory', '--size', '256M']);
    return { ...o, name: `ublk-ts memory, TypeScript (${o.d.mode})` };
  }, { key: 'memory' });
if (wanted('overlay')) {
  const base = '/tmp/bench/overlay-base.img';
  row('ublk-ts file over the overlay\'s base', () => {
    sh(`head -c 256M /dev/urandom | dd of=${base} bs=1M iflag=fullblock oflag=direct status=none && rm -f /tmp/bench/overlay.img /tmp/bench/overlay.img.map`);
    const o = ublkDevice(['--target', 'file', '--file', base]);
    return { ...o, name: `ublk-ts file over the overlay's base (${o.d.mode})` };
  }, { key: 'base', readOnly: true });
  row('ublk-ts overlay unwritten', () => {
    const o = ublkDevice(['--target', 'overlay', '--base', base, '--overlay', '/tmp/bench/overlay.img']);
    const files = [base, '/tmp/bench/overlay.img', '/tmp/bench/overlay.img.map'];
    return { ...o, name: `ublk-ts overlay unwritten, TypeScript (${o.d.mode})`, cleanup: () => (o.cleanup(), dropImages(files)) };
  }, { key: 'overlay', readOnly: true });
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
      row(`kernel nbd-client (${conns} connection${many})`, () => {
        sh(`nbd-client -unix /tmp/bench/nbd.sock ${nbd} -connections ${conns}`);
        return { dev: nbd, cleanup: () => sh(`nbd-client -d ${nbd}`) };
      }, { key: `nbd-kernel-${conns}` });
      for (const mode of conns === 1 ? ['auto', 'copy'] : ['auto'])
        row(`ublk-ts nbd ${mode}`, () => {
          const d = ublk('add', '--target', 'nbd', '--socket', '/tmp/bench/nbd.sock', '--data-mode', mode, '--queues', String(conns));
          return { dev: d.blockDevice, name: `ublk-ts nbd ${d.mode}, ${conns} queue${many} (send ${d.info.send})`, cleanup: () => ublk('del', '-n', String(d.id)) };
        }, { key: `nbd-${mode}-${conns}` });
    }
  } catch (e) {
    console.error(`bench: nbd rows skipped: ${e.message}`);
  }

// ---- resync: md RAID1 and the mirror bring back leg 2 of 2 loop legs of 1 GiB, one array after the other
// (so /tmp holds two legs at a time). Full: the leg was removed (md: and its superblock zeroed), so every
// chunk is copied. 1 %: the leg was failed while a 4k write went into every 100th 64 KiB chunk, so the
// bitmap names those chunks and only they are copied.
const RESYNC_MB = 1024;
const DIRTY_EVERY = 100;
const POLL_MS = 5;
const RESYNC_TIMEOUT_MS = 600_000;

/** Sectors written to a block device so far (/sys/block/X/stat, field 7). */
function sectorsWritten(dev) {
  return Number(fs.readFileSync(`/sys/block/${path.basename(dev)}/stat`, 'utf8').trim().split(/\s+/)[6]);
}

/**
 * Runs argv (what brings `leg` back) and waits until whole() says the array is whole again. The resync takes
 * from the first write to the leg (md and the mirror each write its superblock as it comes back) to the last
 * one seen before whole(): neither the command's start-up (a node process for the mirror) nor how often the
 * array's state is published is counted. Returns seconds and bytes written to the leg.
 */
async function timeResync(leg, argv, whole) {
  const before = sectorsWritten(leg);
  let seen = before, first, last, exit;
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'inherit'] });
  child.on('exit', (code) => (exit = code));
  const limit = performance.now() + RESYNC_TIMEOUT_MS;
  for (;;) {
    const t = performance.now(), s = sectorsWritten(leg);
    if (s !== seen) [first, last, seen] = [first ?? t, t, s];
    if (exit !== undefined && exit !== 0) throw new Error(`${argv.join(' ')} exited with ${exit}`);
    if (exit === 0 && whole()) break;
    if (t > limit) throw new Error(`${argv.join(' ')}: not whole after ${RESYNC_TIMEOUT_MS / 1000} s`);
    await sleep(POLL_MS);
  }
  if (first === undefined) throw new Error(`${argv.join(' ')}: nothing was written to ${leg}`);
  return { seconds: (last - first) / 1000, written: (seen - before) * 512 };
}

/** A 4k write into every DIRTY_EVERY-th 64 KiB chunk of dev; returns the number of chunks written. */
function dirtyChunks(dev) {
  const stride = DIRTY_EVERY * 64;
  sh(`fio --name=dirty --filename=${dev} --ioengine=psync --direct=1 --bs=4k --rw=write:${stride - 4}k --output-format=terse > /dev/null`);
  return Math.ceil(Number(sh(`blockdev --getsize64 ${dev}`)) / (stride << 10));
}

/** The record `ublk-ts list` reads, read here at each poll: the CLI would start a node process every time. */
const mirrorInfo = (id) => JSON.parse(fs.readFileSync(`${process.env.UBLK_TS_STATE_DIR ?? '/run/ublk-ts'}/ublkb${id}.json`, 'utf8')).info;

async function mdResync() {
  const legs = loopLegs('resync-md', RESYNC_MB);
  try {
    mdCreate(legs.devs);
    try {
      const leg = legs.devs[1];
      const mdFile = (f) => fs.readFileSync(`/sys/block/${path.basename(MD)}/md/${f}`, 'utf8').trim();
      const whole = () => mdFile('degraded') === '0' && mdFile('sync_action') === 'idle';
      const size = Number(sh(`blockdev --getsize64 ${MD}`));
      sh(`mdadm ${MD} --quiet --fail ${leg} --remove ${leg} && mdadm --zero-superblock ${leg}`);
      const full = await timeResync(leg, ['mdadm', MD, '--quiet', '--add', leg], whole);
      sh(`mdadm ${MD} --quiet --fail ${leg} --remove ${leg}`);
      const chunks = dirtyChunks(MD);
      const part = await timeResync(leg, ['mdadm', MD, '--quiet', '--re-add', leg], whole);
      return { full: { ...full, bytes: size }, part: { ...part, chunks } };
    } finally {
      sh(`mdadm --quiet --stop ${MD}`);
    }
  } finally {
    legs.drop();
  }
}

async function mirrorResync() {
  const legs = loopLegs('resync-mirror', RESYNC_MB);
  try {
    const o = ublkDevice(mirrorArgs(legs.devs));
    try {
      const id = String(o.d.id);
      const leg2 = (verb) => ['mirror', verb, '-n', id, '--leg', '2'];
      const readd = [process.execPath, ...cli, ...leg2('re-add')];
      const whole = () => mirrorInfo(id).mirror === 'clean';
      ublk(...leg2('fail'));
      ublk(...leg2('remove'));
      const full = await timeResync(legs.devs[1], readd, whole);
      const fullCopied = mirrorInfo(id).resyncCopied;
      ublk(...leg2('fail'));
      const chunks = dirtyChunks(o.dev);
      const part = await timeResync(legs.devs[1], readd, whole);
      return { full: { ...full, bytes: fullCopied }, part: { ...part, chunks, bytes: mirrorInfo(id).resyncCopied } };
    } finally {
      o.cleanup();
    }
  } finally {
    legs.drop();
  }
}

async function resyncBench() {
  // md's resync is capped at speed_limit_max (200 MB/s by default), and above speed_limit_min it waits
  // whenever it thinks its legs busy; the mirror's default is no cap. Both limits out of the way: md at its fastest.
  sh(`modprobe -d ${process.env.UBLK_TS_KMOD_DIR} raid1 && cd /proc/sys/dev/raid && echo 100000000 > speed_limit_max && echo 100000000 > speed_limit_min`);
  let md, mirror;
  try {
    md = await mdResync();
    mirror = await mirrorResync();
  } catch (e) {
    console.error(`bench: resync rows skipped: ${e.message}`);
    return [];
  }
  const mb = (bytes) => (bytes / 1e6).toFixed(1);
  const rate = (x) => `${mb(x.full.bytes / x.full.seconds)} MB/s (${mb(x.full.bytes)} MB in ${x.full.seconds.toFixed(2)} s)`;
  const part = (x) => `${x.part.seconds.toFixed(3)} s, ${mb(x.part.written)} MB written to the leg`;
  return [
    `Resync of leg 2 of 2 loop legs of ${RESYNC_MB} MiB (bitmap of 64 KiB chunks; md's speed limits lifted): from the first write to the ` +
      `returning leg to its last before the array was whole; "1 %": a 4k write into every ${DIRTY_EVERY}th chunk ` +
      `(${md.part.chunks} chunks, ${mb(md.part.chunks * 65536)} MB) while the leg was failed (md: failed and removed, then --re-add)`,
    '',
    '| resync | md RAID1 | ublk-ts mirror | mirror / md |',
    '|---|---|---|---|',
    `| full (md: --zero-superblock, --add; mirror: remove, re-add) | ${rate(md)} | ${rate(mirror)} | ` +
      `${(mirror.full.bytes / mirror.full.seconds / (md.full.bytes / md.full.seconds)).toFixed(2)}× (bar ≥ 0.8×) |`,
    `| 1 % of chunks | ${part(md)} | ${part(mirror)}; it says it copied ${mb(mirror.part.bytes)} MB | ` +
      `${(md.part.seconds / mirror.part.seconds).toFixed(2)}× (md's time / the mirror's) |`,
    '',
  ];
}

// A row that cannot be made (no null_blk, no raid1) is left out with a line; the loop device, the base of
// every ratio, must be there.
const results = [];
for (const d of rows) {
  let o;
  try {
    o = d.open();
  } catch (e) {
    if (!results.length) throw e;
    console.error(`bench: ${d.name}: row skipped: ${e.message}`);
    continue;
  }
  const name = o.name ?? d.name;
  const r = JOBS.map((job) => {
    if (d.readOnly && writes(job)) return undefined;
    const v = fio(o.dev, job);
    console.error(`bench: ${name} ${job.name}: ${Math.round(v.iops)} IOPS ${v.mbs.toFixed(1)} MB/s`);
    return v;
  });
  o.cleanup();
  results.push({ ...d, name, r });
}
if (nbdkitPid) sh(`kill ${nbdkitPid}`);
const resync = wanted('resync') ? await resyncBench() : undefined;

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
  `kernel ${sh('uname -r')}, fio io_uring direct, ${runtime}s per job, ublk-ts with 2 queues × depth 128; images on ${backingName}; ` +
    'ratio to the kernel loop device in the same boot',
  '',
  `| device | ${JOBS.map((j) => j.name).join(' | ')} |`,
  `|---|${JOBS.map(() => '---').join('|')}|`,
  ...results.map((d) => `| ${d.name} | ${d.r.map(cell).join(' | ')} |`),
  '',
  ...mirrorRatios(),
  ...nbdRatios(),
  ...typescriptRatios(),
  ...(resync ?? []),
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

/** The mirror against md RAID1 on the same loop legs, in every job, and its writes against the file target's. */
function mirrorRatios() {
  return [
    has('mirror-md') &&
      `mirror / md RAID1 (2 loop legs each, bitmap of 64 KiB chunks): ${JOBS.map((j, i) => `${j.name} ${ratio('mirror-md', 'md', i)}`).join(', ')} ` +
        '(bar ≥ 1.0× at 4k randread and randwrite)',
    has('file-loop') &&
      `the ublk hop on one such leg: file over one loop leg / the loop device: 4k randread ${ratio('file-loop', 'loop', 0)}, ` +
        `4k randwrite ${ratio('file-loop', 'loop', 1)} (md over its legs adds no hop)`,
    // md can take no file: its legs are loop devices over the same kind of file the mirror takes itself.
    has('mirror') && has('md') &&
      `mirror over 2 files / md RAID1 over loop devices of 2 files: ${JOBS.map((j, i) => `${j.name} ${ratio('mirror', 'md', i)}`).join(', ')}`,
    has('mirror') && `mirror over 2 files / file auto-lease: 4k randwrite ${ratio('mirror', 'file-auto-lease', 1)} (bar ≥ 0.7×)`,
    // What a second copy costs each: md's writes against its one leg's, the mirror's against the file target's.
    has('md') && has('mirror') &&
      `a second copy: md RAID1 over 2 loop devices / one loop device: 4k randwrite ${ratio('md', 'loop', 1)}; ` +
        `mirror over 2 files / file over one: 4k randwrite ${ratio('mirror', 'file-auto-lease', 1)}`,
  ]
    .filter(Boolean)
    .flatMap((line) => [line, '']);
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
