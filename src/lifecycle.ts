// add, del and list as the CLI and the public API see them.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { addon, awaitsServer, DEV_STATE_NAMES, projectRoot } from './native.js';
import { errorKind, explain, isErrorKind, isKernelError, oneLine, UserError } from './errors.js';
import type { Server, ServeOptions } from './server.js';
import type { DaemonOptions } from './daemon.js';
import { removeLink } from './dev-links.js';
import { asTakeover } from './takeover.js';
import { waitingBeneath } from './device-uses.js';
import { ProcessHandle } from './process-handle.js';
import { ensureStateDir, openLog, reattachOptions, readRecord, readRecords, removeRecord, servesDevice, supervises, type DeviceRecord } from './state.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A new log file for a background server. */
export function newLogPath(): string {
  return path.join(ensureStateDir(), `server-${Date.now()}-${process.pid}.log`);
}

/**
 * Starts a background server (daemon.ts) and waits for its one-line report. If it gives up, the server
 * is killed, and a device it had just added (never one it was re-attaching) is deleted.
 */
export async function spawnServer(o: DaemonOptions, timeoutMs = 120_000): Promise<DeviceRecord> {
  const log = o.log;
  const out = openLog(log);
  const child = spawn(process.execPath, [path.join(projectRoot, 'dist', 'ublk-ts-daemon.mjs'), JSON.stringify(o)], {
    detached: true,
    // glibc mmaps every block of 64 KiB and up, so freeing one gives it back to the OS (a memory target's
    // chunk after a discard), where its heap would keep it; a fixed threshold also stops glibc raising it.
    env: { MALLOC_MMAP_THRESHOLD_: '65536', ...process.env },
    stdio: ['ignore', out, out, 'pipe'],
  });
  fs.closeSync(out);
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  let added: number | undefined;
  const line = await new Promise<string>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`server did not come up within ${timeoutMs / 1000}s (log: ${log})`)), timeoutMs);
    pipe.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const l = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const m = JSON.parse(l) as { added?: number };
        if (m.added !== undefined) {
          added = m.added;
          continue;
        }
        clearTimeout(timer);
        resolve(l);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code}) before reporting (log: ${log})`));
    });
  }).catch(async (e: unknown) => {
    // Giving up: the server must not live on, nor leave the device it made.
    child.kill('SIGKILL');
    await exited(child);
    if (added !== undefined) {
      const { removeFromKernel } = await import('./server.js');
      await removeFromKernel(added).catch(() => undefined);
    }
    throw e;
  });
  const msg = JSON.parse(line) as { ok: boolean; error?: string; kind?: unknown; record?: DeviceRecord };
  (pipe as unknown as { destroy(): void }).destroy();
  if (!msg.ok || !msg.record) {
    await exited(child);
    if (o.recover === undefined) fs.rmSync(log, { force: true });
    // The server says what kind of failure it was, so the exit status is the same as with --foreground.
    throw new UserError(msg.error ?? 'server failed', isErrorKind(msg.kind) ? msg.kind : 'other');
  }
  child.unref();
  return msg.record;
}

/** A refused server exits by itself once it has reported; a failed start returns only when it has gone. */
function exited(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Starts a background server for a new device; resolves with its record once /dev/ublkbN serves IO. */
export function addDevice(o: Omit<DaemonOptions, 'log'>, timeoutMs?: number): Promise<DeviceRecord> {
  return spawnServer({ recovery: true, ...o, log: newLogPath() }, timeoutMs);
}

/** `add --count`: servers started at once (each spends most of its start waiting for node and the kernel). */
const ADD_AT_ONCE = 4;

/**
 * `add --count N`: N devices alike, each with its own server. All or none: if one fails, those already
 * made are deleted and its error is thrown.
 */
export async function addDevices(o: Omit<DaemonOptions, 'log'>, count: number): Promise<DeviceRecord[]> {
  const made: DeviceRecord[] = [];
  let started = 0;
  let failure: unknown;
  const worker = async () => {
    while (failure === undefined && started < count) {
      started++;
      await addDevice(o).then(
        (r) => made.push(r),
        (e: unknown) => (failure ??= e),
      );
    }
  };
  await Promise.all(Array.from({ length: Math.min(ADD_AT_ONCE, count) }, worker));
  if (failure === undefined) return made.sort((a, b) => a.id - b.id);
  for (const r of made) await deleteDevice(r.id).catch(() => undefined);
  throw new UserError(`adding ${count} devices: ${oneLine(failure)} (the ${made.length} already made were deleted)`, errorKind(failure));
}

/**
 * `recover -n N`: a new background server re-attaches to device N, whose server died, with the options
 * `add` saved in its record (checked against what the kernel kept).
 */
export function recoverDevice(id: number): Promise<DeviceRecord> {
  return asTakeover(id, async () => {
    const rec = readRecord(id);
    if (!rec?.serve) throw new UserError(`device ${id} has no saved options (it was not added by ublk-ts add, or its record is gone)`, 'not-found');
    if (serverOf(rec) !== undefined) throw new UserError(`device ${id} is served by pid ${rec.pid}: nothing to recover`);
    // Said here, before a server starts: its data died with its server (so do a volatile target's, always).
    if (!rec.recovery)
      throw new UserError(`device ${id} was added without recovery (a target that keeps its data in its server, like memory, always is): \`ublk-ts del -n ${id}\` removes it`);
    const beneath = await waitingBeneath(rec.serve.targetOptions);
    if (beneath) throw new UserError(`device ${id} is over ${beneath}, which waits for a server of its own: recover that one first`, 'backend');
    return nextServer(rec);
  });
}

/** A new server for the device of this record, started from the code installed now with its saved options. */
export function nextServer(rec: DeviceRecord): Promise<DeviceRecord> {
  return spawnServer({ ...reattachOptions(rec), log: newLogPath() });
}

/** The record's server pid if that process really serves the device (holds /dev/ublkcN open). */
function serverOf(rec: DeviceRecord): number | undefined {
  return servesDevice(rec.pid, rec.id) ? rec.pid : undefined;
}

/**
 * What the kernel holds under the id of a record whose server is gone: nothing; the record's device,
 * waiting for a new server (recoverable) or not; or another device that took the id since (foreign:
 * never ours to touch). The record's device is proven by its shape: owner, data mode, recovery, queues,
 * depth and size all as the record says, and no live server of another process.
 */
export async function heldUnder(rec: DeviceRecord): Promise<'none' | 'recoverable' | 'ours' | 'foreign'> {
  let info;
  try {
    info = await addon.getDevInfo(rec.id);
  } catch (e) {
    if (isKernelError(e) && e.code === 'ENODEV') return 'none';
    throw explain(e);
  }
  const { modeFlags } = await import('./features.js');
  const F = addon.abi.flags;
  const params = await addon.getParams(rec.id).catch(() => undefined);
  const want = modeFlags(rec.mode) | (rec.recovery ? F.USER_RECOVERY : 0n);
  const same =
    info.ownerUid === (process.getuid?.() ?? 0) &&
    (info.flags & (want | F.USER_RECOVERY)) === want &&
    info.nrHwQueues === rec.queues &&
    info.queueDepth === rec.depth &&
    params?.devSectors === Math.floor(rec.size / 512) &&
    !(info.ublksrvPid > 0 && info.ublksrvPid !== rec.pid && servesDevice(info.ublksrvPid, rec.id));
  if (!same) return 'foreign';
  return rec.recovery && awaitsServer(info.state) ? 'recoverable' : 'ours';
}

/**
 * Whose device N is and whether its server runs, as `list` marks it: live (our record's server holds
 * /dev/ublkcN), quiesced (ours, waiting for a new server: QUIESCED or FAIL_IO), dead (ours, no server),
 * foreign (no record of ours, or the id was taken by another device since). 'gone': no such device.
 */
export type ServerState = 'live' | 'dead' | 'quiesced' | 'foreign';

export async function serverState(id: number, rec: DeviceRecord | undefined): Promise<ServerState | 'gone'> {
  if (rec === undefined) return 'foreign';
  if (serverOf(rec) !== undefined) return 'live';
  const held = await heldUnder(rec);
  return held === 'none' ? 'gone' : held === 'recoverable' ? 'quiesced' : held === 'ours' ? 'dead' : 'foreign';
}

/** Runs the server in this process (add --foreground). */
export async function startForeground(o: ServeOptions): Promise<Server> {
  const { Server } = await import('./server.js');
  return Server.start(o);
}

/** Ids of every ublk device the kernel knows, from sysfs. */
export function kernelDeviceIds(): number[] {
  try {
    return fs
      .readdirSync('/sys/class/ublk-char')
      .map((n) => /^ublkc(\d+)$/.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
  } catch {
    return [];
  }
}

/** A device someone still uses is left up; the line says how to take it down anyway. */
function inUse(id: number, why: string): UserError {
  return new UserError(`/dev/ublkb${id} is in use (${why}): left up (\`ublk-ts del --force -n ${id}\` stops it anyway)`, 'busy');
}

/**
 * What holds /dev/ublkbN or one of its partitions, for a kernel without TRY_STOP_DEV: a mount or another
 * device (they claim it: an exclusive open fails), or a process with it open. Undefined when nothing does.
 * Racy (something may open it just after), which is why the kernel's check is used wherever it exists.
 */
export function openBy(id: number): string | undefined {
  const disk = `/dev/ublkb${id}`;
  try {
    fs.closeSync(fs.openSync(disk, fs.constants.O_RDONLY | fs.constants.O_EXCL));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EBUSY') return 'mounted, or claimed by another device';
    if (code === 'ENOENT' || code === 'ENXIO') return undefined; // no disk: nothing can hold it
    throw e;
  }
  const ours = new RegExp(`^${disk}(p\\d+)?$`);
  for (const pid of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    let fds: string[];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours to look into
    }
    for (const fd of fds) {
      try {
        if (ours.test(fs.readlinkSync(`/proc/${pid}/fd/${fd}`))) return `open by pid ${pid}`;
      } catch {
        // closed meanwhile
      }
    }
  }
  return undefined;
}

/** Transient openers (a partition scan, udev's probe right after `add`) get this long to let go. */
const BUSY_RETRIES = 5;

/**
 * The safe stop: the kernel stops the disk only if nobody holds /dev/ublkbN open, checked and stopped in
 * one step (TRY_STOP_DEV); the server then sees its device stopped and ends as after STOP_DEV. A kernel
 * without it gets the open check above. Throws a 'busy' UserError, having changed nothing, if it is in use.
 */
async function stopIfUnused(id: number): Promise<void> {
  const { getFeatures } = await import('./features.js');
  if ((await getFeatures() & addon.abi.flags.SAFE_STOP_DEV) === 0n) {
    const why = openBy(id);
    if (why !== undefined) throw inUse(id, why);
    return;
  }
  for (let tries = 1; ; tries++) {
    try {
      await addon.tryStopDev(id);
      return;
    } catch (e) {
      // No disk (never started, already stopped, or no such device): nothing can hold it open.
      if (isKernelError(e) && e.code === 'ENODEV') return;
      if (!(isKernelError(e) && e.code === 'EBUSY')) throw explain(e);
      if (tries >= BUSY_RETRIES) throw inUse(id, 'mounted, or open by a process or another device');
      await sleep(100);
    }
  }
}

/**
 * Stops and deletes a device: asks its server to stop (SIGTERM) and waits for it; a device whose server is
 * gone is stopped and deleted here. Bounded: never waits forever on a stuck server. `safe`: a device that
 * is mounted or open is left as it is (a 'busy' UserError); otherwise it is stopped whoever uses it.
 */
export async function deleteDevice(id: number, { safe = false, timeoutMs = 10_000 } = {}): Promise<void> {
  const rec = readRecord(id);
  // Only processes proven ours are signalled, through a pidfd taken before the proof: a pid in a record
  // may since belong to someone else. The supervisor first, so that it does not restart the server it
  // sees end; each is waited for until it is gone (the server closes /dev/ublkcN before it deletes the
  // device).
  const server = rec ? ProcessHandle.prove(rec.pid, (p) => servesDevice(p, rec.id)) : undefined;
  const ours = [rec?.supervisor !== undefined ? ProcessHandle.prove(rec.supervisor, (p) => supervises(p, rec)) : undefined, server].filter(
    (h): h is ProcessHandle => h !== undefined,
  );
  let serverEnded = false;
  try {
    // After the proof: a server that ends by itself once the kernel has stopped its device (and so no
    // longer holds /dev/ublkcN) is still waited for.
    if (safe) await stopIfUnused(id);
    ours.forEach((h) => h.signal('SIGTERM'));
    const end = Date.now() + timeoutMs;
    while (ours.some((h) => !h.exited()) && Date.now() < end) await sleep(50);
    serverEnded = server?.exited() === true;
    ours.forEach((h) => h.signal('SIGKILL'));
  } finally {
    ours.forEach((h) => h.close());
  }
  removeRecord(id);
  // Its server removes the link as it ends; not one that was killed.
  if (rec?.name !== undefined) removeLink(rec.name, id);
  // A server that ended when asked deleted its device, which frees the id: by now another `add` may have
  // it (churn), and that device is not this one to delete. (One that died on the way leaves an orphan for `gc`.)
  if (serverEnded) return;
  if (rec && !fs.existsSync(`/sys/class/ublk-char/ublkc${id}`)) return; // its server deleted it
  try {
    await addon.getDevInfo(id);
  } catch (e) {
    if (!(isKernelError(e) && e.code === 'ENODEV')) throw explain(e);
    if (rec) return; // its server deleted it
    throw new UserError(`-n ${id}: no such ublk device (\`ublk-ts list\` shows them)`, 'not-found');
  }
  // No server (crashed, or killed above): the kernel keeps the id until someone deletes it.
  const { removeFromKernel } = await import('./server.js');
  await removeFromKernel(id).catch((e: unknown) => {
    throw explain(e);
  });
}

/** `features -n N`: the flags ADD_DEV asked for (from the record, so unknown for another tool's device) and those the kernel granted. */
export interface DeviceFeatures {
  id: number;
  asked?: bigint;
  askedFlags?: string[];
  got: bigint;
  gotFlags: string[];
}

export async function deviceFeatures(id: number): Promise<DeviceFeatures> {
  let info;
  try {
    info = await addon.getDevInfo(id);
  } catch (e) {
    if (isKernelError(e) && e.code === 'ENODEV') throw new UserError(`-n ${id}: no such ublk device (\`ublk-ts list\` shows them)`, 'not-found');
    throw explain(e);
  }
  const { flagNames } = await import('./features.js');
  const rec = readRecord(id);
  // A record is believed only for the device it was written for (the id may have been taken since).
  const ours = rec !== undefined && (servesDevice(rec.pid, id) || (await heldUnder(rec)) !== 'foreign');
  const asked = ours && rec.flagsAsked !== undefined ? BigInt(rec.flagsAsked) : undefined;
  return { id, asked, askedFlags: asked === undefined ? undefined : flagNames(asked), got: info.flags, gotFlags: flagNames(info.flags) };
}

export interface ListedDevice {
  id: number;
  state: string;
  queues: number;
  depth: number;
  size: number;
  pid: number;
  /** Whether its server runs (serverState): a device without a live one is an orphan, for `gc`. */
  server: ServerState;
  target?: string;
  mode?: string;
  blockDevice: string;
  /** Given by `up`: /dev/ublk-ts/NAME. */
  name?: string;
  info?: Record<string, string | number | boolean>;
  /** The code its server runs (version.ts), as the server recorded it. */
  version?: string;
}

export async function listDevices(): Promise<ListedDevice[]> {
  const ids = new Set([...kernelDeviceIds(), ...readRecords().map((r) => r.id)]);
  const out: ListedDevice[] = [];
  for (const id of [...ids].sort((a, b) => a - b)) {
    const found = readRecord(id);
    try {
      const info = await addon.getDevInfo(id);
      const params = await addon.getParams(id).catch(() => undefined);
      const server = await serverState(id, found);
      if (server === 'gone') continue; // deleted since getDevInfo: as below
      // A record of another device that had this id says nothing about this one.
      const rec = server === 'foreign' ? undefined : found;
      out.push({
        id,
        state: DEV_STATE_NAMES[info.state] ?? String(info.state),
        queues: info.nrHwQueues,
        depth: info.queueDepth,
        size: params ? params.devSectors * 512 : 0,
        pid: info.ublksrvPid,
        server,
        target: rec?.target,
        mode: rec?.mode,
        blockDevice: `/dev/ublkb${id}`,
        name: rec?.name,
        info: rec?.info,
        version: rec?.version,
      });
    } catch (e) {
      // A record whose device is gone is stale: `gc` removes it (and says so); list only looks.
      if (isKernelError(e) && e.code === 'ENODEV') continue;
      throw explain(e);
    }
  }
  return out;
}
