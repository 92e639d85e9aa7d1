// What a new server must prove before it takes over a device whose server died, on the real driver: a
// backing that changed shape, or an NBD export restarted with weaker promises (no FUA, no write-zeroes,
// read only), is refused in one line before any tag is fetched, so a request that waited is never served by
// it; `up` recovers a device that waits for a server instead of deleting it, and never touches a device
// that is not its record's.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { alive, cli, cliJson, delAll, failedInOneLine, listed, listEntry, nbdkit, scratch, sh, sleep, stateOf, stopServer, waitFor, type AddedDevice } from './helpers.js';

afterEach(() => {
  delAll();
  fs.rmSync('/dev/ublk-ts', { recursive: true, force: true });
});

async function killServer(dev: Pick<AddedDevice, 'id' | 'pid'>): Promise<void> {
  process.kill(dev.pid, 'SIGKILL');
  await waitFor('the server to end', () => !alive(dev.pid), 20_000);
  await waitFor('the device to wait for a server', () => stateOf(dev.id) === 'quiesced', 20_000);
}

/** A 4k direct read of /dev/ublkbN at offset 0 in the background: its exit status, once it ends. */
function pendingRead(dev: AddedDevice) {
  const dd = spawn('dd', [`if=${dev.blockDevice}`, 'of=/dev/null', 'bs=4k', 'count=1', 'iflag=direct'], { stdio: 'ignore' });
  onTestFinished(() => {
    dd.kill('SIGKILL');
  });
  let code: number | null | undefined;
  dd.on('exit', (c) => (code = c));
  return { ended: () => code !== undefined, code: () => code };
}

function refused(id: number, why: RegExp): void {
  expect(failedInOneLine(cli('recover', '-n', String(id)))).toMatch(why);
}

describe('recover checks the backend before it fetches', () => {
  it('a backing file that shrank is refused, one that grew is taken at the device size, and a read that waited is served only by the next good server', async () => {
    const img = path.join(scratch('reattach-size'), 'disk.img');
    fs.writeFileSync(img, '');
    fs.truncateSync(img, 8 << 20);
    const dev = cliJson<AddedDevice>('add', '--target', 'file', '--file', img, '--queues', '1', '--depth', '4');
    sh(`dd if=/dev/urandom of=${dev.blockDevice} bs=1M count=1 oflag=direct status=none`);
    await killServer(dev);
    const read = pendingRead(dev);
    fs.truncateSync(img, 4 << 20);
    refused(dev.id, /has 16384 sectors but its target now has only 8192: not re-attaching/);
    await sleep(1500);
    expect(read.ended()).toBe(false); // no server took it
    expect(stateOf(dev.id)).toBe('quiesced');
    // Grown (a resize whose UPDATE_SIZE never came): the device goes on at its own size.
    fs.truncateSync(img, 16 << 20);
    const back = cliJson<AddedDevice>('recover', '-n', String(dev.id));
    expect(back.id).toBe(dev.id);
    expect(back.size).toBe(8 << 20);
    expect(fs.readFileSync(`/sys/block/ublkb${dev.id}/size`, 'utf8').trim()).toBe('16384');
    await waitFor('the waiting read', read.ended, 20_000);
    expect(read.code()).toBe(0);
  });

  it('an NBD export restarted without FUA, without write-zeroes, or read-only is refused; the same export again is taken', async () => {
    const dir = scratch('reattach-nbd');
    const sock = path.join(dir, 'nbd.sock');
    const disk = path.join(dir, 'export.img');
    fs.writeFileSync(disk, '');
    fs.truncateSync(disk, 64 << 20);
    // The file plugin takes FLUSH, FUA, TRIM and WRITE_ZEROES; the data outlives each nbdkit.
    let srv = await nbdkit(sock, 'file', disk);
    const dev = cliJson<AddedDevice>('add', '--target', 'nbd', '--socket', sock, '--queues', '1');
    const attrs = (n: string) => fs.readFileSync(`/sys/block/ublkb${dev.id}/queue/${n}`, 'utf8').trim();
    expect(attrs('write_cache')).toBe('write back');
    expect(attrs('fua')).toBe('1');
    expect(Number(attrs('discard_max_bytes'))).toBeGreaterThan(0);
    sh(`dd if=/dev/urandom of=${dir}/p bs=64k count=1 status=none && dd if=${dir}/p of=${dev.blockDevice} bs=64k oflag=direct,sync status=none`);
    await killServer(dev);
    for (const [args, why] of [
      // The fua filter's default mode (none) offers no FUA.
      [['--filter=fua', 'file', disk], /made with FUA writes its target now lacks/],
      // The nozero filter's default mode (none) offers no WRITE_ZEROES.
      [['--filter=nozero', 'file', disk], /takes write-zeroes its target no longer does/],
      [['-r', 'file', disk], /is writable but its target is now read-only/],
    ] as const) {
      await stopServer(srv);
      srv = await nbdkit(sock, ...args);
      refused(dev.id, why);
      expect(stateOf(dev.id)).toBe('quiesced');
    }
    await stopServer(srv);
    srv = await nbdkit(sock, 'file', disk);
    cliJson<AddedDevice>('recover', '-n', String(dev.id));
    expect(sh(`dd if=${dev.blockDevice} bs=64k count=1 iflag=direct status=none | cmp - ${dir}/p && echo same`).trim()).toBe('same');
  });
});

describe('up with a record whose server is gone', () => {
  /** A config file naming one file device, vol, on a new 16 MiB backing file; both in dir. */
  function config(dir: string): string {
    const img = path.join(dir, 'vol.img');
    fs.writeFileSync(img, '');
    fs.truncateSync(img, 16 << 20);
    const file = path.join(dir, 'devices.json');
    fs.writeFileSync(file, JSON.stringify({ devices: { vol: { target: 'file', file: img, queues: 1 } } }));
    return file;
  }

  it('recovers the device that waits for a server (same id, the data it held) instead of deleting it', async () => {
    const dir = scratch('up-recover');
    const file = config(dir);
    const [first] = cliJson<{ devices: { id: number; state: string }[] }>('up', 'vol', '--config', file).devices;
    expect(first.state).toBe('up');
    const dev = listed(first.id);
    // The writes wait in the server's page cache until a flush: the device keeps what it acknowledged.
    sh(`dd if=/dev/urandom of=${dir}/p bs=64k count=1 status=none && dd if=${dir}/p of=${dev.blockDevice} bs=64k oflag=direct status=none`);
    await killServer(dev);
    const [again] = cliJson<{ devices: { id: number; state: string }[] }>('up', 'vol', '--config', file).devices;
    expect(again).toMatchObject({ state: 'recovered', id: dev.id });
    expect(sh(`dd if=${dev.blockDevice} bs=64k count=1 iflag=direct status=none | cmp - ${dir}/p && echo same`).trim()).toBe('same');
  });

  it('never deletes a device that took the record\'s id since: it adds a new one beside it', async () => {
    const dir = scratch('up-foreign');
    const file = config(dir);
    const [first] = cliJson<{ devices: { id: number }[] }>('up', 'vol', '--config', file).devices;
    const recPath = path.join(process.env.UBLK_TS_STATE_DIR ?? '/run/ublk-ts', `ublkb${first.id}.json`);
    const rec = fs.readFileSync(recPath, 'utf8');
    // The device and its server go (a crash, then someone deletes it); another device takes the id.
    const dev = listed(first.id);
    process.kill(dev.pid, 'SIGKILL');
    await waitFor('the server to end', () => !alive(dev.pid), 20_000);
    expect(cli('del', '-n', String(first.id)).status).toBe(0);
    const other = cliJson<AddedDevice>('add', '--target', 'null', '--size', '1G', '-n', String(first.id), '--queues', '2');
    expect(other.id).toBe(first.id);
    // The stale record, as a crash would have left it (the new device's own record was never written
    // by ublk-ts, as with a device another tool made).
    fs.writeFileSync(recPath, rec, { mode: 0o600 });
    const [again] = cliJson<{ devices: { id: number; state: string }[] }>('up', 'vol', '--config', file).devices;
    expect(again.state).toBe('up');
    expect(again.id).not.toBe(first.id);
    expect(alive(other.pid)).toBe(true);
    expect(listEntry(first.id)).toMatchObject({ queues: 2, size: 1 << 30 });
  });
});
