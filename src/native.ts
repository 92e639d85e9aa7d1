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
  options?: Record<string, number>;
}

export interface NativeDevice {
  start(): Promise<void>;
  wait(): Promise<void>;
  forceStop(): void;
  close(): void;
}

export interface Abi {
  commands: Record<string, number>;
  ioCommands: Record<string, number>;
  flags: Record<string, bigint>;
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
  setParams(id: number, p: Params): Promise<number>;
  getParams(id: number): Promise<ReadParams>;
  getDevInfo(id: number): Promise<DevInfo>;
  getDevInfo2(id: number): Promise<DevInfo>;
  updateSize(id: number, sectors: number | bigint): Promise<number>;
  startUserRecovery(id: number): Promise<number>;
  endUserRecovery(id: number, pid: number): Promise<number>;
  Device: new (o: DeviceOptions) => NativeDevice;
  abi: Abi;
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
