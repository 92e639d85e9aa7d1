// The config file of `up` and `down` (docs/ublk-ts.conf.5.md): devices by name, each with its target and
// the options `ublk-ts add` takes, under the same names and checked against the same definitions.
import fs from 'node:fs';
import path from 'node:path';
import { oneLine, UserError } from './errors.js';
import { DEFAULT_DEPTH, engineOptions } from './device-options.js';
import { wholeIn, type OptionSchema, type OptionSpec } from './option-schema.js';
import { isTargetPath, loadTarget, targetNames } from './targets.js';
import type { DaemonOptions } from './daemon.js';
import type { DataMode } from './native.js';
import type { TargetSpec } from './target.js';

export const DEFAULT_CONFIG = '/etc/ublk-ts/devices.json';

/** --config, else UBLK_TS_CONFIG, else the system's file. */
export function configPath(given?: string): string {
  return path.resolve(given ?? process.env.UBLK_TS_CONFIG ?? DEFAULT_CONFIG);
}

// A name is a file name in /dev/ublk-ts, and never looks like a device id or an option.
const NAME = /^[A-Za-z][A-Za-z0-9._-]{0,63}$/;

export function checkName(name: string): string {
  if (!NAME.test(name))
    throw new UserError(`"${name}" is not a device name (letters, digits, ".", "_" and "-", starting with a letter, at most 64)`);
  return name;
}

export interface ConfigEntry {
  name: string;
  /** Brought up by `up --all` (false: only when named). */
  auto: boolean;
  settings: unknown;
}

/** The file's entries in order. Its own mistakes (syntax, shape) fail the whole command; an entry's fail it alone. */
export function readConfig(file: string): ConfigEntry[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT')
      throw new UserError(`no config file ${file} (it names the devices of up and down: see ublk-ts.conf(5); --config or UBLK_TS_CONFIG names another)`, 'not-found');
    // A directory, or a file this user may not read: a mistake in --config, not a bug.
    throw new UserError(`cannot read ${file}: ${oneLine(e)}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${file} is not valid JSON: ${oneLine(e)}`);
  }
  const shape = `${file} must hold {"devices": {"NAME": {"target": ..., OPTION: VALUE, ...}, ...}}`;
  if (!isObject(doc) || !isObject(doc.devices)) throw new UserError(shape);
  const stray = Object.keys(doc).find((k) => k !== 'devices');
  if (stray !== undefined) throw new UserError(`${file}: unknown key "${stray}" at the top (${shape.slice(file.length + 1)})`);
  return Object.entries(doc.devices).map(([name, settings]) => ({
    name,
    auto: !(isObject(settings) && settings.auto === false),
    settings,
  }));
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Keys of an entry that are neither the engine's nor the target's. */
const OWN: OptionSchema = {
  auto: { type: 'boolean', describe: 'false: only `up NAME` brings it up, not `up --all`' },
  comment: { type: 'string', describe: 'ignored' },
};

export interface ConfiguredDevice {
  spec: TargetSpec;
  serve: Omit<DaemonOptions, 'log'>;
}

/** An entry as `add` would take it: every key known, every value of the type and range `add` allows. */
export async function configuredDevice(file: string, entry: ConfigEntry): Promise<ConfiguredDevice> {
  const name = checkName(entry.name);
  const where = `(${file})`;
  const s = entry.settings;
  if (!isObject(s)) throw new UserError(`must be an object of options, like {"target": "null", "size": "1G"}, not ${JSON.stringify(s)} ${where}`);
  if (typeof s.target !== 'string') throw new UserError(`target is missing or not a string (one of: ${targetNames().join(', ')}) ${where}`);
  const spec = await loadTarget(s.target);
  // A target given by path is served from that path, never by the name its module declares (a built-in's, maybe).
  const byPath = isTargetPath(s.target);
  const engine = engineOptions(targetNames());
  // The target's own first: they are what a mistake is most likely about.
  const known: OptionSchema = { target: engine.target, ...spec.options, ...engine, ...OWN };
  if (byPath) known.target = { type: 'string' }; // not one of the built-ins' names
  for (const key of Object.keys(s))
    if (!(key in known)) {
      const kebab = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
      const hint = kebab in known ? `did you mean "${kebab}"?` : `a ${spec.name} device takes: ${Object.keys(known).join(', ')}`;
      throw new UserError(`unknown key "${key}" (${hint}) ${where}`);
    }
  const values: Record<string, unknown> = {};
  for (const [key, o] of Object.entries(known)) values[key] = key in s ? valueOf(key, o, s[key], where) : o.default;
  // Each in its range already (valueOf).
  const whole = (key: string) => values[key] as number | undefined;
  return {
    spec,
    serve: {
      name,
      target: byPath ? path.resolve(s.target) : spec.name,
      targetOptions: Object.fromEntries(Object.keys(spec.options).map((k) => [k, values[k]])),
      id: whole('number'),
      queues: whole('queues'),
      depth: whole('depth') ?? DEFAULT_DEPTH,
      mode: values['data-mode'] as DataMode | 'auto',
      recovery: values.recovery !== false,
      restart: whole('restart'),
      partScan: values['part-scan'] === true,
    },
  };
}

/** A value as the command line would have parsed it: of the option's type, one of its choices. */
function valueOf(key: string, o: OptionSpec, v: unknown, where: string): unknown {
  const bad = (what: string) => new UserError(`${key} must be ${what}, not ${JSON.stringify(v)} ${where}`);
  let value = v;
  if (o.array === true) {
    const list = Array.isArray(v) ? v : [v];
    if (!list.every((x) => typeof x === 'string' || typeof x === 'number')) throw bad('a list of strings');
    return list.map(String);
  }
  if (o.type === 'boolean') {
    if (typeof v !== 'boolean') throw bad('true or false');
  } else if (o.type === 'number') {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw bad('a number');
  } else if (typeof v === 'number') {
    value = String(v); // a size may be written as a number of bytes
  } else if (typeof v !== 'string') {
    throw bad('a string');
  }
  const choices = o.choices as unknown[] | undefined;
  if (choices && !choices.includes(value)) throw bad(`one of: ${choices.join(', ')}`);
  if (o.range)
    try {
      wholeIn(key, value, o.range);
    } catch (e) {
      throw new UserError(`${oneLine(e)} ${where}`);
    }
  return value;
}
