// memory: a RAM disk written in TypeScript, on the public API (src/api.ts). Sparse: memory is taken in
// 64 KiB chunks on first write; untouched chunks read as zeroes; discard and write-zeroes give whole
// chunks back, to the OS. Its data lives in the server process, so it declares no `persistent`: its devices
// get no user recovery (a new server would serve an empty disk).
import v8 from 'node:v8';
import vm from 'node:vm';
import { defineTarget, type BlockRequest } from '../../src/api.js';
import { parseSize } from '../../src/size.js';

const CHUNK = 64 * 1024;
/** After chunks are dropped, a collection runs this much later: one per burst of discards, not per request. */
const COLLECT_AFTER_MS = 100;

/** Calls fn for each chunk the request touches, with where in the chunk and in the request. */
function eachChunk(req: BlockRequest, fn: (index: number, inChunk: number, inReq: number, len: number) => void): void {
  for (let done = 0; done < req.length; ) {
    const pos = req.offset + done;
    const index = Math.floor(pos / CHUNK), inChunk = pos % CHUNK;
    const len = Math.min(CHUNK - inChunk, req.length - done);
    fn(index, inChunk, done, len);
    done += len;
  }
}

/**
 * V8's full collection. A dropped chunk's bytes are freed only when V8 collects its Buffer, which an idle
 * server may not do for a long time. Exposed here rather than by `node --expose-gc` so that it is there
 * however the server was started (add, --foreground, recover, a supervisor's restart).
 */
function collector(): () => void {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

export default defineTarget({
  name: 'memory',
  describe: 'a sparse RAM disk written in TypeScript (gone when the device is deleted or its server dies)',
  options: { size: { describe: 'device size, e.g. 1G (memory: default 256M, taken as it is written)' } },
  open(opts) {
    const size = parseSize(String(opts.size ?? '256M'));
    const chunks = new Map<number, Buffer>();
    const gc = collector();
    let collecting: NodeJS.Timeout | undefined;
    // The freed chunk goes back to the OS because glibc mmaps each one: background servers run with
    // MALLOC_MMAP_THRESHOLD_=65536 (src/lifecycle.ts); from a heap, glibc would keep it.
    const zero = (req: BlockRequest) => {
      let freed = false;
      eachChunk(req, (i, at, _r, len) => {
        if (len === CHUNK) freed = chunks.delete(i) || freed;
        else chunks.get(i)?.fill(0, at, at + len);
      });
      if (freed && !collecting)
        collecting = setTimeout(() => {
          collecting = undefined;
          gc();
        }, COLLECT_AFTER_MS).unref();
    };
    return {
      size,
      info: { kind: 'memory' },
      read(req) {
        eachChunk(req, (i, at, r, len) => {
          const c = chunks.get(i);
          if (c) c.copy(req.data, r, at, at + len);
          else req.data.fill(0, r, r + len);
        });
      },
      write(req) {
        eachChunk(req, (i, at, r, len) => {
          let c = chunks.get(i);
          if (!c) chunks.set(i, (c = Buffer.alloc(CHUNK)));
          req.data.copy(c, at, r, r + len);
        });
      },
      discard: zero,
      writeZeroes: zero,
    };
  },
});
