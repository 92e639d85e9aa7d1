// overlay on the real driver, where its backing misbehaves or the base is not what the overlay would pick:
// a base made by mkfs.ext4's defaults (1 KiB blocks) mounts through it, and a delta file on a filesystem
// that fills up fails the write with EIO without ever marking the chunk written.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cli, cliJson, delAll, MNT, scratch, sh, type AddedDevice } from './helpers.js';

const SMALL = '/tmp/ublk-ts-small';
const CHUNK = 64 * 1024;

afterEach(() => {
  delAll();
  sh(`mountpoint -q ${SMALL} && umount ${SMALL} || true`);
});

const overlay = (base: string, ov: string) => cliJson<AddedDevice>('add', '--target', 'overlay', '--base', base, '--overlay', ov, '--queues', '1');

describe('overlay', () => {
  it('over a base made by mkfs.ext4 with its defaults (1 KiB blocks): mounts, keeps its files across del and re-add, fsck clean, base unchanged', () => {
    const dir = scratch('overlay-1k');
    const base = path.join(dir, 'base.img');
    sh(`truncate -s 256M ${base} && mkfs.ext4 -q -F ${base}`);
    expect(sh(`dumpe2fs -h ${base} 2>/dev/null | awk '/^Block size/ {print $3}'`).trim()).toBe('1024');
    const baseSum = sh(`sha256sum < ${base}`);
    const ov = path.join(dir, 'ov.img');

    let dev = overlay(base, ov);
    sh(`mkdir -p ${MNT} && mount ${dev.blockDevice} ${MNT}`);
    sh(`head -c 3M /dev/urandom > ${dir}/data && cp ${dir}/data ${MNT}/f && umount ${MNT}`);
    sh(`e2fsck -fn ${dev.blockDevice}`);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);

    dev = overlay(base, ov);
    sh(`e2fsck -fn ${dev.blockDevice}`);
    sh(`mount ${dev.blockDevice} ${MNT} && cmp ${MNT}/f ${dir}/data && umount ${MNT}`);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
    expect(sh(`sha256sum < ${base}`)).toBe(baseSum);
  });

  it('a delta file on a filesystem that fills up: the short write fails with EIO and the chunk never reads what was not written', () => {
    const dir = scratch('overlay-full');
    const base = path.join(dir, 'base.img');
    // The base is 0xab everywhere, the data 0xcd: a chunk reads all of one or all of the other, never zeroes
    // (the delta file's holes) nor a mixture.
    sh(`head -c 4M /dev/zero | tr '\\0' '\\253' > ${base} && head -c 2M /dev/zero | tr '\\0' '\\315' > ${dir}/data`);
    // 1 MiB of tmpfs: the map takes a page, so the 16th chunk's copy-up gets 60 KiB of its 64 in (a short write).
    sh(`mkdir -p ${SMALL} && mount -t tmpfs -o size=1M tmpfs ${SMALL}`);
    const dev = overlay(base, `${SMALL}/ov.img`);
    const dd = spawnSync('dd', [`if=${dir}/data`, `of=${dev.blockDevice}`, 'bs=64k', 'oflag=direct', 'status=none'], { encoding: 'utf8', timeout: 60_000 });
    expect(dd.status).not.toBe(0);
    expect(dd.stderr).toMatch(/Input\/output error/);
    sh(`dd if=${dev.blockDevice} of=${dir}/back bs=64k count=32 iflag=direct status=none`);
    const back = fs.readFileSync(`${dir}/back`);
    const kinds = Array.from({ length: 32 }, (_, i) => {
      const c = back.subarray(i * CHUNK, (i + 1) * CHUNK);
      return c.every((b) => b === 0xcd) ? 'written' : c.every((b) => b === 0xab) ? 'base' : `chunk ${i}: neither (first byte ${c[0]}, last ${c[CHUNK - 1]})`;
    });
    // What dd got in comes first, then the base: the failed chunk and those after it were never written.
    const written = kinds.indexOf('base');
    expect(written).toBeGreaterThan(0);
    expect(kinds).toEqual([...Array<string>(written).fill('written'), ...Array<string>(32 - written).fill('base')]);
    expect(cli('del', '-n', String(dev.id)).status).toBe(0);
  });
});
