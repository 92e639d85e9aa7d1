// Who starts a new server for a device now (`recover`, `upgrade`, `gc`): one process at a time. During an
// upgrade the device waits between its two servers exactly as after a crash; a `gc` or `recover` run then
// would race the upgrade to re-attach. The one that comes second finds the mark taken and leaves the
// device alone. The mark is an flock on ublkbN.takeover: the kernel drops it when its holder ends, however
// it ends, so a mark is never stale and no two processes can both decide it was.
import fs from 'node:fs';
import path from 'node:path';
import { addon } from './native.js';
import { stateDir } from './state.js';
import { UserError } from './errors.js';

const markPath = (id: number) => path.join(stateDir(), `ublkb${id}.takeover`);

const inode = (file: string): number | undefined => {
  try {
    return fs.statSync(file).ino;
  } catch {
    return undefined;
  }
};

/** The mark, open and locked by this process; undefined while another process holds it. */
function takeMark(file: string): number | undefined {
  for (;;) {
    // libuv opens with O_CLOEXEC: the servers this process starts do not inherit the lock.
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    let locked = false;
    try {
      locked = addon.flockTry(fd);
      // The file still at that path, not one its last holder removed as we opened it (then again).
      if (locked && fs.fstatSync(fd).ino === inode(file)) return fd;
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    fs.closeSync(fd);
    if (!locked) return undefined;
  }
}

/** Runs fn as the one process starting a server for device id; refuses in one line while another does. */
export async function asTakeover<T>(id: number, fn: () => Promise<T>): Promise<T> {
  const file = markPath(id);
  const fd = takeMark(file);
  if (fd === undefined) {
    let pid = 0;
    try {
      pid = Number(fs.readFileSync(file, 'utf8')); // written by its holder once it has the lock
    } catch {
      // removed meanwhile: its holder is done
    }
    throw new UserError(`ublkb${id}: ${pid > 0 ? `ublk-ts pid ${pid}` : 'another ublk-ts'} is starting a server for it now: left to it`, 'busy');
  }
  try {
    fs.ftruncateSync(fd);
    fs.writeSync(fd, `${process.pid}\n`, 0);
    return await fn();
  } finally {
    // Removed while still locked: one that opened it meanwhile finds it gone once it has the lock.
    fs.rmSync(file, { force: true });
    fs.closeSync(fd);
  }
}
