// add, del and list as the CLI and the public API see them.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { addon, projectRoot } from './native.js';
import { explain, isErrorKind, isKernelError, UserError } from './errors.js';
import type { Server, ServeOptions } from './server.js';
import type { DaemonOptions } from './daemon.js';
import { removeLink } from './dev-links.js';
import { processAlive, readRecord, readRecords, removeRecord, stateDir, type DeviceRecord } from './state.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Starts a background server for the device; resolves with its record once /dev/ublkbN serves IO. */
export async function addDevice(o: Omit<DaemonOptions, 'log'>, timeoutMs = 120_000): Promise<DeviceRecord> {
  fs.mkdirSync(stateDir(), { recursive: true });
  const log = path.join(stateDir(), `server-${Date.now()}-${process.pid}.log`);
  const out = fs.openSync(log, 'a');
  const child = spawn(process.execPath, [path.join(projectRoot, 'dist', 'ublk-ts-daemon.mjs'), JSON.stringify({ ...o, log })], {
    detached: true,
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
    fs.rmSync(log, { force: true });
    // The server says what kind of failure it was, so the exit status is the same as with --foreground.
    throw new UserError(msg.error ?? 'server failed', isErrorKind(msg.kind) ? msg.kind : 'other');
  }
  return msg.record;
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
  if (rec && processAlive(rec.pid)) {
    process.kill(rec.pid, 'SIGTERM');
    const end = Date.now() + timeoutMs;
    while (processAlive(rec.pid) && Date.now() < end) await sleep(50);
    if (processAlive(rec.pid)) process.kill(rec.pid, 'SIGKILL');
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

export const STATE_NAMES = ['dead', 'live', 'quiesced', 'fail-io'];

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
        state: STATE_NAMES[info.state] ?? String(info.state),
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
