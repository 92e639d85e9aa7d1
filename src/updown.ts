// `up` and `down`: the devices named in the config file, brought to the state asked for. A device already
// there is left as it is (found by the name in its state record), and one that fails does so alone, in
// one line, while the others go on.
import fs from 'node:fs';
import { errorKind, oneLine, UserError, type ErrorKind } from './errors.js';
import { checkName, configuredDevice, readConfig, type ConfigEntry } from './config.js';
import { inUseOrder, optionStrings, usesFirst, withUsed } from './device-uses.js';
import { linkPath, makeLink } from './dev-links.js';
import { requireDriver } from './features.js';
import { addDevice, deleteDevice, heldUnder, recoverDevice } from './lifecycle.js';
import { checkTarget } from './usage.js';
import { readRecords, recordByName, removeRecord, servesDevice, type DeviceRecord } from './state.js';
import type { ConfiguredDevice } from './config.js';

type NamedRecord = DeviceRecord & { name: string };

export interface Outcome {
  name: string;
  state: 'up' | 'already-up' | 'recovered' | 'down' | 'already-down' | 'failed';
  id?: number;
  /** The stable path, /dev/ublk-ts/NAME. */
  path?: string;
  blockDevice?: string;
  /** failed: one line, starting with the name. */
  error?: string;
  code?: ErrorKind;
}

/** Told each device's outcome as soon as it is known (a slow device does not hold back the others' lines). */
export type OnOutcome = (o: Outcome) => void;

function failed(name: string, e: unknown): Outcome {
  return { name, state: 'failed', error: `${name}: ${oneLine(e)}`, code: errorKind(e) };
}

function reached(name: string, state: Outcome['state'], rec: DeviceRecord): Outcome {
  return { name, state, id: rec.id, path: linkPath(name), blockDevice: rec.blockDevice };
}

/** `--all`, or the names given (each must be in the file: a typo is refused before anything changes). */
function select(entries: ConfigEntry[], names: readonly string[] | 'all', file: string): ConfigEntry[] {
  if (names === 'all') return entries.filter((e) => e.auto);
  return names.map((n) => {
    const e = entries.find((x) => x.name === n);
    if (!e) throw new UserError(`no device "${n}" in ${file} (it names: ${entries.map((x) => x.name).join(', ') || 'none'})`, 'not-found');
    return e;
  });
}

/**
 * Paths among a device's options must exist: `up` never creates a backing file. At boot a missing one
 * usually means that its filesystem is not mounted (yet), and a new file would land on the wrong one.
 */
function requireExisting(serve: ConfiguredDevice['serve']): void {
  for (const v of optionStrings(serve.targetOptions))
    if (v.startsWith('/') && !fs.existsSync(v))
      throw new UserError(`${v} does not exist (up never creates a backing file; is its filesystem mounted?)`, 'backend');
}

export async function up(file: string, names: readonly string[] | 'all', on: OnOutcome): Promise<Outcome[]> {
  const entries = readConfig(file);
  // An entry whose options name another's stable path comes up after it.
  const named = new Map(entries.map((e) => [e, new Set(optionStrings(e.settings))]));
  const entryUses = (a: ConfigEntry, b: ConfigEntry) => a !== b && named.get(a)!.has(linkPath(b.name));
  // What the chosen ones use comes up too, and first.
  const { order, stuck } = usesFirst(withUsed(select(entries, names, file), entries, entryUses), entryUses);
  const out: Outcome[] = [];
  const tell = (o: Outcome) => {
    out.push(o);
    on(o);
  };
  for (const e of stuck)
    tell(failed(e.name, new UserError(`it is in or behind a cycle of devices that name each other's /dev/ublk-ts paths (${stuck.map((x) => x.name).join(', ')}): none of them can come up first`)));
  const isUp = new Set<string>();
  const waitsFor = (entry: ConfigEntry) => order.find((b) => entryUses(entry, b) && !isUp.has(b.name));
  // First, without the kernel: what is up already, and whether the rest are right (their backing opened
  // once). One over a device still to come up is checked once that one is up.
  interface Checked { serve: ConfiguredDevice['serve']; undo: () => void; stale?: DeviceRecord }
  const check = async (entry: ConfigEntry): Promise<Checked> => {
    const { spec, serve } = await configuredDevice(file, entry);
    requireExisting(serve);
    return { serve, undo: await checkTarget(spec, serve.targetOptions), stale: recordByName(entry.name) };
  };
  const steps: { entry: ConfigEntry; checked?: Checked }[] = [];
  for (const entry of order) {
    try {
      const rec = recordByName(checkName(entry.name));
      if (rec && servesDevice(rec.pid, rec.id)) {
        makeLink(entry.name, rec.id); // a no-op unless someone removed it
        isUp.add(entry.name);
        tell(reached(entry.name, 'already-up', rec));
        continue;
      }
      steps.push({ entry, checked: waitsFor(entry) ? undefined : await check(entry) });
    } catch (e) {
      tell(failed(entry.name, e));
    }
  }
  if (steps.length === 0) return out;
  try {
    requireDriver();
  } catch (e) {
    for (const s of steps) s.checked?.undo();
    throw e;
  }
  for (const { entry, checked } of steps) {
    const name = entry.name;
    try {
      const missing = checked ? undefined : waitsFor(entry);
      if (missing) throw new UserError(`it needs ${missing.name} (${linkPath(missing.name)}), which did not come up`, 'backend');
      const { serve, stale } = checked ?? (await check(entry));
      // Its server is gone, but the kernel may still hold the device: one waiting for a new server gets
      // one (a filesystem on it keeps its data); one proven the record's is freed before making another;
      // a device that is not the record's is never touched.
      const held = stale ? await heldUnder(stale) : 'none';
      if (stale && held === 'recoverable') {
        tell(reached(name, 'recovered', await recoverDevice(stale.id)));
      } else {
        if (stale && held === 'ours') await deleteDevice(stale.id).catch(() => undefined);
        else if (stale) removeRecord(stale.id);
        tell(reached(name, 'up', await addDevice(serve)));
      }
      isUp.add(name);
    } catch (e) {
      tell(failed(name, e));
    }
  }
  return out;
}

/**
 * `down --all` takes down every device `up` brought up, whether or not the file still names it, and never
 * needs the file: a broken one must not keep devices up at shutdown. A name given must be up or in the file.
 */
export async function down(file: string, names: readonly string[] | 'all', on: OnOutcome): Promise<Outcome[]> {
  const named = readRecords().filter((r): r is NamedRecord => r.name !== undefined);
  const chosen = names === 'all' ? named.map((r) => r.name) : names.map(checkName);
  const out: Outcome[] = [];
  const tell = (o: Outcome) => {
    out.push(o);
    on(o);
  };
  const recs = chosen.map((n) => named.find((r) => r.name === n));
  const missing = chosen.filter((_, i) => !recs[i]);
  if (missing.length > 0) {
    let inFile: string[] = [];
    try {
      inFile = readConfig(file).map((e) => e.name);
    } catch {
      // Unreadable: every name not up is unknown.
    }
    const unknown = missing.find((n) => !inFile.includes(n));
    if (unknown !== undefined) throw new UserError(`no device "${unknown}" is up, nor named in ${file}`, 'not-found');
  }
  if (recs.some((r) => r)) requireDriver();
  for (const name of chosen.filter((_, i) => !recs[i])) tell({ name, state: 'already-down' });
  // One over another goes down first: the one under it is open until then, and would be refused as busy.
  for (const rec of inUseOrder(recs.filter((r): r is NamedRecord => r !== undefined), 'over')) {
    const name = rec.name;
    try {
      // One still mounted or open is left up, said in its line (the exit status is then 'busy').
      await deleteDevice(rec.id, { safe: true });
      tell(reached(name, 'down', rec));
    } catch (e) {
      tell(failed(name, e));
    }
  }
  return out;
}
