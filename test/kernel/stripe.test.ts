// The stripe target on the real driver: fio's verification with requests that straddle chunks (1 MiB ones
// included), the layout on the legs (chunk c on leg c % n at (c / n) * chunk), discard and write-zeroes
// split over the legs, the block layer told the chunk and the stripe width, ext4 across del and re-add, and
// block-device legs: the block size and discard all legs take, each leg's share discarded as a discard.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  cli,
  cliJson,
  delAll,
  discardedSectors,
  expectScsiDebug4kLimits,
  FIO_VERIFY,
  fioJob,
  loopDevice,
  MNT,
  scratch,
  scsiDebug,
  SCSI_DEBUG_4K_DISCARD,
  sh,
  type AddedDevice,
} from './helpers.js';

afterEach(delAll);

const KiB = 1024;

const FIO = `--output-format=json --ioengine=io_uring --direct=1 ${FIO_VERIFY}`;

/** The device's bytes put back together from the legs, by the layout the man page states. */
function assemble(legs: string[], chunk: number, size: number): Buffer {
  const data = legs.map((f) => fs.readFileSync(f));
  const out = Buffer.alloc(size);
  for (let c = 0; c * chunk < size; c++) {
    const row = Math.floor(c / legs.length) * chunk;
    data[c % legs.length].copy(out, c * chunk, row, row + chunk);
  }
  return out;
}

describe.each([
  { legs: 2, chunk: '64k', mode: 'auto', ext4: true },
  { legs: 4, chunk: '128k', mode: 'auto', ext4: true },
  { legs: 4, chunk: '64k', mode: 'copy', ext4: false },
  { legs: 2, chunk: '4k', mode: 'lease', ext4: false },
])('stripe over $legs legs, chunk $chunk, data mode $mode', ({ legs, chunk, mode, ext4 }) => {
  const chunkBytes = parseInt(chunk, 10) * KiB;
  const add = (files: string[]) =>
    cliJson<AddedDevice>('add', '--target', 'stripe', ...files.flatMap((f) => ['--leg', f]), '--chunk', chunk, '--data-mode', mode, '--queues', '2');

  it('passes fio verify with 4k-1M requests across chunks, lays chunks out round-robin, splits discard over the legs', () => {
    const dir = scratch(`stripe-fio-${legs}-${chunk}-${mode}`);
    const files = Array.from({ length: legs }, (_, i) => path.join(dir, `leg${i}.img`));
    // Legs of different sizes: the device is n times the smallest, in whole chunks.
    sh(files.map((f, i) => `truncate -s ${32 * 1024 + i * 100}k ${f}`).join(' && '));
    const size = legs * (32 << 20);
    const dev = add(files);
    expect(dev.size).toBe(size);
    const queue = `/sys/block/${path.basename(dev.blockDevice)}/queue`;
    expect(Number(fs.readFileSync(`${queue}/minimum_io_size`, 'utf8'))).toBe(chunkBytes);
    expect(Number(fs.readFileSync(`${queue}/optimal_io_size`, 'utf8'))).toBe(chunkBytes * legs);

    let job = fioJob(sh(`fio --name=rand --filename=${dev.blockDevice} ${FIO} --rw=randwrite --bsrange=4k-1M --iodepth=64 --size=64M`));
    expect(job.error).toBe(0);
    expect(job.read.io_bytes).toBeGreaterThan(0);
    // 1 MiB requests starting 4 KiB into a chunk: each straddles 1 MiB / chunk + 1 chunks (the block layer
    // splits it where it would span more than 16, see the man page).
    job = fioJob(sh(`fio --name=seq --filename=${dev.blockDevice} ${FIO} --rw=write --bs=1M --iodepth=16 --offset=4k --size=32M`));
    expect(job.error).toBe(0);
    expect(job.read.io_bytes).toBe(32 << 20);

    // The layout: random bytes written through the device are found on the legs where the man page says.
    sh(`head -c ${size} /dev/urandom > ${dir}/want.bin && dd if=${dir}/want.bin of=${dev.blockDevice} bs=1M oflag=direct status=none`);
    // A discard (4k-aligned: its granularity) and a write-zeroes (sector-aligned) across chunks and legs,
    // starting and ending inside chunks.
    const want = fs.readFileSync(`${dir}/want.bin`);
    const holes = [
      [2 * chunkBytes + 4 * KiB, 3 * chunkBytes + 20 * KiB, ''],
      [9 * chunkBytes + 1536, legs * chunkBytes * 2 + 12 * KiB + 512, '-z'],
    ] as const;
    for (const [off, len, z] of holes) {
      sh(`blkdiscard ${z} -o ${off} -l ${len} ${dev.blockDevice}`);
      want.fill(0, off, off + len);
    }
    sh(`sync ${dev.blockDevice}`);
    cliJson('del', '-n', String(dev.id));
    expect(assemble(files, chunkBytes, size).equals(want)).toBe(true);
  });

  // 2 and 4 legs, 64k and 128k chunks carry a filesystem; the others' data is proven by fio and the layout check.
  if (ext4) it('carries ext4: files survive umount, del, re-add and mount', () => {
    const dir = scratch(`stripe-fs-${legs}-${chunk}-${mode}`);
    const files = Array.from({ length: legs }, (_, i) => path.join(dir, `leg${i}.img`));
    sh(files.map((f) => `truncate -s 64M ${f}`).join(' && '));
    const dev = add(files);
    sh(`mkfs.ext4 -q -F ${dev.blockDevice} && mkdir -p ${MNT} && mount ${dev.blockDevice} ${MNT}`);
    sh(`for s in 1 4096 100000 1048576 3000000 9000000 20000000; do head -c $s /dev/urandom > ${MNT}/f$s; done`);
    sh(`sync && cd ${MNT} && sha256sum f* > ${dir}/sums`);
    sh(`umount ${MNT}`);
    cliJson('del', '-n', String(dev.id));
    const again = add(files);
    sh(`mount ${again.blockDevice} ${MNT}`);
    expect(sh(`cd ${MNT} && sha256sum -c ${dir}/sums`).match(/: OK$/gm)?.length).toBe(7);
    sh(`umount ${MNT}`);
    cliJson('del', '-n', String(again.id));
    // fsck reads the striped device, so it runs on a fresh one.
    const last = add(files);
    sh(`e2fsck -fn ${last.blockDevice}`);
  });
});

describe('stripe over block-device legs', () => {
  it("a 512-byte leg first, a 4096-byte one with coarser, shorter discard, another, a file: 4096-byte blocks, the discard all share, each leg's share discarded", async () => {
    const dir = scratch('stripe-blocks');
    const blocks = [loopDevice(`${dir}/leg0.img`, '8M', 512), await scsiDebug(SCSI_DEBUG_4K_DISCARD), loopDevice(`${dir}/leg2.img`, '8M', 512)];
    sh(`truncate -s 8M ${dir}/leg3.img`);
    const legs = [...blocks, `${dir}/leg3.img`];
    const dev = cliJson<AddedDevice>('add', '--target', 'stripe', ...legs.flatMap((l) => ['--leg', l]), '--chunk', '64k', '--queues', '1');
    expectScsiDebug4kLimits(dev.blockDevice);
    sh(`head -c 1M /dev/urandom > ${dir}/data && dd if=${dir}/data of=${dev.blockDevice} bs=1M oflag=direct status=none`);
    const before = blocks.map(discardedSectors);
    // [80k, 336k): chunk 1 from 16k on leg 1, chunks 2 and 3 on legs 2 and 3, chunk 4 on leg 0, chunk 5 to 16k on leg 1.
    sh(`blkdiscard -o 80k -l 256k ${dev.blockDevice}`);
    // Three block legs, more than the block discards one request may have in flight at once, beside a file
    // leg's punched hole: each has its share.
    expect(blocks.map((l, i) => discardedSectors(l) - before[i])).toEqual([128, 128, 128]);
    expect(sh(`cmp -n 64k ${dir}/leg3.img /dev/zero && echo zero`).trim()).toBe('zero');
    expect(sh(`cmp -n 256k -i 80k ${dev.blockDevice} /dev/zero && cmp -n 80k ${dev.blockDevice} ${dir}/data && cmp -i 336k -n 688k ${dev.blockDevice} ${dir}/data && echo ok`).trim()).toBe('ok');
  });
});

describe('stripe refuses', () => {
  it('a chunk that is not a power of two from 4k, or larger than a leg: one line each, no device', () => {
    const dir = scratch('stripe-bad');
    sh(`truncate -s 1M ${dir}/a.img ${dir}/b.img`);
    const legs = ['--leg', `${dir}/a.img`, '--leg', `${dir}/b.img`];
    for (const [chunk, msg] of [['2k', /power of two/], ['96k', /power of two/], ['lots', /not a size/], ['2M', /larger than the smallest leg/]] as const) {
      const r = cli('add', '--target', 'stripe', ...legs, '--chunk', chunk);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(msg);
    }
    expect(cliJson<unknown[]>('list')).toEqual([]);
  });
});
