// null: a device of the given size whose reads return zeroes and whose writes vanish. It measures the
// engine alone. Reads are filled from /dev/zero on the lease (null.cc), so it moves data after all: the
// default data mode is the one that leases.
import fs from 'node:fs';
import type { TargetSpec } from '../../src/target.js';
import { parseSize, sizeOption } from '../../src/size.js';
import { UserError } from '../../src/errors.js';

const spec: TargetSpec = {
  name: 'null',
  describe: 'reads return zeroes, writes vanish (for measuring the engine)',
  movesData: true,
  options: {
    size: sizeOption,
  },
  async open(opts) {
    const size = parseSize(String(opts.size ?? '250G'));
    if (size <= 0 || size % 512 !== 0) throw new UserError(`--size must be a positive multiple of 512 bytes`);
    const zero = fs.openSync('/dev/zero', 'r');
    return { size, fds: [zero], params: { logicalBsShift: 9, physicalBsShift: 12 }, info: {}, close: () => fs.closeSync(zero) };
  },
};
export default spec;
