// up, down and the config file on any host (no ublk needed): the file and the command line are checked
// before the kernel is asked anything; a device's mistake is its own line; stable paths are links that
// only their own device removes.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configuredDevice, readConfig } from '../../src/config.js';
import { linkTarget, makeLink, removeLink } from '../../src/dev-links.js';
import { inUseOrder, namedPaths, usesFirst, withUsed } from '../../src/device-uses.js';
import type { DeviceRecord } from '../../src/state.js';

const CLI = path.resolve('dist/ublk-ts.mjs');
const hasDriver = fs.existsSync('/dev/ublk-control');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-updown-'));
const img = path.join(dir, 'a.img');
fs.writeFileSync(img, Buffer.alloc(1 << 20));
// An empty state folder: nothing is up.
const env = { ...process.env, LANG: 'C', UBLK_TS_STATE_DIR: path.join(dir, 'run'), UBLK_TS_CONFIG: path.join(dir, 'none.json') };

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function cli(...args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env });
}

function configFile(name: string, doc: unknown): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, typeof doc === 'string' ? doc : JSON.stringify(doc));
  return file;
}

const good = configFile('good.json', {
  devices: {
    alpha: { target: 'file', file: img, queues: 2, 'data-mode': 'copy', 'part-scan': true, comment: 'kept' },
    beta: { target: 'null', size: 1 << 30 },
    later: { target: 'null', auto: false },
  },
});

// [what the user typed, what the one line must name, exit status, code]
const mistakes: [string[], string, number, string][] = [
  [['up'], '--all', 2, 'usage'],
  [['down'], '--all', 2, 'usage'],
  [['up', 'alpha', '--all'], '--all', 2, 'usage'],
  [['up', '9lives'], '"9lives" is not a device name', 2, 'usage'],
  [['down', 'a/b'], '"a/b" is not a device name', 2, 'usage'],
  [['up', '--all', '--config'], '--config', 2, 'usage'],
  [['up', '--all', '--bogus'], '--bogus', 2, 'usage'],
  [['up', '--all'], `no config file ${path.join(dir, 'none.json')}`, 3, 'not-found'],
  [['up', '--all', '--config', path.join(dir, 'nope.json')], 'nope.json', 3, 'not-found'],
  [['up', '--all', '--config', configFile('syntax.json', '{"devices": {')], 'syntax.json is not valid JSON', 2, 'usage'],
  [['up', '--all', '--config', configFile('shape.json', { devices: [] })], 'shape.json must hold {"devices"', 2, 'usage'],
  [['up', '--all', '--config', configFile('top.json', { devices: {}, extra: 1 })], 'unknown key "extra"', 2, 'usage'],
  [['up', 'gamma', '--config', good], 'no device "gamma" in', 3, 'not-found'],
  [['down', 'gamma', '--config', good], 'no device "gamma" is up, nor named in', 3, 'not-found'],
  [['stats', '--watch', '0'], '--watch', 2, 'usage'],
  [['stats', '-w', 'soon'], '-w', 2, 'usage'],
  [['stats', '--count', '2'], '--count', 2, 'usage'],
  [['stats', '--watch', '1', '--count', '0'], '--count', 2, 'usage'],
  [['stats', 'alpha', '-n', '1'], '-n', 2, 'usage'],
  [['stats', '-n', '-3'], '-n', 2, 'usage'],
  [['stats', 'x y'], '"x y" is not a device name', 2, 'usage'],
];

describe.concurrent('up, down, stats: one line for each mistake, its exit status, JSON with --json', () => {
  for (const [args, says, status, code] of mistakes) {
    it(`ublk-ts ${args.join(' ').replaceAll(dir, '$DIR')}`, () => {
      const text = cli(...args);
      expect(text.stdout).toBe('');
      expect(text.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(text.stderr).toContain(says);
      expect(text.status).toBe(status);
      const json = cli(...args, '--json');
      expect(json.stdout).toBe('');
      expect(JSON.parse(json.stderr)).toEqual({ error: expect.stringContaining(says), code });
      expect(json.status).toBe(status);
    });
  }
});

describe('the config file', () => {
  it('reads the entries in order, "auto": false left out of --all', () => {
    expect(readConfig(good).map((e) => [e.name, e.auto])).toEqual([
      ['alpha', true],
      ['beta', true],
      ['later', false],
    ]);
  });

  it('turns an entry into the options add would take', async () => {
    const [alpha, beta] = readConfig(good);
    expect((await configuredDevice(good, alpha)).serve).toEqual({
      name: 'alpha',
      target: 'file',
      targetOptions: { file: img, size: undefined, 'read-only': false, 'logical-block-size': undefined, buffered: false },
      id: undefined,
      queues: 2,
      depth: 128,
      mode: 'copy',
      recovery: true,
      restart: 0,
      partScan: true,
    });
    // A size in bytes is a size, as the command line's string would be.
    expect((await configuredDevice(good, beta)).serve.targetOptions).toEqual({ size: String(1 << 30) });
  });

  it.each([
    [{ target: 'file', file: img, queues: 5000 }, /^queues must be a whole number from 1 to 4096, not 5000 \(/],
    [{ target: 'file', file: img, depth: '8' }, /^depth must be a number, not "8"/],
    [{ target: 'file', file: img, 'read-only': 'yes' }, /^read-only must be true or false, not "yes"/],
    [{ target: 'file', file: img, 'data-mode': 'fast' }, /^data-mode must be one of: auto, auto-lease, lease, user-copy, copy, not "fast"/],
    [{ target: 'file', file: img, readOnly: true }, /^unknown key "readOnly" \(did you mean "read-only"\?\)/],
    [{ target: 'file', fil: img }, /^unknown key "fil" \(a file device takes: target, file, size, /],
    [{ target: 'floppy' }, /^unknown target "floppy" \(have: .*file.*null/],
    [{ file: img }, /^target is missing or not a string/],
    ['file', /^must be an object of options/],
    [{ target: 'null', foreground: true }, /^unknown key "foreground"/],
  ])('refuses %j in one line that names the key', async (settings, message) => {
    await expect(configuredDevice(good, { name: 'x', auto: true, settings })).rejects.toThrow(message);
  });
});

describe.runIf(!hasDriver)('up without the driver', () => {
  it('reports each bad device in its own line, creates no backing file, then says the driver is missing', () => {
    const missing = path.join(dir, 'missing.img');
    const file = configFile('mixed.json', {
      devices: {
        fine: { target: 'null' },
        gone: { target: 'file', file: missing, size: '1G' },
        typo: { target: 'null', sise: '1G' },
      },
    });
    const r = cli('up', '--all', '--config', file);
    expect(r.stderr.trimEnd().split('\n')).toEqual([
      `ublk-ts: gone: ${missing} does not exist (up never creates a backing file; is its filesystem mounted?)`,
      expect.stringMatching(/^ublk-ts: typo: unknown key "sise" \(a null device takes: target, size, /),
      expect.stringMatching(/^ublk-ts: ublk driver not available/),
    ]);
    expect(r.status).toBe(4);
    expect(fs.existsSync(missing)).toBe(false);
  });

  it('a cycle of devices over devices (stable paths in their options) fails those in it and behind it, each in one line, before the kernel is asked', () => {
    const link = (n: string) => path.join('/dev/ublk-ts', n);
    const file = configFile('cycle.json', {
      devices: {
        a: { target: 'file', file: link('b') },
        b: { target: 'mirror', leg: [img, link('a')] },
        c: { target: 'file', file: link('a') },
        d: { target: 'null' },
      },
    });
    const r = cli('up', '--all', '--config', file);
    const cycle = "is in or behind a cycle of devices that name each other's /dev/ublk-ts paths (a, b, c): none of them can come up first";
    expect(r.stderr.trimEnd().split('\n')).toEqual([
      `ublk-ts: a: it ${cycle}`,
      `ublk-ts: b: it ${cycle}`,
      `ublk-ts: c: it ${cycle}`,
      expect.stringMatching(/^ublk-ts: ublk driver not available/),
    ]);
    expect(r.status).toBe(4);
  });

  it('down --all with nothing up needs neither the driver nor the file', () => {
    const r = cli('down', '--all');
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toMatch(/^no devices up/);
    expect(JSON.parse(cli('down', '--all', '--json').stdout)).toEqual({ devices: [] });
  });
});

describe('stable paths', () => {
  it('links /dev/ublk-ts/NAME to the device, replaces a stale link, and removes only its own', () => {
    const before = process.env.UBLK_TS_DEV_DIR;
    process.env.UBLK_TS_DEV_DIR = path.join(dir, 'dev');
    try {
      expect(makeLink('db', 3)).toBe(path.join(dir, 'dev', 'db'));
      expect(linkTarget('db')).toBe('/dev/ublkb3');
      makeLink('db', 5); // the name now belongs to another device
      expect(linkTarget('db')).toBe('/dev/ublkb5');
      removeLink('db', 3); // the old device's server ending late leaves it alone
      expect(linkTarget('db')).toBe('/dev/ublkb5');
      removeLink('db', 5);
      expect(linkTarget('db')).toBeUndefined();
      expect(fs.readdirSync(path.join(dir, 'dev'))).toEqual([]);
    } finally {
      if (before === undefined) delete process.env.UBLK_TS_DEV_DIR;
      else process.env.UBLK_TS_DEV_DIR = before;
    }
  });
});

describe('devices over devices', () => {
  const uses = (pairs: string) => (a: string, b: string) => pairs.split(' ').includes(`${a}>${b}`);

  it('orders each after what it uses, else as given; a cycle and what stands behind it come apart', () => {
    expect(usesFirst(['m', 'x', 'r'], uses('m>r'))).toEqual({ order: ['x', 'r', 'm'], stuck: [] });
    expect(usesFirst(['m', 'r', 's'], uses('m>r r>s'))).toEqual({ order: ['s', 'r', 'm'], stuck: [] });
    expect(usesFirst(['a', 'b', 'c', 'd'], uses('a>b b>a c>a'))).toEqual({ order: ['d'], stuck: ['a', 'b', 'c'] });
    // What the chosen use comes along, in the file's order; what nothing chosen uses stays out.
    expect(withUsed(['m'], ['r', 'm', 'x', 's'], uses('m>r r>s'))).toEqual(['r', 'm', 's']);
  });

  it('orders running devices beneath-first to bring them back, over-first to take them down: a device named by another, through a link or not', () => {
    // Block devices stand in as files here: what counts is that a path, or a link's target, is one of them.
    const dev = (id: number) => configFile(`ublkb${id}`, '');
    const link = path.join(dir, 'leg-link');
    fs.symlinkSync(dev(1), link);
    expect(namedPaths({ leg: [img, link], size: 3 })).toEqual(new Set([img, link, dev(1)]));
    const rec = (id: number, targetOptions: Record<string, unknown>) =>
      ({ id, blockDevice: dev(id), serve: { target: 'x', targetOptions, mode: 'copy' } }) as DeviceRecord;
    const leg = rec(1, { socket: '/run/nbd.sock' });
    const file = rec(2, { file: dev(3) });
    const under = rec(3, { size: '1G' });
    const mirror = rec(4, { leg: [img, link] });
    expect(inUseOrder([leg, file, under, mirror], 'over').map((r) => r.id)).toEqual([2, 4, 1, 3]);
    expect(inUseOrder([leg, file, under, mirror], 'beneath').map((r) => r.id)).toEqual([1, 3, 2, 4]);
  });
});
