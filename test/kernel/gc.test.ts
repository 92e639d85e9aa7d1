// Orphans after a crash: `list` marks the devices whose server is gone, and `gc` recovers those made with
// recovery, deletes the others with their records, removes a stale record, and leaves alone a live device
// and the devices of another tool: kublk, the kernel's own ublk test server (built by scripts/setup.sh).
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { alive, cli, cliJson, delAll, failedInOneLine, listEntry, nothingLeft, scratch, serverPids, sh, ublkDevices, waitFor, type AddedDevice, type Listed } from './helpers.js';
import type { GcOutcome } from '../../src/gc.js';
import { writeRecord } from '../../src/state.js';

afterEach(delAll);

const STATE_DIR = process.env.UBLK_TS_STATE_DIR ?? '/run/ublk-ts';
// scripts/build-kublk.sh puts it in the kernel cache, whose modules the guest is given (vm-run: <cache>/root/usr).
const KUBLK = path.resolve(process.env.UBLK_TS_KMOD_DIR ?? '/nonexistent', '../../kublk/kublk');

/** A kublk device of null target; its id (kublk prints "dev id N: ..."). */
function kublkAdd(...args: string[]): number {
  const out = sh(`${KUBLK} add -t null -q 1 -d 16 ${args.join(' ')}`);
  const m = /dev id (\d+)/.exec(out);
  if (!m) throw new Error(`kublk add printed no device id: ${out}`);
  return Number(m[1]);
}

/** The record's file and the control socket a server of device id leaves in the state directory. */
const leftovers = (id: number) => [`ublkb${id}.json`, `ublkb${id}.stats.json`, `ublkb${id}.sock`].filter((f) => fs.existsSync(path.join(STATE_DIR, f)));

/** Reads 4 KiB at offset 0 of /dev/ublkbN past the page cache (bounded: a device without a server holds it), as text. */
const read4k = (id: number) => sh(`set -o pipefail; timeout 30 dd if=/dev/ublkb${id} bs=4k count=1 iflag=direct status=none | tr -d '\\0'`);

describe('orphans', () => {
  it('after kill -9 of 10 servers, list marks them and gc recovers or deletes each; a live device and kublk\'s are untouched', async () => {
    expect(fs.existsSync(KUBLK), `${KUBLK} missing: run scripts/setup.sh (scripts/build-kublk.sh)`).toBe(true);
    // Another tool's devices: one served, one whose server died (with recovery: QUIESCED, waiting for kublk).
    const kLive = kublkAdd();
    const kOrphan = kublkAdd('-r', '1');
    const kOrphanPid = listEntry(kOrphan)!.pid;
    process.kill(kOrphanPid, 'SIGKILL');
    await waitFor("kublk's device to wait for its server", () => listEntry(kOrphan)?.state === 'quiesced', 30_000);

    const dir = scratch('gc');
    const small = ['--queues', '1', '--depth', '16'];
    const recoverable = cliJson<AddedDevice[]>('add', '--target', 'null', '--size', '16M', '--count', '4', ...small);
    const doomed = cliJson<AddedDevice[]>('add', '--target', 'null', '--size', '16M', '--count', '3', '--no-recovery', ...small);
    const file = (name: string, ...more: string[]) =>
      cliJson<AddedDevice>('add', '--target', 'file', '--file', path.join(dir, name), '--size', '16M', ...small, ...more);
    const files = [file('a.img'), file('b.img')];
    const doomedFile = file('c.img', '--no-recovery');
    recoverable.push(...files);
    doomed.push(doomedFile);
    const live = file('live.img');
    expect(recoverable.map((d) => d.recovery)).toEqual([true, true, true, true, true, true]);
    expect(doomed.map((d) => d.recovery)).toEqual([false, false, false, false]);
    // What the file devices hold must be there after recovery: the same device, not a new one.
    for (const d of files) sh(`printf 'kept by ${d.id}' | dd of=${d.blockDevice} bs=4k conv=sync oflag=direct status=none`);
    // A record whose device is gone (a crash between a delete and its record's removal).
    writeRecord({ ...live, id: 900, blockDevice: '/dev/ublkb900', charDevice: '/dev/ublkc900' });

    const killed = [...recoverable, ...doomed];
    killed.forEach((d) => process.kill(d.pid, 'SIGKILL'));
    await waitFor('the 10 servers to end', () => killed.every((d) => !alive(d.pid)), 30_000);
    const server = (id: number) => listEntry(id)?.server;
    await waitFor('list to mark the orphans', () => recoverable.every((d) => server(d.id) === 'quiesced') && doomed.every((d) => server(d.id) === 'dead'), 60_000);
    expect(server(live.id)).toBe('live');
    expect([server(kLive), server(kOrphan)]).toEqual(['foreign', 'foreign']);
    expect(listEntry(900)).toBeUndefined();

    const before = cliJson<Listed[]>('list');
    const dry = cliJson<{ dryRun: boolean; devices: GcOutcome[] }>('gc', '--dry-run');
    expect(cliJson<Listed[]>('list')).toEqual(before); // nothing done
    const actions = (o: GcOutcome[]) => Object.fromEntries(o.map((x) => [x.id, x.action]));
    const expected = {
      ...Object.fromEntries(recoverable.map((d) => [d.id, 'recovered'])),
      ...Object.fromEntries(doomed.map((d) => [d.id, 'deleted'])),
      [live.id]: 'left',
      [kLive]: 'left',
      [kOrphan]: 'left',
      900: 'removed-record',
    };
    expect(actions(dry.devices)).toEqual(expected);

    const done = cliJson<{ devices: GcOutcome[] }>('gc').devices;
    expect(actions(done)).toEqual(expected);
    for (const d of recoverable) {
      const now = listEntry(d.id)!;
      expect(now.server).toBe('live');
      expect(now.pid).not.toBe(d.pid);
      expect(done.find((o) => o.id === d.id)?.pid).toBe(now.pid);
      expect(read4k(d.id)).toBe(files.includes(d) ? `kept by ${d.id}` : '');
    }
    for (const d of doomed) {
      expect(listEntry(d.id)).toBeUndefined();
      expect(fs.existsSync(`/sys/class/ublk-char/ublkc${d.id}`)).toBe(false);
      expect(leftovers(d.id)).toEqual([]);
    }
    expect(leftovers(900)).toEqual([]);
    // Untouched: the live device (same server), kublk's served device (same pid, still serving) and its orphan.
    expect(listEntry(live.id)?.pid).toBe(live.pid);
    const k = listEntry(kLive)!;
    expect([k.server, k.state]).toEqual(['foreign', 'live']);
    read4k(kLive); // served: dd ended well
    expect(listEntry(kOrphan)?.state).toBe('quiesced');

    // Nothing left to do: one line per device, each left alone.
    const again = cli('gc');
    expect(again.status, again.stderr).toBe(0);
    const lines = again.stdout.trim().split('\n');
    expect(lines).toHaveLength(recoverable.length + 3);
    for (const l of lines) expect(l).toMatch(/^\/dev\/ublkb\d+: (live|foreign), left alone \(/);

    // Done with kublk's devices: kublk deletes them itself.
    sh(`${KUBLK} del -n ${kLive}; ${KUBLK} del -n ${kOrphan}`);
    cli('del', '--all');
    await nothingLeft();
    expect(ublkDevices()).toEqual([]);
  }, 240_000);

  it('recovers a device over another after it, whatever their ids: a mirror whose leg is a file device of a higher id; recover of the mirror first, or a new device over the waiting leg, is refused in one line', async () => {
    const dir = scratch('gc-over');
    const [a, b] = [path.join(dir, 'a.img'), path.join(dir, 'b.img')];
    sh(`truncate -s 16M ${a} ${b}`);
    const small = ['--queues', '1', '--depth', '16'];
    const leg = cliJson<AddedDevice>('add', '--target', 'file', '--file', b, '-n', '9', ...small);
    const m = cliJson<AddedDevice>('add', '--target', 'mirror', '--leg', a, '--leg', leg.blockDevice, '--assume-clean', ...small);
    expect(m.id).toBeLessThan(leg.id);
    sh(`printf 'over and beneath' | dd of=${m.blockDevice} bs=4k conv=sync oflag=direct status=none`);
    for (const d of [m, leg]) process.kill(d.pid, 'SIGKILL');
    await waitFor('both to wait for a new server', () => [m, leg].every((d) => listEntry(d.id)?.server === 'quiesced'), 60_000);
    // The mirror's new server reads its legs' metadata as it starts: before the leg's own server is back,
    // that read would wait for it. By hand, in that order, it is refused, as is a new device over the leg.
    expect(failedInOneLine(cli('recover', '-n', String(m.id)))).toContain(`device ${m.id} is over ${leg.blockDevice}, which waits for a server of its own`);
    expect(failedInOneLine(cli('add', '--target', 'file', '--file', leg.blockDevice))).toContain(`${leg.blockDevice} waits for a server of its own`);
    expect(listEntry(m.id)?.server).toBe('quiesced');
    const done = cliJson<{ devices: GcOutcome[] }>('gc').devices;
    expect(done.map((o) => [o.id, o.action])).toEqual([[leg.id, 'recovered'], [m.id, 'recovered']]);
    expect(read4k(m.id)).toBe('over and beneath');
    expect(listEntry(m.id)!.info.legs).toBe('in-sync,in-sync');
  }, 120_000);

  it('add --count is refused in one line for a target with a backing, or out of range, and makes nothing', () => {
    const r = cli('add', '--target', 'file', '--file', path.join(scratch('count'), 'x.img'), '--size', '16M', '--count', '2');
    expect(failedInOneLine(r)).toMatch(/--count adds devices that share nothing/);
    expect(failedInOneLine(cli('add', '--target', 'null', '--count', '0'))).toMatch(/--count must be a whole number/);
    expect(ublkDevices()).toEqual([]);
    expect(serverPids()).toEqual([]);
  });
});
