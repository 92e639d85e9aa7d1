// fault: wraps another native target (file, null, mirror, stripe, nbd) and injects failures, stalls,
// delays and corruption, for testing what sits above a block device (filesystems, RAID, databases) and
// ublk-ts itself. It takes the wrapped target's options as they are, and what the wrapped target learns as
// it starts (an export's size, a mirror's data size) is the device's.
import os from 'node:os';
import type { Options } from 'yargs';
import type { TargetSpec } from '../../src/target.js';
import { parseSize } from '../../src/size.js';
import { UserError } from '../../src/errors.js';
import file from '../file/index.js';
import nul from '../null/index.js';
import mirror from '../mirror/index.js';
import stripe from '../stripe/index.js';
import nbd from '../nbd/index.js';

const WRAPPED: Record<string, TargetSpec> = { file, null: nul, mirror, stripe, nbd };
const WRAPPED_NAMES = Object.keys(WRAPPED).join(', ');

const rangeOption = (describe: string): Options => ({ type: 'string', array: true, describe });
/** 0: never. */
const COUNT = [0, Number.MAX_SAFE_INTEGER] as const;

/** OFF:LEN[:ERRNO] with sizes like 1M:64k; ERRNO by name (EIO, ENOSPC) or number. */
export function parseRange(option: string, text: string, withErrno: boolean): number[] {
  const parts = text.split(':');
  if (parts.length < 2 || parts.length > (withErrno ? 3 : 2))
    throw new UserError(`--${option} "${text}" must be OFF:LEN${withErrno ? '[:ERRNO]' : ''}, e.g. 1M:64k`);
  const size = (s: string) => {
    try {
      return parseSize(s);
    } catch {
      throw new UserError(`--${option} "${text}": "${s}" is not a size (use e.g. 4096, 64k, 1M)`);
    }
  };
  const off = size(parts[0]);
  const len = size(parts[1]);
  if (len === 0) throw new UserError(`--${option} "${text}": the length must not be 0`);
  if (!withErrno) return [off, len];
  const name = (parts[2] ?? 'EIO').toUpperCase();
  const errno = /^\d+$/.test(name) ? Number(name) : (os.constants.errno as Record<string, number>)[name];
  if (!errno || errno > 4095) throw new UserError(`--${option} "${text}": "${parts[2]}" is not an errno (use e.g. EIO, ENOSPC, 5)`);
  return [off, len, errno];
}

function ranges(option: string, v: unknown, withErrno: boolean): number[] {
  return ((v as string[] | undefined) ?? []).flatMap((t) => parseRange(option, String(t), withErrno));
}

const spec: TargetSpec = {
  name: 'fault',
  describe: 'wraps file, null, mirror, stripe or nbd and injects errors, stalls, delays and corruption (for tests)',
  movesData: true,
  options: {
    ...nul.options,
    ...file.options,
    ...mirror.options,
    ...stripe.options,
    ...nbd.options,
    over: { type: 'string', describe: `the wrapped target: ${WRAPPED_NAMES}` },
    'delay-us': { type: 'number', default: 0, range: [0, 60_000_000], describe: 'complete every request this many microseconds late (a minute at most)' },
    'fail-range': rangeOption('OFF:LEN[:ERRNO]: requests touching the range fail (default EIO); repeatable'),
    'fail-after': { type: 'number', default: 0, range: COUNT, describe: 'every request after the Nth fails with EIO' },
    'stall-range': rangeOption('OFF:LEN: requests touching the range never complete until the device stops'),
    'corrupt-range': rangeOption('OFF:LEN: reads of the range come back with one byte of every sector flipped'),
    'fail-queue-after': { type: 'number', default: 0, range: COUNT, describe: 'after the Nth request the queue serving it fails (the device stops)' },
  },
  async open(opts) {
    const over = opts.over;
    if (typeof over !== 'string' || !(over in WRAPPED)) throw new UserError(`the fault target needs --over TARGET, one of ${WRAPPED_NAMES}`);
    // Whole numbers in their ranges, defaults filled in (src/option-schema.ts).
    const faults = {
      'delay-us': Number(opts['delay-us']),
      'fail-range': ranges('fail-range', opts['fail-range'], true),
      'fail-after': Number(opts['fail-after']),
      'stall-range': ranges('stall-range', opts['stall-range'], false),
      'corrupt-range': ranges('corrupt-range', opts['corrupt-range'], false),
      'fail-queue-after': Number(opts['fail-queue-after']),
    };
    if (faults['corrupt-range'].length > 0 && over === 'null') throw new UserError('--corrupt-range needs a target with data (null has none)');
    const inner = await WRAPPED[over].open(opts);
    const said = Object.entries(faults)
      .filter(([, v]) => (Array.isArray(v) ? v.length > 0 : v > 0))
      .map(([k]) => k);
    return {
      ...inner,
      options: { ...inner.options, ...faults, over },
      userCopy: inner.userCopy === true || faults['corrupt-range'].length > 0,
      info: { ...inner.info, over, faults: said.join(',') || 'none' },
    };
  },
};
export default spec;
