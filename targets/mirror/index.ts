// mirror: RAID1 over files or block devices (`--leg`, two or more as a rule; one is allowed, to serve what
// survives of a mirror). Each leg ends with the mirror's metadata (a superblock and a write-intent bitmap:
// mirror.h, meta.h), so the device is that much smaller than its smallest leg. The native side reads it
// when it starts and decides which legs are in sync; `list` shows each leg's state in info.legs.
import fs from 'node:fs';
import path from 'node:path';
import type { OpenedTarget, TargetSpec, TargetVerb } from '../../src/target.js';
import { UserError } from '../../src/errors.js';
import { parseSize } from '../../src/size.js';
import { closeLegs, legFileOptions, legIdentity, legInfo, legOption, legOptions, legParams, MAX_LEGS, openLeg, openLegs, type Leg } from './legs.js';

/** `--leg missing`: an empty slot. */
const MISSING = 'missing';

const CHUNK_MIN = 64 << 10;
const CHUNK_MAX = 64 << 20;
/** The default chunk: 64 KiB, larger where a bitmap of more than this many bits would be needed. */
const DEFAULT_MAX_CHUNKS = 1 << 20;

function chunkShift(value: unknown, smallestLeg: number): number {
  if (value === undefined) {
    let shift = Math.log2(CHUNK_MIN);
    while (smallestLeg / 2 ** shift > DEFAULT_MAX_CHUNKS && 2 ** shift < CHUNK_MAX) shift++;
    return shift;
  }
  const bytes = parseSize(String(value));
  if (bytes < CHUNK_MIN || bytes > CHUNK_MAX || (bytes & (bytes - 1)) !== 0)
    throw new UserError(`--bitmap-chunk must be a power of two from 64k to 64M, not "${String(value)}"`);
  return Math.log2(bytes);
}

/** --resync-rate, --resync-min-rate: bytes per second, or undefined if not given. */
function mbPerSecond(name: string, value: unknown): number | undefined {
  if (value === undefined) return undefined;
  const mb = Number(value);
  if (!Number.isFinite(mb) || mb <= 0) throw new UserError(`--${name} must be a number of MB/s above 0, not "${String(value)}"`);
  return Math.round(mb * 1e6);
}

/** The resync's cap and its floor under user IO (the native side's default floor, if not given). */
function resyncRates(opts: Record<string, unknown>): Record<string, number> {
  const max = mbPerSecond('resync-rate', opts['resync-rate']);
  const min = mbPerSecond('resync-min-rate', opts['resync-min-rate']);
  if (min !== undefined && max !== undefined && min > max)
    throw new UserError(`--resync-min-rate ${String(opts['resync-min-rate'])} is above --resync-rate ${String(opts['resync-rate'])}: the floor under user IO cannot exceed the cap`);
  return { 'resync-rate': max ?? 0, ...(min === undefined ? {} : { 'resync-min-rate': min }) };
}

function legNumber(a: Record<string, unknown>): number {
  const leg = Number(a.leg);
  if (a.leg === undefined || !Number.isInteger(leg) || leg < 1) throw new UserError('--leg must be a leg number (1 for the first --leg)');
  return leg;
}

const legVerb = (verb: string, describe: string): TargetVerb => ({
  describe,
  options: { leg: { type: 'number', describe: 'the leg, by number (1: the first --leg it was added with)' } },
  command: (a) => `${verb} ${legNumber(a)}`,
});

/** --with: a new leg, by a path the server (another process, another directory) can open. */
function newLeg(a: Record<string, unknown>): string {
  if (typeof a.with !== 'string' || a.with === '') throw new UserError('--with needs the new leg: a file or block device');
  return path.resolve(a.with);
}

const withOption = { with: { type: 'string' as const, describe: 'add-leg, replace: the new leg, a file or block device' } };

const verbs: Record<string, TargetVerb> = {
  fail: legVerb('fail', 'mark a leg failed (for maintenance): it gets no more IO'),
  're-add': legVerb('re-add', 'take a failed leg back: it is resynced (only what it missed, where the bitmap knows)'),
  remove: legVerb('remove', 'drop a failed leg from the mirror (its slot stays empty)'),
  'add-leg': {
    describe: 'a new leg (a third, a fourth: up to 16), resynced whole while IO goes on',
    options: withOption,
    command: (a) => `add-leg ${newLeg(a)}`,
  },
  replace: {
    describe: 'a new leg --with PATH for --leg L: resynced whole beside it, then it takes its place',
    options: withOption,
    command: (a) => `replace ${legNumber(a)} ${newLeg(a)}`,
  },
  rate: {
    describe: "the resync's and the check's --resync-rate (0: no cap) and --resync-min-rate from now on, kept for a later server",
    options: {
      'resync-rate': { type: 'number', describe: 'rate: at most this many MB/s (0: as fast as the legs go)' },
      'resync-min-rate': { type: 'number', describe: 'rate: this many MB/s while user IO is active' },
    },
    command: (a) => {
      if (a['resync-rate'] === undefined && a['resync-min-rate'] === undefined) throw new UserError('rate needs --resync-rate, --resync-min-rate or both');
      const cap = a['resync-rate'] === 0 ? 0 : mbPerSecond('resync-rate', a['resync-rate']);
      const floor = mbPerSecond('resync-min-rate', a['resync-min-rate']);
      return `rate ${cap ?? '-'} ${floor ?? '-'}`;
    },
  },
  check: {
    describe: 'scrub: compare every chunk of the in-sync legs; --repair rewrites mismatches',
    options: {
      repair: { type: 'boolean', describe: 'check: rewrite mismatched chunks from the majority (or --from)' },
      from: { type: 'number', describe: 'check --repair: the leg to copy from' },
    },
    command: (a) => {
      if (a.from !== undefined && a.repair !== true) throw new UserError('--from goes with --repair');
      return a.repair === true ? `check repair${a.from !== undefined ? ` ${Number(a.from)}` : ''}` : 'check';
    },
  },
};

function bar(percent: number): string {
  const width = 30;
  const full = Math.round((percent / 100) * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}]`;
}

/** A running resync: percent, rate and time left. */
function resyncProgress(info: Record<string, unknown>, withBar: boolean): string | undefined {
  if (typeof info.resync !== 'number') return undefined;
  const rate = Number(info.resyncRate) / 1e6;
  const eta = Number(info.resyncEta);
  return `resync ${withBar ? `${bar(info.resync)} ` : ''}${info.resync.toFixed(1)}% at ${rate.toFixed(1)} MB/s${eta >= 0 ? `, ${Math.round(eta)} s left` : ''}`;
}

/** list, stats: a resync's or a check's progress. */
function progress(info: Record<string, unknown>): string | undefined {
  return resyncProgress(info, false) ?? (info.check === 'running' ? `check ${String(info.checkPercent)}%` : undefined);
}

/** `mirror status`: the state, each leg, and a running resync's or check's progress. */
function describeStatus(info: Record<string, unknown>): string {
  const lines = [`mirror ${String(info.mirror)}, legs ${String(info.legs)}`];
  for (const [k, v] of Object.entries(info)) if (/^leg\d+$/.test(k)) lines.push(`  ${k}: ${String(v)}`);
  const resync = resyncProgress(info, true);
  if (resync) lines.push(`  ${resync}${info.resyncYielding === true ? ', yielding to user IO' : ''}`);
  if (info.check === 'running' || info.check === 'done')
    lines.push(`  check ${String(info.check)} ${String(info.checkPercent)}%: ${String(info.mismatched)} bytes mismatched${info.mismatchRanges ? ` (${String(info.mismatchRanges)})` : ''}, ${String(info.repaired)} rewritten${info.checkYielding === true ? ', yielding to user IO' : ''}`);
  if (info.resyncRateMax !== undefined) {
    const { cap, floor } = rates(info);
    lines.push(`  rates: ${cap > 0 ? `at most ${cap / 1e6} MB/s` : "the legs' speed"}, ${floor / 1e6} MB/s while user IO is active`);
  }
  if (info.bitmapDirty !== undefined)
    lines.push(`  bitmap: ${String(info.bitmapDirty)} of ${String(info.bitmapBits)} chunks of ${Number(info.bitmapChunk) / 1024} KiB dirty`);
  if (info.syncNote) lines.push(`  last: ${String(info.syncNote)}`);
  return lines.join('\n');
}

/**
 * add-leg and replace, in the server: the new leg is opened here as the others were (it is closed with
 * them when the device stops) and the native side gets its fd.
 */
async function prepare(command: string, opts: Record<string, unknown>, legs: Leg[], params: OpenedTarget['params']): Promise<string> {
  const m = /^(add-leg|replace (\d+)) (.+)$/.exec(command);
  if (!m) return command;
  const file = m[3];
  const st = fs.statSync(file, { throwIfNoEntry: false });
  if (!st) throw new UserError(`--with ${file} does not exist`);
  if (legs.length >= MAX_LEGS * 2) throw new UserError('too many legs were added to this server: restart it (recover) first');
  const twice = legs.find((l) => legIdentity(fs.statSync(l.path)) === legIdentity(st));
  if (twice) throw new UserError(`--with ${file} is already a leg of this mirror (${twice.path})`);
  const leg = await openLeg(file, opts);
  if ((leg.opened.params.logicalBsShift ?? 9) > (params.logicalBsShift ?? 9)) {
    leg.opened.close();
    throw new UserError(`--with ${file} has larger blocks than the mirror's ${2 ** (params.logicalBsShift ?? 9)} bytes`);
  }
  legs.push(leg);
  const bd = leg.opened.options?.['block-discard'] ? 1 : 0;
  return `${m[2] ? `replace ${m[2]}` : 'add-leg'} ${leg.opened.fds[0]} ${bd}`;
}

/** The slots' legs: the opened legs in order, undefined for each `missing`. */
function slotted(slots: string[], legs: Leg[]): (Leg | undefined)[] {
  let next = 0;
  return slots.map((p) => (p === MISSING ? undefined : legs[next++]));
}

/** The resync's rates in force from the status, bytes per second: the cap (0: none) and the floor, which
 * yields to a lower cap (resync_floor in mirror.h). */
function rates(status: Record<string, unknown>): { cap: number; floor: number } {
  const cap = Number(status.resyncRateMax), floor = Number(status.resyncRateMin);
  return { cap, floor: cap > 0 && floor > cap ? cap : floor };
}

/** The rates as options (MB/s) a later server's add checks pass. */
function rateOptions(status: Record<string, unknown>): Record<string, number> {
  const { cap, floor } = rates(status);
  return { ...(cap > 0 ? { 'resync-rate': cap / 1e6 } : {}), 'resync-min-rate': floor / 1e6 };
}

/** The options a later server needs: the --leg list from which fd each slot has now (status.legFds) and
 * which slots are empty (status.legs): `missing` there, so a leg `remove` took out does not come back by
 * itself; and the resync's rates once `mirror rate` changed them. */
function restater(opts: Record<string, unknown>, slots: string[], legs: Leg[]): NonNullable<OpenedTarget['restate']> {
  let before = slots.join('\0');
  let ratesBefore: string | undefined; // the rates of the first status: what the options gave
  const now: Record<string, unknown> = { ...opts };
  return (status) => {
    const byFd = new Map(legs.map((l) => [l.opened.fds[0], l.path]));
    const states = String(status.legs ?? '').split(',');
    const paths = String(status.legFds ?? '').split(',').map((fd, i) => (states[i] === 'empty' ? MISSING : byFd.get(Number(fd))));
    if (paths.some((p) => p === undefined)) return undefined;
    const slotsNow = paths as string[];
    const ratesNow = `${String(status.resyncRateMax)},${String(status.resyncRateMin)}`;
    ratesBefore ??= ratesNow;
    if (slotsNow.join('\0') === before && ratesNow === ratesBefore) return undefined;
    if (ratesNow !== ratesBefore) {
      delete now['resync-rate'];
      Object.assign(now, rateOptions(status));
    }
    before = slotsNow.join('\0');
    ratesBefore = ratesNow;
    now.leg = slotsNow;
    return { options: { ...now }, info: { file: slotsNow.join(',') } };
  };
}

const spec: TargetSpec = {
  name: 'mirror',
  describe: 'RAID1 with a write-intent bitmap: every write to each leg, reads from in-sync legs; a leg that returns is resynced',
  movesData: true,
  options: {
    leg: { ...legOption, describe: 'a leg: an existing file or block device, or "missing" (an empty slot); repeat for each' },
    ...legFileOptions,
    'bitmap-chunk': { type: 'string', describe: 'a new mirror: bytes per bitmap bit, 64k..64M (default 64k, more for large legs)' },
    'assume-clean': { type: 'boolean', describe: 'a new mirror: the legs already hold the same bytes (no initial resync)' },
    'resync-rate': { type: 'number', describe: 'resync at most this many MB/s (default: as fast as the legs go)' },
    'resync-min-rate': { type: 'number', describe: 'while user IO is active, resync at this many MB/s (default 4, at most --resync-rate)' },
    'claim-legs': { type: 'boolean', describe: 'a new mirror may write its metadata over bytes at the end of its legs' },
  },
  async open(opts) {
    const rates = resyncRates(opts);
    // `--leg missing` keeps a slot empty (md's `missing`): a leg that is gone, or one `remove` took out.
    const slots = (Array.isArray(opts.leg) ? opts.leg : opts.leg === undefined ? [] : [opts.leg]).map(String);
    const present = slots.filter((p) => p !== MISSING);
    if (present.length === 0 && slots.length > 0) throw new UserError('every --leg is missing: a mirror needs at least one leg to serve from');
    const legs = await openLegs('mirror', { ...opts, leg: present }, 1);
    try {
      const params = legParams(legs);
      // Each slot's leg, or undefined where it is missing.
      const bySlot = slotted(slots, legs);
      const options = {
        ...legOptions(bySlot),
        lbs: 2 ** (params.logicalBsShift ?? 9),
        'bitmap-chunk-shift': chunkShift(opts['bitmap-chunk'], Math.min(...legs.map((l) => l.opened.size))),
        'assume-clean': opts['assume-clean'] === true ? 1 : 0,
        'claim-legs': opts['claim-legs'] === true ? 1 : 0,
        ...rates,
      };
      return {
        // The native side settles it from the legs' metadata: see afterStart.
        size: 0,
        fds: bySlot.map((l) => l?.opened.fds[0] ?? -1),
        options,
        params,
        info: { ...legInfo(legs), file: slots.join(',') },
        afterStart: (status) => ({ size: Number(status.dataSize), params }),
        prepare: (command) => prepare(command, opts, legs, params),
        // Every leg in sync holds the new size (a file leg grows), the metadata moves to each leg's end
        // (reshape.cc): the legs, not the options, carry the size to a later server.
        resize: async (to, _status, native) => {
          await native(`grow ${to}`);
          return undefined;
        },
        restate: restater(opts, slots, legs),
        close: () => closeLegs(legs),
      };
    } catch (e) {
      closeLegs(legs);
      throw e;
    }
  },
  verbs,
  describeStatus,
  progress,
};
export default spec;
