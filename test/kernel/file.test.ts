// The file target end to end, in every data mode: a filesystem survives delete and re-add, fio's own
// verification finds nothing wrong, and `list` shows what serves the device.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, delAll, DATA_MODES, scratch, sh, ublkDevices, type AddedDevice } from './helpers.js';

const MNT = '/tmp/ublk-mnt';

const RANDOM = '/tmp/ublk-ts-random.bin';
beforeAll(() => {
  delAll();
  // One random source; files of mixed sizes are slices of it.
  sh(`head -c 48M /dev/urandom > ${RANDOM}`);
});
afterEach(delAll);
afterAll(() => fs.rmSync(RANDOM, { force: true }));

/** Writes files of mixed sizes (about 210 MB in all), each a different slice of the random source. */
function writeMixedFiles(dir: string): number {
  const sizes = [1, 4096, 12_345, 65_536, 1 << 20, 3_500_000, 16 << 20, 47 << 20];
  const files: string[] = [];
  let total = 0;
  for (let i = 0; total < 210 << 20; i++) {
    const size = sizes[i % sizes.length];
    const skip = (i * 7919) % (1 << 20);
    files.push(`tail -c +${skip + 1} ${RANDOM} | head -c ${size} > ${dir}/f${i}`);
    total += size;
  }
  sh(files.join(' && '));
  return files.length;
}

describe.each(DATA_MODES)('file target, data mode %s', (mode) => {
  it('carries ext4: 200+ MB of files survive umount, delete, fsck and re-add', () => {
    const dir = scratch(`fs-${mode}`);
    const img = path.join(dir, 'disk.img');
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--size', '640M', '--data-mode', mode, '--queues', '2');
    expect(dev.mode).toBe(mode);
    expect(fs.existsSync(dev.blockDevice)).toBe(true);

    const listed = cliJson<AddedDevice[]>('list').find((d) => d.id === dev.id);
    expect(listed).toMatchObject({ mode, queues: 2, pid: dev.pid, size: 640 << 20 });
    expect(listed?.info.file).toBe(img);

    sh(`mkfs.ext4 -q -F ${dev.blockDevice} && mkdir -p ${MNT} && mount ${dev.blockDevice} ${MNT}`);
    const n = writeMixedFiles(MNT);
    sh(`sync && cd ${MNT} && sha256sum f* > ${dir}/sums && du -sm ${MNT}`);
    sh(`umount ${MNT}`);
    cliJson('del', '-n', String(dev.id));
    expect(ublkDevices()).not.toContain(`ublkc${dev.id}`);

    sh(`e2fsck -fn ${img}`); // throws on any inconsistency (non-zero exit)

    const again = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--data-mode', mode, '--queues', '2');
    sh(`mount ${again.blockDevice} ${MNT}`);
    const check = sh(`cd ${MNT} && sha256sum -c ${dir}/sums`);
    expect(check.match(/: OK$/gm)?.length).toBe(n);
    sh(`umount ${MNT}`);
    cliJson('del', '-n', String(again.id));
  });

  it('passes fio verify=crc32c: 1 GiB of random writes, 4k-256k, QD64, 2 queues', () => {
    const dir = scratch(`fio-${mode}`);
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', path.join(dir, 'disk.img'), '--size', '1G', '--data-mode', mode, '--queues', '2');
    const out = sh(
      `fio --output-format=json --name=verify --filename=${dev.blockDevice} --ioengine=io_uring --direct=1 ` +
        `--rw=randwrite --bsrange=4k-256k --iodepth=64 --size=1G --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0`,
    );
    const job = (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[] }).jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBeGreaterThanOrEqual(1 << 30);
    expect(job.read.io_bytes).toBeGreaterThanOrEqual(1 << 30); // the verify pass read everything back
    cliJson('del', '-n', String(dev.id));
  });
});
