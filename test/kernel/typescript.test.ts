// Targets written in TypeScript, through the bridge, on the real driver: the memory target carries ext4
// and fio verify and gives discarded memory back to the OS; a user's own target file (the README's kind)
// routes most requests to a file on the lease, answers the rest in JavaScript, and a handler that throws or
// never settles harms only its own requests.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readStats } from '../../src/state.js';
import { CLI, cli, cliJson, delAll, deletePromptly, failedInOneLine, FIO_VERIFY, fioInBackground, MNT, noMerges, nothingLeft, readsInFlight, scratch, serverPids, sh, sleep, ublkDevices, type AddedDevice } from './helpers.js';

afterEach(delAll);

describe('memory (a TypeScript target)', () => {
  it('carries ext4 and passes fio verify', () => {
    const dev = cliJson<AddedDevice>('add', '--target', 'memory', '--size', '256M', '--queues', '2');
    expect(dev.info.language).toBe('typescript');
    sh(`fio --name=v --filename=${dev.blockDevice} --ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-256k ` +
      `--iodepth=64 --size=96M ${FIO_VERIFY} --output-format=terse`);
    sh(`mkfs.ext4 -q -F ${dev.blockDevice} && mkdir -p ${MNT} && mount ${dev.blockDevice} ${MNT}`);
    sh(`head -c 24M /dev/urandom > /tmp/ublk-ts-mem.bin && cp /tmp/ublk-ts-mem.bin ${MNT}/a && mkdir ${MNT}/d && cp /tmp/ublk-ts-mem.bin ${MNT}/d/b`);
    sh(`umount ${MNT} && echo 3 > /proc/sys/vm/drop_caches && mount ${dev.blockDevice} ${MNT}`);
    const sum = (f: string) => sh(`sha256sum < ${f}`).split(' ')[0];
    expect(sum(`${MNT}/a`)).toBe(sum('/tmp/ublk-ts-mem.bin'));
    expect(sum(`${MNT}/d/b`)).toBe(sum('/tmp/ublk-ts-mem.bin'));
    sh(`umount ${MNT} && e2fsck -fn ${dev.blockDevice}`);
    fs.rmSync('/tmp/ublk-ts-mem.bin');
  });

  it('gives the memory of discarded blocks back to the OS', async () => {
    const dev = cliJson<AddedDevice>('add', '--target', 'memory', '--size', '256M', '--queues', '2');
    const rssKiB = () => Number(/^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${dev.pid}/status`, 'utf8'))?.[1]);
    sh(`dd if=/dev/urandom of=${dev.blockDevice} bs=1M count=96 iflag=fullblock oflag=direct status=none`);
    const full = rssKiB();
    sh(`blkdiscard ${dev.blockDevice}`);
    // The server collects a moment after the discards, and V8 frees the chunks behind the collection.
    let now = full;
    for (let i = 0; i < 100 && full - now < 64 << 10; i++) {
      await sleep(100);
      now = rssKiB();
    }
    expect(full - now, `VmRSS ${full} kB before blkdiscard, ${now} kB after`).toBeGreaterThanOrEqual(64 << 10);
    expect(sh(`dd if=${dev.blockDevice} bs=1M count=96 iflag=direct status=none | cmp -n ${96 << 20} - /dev/zero && echo zeroes`).trim()).toBe('zeroes');
  });
});

// What a user writes: a plain object, no build step. Requests outside [1M, 3M) are routed to the file on
// the lease; inside, reads of [1M, 2M) throw and reads of [2M, 3M) never settle; writes go through JS.
const EXAMPLE = `
import fs from 'node:fs';
const MiB = 1 << 20;
export default {
  name: 'example',
  options: { file: { describe: 'backing file' } },
  open(opts) {
    if (typeof opts.file !== 'string') throw new Error('needs --file');
    const fd = fs.openSync(opts.file, 'r+');
    return {
      size: fs.fstatSync(fd).size,
      files: [fd],
      route: (req) => (req.offset >= MiB && req.offset < 3 * MiB ? undefined : { file: 0, offset: req.offset }),
      read(req) {
        if (req.offset < 2 * MiB) throw new Error('bad block');
        return new Promise(() => {});
      },
      async write(req) {
        await fs.promises.writeFile(opts.file + '.js-writes', String(req.offset) + '\\n', { flag: 'a' });
        fs.writeSync(fd, req.data, 0, req.length, req.offset);
      },
      close: () => fs.closeSync(fd),
    };
  },
};
`;

describe("the README's example, as a new user would run it", () => {
  it('serves the first MiB through JavaScript and the rest on the lease, and reads back what was written', () => {
    const readme = fs.readFileSync('README.md', 'utf8');
    const at = readme.indexOf('A complete target, `passthrough.mjs`');
    const code = /```js\n([\s\S]*?)```/.exec(readme.slice(at))?.[1];
    expect(code).toBeDefined();
    const dir = scratch('readme');
    fs.writeFileSync(path.join(dir, 'passthrough.mjs'), code!);
    const img = path.join(dir, 'disk.img');
    sh(`truncate -s 64M ${img}`);
    const dev = cliJson<AddedDevice>('add', '--target', path.join(dir, 'passthrough.mjs'), '--file', img, '--queues', '2');
    sh(`head -c 4M /dev/urandom > ${dir}/data && dd if=${dir}/data of=${dev.blockDevice} bs=256k oflag=direct status=none`);
    sh(`cmp -n ${4 << 20} ${dir}/data ${img}`); // the file holds it: JavaScript and the lease both wrote
    sh(`dd if=${dev.blockDevice} of=${dir}/back bs=256k count=16 iflag=direct status=none && cmp ${dir}/data ${dir}/back`);
    const log = fs.readFileSync(dev.log, 'utf8');
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    const after = fs.readFileSync(dev.log, 'utf8').slice(log.length);
    const seen = Number(/(\d+) requests went through JavaScript/.exec(after)?.[1]);
    // 1 MiB of 256k writes and reads: 4 + 4 at least (the kernel may split), far fewer than the 32 in all.
    expect(seen).toBeGreaterThanOrEqual(8);
    expect(seen).toBeLessThan(32);
  });
});

describe("a user's own TypeScript target", () => {
  it('routes on the lease, answers in JavaScript, and survives a handler that throws', async () => {
    const dir = scratch('example');
    fs.writeFileSync(path.join(dir, 'example.mjs'), EXAMPLE);
    const img = path.join(dir, 'disk.img');
    sh(`head -c 8M /dev/urandom > ${img}`);
    const dev = cliJson<AddedDevice>('add', '--target', path.join(dir, 'example.mjs'), '--file', img, '--queues', '1');
    // Routed: served on the lease, the bytes never reach JavaScript.
    expect(sh(`dd if=${dev.blockDevice} bs=1M count=1 iflag=direct status=none | cmp - ${img} -n ${1 << 20} && echo same`)).toContain('same');
    // The server's counters say so: leased requests, none copied (its stats file is written every second).
    await sleep(2500);
    const c = readStats(dev.id);
    expect(c?.leased).toBeGreaterThan(0);
    expect(c?.copied).toBe(0);
    // Answered in JavaScript: a write of [1M, 1M+64k) goes through the handler; reads of that range throw,
    // so the reader gets EIO and the device stays up.
    sh(`dd if=/dev/zero of=${dev.blockDevice} bs=64k seek=16 count=1 oflag=direct status=none`);
    expect(fs.readFileSync(`${img}.js-writes`, 'utf8').trim()).toBe(String(1 << 20));
    expect(fs.readFileSync(img).subarray(1 << 20, (1 << 20) + 65536).every((b) => b === 0)).toBe(true);
    expect(() => sh(`dd if=${dev.blockDevice} of=/dev/null bs=64k skip=16 count=1 iflag=direct status=none`)).toThrow(/Input\/output error/);
    expect(serverPids()).toContain(dev.pid);
    expect(sh(`dd if=${dev.blockDevice} bs=64k skip=64 count=4 iflag=direct status=none | wc -c`).trim()).toBe(String(4 * 65536));
    // A read whose handler never settles: del still returns at once and leaves nothing.
    noMerges(dev.id);
    const stuck = fioInBackground(['--name=stuck', `--filename=${dev.blockDevice}`, '--ioengine=io_uring', '--direct=1',
      '--rw=randread', '--bs=4k', '--iodepth=8', '--offset=2M', '--size=1M', '--time_based', '--runtime=60']);
    // Delete only once fio's reads are held by the handler: a fio that opened the path after the delete
    // would make a regular file there.
    await readsInFlight(dev.id, 8, 300);
    await deletePromptly(dev.id, stuck, 'with 8 reads held in JavaScript');
    await nothingLeft();
  });

  it('refuses a module that is not a target, in one line', () => {
    const dir = scratch('not-a-target');
    fs.writeFileSync(path.join(dir, 'x.mjs'), 'export default 42;\n');
    expect(failedInOneLine(cli('add', '--target', path.join(dir, 'x.mjs')))).toMatch(/not a target/);
  });
});

/** A module of the user's own that reads as 0x5a, named after a built-in. */
const IMPOSTOR = `export default { name: 'file', open: () => ({ size: 2 << 20, read: (req) => void req.data.fill(0x5a), info: { impostor: true } }) };\n`;

describe('a target module is imported only if no one else could have changed it', () => {
  it('refuses one writable by others, in a folder writable by others, or owned by another user, in one line; up too', () => {
    const dir = scratch('trust');
    const file = path.join(dir, 'm.mjs');
    fs.writeFileSync(file, IMPOSTOR, { mode: 0o644 });
    const conf = path.join(dir, 'devices.json');
    fs.writeFileSync(conf, JSON.stringify({ devices: { m: { target: file, queues: 1 } } }));
    const refused = (why: RegExp, ...args: string[]) => {
      expect(failedInOneLine(cli(...args))).toMatch(why);
      expect(ublkDevices()).toEqual([]);
    };
    const add = ['add', '--target', file, '--queues', '1'];
    fs.chmodSync(file, 0o666);
    refused(/m\.mjs is writable by others/, ...add);
    fs.chmodSync(file, 0o644);
    fs.chmodSync(dir, 0o777);
    refused(/trust is writable by others/, ...add);
    fs.chmodSync(dir, 0o755);
    fs.chownSync(file, 65534, 65534);
    refused(/m\.mjs belongs to uid 65534/, ...add);
    refused(/m\.mjs belongs to uid 65534/, 'up', 'm', '--config', conf);
    // Owned by root and writable by root alone, below /tmp (others may write there, but the sticky bit
    // keeps them from replacing what is not theirs): loaded.
    fs.chownSync(file, 0, 0);
    const dev = cliJson<AddedDevice>(...add);
    expect(dev.info.impostor).toBe(true);
  });
});

describe('up with a target given by path', () => {
  it('serves the module the config names, absolute or relative, never the built-in of the same name', () => {
    const dir = scratch('up-path');
    fs.writeFileSync(path.join(dir, 'file.mjs'), IMPOSTOR);
    const abs = path.join(dir, 'file.mjs');
    const conf = path.join(dir, 'devices.json');
    fs.writeFileSync(conf, JSON.stringify({ devices: { byabs: { target: abs, queues: 1 }, byrel: { target: './file.mjs', queues: 1 } } }));
    const r = spawnSync(process.execPath, [CLI, 'up', '--all', '--config', conf, '--json'], { cwd: dir, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const outcomes = (JSON.parse(r.stdout) as { devices: { name: string; state: string; blockDevice: string }[] }).devices;
    expect(outcomes.map((o) => [o.name, o.state])).toEqual([['byabs', 'up'], ['byrel', 'up']]);
    for (const o of outcomes) {
      expect(sh(`blockdev --getsize64 ${o.blockDevice}`).trim()).toBe(String(2 << 20));
      expect(sh(`dd if=${o.blockDevice} bs=4k count=1 iflag=direct status=none | od -An -v -tx1 | sort -u`).trim()).toBe('5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a');
    }
    const listed = cliJson<{ name?: string; target: string }[]>('list');
    expect(listed.map((d) => [d.name, d.target])).toEqual([['byabs', abs], ['byrel', abs]]);
  });
});

describe('overlay (a TypeScript target): copy-on-write over a read-only base', () => {
  it('keeps the base unchanged, survives del and re-add, passes fsck and fio verify; unwritten reads never reach JavaScript', async () => {
    const dir = scratch('overlay');
    const base = path.join(dir, 'base.img');
    // A golden image: ext4 with files, made through the file target.
    const golden = cliJson<AddedDevice>('add', '--target', 'file', '--file', base, '--size', '64M', '--queues', '1');
    sh(`mkfs.ext4 -q -F ${golden.blockDevice} && mkdir -p ${MNT} && mount ${golden.blockDevice} ${MNT}`);
    sh(`head -c 4M /dev/urandom > ${MNT}/old && sha256sum < ${MNT}/old > ${dir}/old.sum && umount ${MNT}`);
    expect(cli('del', '-n', String(golden.id)).status).toBe(0);
    const baseSum = sh(`sha256sum < ${base}`);
    const ov = path.join(dir, 'ov.img');
    const add = () => cliJson<AddedDevice>('add', '--target', 'overlay', '--base', base, '--overlay', ov, '--queues', '2');

    let dev = add();
    // Reads of chunks never written are routed to the base on the lease: every one is a leased request.
    await sleep(1500);
    const before = readStats(dev.id)!;
    sh(`dd if=${dev.blockDevice} of=/dev/null bs=64k skip=512 count=256 iflag=direct status=none`);
    await sleep(2500);
    const after = readStats(dev.id)!;
    expect(after.requests - before.requests).toBeGreaterThanOrEqual(256);
    expect(after.leased - before.leased).toBe(after.requests - before.requests);
    sh(`mount ${dev.blockDevice} ${MNT} && sha256sum < ${MNT}/old | cmp - ${dir}/old.sum`);
    sh(`head -c 5M /dev/urandom > ${MNT}/new && sha256sum < ${MNT}/new > ${dir}/new.sum && echo x >> ${MNT}/old && umount ${MNT}`);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    expect(sh(`sha256sum < ${base}`)).toBe(baseSum);

    dev = add(); // the map brings the written chunks back
    sh(`mount ${dev.blockDevice} ${MNT} && sha256sum < ${MNT}/new | cmp - ${dir}/new.sum && test "$(tail -c 2 ${MNT}/old)" = x && umount ${MNT}`);
    sh(`e2fsck -fn ${dev.blockDevice}`);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);

    // fio's own verification through a fresh overlay: copy-ups, routed writes and mixed reads together.
    fs.rmSync(ov);
    fs.rmSync(`${ov}.map`);
    dev = add();
    sh(`fio --name=v --filename=${dev.blockDevice} --ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-256k ` +
      `--iodepth=64 --size=32M ${FIO_VERIFY} --output-format=terse`);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    expect(sh(`sha256sum < ${base}`)).toBe(baseSum);
  });
});
