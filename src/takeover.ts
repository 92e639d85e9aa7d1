// Who starts a new server for a device now (`recover`, `upgrade`, `gc`): one process at a time. During an
// upgrade the device waits between its two servers exactly as after a crash; a `gc` or `recover` run then
// would race the upgrade to re-attach. The one that comes second finds the mark and leaves the device alone.
import fs from 'node:fs';
import path from 'node:path';
import { stateDir } from './state.js';
import { UserError } from './errors.js';

const markPath = (id: number) => path.join(stateDir(), `ublkb${id}.takeover`);

/** The pid in a mark, if that process still runs ublk-ts (a pid taken since by another program is not). */
function holder(file: string): number | undefined {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(file, 'utf8'));
    return pid > 0 && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('ublk-ts') ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Runs fn as the one process starting a server for device id; refuses in one line while another does. */
export async function asTakeover<T>(id: number, fn: () => Promise<T>): Promise<T> {
  const file = markPath(id);
  for (;;) {
    try {
      fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = holder(file);
      if (pid !== undefined) throw new UserError(`ublkb${id}: ublk-ts pid ${pid} is starting a server for it now: left to it`, 'busy');
      // Left by a process that died: the next try takes it.
      fs.rmSync(file, { force: true });
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(file, { force: true });
  }
}
