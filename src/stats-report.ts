// `ublk-ts stats` on the screen: one report over one window, or one every --watch seconds, redrawn in place
// on a terminal and printed as lines (a TIME column, or one JSON object a line) when piped.
import { deviceStats, sample, type DeviceStats, type Sample } from './stats.js';
import type { DeviceRecord } from './state.js';
import { UserError } from './errors.js';

export interface StatsRun {
  /** The devices to show, asked again at each report (a new device shows up in `stats` of every device). */
  ids: () => number[];
  /** Devices asked for by number or name: their going away ends the run. */
  fixed: boolean;
  seconds: number;
  /** Reports before returning; undefined: until interrupted. */
  count?: number;
  json: boolean;
  /** Watching on a terminal: clear it and draw each report from the top. */
  redraw: boolean;
  /** Watching: each report on its own lines, stamped. */
  watching: boolean;
  write: (text: string) => void;
  /** A device's long work in a few words (TargetSpec.progress). */
  progress?: (rec: DeviceRecord) => string | undefined;
}

const COLUMNS: [string, number, (d: DeviceStats) => string][] = [
  ['DEVICE', 8, (d) => `ublkb${d.id}`],
  ['NAME', 12, (d) => d.name ?? '-'],
  ['MODE', 10, (d) => d.mode ?? '-'],
  ['READ/s', 8, (d) => count(d.read.iops)],
  ['READ B/s', 9, (d) => bytes(d.read.bytesPerSecond)],
  ['WRITE/s', 8, (d) => count(d.write.iops)],
  ['WRITE B/s', 9, (d) => bytes(d.write.bytesPerSecond)],
  ['INFLIGHT', 8, (d) => `${d.inFlight.read}/${d.inFlight.write}`],
  ['REQUESTS', 8, (d) => (d.server ? count(d.server.requests) : '-')],
  ['LEASED', 7, (d) => (d.server ? count(d.server.leased) : '-')],
  ['COPIED', 7, (d) => (d.server ? count(d.server.copied) : '-')],
  ['ERRORS', 6, (d) => (d.server ? count(d.server.errors) : '-')],
  ['RETRIES', 7, (d) => (d.server ? count(d.server.retries) : '-')],
  ['SHORT', 5, (d) => (d.server ? count(d.server.shortTransfers) : '-')],
  ['PROGRESS', 0, (d) => d.progress ?? ''],
];

export const STATS_LEGEND =
  'READ/WRITE: per second over the window (block layer); INFLIGHT: reads/writes in flight now; REQUESTS..SHORT: ' +
  "the server's totals since it started (served on the lease, through a copy, failed, retried, short transfers continued); " +
  'PROGRESS: long work the target is doing (a resync)';

function row(cells: string[]): string {
  return cells.map((c, i) => c.padEnd(COLUMNS[i][1])).join(' ').trimEnd();
}

export function statsTable(devs: DeviceStats[], stamp?: string): string[] {
  const lines = devs.map((d) => row(COLUMNS.map(([, , f]) => f(d))));
  return stamp === undefined ? lines : lines.map((l) => `${stamp} ${l}`);
}

export function statsHeader(stamped: boolean): string {
  return `${stamped ? 'TIME     ' : ''}${row(COLUMNS.map(([h]) => h))}`;
}

/** 1234 → 1234, 12345 → 12.3k: the columns stay narrow. */
function count(n: number): string {
  const r = Math.round(n);
  if (r < 10_000) return String(r);
  for (const [u, f] of [['G', 1e9], ['M', 1e6], ['k', 1e3]] as const) if (r >= f) return `${(r / f).toFixed(r >= 100 * f ? 0 : 1)}${u}`;
  return String(r);
}

function bytes(n: number): string {
  for (const [u, f] of [['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const) if (n >= f) return `${(n / f).toFixed(n >= 100 * f ? 0 : 1)}${u}`;
  return `${Math.round(n)}B`;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function sampleAll(ids: number[]): Map<number, Sample> {
  const out = new Map<number, Sample>();
  for (const id of ids) {
    const s = sample(id);
    if (s) out.set(id, s);
  }
  return out;
}

export async function runStats(o: StatsRun): Promise<void> {
  let before = sampleAll(o.ids());
  const start = Date.now();
  if (o.watching && !o.json && !o.redraw) o.write(statsHeader(true));
  for (let n = 1; o.count === undefined || n <= o.count; n++) {
    // On a fixed schedule, so that reports do not drift by the time each one takes.
    await sleep(Math.max(0, start + n * o.seconds * 1000 - Date.now()));
    const after = sampleAll(o.ids());
    if (o.fixed) {
      const gone = [...before.keys()].find((id) => !after.has(id));
      if (gone !== undefined) throw new UserError(`/dev/ublkb${gone} went away`, 'not-found');
    }
    const devs = [...after.values()].flatMap((b) => {
      const a = before.get(b.id);
      return a ? [deviceStats(a, b, o.progress)] : [];
    });
    before = after;
    const time = new Date();
    if (o.json) {
      const report = { time: time.toISOString(), devices: devs };
      o.write(o.watching ? JSON.stringify(report) : JSON.stringify(report, null, 2));
    } else if (o.redraw) {
      const title = `ublk-ts stats: every ${o.seconds} s, ${time.toLocaleTimeString()} (Ctrl-C stops)`;
      const body = devs.length ? [statsHeader(false), ...statsTable(devs)] : ['no ublk devices'];
      o.write(`\x1b[H\x1b[2J${[title, '', ...body, '', STATS_LEGEND].join('\n')}`);
    } else if (o.watching) {
      if (devs.length) o.write(statsTable(devs, time.toTimeString().slice(0, 8)).join('\n'));
    } else {
      o.write(devs.length ? [statsHeader(false), ...statsTable(devs)].join('\n') : 'no ublk devices');
    }
  }
}
