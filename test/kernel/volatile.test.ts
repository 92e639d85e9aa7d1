// Targets whose data lives in their server process (memory, and a TypeScript module unless it says
// otherwise): a new server would find an empty disk, so such a device has no user recovery. After kill -9
// under a mounted ext4 its IO fails (never zeroes from an empty disk), `recover` refuses in one line, and
// `--restart` is refused up front.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cli, cliJson, delAll, failedInOneLine, MNT, nothingLeft, scratch, serverPids, sh, ublkDevices, waitFor, type AddedDevice } from './helpers.js';

afterEach(delAll);

/** The status of a command that timeout killed: it was still waiting. */
const KILLED = 137;

/** Exit status and stderr of a shell command that may fail (bounded: queued IO would hang it). */
function tryShell(cmd: string): { status: number; stderr: string } {
  try {
    sh(`timeout -s KILL 20 ${cmd}`);
    return { status: 0, stderr: '' };
  } catch (e) {
    const x = e as { status: number; stderr: string };
    return { status: x.status, stderr: x.stderr };
  }
}

describe('a volatile target', () => {
  it('memory: kill -9 under a mounted ext4 fails its IO, and recover refuses in one line', async () => {
    const dev = cliJson<AddedDevice>('add', '--target', 'memory', '--size', '64M', '--queues', '1');
    expect(dev.recovery).toBe(false);
    sh(`mkfs.ext4 -q ${dev.blockDevice} && mkdir -p ${MNT} && mount ${dev.blockDevice} ${MNT}`);
    sh(`head -c 1M /dev/urandom > ${MNT}/f && sync`);
    process.kill(dev.pid, 'SIGKILL');
    await waitFor('the disk to go', () => !fs.existsSync(`/sys/block/ublkb${dev.id}`), 30_000);
    // Neither the file (its pages dropped) nor a new one can be had: EIO, not zeroes and not a wait.
    sh('echo 3 > /proc/sys/vm/drop_caches');
    const read = tryShell(`cat ${MNT}/f > /dev/null`);
    expect(read.status, 'reading a file of the dead disk').not.toBe(0);
    expect(read.status, 'reading a file of the dead disk must fail, not wait').not.toBe(KILLED);
    expect(read.stderr).toMatch(/Input\/output error/);
    const write = tryShell(`sh -c 'echo x > ${MNT}/g && sync -f ${MNT}/g'`);
    expect(write.status, 'writing to the dead disk').not.toBe(0);
    expect(write.status, 'writing to the dead disk must fail, not wait').not.toBe(KILLED);

    expect(failedInOneLine(cli('recover', '-n', String(dev.id)))).toMatch(/without recovery/);
    expect(fs.existsSync(`/sys/block/ublkb${dev.id}`)).toBe(false);
    sh(`umount ${MNT} || umount -l ${MNT}`);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    await nothingLeft();
  }, 120_000);

  it('memory: add --restart is refused in one line and leaves no device', () => {
    expect(failedInOneLine(cli('add', '--target', 'memory', '--size', '16M', '--restart', '2'))).toMatch(/keeps its data in its server process/);
    expect(ublkDevices()).toEqual([]);
    expect(serverPids()).toEqual([]);
  });

  it('a target module is volatile unless it declares persistent: true', () => {
    const dir = scratch('volatile-module');
    const mod = (persistent: boolean) =>
      `export default { name: 'zeros', ${persistent ? 'persistent: true, ' : ''}open: () => ({ size: 1 << 20, read: (req) => void req.data.fill(0) }) };\n`;
    fs.writeFileSync(path.join(dir, 'volatile.mjs'), mod(false));
    fs.writeFileSync(path.join(dir, 'persistent.mjs'), mod(true));
    const a = cliJson<AddedDevice>('add', '--target', path.join(dir, 'volatile.mjs'), '--queues', '1');
    const b = cliJson<AddedDevice>('add', '--target', path.join(dir, 'persistent.mjs'), '--queues', '1');
    expect([a.recovery, b.recovery]).toEqual([false, true]);
  });
});
