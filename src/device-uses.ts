// Devices over devices: a mirror whose remote leg is an nbd device, a file device over another one. What one
// device names of another among its options decides the order of `up` and `gc` (the one beneath first)
// and of `down` and `del --all` (the one over it first): a leg not there yet fails the device over it, one
// waiting for its own server holds up the reads of the one over it as it starts, and a leg taken down
// first is refused as busy and stays up.
import fs from 'node:fs';
import { addon, DEV_STATE } from './native.js';
import type { DeviceRecord } from './state.js';

/** The strings among a device's options, a list's items too. */
export function optionStrings(options: unknown): string[] {
  if (typeof options !== 'object' || options === null) return [];
  return Object.values(options)
    .flatMap((v: unknown) => (Array.isArray(v) ? v : [v]))
    .filter((v): v is string => typeof v === 'string');
}

/** The strings among a device's options and, for those that are paths, what they resolve to: a block device
 * named through a link (/dev/ublk-ts/NAME) is found under its own name too. */
export function namedPaths(options: unknown): Set<string> {
  const named = new Set<string>();
  for (const v of optionStrings(options)) {
    named.add(v);
    if (v.startsWith('/'))
      try {
        named.add(fs.realpathSync(v));
      } catch {
        // Not there (yet): the string itself is all it names.
      }
  }
  return named;
}

/**
 * items with each after the ones it uses (uses(a, b): a uses b), else in the order given. Those that use
 * one another in a cycle, or use such a one, cannot be ordered: they come apart, in `stuck`.
 */
export function usesFirst<T>(items: readonly T[], uses: (a: T, b: T) => boolean): { order: T[]; stuck: T[] } {
  const order: T[] = [];
  let left = [...items];
  for (;;) {
    const next = left.filter((a) => !left.some((b) => b !== a && uses(a, b)));
    if (next.length === 0) return { order, stuck: left };
    order.push(...next);
    left = left.filter((a) => !next.includes(a));
  }
}

/** chosen (some of all), the items of all they use, and those use, and so on, in the order of all. */
export function withUsed<T>(chosen: readonly T[], all: readonly T[], uses: (a: T, b: T) => boolean): T[] {
  const want = new Set(chosen);
  for (let grew = true; grew; ) {
    grew = false;
    for (const b of all)
      if (!want.has(b) && [...want].some((a) => a !== b && uses(a, b))) {
        want.add(b);
        grew = true;
      }
  }
  return all.filter((x) => want.has(x));
}

/**
 * Running devices in the order to bring them back ('beneath': each after the ones its options name, which
 * it reads as it starts) or to take them down ('over': each before them, which it holds open until it
 * goes), else in the order given.
 */
export function inUseOrder<T extends DeviceRecord>(recs: readonly T[], first: 'beneath' | 'over'): T[] {
  const paths = new Map(recs.map((r) => [r, namedPaths(r.serve.targetOptions)]));
  const names = (a: T, b: T) => a !== b && paths.get(a)!.has(b.blockDevice);
  const { order, stuck } = usesFirst(recs, first === 'beneath' ? names : (a, b) => names(b, a));
  return [...order, ...stuck];
}

/**
 * A ublk device among the paths the options name that waits for a server of its own (QUIESCED: its IO
 * queues until one comes), if any. A device opened over it would wait on its first read, in a process
 * that cannot even be killed until then; FAIL_IO fails that read at once, and is left to the target.
 */
export async function waitingBeneath(options: unknown): Promise<string | undefined> {
  for (const p of namedPaths(options)) {
    const m = /^\/dev\/ublkb(\d+)$/.exec(p);
    const state = m ? await addon.getDevInfo(Number(m[1])).then((i) => i.state, () => undefined) : undefined;
    if (state === DEV_STATE.QUIESCED) return p;
  }
  return undefined;
}
