// The options of a device that belong to the engine rather than to its target: one definition for the
// command line of `add` and for the config file of `up` (ublk-ts.conf(5)), so both take the same names
// and limits.
import { DATA_MODES } from './features.js';
import type { OptionSchema } from './option-schema.js';

export const DEFAULT_DEPTH = 128;

/** Whole-number options and their ranges. ADD_DEV refuses ids from UBLK_MAX_UBLKS (1 << MINORBITS) up. */
export const LIMITS = {
  number: [0, (1 << 20) - 1],
  queues: [1, 4096], // the kernel's UBLK_MAX_NR_QUEUES; it gives no more than one per CPU
  depth: [1, 4096],
  restart: [0, 1000],
} as const satisfies Record<string, readonly [number, number]>;

export function engineOptions(targetNames: readonly string[]): OptionSchema {
  return {
    target: { type: 'string', choices: [...targetNames], demandOption: true, describe: 'backend' },
    number: { alias: 'n', type: 'number', range: LIMITS.number, describe: 'device id (default: first free)' },
    queues: { alias: 'q', type: 'number', range: LIMITS.queues, describe: 'hardware queues (default: one per CPU, at most 4)' },
    depth: { alias: 'd', type: 'number', default: DEFAULT_DEPTH, range: LIMITS.depth, describe: 'queue depth' },
    'data-mode': { type: 'string', choices: ['auto', ...DATA_MODES], default: 'auto', describe: 'how request data moves' },
    recovery: { type: 'boolean', default: true, describe: 'the device outlives a crashed server and queues IO until `ublk-ts recover` (--no-recovery: it goes away)' },
    restart: { type: 'number', default: 0, range: LIMITS.restart, describe: 'a supervisor re-attaches a new server when the server dies, up to N times' },
    'part-scan': { type: 'boolean', default: false, describe: "let the kernel read the device's partition table when it starts (by default it does not)" },
  };
}
