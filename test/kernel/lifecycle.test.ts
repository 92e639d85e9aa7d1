// Lifecycle on the real driver: discard reaches the backing file, del under load, bad input, signals.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cli, cliJson, DATA_MODES, delAll, deletePromptly, fioInBackground, nothingLeft, scratch, serverPids, sh, sleep, ublkDevices, type AddedDevice } from './helpers.js';

afterEach(delAll);

const allocatedBytes = (file: string) => fs.statSync(file).blocks * 512;

describe('discard', () => {
  it('punches holes in the backing file', () => {
    const img = path.join(scratch('discard'), 'disk.img');
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--size', '256M', '--queues', '1');
    sh(`dd if=/dev/urandom of=${dev.blockDevice} bs=1M count=64 oflag=direct status=none`);
    const full = allocatedBytes(img);
    expect(full).toBeGreaterThanOrEqual(64 << 20);
    sh(`blkdiscard ${dev.blockDevice}`);
    expect(allocatedBytes(img)).toBeLessThan(full / 8);
    // And the discarded range reads back as zeroes.
    expect(sh(`cmp -n ${32 << 20} ${dev.blockDevice} /dev/zero && echo same`)).toContain('same');
  });
});

describe('queues', () => {
  // The default is one per CPU, capped; a count past the CPUs is the kernel's to cut, not an error.
  it('defaults to one per CPU (at most 4) and takes more than 64, getting what the kernel gives', () => {
    const cpus = Number(sh('nproc').trim());
    const dflt = cliJson<AddedDevice>('add', '--target', 'null', '--size', '64M');
    expect(dflt.queues).toBe(Math.min(cpus, 4));
    const many = cliJson<AddedDevice>('add', '--target', 'null', '--size', '64M', '--queues', '100');
    expect(many.queues).toBe(Math.min(cpus, 100));
  });
});

describe('null', () => {
  // The reader's buffer is dirtied first (and a write puts the same bytes through the device): a read that
  // is completed without being filled would show them.
  const DIRTY_READ = `import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
buf.write(b'\\xaa' * len(buf))
os.pwritev(fd, [buf], 0)
os.preadv(fd, [buf], 0)
print(len(buf) - buf[:].count(0))`;
  it.each(DATA_MODES)('reads return zeroes in %s mode', (mode) => {
    const dev = cliJson<AddedDevice>('add', '--target', 'null', '--size', '64M', '--queues', '1', '--depth', '1', '--data-mode', mode);
    expect(dev.mode).toBe(mode);
    expect(sh(`python3 -c "${DIRTY_READ}" ${dev.blockDevice}`).trim()).toBe('0');
    expect(sh(`cmp -n ${8 << 20} ${dev.blockDevice} /dev/zero && echo same`)).toContain('same');
  });
});

describe('read-only export', () => {
  it('reads the backing file and refuses writes', () => {
    const img = path.join(scratch('ro'), 'disk.img');
    sh(`truncate -s 64M ${img} && printf hello | dd of=${img} conv=notrunc status=none`);
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--read-only', '--queues', '1');
    expect(dev.info.readOnly).toBe(true);
    expect(sh(`blockdev --getro ${dev.blockDevice}`).trim()).toBe('1');
    expect(sh(`head -c 5 ${dev.blockDevice}`)).toBe('hello');
    expect(() => sh(`dd if=/dev/zero of=${dev.blockDevice} bs=4k count=1 oflag=direct status=none`)).toThrow();
    expect(sh(`head -c 5 ${img}`)).toBe('hello');
  });
});

describe('delete under load', () => {
  // `del` is timed through the API the CLI calls (deleteDevice), in this already running process: under
  // emulation with fio saturating both vCPUs, starting a fresh node process alone takes 3-6 s, which
  // says nothing about deleting a busy device. The CLI is timed too, on an idle device, below.
  it('del returns within 5 s while fio runs; fio sees errors, nothing is left', async () => {
    const img = path.join(scratch('del-load'), 'disk.img');
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--size', '512M', '--queues', '2');
    const fio = fioInBackground(['--name=load', `--filename=${dev.blockDevice}`, '--ioengine=io_uring', '--direct=1', '--rw=randrw',
      '--bs=4k', '--iodepth=64', '--size=512M', '--time_based', '--runtime=120']);
    await sleep(4000);
    expect(fio.output()).not.toMatch(/error/); // it was running cleanly before the delete
    await deletePromptly(dev.id, fio, 'under load');
    expect(fio.output()).toMatch(/io_u error on file/); // fio saw the device go, as errors
    // DEL_DEV_ASYNC frees the id once fio, the last opener, has closed the device.
    await nothingLeft(50);
  });

  it('the del command deletes an idle device and says so', () => {
    const dev = cliJson<AddedDevice>('add', '--target', 'null', '--size', '1G', '--queues', '1');
    const r = cli('del', '-n', String(dev.id));
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`deleted /dev/ublkb${dev.id}`);
    expect(ublkDevices()).toEqual([]);
    expect(serverPids()).toEqual([]);
  });

  it('SIGTERM to the server stops and deletes the device', async () => {
    const dev = cliJson<AddedDevice>('add', '--target', 'null', '--size', '1G', '--queues', '1');
    process.kill(dev.pid, 'SIGTERM');
    for (let i = 0; i < 100 && serverPids().includes(dev.pid); i++) await sleep(100);
    expect(serverPids()).not.toContain(dev.pid);
    expect(ublkDevices()).not.toContain(`ublkc${dev.id}`);
    expect(cliJson<unknown[]>('list')).toEqual([]);
  });
});

describe('bad input', () => {
  // Exit status by kind (README: Exit status): 2 usage, 3 not found, 4 kernel refused.
  const oneLine = (r: { status: number | null; stderr: string }, status = 2) => {
    expect(r.status).toBe(status);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    return r.stderr;
  };
  it('refuses a missing backing file without making a device', () => {
    expect(oneLine(cli('add', '--target', 'file', '--file', '/tmp/nope/disk.img'))).toMatch(/does not exist/);
    expect(ublkDevices()).toEqual([]);
  });
  it('refuses bad sizes, block sizes, queues and depths', () => {
    const img = path.join(scratch('bad'), 'disk.img');
    expect(oneLine(cli('add', '--target', 'file', '--file', img, '--size', 'lots'))).toMatch(/--size "lots" is not a size/);
    expect(oneLine(cli('add', '--target', 'file', '--file', img, '--size', '1M', '--logical-block-size', '1000'))).toMatch(/512 or 4096/);
    expect(oneLine(cli('add', '--target', 'null', '--queues', '0'))).toMatch(/--queues/);
    expect(oneLine(cli('add', '--target', 'null', '--depth', '9999'))).toMatch(/--depth/);
    expect(ublkDevices()).toEqual([]);
  });
  it('refuses an id already in use and leaves the first device alone', () => {
    const a = cliJson<AddedDevice>('add', '--target', 'null', '--number', '7', '--queues', '1');
    expect(oneLine(cli('add', '--target', 'null', '--number', '7', '--queues', '1'), 4)).toMatch(/EEXIST/);
    expect(sh(`dd if=${a.blockDevice} of=/dev/null bs=4k count=16 iflag=direct status=none && echo ok`)).toContain('ok');
    expect(ublkDevices()).toEqual(['ublkc7']);
  });
  it('del of an unknown device says so', () => {
    expect(oneLine(cli('del', '-n', '4242'), 3)).toMatch(/4242|ENODEV|no such/i);
  });
});
