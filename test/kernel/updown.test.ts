// up and down on the real driver: devices named in a config file come up at /dev/ublk-ts/NAME, again
// changes nothing, down takes one or all of them, and a device whose backing file is missing fails alone.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Outcome } from '../../src/updown.js';
import { cli, cliJson, delAll, nbdkit, scratch, serverPids, sh, stopServer, ublkDevices, type Listed } from './helpers.js';

afterEach(() => {
  delAll();
  fs.rmSync('/dev/ublk-ts', { recursive: true, force: true });
});

/** A config file in a scratch folder, with backing files for the file devices. */
function config(test: string, devices: Record<string, Record<string, unknown>>): string {
  const dir = scratch(test);
  const file = path.join(dir, 'devices.json');
  fs.writeFileSync(file, JSON.stringify({ devices }, null, 2));
  return file;
}

function backing(file: string, bytes: number): string {
  sh(`truncate -s ${bytes} ${file}`);
  return file;
}

const linkOf = (name: string) => fs.readlinkSync(`/dev/ublk-ts/${name}`);

describe('up and down', () => {
  it('brings three devices up at stable paths, again changes nothing, down one, down the rest', () => {
    const dir = scratch('updown');
    const a = backing(path.join(dir, 'a.img'), 64 << 20);
    const c = backing(path.join(dir, 'c.img'), 32 << 20);
    const file = config('updown-config', {
      alpha: { target: 'file', file: a, queues: 1 },
      beta: { target: 'null', size: '1G', queues: 1 },
      gamma: { target: 'file', file: c, queues: 1, 'read-only': true },
    });

    const first = cliJson<{ devices: Outcome[] }>('up', '--all', '--config', file).devices;
    expect(first.map((o) => [o.name, o.state])).toEqual([['alpha', 'up'], ['beta', 'up'], ['gamma', 'up']]);
    for (const o of first) {
      expect(o.path).toBe(`/dev/ublk-ts/${o.name}`);
      expect(linkOf(o.name)).toBe(o.blockDevice);
      expect(fs.statSync(o.path!).isBlockDevice()).toBe(true);
    }
    // Through the stable path to the backing file; and the sizes are the config's.
    sh(`printf 'hello by name' | dd of=/dev/ublk-ts/alpha conv=notrunc,fsync status=none`);
    expect(fs.readFileSync(a).subarray(0, 13).toString()).toBe('hello by name');
    expect(sh('blockdev --getsize64 /dev/ublk-ts/beta').trim()).toBe(String(1 << 30));
    expect(sh('blockdev --getro /dev/ublk-ts/gamma').trim()).toBe('1');
    const listed = cliJson<Listed[]>('list');
    expect(listed.map((d) => d.name).sort()).toEqual(['alpha', 'beta', 'gamma']);
    // stats by name: the one device, with its server's counters.
    const stats = cliJson<{ devices: { name: string; id: number; server: { requests: number } | null }[] }>('stats', 'alpha');
    expect(stats.devices.map((d) => [d.name, d.id])).toEqual([['alpha', first[0].id]]);
    expect(stats.devices[0].server?.requests).toBeGreaterThan(0);

    // Again: nothing changes (same ids, same servers, no new device).
    const again = cli('up', '--all', '--config', file);
    expect(again.status).toBe(0);
    expect(again.stderr).toBe('');
    expect(again.stdout.trim().split('\n')).toEqual(first.map((o) => `${o.name}: already up, ${o.path} -> ${o.blockDevice}`));
    expect(cliJson<Listed[]>('list')).toEqual(listed);
    expect(ublkDevices()).toHaveLength(3);

    // down NAME: that one only.
    const beta = first.find((o) => o.name === 'beta')!;
    expect(cliJson<{ devices: Outcome[] }>('down', 'beta', '--config', file).devices).toEqual([
      { name: 'beta', state: 'down', id: beta.id, path: '/dev/ublk-ts/beta', blockDevice: beta.blockDevice },
    ]);
    expect(fs.existsSync('/dev/ublk-ts/beta')).toBe(false);
    expect(fs.existsSync(beta.blockDevice!)).toBe(false);
    expect(cliJson<Listed[]>('list').map((d) => d.name)).toEqual(['alpha', 'gamma']);
    expect(cli('down', 'beta', '--config', file).stdout.trim()).toBe('beta: already down');

    // down --all: the rest, links and servers included.
    const rest = cliJson<{ devices: Outcome[] }>('down', '--all').devices;
    expect(rest.map((o) => [o.name, o.state]).sort()).toEqual([['alpha', 'down'], ['gamma', 'down']]);
    expect(fs.readdirSync('/dev/ublk-ts')).toEqual([]);
    expect(ublkDevices()).toEqual([]);
    expect(serverPids()).toEqual([]);
    expect(cli('down', '--all').stdout.trim()).toMatch(/^no devices up/);
  });

  it('a device whose backing file is missing fails alone, in one line; the others come up', () => {
    const dir = scratch('missing');
    const a = backing(path.join(dir, 'a.img'), 32 << 20);
    const missing = path.join(dir, 'not-there.img');
    const file = config('missing-config', {
      alpha: { target: 'file', file: a, queues: 1 },
      lost: { target: 'file', file: missing, size: '64M', queues: 1 },
      beta: { target: 'null', size: '1G', queues: 1 },
    });
    const r = cli('up', '--all', '--config', file);
    expect(r.status).toBe(5); // backend
    expect(r.stderr.trimEnd().split('\n')).toEqual([`ublk-ts: lost: ${missing} does not exist (up never creates a backing file; is its filesystem mounted?)`]);
    expect(r.stdout).toMatch(/^alpha: up, \/dev\/ublk-ts\/alpha -> \/dev\/ublkb\d+\nbeta: up, \/dev\/ublk-ts\/beta -> \/dev\/ublkb\d+\n$/);
    expect(fs.existsSync(missing)).toBe(false); // not created, though the entry gives a size
    expect(fs.readdirSync('/dev/ublk-ts').sort()).toEqual(['alpha', 'beta']);
    expect(ublkDevices()).toHaveLength(2);

    // With --json: the failure is JSON on stderr, the outcomes JSON on stdout.
    const j = cli('up', '--all', '--config', file, '--json');
    expect(j.status).toBe(5);
    expect(JSON.parse(j.stderr)).toEqual({ error: expect.stringContaining(`lost: ${missing} does not exist`), code: 'backend' });
    expect((JSON.parse(j.stdout) as { devices: Outcome[] }).devices.map((o) => [o.name, o.state])).toEqual([
      ['alpha', 'already-up'],
      ['lost', 'failed'],
      ['beta', 'already-up'],
    ]);

    // Once the file is there, up brings that one up too; del removes its stable path as down does.
    backing(missing, 64 << 20);
    const lost = cliJson<{ devices: Outcome[] }>('up', 'lost', '--config', file).devices[0];
    expect(lost.state).toBe('up');
    expect(cli('del', '-n', String(lost.id)).status).toBe(0);
    expect(fs.existsSync('/dev/ublk-ts/lost')).toBe(false);
    expect(cliJson<{ devices: Outcome[] }>('down', '--all').devices).toHaveLength(2);
  });

  it('a mirror over a file and an nbd device named by its stable path: up brings the nbd device first though the file lists it last, down --all takes the mirror first, and after down + up the data reads back from both legs', async () => {
    const dir = scratch('over');
    const a = backing(path.join(dir, 'a.img'), 32 << 20);
    const remote = backing(path.join(dir, 'remote.img'), 32 << 20);
    const sock = path.join(dir, 'nbd.sock');
    const server = await nbdkit(sock, 'file', remote);
    const file = config('over-config', {
      m: { target: 'mirror', leg: [a, '/dev/ublk-ts/remote'], 'assume-clean': true, queues: 1 },
      remote: { target: 'nbd', socket: sock, queues: 1 },
    });
    const states = (r: { devices: Outcome[] }) => r.devices.map((o) => [o.name, o.state]);
    expect(states(cliJson('up', '--all', '--config', file))).toEqual([['remote', 'up'], ['m', 'up']]);
    const data = path.join(dir, 'data');
    sh(`head -c 4M /dev/urandom > ${data} && dd if=${data} of=/dev/ublk-ts/m bs=1M oflag=direct status=none`);
    // The nbd device is open by the mirror's server until the mirror is down: taken first, it would be busy.
    expect(states(cliJson('down', '--all'))).toEqual([['m', 'down'], ['remote', 'down']]);
    expect(ublkDevices()).toHaveLength(0);
    // up m alone: what it names comes up too, and first.
    expect(states(cliJson('up', 'm', '--config', file))).toEqual([['remote', 'up'], ['m', 'up']]);
    const m = cliJson<Listed[]>('list').find((d) => d.name === 'm')!;
    expect(m.info.legs).toBe('in-sync,in-sync');
    const readsBack = () => sh(`dd if=/dev/ublk-ts/m bs=1M count=4 iflag=direct status=none | cmp - ${data}`);
    readsBack();
    cliJson('mirror', 'fail', '-n', String(m.id), '--leg', '1');
    readsBack(); // from the nbd leg alone
    expect(states(cliJson('down', '--all'))).toEqual([['m', 'down'], ['remote', 'down']]);
    await stopServer(server);
  });
});
