// Bad input on the real driver, verb by verb and option by option: each case is refused with the exit status
// of its kind (README: Exit status) and one line on stderr that says what is wrong, and leaves nothing
// behind: the same `list --json`, no new server or CLI process, the same /dev/ublk* nodes and state files,
// and every file in the scratch folder as it was (none made, grown or touched).
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT_STATUS, type ErrorKind } from '../../src/errors.js';
import { listDevices } from '../../src/lifecycle.js';
import { CLI, cliJson, delAll, scratch, serverPids, sh, ublkDevices, type AddedDevice } from './helpers.js';

interface Case {
  name: string;
  args: string[];
  /** Run as nobody (uid and gid 65534, no groups) rather than as root. */
  nobody?: boolean;
  /** Makes what the case needs; the snapshot is taken after it. */
  setup?: () => void;
  code: ErrorKind;
  /** What the one line on stderr must say. */
  message: RegExp;
}

/** Kept up for the whole file: the id `add -n` finds in use, and a block device to back a file device. */
const IN_USE = 7;
const IN_USE_BYTES = 64 << 20;
const DIR = path.join('/tmp', 'ublk-ts-test', 'bad-input');
const at = (name: string) => path.join(DIR, name);
const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];
// Nothing listens on it in the guest (checked in beforeAll).
const CLOSED_PORT = 1;
const STATE_DIR = process.env.UBLK_TS_STATE_DIR ?? '/run/ublk-ts';

const writeConfig = (name: string, devices: unknown) => () => fs.writeFileSync(at(name), JSON.stringify({ devices }));
const add = (...args: string[]) => ['add', ...args, '--queues', '1'];
const queues = (v: string): Case => ({
  name: `add: --queues ${v}`,
  args: ['add', '--target', 'null', '--queues', v],
  code: 'usage',
  message: new RegExp(`--queues must be a whole number from 1 to \\d+, not "${v.replace('.', '\\.')}"`),
});
const depth = (v: string): Case => ({
  name: `add: --depth ${v}`,
  args: ['add', '--target', 'null', '--depth', v],
  code: 'usage',
  message: new RegExp(`--depth must be a whole number from 1 to 4096, not "${v}"`),
});
const asNobody = (verb: string, args: string[]): Case => ({
  name: `${verb} as nobody`,
  args,
  nobody: true,
  code: 'kernel',
  message: new RegExp(`^ublk-ts: ${verb} needs root: permission denied on /dev/ublk-control \\(EACCES\\)$`),
});

const CASES: Case[] = [
  // add: backing files that are missing, of the wrong kind, or not this user's to open
  { name: 'add: --file that does not exist', args: add('--target', 'file', '--file', at('missing.img')), code: 'usage', message: /missing\.img does not exist \(give --size to create it\)/ },
  { name: 'add: --file a directory', args: add('--target', 'file', '--file', at('dir'), '--size', '1M'), code: 'usage', message: /dir is neither a regular file nor a block device/ },
  { name: 'add: --file a character device (/dev/null)', args: add('--target', 'file', '--file', '/dev/null', '--size', '1M'), code: 'usage', message: /\/dev\/null is neither a regular file nor a block device/ },
  { name: 'add: --file a /proc file', args: add('--target', 'file', '--file', '/proc/cpuinfo'), code: 'usage', message: /\/proc\/cpuinfo is empty/ },
  {
    name: 'add: --file a /proc file, with --size',
    args: add('--target', 'file', '--file', '/proc/cpuinfo', '--size', '1M'),
    code: 'usage',
    // procfs takes the ftruncate that would grow the file and keeps its size.
    message: /\/proc\/cpuinfo cannot be grown to --size 1048576 \(it stays 0 bytes\)/,
  },
  { name: 'add: --file unreadable (mode 000), as nobody', args: add('--target', 'file', '--file', at('secret.img')), nobody: true, code: 'usage', message: /cannot open .*secret\.img: EACCES/ },
  // add: sizes
  { name: 'add: --size 0 (of a file it would create)', args: add('--target', 'file', '--file', at('new.img'), '--size', '0'), code: 'usage', message: /--size must be a positive multiple of the logical block size/ },
  { name: 'add: --size -1', args: add('--target', 'null', '--size', '-1'), code: 'usage', message: /--size "-1" is not a size/ },
  { name: 'add: --size unaligned (1000)', args: add('--target', 'file', '--file', at('disk.img'), '--size', '1000'), code: 'usage', message: /--size must be a positive multiple of the logical block size \(512\)/ },
  { name: 'add: --size garbage (12Q)', args: add('--target', 'null', '--size', '12Q'), code: 'usage', message: /--size "12Q" is not a size/ },
  {
    name: 'add: --size past what a block device backing holds',
    args: add('--target', 'file', '--file', `/dev/ublkb${IN_USE}`, '--size', '1G'),
    code: 'usage',
    message: new RegExp(`/dev/ublkb${IN_USE} holds ${IN_USE_BYTES} bytes, less than --size ${1 << 30}`),
  },
  // add: queues and depth
  queues('0'),
  queues('-1'),
  queues('100000'),
  queues('1.5'),
  depth('0'),
  depth('5000'),
  // add: targets and their options
  { name: 'add: no --target', args: ['add'], code: 'usage', message: /add needs --target \(one of: .*null/ },
  { name: 'add: an unknown target', args: add('--target', 'nope'), code: 'usage', message: /--target must be one of: .*null.* \(not "nope"\)/ },
  { name: 'add: a target path that does not exist', args: add('--target', at('nope.mjs')), code: 'not-found', message: /--target .*nope\.mjs: no such file/ },
  { name: 'add: a target path that is not a module', args: add('--target', at('notes.txt')), code: 'usage', message: /--target .*notes\.txt: cannot load it as a JavaScript module/ },
  { name: 'add: an unknown option', args: add('--target', 'null', '--bogus'), code: 'usage', message: /unknown option --bogus \(ublk-ts add --target null takes: / },
  { name: "add: another target's option (--file to null)", args: add('--target', 'null', '--file', at('disk.img')), code: 'usage', message: /--file is an option of target .*file.*, not of null \(target null takes: --size\)/ },
  { name: 'add: --read-only with --size', args: add('--target', 'file', '--file', at('disk.img'), '--read-only', '--size', '1M'), code: 'usage', message: /--size cannot grow a file exported --read-only/ },
  { name: 'add: nbd --host with --socket', args: add('--target', 'nbd', '--host', '127.0.0.1', '--socket', at('nbd.sock')), code: 'usage', message: /the nbd target needs --host HOST or --socket PATH \(one of them\)/ },
  { name: 'add: mirror --bitmap-chunk not a power of two', args: add('--target', 'mirror', '--leg', at('small.img'), '--leg', at('base.img'), '--bitmap-chunk', '96k'), code: 'usage', message: /--bitmap-chunk must be a power of two from 64k to 64M, not "96k"/ },
  { name: 'add: stripe --chunk not a power of two', args: add('--target', 'stripe', '--leg', at('small.img'), '--leg', at('base.img'), '--chunk', '3k'), code: 'usage', message: /--chunk must be a power of two from 4k to 1G, not 3k/ },
  { name: 'add: overlay --base a directory', args: add('--target', 'overlay', '--base', at('dir'), '--overlay', at('new.ov')), code: 'usage', message: /overlay: --base .*dir is not a regular file/ },
  // The running kernel has every data mode (control.test.ts), so "a mode the kernel lacks" cannot be
  // provoked; this is the mode a target cannot be served in: its handlers need user copy.
  { name: 'add: --data-mode copy for a TypeScript target (memory)', args: add('--target', 'memory', '--data-mode', 'copy'), code: 'usage', message: /--data-mode copy cannot serve target memory: .*needs user copy/ },
  // add: an id in use; the kernel refuses it, after the target's check has made its files
  { name: 'add: -n of a device in use', args: add('--target', 'null', '-n', String(IN_USE)), code: 'kernel', message: /ADD_DEV: EEXIST/ },
  { name: 'add: -n in use, with --file it would create', args: add('--target', 'file', '--file', at('new.img'), '--size', '1M', '-n', String(IN_USE)), code: 'kernel', message: /ADD_DEV: EEXIST/ },
  { name: 'add: -n in use, with --overlay it would create', args: add('--target', 'overlay', '--base', at('base.img'), '--overlay', at('new.ov'), '-n', String(IN_USE)), code: 'kernel', message: /ADD_DEV: EEXIST/ },
  {
    name: 'add: nbd at a closed port',
    args: add('--target', 'nbd', '--host', '127.0.0.1', '--port', String(CLOSED_PORT)),
    code: 'backend',
    message: new RegExp(`nbd: cannot connect to 127\\.0\\.0\\.1:${CLOSED_PORT}: Connection refused`),
  },
  // recover
  { name: 'recover: -n of no device', args: ['recover', '-n', '4242'], code: 'not-found', message: /device 4242 has no saved options/ },
  { name: 'recover: -n of a device whose server is alive', args: ['recover', '-n', String(IN_USE)], code: 'usage', message: new RegExp(`device ${IN_USE} is served by pid \\d+: nothing to recover`) },
  { name: 'recover: without -n', args: ['recover'], code: 'usage', message: /Missing required argument: n|-n/ },
  // del
  { name: 'del: neither -n nor --all', args: ['del'], code: 'usage', message: /del needs -n N \(a device id\) or --all/ },
  { name: 'del: -n with --all', args: ['del', '-n', String(IN_USE), '--all'], code: 'usage', message: /del takes -n N or --all, not both/ },
  { name: 'del: -n of no device', args: ['del', '-n', '4242'], code: 'not-found', message: /-n 4242: no such ublk device/ },
  { name: 'del: -n of no device, --json', args: ['del', '-n', '4242', '--json'], code: 'not-found', message: /^\{"error":"-n 4242: no such ublk device[^"]*","code":"not-found"\}$/ },
  // stats
  { name: 'stats: -n of no device', args: ['stats', '-n', '4242'], code: 'not-found', message: /-n 4242: no such ublk device/ },
  { name: 'stats: a name that is not up', args: ['stats', 'nosuch'], code: 'not-found', message: /no device named "nosuch" is up/ },
  { name: 'stats: --watch 0', args: ['stats', '--watch', '0'], code: 'usage', message: /--watch must be a number of seconds from 0\.1 to 3600, not "0"/ },
  // list, features, and no verb
  { name: 'list: an unknown option', args: ['list', '--bogus'], code: 'usage', message: /unknown option --bogus \(ublk-ts list takes: --json, --help\)/ },
  { name: 'features: an argument', args: ['features', 'extra'], code: 'usage', message: /unexpected argument "extra" \(ublk-ts features takes only options/ },
  { name: 'an unknown command', args: ['frobnicate'], code: 'usage', message: /unknown command "frobnicate" \(commands: .*add/ },
  // up and down: their config file
  { name: 'up: no such config file', args: ['up', '--all', '--config', at('none.json')], code: 'not-found', message: /no config file .*none\.json/ },
  { name: 'up: a config file that is not JSON', args: ['up', '--all', '--config', at('bad.json')], setup: () => fs.writeFileSync(at('bad.json'), '{ not json'), code: 'usage', message: /bad\.json is not valid JSON/ },
  { name: 'up: a directory as config file', args: ['up', '--all', '--config', at('dir')], code: 'usage', message: /cannot read .*dir: EISDIR/ },
  { name: 'up: a /proc file as config file', args: ['up', '--all', '--config', '/proc/cpuinfo'], code: 'usage', message: /\/proc\/cpuinfo is not valid JSON/ },
  { name: 'up: an entry with queues 0', args: ['up', '--all', '--config', at('q0.json')], setup: writeConfig('q0.json', { a: { target: 'null', queues: 0 } }), code: 'usage', message: /a: queues must be a whole number from 1 to \d+, not 0/ },
  { name: 'down: a name neither up nor in the file', args: ['down', 'nosuch', '--config', at('none.json')], code: 'not-found', message: /no device "nosuch" is up, nor named in/ },
  // a user who may not use the driver
  asNobody('list', ['list']),
  asNobody('add', add('--target', 'null')),
  asNobody('del', ['del', '-n', String(IN_USE)]),
  { ...asNobody('up', ['up', '--all', '--config', at('ok.json')]), setup: writeConfig('ok.json', { a: { target: 'null', size: '64M', queues: 1 } }) },
];

/** What bad input must not change: everything but `list --json`, which is compared with the baseline. */
interface Snapshot {
  /** Servers, CLIs and any other node process, with their command lines. */
  processes: string[];
  devNodes: string[];
  /** Names only: the servers rewrite their counters there every second. */
  stateFiles: string[];
  /** Every file under DIR: kind, mode, size and mtime (directories by kind alone: a file made and removed
   * again changes their mtime, and is still not left behind). */
  files: Record<string, string>;
}

/** Every node process and every process of ublk-ts (pgrep -af, without a fork per snapshot: under emulation a
 * pgrep takes a third of a second). */
function processes(): string[] {
  const out: string[] = [];
  for (const pid of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)))
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
      if (fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'node' || cmd.includes('ublk-ts')) out.push(`${pid} ${cmd}`);
    } catch {
      // gone meanwhile
    }
  return out.sort();
}

function walk(dir: string, out: Record<string, string> = {}): Record<string, string> {
  for (const name of fs.readdirSync(dir)) {
    const p = path.join(dir, name);
    const st = fs.lstatSync(p);
    if (st.isDirectory()) {
      out[p] = 'dir';
      walk(p, out);
    } else out[p] = `${st.isFile() ? 'file' : 'other'} ${(st.mode & 0o7777).toString(8)} ${st.size} ${st.mtimeMs}`;
  }
  return out;
}

function snapshot(): Snapshot {
  return {
    processes: processes(),
    devNodes: fs.readdirSync('/dev').filter((n) => n.startsWith('ublk')).sort(),
    stateFiles: fs.existsSync(STATE_DIR) ? fs.readdirSync(STATE_DIR).filter((n) => !n.endsWith('.tmp')).sort() : [],
    files: walk(DIR),
  };
}

const listJson = (): unknown => cliJson<unknown>('list');

/** After a case that failed its checks: no device but the baseline's, no file it made. */
function restore(before: Snapshot): void {
  for (const id of ublkDevices().map((n) => Number(n.replace('ublkc', ''))))
    if (id !== IN_USE) spawnSync(process.execPath, [CLI, 'del', '-n', String(id)], { timeout: 60_000 });
  for (const p of Object.keys(walk(DIR)).reverse()) if (!(p in before.files)) fs.rmSync(p, { recursive: true, force: true });
}

function run(c: Case): SpawnSyncReturns<string> {
  const [cmd, args] = c.nobody ? ['setpriv', [...NOBODY, process.execPath, CLI, ...c.args]] : [process.execPath, [CLI, ...c.args]];
  return spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000 });
}

let baseline: unknown;

beforeAll(() => {
  scratch('bad-input');
  fs.mkdirSync(at('dir'));
  sh(`truncate -s 64M ${at('disk.img')} && truncate -s 16M ${at('small.img')} && truncate -s 32M ${at('base.img')}`);
  fs.writeFileSync(at('secret.img'), Buffer.alloc(1 << 20));
  fs.chmodSync(at('secret.img'), 0o000);
  fs.writeFileSync(at('notes.txt'), 'not a JavaScript module\n');
  // The CLI must be nobody's to run, or the nobody cases would test nothing but that.
  expect(spawnSync('setpriv', [...NOBODY, 'test', '-r', CLI]).status, `nobody cannot read ${CLI}`).toBe(0);
  // A closed port refuses the connection only on a loopback that is up (the guest brings up no network).
  sh('ip link set lo up');
  expect(spawnSync('bash', ['-c', `echo > /dev/tcp/127.0.0.1/${CLOSED_PORT}`]).status).not.toBe(0);
  const dev = cliJson<AddedDevice>('add', '--target', 'null', '--size', String(IN_USE_BYTES), '-n', String(IN_USE), '--queues', '1');
  expect(dev.id).toBe(IN_USE);
  baseline = listJson();
  expect(serverPids()).toHaveLength(1);
}, 120_000);

afterAll(delAll);

describe('bad input: one line, the exit status of its kind, nothing left behind', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      c.setup?.();
      const before = snapshot();
      try {
        const r = run(c);
        const out = r.stderr.trim().split('\n');
        console.log(`${c.name}: [${r.status}] ${r.stderr.trim()}`);
        expect(r.status, r.stderr).toBe(EXIT_STATUS[c.code]);
        expect(out, 'stderr is one line').toHaveLength(1);
        expect(out[0]).toMatch(c.args.includes('--json') ? /^\{"error":/ : /^ublk-ts: /);
        expect(out[0]).toMatch(c.message);
        expect(snapshot()).toEqual(before);
        // What `list --json` prints, asked in this process: a second CLI run per case would cost as much
        // as the case itself under emulation. The CLI's own list is compared once every case has run.
        expect(await listDevices()).toEqual(baseline);
      } finally {
        restore(before);
      }
    }, 60_000);
  }
  it('list --json is the baseline after every case', () => {
    expect(listJson()).toEqual(baseline);
  });
});
