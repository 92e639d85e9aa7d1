// The file target end to end, in every data mode: a filesystem survives delete and re-add, fio's own
// verification finds nothing wrong, and `list` shows what serves the device.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, delAll, DATA_MODES, FIO_VERIFY, fioJob, listEntry, loopDevice, MNT, queueAttr, scratch, sh, ublkDevices, type AddedDevice } from './helpers.js';

/** fio verify=crc32c random writes over the device; every byte written, and read back by the verify pass. */
function fioVerify(dev: string, bsrange: string, iodepth: number, bytes: number): void {
  const out = sh(
    `fio --output-format=json --name=verify --filename=${dev} --ioengine=io_uring --direct=1 ` +
      `--rw=randwrite --bsrange=${bsrange} --iodepth=${iodepth} --size=${bytes} ${FIO_VERIFY}`,
  );
  const job = fioJob(out);
  expect(job.error).toBe(0);
  expect(job.write.io_bytes).toBeGreaterThanOrEqual(bytes);
  expect(job.read.io_bytes).toBeGreaterThanOrEqual(bytes);
}

const RANDOM = '/tmp/ublk-ts-random.bin';
beforeAll(() => {
  delAll();
  // One random source; files of mixed sizes are slices of it.
  sh(`head -c 48M /dev/urandom > ${RANDOM}`);
});
afterEach(delAll);
afterAll(() => fs.rmSync(RANDOM, { force: true }));

/** Writes files of mixed sizes (about 45 MB in all), each a different slice of the random source. */
function writeMixedFiles(dir: string): number {
  const sizes = [1, 4096, 12_345, 65_536, 1 << 20, 3_500_000, 16 << 20, 24 << 20];
  const files: string[] = [];
  let total = 0;
  for (let i = 0; total < 40 << 20; i++) {
    const size = sizes[i % sizes.length];
    const skip = (i * 7919) % (1 << 20);
    files.push(`tail -c +${skip + 1} ${RANDOM} | head -c ${size} > ${dir}/f${i}`);
    total += size;
  }
  sh(files.join(' && '));
  return files.length;
}

describe.each(DATA_MODES)('file target, data mode %s', (mode) => {
  it('carries ext4: 40+ MB of files survive umount, delete, fsck and re-add', () => {
    const dir = scratch(`fs-${mode}`);
    const img = path.join(dir, 'disk.img');
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--size', '256M', '--data-mode', mode, '--queues', '2');
    expect(dev.mode).toBe(mode);
    expect(fs.existsSync(dev.blockDevice)).toBe(true);

    const listed = listEntry(dev.id);
    expect(listed).toMatchObject({ mode, queues: 2, pid: dev.pid, size: 256 << 20 });
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

  it('passes fio verify=crc32c: 64 MiB of random writes, 4k-256k, QD64, 2 queues', () => {
    const dir = scratch(`fio-${mode}`);
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', path.join(dir, 'disk.img'), '--size', '256M', '--data-mode', mode, '--queues', '2');
    fioVerify(dev.blockDevice, '4k-256k', 64, 64 << 20);
    cliJson('del', '-n', String(dev.id));
  });
});

describe('file target over a block device', () => {
  it("takes a 4K-sector backing's block size: ext4 and fio verify=crc32c pass; a smaller size asked is served buffered", () => {
    const loop = loopDevice(path.join(scratch('loop-4k'), 'back.img'), '128M', 4096);
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', loop, '--queues', '2');
    expect(queueAttr(dev.blockDevice, 'logical_block_size')).toBe('4096');
    const info = listEntry(dev.id)?.info;
    expect(info).toMatchObject({ kind: 'block device', direct: true, logicalBlockSize: 4096, reason: "logical block size 4096: the backing's" });

    sh(`mkfs.ext4 -q -F ${dev.blockDevice} && mkdir -p ${MNT} && mount ${dev.blockDevice} ${MNT}`);
    sh(`head -c 8M ${RANDOM} > ${MNT}/f && umount ${MNT} && mount ${dev.blockDevice} ${MNT}`);
    expect(sh(`cmp -n 8M ${MNT}/f ${RANDOM} && echo same`).trim()).toBe('same');
    sh(`umount ${MNT}`);

    fioVerify(dev.blockDevice, '4k-64k', 16, 32 << 20);
    cliJson('del', '-n', String(dev.id));

    // 512-byte blocks on a 4096-byte backing: O_DIRECT would refuse them, the page cache takes them.
    const small = cliJson<AddedDevice>('add', '--target', 'file', '--file', loop, '--logical-block-size', '512', '--queues', '1');
    expect(queueAttr(small.blockDevice, 'logical_block_size')).toBe('512');
    expect(listEntry(small.id)?.info).toMatchObject({
      direct: false,
      logicalBlockSize: 512,
      reason: "buffered: --logical-block-size 512 is below the backing's 4096-byte direct IO alignment",
      discard: 'none',
    });
    sh(`dd if=${RANDOM} of=${small.blockDevice} bs=512 count=1 seek=3 oflag=direct status=none`);
    expect(sh(`dd if=${small.blockDevice} bs=512 skip=3 count=1 iflag=direct status=none | cmp -n 512 - ${RANDOM} && echo same`).trim()).toBe('same');
    cliJson('del', '-n', String(small.id));
  }, 600_000);

  it('discard reaches the backing as a discard: the loop device counts the sectors, the range reads back zero', () => {
    const loop = loopDevice(path.join(scratch('loop-discard'), 'back.img'), '64M', 512);
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', loop, '--queues', '1');
    expect(listEntry(dev.id)?.info.discard).toBe('block discard');
    // Only what the backing has is advertised.
    for (const attr of ['discard_max_bytes', 'discard_granularity']) expect(queueAttr(dev.blockDevice, attr)).toBe(queueAttr(loop, attr));
    sh(`dd if=${RANDOM} of=${dev.blockDevice} bs=1M count=12 oflag=direct status=none`);
    // /sys/block/loopN/stat fields 12-15: discards completed, merged, sectors, milliseconds.
    const discards = () => sh(`cat /sys/block/${path.basename(loop)}/stat`).trim().split(/\s+/).map(Number).slice(11, 14);
    const [ios, , sectors] = discards();
    sh(`blkdiscard -o 1M -l 8M ${dev.blockDevice}`);
    const [ios2, , sectors2] = discards();
    expect(sectors2 - sectors).toBe((8 << 20) / 512);
    expect(ios2 - ios).toBeGreaterThanOrEqual(1);
    // The loop device punches a hole in its tmpfs file: the range reads back as zeroes, the rest is kept.
    expect(sh(`cmp -n 8M -i 1M ${dev.blockDevice} /dev/zero && echo zero`).trim()).toBe('zero');
    expect(sh(`cmp -n 1M ${dev.blockDevice} ${RANDOM} && cmp -n 3M -i 9M ${dev.blockDevice} ${RANDOM} && echo kept`).trim()).toBe('kept');
    cliJson('del', '-n', String(dev.id));
  }, 300_000);
});
