// null: a device of the given size whose reads return whatever is in the client's buffer and whose writes
// vanish. It measures the engine alone.
import type { TargetSpec } from '../../src/target.js';
import { parseSize, sizeOption } from '../../src/size.js';
import { UserError } from '../../src/errors.js';

const spec: TargetSpec = {
  name: 'null',
  describe: 'completes every request without moving data (for measuring the engine)',
  movesData: false,
  options: {
    size: sizeOption,
  },
  async open(opts) {
    const size = parseSize(String(opts.size ?? '250G'));
    if (size <= 0 || size % 512 !== 0) throw new UserError(`--size must be a positive multiple of 512 bytes`);
    return { size, fds: [], params: { logicalBsShift: 9, physicalBsShift: 12 }, info: {}, close() {} };
  },
};
export default spec;
