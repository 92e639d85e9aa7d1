// One schema per option: a value out of its range is refused with the same sentence on the command line,
// in a config file, and by a server whoever started it; and a server's target gets the defaults filled in.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { configuredDevice, readConfig } from '../../src/config.js';
import { checkOptions, describedRanges } from '../../src/option-schema.js';
import { Server } from '../../src/server.js';
import nbd from '../../targets/nbd/index.js';

const cli = (...args: string[]) => spawnSync(process.execPath, ['dist/ublk-ts.mjs', ...args], { encoding: 'utf8' });
const SAID = 'must be a whole number from 1 to 65535, not';

describe('option schema', () => {
  it('refuses --port 0 of nbd with one sentence from the command line, a config file and a server', async () => {
    const r = cli('add', '--target', 'nbd', '--socket', '/tmp/none.sock', '--port', '0');
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim()).toBe(`ublk-ts: --port ${SAID} "0"`);

    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-schema-')), 'devices.json');
    fs.writeFileSync(file, JSON.stringify({ devices: { vol: { target: 'nbd', socket: '/tmp/none.sock', port: 0 } } }));
    await expect(configuredDevice(file, readConfig(file)[0])).rejects.toThrow(`port ${SAID} 0 (${file})`);

    // A program's server: checked before anything reaches the kernel.
    await expect(Server.start({ target: 'nbd', targetOptions: { socket: '/tmp/none.sock', port: 0 }, log: '/dev/null' })).rejects.toThrow(`--port ${SAID} 0`);
    await expect(Server.start({ target: 'nbd', targetOptions: { socket: '/tmp/none.sock' }, queues: 0, log: '/dev/null' })).rejects.toThrow(/^--queues must be a whole number from 1 to 4096, not 0$/);
  });

  it('fills in the defaults a target reads, and shows each range in help', () => {
    expect(checkOptions(nbd.options, { socket: '/s' })).toMatchObject({ socket: '/s', port: 10809, timeout: 30, reconnect: 0, send: 'auto' });
    expect(describedRanges(nbd.options).timeout.describe).toMatch(/\(1\.\.3600\)$/);
    const help = cli('add', '--target', 'nbd', '--help').stdout.replace(/\n\s+/g, ''); // unwrapped
    expect(help).toMatch(/--reconnect .*\(0\.\.1000\)/);
    expect(help).toMatch(/--queues .*\(1\.\.4096\)/);
  });
});
