// Where running devices are recorded: one JSON file per device under /run/ublk-ts (tmpfs: gone at reboot,
// like the devices themselves). UBLK_TS_STATE_DIR overrides it.
import fs from 'node:fs';
import path from 'node:path';
import type { DataMode, QueueStats } from './native.js';

export interface DeviceRecord {
  id: number;
  pid: number;
  target: string;
  mode: DataMode;
  queues: number;
  depth: number;
  size: number;
  blockDevice: string;
  charDevice: string;
  log: string;
  info: Record<string, string | number | boolean>;
  /** The name `up` gave it (its entry in the config file; /dev/ublk-ts/NAME). */
  name?: string;
}

/** The queues' counters as the server last published them, and when (ms since the epoch). */
export interface ServerCounters extends QueueStats {
  time: number;
  pid: number;
}

export function stateDir(): string {
  return process.env.UBLK_TS_STATE_DIR ?? '/run/ublk-ts';
}

function recordPath(id: number): string {
  return path.join(stateDir(), `ublkb${id}.json`);
}

function statsPath(id: number): string {
  return path.join(stateDir(), `ublkb${id}.stats.json`);
}

// Written whole then renamed: a reader in another process never sees half a file.
function writeJson(file: string, value: unknown, indent?: number): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(value, null, indent));
  fs.renameSync(tmp, file);
}

function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

export function writeRecord(r: DeviceRecord): void {
  writeJson(recordPath(r.id), r, 2);
}

export function readRecord(id: number): DeviceRecord | undefined {
  return readJson<DeviceRecord>(recordPath(id));
}

/** The record and the counters go together: a device without a server has neither. */
export function removeRecord(id: number): void {
  fs.rmSync(recordPath(id), { force: true });
  fs.rmSync(statsPath(id), { force: true });
}

export function writeStats(id: number, c: ServerCounters): void {
  writeJson(statsPath(id), c);
}

export function readStats(id: number): ServerCounters | undefined {
  return readJson<ServerCounters>(statsPath(id));
}

export function readRecords(): DeviceRecord[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(stateDir());
  } catch {
    return [];
  }
  return names
    .map((n) => /^ublkb(\d+)\.json$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => readRecord(Number(m[1])))
    .filter((r): r is DeviceRecord => r !== undefined);
}

/** The device `up` brought up under this name, if its record is still there (its server may be gone). */
export function recordByName(name: string): DeviceRecord | undefined {
  return readRecords().find((r) => r.name === name);
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
