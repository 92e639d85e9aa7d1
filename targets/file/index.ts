// file: a regular file or a block device behind the ublk device. Opened with O_DIRECT where the backing
// allows it, so the page cache is not paid twice; buffered otherwise (`list` says which).
import fs from 'node:fs';
import type { TargetSpec } from '../../src/target.js';
import { parseSize, sizeOption } from '../../src/size.js';
import { UserError } from '../../src/errors.js';

const { O_RDWR, O_RDONLY, O_CREAT, O_DIRECT, O_CLOEXEC } = fs.constants as typeof fs.constants & { O_CLOEXEC?: number };

function openBacking(file: string, flags: number): { fd: number; direct: boolean } {
  try {
    return { fd: fs.openSync(file, flags | O_DIRECT), direct: true };
  } catch (e) {
    // Filesystems without direct IO refuse the flag at open; everything else is a real error.
    if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
    return { fd: fs.openSync(file, flags), direct: false };
  }
}

/** Size of a block device from sysfs: node's stat reports 0 for them. */
function blockDeviceSize(st: fs.Stats): number {
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
  return Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim()) * 512;
}

const spec: TargetSpec = {
  name: 'file',
  describe: 'a regular file or block device (O_DIRECT where possible)',
  movesData: true,
  options: {
    file: { type: 'string', describe: 'backing file or block device' },
    size: sizeOption,
    'read-only': { type: 'boolean', default: false, describe: 'export read-only' },
    'logical-block-size': { type: 'number', default: 512, describe: 'logical block size: 512 or 4096' },
    buffered: { type: 'boolean', default: false, describe: 'use the page cache even where O_DIRECT works' },
  },
  async open(opts) {
    const file = opts.file;
    if (typeof file !== 'string' || file === '') throw new UserError('the file target needs --file <path>');
    const readOnly = opts['read-only'] === true;
    const lbs = Number(opts['logical-block-size'] ?? 512);
    if (lbs !== 512 && lbs !== 4096) throw new UserError(`--logical-block-size must be 512 or 4096, not ${lbs}`);
    const want = opts.size === undefined ? undefined : parseSize(String(opts.size));
    if (want !== undefined && (want <= 0 || want % lbs !== 0))
      throw new UserError(`--size must be a positive multiple of the logical block size (${lbs})`);
    if (readOnly && want !== undefined) throw new UserError('--size cannot grow a file exported --read-only');
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(file);
    } catch {
      if (want === undefined) throw new UserError(`${file} does not exist (give --size to create it)`);
    }
    if (st && !st.isFile() && !st.isBlockDevice()) throw new UserError(`${file} is neither a regular file nor a block device`);
    const isBlock = st?.isBlockDevice() ?? false;
    const flags = (readOnly ? O_RDONLY : O_RDWR) | (st ? 0 : O_CREAT) | (O_CLOEXEC ?? 0);
    let fd: number;
    let direct: boolean;
    try {
      ({ fd, direct } = opts.buffered === true ? { fd: fs.openSync(file, flags), direct: false } : openBacking(file, flags));
    } catch (e) {
      throw new UserError(`cannot open ${file}: ${(e as Error).message}`);
    }
    let size = isBlock ? blockDeviceSize(st!) : fs.fstatSync(fd).size;
    if (want !== undefined && !isBlock && size < want) {
      fs.ftruncateSync(fd, want);
      size = want;
    }
    if (want !== undefined && isBlock && want > size) {
      fs.closeSync(fd);
      throw new UserError(`${file} holds ${size} bytes, less than --size ${want}`);
    }
    if (want !== undefined) size = Math.min(size, want);
    size -= size % lbs;
    if (size === 0) {
      fs.closeSync(fd);
      throw new UserError(`${file} is empty (give --size to grow it)`);
    }
    const shift = Math.log2(lbs);
    const UBLK_ATTR_READ_ONLY = 1, UBLK_ATTR_VOLATILE_CACHE = 4, UBLK_ATTR_FUA = 8;
    return {
      size,
      fds: [fd],
      params: {
        // The backing caches writes (page cache, or the disk's own): declare it so FLUSH and FUA reach us.
        attrs: UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA | (readOnly ? UBLK_ATTR_READ_ONLY : 0),
        logicalBsShift: shift,
        physicalBsShift: 12,
        ioMinShift: shift,
        ...(readOnly
          ? {}
          : { discard: { granularity: 4096, maxDiscardSectors: 1 << 22, maxWriteZeroesSectors: 1 << 22 } }),
        // O_DIRECT members read and write the request's pages in place: they must meet its alignment.
        ...(direct ? { dmaAlignment: lbs - 1 } : {}),
      },
      info: { file, direct, readOnly, kind: isBlock ? 'block device' : 'regular file' },
      close() {
        fs.closeSync(fd);
      },
    };
  },
};
export default spec;
