// The public API: block devices whose target is written in TypeScript. The native core does every ring
// and buffer operation; a target only answers requests, and may answer a read or write with a route (a
// file and an offset) instead of bytes: then the request is served on the lease and its bytes never
// reach JavaScript.
import type { Options } from 'yargs';
import type { TargetSpec } from './target.js';
import { UserError } from './errors.js';

export type BlockOp = 'read' | 'write' | 'flush' | 'discard' | 'write-zeroes';

/** One request as a handler sees it. */
export interface BlockRequest {
  readonly op: BlockOp;
  /** Bytes from the start of the device. */
  readonly offset: number;
  /** Bytes. */
  readonly length: number;
  /** A write that must be durable when it completes. */
  readonly fua: boolean;
  /** read: fill it; write: the bytes to store. Memory the core keeps for this request's tag: valid
   * until the handler settles, never to be kept after. Empty for flush, discard and write-zeroes. */
  readonly data: Buffer;
}

/** Serve a read or write on the lease: the kernel moves its bytes between the device and this file. */
export interface Route {
  /** Index into the device's `files`. */
  file: number;
  /** Byte offset in that file. */
  offset: number;
}

/** What a TypeScript target's open() returns: the device's shape and its handlers. */
export interface BlockDevice {
  /** Bytes; a multiple of blockSize. */
  size: number;
  blockSize?: 512 | 4096;
  readOnly?: boolean;
  /** File descriptors the target opened and may route requests to (they are registered with the rings). */
  files?: number[];
  /**
   * Decides, without seeing the bytes, whether a read or write is served on the lease: return a route, or
   * nothing to have the request's bytes handed to read()/write(). Must not block.
   */
  route?(req: Omit<BlockRequest, 'data'>): Route | undefined;
  read?(req: BlockRequest): Promise<void> | void;
  write?(req: BlockRequest): Promise<void> | void;
  flush?(req: BlockRequest): Promise<void> | void;
  discard?(req: BlockRequest): Promise<void> | void;
  writeZeroes?(req: BlockRequest): Promise<void> | void;
  /** Shown by `list`. */
  info?: Record<string, string | number | boolean>;
  /** Releases what open() made, once the device is gone. */
  close?(): void;
}

export type OptionValues = Record<string, string | number | boolean | undefined>;

/** A target written in TypeScript: a plain object, or an instance of a class with these members. */
export interface TypeScriptTarget {
  name: string;
  describe?: string;
  /** Its command-line options (`--opt key=value` for a target given by path). */
  options?: Record<string, { describe: string; type?: 'string' | 'number' | 'boolean' }>;
  /**
   * Its data outlives its server process (it is in files, or elsewhere outside the process): then a new
   * server may re-attach to the device after a crash (`recover`, `--restart`). Left out, the target is
   * taken to keep its data in the process, and its devices get no user recovery: a new server would serve
   * an empty disk under whatever was mounted on it.
   */
  persistent?: boolean;
  /** Validates the options (throw an Error with one line for bad input) and opens the backend. */
  open(opts: OptionValues): Promise<BlockDevice> | BlockDevice;
}

/** The engine's view of a TypeScript target: a TargetSpec whose opened devices carry their handlers. */
export function defineTarget(t: TypeScriptTarget): TargetSpec {
  const options: Record<string, Options> = {
    opt: { type: 'string', array: true, describe: 'key=value handed to the target as it is (repeatable)' },
  };
  for (const [k, o] of Object.entries(t.options ?? {})) options[k] = { type: o.type ?? 'string', describe: o.describe };
  return {
    name: t.name,
    describe: t.describe ?? `${t.name} (a TypeScript target)`,
    movesData: true,
    volatile: t.persistent !== true,
    options,
    async open(opts) {
      let bd: BlockDevice;
      try {
        bd = await t.open({ ...(opts as OptionValues), ...passThrough(opts.opt) });
      } catch (e) {
        throw new UserError(`${t.name}: ${e instanceof Error ? e.message : String(e)}`);
      }
      const bs = bd.blockSize ?? 512;
      if (!Number.isSafeInteger(bd.size) || bd.size <= 0 || bd.size % bs !== 0)
        throw new UserError(`${t.name}: size ${bd.size} is not a positive multiple of the block size ${bs}`);
      const shift = Math.log2(bs);
      const UBLK_ATTR_READ_ONLY = 1, UBLK_ATTR_VOLATILE_CACHE = 4;
      const canDiscard = bd.discard !== undefined || bd.writeZeroes !== undefined;
      return {
        size: bd.size,
        fds: bd.files ?? [],
        params: {
          attrs: (bd.readOnly ? UBLK_ATTR_READ_ONLY : 0) | (bd.flush ? UBLK_ATTR_VOLATILE_CACHE : 0),
          logicalBsShift: shift,
          physicalBsShift: Math.max(shift, 12),
          ioMinShift: shift,
          ...(canDiscard && !bd.readOnly ? { discard: { granularity: 4096, maxDiscardSectors: 1 << 11, maxWriteZeroesSectors: 1 << 11 } } : {}),
        },
        // Requests the handlers answer with bytes are copied by the bridge itself (user copy).
        userCopy: true,
        info: { ...(bd.info ?? {}), language: 'typescript' },
        typescript: bd,
        close() {
          bd.close?.();
        },
      };
    },
  };
}

/** --opt key=value, as the target's own option values. */
function passThrough(opt: unknown): OptionValues {
  const out: OptionValues = {};
  for (const kv of (opt as string[] | undefined) ?? []) {
    const eq = String(kv).indexOf('=');
    if (eq <= 0) throw new UserError(`--opt "${String(kv)}" must be key=value`);
    out[String(kv).slice(0, eq)] = String(kv).slice(eq + 1);
  }
  return out;
}
