// The asynchronous engine through its first consumer, the fault target, on the real driver: held requests
// overlap, errors reach the reader and nothing else, a backing that fails is survived, and a device whose
// requests never complete (or whose queue fails) is still deleted at once, leaving nothing behind.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cli, cliJson, delAll, deletePromptly, dmDevice, FIO_VERIFY, fioInBackground, fioJob, hung, inBackground, nbdkit, noMerges, nothingLeft, readsInFlight, scratch, serverPids, sh, sleep, stopServer, type AddedDevice } from './helpers.js';

afterEach(delAll);

/** Runs dd and returns its exit status and stderr. */
function dd(args: string): { ok: boolean; err: string } {
  try {
    sh(`dd ${args} status=none 2>/tmp/dd.err`);
    return { ok: true, err: '' };
  } catch {
    return { ok: false, err: fs.readFileSync('/tmp/dd.err', 'utf8') };
  }
}

describe('fault --delay-us', () => {
  it('64 delayed requests wait side by side, not one after another', () => {
    const dev = cliJson<AddedDevice>('add', '--target', 'fault', '--over', 'null', '--size', '1G', '--delay-us', '50000', '--queues', '1');
    const out = sh(`fio --name=d --filename=${dev.blockDevice} --ioengine=io_uring --direct=1 --rw=randread --bs=4k --iodepth=64 ` +
      `--time_based --runtime=6 --ramp_time=1 --output-format=json`);
    const iops = fioJob(out).read.iops;
    console.log(`fault --delay-us 50000, QD64: ${iops.toFixed(0)} IOPS (serialised would be 20)`);
    expect(iops).toBeGreaterThanOrEqual((0.7 * 64) / 0.05);
  });
});

describe('fault --fail-range', () => {
  it('fails that range with EIO, serves the rest, and stays up', async () => {
    const img = path.join(scratch('fail-range'), 'disk.img');
    const dev = cliJson<AddedDevice>('add', '--target', 'fault', '--over', 'file', '--file', img, '--size', '16M',
      '--fail-range', '1M:64k', '--fail-range', '8M:4k:ENOSPC', '--queues', '1');
    expect(dev.info.faults).toBe('fail-range');
    const bad = dd(`if=${dev.blockDevice} of=/dev/null bs=64k skip=16 count=1 iflag=direct`);
    expect(bad.ok).toBe(false);
    expect(bad.err).toMatch(/Input\/output error/);
    // ENOSPC maps to its own block status: the writer sees "No space left on device".
    const full = dd(`if=/dev/zero of=${dev.blockDevice} bs=4k seek=2048 count=1 oflag=direct`);
    expect(full.ok).toBe(false);
    expect(full.err).toMatch(/No space left/);
    expect(dd(`if=${dev.blockDevice} of=/dev/null bs=64k count=16 iflag=direct`).ok).toBe(true);
    expect(dd(`if=/dev/urandom of=${dev.blockDevice} bs=64k seek=32 count=16 oflag=direct`).ok).toBe(true);
    expect(serverPids()).toContain(dev.pid);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    await nothingLeft();
  });
});

describe('fault --corrupt-range', () => {
  it('flips a byte in every sector of the range, on a per-request copy, and nothing else', () => {
    const dir = scratch('corrupt');
    const img = path.join(dir, 'disk.img');
    sh(`head -c 4M /dev/urandom > ${img}`);
    const dev = cliJson<AddedDevice>('add', '--target', 'fault', '--over', 'file', '--file', img, '--corrupt-range', '1M:8k', '--queues', '1');
    expect(dev.mode).toBe('auto-lease'); // the rest of the device stays on the lease
    sh(`dd if=${dev.blockDevice} of=${dir}/read.bin bs=1M count=4 iflag=direct status=none`);
    const want = fs.readFileSync(img);
    const got = fs.readFileSync(`${dir}/read.bin`);
    const differ: number[] = [];
    for (let i = 0; i < want.length; i++) if (want[i] !== got[i]) differ.push(i);
    expect(differ).toEqual(Array.from({ length: 16 }, (_, k) => (1 << 20) + k * 512));
  });
});

/** Across kill -9 + recover: every byte acknowledged before is read back through the new server. */
function readBackAfterKill(dev: AddedDevice): void {
  const p = `--output-format=json --name=p --filename=${dev.blockDevice} --rw=write --bs=64k --size=8M --offset=8M --direct=1 --ioengine=io_uring --verify=crc32c --verify_fatal=1 --verify_state_save=0`;
  expect(fioJob(sh(`fio ${p} --do_verify=0`)).error).toBe(0);
  process.kill(dev.pid, 'SIGKILL');
  const back = cliJson<AddedDevice>('recover', '-n', String(dev.id));
  expect(back.pid).not.toBe(dev.pid);
  const again = fioJob(sh(`fio ${p} --verify_only`));
  expect(again.error).toBe(0);
  expect(again.read.io_bytes).toBe(8 << 20);
}

describe('fault over a target with state of its own (the wrapper contract)', () => {
  // fio verify (crc32c) of 8 MiB outside the failing range, then a read inside it.
  const verifyThenHit = (dev: string) => {
    const job = fioJob(sh(`fio --output-format=json --name=v --filename=${dev} --rw=randwrite --bsrange=4k-64k --size=8M --iodepth=32 --ioengine=io_uring --direct=1 ${FIO_VERIFY}`));
    expect(job.error).toBe(0);
    expect(job.read.io_bytes).toBeGreaterThan(0); // verified
    const hit = dd(`if=${dev} of=/dev/null bs=4k count=1 skip=${(16 << 20) / 4096} iflag=direct`);
    expect(hit.ok).toBe(false);
    expect(hit.err).toMatch(/Input\/output error/);
  };

  it('--over mirror: verify passes beside a failing range, the legs stay in sync and identical', () => {
    const dir = scratch('fault-mirror');
    const [a, b] = [path.join(dir, 'a.img'), path.join(dir, 'b.img')];
    sh(`truncate -s 32M ${a} ${b}`);
    const dev = cliJson<AddedDevice>('add', '--target', 'fault', '--over', 'mirror', '--leg', a, '--leg', b, '--assume-clean', '--fail-range', '16M:1M', '--queues', '2');
    verifyThenHit(dev.blockDevice);
    const info = cliJson<{ id: number; info: Record<string, unknown> }[]>('list').find((d) => d.id === dev.id)!.info;
    expect(info.legs).toBe('in-sync,in-sync'); // an injected error is not a leg's
    expect(info.faults).toBe('fail-range');
    readBackAfterKill(dev);
    cliJson('del', '-n', String(dev.id));
    expect(sh(`cmp -n ${8 << 20} ${a} ${b} && echo same`).trim()).toBe('same');
  });

  it("--over nbd: the export's size, verify passes beside a failing range, kill -9 + recover", async () => {
    const dir = scratch('fault-nbd');
    const sock = path.join(dir, 'nbd.sock');
    const server = await nbdkit(sock, 'memory', '32M');
    try {
      const dev = cliJson<AddedDevice>('add', '--target', 'fault', '--over', 'nbd', '--socket', sock, '--fail-range', '16M:1M', '--queues', '2');
      expect(dev.size).toBe(32 << 20);
      verifyThenHit(dev.blockDevice);
      readBackAfterKill(dev);
      cliJson('del', '-n', String(dev.id));
    } finally {
      await stopServer(server);
    }
  });
});

describe('a backing store that fails', () => {
  it('a file target over a device-mapper error table: EIO to the reader, the server stays up, del is clean', async () => {
    // 8 MiB of a RAM disk (loop over tmpfs), then 8 MiB of dm's error target.
    const dir = scratch('dm-error');
    sh(`truncate -s 8M ${dir}/good.img`);
    const dm = dmDevice('ublk-ts-bad', `${dir}/good.img`, (loop) => `0 16384 linear ${loop} 0\\n16384 16384 error\\n`);
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', dm, '--queues', '1');
    expect(dd(`if=${dev.blockDevice} of=/dev/null bs=1M count=8 iflag=direct`).ok).toBe(true);
    const bad = dd(`if=${dev.blockDevice} of=/dev/null bs=1M skip=8 count=1 iflag=direct`);
    expect(bad.ok).toBe(false);
    expect(bad.err).toMatch(/Input\/output error/);
    expect(serverPids()).toContain(dev.pid);
    expect(dd(`if=${dev.blockDevice} of=/dev/null bs=4k count=4 iflag=direct`).ok).toBe(true);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    await nothingLeft();
  });
});

describe('teardown never strands a request', () => {
  it('del returns within 5 s while 64 requests are stalled; fio sees errors; nothing is left', async () => {
    const img = path.join(scratch('stall'), 'disk.img');
    const dev = cliJson<AddedDevice>('add', '--target', 'fault', '--over', 'file', '--file', img, '--size', '64M',
      '--stall-range', '1M:32M', '--queues', '1');
    noMerges(dev.id);
    // Not sector 0 nor the end: the kernel's partition scan reads those and would stall first.
    const fio = fioInBackground(['--name=stall', `--filename=${dev.blockDevice}`, '--ioengine=io_uring', '--direct=1',
      '--rw=randread', '--bs=4k', '--iodepth=64', '--offset=1M', '--size=32M', '--time_based', '--runtime=120']);
    await readsInFlight(dev.id, 64, 200);
    await deletePromptly(dev.id, fio, 'with 64 stalled requests');
    expect(fio.output()).toMatch(/error/i);
    await nothingLeft();
  });

  it('a failed queue stops the device by itself: --foreground exits, nothing hangs, nothing is left', async () => {
    const srv = inBackground(process.execPath, ['dist/ublk-ts.mjs', 'add', '--target', 'fault', '--over', 'null', '--size', '1G',
      '--fail-queue-after', '200', '--queues', '2', '--foreground']);
    for (let i = 0; i < 300 && !/\/dev\/ublkb\d+/.test(srv.output()); i++) await sleep(100);
    const blk = /\/dev\/ublkb\d+/.exec(srv.output())?.[0];
    expect(blk).toBeDefined();
    const fio = fioInBackground(['--name=q', `--filename=${blk}`, '--ioengine=io_uring', '--direct=1', '--rw=randread',
      '--bs=4k', '--iodepth=32', '--time_based', '--runtime=60']);
    const code = await hung(srv.exit, 30_000);
    expect(code).not.toBe('hung');
    expect(srv.output()).toMatch(/queue failure: .*fail-queue-after 200/);
    expect(await hung(fio.exit, 60_000)).not.toBe('hung');
    expect(cli('del', '--all').status).toBe(0);
    await nothingLeft();
  });
});
