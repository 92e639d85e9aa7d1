// `ublk-ts <target> <verb> -n N`: the verbs a target declares (TargetSpec.verbs), sent to the device's
// server over its control socket, and `<target> status [--watch S]`, read from the device's record.
import type { Argv, CommandModule, Options } from 'yargs';
import type { TargetSpec } from './target.js';
import { readRecord, servesDevice } from './state.js';
import { askServer } from './control.js';
import { UserError } from './errors.js';

type Print = (value: unknown, text: () => string) => void;

const WATCH_MAX_S = 3600;

function deviceOf(spec: TargetSpec, a: Record<string, unknown>) {
  const id = a.number;
  if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw new UserError(`-n must be a device id, not "${String(id)}"`);
  const rec = readRecord(id);
  if (!rec || !servesDevice(rec.pid, rec.id)) throw new UserError(`-n ${id}: no running ${spec.name} device with that id (\`ublk-ts list\` shows them)`, 'not-found');
  if (rec.target !== spec.name) throw new UserError(`-n ${id} is a ${rec.target} device, not a ${spec.name}`);
  return rec;
}

async function status(spec: TargetSpec, a: Record<string, unknown>, json: boolean, print: Print): Promise<void> {
  const watch = a.watch;
  if (watch !== undefined && (typeof watch !== 'number' || !(watch > 0 && watch <= WATCH_MAX_S)))
    throw new UserError(`--watch must be a number of seconds up to ${WATCH_MAX_S}, not "${String(watch)}"`);
  const redraw = watch !== undefined && !json && process.stdout.isTTY === true;
  for (;;) {
    const rec = deviceOf(spec, a);
    const lines = () => `ublkb${rec.id}: ${spec.describeStatus ? spec.describeStatus(rec.info) : JSON.stringify(rec.info)}`;
    if (redraw) process.stdout.write('\x1b[H\x1b[2J');
    print({ id: rec.id, ...rec.info }, lines);
    if (watch === undefined) return;
    await new Promise((r) => setTimeout(r, (watch as number) * 1000));
  }
}

/** The yargs command of one target's verbs. */
export function targetVerbCommand(spec: TargetSpec, json: boolean, print: Print): CommandModule {
  const verbs = spec.verbs ?? {};
  const options: Record<string, Options> = {
    number: { alias: 'n', type: 'number', demandOption: true, describe: `a ${spec.name} device's id` },
    watch: { alias: 'w', type: 'number', describe: 'status: again every SECONDS until interrupted' },
  };
  for (const v of Object.values(verbs)) Object.assign(options, v.options);
  const list = ['status', ...Object.keys(verbs)];
  return {
    command: `${spec.name} <verb>`,
    describe: `a running ${spec.name}'s own verbs: ${list.join(', ')}`,
    builder: (y: Argv) =>
      y
        .positional('verb', { type: 'string', choices: list, describe: list.map((v) => `${v}: ${v === 'status' ? 'its live state' : verbs[v].describe}`).join('; ') })
        .options(options),
    handler: async (a: Record<string, unknown>) => {
      const verb = String(a.verb);
      if (verb === 'status') return status(spec, a, json, print);
      const rec = deviceOf(spec, a);
      const reply = await askServer(rec.id, verbs[verb].command(a));
      if (!reply.ok) throw new UserError(`ublkb${rec.id}: ${reply.error ?? 'refused'}`);
      print({ id: rec.id, ...reply }, () => `ublkb${rec.id}: ${reply.message ?? 'done'}`);
    },
  };
}
