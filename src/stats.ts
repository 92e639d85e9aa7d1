// What a device is doing, for `ublk-ts stats`: the block layer's counters (/sys/block/ublkbN/stat and
// inflight), sampled twice for rates, beside the counters its server's queues keep (published each second
// into the state folder: Server.publishStats).
import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import { readRecord, readStats, type DeviceRecord, type ServerCounters } from './state.js';
import type { QueueStats } from './native.js';

/** The fields of /sys/block/<disk>/stat used here, by position (Documentation/block/stat.rst). */
const FIELDS = { readIos: 0, readSectors: 2, writeIos: 4, writeSectors: 6, discardIos: 11, discardSectors: 13, flushIos: 15 } as const;
export type BlockStat = Record<keyof typeof FIELDS, number>;

export function parseBlockStat(text: string): BlockStat {
  const f = text.trim().split(/\s+/).map(Number);
  // Older kernels end before the discard and flush fields: none of those, then.
  return Object.fromEntries(Object.entries(FIELDS).map(([k, i]) => [k, f[i] ?? 0])) as BlockStat;
}

export interface Sample {
  id: number;
  /** ms since the epoch, and on the monotonic clock (for the interval). */
  time: number;
  mono: number;
  block: BlockStat;
  inFlight: { read: number; write: number };
  server?: ServerCounters;
}

/** Ids of the ublk disks the block layer has now. */
export function blockDeviceIds(): number[] {
  try {
    return fs
      .readdirSync('/sys/block')
      .map((n) => /^ublkb(\d+)$/.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
  } catch {
    return [];
  }
}

/** Undefined once the disk is gone. */
export function sample(id: number): Sample | undefined {
  try {
    const dir = `/sys/block/ublkb${id}`;
    const block = parseBlockStat(fs.readFileSync(`${dir}/stat`, 'utf8'));
    const [read = 0, write = 0] = fs.readFileSync(`${dir}/inflight`, 'utf8').trim().split(/\s+/).map(Number);
    return { id, time: Date.now(), mono: performance.now(), block, inFlight: { read, write }, server: readStats(id) };
  } catch {
    return undefined;
  }
}

export interface Direction {
  /** Over the window. */
  iops: number;
  bytesPerSecond: number;
  /** Since the disk appeared. */
  ios: number;
  bytes: number;
}

export interface ServerStats extends QueueStats {
  pid: number;
  /** Requests the queues committed per second, between the server's last two publications in the window. */
  requestsPerSecond: number | null;
  /** Seconds since the server last published its counters (it does so every second while serving). */
  age: number;
}

export interface DeviceStats {
  id: number;
  name?: string;
  blockDevice: string;
  target?: string;
  mode?: string;
  window: { from: number; to: number; seconds: number };
  read: Direction;
  write: Direction;
  discard: Direction;
  flush: { iops: number; ios: number };
  inFlight: { read: number; write: number };
  /** Null for a device this tool does not serve, or before its server first published. */
  server: ServerStats | null;
  /** Long work its target is doing (a mirror's resync): TargetSpec.progress. */
  progress?: string;
}

/** The device between two samples of it. */
export function deviceStats(a: Sample, b: Sample, progress?: (rec: DeviceRecord) => string | undefined): DeviceStats {
  const seconds = (b.mono - a.mono) / 1000;
  // A device deleted and made again under the same id between the samples starts from zero.
  const rate = (d: number) => (seconds > 0 ? Math.max(0, d) / seconds : 0);
  const direction = (ios: keyof BlockStat, sectors: keyof BlockStat): Direction => ({
    iops: rate(b.block[ios] - a.block[ios]),
    bytesPerSecond: rate(b.block[sectors] - a.block[sectors]) * 512,
    ios: b.block[ios],
    bytes: b.block[sectors] * 512,
  });
  const rec = readRecord(b.id);
  return {
    id: b.id,
    name: rec?.name,
    blockDevice: `/dev/ublkb${b.id}`,
    target: rec?.target,
    mode: rec?.mode,
    window: { from: a.time, to: b.time, seconds },
    read: direction('readIos', 'readSectors'),
    write: direction('writeIos', 'writeSectors'),
    discard: direction('discardIos', 'discardSectors'),
    flush: { iops: rate(b.block.flushIos - a.block.flushIos), ios: b.block.flushIos },
    inFlight: b.inFlight,
    server: serverStats(a.server, b.server, b.time),
    ...(rec && progress ? { progress: progress(rec) } : {}),
  };
}

function serverStats(a: ServerCounters | undefined, b: ServerCounters | undefined, now: number): ServerStats | null {
  if (!b) return null;
  const { time, pid, ...counters } = b;
  const same = a !== undefined && a.pid === pid && time > a.time;
  return {
    pid,
    ...counters,
    requestsPerSecond: same ? ((b.requests - a.requests) * 1000) / (time - a.time) : null,
    age: Math.max(0, (now - time) / 1000),
  };
}
