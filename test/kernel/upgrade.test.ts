// `upgrade` on the real driver: a new server takes a device over under a verified write job (QD64 over 2
// queues, mixed block sizes) on file, mirror and nbd devices, with fio's per-second IOPS log showing the
// switch; a memory device is refused and keeps serving; `upgrade --all` skips it and upgrades a device
// under a --restart supervisor, which takes the handover for no crash; an `up` name stays through it, and
// a gc or recover meanwhile leaves the device to the process taking it over.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { alive, CLI, cli, cliJson, delAll, failedInOneLine, FIO_VERIFY, fioInBackground, fioJob, hung, inBackground, listed, nbdkit, scratch, sh, stateOf, waitFor, type AddedDevice } from './helpers.js';
import type { UpgradeAll, Upgraded } from '../../src/upgrade.js';
import { readRecord, stateDir } from '../../src/state.js';
import type { GcOutcome } from '../../src/gc.js';
import type { Outcome } from '../../src/updown.js';

afterEach(delAll);

const VERSION = /^\d+\.\d+\.\d+\+[0-9a-f]{10}$/;
/** Each of fio's 2 jobs writes at this rate (about 200 IOPS at bssplit's mean of 19.6 KiB): its SIZE takes SIZE / 4 MiB
 * seconds, long enough for an upgrade (two node processes start) under TCG emulation. */
const WRITE_RATE = '4m';

/** `ublk-ts upgrade ARGS` in the background (the test keeps reading fio meanwhile). */
async function upgrade(...args: string[]): Promise<string> {
  const run = inBackground(process.execPath, [CLI, 'upgrade', ...args]);
  const code = await hung(run.exit, 90_000);
  expect(code, run.output()).toBe(0);
  return run.output();
}

const ioErrors = (id: number) => Number(sh(`dmesg | grep -c 'I/O error, dev ublkb${id}' || true`).trim());

/**
 * Writes (IOPS) per second of the write phase, summed over fio's jobs: from the IOPS logs
 * (`--log_avg_msec=1000`: one line a second per job, `msec, iops, direction, ...`; a second missing
 * from both logs counts as zero).
 */
function writesPerSecond(prefix: string): number[] {
  const dir = path.dirname(prefix);
  const logs = fs.readdirSync(dir).filter((n) => n.startsWith(`${path.basename(prefix)}_iops`));
  expect(logs.length).toBe(2);
  const sum = new Map<number, number>();
  for (const l of logs)
    for (const line of fs.readFileSync(path.join(dir, l), 'utf8').trim().split('\n')) {
      const [ms, iops, dir] = line.split(',').map((f) => Number(f.trim()));
      if (dir === 1) sum.set(Math.round(ms / 1000), (sum.get(Math.round(ms / 1000)) ?? 0) + iops);
    }
  const last = Math.max(...sum.keys());
  return Array.from({ length: last }, (_, i) => sum.get(i + 1) ?? 0);
}

const longestZeroRun = (xs: number[]) => xs.reduce(([run, max], x) => (x === 0 ? [run + 1, Math.max(max, run + 1)] : [0, max]), [0, 0])[1];

/**
 * fio writes SIZE per job (2 jobs, QD32 each, offsets apart) at WRITE_RATE each, then reads everything
 * back and checks it (crc32c); `during` runs while it writes. Zero verify errors, no IO error, exit 0,
 * and IOPS never zero for more than 2 s in a row.
 */
async function verifiedThrough(dev: AddedDevice, size: string, during: () => Promise<void>): Promise<void> {
  const prefix = path.join(scratch(`fio-${dev.id}`), 'up');
  const errorsBefore = ioErrors(dev.id);
  const fio = fioInBackground(['--name=up', `--filename=${dev.blockDevice}`, '--ioengine=io_uring', '--direct=1', '--rw=randwrite',
    '--bssplit=4k/50:16k/30:64k/20', '--numjobs=2', '--iodepth=32', `--size=${size}`, `--offset_increment=${size}`, '--group_reporting',
    `--rate=,${WRITE_RATE}`, ...FIO_VERIFY.split(' '), `--write_iops_log=${prefix}`, '--log_avg_msec=1000', '--output-format=json']);
  await waitFor('writes under way', () => fs.readFileSync(`/sys/block/ublkb${dev.id}/stat`, 'utf8').trim().split(/\s+/)[4] !== '0', 30_000);
  await during();
  // Still in the write phase: the upgrade happened under load, not after it.
  expect(await hung(fio.exit, 0)).toBe('hung');
  expect(await hung(fio.exit, 120_000)).toBe(0);
  const job = fioJob(fio.output());
  expect(job.error).toBe(0);
  expect(job.read.io_bytes).toBeGreaterThanOrEqual(job.write.io_bytes - (256 << 10)); // every block read back and checked
  expect(fio.output()).not.toMatch(/verify failed|bad magic|bad header|crc32c: verify/i);
  expect(ioErrors(dev.id)).toBe(errorsBefore);
  const perSecond = writesPerSecond(prefix);
  console.log(`ublkb${dev.id} (${dev.target}) writes per second: ${perSecond.join(' ')}`);
  expect(longestZeroRun(perSecond)).toBeLessThanOrEqual(2);
}

/** The device's record, read in this process (a `list` under emulation takes seconds of the write phase). */
function record(id: number): AddedDevice {
  const rec = readRecord(id);
  if (!rec) throw new Error(`ublkb${id} has no record`);
  return rec;
}

/** One upgrade of a device under load, checked: a new server pid that serves it, the versions, the output. */
async function upgradeChecked(dev: AddedDevice, json: boolean): Promise<Upgraded> {
  const before = record(dev.id);
  const t0 = Date.now();
  const out = await upgrade('-n', String(dev.id), ...(json ? ['--json'] : []));
  const now = record(dev.id);
  console.log(`upgrade of ublkb${dev.id} (${dev.target}) took ${Date.now() - t0} ms:\n${sh(`tail -n 4 ${before.log} ${now.log}`)}`);
  expect(now.pid).not.toBe(before.pid);
  expect(alive(now.pid)).toBe(true);
  expect(alive(before.pid)).toBe(false);
  expect(now.version).toMatch(VERSION);
  const expected = { id: dev.id, blockDevice: dev.blockDevice, from: { pid: before.pid, version: before.version! }, to: { pid: now.pid, version: now.version! }, handover: 'quiesce', supervised: false };
  if (json) expect(JSON.parse(out)).toEqual(expected);
  else expect(out.trim()).toBe(`ublkb${dev.id}: ${before.version} -> ${now.version} (pid ${before.pid} -> ${now.pid}, quiesce)`);
  return expected;
}

/** After the load: the device is live under the last server. */
function servedBy(dev: AddedDevice, u: Upgraded): void {
  const d = listed(dev.id);
  expect(d.state).toBe('live');
  expect(d.pid).toBe(u.to.pid);
  expect(d.version).toBe(u.to.version);
}

describe('upgrade under fio verify (QD64, bssplit 4k-64k, 2 queues)', () => {
  it('file: upgraded twice in a row during the write phase', async () => {
    const img = path.join(scratch('up-file'), 'disk.img');
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--size', '200M', '--queues', '2');
    expect(dev.version).toMatch(VERSION);
    // Asked at add where the kernel has it (7.2 does): the handover goes through QUIESCE_DEV.
    expect(cliJson<{ gotFlags: string[] }>('features', '-n', String(dev.id)).gotFlags).toEqual(expect.arrayContaining(['QUIESCE', 'USER_RECOVERY_REISSUE']));
    let last: Upgraded | undefined;
    await verifiedThrough(dev, '100M', async () => {
      const first = await upgradeChecked(dev, false);
      last = await upgradeChecked(dev, true);
      expect(last.from.pid).toBe(first.to.pid);
    });
    servedBy(dev, last!);
  }, 180_000);

  it('mirror over 2 file legs', async () => {
    const dir = scratch('up-mirror');
    const legs = [0, 1].map((i) => path.join(dir, `leg${i}.img`));
    sh(legs.map((f) => `truncate -s 136M ${f}`).join(' && '));
    const dev = cliJson<AddedDevice>('add', '--target', 'mirror', ...legs.flatMap((f) => ['--leg', f]), '--assume-clean', '--queues', '2');
    let u: Upgraded | undefined;
    await verifiedThrough(dev, '60M', async () => void (u = await upgradeChecked(dev, true)));
    servedBy(dev, u!);
    expect(listed(dev.id).info).toMatchObject({ legs: 'in-sync,in-sync' });
  }, 180_000);

  it('nbd over nbdkit memory (a connection per queue, connected again by the new server)', async () => {
    const sock = path.join(scratch('up-nbd'), 'nbd.sock');
    await nbdkit(sock, 'memory', '136M');
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '2');
    let u: Upgraded | undefined;
    await verifiedThrough(dev, '60M', async () => void (u = await upgradeChecked(dev, false)));
    servedBy(dev, u!);
    expect(listed(dev.id).info).toMatchObject({ state: 'connected' });
  }, 180_000);

  it('nbd: a connection flushes the writes it acknowledged before the next server takes over', async () => {
    const dir = scratch('up-nbd-flush');
    const [sock, log] = [path.join(dir, 'nbd.sock'), path.join(dir, 'nbdkit.log')];
    // One connection, which no other connection's FLUSH covers (no NBD_FLAG_CAN_MULTI_CONN); every request logged.
    await nbdkit(sock, '--filter=log', '--filter=multi-conn', 'memory', '16M', 'multi-conn-mode=disable', `logfile=${log}`);
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1');
    // Past the page cache, without FUA or fsync: acknowledged into the server's cache, not flushed.
    sh(`dd if=/dev/urandom of=${dev.blockDevice} bs=64k count=4 oflag=direct status=none`);
    const before = fs.readFileSync(log, 'utf8');
    expect(before).toMatch(/ connection=1 Write /);
    await upgradeChecked(dev, false);
    const during = fs.readFileSync(log, 'utf8').slice(before.length);
    const ops = [...during.matchAll(/ connection=1 (Write|Flush|Disconnect)\b/g)].map((m) => m[1]);
    expect(ops).toEqual(['Flush', 'Disconnect']);
    expect(during).toMatch(/ connection=2 Connect /); // the next server's
  }, 60_000);
});

describe('what upgrade leaves alone', () => {
  it('a memory device is refused in one line and keeps serving; --all skips it and upgrades one under a supervisor', async () => {
    const mem = cliJson<AddedDevice>('add', '--target', 'memory', '--size', '16M', '--queues', '1');
    sh(`head -c 1M /dev/urandom > /tmp/up-pattern && dd if=/tmp/up-pattern of=${mem.blockDevice} bs=1M oflag=direct status=none`);
    const refused = failedInOneLine(cli('upgrade', '-n', String(mem.id)));
    expect(refused).toMatch(/keeps its data in its server process.*not upgraded/);
    expect(listed(mem.id).pid).toBe(mem.pid);
    expect(sh(`cmp -n 1M /tmp/up-pattern ${mem.blockDevice} && echo same`).trim()).toBe('same');

    const img = path.join(scratch('up-all'), 'disk.img');
    const sup = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--size', '16M', '--queues', '2', '--restart', '1');
    onTestFinished((t) => {
      if (t.state === 'fail') console.log(fs.readFileSync(sup.log, 'utf8'));
    });
    sh(`dd if=/tmp/up-pattern of=${sup.blockDevice} bs=1M oflag=direct status=none`);
    const all = JSON.parse(await upgrade('--all', '--json')) as UpgradeAll;
    expect(all.skipped).toEqual([{ id: mem.id, reason: expect.stringMatching(/keeps its data/) }]);
    expect(all.upgraded).toHaveLength(1);
    expect(all.upgraded[0]).toMatchObject({ id: sup.id, from: { pid: sup.pid }, supervised: true });
    const next = all.upgraded[0].to.pid;
    expect(next).not.toBe(sup.pid);
    expect(alive(sup.supervisor!)).toBe(true);
    expect(fs.readFileSync(sup.log, 'utf8')).toMatch(new RegExp(`server ${sup.pid} handed /dev/ublkb${sup.id} over \\(upgrade\\)`));
    expect(sh(`cmp -n 1M /tmp/up-pattern ${sup.blockDevice} && echo same`).trim()).toBe('same');
    // The handover used none of its one restart: a crash of the new server is still restarted.
    process.kill(next, 'SIGKILL');
    await waitFor('the supervisor to restart the server', () => {
      const d = listed(sup.id);
      return d.state === 'live' && d.pid !== next && alive(d.pid);
    }, 30_000);
    expect(fs.readFileSync(sup.log, 'utf8')).toMatch(new RegExp(`restart 1/1: server ${next} ended \\(killed by SIGKILL\\)`));
    expect(listed(mem.id).pid).toBe(mem.pid);
    expect(sh(`cmp -n 1M /tmp/up-pattern ${mem.blockDevice} && echo same`).trim()).toBe('same');
  }, 120_000);
});

describe('one process takes a device over at a time', () => {
  it('an `up` name points at the device all through an upgrade; gc and recover leave a device another ublk-ts is taking over', async () => {
    const dir = scratch('up-name');
    const img = path.join(dir, 'vol.img');
    sh(`truncate -s 16M ${img}`);
    const conf = path.join(dir, 'devices.json');
    fs.writeFileSync(conf, JSON.stringify({ devices: { vol: { target: 'file', file: img, queues: 1 } } }));
    const [vol] = cliJson<{ devices: Outcome[] }>('up', 'vol', '--config', conf).devices;
    const id = vol.id!;
    const blockDevice = `/dev/ublkb${id}`;
    const linked = () => {
      try {
        return fs.readlinkSync(vol.path!) === blockDevice;
      } catch {
        return false;
      }
    };
    // Looked at every 10 ms while the upgrade runs: the old server's exit no longer takes the name away.
    let gaps = 0;
    const watch = setInterval(() => void (linked() || gaps++), 10);
    try {
      await upgrade('-n', String(id));
    } finally {
      clearInterval(watch);
    }
    expect(gaps).toBe(0);
    expect(linked()).toBe(true);

    // Another ublk-ts starting a server for it: its mark, locked by a live process that wrote its pid there.
    const mark = path.join(stateDir(), `ublkb${id}.takeover`);
    const holder = inBackground('bash', ['-c', `exec 9>>${mark} && flock -n 9 && echo $$ >&9 && echo $$ && exec -a ublk-ts-holder sleep 600`]);
    await waitFor('the holder to lock the mark', () => /^\d+/.test(holder.output()), 10_000);
    const holderPid = Number(/^(\d+)/.exec(holder.output())![1]);
    const before = listed(id).pid;
    process.kill(before, 'SIGKILL');
    await waitFor('the device to wait for a server', () => stateOf(id) === 'quiesced', 30_000);
    const swept = cliJson<{ devices: GcOutcome[] }>('gc').devices.find((o) => o.id === id);
    expect(swept).toMatchObject({ action: 'left', why: expect.stringMatching(`ublk-ts pid ${holderPid} is starting a server for it now`) });
    expect(failedInOneLine(cli('recover', '-n', String(id)))).toMatch(`ublk-ts pid ${holderPid} is starting a server for it now`);
    expect(stateOf(id)).toBe('quiesced');
    // The holder dies without a word: the kernel drops its lock, the next recover takes the mark.
    process.kill(holderPid, 'SIGKILL');
    await holder.exit;
    const back = cliJson<AddedDevice>('recover', '-n', String(id));
    expect(back.pid).not.toBe(before);
    expect(listed(id).state).toBe('live');
    expect(linked()).toBe(true);
    expect(fs.existsSync(mark)).toBe(false);
  }, 120_000);
});
