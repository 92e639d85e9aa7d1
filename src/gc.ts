// `gc`: the clean-up after a crash. Every device of ours whose server is gone is recovered if it can be
// (it was made with recovery, which a target that survives its server gets, and the kernel holds it for a
// new server), else deleted with its record; a record whose device is gone is removed. A device without a
// record of ours (another tool's) and a device whose server runs are never touched.
import fs from 'node:fs';
import { addon, DEV_STATE } from './native.js';
import { controlPath } from './control.js';
import { removeLink } from './dev-links.js';
import { errorKind, isKernelError, oneLine, type ErrorKind } from './errors.js';
import { deleteDevice, kernelDeviceIds, recoverDevice, serverState, type ServerState } from './lifecycle.js';
import { inUseOrder } from './device-uses.js';
import { readRecord, readRecords, removeRecord, servesDevice, supervises, type DeviceRecord } from './state.js';

export interface GcOutcome {
  id: number;
  blockDevice: string;
  /** As `list` marks it; 'gone': a record whose device is no more. */
  server: ServerState | 'gone';
  /** What gc did (with --dry-run: would do). */
  action: 'left' | 'recovered' | 'deleted' | 'removed-record' | 'failed';
  /** The server's pid: the live one left alone, or the new one of a recovered device. */
  pid?: number;
  /** Why it was left, or why the action failed. */
  why?: string;
  /** With 'failed': the error's kind (its exit status). */
  code?: ErrorKind;
}

/** A server killed with its device still LIVE: the kernel's release work moves it on within moments. */
const SETTLE_MS = 10_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The kernel state of device id, undefined if it is gone. */
async function kernelState(id: number): Promise<number | undefined> {
  try {
    return (await addon.getDevInfo(id)).state;
  } catch (e) {
    if (isKernelError(e) && e.code === 'ENODEV') return undefined;
    throw e;
  }
}

/** The pid the kernel names as device id's server, if that process holds its /dev/ublkcN. */
async function kernelServer(id: number): Promise<number | undefined> {
  const pid = await addon.getDevInfo(id).then(
    (info) => info.ublksrvPid,
    () => 0,
  );
  return pid > 0 && servesDevice(pid, id) ? pid : undefined;
}

/**
 * A device made with recovery whose server has just died is LIVE until the kernel has released the
 * server's /dev/ublkcN: waits (bounded) for it to become QUIESCED/FAIL_IO (or DEAD, if it was stopped),
 * so that a recoverable device is never taken for a dead one.
 */
async function settle(id: number): Promise<void> {
  for (const end = Date.now() + SETTLE_MS; Date.now() < end && (await kernelState(id)) === DEV_STATE.LIVE; ) await sleep(100);
}

/** The files a server leaves in the state directory and /dev/ublk-ts when it is killed. */
function removeLeftovers(rec: DeviceRecord): void {
  removeRecord(rec.id);
  fs.rmSync(controlPath(rec.id), { force: true });
  if (rec.name !== undefined) removeLink(rec.name, rec.id);
}

async function collect(id: number, dryRun: boolean): Promise<GcOutcome> {
  const rec = readRecord(id);
  let server = await serverState(id, rec);
  const out = (o: Omit<GcOutcome, 'id' | 'blockDevice' | 'server'>): GcOutcome => ({ id, blockDevice: `/dev/ublkb${id}`, server, ...o });
  if (rec === undefined) return out({ action: 'left', why: "no record of ublk-ts: another tool's device" });
  if (server !== 'live' && rec.supervisor !== undefined && supervises(rec.supervisor, rec))
    return out({ action: 'left', why: `its --restart supervisor (pid ${rec.supervisor}) starts a new server` });
  if (server === 'dead' && rec.recovery) {
    await settle(id);
    server = await serverState(id, rec);
    if (server === 'dead' && (await kernelState(id)) === DEV_STATE.LIVE)
      return out({ action: 'left', why: 'the kernel still counts it live without a server: run gc again' });
  }
  if (server === 'live') return out({ action: 'left', pid: rec.pid, why: 'its server runs' });
  // Served, but not by the record's server: one taking it over (`recover`, `upgrade`) whose record is not
  // written yet, or another device under the id. Neither is gc's to touch, nor is the record yet.
  const servedBy = server === 'foreign' ? await kernelServer(id) : undefined;
  if (servedBy !== undefined) return out({ action: 'left', pid: servedBy, why: "served by a process that is not its record's server" });
  if (server === 'foreign' || server === 'gone') {
    // The record alone is ours: its device is gone, or another device has taken the id since.
    if (!dryRun) removeLeftovers(rec);
    return out({ action: 'removed-record', why: server === 'gone' ? 'no such device' : 'the id is now another device, left alone' });
  }
  try {
    if (server === 'quiesced') {
      if (dryRun) return out({ action: 'recovered' });
      const back = await recoverDevice(id);
      return out({ action: 'recovered', pid: back.pid });
    }
    if (dryRun) return out({ action: 'deleted' });
    // Safe: a device someone still holds open is left (its server is gone either way).
    await deleteDevice(id, { safe: true });
    removeLeftovers(rec);
    return out({ action: 'deleted' });
  } catch (e) {
    // Busy: still open (a safe delete), or another ublk-ts starts its server now (an upgrade).
    if (errorKind(e) === 'busy') return out({ action: 'left', why: oneLine(e) });
    return out({ action: 'failed', why: oneLine(e), code: errorKind(e) });
  }
}

/** Goes through every ublk device and every record, in id order but a device over another after it; `report` hears each outcome as it is known. */
export async function gc(dryRun: boolean, report: (o: GcOutcome) => void): Promise<GcOutcome[]> {
  const recs = readRecords().sort((a, b) => a.id - b.id);
  const ids = [...new Set([...kernelDeviceIds(), ...recs.map((r) => r.id)])].sort((a, b) => a - b);
  // A device over another is recovered after it: its new server reads the one beneath as it starts, which
  // waits for a server of its own until then. The records' ids take their places among the ids in that order.
  const order = inUseOrder(recs, 'beneath');
  let next = 0;
  const outcomes: GcOutcome[] = [];
  for (const id of ids.map((i) => (recs.some((r) => r.id === i) ? order[next++].id : i))) {
    const o = await collect(id, dryRun);
    report(o);
    outcomes.push(o);
  }
  return outcomes;
}
