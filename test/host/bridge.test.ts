// The JavaScript half of the bridge against an engine whose hand-over queues are full: a completion the
// engine refuses (native/queue.cc's -EAGAIN, moved to the front of the batch by targets/bridge/bridge_napi.cc)
// is handed again until it is taken. Dropped, its request would never end.
import { describe, expect, it } from 'vitest';
import { Bridge, type BridgeDevice } from '../../src/bridge.js';
import { addon } from '../../src/native.js';

const TAGS = 8;
const LEN = 512;
const { desc: D, done: C } = addon.bridge.layout;

/** Read descriptors for tags 0..n-1 of queue 0: tag t has generation t + 100 and offset t * LEN. */
function reads(n: number): Buffer {
  const b = Buffer.alloc(n * D.bytes);
  for (let t = 0; t < n; t++) {
    const o = t * D.bytes;
    b.writeUInt16LE(0, o + D.q);
    b.writeUInt16LE(t, o + D.tag);
    b.writeUInt32LE(t + 100, o + D.gen);
    b.writeUInt32LE(0, o + D.opFlags); // read
    b.writeUInt32LE(LEN, o + D.len);
    b.writeBigUInt64LE(BigInt(t * LEN), o + D.offset);
  }
  return b;
}

describe('bridge', () => {
  it('hands a refused completion again until the engine takes it: none is dropped', async () => {
    const bridge = new Bridge({ size: 1 << 20, read: (req) => void req.data.fill(1) }, { queues: 1, depth: TAGS, maxIoBytes: 4096 }, () => undefined);
    const taken: { tag: number; gen: number; result: number }[] = [];
    let calls = 0;
    // The first three hand-overs take one record each and refuse the rest, as a full queue would.
    const dev: BridgeDevice = {
      complete(batch: Buffer): number {
        calls++;
        let refused = 0;
        for (let off = 0; off + C.bytes <= batch.length; off += C.bytes) {
          if (calls <= 3 && off > 0) batch.copy(batch, C.bytes * refused++, off, off + C.bytes);
          else taken.push({ tag: batch.readUInt16LE(off + C.tag), gen: batch.readUInt32LE(off + C.gen), result: batch.readInt32LE(off + C.result) });
        }
        return refused;
      },
      charFd: () => -1,
    };
    bridge.attach(dev);
    bridge.onBatch(reads(TAGS));
    for (let i = 0; i < 200 && taken.length < TAGS; i++) await new Promise((r) => setTimeout(r, 5));
    expect(calls).toBeGreaterThan(3);
    expect(taken.map((c) => c.tag).sort((a, b) => a - b)).toEqual([...Array(TAGS).keys()]);
    for (const c of taken) expect([c.gen, c.result]).toEqual([c.tag + 100, LEN]);
  });

  it('the addon refuses a completion for anything but a Device, and one naming no tag of its device', () => {
    expect(() => addon.bridge.complete({} as never, Buffer.alloc(C.bytes))).toThrow(/not a Device/);
    const dev = new addon.Device({ devId: 0, queues: 1, depth: 4, maxIoBufBytes: 4096, mode: 'copy', target: 'null', fds: [] });
    try {
      const rec = Buffer.alloc(C.bytes);
      rec.writeUInt16LE(9, C.tag);
      expect(() => addon.bridge.complete(dev, rec)).toThrow(/no tag 9 on queue 0/);
    } finally {
      dev.close();
    }
  });
});
