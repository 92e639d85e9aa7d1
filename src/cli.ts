#!/usr/bin/env node
// ublk-ts: the command line.
import yargs, { type Argv, type Options } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { allowedModes, chooseMode, flagNames, getFeatures, requireDriver, DATA_MODES } from './features.js';
import { deleteDevice, listDevices, kernelDeviceIds } from './lifecycle.js';
import { loadAllTargets } from './targets.js';
import { formatSize } from './size.js';
import { UserError } from './errors.js';
import type { DataMode } from './native.js';

function print(json: boolean, value: unknown, text: () => string): void {
  console.log(json ? JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v), 2) : text());
}

async function main(): Promise<void> {
  // Target modules are loaded only for `add`: every other verb starts faster without them (it matters
  // under emulation, where `del` must answer while the device is busy).
  const targets = hideBin(process.argv).includes('add') ? await loadAllTargets() : [];
  const cli = yargs(hideBin(process.argv))
    .scriptName('ublk-ts')
    .strict()
    .option('json', { type: 'boolean', default: false, describe: 'machine-readable output' })
    .command(
      'features',
      "print the kernel's ublk feature flags and the data modes it allows",
      () => {},
      async (a) => {
        const f = await getFeatures();
        const modes = allowedModes(f);
        print(a.json as boolean, { features: f, flags: flagNames(f), dataModes: modes, defaultMode: chooseMode('auto', f) }, () =>
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
      () => {},
      async (a) => {
        await getFeatures(); // says clearly when there is no driver
        const devs = await listDevices();
        print(a.json as boolean, devs, () =>
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
      (y: Argv) =>
        y
          .option('target', { type: 'string', choices: targets.map((t) => t.name), demandOption: true, describe: 'backend' })
          .option('number', { alias: 'n', type: 'number', describe: 'device id (default: first free)' })
          .option('queues', { alias: 'q', type: 'number', describe: 'hardware queues (default: CPUs)' })
          .option('depth', { alias: 'd', type: 'number', default: 128, describe: 'queue depth' })
          .option('data-mode', { type: 'string', choices: ['auto', ...DATA_MODES], default: 'auto', describe: 'how request data moves' })
          .option('foreground', { type: 'boolean', default: false, describe: 'serve in this process until signalled' })
          // Targets' own options; a name two targets share (size) means the same thing in both.
          .options(Object.assign({}, ...targets.map((t) => t.options)) as Record<string, Options>),
      async (a) => {
        const spec = targets.find((t) => t.name === a.target)!;
        const targetOptions = Object.fromEntries(Object.keys(spec.options).map((k) => [k, a[k]]));
        const o = {
          target: spec.name,
          targetOptions,
          id: a.number as number | undefined,
          queues: a.queues as number | undefined,
          depth: a.depth as number,
          mode: a['data-mode'] as DataMode | 'auto',
        };
        const { addDevice, startForeground } = await import('./lifecycle.js');
        if (a.foreground) {
          const { serveUntilStopped } = await import('./server.js');
          const server = await startForeground({ ...o, log: '-' });
          print(a.json as boolean, server.record, () => server.record.blockDevice);
          await serveUntilStopped(server, (l) => console.error(l));
          return;
        }
        const rec = await addDevice(o);
        print(a.json as boolean, rec, () => rec.blockDevice);
      },
    )
    .command(
      'del',
      'stop and delete devices',
      (y: Argv) =>
        y
          .option('number', { alias: 'n', type: 'number', describe: 'device id' })
          .option('all', { alias: 'a', type: 'boolean', default: false, describe: 'every ublk device' })
          .check((a) => {
            if ((a.number === undefined) === !a.all) throw new UserError('give either -n N or --all');
            return true;
          }),
      async (a) => {
        requireDriver();
        const ids = a.all ? kernelDeviceIds() : [a.number as number];
        for (const id of ids) await deleteDevice(id);
        print(a.json as boolean, { deleted: ids }, () => (ids.length ? ids.map((i) => `deleted /dev/ublkb${i}`).join('\n') : 'no devices'));
      },
    )
    .demandCommand(1, 'give a command: features, list, add, del')
    .help()
    .fail((msg, err) => {
      throw err ?? new UserError(msg);
    });
  await cli.parseAsync();
}

main().catch((e: unknown) => {
  console.error(`ublk-ts: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
