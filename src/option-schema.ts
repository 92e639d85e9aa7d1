// One definition per option, for every way a value arrives: the command line of `add` (yargs parses and
// shows it), an entry of the config file of `up` (config.ts checks it against the same definition), and a
// server, whoever started it (a program through api.ts too): Server.start checks the engine's and the
// target's values with `checkOptions` before the target opens, and fills in the defaults, so a target's
// open() gets values of the declared type and range. The native side takes the keys its target declares
// (target_ops.options), checked by test/host/option-keys.test.ts.
import type { Options } from 'yargs';
import { UserError } from './errors.js';

export interface OptionSpec extends Options {
  /** A whole number from min to max (both included). */
  range?: readonly [number, number];
}

export type OptionSchema = Record<string, OptionSpec>;

/**
 * The one check of a whole number and its one message. `shown` names the option as its source does
 * (`--queues` on the command line, `queues` in a file); `raw` is the value as it was written, if known.
 */
export function wholeIn(shown: string, value: unknown, [min, max]: readonly [number, number], raw?: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= min && value <= max) return value;
  throw new UserError(`${shown} must be a whole number from ${min} to ${max}, not ${raw ?? JSON.stringify(value)}`);
}

/** The values of schema's options in `values`, each in its range, with the defaults of those not given. */
export function checkOptions(schema: OptionSchema, values: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...values };
  for (const [key, o] of Object.entries(schema)) {
    if (out[key] === undefined && o.default !== undefined) out[key] = o.default;
    if (o.range) wholeIn(`--${key}`, out[key], o.range);
  }
  return out;
}

/** `help` shows each range beside its option. */
export function describedRanges(schema: OptionSchema): OptionSchema {
  return Object.fromEntries(
    Object.entries(schema).map(([k, o]) => [k, o.range ? { ...o, describe: `${o.describe ?? ''} (${o.range[0]}..${o.range[1]})`.trim() } : o]),
  );
}
