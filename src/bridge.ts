// The JavaScript half of the bridge (targets/bridge/bridge.cc is the native half): takes batches of request
// descriptors from the queue threads, runs the target's handlers with every tag in flight at once, and
// hands completions back in batches. A handler works in place on the tag's buffer, which the queue thread
// fills (a write) and hands to the kernel (a read) by user copy; a routed request never crosses into
// JavaScript. A target that may route gets writes without their bytes and copies in, on libuv's pool,
// only the ones it handles.
import fs from 'node:fs';
import { addon, type NativeDevice } from './native.js';
import type { BlockDevice, BlockOp, BlockRequest } from './api.js';

const DESC = 24; // q u16, tag u16, gen u32, op|flags u32, len u32, offset u64
const DONE = 24; // q u16, tag u16, gen u32, result i32, file u8, pad, file offset u64
const OPS: Record<number, BlockOp> = { 0: 'read', 1: 'write', 2: 'flush', 3: 'discard', 5: 'write-zeroes' };
const UBLK_IO_F_FUA = 1 << 13;
const DESC_F_BYTES = 2 ** 31; // the write's bytes are in the tag's buffer already
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

export class Bridge {
  private dev: NativeDevice | undefined;
  /** One buffer per tag of every queue (q * depth + tag), lent to the engine: no allocation per request. */
  readonly buffers: Buffer[];
  /** For the native half: whether writes come with their bytes. */
  readonly nativeOptions: { routes: number };
  private out = Buffer.alloc(DONE * 64);
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
  }

  /** The device exists only after the bridge's handler was handed to it. */
  attach(dev: NativeDevice): void {
    this.dev = dev;
  }

  /** Called by the native side with a batch of descriptors. */
  readonly onBatch = (batch: Buffer): void => {
    for (let off = 0; off + DESC <= batch.length; off += DESC) {
      const q = batch.readUInt16LE(off), tag = batch.readUInt16LE(off + 2), gen = batch.readUInt32LE(off + 4);
      const opFlags = batch.readUInt32LE(off + 8), len = batch.readUInt32LE(off + 12);
      const offset = Number(batch.readBigUInt64LE(off + 16));
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
      if (op === 'write' && !(opFlags & DESC_F_BYTES)) await this.copyIn(buf, length, Number(addon.abi.userCopyOffset(q, tag)));
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
    if (this.outLen + DONE > this.out.length) {
      const bigger = Buffer.alloc(this.out.length * 2);
      this.out.copy(bigger, 0, 0, this.outLen);
      this.out = bigger;
    }
    const o = this.outLen;
    this.out.fill(0, o, o + DONE);
    this.out.writeUInt16LE(q, o);
    this.out.writeUInt16LE(tag, o + 2);
    this.out.writeUInt32LE(gen, o + 4);
    this.out.writeInt32LE(result, o + 8);
    this.out.writeUInt8(file, o + 12);
    this.out.writeBigUInt64LE(BigInt(fileOffset), o + 16);
    this.outLen += DONE;
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
    this.outLen = this.dev.complete(this.out.subarray(0, this.outLen)) * DONE;
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
