// stripe: RAID0 over files or block devices (`--leg`, in order) in chunks of `--chunk` bytes. The device
// is n times the smallest leg, rounded down to a chunk; the block layer is told the chunk (io_min) and the
// stripe width (io_opt).
import type { TargetSpec } from '../../src/target.js';
import { parseSize } from '../../src/size.js';
import { UserError } from '../../src/errors.js';
import { closeLegs, legFileOptions, legInfo, legOption, legOptions, legParams, openLegs } from '../mirror/legs.js';

const MIN_CHUNK = 4096;
const MAX_CHUNK = 1 << 30;

function chunkSize(v: unknown): number {
  const text = String(v ?? '128k');
  let n: number;
  try {
    n = parseSize(text);
  } catch {
    throw new UserError(`--chunk "${text}" is not a size (use e.g. 64k, 128k, 1M)`);
  }
  if (n < MIN_CHUNK || n > MAX_CHUNK || (n & (n - 1)) !== 0)
    throw new UserError(`--chunk must be a power of two from 4k to 1G, not ${text}`);
  return n;
}

const spec: TargetSpec = {
  name: 'stripe',
  describe: 'RAID0: the device cut into chunks laid round-robin over the legs',
  movesData: true,
  options: {
    leg: legOption,
    chunk: { type: 'string', default: '128k', describe: 'stripe chunk: a power of two from 4k to 1G (stripe)' },
    ...legFileOptions,
  },
  async open(opts) {
    const chunk = chunkSize(opts.chunk);
    const legs = await openLegs('stripe', opts, 1);
    const smallest = Math.min(...legs.map((l) => l.opened.size));
    const rows = Math.floor(smallest / chunk);
    if (rows === 0) {
      closeLegs(legs);
      throw new UserError(`--chunk ${opts.chunk} is larger than the smallest leg (${smallest} bytes)`);
    }
    const shift = Math.log2(chunk);
    const width = chunk * legs.length;
    return {
      size: rows * width,
      fds: legs.map((l) => l.opened.fds[0]),
      options: { ...legOptions(legs), 'chunk-shift': shift },
      params: {
        ...legParams(legs),
        ioMinShift: shift,
        // io_opt is a power of two here (and below 4G): the stripe width where it is one, else the chunk.
        ioOptShift: (width & (width - 1)) === 0 && width <= MAX_CHUNK ? Math.log2(width) : shift,
      },
      info: { ...legInfo(legs), chunk, legCount: legs.length },
      close: () => closeLegs(legs),
    };
  },
};
export default spec;
