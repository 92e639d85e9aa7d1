// Where running devices are recorded: one JSON file per device under /run/ublk-ts (tmpfs: gone at reboot,
// like the devices themselves). UBLK_TS_STATE_DIR overrides it.
import fs from 'node:fs';
import path from 'node:path';
import type { DataMode } from './native.js';

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
}

export function stateDir(): string {
  return process.env.UBLK_TS_STATE_DIR ?? '/run/ublk-ts';
}

function recordPath(id: number): string {
  return path.join(stateDir(), `ublkb${id}.json`);
}

export function writeRecord(r: DeviceRecord): void {
  fs.mkdirSync(stateDir(), { recursive: true });
  const tmp = `${recordPath(r.id)}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(r, null, 2));
  fs.renameSync(tmp, recordPath(r.id));
}

export function readRecord(id: number): DeviceRecord | undefined {
  try {
    return JSON.parse(fs.readFileSync(recordPath(id), 'utf8')) as DeviceRecord;
  } catch {
    return undefined;
  }
}

export function removeRecord(id: number): void {
  fs.rmSync(recordPath(id), { force: true });
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

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
