// Legs: the files or block devices a mirror or a stripe spreads requests over (`--leg`, in order: leg i is
// fixed file i + 1 of the native target). Each leg is opened exactly as the file target opens its backing,
// by the file target itself, so O_DIRECT, block devices, --read-only, --logical-block-size and --buffered
// mean the same here.
import fs from 'node:fs';
import type { Options } from 'yargs';
import type { OpenedTarget } from '../../src/target.js';
import type { DiscardParams, TargetOptions } from '../../src/native.js';
import { UserError } from '../../src/errors.js';
import file from '../file/index.js';

/** The native side's limit: a write (mirror) or a flush (stripe) has one member per leg. */
export const MAX_LEGS = 16;

/** --leg: shared by mirror and stripe, with the same meaning. */
export const legOption: Options = {
  type: 'string',
  array: true,
  describe: 'a leg: an existing file or block device; repeat for each (mirror, stripe)',
};

/** The file target's options a leg takes as they are. */
export const legFileOptions: Record<string, Options> = {
  'read-only': file.options['read-only'],
  'logical-block-size': file.options['logical-block-size'],
  buffered: file.options.buffered,
};

export interface Leg {
  path: string;
  opened: OpenedTarget;
}

/** The --leg paths: at least `min`, at most MAX_LEGS, each a different existing file or block device. */
function legPaths(target: string, value: unknown, min: number): string[] {
  const paths = (Array.isArray(value) ? value : value === undefined ? [] : [value]).map(String);
  if (paths.length < min)
    throw new UserError(`the ${target} target needs ${min === 1 ? 'at least one --leg' : `at least ${min} --leg options`} (a file or block device each)`);
  if (paths.length > MAX_LEGS) throw new UserError(`--leg is given ${paths.length} times; a ${target} takes at most ${MAX_LEGS} legs`);
  const seen = new Map<string, string>();
  for (const p of paths) {
    let st: fs.Stats;
    try {
      st = fs.statSync(p);
    } catch {
      throw new UserError(`--leg ${p} does not exist (legs are existing files or block devices)`);
    }
    if (st.isFile() && st.size === 0) throw new UserError(`--leg ${p} is empty`);
    // The same leg twice would be written twice and counted twice.
    const id = legIdentity(st);
    const twice = seen.get(id);
    if (twice !== undefined) throw new UserError(`--leg ${p} is the same ${st.isBlockDevice() ? 'device' : 'file'} as --leg ${twice}`);
    seen.set(id, p);
  }
  return paths;
}

/** Opens one leg as the file target would, with the leg options of opts. */
export async function openLeg(path: string, opts: Record<string, unknown>): Promise<Leg> {
  const one = { file: path, 'read-only': opts['read-only'], 'logical-block-size': opts['logical-block-size'], buffered: opts.buffered };
  return { path, opened: await file.open(one) };
}

/** Which file or block device a path is: two paths of one leg are the same leg. */
export const legIdentity = (st: fs.Stats) => (st.isBlockDevice() ? `b${st.rdev}` : `f${st.dev}:${st.ino}`);

/** Opens every leg as the file target would; on any failure closes what it opened and throws. */
export async function openLegs(target: string, opts: Record<string, unknown>, min: number): Promise<Leg[]> {
  const legs: Leg[] = [];
  try {
    for (const path of legPaths(target, opts.leg, min)) legs.push(await openLeg(path, opts));
  } catch (e) {
    closeLegs(legs);
    throw e;
  }
  return legs;
}

export function closeLegs(legs: Leg[]): void {
  for (const l of legs) l.opened.close();
}

/** The largest of a parameter over the legs (0 where none has it). */
const largest = (legs: Leg[], get: (p: OpenedTarget['params']) => number | undefined) => Math.max(0, ...legs.map((l) => get(l.opened.params) ?? 0));

/**
 * What every leg can do of discard and write-zeroes: the coarsest granularity and the smallest limits,
 * in whole blocks of `lbs`; a limit any leg lacks is 0, and none at all is undefined.
 */
function sharedDiscard(legs: Leg[], lbs: number): DiscardParams | undefined {
  const ds = legs.map((l) => l.opened.params.discard);
  if (!ds.every((d): d is DiscardParams => d !== undefined)) return undefined;
  const sectors = (get: (d: DiscardParams) => number) => {
    const least = Math.min(...ds.map(get));
    return least - (least % (lbs / 512));
  };
  const d = {
    granularity: Math.max(lbs, ...ds.map((x) => x.granularity)),
    maxDiscardSectors: sectors((x) => x.maxDiscardSectors),
    maxWriteZeroesSectors: sectors((x) => x.maxWriteZeroesSectors),
  };
  return d.maxDiscardSectors || d.maxWriteZeroesSectors ? d : undefined;
}

/**
 * What every leg's parameters share: the largest logical block size (and physical, and io_min), the
 * discard every leg can do, the strictest DMA alignment any leg needs (O_DIRECT). Cache and read-only
 * attributes are the same on every leg.
 */
export function legParams(legs: Leg[]): OpenedTarget['params'] {
  // The block size every leg takes: the largest of theirs, whichever leg is first.
  const lbs = 2 ** largest(legs, (p) => p.logicalBsShift);
  const { dmaAlignment: _, discard: __, ...params } = legs[0].opened.params;
  const discard = sharedDiscard(legs, lbs);
  const align = largest(legs, (p) => p.dmaAlignment);
  return {
    ...params,
    logicalBsShift: Math.log2(lbs),
    physicalBsShift: largest(legs, (p) => p.physicalBsShift),
    ioMinShift: largest(legs, (p) => p.ioMinShift),
    ...(discard ? { discard } : {}),
    ...(legs.some((l) => l.opened.params.dmaAlignment !== undefined) ? { dmaAlignment: align } : {}),
  };
}

/** For the native side: the legs that discard with a block discard (bit i: leg i, or slot i where a mirror's
 * slot has no leg), as the file target's own. */
export function legOptions(legs: readonly (Leg | undefined)[]): TargetOptions {
  return { 'block-discard': legs.reduce((bits, l, i) => bits | (l?.opened.options?.['block-discard'] ? 1 << i : 0), 0) };
}

/** For `list`: the legs in order (the BACKING column), and whether every one is O_DIRECT. */
export function legInfo(legs: Leg[]): Record<string, string | boolean> {
  return {
    file: legs.map((l) => l.path).join(','),
    direct: legs.every((l) => l.opened.info.direct === true),
    readOnly: legs[0].opened.info.readOnly === true,
  };
}
