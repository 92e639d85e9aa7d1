// Operating devices on the real driver: a device in use is never stopped by del or down without --force,
// no partition scan unless asked, the flags asked and granted per device, and resize of a mounted ext4
// (file, nbd, mirror).
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openBy } from '../../src/lifecycle.js';
import type { Outcome } from '../../src/updown.js';
import { cli, cliJson, delAll, failedInOneLine, inBackground, listEntry, loopDevice, MNT, nbdkit, scratch, sh, sleep, stateOf, stopServer, ublkDevices, waitFor, type AddedDevice, type Listed } from './helpers.js';

afterEach(() => {
  delAll();
  fs.rmSync('/dev/ublk-ts', { recursive: true, force: true });
});

const BUSY = 6;

/** What `features -n N --json` prints. */
interface DeviceFlags {
  asked?: string;
  askedFlags?: string[];
  got: string;
  gotFlags: string[];
}

/** A process that holds /dev/ublkbN open (no mount, no claim) until killed or the test ends; resolves with its pid once it has. */
async function holder(dev: string): Promise<{ pid: number; exit: Promise<number | null> }> {
  const p = inBackground('bash', ['-c', `exec 3<${dev}; echo "open $$"; exec sleep 600`]);
  await waitFor(`a process to open ${dev}`, () => /open \d+/.test(p.output()), 10_000);
  return { pid: Number(/open (\d+)/.exec(p.output())![1]), exit: p.exit };
}

describe('safe stop', () => {
  it('del and down leave a mounted or open device up and serving, in one line; del --force and an unused device go', async () => {
    const dir = scratch('safe-stop');
    const img = path.join(dir, 'vol.img');
    sh(`truncate -s 32M ${img}`);
    const conf = path.join(dir, 'devices.json');
    fs.writeFileSync(conf, JSON.stringify({ devices: { vol: { target: 'file', file: img, queues: 1, 'part-scan': true } } }));
    const [vol] = cliJson<{ devices: Outcome[] }>('up', 'vol', '--config', conf).devices;
    const id = vol.id!;
    // The config's part-scan reached ADD_DEV: no NO_AUTO_PART_SCAN asked for this one.
    expect(cliJson<DeviceFlags>('features', '-n', String(id)).askedFlags).not.toContain('NO_AUTO_PART_SCAN');
    sh(`mkfs.ext4 -q ${vol.blockDevice} && mkdir -p ${MNT} && mount ${vol.blockDevice} ${MNT}`);

    const del = cli('del', '-n', String(id));
    expect(failedInOneLine(del)).toMatch(new RegExp(`/dev/ublkb${id} is in use .*left up.*del --force`));
    expect(del.status).toBe(BUSY);
    const asJson = cli('del', '-n', String(id), '--json');
    expect(JSON.parse(asJson.stderr)).toMatchObject({ code: 'busy' });
    expect(openBy(id)).toMatch(/mounted/); // the check of kernels without TRY_STOP_DEV agrees
    const down = cli('down', '--all', '--config', conf);
    expect(down.status).toBe(BUSY);
    expect(failedInOneLine(down)).toMatch(new RegExp(`^ublk-ts: vol: /dev/ublkb${id} is in use .*left up`));
    const all = cli('del', '--all');
    expect(all.status).toBe(BUSY);
    expect(failedInOneLine(all)).toMatch(new RegExp(`/dev/ublkb${id} is in use .*left up`));
    // Still serving: the filesystem takes a write that reaches the disk.
    expect(stateOf(id)).toBe('live');
    sh(`head -c 1M /dev/urandom > ${MNT}/f && sync ${MNT}/f && cmp ${MNT}/f ${MNT}/f`);
    sh(`umount ${MNT}`);

    // Open by a process, not mounted: refused too, then gone once the process is.
    const h = await holder(vol.blockDevice!);
    expect(openBy(id)).toBe(`open by pid ${h.pid}`);
    expect(cli('del', '-n', String(id)).status).toBe(BUSY);
    expect(stateOf(id)).toBe('live');
    process.kill(h.pid, 'SIGKILL');
    await h.exit;
    expect(openBy(id)).toBeUndefined();
    const gone = cli('down', 'vol', '--config', conf);
    expect(gone.status, gone.stderr).toBe(0);
    expect(gone.stdout).toMatch(/vol: down/);
    expect(ublkDevices()).toEqual([]);

    // --force stops one that is open anyway (today's del).
    const dev = cliJson<AddedDevice>('add', '--target', 'null', '--size', '64M', '--queues', '1');
    await holder(dev.blockDevice);
    const forced = cli('del', '--force', '-n', String(dev.id));
    expect(forced.status, forced.stderr).toBe(0);
    await waitFor('the disk to go', () => !fs.existsSync(`/sys/block/ublkb${dev.id}`), 10_000);
  });
});

/** An MBR whose one Linux partition covers 4 MiB from sector 2048. */
const MBR = `import struct, sys
f = open(sys.argv[1], 'r+b')
f.seek(446); f.write(struct.pack('<8BII', 0, 0, 0, 0, 0x83, 0, 0, 0, 2048, 8192))
f.seek(510); f.write(b'\\x55\\xaa')`;

describe('partition scan and the flags per device', () => {
  it('a foreign partition table is not probed unless --part-scan; features -n shows the flags asked and got', async () => {
    const dir = scratch('part-scan');
    const imgs = ['a.img', 'b.img'].map((n) => path.join(dir, n));
    for (const img of imgs) sh(`truncate -s 16M ${img} && python3 -c "${MBR}" ${img}`);
    const plain = cliJson<AddedDevice>('add', '--target', 'file', '--file', imgs[0], '--queues', '1');
    const scanned = cliJson<AddedDevice>('add', '--target', 'file', '--file', imgs[1], '--queues', '1', '--part-scan', '--no-recovery');
    const part = (d: AddedDevice) => `/sys/class/block/ublkb${d.id}p1`;
    await waitFor('the scanned device\'s partition', () => fs.existsSync(part(scanned)), 10_000);
    expect(fs.readFileSync(`${part(scanned)}/size`, 'utf8').trim()).toBe('8192');
    await sleep(500); // the plain one was added first: its scan, were there one, would be done
    expect(fs.existsSync(part(plain))).toBe(false);

    const a = cliJson<DeviceFlags>('features', '-n', String(plain.id));
    const b = cliJson<DeviceFlags>('features', '-n', String(scanned.id));
    for (const f of ['USER_RECOVERY', 'NO_AUTO_PART_SCAN', 'UPDATE_SIZE']) {
      expect(a.askedFlags).toContain(f);
      expect(a.gotFlags).toContain(f);
    }
    for (const f of ['USER_RECOVERY', 'NO_AUTO_PART_SCAN']) {
      expect(b.askedFlags).not.toContain(f);
      expect(b.gotFlags).not.toContain(f);
    }
    // What the kernel adds by itself shows as got, not asked.
    expect(a.gotFlags).toContain('SAFE_STOP_DEV');
    expect(a.askedFlags).not.toContain('SAFE_STOP_DEV');
    expect(BigInt(a.got) & BigInt(a.asked!)).toBe(BigInt(a.asked!)); // everything asked was granted
    const text = cli('features', '-n', String(plain.id)).stdout;
    expect(text).toMatch(new RegExp(`^/dev/ublkb${plain.id}: asked 0x[0-9a-f]+, got 0x[0-9a-f]+`));
    expect(text).toMatch(/^ {2}NO_AUTO_PART_SCAN +yes +yes$/m);
    expect(text).toMatch(/^ {2}SAFE_STOP_DEV +no +yes$/m);
    expect(failedInOneLine(cli('features', '-n', '4242'))).toMatch(/-n 4242: no such ublk device/);
  });
});

describe('resize', () => {
  /** A 64M ext4 with a file on it, mounted at MNT; returns its size in bytes and where the file's sum is. */
  function mountedExt4(dev: AddedDevice, dir: string): { before: number; sum: string } {
    sh(`mkfs.ext4 -q ${dev.blockDevice} && mkdir -p ${MNT} && mount ${dev.blockDevice} ${MNT}`);
    const sum = path.join(dir, 'f.sum');
    sh(`head -c 8M /dev/urandom > ${MNT}/f && sha256sum < ${MNT}/f > ${sum}`);
    return { before: fsBytes(), sum };
  }
  const fsBytes = () => Number(sh(`df -B1 --output=size ${MNT} | tail -1`).trim());

  /** `resize` to 128M done: the kernel shows it, resize2fs grows the mounted ext4 online into room it did
   * not have, fsck is clean; after kill -9 + recover the device has the new size and the file. */
  async function grownOnline(dev: AddedDevice, fs0: { before: number; sum: string }): Promise<void> {
    const r = cli('resize', '-n', String(dev.id), '--size', '128M');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(`resized ${dev.blockDevice}: 64M -> 128M`);
    expect(fs.readFileSync(`/sys/block/ublkb${dev.id}/size`, 'utf8').trim()).toBe(String((128 << 20) / 512));
    expect(sh(`lsblk -bdno SIZE ${dev.blockDevice}`).trim()).toBe(String(128 << 20));
    sh(`resize2fs ${dev.blockDevice} 2>&1`);
    expect(fsBytes()).toBeGreaterThan(fs0.before + (48 << 20));
    sh(`head -c 64M /dev/zero > ${MNT}/big && sync`); // room the 64M filesystem did not have
    expect(cliJson<Listed[]>('list').find((d) => d.id === dev.id)?.size).toBe(128 << 20);
    sh(`umount ${MNT}`);
    sh(`e2fsck -fn ${dev.blockDevice}`);
    // The record has the new size: a server started after a crash re-attaches at it.
    process.kill(dev.pid, 'SIGKILL');
    await waitFor('the device to wait for a server', () => stateOf(dev.id) === 'quiesced', 30_000);
    const back = cliJson<AddedDevice>('recover', '-n', String(dev.id));
    expect(back.size).toBe(128 << 20);
    sh(`mount ${dev.blockDevice} ${MNT} && sha256sum < ${MNT}/f | cmp - ${fs0.sum} && umount ${MNT}`);
  }

  it('grows a mounted ext4 on a file device: file first, then the disk; resize2fs online; fsck clean; recover keeps it', async () => {
    const dir = scratch('resize');
    const img = path.join(dir, 'disk.img');
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--size', '64M', '--queues', '1');
    const fs0 = mountedExt4(dev, dir);
    // Shrinking is refused without --force, and so is a size that is not whole blocks; nothing changes.
    expect(failedInOneLine(cli('resize', '-n', String(dev.id), '--size', '32M'))).toMatch(/below the device's 64M.*--force/);
    expect(failedInOneLine(cli('resize', '-n', String(dev.id), '--size', '1000'))).toMatch(/multiple of the logical block size/);
    await grownOnline(dev, fs0);
    expect(fs.statSync(img).size).toBe(128 << 20);

    // A target that cannot grow its backend is refused in one line.
    const nul = cliJson<AddedDevice>('add', '--target', 'null', '--size', '64M', '--queues', '1');
    expect(failedInOneLine(cli('resize', '-n', String(nul.id), '--size', '128M'))).toMatch(/target null cannot be resized/);
  });

  it('grows a mounted ext4 on an nbd device once its server serves a larger export; resize2fs online; fsck clean; recover keeps it', async () => {
    const dir = scratch('resize-nbd');
    const sock = path.join(dir, 'nbd.sock');
    const disk = path.join(dir, 'export.img');
    sh(`truncate -s 64M ${disk}`);
    // nbdkit's file plugin: its data outlives each nbdkit, so a larger export is the same disk served again.
    let srv = await nbdkit(sock, 'file', disk);
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '2', '--reconnect', '30');
    const fs0 = mountedExt4(dev, dir);
    // The export has not grown: refused in one line, nothing changes.
    expect(failedInOneLine(cli('resize', '-n', String(dev.id), '--size', '128M'))).toMatch(/the export has 67108864 bytes, less than --size 134217728: grow it first/);
    expect(sh(`lsblk -bdno SIZE ${dev.blockDevice}`).trim()).toBe(String(64 << 20));
    // It grows: its server is restarted over the larger file, the device's connections reconnect to it.
    // (Synced first: a connection lost with unflushed writes fails the next FLUSH, as it must.)
    sh('sync');
    await stopServer(srv);
    sh(`truncate -s 128M ${disk}`);
    srv = await nbdkit(sock, 'file', disk);
    await waitFor('the device to see the larger export', () => listEntry(dev.id)?.info.size === 128 << 20, 30_000);
    await grownOnline(dev, fs0);
  });

  it('grows a mirror: a mounted ext4 over file legs (they grow with it), a block device leg only once it has grown; the legs carry the size across recover and del + add, and end identical', async () => {
    const dir = scratch('resize-mirror');
    const legBytes = (n: number) => (n << 20) + 8192; // n MiB of data, a bitmap block and the superblock
    const [a, b] = [path.join(dir, 'a.img'), path.join(dir, 'b.img')];
    sh(`truncate -s ${legBytes(64)} ${a} ${b}`);
    const add = (...legs: string[]) => cliJson<AddedDevice>('add', '--target', 'mirror', ...legs.flatMap((l) => ['--leg', l]), '--assume-clean', '--queues', '2');
    const dev = add(a, b);
    const id = String(dev.id);
    const legs = () => listEntry(dev.id)?.info.legs;
    expect(dev.size).toBe(64 << 20);
    const fs0 = mountedExt4(dev, dir);
    // A leg out of sync: refused in one line, nothing changes.
    expect(cli('mirror', 'fail', '-n', id, '--leg', '2').status).toBe(0);
    expect(failedInOneLine(cli('resize', '-n', id, '--size', '128M'))).toMatch(/leg 2 is failed: resize once every leg is in sync/);
    expect(cli('mirror', 're-add', '-n', id, '--leg', '2').status).toBe(0);
    await waitFor('leg 2 back in sync', () => legs() === 'in-sync,in-sync', 60_000);
    await grownOnline(dev, fs0); // with kill -9 + recover
    for (const leg of [a, b]) expect(fs.statSync(leg).size).toBe(legBytes(128));
    // del + add of the same legs: their superblocks, at their new end, say the size.
    await waitFor('the legs in sync after recover', () => legs() === 'in-sync,in-sync', 60_000);
    expect(cli('del', '-n', id).status).toBe(0);
    const again = add(a, b);
    expect(again.size).toBe(128 << 20);
    sh(`mount ${again.blockDevice} ${MNT} && sha256sum < ${MNT}/f | cmp - ${fs0.sum} && umount ${MNT}`);
    expect(cli('del', '-n', String(again.id)).status).toBe(0);
    expect(sh(`cmp -n ${128 << 20} ${a} ${b} && echo same`).trim()).toBe('same');

    // A block device leg (a loop device) must grow first: the refusal says how large.
    const c = path.join(dir, 'c.img');
    sh(`truncate -s ${legBytes(16)} ${c}`);
    const d = loopDevice(path.join(dir, 'd.img'), String(legBytes(16)), 512);
    const blk = add(c, d);
    sh(`head -c 16M /dev/urandom > ${dir}/r && dd if=${dir}/r of=${blk.blockDevice} bs=1M oflag=direct status=none`);
    expect(failedInOneLine(cli('resize', '-n', String(blk.id), '--size', '32M'))).toMatch(new RegExp(`leg 2 holds ${legBytes(16)} bytes; .*: grow it first`));
    sh(`truncate -s ${legBytes(32)} ${dir}/d.img && losetup -c ${d}`);
    expect(cli('resize', '-n', String(blk.id), '--size', '32M').status).toBe(0);
    // The bytes added read as zero (the old metadata was there on each leg), and take writes.
    expect(sh(`cmp -n 16M -i 16M ${blk.blockDevice} /dev/zero && echo zero`).trim()).toBe('zero');
    sh(`dd if=${dir}/r of=${blk.blockDevice} bs=1M seek=16 oflag=direct status=none`);
    expect(cli('del', '-n', String(blk.id)).status).toBe(0);
    const blk2 = add(c, d);
    expect(blk2.size).toBe(32 << 20);
    expect(sh(`cmp -n 16M ${blk2.blockDevice} ${dir}/r && cmp -n 16M -i 0:16M ${dir}/r ${blk2.blockDevice} && echo kept`).trim()).toBe('kept');
    expect(cli('del', '-n', String(blk2.id)).status).toBe(0);
    expect(sh(`cmp -n ${32 << 20} ${c} ${d} && echo same`).trim()).toBe('same');
  });
});
