// overlay: a copy-on-write disk over a read-only base image, written in TypeScript. The device is split in
// 64 KiB chunks; a chunk never written reads from the base, a written one lives in the overlay file at the
// same offset. Requests that touch chunks all in one state are routed (served on the lease, kernel to
// kernel: the bytes never reach JavaScript); only the first write to a chunk comes here, for a
// read-modify-write of the chunk from the base. Which chunks are written is kept in FILE.map, so the
// overlay survives del and re-add, and a crashed server (`recover`, `--restart`); the base is opened
// read-only and never changes.
import fs from 'node:fs';
import { defineTarget, type BlockDevice, type BlockRequest, type Route } from '../../src/api.js';

const CHUNK = 64 * 1024;
/** Any filesystem's block fits: the base and the overlay are regular files, read and written buffered. */
const BLOCK = 512;
/** A chunk's entry in FILE.map once it is in the overlay. */
const WRITTEN = Buffer.from([1]);

type PositionalIo = (fd: number, buf: Buffer, off: number, len: number, pos: number, cb: (e: Error | null, n: number) => void) => void;
/**
 * fs.read or fs.write of all len bytes at a position, on libuv's pool, as a promise. A short transfer (a
 * write on a filling filesystem) is continued; the next try then fails (ENOSPC), or makes no progress.
 */
async function pio(f: PositionalIo, fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  for (let done = 0; done < len; ) {
    const n = await new Promise<number>((res, rej) => f(fd, buf, off + done, len - done, pos + done, (e, k) => (e ? rej(e) : res(k))));
    if (n === 0) throw new Error(`${f === fs.read ? 'read' : 'write'} of ${len - done} bytes at ${pos + done} made no progress`);
    done += n;
  }
}

export default defineTarget({
  name: 'overlay',
  describe: 'copy-on-write over a read-only base image (TypeScript)',
  persistent: true,
  options: {
    base: { describe: 'the read-only base image' },
    overlay: { describe: 'where written chunks go (made if missing; FILE.map beside it holds which)' },
  },
  open(opts): BlockDevice {
    if (typeof opts.base !== 'string' || typeof opts.overlay !== 'string') throw new Error('needs --base IMG and --overlay FILE');
    const base = fs.openSync(opts.base, 'r');
    const st = fs.fstatSync(base);
    const size = st.size - (st.size % BLOCK);
    // A directory or a device has no size here: say what it is rather than that it is empty.
    const wrong = !st.isFile() ? 'is not a regular file' : size === 0 ? 'is empty' : undefined;
    if (wrong) {
      fs.closeSync(base);
      throw new Error(`--base ${opts.base} ${wrong}`);
    }
    const over = fs.openSync(opts.overlay, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    if (fs.fstatSync(over).size < size) fs.ftruncateSync(over, size);
    const chunks = Math.ceil(size / CHUNK);
    const mapPath = `${opts.overlay}.map`;
    const map = Buffer.alloc(chunks);
    // Made by the first copy-up, not here: an add that is refused after this open leaves no map behind.
    let mapFd = -1;
    try {
      mapFd = fs.openSync(mapPath, fs.constants.O_RDWR);
      fs.readSync(mapFd, map, 0, chunks, 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const written = (i: number) => map[i] === 1;
    /** The first write to a chunk runs alone: a second one waits for it, then finds the chunk written. */
    const busy = new Map<number, Promise<void>>();
    let copiedUp = 0;
    /** Whether the device saw a request: the check `add` makes before its server starts sees none. */
    let served = false;

    const span = (req: { offset: number; length: number }) => [Math.floor(req.offset / CHUNK), Math.floor((req.offset + req.length - 1) / CHUNK)];
    const all = (req: { offset: number; length: number }, want: boolean) => {
      const [a, b] = span(req);
      for (let i = a; i <= b; i++) if (written(i) !== want || busy.has(i)) return false;
      return true;
    };

    /** Copies chunk i up from the base with this request's bytes in it; false if another request did it
     * first (then the caller writes its bytes over the overlay's, as for any written chunk). */
    async function copyUp(i: number, req: BlockRequest): Promise<boolean> {
      for (let p = busy.get(i); p; p = busy.get(i)) await p;
      if (written(i)) return false;
      const done = (async () => {
        const start = i * CHUNK, len = Math.min(CHUNK, size - start);
        const buf = Buffer.alloc(len);
        await pio(fs.read, base, buf, 0, len, start);
        // This request's bytes over the base's, then the whole chunk into the overlay, then the map.
        const lo = Math.max(start, req.offset), hi = Math.min(start + len, req.offset + req.length);
        req.data.copy(buf, lo - start, lo - req.offset, hi - req.offset);
        await pio(fs.write, over, buf, 0, len, start);
        await new Promise<void>((res, rej) => fs.fdatasync(over, (e) => (e ? rej(e) : res())));
        if (mapFd < 0) mapFd = fs.openSync(mapPath, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
        // Written in the map here only once the file says so too: a later write routed to the chunk
        // must not be lost to a map that forgot it.
        await pio(fs.write, mapFd, WRITTEN, 0, 1, i);
        map[i] = 1;
        copiedUp++;
      })();
      busy.set(i, done);
      try {
        await done;
      } finally {
        busy.delete(i);
      }
      return true;
    }

    return {
      size,
      blockSize: BLOCK,
      files: [base, over],
      info: { base: opts.base, overlay: opts.overlay },
      route(req): Route | undefined {
        served = true;
        if (all(req, true)) return { file: 1, offset: req.offset };
        if (req.op === 'read' && all(req, false)) return { file: 0, offset: req.offset };
        return undefined;
      },
      async read(req) {
        // Chunks in both states: each piece from where it lives.
        const [a, b] = span(req);
        for (let i = a; i <= b; i++) {
          const lo = Math.max(i * CHUNK, req.offset), hi = Math.min((i + 1) * CHUNK, req.offset + req.length);
          await pio(fs.read, written(i) ? over : base, req.data, lo - req.offset, hi - lo, lo);
        }
      },
      async write(req) {
        const [a, b] = span(req);
        for (let i = a; i <= b; i++) {
          const lo = Math.max(i * CHUNK, req.offset), hi = Math.min((i + 1) * CHUNK, req.offset + req.length);
          if (written(i) || !(await copyUp(i, req))) await pio(fs.write, over, req.data, lo - req.offset, hi - lo, lo);
        }
      },
      async flush() {
        await new Promise<void>((res, rej) => fs.fdatasync(over, (e) => (e ? rej(e) : res())));
        if (mapFd >= 0) await new Promise<void>((res, rej) => fs.fdatasync(mapFd, (e) => (e ? rej(e) : res())));
      },
      close() {
        // Into the server's log; said by `add`'s own check it would be a second line under an error.
        if (served) console.error(`overlay: ${copiedUp} chunks copied up from the base`);
        for (const fd of [base, over, mapFd]) if (fd >= 0) fs.closeSync(fd);
      },
    };
  },
});
