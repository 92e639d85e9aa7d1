// The JavaScript half of the bridge against an engine whose hand-over queues are full: a completion the
// engine refuses (native/queue.cc's -EAGAIN, moved to the front of the batch by native/device_object.cc) is handed
// again until it is taken. Dropped, its request would never end.
import { describe, expect, it } from 'vitest';
import { Bridge } from '../../src/bridge.js';
import type { NativeDevice } from '../../src/native.js';

const DESC = 24;
const DONE = 24;
const TAGS = 8;
const LEN = 512;

/** Read descriptors for tags 0..n-1 of queue 0: tag t has generation t + 100 and offset t * LEN. */
function reads(n: number): Buffer {
  const b = Buffer.alloc(n * DESC);
  for (let t = 0; t < n; t++) {
    b.writeUInt16LE(0, t * DESC);
    b.writeUInt16LE(t, t * DESC + 2);
    b.writeUInt32LE(t + 100, t * DESC + 4);
    b.writeUInt32LE(0, t * DESC + 8); // read
    b.writeUInt32LE(LEN, t * DESC + 12);
    b.writeBigUInt64LE(BigInt(t * LEN), t * DESC + 16);
  }
  return b;
}

describe('bridge', () => {
  it('hands a refused completion again until the engine takes it: none is dropped', async () => {
    const bridge = new Bridge({ size: 1 << 20, read: (req) => void req.data.fill(1) }, { queues: 1, depth: TAGS, maxIoBytes: 4096 }, () => undefined);
    const taken: { tag: number; gen: number; result: number }[] = [];
    let calls = 0;
    // The first three hand-overs take one record each and refuse the rest, as a full queue would.
    const dev = {
      complete(batch: Buffer): number {
        calls++;
        let refused = 0;
        for (let off = 0; off + DONE <= batch.length; off += DONE) {
          if (calls <= 3 && off > 0) batch.copy(batch, DONE * refused++, off, off + DONE);
          else taken.push({ tag: batch.readUInt16LE(off + 2), gen: batch.readUInt32LE(off + 4), result: batch.readInt32LE(off + 8) });
        }
        return refused;
      },
    } as unknown as NativeDevice;
    bridge.attach(dev);
    bridge.onBatch(reads(TAGS));
    for (let i = 0; i < 200 && taken.length < TAGS; i++) await new Promise((r) => setTimeout(r, 5));
    expect(calls).toBeGreaterThan(3);
    expect(taken.map((c) => c.tag).sort((a, b) => a - b)).toEqual([...Array(TAGS).keys()]);
    for (const c of taken) expect([c.gen, c.result]).toEqual([c.tag + 100, LEN]);
  });
});
