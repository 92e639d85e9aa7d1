// Legs: the files or block devices a mirror or a stripe spreads requests over (`--leg`, in order: leg i is
// fixed file i + 1 of the native target). Each leg is opened exactly as the file target opens its backing,
// by the file target itself, so O_DIRECT, block devices, --read-only, --logical-block-size and --buffered
// mean the same here.
import fs from 'node:fs';
import type { Options } from 'yargs';
import type { OpenedTarget } from '../../src/target.js';
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
    const id = st.isBlockDevice() ? `b${st.rdev}` : `f${st.dev}:${st.ino}`;
    const twice = seen.get(id);
    if (twice !== undefined) throw new UserError(`--leg ${p} is the same ${st.isBlockDevice() ? 'device' : 'file'} as --leg ${twice}`);
    seen.set(id, p);
  }
  return paths;
}

/** Opens every leg as the file target would; on any failure closes what it opened and throws. */
export async function openLegs(target: string, opts: Record<string, unknown>, min: number): Promise<Leg[]> {
  const legs: Leg[] = [];
  try {
    for (const path of legPaths(target, opts.leg, min)) {
      const one = { file: path, 'read-only': opts['read-only'], 'logical-block-size': opts['logical-block-size'], buffered: opts.buffered };
      legs.push({ path, opened: await file.open(one) });
    }
  } catch (e) {
    closeLegs(legs);
    throw e;
  }
  return legs;
}

export function closeLegs(legs: Leg[]): void {
  for (const l of legs) l.opened.close();
}

/** What every leg's parameters share, with the strictest DMA alignment any leg needs (O_DIRECT). */
export function legParams(legs: Leg[]): OpenedTarget['params'] {
  const aligns = legs.map((l) => l.opened.params.dmaAlignment).filter((a): a is number => a !== undefined);
  const { dmaAlignment: _, ...params } = legs[0].opened.params;
  return aligns.length > 0 ? { ...params, dmaAlignment: Math.max(...aligns) } : params;
}

/** For `list`: the legs in order (the BACKING column), and whether every one is O_DIRECT. */
export function legInfo(legs: Leg[]): Record<string, string | boolean> {
  return {
    file: legs.map((l) => l.path).join(','),
    direct: legs.every((l) => l.opened.info.direct === true),
    readOnly: legs[0].opened.info.readOnly === true,
  };
}
