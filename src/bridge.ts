// The JavaScript half of the bridge (targets/bridge/bridge.cc is the native half, records.h the records they
// exchange, whose layout the addon gives here): takes batches of request descriptors from the queue threads,
// runs the target's handlers with every tag in flight at once, and hands completions back in batches (the
// addon's bridge.complete). A handler works in place on the tag's buffer, which the queue thread fills (a
// write) and hands to the kernel (a read) by user copy; a routed request never crosses into JavaScript. A
// target that may route gets writes without their bytes and copies in, on libuv's pool, only the ones it
// handles.
import fs from 'node:fs';
import { addon, type BridgeLayout, type NativeDevice } from './native.js';
import type { BlockDevice, BlockOp, BlockRequest } from './api.js';

const OPS: Record<number, BlockOp> = { 0: 'read', 1: 'write', 2: 'flush', 3: 'discard', 5: 'write-zeroes' };
const UBLK_IO_F_FUA = 1 << 13;
const EIO = 5, EOPNOTSUPP = 95;
/** A refused completion goes again after this long: its queue thread needs a turn to take what it holds. */
const RETRY_MS = 1;

type Handler = (req: BlockRequest) => Promise<void> | void;

function handlerFor(bd: BlockDevice, op: BlockOp): Handler | undefined {
  switch (op) {
    case 'read':
      return bd.read?.bind(bd);
    case 'write':
      return bd.write?.bind(bd);
    case 'flush':
      return bd.flush?.bind(bd);
    case 'discard':
      return bd.discard?.bind(bd);
    case 'write-zeroes':
      return bd.writeZeroes?.bind(bd);
  }
}

const readAt = (fd: number, buf: Buffer, len: number, pos: number) =>
  new Promise<void>((resolve, reject) =>
    fs.read(fd, buf, 0, len, pos, (err, n) => (err ? reject(err) : n === len ? resolve() : reject(new Error(`short user copy: ${n} of ${len}`)))),
  );

export interface BridgeShape {
  queues: number;
  depth: number;
  maxIoBytes: number;
}

/** What the bridge needs of its device: the way in for completions, and /dev/ublkcN for user copy. */
export interface BridgeDevice {
  /** Hands over layout.done records; returns how many were refused now, moved to the front of batch. */
  complete(batch: Buffer): number;
  charFd(): number;
}

/** The native device, as the bridge uses it. */
export const bridgeDevice = (dev: NativeDevice): BridgeDevice => ({
  complete: (batch) => addon.bridge.complete(dev, batch),
  charFd: () => dev.charFd(),
});

export class Bridge {
  private dev: BridgeDevice | undefined;
  /** One buffer per tag of every queue (q * depth + tag), lent to the engine: no allocation per request. */
  readonly buffers: Buffer[];
  /** For the native half: whether writes come with their bytes. */
  readonly nativeOptions: { routes: number };
  /** The records' layout, read from the addon once. */
  private readonly desc: BridgeLayout['desc'];
  private readonly done: BridgeLayout['done'];
  private out: Buffer;
  private outLen = 0;
  private flushQueued = false;
  private copies = 0;
  private closing = false;
  private readonly said = new Set<string>();
  private readonly empty = Buffer.alloc(0);

  constructor(
    private readonly bd: BlockDevice,
    private readonly shape: BridgeShape,
    private readonly log: (line: string) => void,
  ) {
    // Untouched pages of a buffer cost no memory: only what requests use becomes resident.
    this.buffers = Array.from({ length: shape.queues * shape.depth }, () => Buffer.allocUnsafeSlow(shape.maxIoBytes));
    this.nativeOptions = { routes: bd.route ? 1 : 0 };
    const layout = addon.bridge.layout;
    this.desc = layout.desc;
    this.done = layout.done;
    this.out = Buffer.alloc(this.done.bytes * 64);
  }

  /** The device exists only after the bridge's handler was handed to it. */
  attach(dev: BridgeDevice): void {
    this.dev = dev;
  }

  /** Called by the native side with a batch of descriptors. */
  readonly onBatch = (batch: Buffer): void => {
    const d = this.desc;
    for (let off = 0; off + d.bytes <= batch.length; off += d.bytes) {
      const q = batch.readUInt16LE(off + d.q), tag = batch.readUInt16LE(off + d.tag), gen = batch.readUInt32LE(off + d.gen);
      const opFlags = batch.readUInt32LE(off + d.opFlags), len = batch.readUInt32LE(off + d.len);
      const offset = Number(batch.readBigUInt64LE(off + d.offset));
      void this.serve(q, tag, gen, opFlags, len, offset);
    }
  };

  private async serve(q: number, tag: number, gen: number, opFlags: number, length: number, offset: number): Promise<void> {
    const op = OPS[opFlags & 0xff];
    const fua = (opFlags & UBLK_IO_F_FUA) !== 0;
    const handler = op && handlerFor(this.bd, op);
    if (!op || !handler) return this.complete(q, tag, gen, -EOPNOTSUPP);
    const data = op === 'read' || op === 'write';
    if (data && this.bd.route) {
      const r = this.bd.route({ op, offset, length, fua });
      if (r) return this.complete(q, tag, gen, 0, r.file + 1, r.offset);
    }
    const buf = data ? this.buffers[q * this.shape.depth + tag].subarray(0, length) : this.empty;
    try {
      if (op === 'write' && !(opFlags & this.desc.fBytes)) await this.copyIn(buf, length, Number(addon.abi.userCopyOffset(q, tag)));
      await handler({ op, offset, length, fua, data: buf });
      this.complete(q, tag, gen, data ? length : 0);
    } catch (e) {
      // One line per kind of failure, not per request: a failing handler must not flood the log.
      const what = `${op} handler failed: ${e instanceof Error ? e.message : String(e)}`;
      if (!this.said.has(what)) {
        this.said.add(what);
        this.log(`${what} (EIO for the request; said once)`);
      }
      this.complete(q, tag, gen, -EIO);
    }
  }

  private async copyIn(buf: Buffer, len: number, pos: number): Promise<void> {
    if (this.closing || !this.dev) throw new Error('device stopping');
    this.copies++;
    try {
      await readAt(this.dev.charFd(), buf, len, pos);
    } finally {
      this.copies--;
    }
  }

  private complete(q: number, tag: number, gen: number, result: number, file = 0, fileOffset = 0): void {
    const c = this.done;
    if (this.outLen + c.bytes > this.out.length) {
      const bigger = Buffer.alloc(this.out.length * 2);
      this.out.copy(bigger, 0, 0, this.outLen);
      this.out = bigger;
    }
    const o = this.outLen;
    this.out.fill(0, o, o + c.bytes);
    this.out.writeUInt16LE(q, o + c.q);
    this.out.writeUInt16LE(tag, o + c.tag);
    this.out.writeUInt32LE(gen, o + c.gen);
    this.out.writeInt32LE(result, o + c.result);
    this.out.writeUInt8(file, o + c.file);
    this.out.writeBigUInt64LE(BigInt(fileOffset), o + c.fileOffset);
    this.outLen += c.bytes;
    if (!this.flushQueued) {
      this.flushQueued = true;
      // Everything completed in this turn of the event loop goes back in one call.
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.flushQueued = false;
    if (this.outLen === 0 || !this.dev || this.closing) return;
    // What a queue could not take now (its queue thread has not yet taken what it holds) is left at the
    // front of the batch: it goes again a moment later, with whatever completes meanwhile.
    this.outLen = this.dev.complete(this.out.subarray(0, this.outLen)) * this.done.bytes;
    if (this.outLen > 0) {
      this.flushQueued = true;
      setTimeout(() => this.flush(), RETRY_MS);
    }
  }

  /**
   * Before the device closes /dev/ublkcN: no new copy starts, and the ones on the pool finish, so none can
   * land on a descriptor number the process has reused. Bounded: a copy is a memory copy.
   */
  async close(): Promise<void> {
    this.closing = true;
    for (let i = 0; i < 500 && this.copies > 0; i++) await new Promise((r) => setTimeout(r, 10));
  }
}
