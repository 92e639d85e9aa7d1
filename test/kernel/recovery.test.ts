// Crash recovery and teardown under load on the real driver: kill -9 then `recover` or the --restart
// supervisor with a verified write job running, a crash without recovery under a mounted ext4, a dead
// server's pid reused by another process, and every way of stopping a loaded device.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { alive, cli, cliJson, delAll, failedInOneLine, fioInBackground, hung, inBackground, inflight, listEntry, MNT, nothingLeft, scratch, serverPids, sh, sleep, stateOf, waitFor, type AddedDevice } from './helpers.js';

afterEach(delAll);

/** A random write job that verifies every block it wrote once it is done (each block is written once). */
function verifiedWrites(dev: string, size = '24M') {
  return fioInBackground(['--name=v', `--filename=${dev}`, '--ioengine=io_uring', '--direct=1', '--rw=randwrite',
    '--bsrange=4k-64k', '--iodepth=32', `--size=${size}`, '--verify=crc32c', '--verify_fatal=1', '--do_verify=1']);
}

/** No task is stuck in uninterruptible sleep. */
function noDState(): void {
  expect(sh(`ps -eo stat=,pid=,comm= | awk '$1 ~ /^D/' || true`).trim()).toBe('');
}

describe('user recovery', () => {
  it('kill -9 under a verified write job, then recover -n N: fio ends with zero verify errors', async () => {
    const img = path.join(scratch('recover'), 'disk.img');
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--size', '64M', '--queues', '2');
    expect(dev.recovery).toBe(true);
    const fio = verifiedWrites(dev.blockDevice);
    await waitFor('requests in flight', () => inflight(dev.id).some((n) => n > 0), 30_000);
    process.kill(dev.pid, 'SIGKILL');
    await waitFor('the server to end', () => !alive(dev.pid), 30_000);
    // The device stays and holds IO: fio waits rather than failing.
    await sleep(1000);
    expect(fs.existsSync(`/sys/block/ublkb${dev.id}`)).toBe(true);
    const state = stateOf(dev.id);
    expect(state).toBe('quiesced');
    const back = cliJson<AddedDevice>('recover', '-n', String(dev.id));
    expect(back.id).toBe(dev.id);
    expect(back.pid).not.toBe(dev.pid);
    expect(await hung(fio.exit, 240_000)).toBe(0);
    expect(fio.output()).toMatch(/err=\s*0/);
    expect(fio.output()).not.toMatch(/verify failed|bad magic|bad header/i);
    // A second recover has nothing to do.
    failedInOneLine(cli('recover', '-n', String(dev.id)));
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    await nothingLeft();
  }, 300_000);

  it('--restart: the supervisor re-attaches by itself after kill -9 and logs it; del ends both processes', async () => {
    const img = path.join(scratch('restart'), 'disk.img');
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--size', '64M', '--queues', '2', '--restart', '2');
    expect(dev.supervisor).toBeGreaterThan(0);
    const fio = verifiedWrites(dev.blockDevice);
    await waitFor('requests in flight', () => inflight(dev.id).some((n) => n > 0), 30_000);
    process.kill(dev.pid, 'SIGKILL');
    onTestFinished((t) => {
      if (t.state === 'fail') console.log(fs.readFileSync(dev.log, 'utf8'));
    });
    expect(await hung(fio.exit, 240_000)).toBe(0);
    expect(fio.output()).toMatch(/err=\s*0/);
    expect(fs.readFileSync(dev.log, 'utf8')).toMatch(new RegExp(`restart 1/2: server ${dev.pid} ended \\(killed by SIGKILL\\)`));
    const now = listEntry(dev.id);
    expect(now?.state).toBe('live');
    expect(now?.pid).not.toBe(dev.pid);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    await nothingLeft();
    expect(alive(dev.supervisor!)).toBe(false);
  }, 300_000);

  it('--no-recovery: kill -9 under a mounted ext4 fails IO, the disk goes, the backing is clean after replay', async () => {
    const dir = scratch('norecovery');
    const img = path.join(dir, 'disk.img');
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--size', '128M', '--queues', '1', '--no-recovery');
    expect(dev.recovery).toBe(false);
    sh(`mkfs.ext4 -q ${dev.blockDevice} && mkdir -p ${MNT} && mount ${dev.blockDevice} ${MNT}`);
    const fio = fioInBackground(['--name=w', `--directory=${MNT}`, '--ioengine=io_uring', '--direct=1', '--rw=randwrite',
      '--bs=16k', '--iodepth=16', '--size=32M', '--fsync=16', '--time_based', '--runtime=120']);
    await waitFor('requests in flight', () => inflight(dev.id).some((n) => n > 0), 30_000);
    await sleep(1000);
    process.kill(dev.pid, 'SIGKILL');
    expect(await hung(fio.exit, 60_000)).not.toBe('hung');
    expect(fio.output()).toMatch(/error|Input\/output/i);
    await waitFor('the disk to go', () => !fs.existsSync(`/sys/block/ublkb${dev.id}`), 30_000);
    sh(`umount ${MNT} || umount -l ${MNT}`);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    noDState();
    // The journal is replayed by a mount of the backing itself; then a forced check finds nothing.
    sh(`mkdir -p ${dir}/m && mount -o loop ${img} ${dir}/m && umount ${dir}/m`);
    expect(sh(`e2fsck -fn ${img} >/dev/null 2>&1; echo $?`).trim()).toBe('0');
    await nothingLeft();
  }, 240_000);
});

describe('never touch what is not ours', () => {
  it('del after a crash leaves alone the process that got the dead server\'s pid', async () => {
    const dev = cliJson<AddedDevice>('add', '--target', 'null', '--size', '1G', '--queues', '1');
    process.kill(dev.pid, 'SIGKILL');
    await waitFor('the server to end', () => !alive(dev.pid), 30_000);
    // Hand the pid to a sleeping sh: the next fork after ns_last_pid = pid - 1 gets pid.
    let pid = 0;
    for (let i = 0; i < 20 && pid !== dev.pid; i++) {
      if (pid) process.kill(pid, 'SIGKILL');
      pid = Number(sh(`echo ${dev.pid - 1} > /proc/sys/kernel/ns_last_pid; (exec sh -c 'sleep 1000; :') >/dev/null 2>&1 & echo $!`).trim());
    }
    onTestFinished(() => {
      if (alive(pid)) process.kill(pid, 'SIGKILL');
    });
    expect(pid).toBe(dev.pid);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    expect(alive(pid)).toBe(true);
    expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')).toMatch(/^sh\0/);
    expect(fs.existsSync(`/sys/class/ublk-char/ublkc${dev.id}`)).toBe(false);
  }, 60_000);
});

describe('teardown under load', () => {
  // fio keeps every tag busy (reads) while dd writes in order with O_DIRECT: what dd says it copied was
  // acknowledged, and must be in the backing file afterwards, however the server was stopped.
  const ways = [
    { how: 'SIGTERM', recovery: true },
    { how: 'SIGINT', recovery: true },
    { how: 'del', recovery: true },
    { how: 'SIGKILL', recovery: false },
  ] as const;
  it.each(ways)('$how at full depth: nothing hangs, no device is left, no acknowledged write is lost', async ({ how, recovery }) => {
    const dir = scratch(`teardown-${how}`);
    const img = path.join(dir, 'disk.img');
    const pattern = path.join(dir, 'pattern');
    sh(`head -c 16M /dev/urandom > ${pattern}`);
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--size', '64M', '--queues', '2', '--depth', '32',
      ...(recovery ? [] : ['--no-recovery']));
    const fio = fioInBackground(['--name=load', `--filename=${dev.blockDevice}`, '--ioengine=io_uring', '--direct=1',
      '--rw=randread', '--bs=4k', '--iodepth=64', '--size=32M', '--time_based', '--runtime=120']);
    const dd = inBackground('dd', [`if=${pattern}`, `of=${dev.blockDevice}`, 'bs=64k', 'seek=512', 'oflag=direct']);
    await waitFor('every tag busy', () => inflight(dev.id).reduce((a, b) => a + b, 0) >= 32, 30_000);
    await sleep(1500);
    if (how === 'del') expect(cli('del', '--force', '-n', String(dev.id)).status).toBe(0); // fio still has it open
    else process.kill(dev.pid, how);
    expect(await hung(fio.exit, 60_000)).not.toBe('hung');
    expect(await hung(dd.exit, 60_000)).not.toBe('hung');
    await waitFor('the disk to go', () => !fs.existsSync(`/sys/block/ublkb${dev.id}`), 30_000);
    if (how === 'SIGKILL') expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    await nothingLeft();
    noDState();
    const copied = Number(/^(\d+) bytes/m.exec(dd.output())?.[1]);
    console.log(`${how}: dd had ${copied} bytes acknowledged`);
    expect(copied).toBeGreaterThan(0);
    expect(sh(`cmp -n ${copied} ${pattern} ${img} 0 ${512 * 65536} && echo same`)).toContain('same');
    expect(serverPids()).toEqual([]);
  }, 180_000);
});
