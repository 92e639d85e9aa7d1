// The mirror target on the real driver: fio's verification over 2 and 3 legs that end byte-identical, a
// leg that dies mid-run under a mounted filesystem (device-mapper switched to its error table) without the
// writer noticing, a failed read served from another leg, a mirror added again with its dead leg starting degraded, and
// block-device legs: the block size and discard all legs take, a discard that reaches each as a discard.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  cli,
  cliJson,
  delAll,
  discardedSectors,
  dmDevice,
  expectScsiDebug4kLimits,
  FIO_VERIFY,
  fioInBackground,
  fioJob,
  listed,
  loopDevice,
  MNT,
  queueAttr,
  scratch,
  sh,
  scsiDebug,
  SCSI_DEBUG_4K_DISCARD,
  sleep,
  type AddedDevice,
  type Listed,
} from './helpers.js';

afterEach(delAll);

const VERIFY = `--ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-256k --iodepth=64 ${FIO_VERIFY}`;

/** Waits until the server's status poll (once a second) has put the leg's failure into the record. */
async function failedLeg(id: number): Promise<Listed> {
  for (let i = 0; i < 50; i++) {
    const d = listed(id);
    if (d.info.mirror === 'degraded') return d;
    await sleep(200);
  }
  return listed(id);
}

describe.each([
  { legs: 2, mode: 'auto' },
  { legs: 3, mode: 'user-copy' },
])('mirror over $legs file legs, data mode $mode', ({ legs, mode }) => {
  it('passes fio verify=crc32c (4k-256k, QD64, 2 queues); discard reaches every leg; the legs end byte-identical', () => {
    const dir = scratch(`mirror-${legs}-${mode}`);
    const files = Array.from({ length: legs }, (_, i) => path.join(dir, `leg${i}.img`));
    sh(files.map((f) => `truncate -s 64M ${f}`).join(' && '));
    const dev = cliJson<AddedDevice>('add', '--target', 'mirror', ...files.flatMap((f) => ['--leg', f]), '--assume-clean', '--data-mode', mode, '--queues', '2');
    // The legs' last 8 KiB hold the superblock and the bitmap.
    expect(dev.size).toBe((64 << 20) - 8192);
    expect(listed(dev.id).info).toMatchObject({ mirror: 'clean', legs: Array(legs).fill('in-sync').join(','), file: files.join(','), dataSize: dev.size });
    const job = fioJob(sh(`fio --output-format=json --name=verify --filename=${dev.blockDevice} ${VERIFY} --size=48M`));
    expect(job.error).toBe(0);
    expect(job.read.io_bytes).toBeGreaterThanOrEqual(job.write.io_bytes - (256 << 10)); // every block read back
    // A discard and a write-zeroes, then a flush: each reaches every leg.
    sh(`blkdiscard -o 1M -l 3M ${dev.blockDevice} && blkdiscard -z -o 8196k -l 1M ${dev.blockDevice} && sync ${dev.blockDevice}`);
    expect(sh(`cmp -n 3M -i 1M ${dev.blockDevice} /dev/zero && echo same`).trim()).toBe('same');
    expect(listed(dev.id).info.mirror).toBe('clean');
    cliJson('del', '-n', String(dev.id));
    for (const f of files.slice(1)) expect(sh(`cmp -n ${dev.size} ${files[0]} ${f} && echo same`).trim()).toBe('same');
    expect(sh(`cmp -n 1M -i 8196k:0 ${files[0]} /dev/zero && echo zero`).trim()).toBe('zero');
  });
});

describe('mirror with a failing leg', () => {
  it('a leg switched to an error table under a mounted ext4: fio sees nothing, list shows the leg failed, the good leg mounts alone', async () => {
    const dir = scratch('mirror-degraded');
    const good = path.join(dir, 'good.img');
    sh(`truncate -s 128M ${good} ${dir}/back.img`);
    const dm = dmDevice('ublk-ts-leg', `${dir}/back.img`, (loop) => `0 262144 linear ${loop} 0\\n`);
    const dev = cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', good, '--leg', dm, '--assume-clean', '--queues', '2');
    sh(`mkfs.ext4 -q -F ${dev.blockDevice} && mkdir -p ${MNT} && mount ${dev.blockDevice} ${MNT}`);
    sh(`for i in 1 2 3 4; do head -c 3M /dev/urandom > ${MNT}/before$i; done && sync`);

    const fio = fioInBackground(['--output-format=json', '--name=degraded', `--filename=${MNT}/fio.dat`, ...VERIFY.split(' '), '--size=48M']);
    // Mid-run: once fio has written 8 MiB through the device, the leg starts failing every request.
    const written = () => Number(fs.readFileSync(`/sys/block/${path.basename(dev.blockDevice)}/stat`, 'utf8').trim().split(/\s+/)[6]) * 512;
    const base = written();
    for (let i = 0; i < 600 && written() - base < 8 << 20; i++) await sleep(100);
    expect(await Promise.race([fio.exit, sleep(0).then(() => 'running')])).toBe('running');
    sh(`printf '0 262144 error\\n' | dmsetup load --noudevsync ublk-ts-leg && dmsetup resume --noudevsync ublk-ts-leg`);
    const code = await fio.exit;
    const out = fio.output();
    expect(out).not.toMatch(/verify: bad/);
    expect(code).toBe(0);
    expect(fioJob(out).error).toBe(0);

    const d = await failedLeg(dev.id);
    expect(d.info).toMatchObject({ mirror: 'degraded', legs: 'in-sync,failed' });
    expect(String(d.info.leg2)).toMatch(/^failed: (write|flush|read) at byte \d+: EIO/);
    expect(fs.readFileSync(dev.log, 'utf8')).toMatch(/target status: .*"legs":"in-sync,failed"/);
    // Still a working disk: more writes, on the one leg left.
    sh(`head -c 5M /dev/urandom > ${MNT}/after && sync && cd ${MNT} && sha256sum before* after fio.dat > ${dir}/sums`);
    sh(`umount ${MNT}`);
    cliJson('del', '-n', String(dev.id));
    sh(`e2fsck -fn ${good}`);

    // Added again with both legs, the dead one still dead: the mirror starts degraded, from the good leg.
    const alone = cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', good, '--leg', dm, '--queues', '2');
    expect(listed(alone.id).info).toMatchObject({ mirror: 'degraded', legs: 'in-sync,failed' });
    sh(`mount ${alone.blockDevice} ${MNT}`);
    expect(sh(`cd ${MNT} && sha256sum -c ${dir}/sums`).match(/: OK$/gm)?.length).toBe(6);
  });

  it('a read that fails on one leg is served by the other; the failing leg is dropped', async () => {
    const dir = scratch('mirror-read');
    sh(`head -c 16M /dev/urandom > ${dir}/good.img && cp ${dir}/good.img ${dir}/back.img`);
    // The leg's first half reads as errors (its end, where the metadata is, does not).
    const dm = dmDevice('ublk-ts-half', `${dir}/back.img`, (loop) => `0 16384 error\\n16384 16384 linear ${loop} 16384\\n`);
    const dev = cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', dm, '--leg', `${dir}/good.img`, '--assume-clean', '--claim-legs', '--queues', '1');
    sh(`dd if=${dev.blockDevice} of=${dir}/read.bin bs=64k iflag=direct status=none`);
    expect(sh(`cmp -n ${dev.size} ${dir}/read.bin ${dir}/good.img && echo same`).trim()).toBe('same');
    const d = await failedLeg(dev.id);
    expect(d.info).toMatchObject({ mirror: 'degraded', legs: 'failed,in-sync' });
    expect(String(d.info.leg1)).toMatch(/^failed: read at byte \d+: EIO/);
    expect(Number(/at byte (\d+)/.exec(String(d.info.leg1))?.[1])).toBeLessThan(8 << 20);
  });

  it('the last healthy leg is never dropped: its errors reach the reader, and the rest of it is served', async () => {
    const dir = scratch('mirror-last');
    sh(`truncate -s 16M ${dir}/back.img`);
    const dm = dmDevice('ublk-ts-last', `${dir}/back.img`, (loop) => `0 16384 error\\n16384 16384 linear ${loop} 16384\\n`);
    const dev = cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', dm, '--queues', '1');
    expect(() => sh(`dd if=${dev.blockDevice} of=/dev/null bs=64k count=1 iflag=direct status=none`)).toThrow(/Input\/output error/);
    sh(`dd if=${dev.blockDevice} of=/dev/null bs=64k skip=128 count=127 iflag=direct status=none`);
    await sleep(1500);
    expect(listed(dev.id).info).toMatchObject({ mirror: 'clean', legs: 'in-sync' });
  });
});

describe('mirror over block-device legs', () => {
  it('a 512-byte leg first, then a 4096-byte one with coarser, shorter discard: the mirror takes 4096 and the discard both share, and discards each leg', async () => {
    const dir = scratch('mirror-blocks');
    const legs = [loopDevice(`${dir}/leg.img`, '16M', 512), await scsiDebug(SCSI_DEBUG_4K_DISCARD)];
    const dev = cliJson<AddedDevice>('add', '--target', 'mirror', ...legs.flatMap((l) => ['--leg', l]), '--assume-clean', '--queues', '1');
    expectScsiDebug4kLimits(dev.blockDevice);
    sh(`head -c 4M /dev/urandom > ${dir}/data && dd if=${dir}/data of=${dev.blockDevice} bs=1M oflag=direct status=none`);
    const before = legs.map(discardedSectors);
    sh(`blkdiscard -o 1M -l 2M ${dev.blockDevice}`);
    // A discard on each leg, not written zeroes: the legs count the sectors as discarded.
    expect(legs.map((l, i) => discardedSectors(l) - before[i])).toEqual([4096, 4096]);
    for (const d of [...legs, dev.blockDevice])
      expect(sh(`cmp -n 2M -i 1M ${d} /dev/zero && cmp -n 1M ${d} ${dir}/data && cmp -n 1M -i 3M ${d} ${dir}/data && echo ok`).trim(), d).toBe('ok');
    expect(listed(dev.id).info.mirror).toBe('clean');
  });

  it('a leg that cannot discard, second: the mirror offers no discard', async () => {
    const dir = scratch('mirror-nodiscard');
    // scsi_debug's disk has no discard unless asked (lbpu).
    const legs = [loopDevice(`${dir}/a.img`, '16M', 512), await scsiDebug('')];
    const dev = cliJson<AddedDevice>('add', '--target', 'mirror', ...legs.flatMap((l) => ['--leg', l]), '--queues', '1');
    expect(queueAttr(legs[0], 'discard_max_bytes')).not.toBe('0');
    expect(queueAttr(dev.blockDevice, 'discard_max_bytes')).toBe('0');
  });
});

describe('mirror refuses', () => {
  it("no leg, a missing leg, the same leg twice, legs out of order, another mirror's leg, data where the metadata goes: one line each, no device", () => {
    const dir = scratch('mirror-bad');
    sh(`truncate -s 16M ${dir}/a.img ${dir}/c.img ${dir}/x.img ${dir}/y.img && ln -s ${dir}/a.img ${dir}/link.img && head -c 16M /dev/urandom > ${dir}/full.img`);
    // 2: a mistake in the arguments; 5: the legs themselves refuse (their metadata)
    const refused = (status: number, ...args: string[]) => {
      const r = cli('add', '--target', 'mirror', ...args);
      expect(r.status, r.stderr).toBe(status);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      return r.stderr;
    };
    expect(refused(2)).toMatch(/at least one --leg/);
    expect(refused(2, '--leg', 'missing', '--leg', 'missing')).toMatch(/every --leg is missing/);
    expect(refused(2, '--leg', `${dir}/nope.img`)).toMatch(/--leg .*nope.img does not exist/);
    expect(refused(2, '--leg', `${dir}/a.img`, '--leg', `${dir}/link.img`)).toMatch(/same file as --leg/);
    for (const pair of [['a', 'c'], ['x', 'y']]) {
      const made = cliJson<AddedDevice>('add', '--target', 'mirror', ...pair.flatMap((l) => ['--leg', `${dir}/${l}.img`]), '--assume-clean', '--queues', '1');
      cliJson('del', '-n', String(made.id));
    }
    expect(refused(5, '--leg', `${dir}/c.img`, '--leg', `${dir}/a.img`)).toMatch(/--leg 1 is leg 2 of this mirror: give the legs in their order/);
    expect(refused(5, '--leg', `${dir}/a.img`, '--leg', `${dir}/y.img`)).toMatch(/--leg [12] belongs to another mirror/);
    expect(refused(5, '--leg', `${dir}/full.img`)).toMatch(/--leg 1 holds data where the mirror's metadata would go .*--claim-legs/);
    expect(cliJson<unknown[]>('list')).toEqual([]);
  });
});
