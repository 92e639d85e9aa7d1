#!/usr/bin/env node
// ublk-ts: the command line. Arguments are checked before the kernel is asked anything; every error is one
// line (JSON on stderr with --json) whose kind picks the exit status (README: Exit status).
import yargs, { type Argv, type Options } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { allowedModes, chooseMode, flagNames, getFeatures, requireDriver, DATA_MODES } from './features.js';
import { deleteDevice, listDevices, kernelDeviceIds } from './lifecycle.js';
import { loadAllTargets } from './targets.js';
import { formatSize } from './size.js';
import { errorKind, EXIT_STATUS, oneLine, UserError } from './errors.js';
import { checkTarget, missingCommand, noRepeats, rawValue, usageMessage, valueRequired, verbOf, wantsJson, wholeNumber, type UsageContext } from './usage.js';
import type { DataMode } from './native.js';
import type { TargetSpec } from './target.js';

const argv = hideBin(process.argv);
const json = wantsJson(argv);
const COMMANDS = ['features', 'list', 'add', 'del'] as const;
const NO_COMMAND = 'no command';
// Checked here so that a mistake is reported before the server starts (the server checks them too).
const MAX_QUEUES = 64;
const MAX_DEPTH = 4096;
// ADD_DEV refuses ids from UBLK_MAX_UBLKS (1 << MINORBITS) up.
const MAX_DEV_ID = (1 << 20) - 1;

const GLOBAL: Record<string, Options> = {
  json: { type: 'boolean', default: false, describe: 'machine-readable output; errors go to stderr as {"error", "code"}' },
};

function print(value: unknown, text: () => string): void {
  console.log(json ? JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v), 2) : text());
}

/**
 * The options of `add`: its own, then the chosen target's. Before a valid --target is known (help, or a
 * mistake in --target itself) every target's options are there, each marked with the targets that take it.
 */
function addOptions(targets: TargetSpec[], chosen: TargetSpec | undefined): Record<string, Options> {
  const own: Record<string, Options> = {
    target: { type: 'string', choices: targets.map((t) => t.name), demandOption: true, describe: 'backend' },
    number: { alias: 'n', type: 'number', describe: 'device id (default: first free)' },
    queues: { alias: 'q', type: 'number', describe: `hardware queues, 1..${MAX_QUEUES} (default: CPUs)` },
    depth: { alias: 'd', type: 'number', default: 128, describe: `queue depth, 1..${MAX_DEPTH}` },
    'data-mode': { type: 'string', choices: ['auto', ...DATA_MODES], default: 'auto', describe: 'how request data moves' },
    foreground: { type: 'boolean', default: false, describe: 'serve in this process until signalled' },
  };
  if (chosen) return valueRequired({ ...own, ...chosen.options });
  // A name two targets share (size) means the same thing in both.
  const merged: Record<string, Options> = {};
  for (const t of targets)
    for (const [k, o] of Object.entries(t.options)) {
      const takers = targets.filter((x) => k in x.options).map((x) => x.name);
      merged[k] = takers.length === targets.length ? o : { ...o, describe: `${o.describe ?? ''} (target ${takers.join(', ')})`.trim() };
    }
  return valueRequired({ ...own, ...merged });
}

async function main(): Promise<void> {
  const verb = verbOf(argv);
  const command = COMMANDS.find((c) => c === verb);
  // Target modules are loaded only for `add`: every other verb starts faster without them (it matters
  // under emulation, where `del` must answer while the device is busy).
  const targets = command === 'add' ? await loadAllTargets() : [];
  // The target decides which options `add` takes; given twice, it is refused once parsed (noRepeats).
  const once = argv.filter((t) => t === '--target' || t.startsWith('--target=')).length === 1;
  const chosen = once ? targets.find((t) => t.name === rawValue(argv, ['target'])) : undefined;
  const ADD = addOptions(targets, chosen);
  const DEL: Record<string, Options> = valueRequired({
    number: { alias: 'n', type: 'number', describe: 'device id' },
    all: { alias: 'a', type: 'boolean', default: false, describe: 'every ublk device' },
  });
  const byCommand: Record<(typeof COMMANDS)[number], Record<string, Options>> = { features: {}, list: {}, add: ADD, del: DEL };
  const foreign = new Map<string, string[]>();
  if (chosen)
    for (const t of targets)
      for (const k of Object.keys(t.options)) if (!(k in chosen.options)) foreign.set(k, [...(foreign.get(k) ?? []), t.name]);
  const ctx: UsageContext = {
    argv,
    commands: COMMANDS,
    command,
    options: { ...(command ? byCommand[command] : {}), ...GLOBAL },
    target: chosen?.name,
    targetOwn: chosen ? Object.keys(chosen.options) : undefined,
    foreign,
  };

  const cli = yargs(argv)
    .scriptName('ublk-ts')
    // English messages, so that they can be restated (usageMessage).
    .locale('en')
    .strict()
    .options(GLOBAL)
    .command(
      'features',
      "print the kernel's ublk feature flags and the data modes it allows",
      (y: Argv) => y,
      async () => {
        const f = await getFeatures();
        const modes = allowedModes(f);
        print({ features: f, flags: flagNames(f), dataModes: modes, defaultMode: chooseMode('auto', f) }, () =>
          [
            `features: 0x${f.toString(16)}`,
            ...flagNames(f).map((n) => `  ${n}`),
            `data modes: ${modes.join(', ')} (default: ${chooseMode('auto', f)})`,
          ].join('\n'),
        );
      },
    )
    .command(
      'list',
      'list ublk devices: id, state, target, data mode, queues, depth, size, server pid',
      (y: Argv) => y,
      async () => {
        await getFeatures(); // says clearly when there is no driver
        const devs = await listDevices();
        print(devs, () =>
          devs.length === 0
            ? 'no ublk devices'
            : [
                'ID  DEVICE        STATE  TARGET  MODE        QUEUES  DEPTH  SIZE    PID     BACKING',
                ...devs.map((d) =>
                  [
                    String(d.id).padEnd(3),
                    d.blockDevice.padEnd(13),
                    d.state.padEnd(6),
                    (d.target ?? '?').padEnd(7),
                    (d.mode ?? '?').padEnd(11),
                    String(d.queues).padEnd(7),
                    String(d.depth).padEnd(6),
                    formatSize(d.size).padEnd(7),
                    String(d.pid).padEnd(7),
                    d.info?.file ? `${d.info.file}${d.info.direct ? ' (direct)' : ' (buffered)'}` : '',
                  ].join(' '),
                ),
              ].join('\n'),
        );
      },
    )
    .command(
      'add',
      'create a device and serve it in the background',
      (y: Argv) => y.options(ADD),
      async (a) => {
        noRepeats(ctx, a);
        const spec = targets.find((t) => t.name === a.target);
        if (!spec) throw new UserError(`--target must be one of: ${targets.map((t) => t.name).join(', ')}`);
        const targetOptions = Object.fromEntries(Object.keys(spec.options).map((k) => [k, a[k]]));
        const o = {
          target: spec.name,
          targetOptions,
          id: wholeNumber(ctx, 'number', a.number, 0, MAX_DEV_ID),
          queues: wholeNumber(ctx, 'queues', a.queues, 1, MAX_QUEUES),
          depth: wholeNumber(ctx, 'depth', a.depth, 1, MAX_DEPTH) ?? 128,
          mode: a['data-mode'] as DataMode | 'auto',
        };
        const undo = await checkTarget(spec, targetOptions);
        try {
          requireDriver();
        } catch (e) {
          undo(); // a refused add leaves no file behind
          throw e;
        }
        const { addDevice, startForeground } = await import('./lifecycle.js');
        if (a.foreground) {
          const { serveUntilStopped } = await import('./server.js');
          const server = await startForeground({ ...o, log: '-' });
          print(server.record, () => server.record.blockDevice);
          await serveUntilStopped(server, (l) => console.error(l));
          return;
        }
        const rec = await addDevice(o);
        print(rec, () => rec.blockDevice);
      },
    )
    .command(
      'del',
      'stop and delete devices',
      (y: Argv) =>
        y.options(DEL).check((a) => {
          if (a.number === undefined && !a.all) throw new UserError('del needs -n N (a device id) or --all');
          if (a.number !== undefined && a.all) throw new UserError('del takes -n N or --all, not both');
          return true;
        }),
      async (a) => {
        noRepeats(ctx, a);
        const id = wholeNumber(ctx, 'number', a.number, 0, MAX_DEV_ID);
        requireDriver();
        const ids = a.all || id === undefined ? kernelDeviceIds() : [id];
        for (const i of ids) await deleteDevice(i);
        print({ deleted: ids }, () => (ids.length ? ids.map((i) => `deleted /dev/ublkb${i}`).join('\n') : 'no devices'));
      },
    )
    .demandCommand(1, NO_COMMAND)
    .help()
    .fail((msg: string | null, err: Error | undefined) => {
      // yargs' own complaints come as a message or a YError; anything else was thrown by a check or a handler.
      if (err && err.name !== 'YError') throw err;
      if (msg === NO_COMMAND) throw new UserError(missingCommand(ctx));
      throw new UserError(usageMessage(msg || err?.message || 'bad arguments', ctx));
    });
  await cli.parseAsync();
}

main().catch((e: unknown) => {
  const kind = errorKind(e);
  const message = oneLine(e);
  console.error(json ? JSON.stringify({ error: message, code: kind }) : `ublk-ts: ${message}`);
  process.exit(EXIT_STATUS[kind]);
});
