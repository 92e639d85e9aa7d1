// mirror: RAID1 over files or block devices (`--leg`, two or more as a rule; one is allowed, to serve what
// survives of a mirror). Every leg must have the same size. The native side (mirror.cc) keeps each leg's
// state; `list` shows it in info.mirror, info.legs and, for a failed leg N, info.legN.
import type { TargetSpec } from '../../src/target.js';
import { UserError } from '../../src/errors.js';
import { closeLegs, legFileOptions, legInfo, legOption, legOptions, legParams, openLegs } from './legs.js';

const spec: TargetSpec = {
  name: 'mirror',
  describe: 'RAID1: every write to each leg, reads spread over them; a failed leg is dropped',
  movesData: true,
  options: {
    leg: legOption,
    ...legFileOptions,
  },
  async open(opts) {
    const legs = await openLegs('mirror', opts, 1);
    const sizes = new Set(legs.map((l) => l.opened.size));
    if (sizes.size > 1) {
      closeLegs(legs);
      throw new UserError(`the legs of a mirror must have one size, not ${legs.map((l) => `${l.path} ${l.opened.size}`).join(', ')} (bytes)`);
    }
    // One size, cut by each leg to its own block size: a multiple of the largest.
    return {
      size: legs[0].opened.size,
      fds: legs.map((l) => l.opened.fds[0]),
      options: legOptions(legs),
      params: legParams(legs),
      info: { ...legInfo(legs), mirror: 'clean', legs: legs.map(() => 'ok').join(',') },
      close: () => closeLegs(legs),
    };
  },
};
export default spec;
