// The native addon, typed. Everything here that talks to the kernel returns a Promise.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import fs from 'node:fs';

export interface DevInfo {
  devId: number;
  nrHwQueues: number;
  queueDepth: number;
  state: number;
  maxIoBufBytes: number;
  ublksrvPid: number;
  flags: bigint;
  ublksrvFlags: bigint;
  ownerUid: number;
  ownerGid: number;
}

/** The kernel's device states (UBLK_S_DEV_*), as DevInfo.state gives them and as `list` names them. */
export const DEV_STATE = { DEAD: 0, LIVE: 1, QUIESCED: 2, FAIL_IO: 3 } as const;
export const DEV_STATE_NAMES = ['dead', 'live', 'quiesced', 'fail-io'];
/** A device waiting for a new server: its IO is held (QUIESCED) or failed (FAIL_IO) until one re-attaches. */
export const awaitsServer = (state: number) => state === DEV_STATE.QUIESCED || state === DEV_STATE.FAIL_IO;

export interface DiscardParams {
  alignment?: number;
  granularity: number;
  maxDiscardSectors: number;
  maxWriteZeroesSectors: number;
}

export interface Params {
  attrs?: number;
  logicalBsShift?: number;
  physicalBsShift?: number;
  ioOptShift?: number;
  ioMinShift?: number;
  maxSectors: number;
  chunkSectors?: number;
  devSectors: number;
  discard?: DiscardParams;
  dmaAlignment?: number;
}

export interface ReadParams extends Required<Omit<Params, 'discard' | 'dmaAlignment'>> {
  types: number;
  discard?: DiscardParams;
  dmaAlignment?: number;
  diskMajor?: number;
  diskMinor?: number;
}

export type DataMode = 'copy' | 'user-copy' | 'lease' | 'auto-lease';

export interface DeviceOptions {
  devId: number;
  queues: number;
  depth: number;
  maxIoBufBytes: number;
  mode: DataMode;
  target: string;
  fds: number[];
  options?: TargetOptions;
  /** The device has USER_COPY beside zero copy: the target may ask to see a request's bytes. */
  userCopy?: boolean;
  /** The target's channel to JavaScript: what its queue threads post, as Buffers (the bridge's descriptors). */
  handler?: (batch: Buffer) => void;
  /** Copy buffers JavaScript owns, queue-major (q * depth + tag), maxIoBufBytes each: the engine copies a
   * request's bytes in and out of them, and JavaScript works on them in place. */
  buffers?: Buffer[];
}

export interface QueueStats {
  /** Requests committed. */
  requests: number;
  /** Reads and writes served on the lease (zero copy). */
  leased: number;
  /** Reads and writes served through a copy buffer. */
  copied: number;
  /** Requests that failed. */
  errors: number;
  /** Members a target issued again (a read retried on another leg). */
  retries: number;
  /** Short transfers the engine continued. */
  shortTransfers: number;
}

/** Options for the native side of a target: numbers, lists of numbers (ranges), strings. */
export type TargetOptions = Record<string, number | number[] | string>;

export interface NativeDevice {
  /** Opens the char device and runs the target's init (a handshake); status() is readable after it. */
  open(): Promise<void>;
  /** After open(): starts the queue threads, FETCHes every tag; rejects on a refused FETCH. */
  start(): Promise<void>;
  /** Resolves when every queue thread has ended; rejects as soon as one queue fails. */
  wait(): Promise<void>;
  /** Stop holding requests (they fail with EIO), ahead of STOP_DEV. Never blocks. */
  drain(): void;
  /** Hand the device over to a next server (upgrade): what is started is served to the end, what arrives
   * later is left to the kernel to re-issue; the queues then end without stopping the device. Never blocks. */
  handover(): void;
  /** A handover is coming (ahead of QUIESCE_DEV, which ends the queues): each queue's target settles before
   * its queue ends (an nbd connection flushes what it acknowledged). Never blocks. */
  prepareHandover(): void;
  /** Resolves when every queue thread has ended; rejects with the queues' errors. */
  join(): Promise<void>;
  forceStop(): void;
  /** The target's live state as JSON text (a mirror's legs), or '' if it has none. */
  status(): string;
  /** The queues' counters since start, summed. */
  stats(): QueueStats;
  /** An operator's command to the target (`ublk-ts mirror fail`): its reply, JSON text. */
  command(text: string): Promise<string>;
  /** /dev/ublkcN as the native side holds it: for user copy. Owned there; valid until close(). */
  charFd(): number;
  /** Releases everything; only once join() (and wait(), if called) have settled. */
  close(): void;
}

export interface Abi {
  commands: Record<string, number>;
  ioCommands: Record<string, number>;
  flags: Record<string, bigint>;
  /** UBLK_ATTR_*: the device attributes of SET_PARAMS. */
  attrs: Record<'READ_ONLY' | 'ROTATIONAL' | 'VOLATILE_CACHE' | 'FUA', number>;
  sizes: Record<string, number>;
  userCopyOffset(q: number, tag: number): bigint;
}

interface Addon {
  getFeatures(): Promise<bigint>;
  addDev(o: { devId?: number; queues: number; depth: number; maxIoBufBytes: number; flags: bigint; ublksrvFlags?: bigint }): Promise<DevInfo>;
  delDev(id: number): Promise<number>;
  delDevAsync(id: number): Promise<number>;
  startDev(id: number, pid: number): Promise<number>;
  stopDev(id: number): Promise<number>;
  tryStopDev(id: number): Promise<number>;
  /** QUIESCE_DEV: new IO is held by the kernel and idle commands are aborted (timeout in ms, 0 = none). */
  quiesceDev(id: number, timeoutMs: number): Promise<number>;
  setParams(id: number, p: Params): Promise<number>;
  getParams(id: number): Promise<ReadParams>;
  getDevInfo(id: number): Promise<DevInfo>;
  getDevInfo2(id: number): Promise<DevInfo>;
  updateSize(id: number, sectors: number | bigint): Promise<number>;
  startUserRecovery(id: number): Promise<number>;
  endUserRecovery(id: number, pid: number): Promise<number>;
  /** A pidfd for pid (close it with fs.closeSync); throws with code ESRCH if there is no such process. */
  pidfdOpen(pid: number): number;
  /** Signals the process the pidfd names; throws with code ESRCH once it has ended. */
  pidfdSignal(fd: number, signo: number): void;
  /** Whether the process the pidfd names has ended. */
  pidfdExited(fd: number): boolean;
  /** An exclusive flock on fd without waiting: true if taken, false if another process holds it. */
  flockTry(fd: number): boolean;
  Device: new (o: DeviceOptions) => NativeDevice;
  abi: Abi;
  /** Each native target's option keys (its ops table's .options): what its index.ts may pass. */
  targetOptions: Record<string, string[]>;
  /** The bridge target's functions for src/bridge.ts (targets/bridge/bridge_napi.cc). */
  bridge: {
    /** Sizes and offsets of the records between its halves (targets/bridge/records.h). */
    layout: BridgeLayout;
    /** Completions of bridged requests (layout.done records); returns how many were refused now (a queue's
     * hand-over was full), moved to the front of batch to be handed again. */
    complete(dev: NativeDevice, batch: Buffer): number;
  };
}

/** Each record's size (bytes) and its fields' byte offsets; the fields' widths are records.h's. */
export interface BridgeLayout {
  /** A request; fBytes is the flag in opFlags: a write's bytes are in its buffer already. */
  desc: Record<'bytes' | 'q' | 'tag' | 'gen' | 'opFlags' | 'len' | 'offset' | 'fBytes', number>;
  /** A completion. */
  done: Record<'bytes' | 'q' | 'tag' | 'gen' | 'result' | 'file' | 'fileOffset', number>;
}

// The package root: the nearest folder up with a package.json (this file runs from src/ or dist/src/).
function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json')) && dir !== path.dirname(dir)) dir = path.dirname(dir);
  return dir;
}
const root = packageRoot();
const require = createRequire(import.meta.url);
let loaded: Addon | undefined;
/** The addon, loaded on first use: verbs that never reach the kernel start without it. */
export const addon: Addon = new Proxy({} as Addon, {
  get(_target, key: keyof Addon) {
    loaded ??= require(path.join(root, 'build', 'Release', 'ublk_ts.node')) as Addon;
    return loaded[key];
  },
});
export const projectRoot = root;
