#!/usr/bin/env node
// ublk-ts: the command line. Arguments are checked before the kernel is asked anything; every error is one
// line (JSON on stderr with --json) whose kind picks the exit status (README: Exit status).
import path from 'node:path';
import yargs, { type Argv, type Options } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { allowedModes, chooseMode, flagNames, getFeatures, requireAccess, requireDriver } from './features.js';
import { DEFAULT_DEPTH, engineOptions, LIMITS } from './device-options.js';
import { deleteDevice, listDevices, kernelDeviceIds } from './lifecycle.js';
import { isTargetPath, loadAllTargets, loadTarget } from './targets.js';
import { formatSize, parseSize } from './size.js';
import { errorKind, EXIT_STATUS, oneLine, UserError } from './errors.js';
import { checkTarget, missingCommand, noRepeats, rawValue, usageMessage, valueRequired, verbOf, wantsJson, wholeNumber, type UsageContext } from './usage.js';
import type { DataMode } from './native.js';
import { checkName, configPath, DEFAULT_CONFIG } from './config.js';
import { readRecords, recordByName, servesDevice } from './state.js';
import { inUseOrder } from './device-uses.js';
import type { Outcome } from './updown.js';
import type { GcOutcome } from './gc.js';
import type { TargetSpec } from './target.js';
import { targetVerbCommand } from './target-verbs.js';
import { describedRanges } from './option-schema.js';

const argv = hideBin(process.argv);
const json = wantsJson(argv);
const COMMANDS = ['features', 'list', 'add', 'del', 'recover', 'upgrade', 'gc', 'resize', 'up', 'down', 'stats'] as const;
const NO_COMMAND = 'no command';
const WATCH_RANGE = [0.1, 3600] as const;
const COUNT_RANGE = [1, 4096] as const;
/** `add --count`: targets whose devices have nothing of their own to share (no file, leg or export). */
const NO_BACKING = ['null', 'memory'];

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
    ...engineOptions(targets.map((t) => t.name)),
    foreground: { type: 'boolean', default: false, describe: 'serve in this process until signalled' },
    count: { type: 'number', describe: `add N devices alike, ${COUNT_RANGE.join('..')} (targets ${NO_BACKING.join(', ')}); one server process each` },
  };
  if (chosen) return valueRequired(describedRanges({ ...own, ...chosen.options }));
  // A name two targets share (size) means the same thing in both.
  const merged: Record<string, Options> = {};
  for (const t of targets)
    for (const [k, o] of Object.entries(t.options)) {
      const takers = targets.filter((x) => k in x.options).map((x) => x.name);
      merged[k] = takers.length === targets.length ? o : { ...o, describe: `${o.describe ?? ''} (target ${takers.join(', ')})`.trim() };
    }
  return valueRequired(describedRanges({ ...own, ...merged }));
}

/** A device's long work (a mirror's resync) in a few words, from its target's progress hook. */
function progressOf(specs: TargetSpec[], d: { target?: string; info?: Record<string, unknown> }): string | undefined {
  return d.info ? specs.find((t) => t.name === d.target)?.progress?.(d.info) : undefined;
}

const bracketed = (s: string | undefined) => (s ? `  [${s}]` : '');

/** up and down: NAME... or --all, not both. */
function namesOrAll(verb: string, a: Record<string, unknown>): true {
  const names = Array.isArray(a.names) ? a.names.map(String) : [];
  if (names.length === 0 && a.all !== true) throw new UserError(`${verb} needs NAME (a device in the config file) or --all`);
  if (names.length > 0 && a.all === true) throw new UserError(`${verb} takes NAME or --all, not both`);
  names.forEach(checkName);
  return true;
}

/**
 * Runs up or down and says how each device went as soon as it is known: done on stdout, failed on stderr
 * (one line each). The exit status is that of the first failure; the others still went ahead.
 */
async function upOrDown(verb: 'up' | 'down', a: Record<string, unknown>): Promise<void> {
  const { up, down } = await import('./updown.js');
  const file = configPath(typeof a.config === 'string' ? a.config : undefined);
  const names = a.all === true ? 'all' : Array.isArray(a.names) ? a.names.map(String) : [];
  const said: Record<Outcome['state'], (o: Outcome) => string> = {
    up: (o) => `${o.name}: up, ${o.path} -> ${o.blockDevice}`,
    'already-up': (o) => `${o.name}: already up, ${o.path} -> ${o.blockDevice}`,
    recovered: (o) => `${o.name}: recovered (a new server for the device whose server had died), ${o.path} -> ${o.blockDevice}`,
    down: (o) => `${o.name}: down (was ${o.blockDevice})`,
    'already-down': (o) => `${o.name}: already down`,
    failed: (o) => o.error ?? o.name,
  };
  const outcomes = await (verb === 'up' ? up : down)(file, names, (o) => {
    if (o.state === 'failed') console.error(json ? JSON.stringify({ error: o.error, code: o.code }) : `ublk-ts: ${o.error}`);
    else if (!json) console.log(said[o.state](o));
  });
  if (json) print({ devices: outcomes }, () => '');
  else if (outcomes.length === 0) console.log(verb === 'up' ? `no devices to bring up in ${file}` : 'no devices up (none that up brought up)');
  const first = outcomes.find((o) => o.state === 'failed');
  if (first) process.exitCode = EXIT_STATUS[first.code ?? 'other'];
}

/** --watch: seconds, fractions allowed. */
function seconds(v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const [min, max] = WATCH_RANGE;
  if (typeof v === 'number' && v >= min && v <= max) return v;
  const raw = rawValue(argv, ['watch', 'w']) ?? String(v);
  throw new UserError(`--watch must be a number of seconds from ${min} to ${max}, not "${raw}"`);
}

async function main(): Promise<void> {
  const verb = verbOf(argv);
  const command = COMMANDS.find((c) => c === verb);
  // Target modules are loaded only for `add`: every other verb starts faster without them (it matters
  // under emulation, where `del` must answer while the device is busy).
  const targets = command === 'add' ? await loadAllTargets() : [];
  // `ublk-ts mirror fail -n 0 --leg 2`: a target's own verbs (TargetSpec.verbs).
  const verbTarget = command === undefined && verb !== undefined ? (await loadAllTargets()).find((t) => t.name === verb && t.verbs) : undefined;
  // The target decides which options `add` takes; given twice, it is refused once parsed (noRepeats).
  const once = argv.filter((t) => t === '--target' || t.startsWith('--target=')).length === 1;
  const targetArg = once ? rawValue(argv, ['target']) : undefined;
  // A target of the user's own, given by path, joins the package's ones under that path as its name.
  if (command === 'add' && targetArg !== undefined && isTargetPath(targetArg))
    targets.push({ ...(await loadTarget(targetArg)), name: targetArg });
  const chosen = targetArg !== undefined ? targets.find((t) => t.name === targetArg) : undefined;
  const ADD = addOptions(targets, chosen);
  const DEL: Record<string, Options> = valueRequired({
    number: { alias: 'n', type: 'number', describe: 'device id' },
    all: { alias: 'a', type: 'boolean', default: false, describe: 'every ublk device' },
    force: { type: 'boolean', default: false, describe: 'stop it even if it is mounted or open (by default such a device is left up)' },
  });
  const FEATURES: Record<string, Options> = valueRequired({
    number: { alias: 'n', type: 'number', describe: 'a device: the flags ADD_DEV asked for and those the kernel granted' },
  });
  const RESIZE: Record<string, Options> = valueRequired({
    number: { alias: 'n', type: 'number', demandOption: true, describe: 'device id' },
    size: { type: 'string', demandOption: true, describe: 'the new size, e.g. 20G (the backing file grows first; it never shrinks)' },
    force: { type: 'boolean', default: false, describe: 'allow shrinking: what is stored past the new size is cut off' },
  });
  const RECOVER: Record<string, Options> = valueRequired({
    number: { alias: 'n', type: 'number', demandOption: true, describe: 'device id' },
  });
  const UPGRADE: Record<string, Options> = valueRequired({
    number: { alias: 'n', type: 'number', describe: 'device id' },
    all: { alias: 'a', type: 'boolean', default: false, describe: 'every device whose server runs (those that cannot be upgraded are left, said why)' },
  });
  const GC: Record<string, Options> = {
    'dry-run': { type: 'boolean', default: false, describe: 'say what gc would do, and do nothing' },
  };
  const UPDOWN: Record<string, Options> = valueRequired({
    all: { alias: 'a', type: 'boolean', default: false, describe: 'up: every device in the file (but those with "auto": false); down: every device up brought up' },
    config: { type: 'string', describe: `the config file (default: $UBLK_TS_CONFIG or ${DEFAULT_CONFIG}; see ublk-ts.conf(5))` },
  });
  const STATS: Record<string, Options> = valueRequired({
    number: { alias: 'n', type: 'number', describe: 'device id (default: every device)' },
    watch: { alias: 'w', type: 'number', describe: `a report every SECONDS (${WATCH_RANGE.join('..')}) until interrupted` },
    count: { alias: 'c', type: 'number', describe: 'with --watch: stop after N reports' },
  });
  const byCommand: Record<(typeof COMMANDS)[number], Record<string, Options>> = {
    features: FEATURES,
    list: {},
    add: ADD,
    del: DEL,
    recover: RECOVER,
    upgrade: UPGRADE,
    gc: GC,
    resize: RESIZE,
    up: UPDOWN,
    down: UPDOWN,
    stats: STATS,
  };
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
      "print the kernel's ublk feature flags and the data modes it allows; with -n, a device's flags asked and granted",
      (y: Argv) => y.options(FEATURES),
      async (a) => {
        noRepeats(ctx, a);
        const id = wholeNumber(ctx, 'number', a.number, ...LIMITS.number);
        requireDriver('features');
        if (id !== undefined) {
          const { deviceFeatures } = await import('./lifecycle.js');
          const d = await deviceFeatures(id);
          const names = [...new Set([...(d.askedFlags ?? []), ...d.gotFlags])];
          const yes = (on: boolean | undefined) => (on === undefined ? '?' : on ? 'yes' : 'no');
          print(d, () =>
            [
              `/dev/ublkb${id}: asked ${d.asked === undefined ? 'unknown (not added by ublk-ts)' : `0x${d.asked.toString(16)}`}, got 0x${d.got.toString(16)}`,
              `  ${'FLAG'.padEnd(24)} ASKED  GOT`,
              ...names.map((n) => `  ${n.padEnd(24)} ${yes(d.askedFlags?.includes(n)).padEnd(6)} ${yes(d.gotFlags.includes(n))}`),
            ].join('\n'),
          );
          return;
        }
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
      "list ublk devices: id, state, whether its server runs (live, dead, quiesced: waiting for one, foreign: another tool's), target, data mode, queues, depth, size, server pid",
      (y: Argv) => y,
      async () => {
        requireDriver('list');
        await getFeatures(); // says clearly when the driver does not answer
        const devs = await listDevices();
        const specs = json ? [] : await loadAllTargets();
        print(devs, () =>
          devs.length === 0
            ? 'no ublk devices'
            : [
                'ID  DEVICE        NAME          STATE  SERVER    TARGET  MODE        QUEUES  DEPTH  SIZE    PID     VERSION           BACKING',
                ...devs.map((d) =>
                  [
                    String(d.id).padEnd(3),
                    d.blockDevice.padEnd(13),
                    (d.name ?? '-').padEnd(13),
                    d.state.padEnd(6),
                    d.server.padEnd(9),
                    (d.target ?? '?').padEnd(7),
                    (d.mode ?? '?').padEnd(11),
                    String(d.queues).padEnd(7),
                    String(d.depth).padEnd(6),
                    formatSize(d.size).padEnd(7),
                    String(d.pid).padEnd(7),
                    (d.version ?? '-').padEnd(17),
                    (d.info?.file ? `${d.info.file}${d.info.direct ? ' (direct)' : ' (buffered)'}` : '') + bracketed(progressOf(specs, d)),
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
        for (const [k, o] of Object.entries(spec.options)) if (o.range) wholeNumber(ctx, k, a[k], ...o.range);
        const o = {
          // The server process loads a target given by path itself, from wherever it runs.
          target: isTargetPath(spec.name) ? path.resolve(spec.name) : spec.name,
          targetOptions,
          // Checked here so that a mistake is reported before the server starts (the server checks them too).
          id: wholeNumber(ctx, 'number', a.number, ...LIMITS.number),
          queues: wholeNumber(ctx, 'queues', a.queues, ...LIMITS.queues),
          depth: wholeNumber(ctx, 'depth', a.depth, ...LIMITS.depth) ?? DEFAULT_DEPTH,
          mode: a['data-mode'] as DataMode | 'auto',
          recovery: a.recovery !== false,
          restart: wholeNumber(ctx, 'restart', a.restart, ...LIMITS.restart),
          partScan: a['part-scan'] === true,
        };
        if (o.restart && !o.recovery) throw new UserError('--restart needs recovery: drop --no-recovery');
        if (o.restart && a.foreground) throw new UserError('--restart runs a supervisor in the background: drop --foreground');
        const count = wholeNumber(ctx, 'count', a.count, ...COUNT_RANGE) ?? 1;
        if (count > 1 && !NO_BACKING.includes(spec.name))
          throw new UserError(`--count adds devices that share nothing: target ${NO_BACKING.join(' or ')} (each ${spec.name} device needs its own add)`);
        if (count > 1 && o.id !== undefined) throw new UserError('--count takes the first free ids: drop -n');
        if (count > 1 && a.foreground) throw new UserError('--count serves its devices in the background: drop --foreground');
        const undo = await checkTarget(spec, targetOptions, o.mode);
        // A refused add leaves no file behind: not when the driver is missing, nor when the server failed.
        const orUndo = async <T>(step: () => T | Promise<T>): Promise<T> => {
          try {
            return await step();
          } catch (e) {
            undo();
            throw e;
          }
        };
        await orUndo(() => requireDriver('add'));
        const { addDevice, addDevices, startForeground } = await import('./lifecycle.js');
        if (a.foreground) {
          const { serveUntilStopped } = await import('./server.js');
          const server = await orUndo(() => startForeground({ ...o, log: '-' }));
          print(server.record, () => server.record.blockDevice);
          await serveUntilStopped(server, (l) => console.error(l));
          return;
        }
        if (count > 1) {
          const recs = await addDevices(o, count);
          print(recs, () => recs.map((r) => r.blockDevice).join('\n'));
          return;
        }
        const rec = await orUndo(() => addDevice(o));
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
        const id = wholeNumber(ctx, 'number', a.number, ...LIMITS.number);
        requireDriver('del');
        const safe = a.force !== true;
        if (id !== undefined) {
          await deleteDevice(id, { safe });
          print({ deleted: [id], left: [] }, () => `deleted /dev/ublkb${id}`);
          return;
        }
        // --all: a device in use is left up and said on stderr, the others go; the status says some were left.
        const deleted: number[] = [];
        const left: number[] = [];
        // One over another first: the one under it is open until it goes, and would be left as busy.
        const ids = kernelDeviceIds();
        const recs = inUseOrder(readRecords().filter((r) => ids.includes(r.id)), 'over');
        for (const i of [...recs.map((r) => r.id), ...ids.filter((x) => !recs.some((r) => r.id === x))]) {
          try {
            await deleteDevice(i, { safe });
            deleted.push(i);
          } catch (e) {
            if (errorKind(e) !== 'busy') throw e;
            left.push(i);
            console.error(json ? JSON.stringify({ error: oneLine(e), code: 'busy' }) : `ublk-ts: ${oneLine(e)}`);
          }
        }
        print({ deleted, left }, () => (deleted.length ? deleted.map((i) => `deleted /dev/ublkb${i}`).join('\n') : left.length ? 'no devices deleted' : 'no devices'));
        if (left.length) process.exitCode = EXIT_STATUS.busy;
      },
    )
    .command(
      'recover',
      "start a new server for a device whose server died (added with recovery): it re-attaches with the device's saved options",
      (y: Argv) => y.options(RECOVER),
      async (a) => {
        noRepeats(ctx, a);
        const id = wholeNumber(ctx, 'number', a.number, ...LIMITS.number)!;
        requireDriver('recover');
        const { recoverDevice } = await import('./lifecycle.js');
        const rec = await recoverDevice(id);
        print(rec, () => `recovered ${rec.blockDevice} (server pid ${rec.pid})`);
      },
    )
    .command(
      'upgrade',
      'replace a running server by one started from the code installed now, with no IO failed or lost (the device stays up)',
      (y: Argv) =>
        y.options(UPGRADE).check((a) => {
          if (a.number === undefined && !a.all) throw new UserError('upgrade needs -n N (a device id) or --all');
          if (a.number !== undefined && a.all) throw new UserError('upgrade takes -n N or --all, not both');
          return true;
        }),
      async (a) => {
        noRepeats(ctx, a);
        const id = wholeNumber(ctx, 'number', a.number, ...LIMITS.number);
        requireDriver('upgrade');
        const { describe, upgradeAll, upgradeDevice } = await import('./upgrade.js');
        if (id !== undefined) {
          const u = await upgradeDevice(id);
          print(u, () => describe(u));
          return;
        }
        const all = await upgradeAll((i, reason) => {
          if (!json) console.error(`ublkb${i}: left as it is: ${reason}`);
        });
        print(all, () => (all.upgraded.length ? all.upgraded.map(describe).join('\n') : 'no devices upgraded'));
      },
    )
    .command(
      'gc',
      "after a crash: recover each device of ours whose server is gone if it can be, else delete it; remove stale records; never touch a live device or another tool's",
      (y: Argv) => y.options(GC),
      async (a) => {
        noRepeats(ctx, a);
        requireDriver('gc');
        const dryRun = a['dry-run'] === true;
        const { gc } = await import('./gc.js');
        const would = (done: string, dry: string) => (dryRun ? dry : done);
        const said: Record<GcOutcome['action'], (o: GcOutcome) => string> = {
          left: (o) => `left alone (${o.why}${o.pid !== undefined ? `, pid ${o.pid}` : ''})`,
          recovered: (o) => would(`recovered (new server pid ${o.pid})`, 'would recover'),
          deleted: () => would('deleted', 'would delete'),
          'removed-record': (o) => would(`removed its record (${o.why})`, `would remove its record (${o.why})`),
          failed: (o) => `${o.server === 'quiesced' ? 'recover' : 'delete'} failed: ${o.why}`,
        };
        const line = (o: GcOutcome) => `${o.blockDevice}: ${o.server === 'gone' ? 'no device' : o.server}, ${said[o.action](o)}`;
        const outcomes = await gc(dryRun, (o) => {
          if (json) return;
          if (o.action === 'failed') console.error(`ublk-ts: ${line(o)}`);
          else console.log(line(o));
        });
        if (json) print({ dryRun, devices: outcomes }, () => '');
        else if (outcomes.length === 0) console.log('no devices and no records');
        const first = outcomes.find((o) => o.action === 'failed');
        if (first) process.exitCode = EXIT_STATUS[first.code ?? 'other'];
      },
    )
    .command(
      'resize',
      'change a running device\'s size (UPDATE_SIZE): the backing grows first; shrinking needs --force',
      (y: Argv) => y.options(RESIZE),
      async (a) => {
        noRepeats(ctx, a);
        const id = wholeNumber(ctx, 'number', a.number, ...LIMITS.number)!;
        const size = parseSize(String(a.size));
        requireDriver('resize');
        const { resizeDevice } = await import('./resize.js');
        const r = await resizeDevice(id, size, a.force === true);
        print(r, () => `resized ${r.blockDevice}: ${formatSize(r.from)} -> ${formatSize(r.to)}`);
      },
    )
    .command(
      'up [names..]',
      'bring up devices named in the config file, each at /dev/ublk-ts/NAME; one already up is left as it is',
      (y: Argv) =>
        y
          .positional('names', { type: 'string', describe: 'devices in the config file' })
          .options(UPDOWN)
          .check((a) => namesOrAll('up', a)),
      async (a) => {
        noRepeats(ctx, a);
        requireAccess('up'); // a device that fails alone would say it once per device, less clearly
        await upOrDown('up', a);
      },
    )
    .command(
      'down [names..]',
      'stop and delete devices that up brought up, and their /dev/ublk-ts/NAME',
      (y: Argv) =>
        y
          .positional('names', { type: 'string', describe: 'devices brought up by up' })
          .options(UPDOWN)
          .check((a) => namesOrAll('down', a)),
      async (a) => {
        noRepeats(ctx, a);
        await upOrDown('down', a);
      },
    )
    .command(
      'stats [name]',
      "IOPS, bandwidth and requests in flight (the block layer's counters) and the server's own counters",
      (y: Argv) =>
        y
          .positional('name', { type: 'string', describe: 'a device up brought up (or -n N)' })
          .options(STATS)
          .check((a) => {
            if (a.name !== undefined && a.number !== undefined) throw new UserError('stats takes NAME or -n N, not both');
            if (a.count !== undefined && a.watch === undefined) throw new UserError('--count needs --watch SECONDS');
            return true;
          }),
      async (a) => {
        noRepeats(ctx, a);
        const id = wholeNumber(ctx, 'number', a.number, ...LIMITS.number);
        const count = wholeNumber(ctx, 'count', a.count, 1, Number.MAX_SAFE_INTEGER);
        const watch = seconds(a.watch);
        const name = a.name === undefined ? undefined : checkName(String(a.name));
        requireDriver('stats');
        const { blockDeviceIds } = await import('./stats.js');
        const { runStats } = await import('./stats-report.js');
        const specs = await loadAllTargets();
        let ids = blockDeviceIds;
        if (name !== undefined) {
          const rec = recordByName(name);
          if (!rec || !servesDevice(rec.pid, rec.id)) throw new UserError(`no device named "${name}" is up (\`ublk-ts list\` shows the names)`, 'not-found');
          ids = () => [rec.id];
        } else if (id !== undefined) {
          if (!blockDeviceIds().includes(id)) throw new UserError(`-n ${id}: no such ublk device (\`ublk-ts list\` shows them)`, 'not-found');
          ids = () => [id];
        }
        await runStats({
          ids,
          fixed: name !== undefined || id !== undefined,
          seconds: watch ?? 1,
          count: watch === undefined ? 1 : count,
          json,
          watching: watch !== undefined,
          redraw: watch !== undefined && !json && process.stdout.isTTY === true,
          write: (t) => console.log(t),
          progress: (rec) => progressOf(specs, rec),
        });
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
  if (verbTarget) cli.command(targetVerbCommand(verbTarget, json, print));
  await cli.parseAsync();
}

main().catch((e: unknown) => {
  const kind = errorKind(e);
  const message = oneLine(e);
  console.error(json ? JSON.stringify({ error: message, code: kind }) : `ublk-ts: ${message}`);
  process.exit(EXIT_STATUS[kind]);
});
