// What a new server must still offer to re-attach to a device whose server died: the kernel kept the
// device's geometry and promises (a write cache that FLUSH reaches, FUA, discard), and the filesystem on
// it relies on them. A backend that now offers less (an NBD export restarted without flush) is refused
// before any tag is fetched, so no request is served with weaker durability than it was promised.
import { addon, type Params, type ReadParams } from './native.js';

type Shape = { size: number; params: Omit<Params, 'devSectors' | 'maxSectors'> };

/** Why the backend cannot take the device over, or undefined if it can. */
export function reattachRefusal(id: number, kept: ReadParams, now: Shape): string | undefined {
  const A = addon.abi.attrs;
  const sectors = Math.floor(now.size / 512);
  // Larger is fine (a backend grown for a `resize` that did not reach the kernel, an export grown since):
  // the device goes on at its own size.
  if (sectors < kept.devSectors) return `device ${id} has ${kept.devSectors} sectors but its target now has only ${sectors}`;
  const lbs = now.params.logicalBsShift ?? 9;
  if (kept.logicalBsShift !== lbs)
    return `device ${id} has ${1 << kept.logicalBsShift}-byte logical blocks but its target now needs ${1 << lbs}`;
  const attrs = now.params.attrs ?? 0;
  if ((attrs & A.READ_ONLY) !== 0 && (kept.attrs & A.READ_ONLY) === 0) return `device ${id} is writable but its target is now read-only`;
  const lost = (bit: number) => (kept.attrs & bit) !== 0 && (attrs & bit) === 0;
  if (lost(A.VOLATILE_CACHE)) return `device ${id} was made with a write cache its target can now no longer flush`;
  if (lost(A.FUA)) return `device ${id} was made with FUA writes its target now lacks`;
  const d = now.params.discard;
  if ((kept.discard?.maxDiscardSectors ?? 0) > (d?.maxDiscardSectors ?? 0)) return `device ${id} takes discards its target no longer does`;
  if ((kept.discard?.maxWriteZeroesSectors ?? 0) > (d?.maxWriteZeroesSectors ?? 0))
    return `device ${id} takes write-zeroes its target no longer does`;
  return undefined;
}
