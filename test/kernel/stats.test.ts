// stats on the real driver: during fio, the IOPS it reports are fio's own (within 10 %, over the same
// window), its server counters move, and --watch prints lines when piped and redraws on a terminal; and
// the server's queue threads carry their queue's name, for top -H and ps -L.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { DeviceStats } from '../../src/stats.js';
import { cli, cliJson, CLI, delAll, fioInBackground, fioJob, scratch, sh, sleep, type AddedDevice, type FioJob } from './helpers.js';

afterEach(delAll);

/**
 * fio's IOPS by direction over [from, to] (ms since the epoch), from its per-second log. The log's times
 * count from the end of the ramp, which is the end of the run (timestamp_ms) less its runtime.
 */
function fioIopsOver(logFile: string, jsonFile: string, from: number, to: number): { read: number; write: number } {
  const out = JSON.parse(fs.readFileSync(jsonFile, 'utf8')) as { timestamp_ms: number; jobs: FioJob[] };
  const start = out.timestamp_ms - out.jobs[0].job_runtime;
  const sums = [0, 0];
  const bins = [0, 0];
  for (const line of fs.readFileSync(logFile, 'utf8').trim().split('\n')) {
    const [t, iops, dir] = line.split(',').map((x) => Number(x.trim()));
    // Whole bins (t - 1000, t] inside the window.
    if (start + t - 1000 >= from - 1 && start + t <= to + 1 && dir <= 1) {
      sums[dir] += iops;
      bins[dir]++;
    }
  }
  expect(bins[0]).toBeGreaterThanOrEqual(8);
  return { read: sums[0] / bins[0], write: sums[1] / bins[1] };
}

describe('stats', () => {
  it("--json during fio: IOPS within 10 % of fio's over the same window; the server counts the requests", async () => {
    const dir = scratch('stats');
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', path.join(dir, 'disk.img'), '--size', '256M', '--queues', '2');
    const log = path.join(dir, 'fio');
    const json = path.join(dir, 'fio.json');
    const fio = fioInBackground(['--name=stats', `--filename=${dev.blockDevice}`, '--ioengine=io_uring', '--direct=1', '--rw=randrw',
      '--bs=4k', '--iodepth=16', '--time_based', '--ramp_time=2', '--runtime=24', '--output-format=json', `--output=${json}`,
      `--write_iops_log=${log}`, '--log_avg_msec=1000']);
    await sleep(6000);
    // One report over a 10 s window inside fio's run (one JSON line: --watch with --count 1).
    const r = cli('stats', '-n', String(dev.id), '--json', '--watch', '10', '--count', '1');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
    const [s] = (JSON.parse(r.stdout) as { devices: DeviceStats[] }).devices;
    expect(await fio.exit).toBe(0);
    const f = fioIopsOver(`${log}_iops.1.log`, json, s.window.from, s.window.to);
    console.log(`stats: read ${s.read.iops.toFixed(0)}/s write ${s.write.iops.toFixed(0)}/s over ${s.window.seconds.toFixed(2)} s; ` +
      `fio over the same window: read ${f.read.toFixed(0)}/s write ${f.write.toFixed(0)}/s; server ${JSON.stringify(s.server)}`);
    expect(s.read.iops).toBeGreaterThan(0);
    expect(s.write.iops).toBeGreaterThan(0);
    expect(Math.abs(s.read.iops - f.read) / f.read).toBeLessThan(0.1);
    expect(Math.abs(s.write.iops - f.write) / f.write).toBeLessThan(0.1);
    expect(s.read.bytesPerSecond).toBeCloseTo(s.read.iops * 4096, -3);
    expect(s.window.seconds).toBeGreaterThan(9);
    // The server's own counters: every request fio made passed through them, none failed.
    const total = fioJob(fs.readFileSync(json, 'utf8'));
    const after = cliJson<{ devices: DeviceStats[] }>('stats', '-n', String(dev.id)).devices[0].server!;
    expect(after.requests).toBeGreaterThanOrEqual(total.read.total_ios + total.write.total_ios);
    expect(after.leased + after.copied).toBeGreaterThanOrEqual(total.read.total_ios + total.write.total_ios);
    expect(after.errors).toBe(0);
    expect(s.server!.requestsPerSecond).toBeGreaterThan(0);
  });

  it('--watch prints lines when piped and redraws in place on a terminal', () => {
    const dev = cliJson<AddedDevice>('add', '--target', 'null', '--size', '1G', '--queues', '1');
    const piped = cli('stats', '--watch', '0.5', '--count', '3');
    expect(piped.status).toBe(0);
    expect(piped.stdout).not.toContain('\x1b');
    const lines = piped.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^TIME +DEVICE +NAME +MODE +READ\/s/);
    expect(lines.slice(1)).toHaveLength(3);
    for (const l of lines.slice(1)) expect(l).toMatch(new RegExp(`^\\d\\d:\\d\\d:\\d\\d ublkb${dev.id} `));
    // script(1) gives the command a terminal.
    const tty = sh(`script -qec '${process.execPath} ${CLI} stats --watch 0.5 --count 2' /dev/null`);
    expect(tty.split('\x1b[H\x1b[2J')).toHaveLength(3);
    expect(tty).toContain(`ublkb${dev.id}`);
  });

  it('each queue thread is named ublk-qN', () => {
    const dev = cliJson<AddedDevice>('add', '--target', 'null', '--size', '1G', '--queues', '2');
    const task = `/proc/${dev.pid}/task`;
    const names = fs.readdirSync(task).map((t) => fs.readFileSync(path.join(task, t, 'comm'), 'utf8').trim());
    expect(names.filter((n) => n.startsWith('ublk-q')).sort()).toEqual(['ublk-q0', 'ublk-q1']);
  });
});
