#!/usr/bin/env node
// Inside one instruction-clock boot: the same fio jobs on devices served by build A (before) and build B
// (after), alternating, so that a change's cost on the hot path is read without boot-to-boot noise.
import { execFileSync } from 'node:child_process';

const [before, after] = process.argv.slice(2);
const runtime = process.env.BENCH_RUNTIME ?? '8';
const sh = (cmd) => execFileSync('bash', ['-c', cmd], { encoding: 'utf8', maxBuffer: 64 << 20 }).trim();
const ublk = (tree, ...args) =>
  JSON.parse(execFileSync(process.execPath, [`${tree}/dist/ublk-ts.mjs`, ...args, '--json'], { encoding: 'utf8', cwd: tree }));

const JOBS = ['randread', 'randwrite'];
const DEVICES = [
  { name: 'file auto-lease', args: () => ['--target', 'file', '--file', '/tmp/ab.img', '--data-mode', 'auto-lease'] },
  { name: 'null', args: () => ['--target', 'null', '--size', '1G'] },
];

function iops(dev, rw) {
  const json = sh(`fio --output-format=json --name=b --filename=${dev} --ioengine=io_uring --direct=1 --rw=${rw} --bs=4k ` +
    `--iodepth=64 --time_based --runtime=${runtime} --ramp_time=1 --size=448M`);
  const j = JSON.parse(json.slice(json.indexOf('{'))).jobs[0];
  return rw === 'randread' ? j.read.iops : j.write.iops;
}

sh('truncate -s 512M /tmp/ab.img && dd if=/dev/zero of=/tmp/ab.img bs=1M count=512 conv=notrunc status=none');
const sums = {};
for (const round of [0, 1]) {
  for (const [label, tree] of [['before', before], ['after', after]]) {
    for (const d of DEVICES) {
      const added = ublk(tree, 'add', ...d.args(), '--queues', '2');
      for (const rw of JOBS) {
        const v = iops(added.blockDevice, rw);
        const key = `${d.name} 4k ${rw}`;
        (sums[key] ??= { before: 0, after: 0 })[label] += v;
        console.error(`bench-ab: round ${round} ${label} ${key}: ${Math.round(v)} IOPS`);
      }
      ublk(tree, 'del', '-n', String(added.id));
    }
  }
}
console.log('| device, job | before (IOPS) | after (IOPS) | after / before |');
console.log('|---|---|---|---|');
for (const [k, v] of Object.entries(sums))
  console.log(`| ${k} | ${Math.round(v.before / 2)} | ${Math.round(v.after / 2)} | ${(v.after / v.before).toFixed(3)} |`);
