// Where running devices are recorded: one JSON file per device under /run/ublk-ts (tmpfs: gone at reboot,
// like the devices themselves). UBLK_TS_STATE_DIR overrides it. A record names a process to signal and the
// options a recovery serves with, so only what we wrote ourselves is believed: the directory is ours and
// 0700, and a symlink or a file another user could have written is refused.
import fs from 'node:fs';
import path from 'node:path';
import type { DataMode, QueueStats } from './native.js';
import { UserError } from './errors.js';

/** What `add` was asked for, kept so that `recover` serves the device the same way. */
export interface SavedOptions {
  target: string;
  targetOptions: Record<string, unknown>;
  mode: DataMode;
  maxIoBytes?: number;
}

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
  /** Created with USER_RECOVERY: the device outlives its server, and `recover` re-attaches one. */
  recovery: boolean;
  serve: SavedOptions;
  /** The --restart supervisor's pid. */
  supervisor?: number;
  /** The flags ADD_DEV asked for, as hex (the kernel's answer is in GET_DEV_INFO): `features -n`. */
  flagsAsked?: string;
  /** The code the server runs (version.ts), as it was when the server started: `list`, `upgrade`. */
  version?: string;
}

/** The queues' counters as the server last published them, and when (ms since the epoch). */
export interface ServerCounters extends QueueStats {
  time: number;
  pid: number;
}

/** How a new server re-attaches to the device: as it was added, with what the kernel settled on. */
export function reattachOptions(rec: DeviceRecord) {
  return { ...rec.serve, queues: rec.queues, depth: rec.depth, recover: rec.id, name: rec.name, flagsAsked: rec.flagsAsked };
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

const { O_WRONLY, O_RDONLY, O_CREAT, O_EXCL, O_APPEND, O_NOFOLLOW } = fs.constants;
const OTHERS_WRITE = 0o022;

/** Why a file or directory cannot be trusted, or undefined if it is ours alone. */
function untrusted(st: fs.Stats, what: string): string | undefined {
  const uid = process.geteuid?.() ?? 0;
  if (st.uid !== uid) return `${what} belongs to uid ${st.uid}, not ${uid}`;
  if (st.mode & OTHERS_WRITE) return `${what} is writable by others (mode ${(st.mode & 0o777).toString(8)})`;
  return undefined;
}

/** Creates the state directory 0700, or checks that the one there is ours and a real directory. */
export function ensureStateDir(): string {
  const dir = stateDir();
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new UserError(`refusing state directory ${dir}: it is a symlink or not a directory`);
  const why = untrusted(st, `state directory ${dir}`);
  if (why) throw new UserError(`refusing ${why}`);
  return dir;
}

/** A new log file in the state directory, opened without following a symlink. */
export function openLog(file: string): number {
  ensureStateDir();
  try {
    return fs.openSync(file, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, 0o600);
  } catch (e) {
    throw new UserError(`cannot open log ${file}: ${(e as NodeJS.ErrnoException).code === 'ELOOP' ? 'it is a symlink' : (e as Error).message}`);
  }
}

// Written whole then renamed: a reader in another process never sees half a file. The temporary file is
// made new (O_EXCL, no symlink followed) so that nothing planted there is written through.
function writeJson(file: string, value: unknown, indent?: number): void {
  ensureStateDir();
  const tmp = `${file}.tmp`;
  fs.rmSync(tmp, { force: true });
  const fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  try {
    fs.writeSync(fd, JSON.stringify(value, null, indent));
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

/** The file's JSON, undefined if there is none; a symlink or a file others could have written is refused. */
function readJson<T>(file: string): T | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, O_RDONLY | O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw new UserError(`refusing ${file}: it is a symlink`);
    return undefined;
  }
  try {
    const st = fs.fstatSync(fd);
    const why = st.isFile() ? untrusted(st, file) : `${file} is not a regular file`;
    if (why) throw new UserError(`refusing ${why}`);
    return JSON.parse(fs.readFileSync(fd, 'utf8')) as T;
  } catch (e) {
    if (e instanceof UserError) throw e;
    return undefined; // half-written by a crash: as if absent
  } finally {
    fs.closeSync(fd);
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

/** Whether pid is a live process that holds /dev/ublkcN open: a server of ours, not one that reuses a dead server's pid. */
export function servesDevice(pid: number, id: number): boolean {
  const dir = `/proc/${pid}/fd`;
  try {
    return fs.readdirSync(dir).some((fd) => {
      try {
        return fs.readlinkSync(`${dir}/${fd}`) === `/dev/ublkc${id}`;
      } catch {
        return false; // closed meanwhile
      }
    });
  } catch {
    return false;
  }
}

/** Whether pid is the supervisor started for this record: its command line names the record's log. */
export function supervises(pid: number, rec: DeviceRecord): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(JSON.stringify(rec.log).slice(1, -1));
  } catch {
    return false;
  }
}

