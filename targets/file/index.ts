// file: a regular file or a block device behind the ublk device. Opened with O_DIRECT where the backing
// allows it, so the page cache is not paid twice; buffered otherwise (`list` says which and why).
import fs from 'node:fs';
import path from 'node:path';
import type { TargetSpec } from '../../src/target.js';
import type { DiscardParams } from '../../src/native.js';
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

/** The sysfs directory of block device number dev. */
function sysfsBlock(dev: number): string {
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  return `/sys/dev/block/${major}:${minor}`;
}

/** Size of a block device from sysfs: node's stat reports 0 for them. */
function blockDeviceSize(st: fs.Stats): number {
  return Number(fs.readFileSync(`${sysfsBlock(st.rdev)}/size`, 'utf8').trim()) * 512;
}

interface QueueLimits {
  /** Logical block size: what O_DIRECT offsets and lengths must be multiples of. */
  logical: number;
  /** Mask the addresses of O_DIRECT buffers must clear. */
  dmaAlignment: number;
  discardMax: number;
  discardGranularity: number;
  writeZeroesMax: number;
}

/**
 * The request queue limits of block device dev (a partition's are its disk's), or undefined if dev is
 * no block device: a filesystem without one device under it (tmpfs, NFS, btrfs), where 512 is assumed.
 */
function queueLimits(dev: number): QueueLimits | undefined {
  let dir = sysfsBlock(dev);
  if (!fs.existsSync(dir)) return undefined;
  dir = fs.realpathSync(dir);
  if (!fs.existsSync(path.join(dir, 'queue'))) dir = path.dirname(dir);
  const read = (name: string, missing: number) => {
    const f = path.join(dir, 'queue', name);
    return fs.existsSync(f) ? Number(fs.readFileSync(f, 'utf8').trim()) : missing;
  };
  return {
    logical: read('logical_block_size', 512),
    dmaAlignment: read('dma_alignment', 511),
    discardMax: read('discard_max_bytes', 0),
    discardGranularity: read('discard_granularity', 0),
    writeZeroesMax: read('write_zeroes_max_bytes', 0),
  };
}

/** The limits of what holds the file: itself if a block device, else its filesystem's device. */
function backingLimits(file: string, st: fs.Stats | undefined): QueueLimits | undefined {
  if (st?.isBlockDevice()) return queueLimits(st.rdev);
  try {
    // A file not made yet lives on its directory's filesystem.
    return queueLimits((st ?? fs.statSync(path.dirname(path.resolve(file)))).dev);
  } catch {
    return undefined; // no such directory: opening the file says so
  }
}

const MAX_LBS = 4096; // ublk's largest logical block size (a page)

/** A regular file: discard and write-zeroes are fallocate calls, of any length the kernel splits. */
const FILE_DISCARD: DiscardParams = { granularity: 4096, maxDiscardSectors: 1 << 22, maxWriteZeroesSectors: 1 << 22 };

/**
 * A block device: what its queue takes, and nothing it lacks. Write-zeroes is fallocate, there the device's
 * own write-zeroes (PUNCH_HOLE has no fallback): offered only if the device has it. A device whose blocks
 * are larger than ours would refuse our ranges: neither is offered then.
 */
function blockDiscard(limits: QueueLimits, lbs: number): DiscardParams | undefined {
  if (limits.logical > lbs) return undefined;
  // Whole blocks, and within ublk's 32-bit sector counts.
  const sectors = (bytes: number) => (Math.floor(Math.min(bytes, 0xffffffff * 512) / lbs) * lbs) / 512;
  const d = {
    granularity: Math.max(limits.discardGranularity, lbs),
    maxDiscardSectors: sectors(limits.discardMax),
    maxWriteZeroesSectors: sectors(limits.writeZeroesMax),
  };
  return d.maxDiscardSectors || d.maxWriteZeroesSectors ? d : undefined;
}

const spec: TargetSpec = {
  name: 'file',
  describe: 'a regular file or block device (O_DIRECT where possible)',
  movesData: true,
  options: {
    file: { type: 'string', describe: 'backing file or block device' },
    size: sizeOption,
    'read-only': { type: 'boolean', default: false, describe: 'export read-only' },
    'logical-block-size': { type: 'number', describe: "logical block size: 512 or 4096 (default: the backing's, at least 512)" },
    buffered: { type: 'boolean', default: false, describe: 'use the page cache even where O_DIRECT works' },
  },
  async open(opts) {
    const file = opts.file;
    if (typeof file !== 'string' || file === '') throw new UserError('the file target needs --file <path>');
    const readOnly = opts['read-only'] === true;
    const asked = opts['logical-block-size'] === undefined ? undefined : Number(opts['logical-block-size']);
    if (asked !== undefined && asked !== 512 && asked !== 4096) throw new UserError(`--logical-block-size must be 512 or 4096, not ${asked}`);
    const want = opts.size === undefined ? undefined : parseSize(String(opts.size));
    if (readOnly && want !== undefined) throw new UserError('--size cannot grow a file exported --read-only');
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(file);
    } catch {
      if (want === undefined) throw new UserError(`${file} does not exist (give --size to create it)`);
    }
    if (st && !st.isFile() && !st.isBlockDevice()) throw new UserError(`${file} is neither a regular file nor a block device`);
    const isBlock = st?.isBlockDevice() ?? false;
    // O_DIRECT offsets and lengths must be multiples of the backing's logical block size. The device's
    // defaults to it, direct or not, so the geometry a partition table or filesystem sees never changes;
    // one asked smaller is served buffered.
    const limits = backingLimits(file, st);
    const align = limits?.logical ?? 512;
    const lbs = asked ?? Math.min(Math.max(align, 512), MAX_LBS);
    if (want !== undefined && (want <= 0 || want % lbs !== 0))
      throw new UserError(`--size must be a positive multiple of the logical block size (${lbs})`);
    const buffered =
      opts.buffered === true ? '--buffered'
      : align <= lbs ? undefined
      : asked !== undefined ? `--logical-block-size ${lbs} is below the backing's ${align}-byte direct IO alignment`
      : `the backing's ${align}-byte direct IO alignment is past the largest logical block size`;
    const flags = (readOnly ? O_RDONLY : O_RDWR) | (st ? 0 : O_CREAT) | (O_CLOEXEC ?? 0);
    let fd: number;
    let direct: boolean;
    try {
      ({ fd, direct } = buffered === undefined ? openBacking(file, flags) : { fd: fs.openSync(file, flags), direct: false });
    } catch (e) {
      throw new UserError(`cannot open ${file}: ${(e as Error).message}`);
    }
    const reason = [
      asked === undefined && lbs > 512 ? `logical block size ${lbs}: the backing's` : '',
      direct ? '' : `buffered: ${buffered ?? 'the filesystem refuses O_DIRECT'}`,
    ]
      .filter(Boolean)
      .join('; ');
    let size = isBlock ? blockDeviceSize(st!) : fs.fstatSync(fd).size;
    if (want !== undefined && !isBlock && size < want) {
      fs.ftruncateSync(fd, want);
      // Some filesystems take the call and keep the size (procfs, sysfs): trust only what fstat says.
      size = fs.fstatSync(fd).size;
      if (size < want) {
        fs.closeSync(fd);
        throw new UserError(`${file} cannot be grown to --size ${want} (it stays ${size} bytes): not a file on a real filesystem`);
      }
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
    const discard = readOnly ? undefined : !isBlock ? FILE_DISCARD : limits && blockDiscard(limits, lbs);
    return {
      size,
      fds: [fd],
      params: {
        // The backing caches writes (page cache, or the disk's own): declare it so FLUSH and FUA reach us.
        attrs: UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA | (readOnly ? UBLK_ATTR_READ_ONLY : 0),
        logicalBsShift: shift,
        physicalBsShift: 12,
        ioMinShift: shift,
        ...(discard ? { discard } : {}),
        // O_DIRECT members read and write the request's pages in place: they must meet its alignment.
        ...(direct ? { dmaAlignment: Math.max(lbs - 1, limits?.dmaAlignment ?? 0) } : {}),
      },
      // The native side discards a block device with the block layer's own command (file.cc).
      options: { 'block-discard': isBlock && discard?.maxDiscardSectors ? 1 : 0 },
      info: {
        file,
        direct,
        readOnly,
        kind: isBlock ? 'block device' : 'regular file',
        logicalBlockSize: lbs,
        discard: !discard?.maxDiscardSectors ? 'none' : isBlock ? 'block discard' : 'punch hole',
        ...(reason ? { reason } : {}),
      },
      resize(to) {
        if (readOnly) throw new UserError(`${file} is exported --read-only: not resized`);
        const has = isBlock ? blockDeviceSize(fs.statSync(file)) : fs.fstatSync(fd).size;
        if (has < to) {
          if (isBlock) throw new UserError(`${file} holds ${has} bytes, less than --size ${to}`, 'backend');
          fs.ftruncateSync(fd, to);
          // As at open: a filesystem may take the call and keep the size.
          if (fs.fstatSync(fd).size < to) throw new UserError(`${file} cannot be grown to ${to} bytes: not a file on a real filesystem`, 'backend');
        }
        // The device's size from now on: a later server opens the file (never shrunk) at it.
        return { ...opts, size: String(to) };
      },
      close() {
        fs.closeSync(fd);
      },
    };
  },
};
export default spec;
