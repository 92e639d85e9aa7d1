// add, del and list as the CLI and the public API see them.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { addon, awaitsServer, DEV_STATE_NAMES, projectRoot } from './native.js';
import { explain, isErrorKind, isKernelError, UserError } from './errors.js';
import type { Server, ServeOptions } from './server.js';
import type { DaemonOptions } from './daemon.js';
import { removeLink } from './dev-links.js';
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
    if (added !== undefined) {
      const { removeFromKernel } = await import('./server.js');
      await removeFromKernel(added).catch(() => undefined);
    }
    throw e;
  });
  const msg = JSON.parse(line) as { ok: boolean; error?: string; kind?: unknown; record?: DeviceRecord };
  child.unref();
  (pipe as unknown as { destroy(): void }).destroy();
  if (!msg.ok || !msg.record) {
    if (o.recover === undefined) fs.rmSync(log, { force: true });
    // The server says what kind of failure it was, so the exit status is the same as with --foreground.
    throw new UserError(msg.error ?? 'server failed', isErrorKind(msg.kind) ? msg.kind : 'other');
  }
  return msg.record;
}

/** Starts a background server for a new device; resolves with its record once /dev/ublkbN serves IO. */
export function addDevice(o: Omit<DaemonOptions, 'log'>, timeoutMs?: number): Promise<DeviceRecord> {
  return spawnServer({ recovery: true, ...o, log: newLogPath() }, timeoutMs);
}

/**
 * `recover -n N`: a new background server re-attaches to device N, whose server died, with the options
 * `add` saved in its record (checked against what the kernel kept).
 */
export async function recoverDevice(id: number): Promise<DeviceRecord> {
  const rec = readRecord(id);
  if (!rec?.serve) throw new UserError(`device ${id} has no saved options (it was not added by ublk-ts add, or its record is gone)`, 'not-found');
  if (serverOf(rec) !== undefined) throw new UserError(`device ${id} is served by pid ${rec.pid}: nothing to recover`);
  // Said here, before a server starts: its data died with its server (so do a volatile target's, always).
  if (!rec.recovery)
    throw new UserError(`device ${id} was added without recovery (a target that keeps its data in its server, like memory, always is): \`ublk-ts del -n ${id}\` removes it`);
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

/**
 * Stops and deletes a device: asks its server to stop (SIGTERM) and waits for it; a device whose server is
 * gone is stopped and deleted here. Bounded: never waits forever on a stuck server.
 */
export async function deleteDevice(id: number, timeoutMs = 10_000): Promise<void> {
  const rec = readRecord(id);
  // Only processes proven ours are signalled, through a pidfd taken before the proof: a pid in a record
  // may since belong to someone else. The supervisor first, so that it does not restart the server it
  // sees end; each is waited for until it is gone (the server closes /dev/ublkcN before it deletes the
  // device).
  const ours = rec
    ? [
        rec.supervisor !== undefined ? ProcessHandle.prove(rec.supervisor, (p) => supervises(p, rec)) : undefined,
        ProcessHandle.prove(rec.pid, (p) => servesDevice(p, rec.id)),
      ].filter((h): h is ProcessHandle => h !== undefined)
    : [];
  try {
    ours.forEach((h) => h.signal('SIGTERM'));
    const end = Date.now() + timeoutMs;
    while (ours.some((h) => !h.exited()) && Date.now() < end) await sleep(50);
    ours.forEach((h) => h.signal('SIGKILL'));
  } finally {
    ours.forEach((h) => h.close());
  }
  removeRecord(id);
  // Its server removes the link as it ends; not one that was killed.
  if (rec?.name !== undefined) removeLink(rec.name, id);
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


export interface ListedDevice {
  id: number;
  state: string;
  queues: number;
  depth: number;
  size: number;
  pid: number;
  target?: string;
  mode?: string;
  blockDevice: string;
  /** Given by `up`: /dev/ublk-ts/NAME. */
  name?: string;
  info?: Record<string, string | number | boolean>;
}

export async function listDevices(): Promise<ListedDevice[]> {
  const ids = new Set([...kernelDeviceIds(), ...readRecords().map((r) => r.id)]);
  const out: ListedDevice[] = [];
  for (const id of [...ids].sort((a, b) => a - b)) {
    const rec = readRecord(id);
    try {
      const info = await addon.getDevInfo(id);
      const params = await addon.getParams(id).catch(() => undefined);
      out.push({
        id,
        state: DEV_STATE_NAMES[info.state] ?? String(info.state),
        queues: info.nrHwQueues,
        depth: info.queueDepth,
        size: params ? params.devSectors * 512 : 0,
        pid: info.ublksrvPid,
        target: rec?.target,
        mode: rec?.mode,
        blockDevice: `/dev/ublkb${id}`,
        name: rec?.name,
        info: rec?.info,
      });
    } catch (e) {
      if (isKernelError(e) && e.code === 'ENODEV') {
        removeRecord(id); // a record whose device is gone is stale
        continue;
      }
      throw explain(e);
    }
  }
  return out;
}
