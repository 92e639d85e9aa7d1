// A mirror that remembers: its legs' state and write-intent bitmap live on the legs, so after every kind of
// boundary (kill -9 + recover, --restart, del + add, down + up) a leg that missed writes is never read
// before it is resynced, and a resync copies only what was missed, resumes after a crash, and a scrub
// finds and repairs what changed behind the device's back.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  cli,
  cliJson,
  delAll,
  dmDevice,
  failedInOneLine,
  fioInBackground,
  fioJob,
  listed,
  MNT,
  nbdkit,
  scratch,
  sh,
  stateOf,
  stopServer,
  waitFor,
  type AddedDevice,
} from './helpers.js';
import type { Outcome } from '../../src/updown.js';

afterEach(delAll);

const info = (id: number) => listed(id).info;
const same = (a: string, b: string, bytes: number) => sh(`cmp -n ${bytes} ${a} ${b} && echo same`).trim();
const legsAre = (id: number, legs: string) => waitFor(`legs ${legs}`, () => info(id).legs === legs, 60_000);

/** Switches a device-mapper leg between its data and an error table. */
function dmTable(name: string, table: string): void {
  sh(`printf '${table}' | dmsetup load --noudevsync ${name} && dmsetup resume --noudevsync ${name}`);
}

/** P2: 4 MiB that fio writes with checksums and later verifies (--verify_only), 16k at a time. */
const p2 = (dev: string) => `--output-format=json --name=p2 --filename=${dev} --rw=write --bs=16k --size=4M --direct=1 --iodepth=16 --ioengine=io_uring --verify=crc32c --verify_fatal=1 --verify_state_save=0`;

type Boundary = 'kill -9 + recover' | '--restart' | 'del + add' | 'down + up';

describe.each<Boundary>(['kill -9 + recover', '--restart', 'del + add', 'down + up'])('a leg that missed writes, then %s', (boundary) => {
  it('is resyncing, never read before it is in sync: every read returns P2, the legs end identical', async () => {
    const dir = scratch(`stale-${boundary.replace(/\W+/g, '')}`);
    const a = path.join(dir, 'a.img');
    sh(`truncate -s 32M ${a} ${dir}/b.img && head -c 4M /dev/urandom > ${dir}/p1`);
    const dm = 'ublk-ts-stale';
    const linear = (loop: string) => `0 65536 linear ${loop} 0\\n`;
    const b = dmDevice(dm, `${dir}/b.img`, linear);
    const loop = sh(`dmsetup table ${dm}`).trim().split(/\s+/)[3];
    // Slow enough (8 s) that the resync of 4 MiB is still running when the boundary is crossed and checked.
    const opts = { target: 'mirror', leg: [a, b], 'assume-clean': true, 'resync-rate': 0.5, queues: 2 };
    const conf = path.join(dir, 'devices.json');
    fs.writeFileSync(conf, JSON.stringify({ devices: { stale: opts } }));
    const add = () => cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', a, '--leg', b, '--assume-clean', '--resync-rate', '0.5', '--queues', '2', ...(boundary === '--restart' ? ['--restart', '2'] : []));
    const up = () => cliJson<{ devices: Outcome[] }>('up', 'stale', '--config', conf).devices[0].id!;
    let id = boundary === 'down + up' ? up() : add().id;
    const dev = `/dev/ublkb${id}`;

    sh(`dd if=${dir}/p1 of=${dev} bs=1M oflag=direct status=none`);
    dmTable(dm, '0 65536 error\\n');
    expect(fioJob(sh(`fio ${p2(dev)} --do_verify=0`)).error).toBe(0);
    expect(info(id).legs).toBe('in-sync,failed');
    dmTable(dm, linear(loop)); // back, with P1 on it

    const pid = listed(id).pid;
    if (boundary === 'kill -9 + recover') {
      process.kill(pid, 'SIGKILL');
      cliJson('recover', '-n', String(id));
    } else if (boundary === '--restart') {
      process.kill(pid, 'SIGKILL');
      await waitFor('a new server', () => stateOf(id) === 'live' && listed(id).pid !== pid, 60_000);
    } else if (boundary === 'del + add') {
      cliJson('del', '-n', String(id));
      id = add().id;
    } else {
      cliJson('down', 'stale', '--config', conf);
      id = up();
    }
    expect(info(id).legs).toBe('in-sync,resyncing');
    // Reads spread over in-sync legs only: any read from leg 2 would find P1 where P2 belongs.
    const during = fioJob(sh(`fio ${p2(`/dev/ublkb${id}`)} --verify_only`));
    expect(during.error).toBe(0);
    expect(during.read.io_bytes).toBe(4 << 20);
    expect(info(id).legs).toBe('in-sync,resyncing'); // the verify ran while leg 2 was still stale
    expect(verb('rate', '-n', String(id), '--resync-rate', '0').ok).toBe(true); // the rest at the legs' speed
    await legsAre(id, 'in-sync,in-sync');
    expect(Number(info(id).resyncCopied)).toBeGreaterThanOrEqual(4 << 20);
    expect(fioJob(sh(`fio ${p2(`/dev/ublkb${id}`)} --verify_only`)).error).toBe(0);
    const size = Number(info(id).dataSize);
    if (boundary === 'down + up') cliJson('down', 'stale', '--config', conf);
    else cliJson('del', '-n', String(id));
    expect(same(a, `${dir}/b.img`, size)).toBe('same');
  });
});

/** Two 32 MiB file legs (512 chunks of 64 KiB), the same from the start. */
function twoLegs(name: string, ...extra: string[]) {
  const dir = scratch(name);
  const legs = [path.join(dir, 'a.img'), path.join(dir, 'b.img')];
  sh(`truncate -s 32M ${legs.join(' ')}`);
  const dev = cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', legs[0], '--leg', legs[1], '--assume-clean', '--queues', '2', ...extra);
  return { dir, legs, dev, size: Number(info(dev.id).dataSize) };
}

const verb = (...args: string[]) => cliJson<{ ok: boolean; message: string }>('mirror', ...args);

describe('resync', () => {
  it('of a leg that missed 1 % of the chunks copies those chunks only, and the legs end identical', async () => {
    const { legs, dev, size } = twoLegs('resync-1pct');
    const id = String(dev.id);
    expect(verb('fail', '-n', id, '--leg', '2').message).toBe('leg 2 is failed');
    expect(verb('fail', '-n', id, '--leg', '2').message).toBe('leg 2 is failed'); // safe to repeat
    // A 4k write into every 100th chunk: 6 of 512.
    sh(`for c in $(seq 0 100 511); do dd if=/dev/urandom of=${dev.blockDevice} bs=4k count=1 seek=$((c * 16)) oflag=direct status=none; done`);
    expect(verb('re-add', '-n', id, '--leg', '2').message).toMatch(/^leg 2 is (resyncing|in-sync)$/);
    await legsAre(dev.id, 'in-sync,in-sync');
    expect(Number(info(dev.id).resyncCopied)).toBe(6 * 65536);
    expect(fs.readFileSync(dev.log, 'utf8')).toMatch(/"syncNote":"resync of leg 2 ended"/);
    cliJson('del', '-n', id);
    expect(same(legs[0], legs[1], size)).toBe('same');
  });

  it('replace under fio verify (QD32, mixed sizes): never less redundant, zero errors, identical legs, and it goes on after kill -9 + recover; add-leg makes three; kill -9 + recover serves the new legs', async () => {
    // 1 MB/s while fio runs (it yields to user IO), 4 MB/s after: still resyncing when fio is done.
    const { dir, legs, dev, size } = twoLegs('replace', '--resync-rate', '4', '--resync-min-rate', '1');
    const id = String(dev.id);
    sh(`head -c 16M /dev/urandom | dd of=${dev.blockDevice} bs=1M oflag=direct status=none`);
    const [fresh, third] = [path.join(dir, 'new.img'), path.join(dir, 'third.img')];
    sh(`truncate -s 32M ${fresh} ${third}`);
    expect(verb('replace', '-n', id, '--leg', '2', '--with', fresh).message).toBe("leg 3 is resyncing; it takes leg 2's place once in sync");
    expect(info(dev.id).legs).toBe('in-sync,in-sync,resyncing'); // the old leg serves until the new one is in sync
    const fio = fioJob(sh(`fio --output-format=json --name=replace --filename=${dev.blockDevice} --ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-128k --iodepth=32 --size=16M --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0`));
    expect(fio.error).toBe(0);
    expect(info(dev.id).legs).toBe('in-sync,in-sync,resyncing'); // fio ran during the resync
    // Killed in the middle: the replace is in the superblocks, and goes on under the next server.
    process.kill(listed(dev.id).pid, 'SIGKILL');
    await waitFor('quiesced', () => stateOf(dev.id) !== 'live', 10_000);
    cliJson('recover', '-n', id);
    expect(info(dev.id)).toMatchObject({ file: `${legs[0]},${legs[1]},${fresh}`, leg3: 'replacing leg 2' });
    expect(verb('rate', '-n', id, '--resync-rate', '0').ok).toBe(true); // from here at the legs' speed
    await legsAre(dev.id, 'in-sync,in-sync');
    expect(info(dev.id).file).toBe(`${legs[0]},${fresh}`);
    expect(verb('add-leg', '-n', id, '--with', third).message).toBe('leg 3 is resyncing');
    await legsAre(dev.id, 'in-sync,in-sync,in-sync');
    // A later server opens the legs the mirror has now.
    process.kill(listed(dev.id).pid, 'SIGKILL');
    await waitFor('quiesced', () => stateOf(dev.id) !== 'live', 10_000);
    cliJson('recover', '-n', id);
    expect(info(dev.id).file).toBe(`${legs[0]},${fresh},${third}`);
    await legsAre(dev.id, 'in-sync,in-sync,in-sync');
    cliJson('del', '-n', id);
    expect(same(legs[0], fresh, size)).toBe('same');
    expect(same(legs[0], third, size)).toBe('same');
  });

  it('killed (-9) in the middle resumes after recover from its checkpoint, not from the start, and ends identical; `mirror rate` is kept across it', async () => {
    const dir = scratch('resync-resume');
    const [a, b] = [path.join(dir, 'a.img'), path.join(dir, 'b.img')];
    sh(`head -c 64M /dev/urandom > ${a} && truncate -s 64M ${b}`);
    // leg 1 is the copy; --claim-legs: its random tail may take the metadata
    const dev = cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', a, '--leg', b, '--claim-legs', '--resync-rate', '4', '--queues', '1');
    const size = Number(info(dev.id).dataSize);
    // Progress where an operator looks, early (each command takes a second or more here): list, stats.
    await waitFor('started', () => Number(info(dev.id).resync ?? 0) > 1, 60_000);
    expect(cli('list').stdout).toMatch(new RegExp(`\\[resync \\d+\\.\\d% at [\\d.]+ MB/s, \\d+ s left\\]`));
    const stats = cliJson<{ devices: { id: number; progress?: string }[] }>('stats', '-n', String(dev.id)).devices[0];
    expect(stats.progress).toMatch(/^resync \d+\.\d% at [\d.]+ MB\/s, \d+ s left$/);
    // The rates change while it runs (the server's record keeps them).
    const id = String(dev.id);
    expect(verb('rate', '-n', id, '--resync-rate', '3').message).toBe('resync at most 3 MB/s, 3 MB/s while user IO is active');
    await waitFor('half copied', () => Number(info(dev.id).resync ?? 0) > 50, 60_000);
    process.kill(dev.pid, 'SIGKILL');
    await waitFor('quiesced', () => stateOf(dev.id) !== 'live', 10_000);
    cliJson('recover', '-n', id);
    expect(info(dev.id)).toMatchObject({ resyncRateMax: 3e6, resyncRateMin: 3e6 });
    expect(failedInOneLine(cli('mirror', 'rate', '-n', id))).toMatch(/rate needs --resync-rate, --resync-min-rate or both/);
    expect(failedInOneLine(cli('mirror', 'rate', '-n', id, '--resync-min-rate', '5'))).toMatch(/--resync-min-rate 5 is above --resync-rate 3/);
    // No cap from here: it ends at the legs' speed.
    expect(verb('rate', '-n', id, '--resync-rate', '0').message).toBe("resync at the legs' speed, 3 MB/s while user IO is active");
    await legsAre(dev.id, 'in-sync,in-sync');
    // From a checkpoint at most a second old: under half is left; a restart would copy it all.
    const copied = Number(info(dev.id).resyncCopied);
    expect(copied).toBeGreaterThan(0);
    expect(copied).toBeLessThan(size * 0.7);
    cliJson('del', '-n', String(dev.id));
    expect(same(a, b, size)).toBe('same');
  });

  it('yields to user IO: under fio it copies no faster than --resync-min-rate, after fio at full speed, and ends identical; a floor above the cap is refused', async () => {
    const dir = scratch('resync-yield');
    const [a, b, fresh] = ['a.img', 'b.img', 'new.img'].map((f) => path.join(dir, f));
    sh(`truncate -s 32M ${a} ${b} ${fresh}`);
    const refused = failedInOneLine(cli('add', '--target', 'mirror', '--leg', a, '--leg', b, '--resync-rate', '2', '--resync-min-rate', '4'));
    expect(refused).toMatch(/--resync-min-rate 4 is above --resync-rate 2/);
    expect(cliJson<unknown[]>('list')).toEqual([]);

    const floor = 2e6;
    const dev = cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', a, '--leg', b, '--assume-clean', '--queues', '2', '--resync-min-rate', '2');
    const id = String(dev.id);
    const size = Number(info(dev.id).dataSize);
    const reads = () => Number(fs.readFileSync(`/sys/block/ublkb${dev.id}/stat`, 'utf8').trim().split(/\s+/)[0]);
    const before = reads();
    const fio = fioInBackground(['--name=busy', `--filename=${dev.blockDevice}`, '--ioengine=io_uring', '--direct=1', '--rw=randread', '--bs=4k', '--iodepth=4', '--time_based', '--runtime=10']);
    await waitFor('fio reading', () => reads() > before + 100, 30_000);

    // A whole resync (32 MiB) while fio reads: the cap holds from the replace on, with two chunks of slack.
    const t0 = Date.now();
    expect(verb('replace', '-n', id, '--leg', '2', '--with', fresh).message).toBe("leg 3 is resyncing; it takes leg 2's place once in sync");
    const during = info(dev.id);
    const t1 = Date.now();
    expect(during).toMatchObject({ legs: 'in-sync,in-sync,resyncing', resyncYielding: true });
    const copied = Number(during.resyncCopied);
    expect(copied).toBeGreaterThan(0); // a floor, never a stop
    expect(copied).toBeLessThanOrEqual((floor * (t1 - t0)) / 1000 + 2 * 65536);

    // fio ends: the rest goes at full speed, sooner than the floor alone could have copied it.
    expect(await fio.exit).toBe(0);
    await legsAre(dev.id, 'in-sync,in-sync');
    const took = Date.now() - t1;
    console.log(`resync under fio: ${copied} bytes in ${t1 - t0} ms; the remaining ${size - copied} in ${took} ms after`);
    expect(took).toBeLessThan(((size - copied) / floor) * 1000);
    expect(info(dev.id)).toMatchObject({ file: `${a},${fresh}`, resyncCopied: size });
    cliJson('del', '-n', id);
    expect(same(a, fresh, size)).toBe('same');
  });
});

describe('a remote leg: the nbd target in front of nbdkit', () => {
  it('a third leg: ext4 and its files intact across del + add; its server killed, the leg fails and the mirror goes on; back and re-added, it gets only what it missed, and the three legs end identical', async () => {
    const dir = scratch('remote-leg');
    const [a, b] = [path.join(dir, 'a.img'), path.join(dir, 'b.img')];
    const remote = path.join(dir, 'remote.img');
    const sock = path.join(dir, 'nbd.sock');
    const sums = path.join(dir, 'sums');
    sh(`truncate -s 64M ${a} ${b} ${remote}`);
    let server = await nbdkit(sock, 'file', remote);
    const leg = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--timeout', '2', '--reconnect', '30');
    const add = (...more: string[]) => cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', a, '--leg', b, '--leg', leg.blockDevice, '--queues', '2', ...more);
    let m = add('--assume-clean');
    // Files with their sums, flushed (umount): the nbd leg holds no acknowledged write its server may lose.
    // No discard at mkfs: it would mark every chunk, and the resync below is to copy only what was missed.
    sh(`mkfs.ext4 -q -E nodiscard ${m.blockDevice} && mkdir -p ${MNT} && mount ${m.blockDevice} ${MNT}`);
    sh(`head -c 4M /dev/urandom > ${MNT}/f1 && sha256sum ${MNT}/f1 > ${sums} && umount ${MNT}`);
    cliJson('del', '-n', String(m.id));
    m = add();
    sh(`mount ${m.blockDevice} ${MNT} && sha256sum -c --quiet ${sums}`);
    // Its server killed: the leg fails, and the files go on being written and read on the other two.
    await stopServer(server);
    sh(`head -c 4M /dev/urandom > ${MNT}/f2 && sync ${MNT}/f2 && sha256sum ${MNT}/f2 >> ${sums}`);
    expect(info(m.id).legs).toBe('in-sync,in-sync,failed');
    server = await nbdkit(sock, 'file', remote);
    await waitFor('the nbd leg connected again', () => info(leg.id).state === 'connected', 60_000);
    expect(verb('re-add', '-n', String(m.id), '--leg', '3').message).toMatch(/^leg 3 is (resyncing|in-sync)$/);
    await legsAre(m.id, 'in-sync,in-sync,in-sync');
    const size = Number(info(m.id).dataSize);
    // The bitmap's chunks (f2, and what mkfs and f1 wrote if no sweep has cleared their bits yet), not the
    // whole leg.
    expect(Number(info(m.id).resyncCopied)).toBeGreaterThan(4 << 20);
    expect(Number(info(m.id).resyncCopied)).toBeLessThan(size / 2);
    sh(`sha256sum -c --quiet ${sums} && umount ${MNT} && e2fsck -fn ${m.blockDevice}`);
    cliJson('del', '-n', String(m.id));
    cliJson('del', '-n', String(leg.id));
    await stopServer(server);
    expect(same(a, b, size)).toBe('same');
    expect(same(a, remote, size)).toBe('same');
  });
});

describe('bitmap', () => {
  it('keeps a written chunk dirty across kill -9 + recover, clears it once idle, and the next server finds it clear', async () => {
    const { legs, dev, size } = twoLegs('bitmap');
    const id = String(dev.id);
    const dirty = (n: number) => waitFor(`${n} dirty chunks`, () => info(dev.id).bitmapDirty === n, 30_000);
    expect(info(dev.id)).toMatchObject({ bitmapBits: 512, bitmapDirty: 0 });
    sh(`head -c 1M /dev/urandom | dd of=${dev.blockDevice} bs=64k oflag=direct status=none`); // 16 chunks
    await dirty(16); // a sweep clears a bit only after two found its chunk idle, 5 s apart
    process.kill(listed(dev.id).pid, 'SIGKILL');
    await waitFor('quiesced', () => stateOf(dev.id) !== 'live', 10_000);
    cliJson('recover', '-n', id);
    await dirty(16); // from the legs: what a crash left unsure, and what the resync after it copies
    await legsAre(dev.id, 'in-sync,in-sync');
    expect(Number(info(dev.id).resyncCopied)).toBe(16 * 65536);
    await dirty(0);
    expect(cli('mirror', 'status', '-n', id).stdout).toContain('bitmap: 0 of 512 chunks of 64 KiB dirty');
    cliJson('del', '-n', id);
    const again = cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', legs[0], '--leg', legs[1], '--queues', '2');
    expect(info(again.id)).toMatchObject({ legs: 'in-sync,in-sync', bitmapDirty: 0 });
    cliJson('del', '-n', String(again.id));
    expect(same(legs[0], legs[1], size)).toBe('same');
  });
});

describe('check', () => {
  it('finds a range corrupted on one leg behind the device, --repair rewrites it, a clean mirror reports zero', async () => {
    const { legs, dev } = twoLegs('check');
    const id = String(dev.id);
    sh(`head -c 4M /dev/urandom | dd of=${dev.blockDevice} bs=1M oflag=direct status=none`);
    const checked = async () => {
      expect(verb('check', '-n', id).message).toBe('check started');
      await waitFor('check done', () => info(dev.id).check === 'done', 60_000);
      return info(dev.id);
    };
    expect((await checked()).mismatched).toBe(0);
    // 128 KiB at 1 MiB of leg 2, behind the device's back
    sh(`dd if=/dev/urandom of=${legs[1]} bs=64k count=2 seek=16 conv=notrunc status=none`);
    const found = await checked();
    expect(found.mismatched).toBe(131072);
    expect(found.mismatchRanges).toBe('1048576+65536,1114112+65536');
    expect(verb('check', '-n', id, '--repair', '--from', '1').message).toBe('check and repair started');
    await waitFor('repair done', () => info(dev.id).check === 'done', 60_000);
    expect(info(dev.id).repaired).toBe(131072);
    expect((await checked()).mismatched).toBe(0);
    expect(same(legs[0], legs[1], Number(info(dev.id).dataSize))).toBe('same');
  });

  it('verbs refuse in one line: a leg out of range, failing the last in-sync leg, a device that is not a mirror; a removed leg stays out across kill -9 + recover and del + add (--leg missing) until replace fills its slot', async () => {
    const { legs, dev, size } = twoLegs('verbs');
    const id = String(dev.id);
    const refused = (...args: string[]) => {
      const r = cli('mirror', ...args);
      expect(r.status, r.stderr).not.toBe(0);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      return r.stderr;
    };
    expect(refused('fail', '-n', id, '--leg', '3')).toMatch(/--leg must be 1..2/);
    verb('fail', '-n', id, '--leg', '1');
    expect(refused('fail', '-n', id, '--leg', '2')).toMatch(/last in-sync leg/);
    expect(refused('remove', '-n', id, '--leg', '2')).toMatch(/only a failed leg/);
    expect(verb('remove', '-n', id, '--leg', '1').message).toBe('leg 1 is removed');
    expect(info(dev.id).legs).toBe('empty,in-sync');
    expect(refused('status', '-n', '99')).toMatch(/no running mirror device/);
    // The record says `missing` for the removed leg: a later server does not take it back by itself.
    sh(`head -c 1M /dev/urandom | dd of=${dev.blockDevice} bs=1M oflag=direct status=none`);
    process.kill(listed(dev.id).pid, 'SIGKILL');
    await waitFor('quiesced', () => stateOf(dev.id) !== 'live', 10_000);
    cliJson('recover', '-n', id);
    expect(info(dev.id)).toMatchObject({ file: `missing,${legs[1]}`, legs: 'empty,in-sync' });
    expect(refused('re-add', '-n', id, '--leg', '1')).toMatch(/leg 1 is missing: `replace --leg 1 --with PATH` fills its slot/);
    cliJson('del', '-n', id);
    const again = cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', 'missing', '--leg', legs[1], '--queues', '1');
    expect(info(again.id)).toMatchObject({ file: `missing,${legs[1]}`, legs: 'empty,in-sync' });
    expect(verb('replace', '-n', String(again.id), '--leg', '1', '--with', legs[0]).message).toBe("leg 3 is resyncing; it takes leg 1's place once in sync");
    await legsAre(again.id, 'in-sync,in-sync');
    expect(info(again.id).file).toBe(`${legs[0]},${legs[1]}`);
    cliJson('del', '-n', String(again.id));
    expect(same(legs[0], legs[1], size)).toBe('same');
  });
});
