// Serving one device in this process: negotiate, ADD_DEV, start the queues, START_DEV; tear down on stop.
// Every failure after ADD_DEV rolls the device back, so bad input never leaves a half-made device.
import fs from 'node:fs';
import os from 'node:os';
import { addon, type DataMode, type NativeDevice, type Params } from './native.js';
import { chooseMode, getFeatures, modeFlags } from './features.js';
import { explain, isKernelError, UserError } from './errors.js';
import { loadTarget } from './targets.js';
import { removeRecord, writeRecord, writeStats, type DeviceRecord } from './state.js';
import type { OpenedTarget, TargetSpec } from './target.js';
import { Bridge } from './bridge.js';

export interface ServeOptions {
  target: string;
  /** The target itself, when it is served in this process (createDevice): no lookup by name. */
  spec?: TargetSpec;
  targetOptions: Record<string, unknown>;
  id?: number;
  queues?: number;
  depth?: number;
  mode?: DataMode | 'auto';
  maxIoBytes?: number;
  log: string;
  /** Told the device id right after ADD_DEV, so whoever started this server can clean up after it. */
  onAdded?: (id: number) => void;
  /** Where changes of the target's live state are logged. */
  statusLog?: (line: string) => void;
}

const STATUS_INTERVAL_MS = 1000;

function parseStatus(text: string): Record<string, unknown> {
  return text === '' ? {} : (JSON.parse(text) as Record<string, unknown>);
}

export const MAX_IO_BYTES = 1 << 20;

export class Server {
  private stopping: Promise<void> | undefined;
  private readonly watch: NodeJS.Timeout;
  private lastStatus = '';

  private constructor(
    readonly record: DeviceRecord,
    private readonly dev: NativeDevice,
    private readonly opened: OpenedTarget,
    readonly done: Promise<void>,
    private readonly log: (line: string) => void,
    private readonly bridge: Bridge | undefined,
  ) {
    const tick = () => {
      this.checkStatus();
      this.publishStats();
    };
    this.watch = setInterval(tick, STATUS_INTERVAL_MS).unref();
    tick();
  }

  /** The queues' counters, for `ublk-ts stats` (another process): a small file beside the record. */
  private publishStats(): void {
    try {
      writeStats(this.record.id, { time: Date.now(), pid: process.pid, ...this.dev.stats() });
    } catch {
      // Statistics are best effort: a full or missing state directory must not stop the device.
    }
  }

  /** A target with live state (a mirror's legs): logged when it changes, kept in the record for `list`. */
  private checkStatus(): void {
    const text = this.dev.status();
    if (text === '' || text === this.lastStatus) return;
    this.lastStatus = text;
    this.log(`target status: ${text}`);
    this.record.info = { ...this.record.info, ...(JSON.parse(text) as Record<string, string | number | boolean>) };
    writeRecord(this.record);
  }

  /** Brings the device up; resolves once /dev/ublkbN exists and serves IO. */
  static async start(o: ServeOptions): Promise<Server> {
    const spec = o.spec ?? (await loadTarget(o.target));
    const queues = o.queues ?? os.availableParallelism();
    const depth = o.depth ?? 128;
    if (!Number.isInteger(queues) || queues < 1 || queues > 64) throw new UserError(`--queues must be 1..64, not ${queues}`);
    if (!Number.isInteger(depth) || depth < 1 || depth > 4096) throw new UserError(`--depth must be 1..4096, not ${depth}`);
    const features = await getFeatures();
    const mode = chooseMode(o.mode ?? 'auto', features, spec.movesData);
    const opened = await spec.open(o.targetOptions);
    let devId: number | undefined;
    let dev: NativeDevice | undefined;
    let bridge: Bridge | undefined;
    try {
      const flags = modeFlags(mode) | copyFlags(opened, mode, features);
      const info = await addon.addDev({
        devId: o.id ?? -1 >>> 0,
        queues,
        depth,
        maxIoBufBytes: o.maxIoBytes ?? MAX_IO_BYTES,
        flags,
      });
      devId = info.devId;
      o.onAdded?.(devId);
      if ((info.flags & flags) !== flags) throw new UserError(`the kernel refused the flags of data mode ${mode}`);
      // A target written in TypeScript is served by the native bridge, which hands its requests over.
      bridge = opened.typescript && new Bridge(opened.typescript, info.maxIoBufBytes, o.statusLog ?? (() => undefined));
      dev = new addon.Device({
        devId,
        queues: info.nrHwQueues,
        depth: info.queueDepth,
        maxIoBufBytes: info.maxIoBufBytes,
        mode,
        target: bridge ? 'bridge' : spec.name,
        fds: opened.fds,
        options: opened.options,
        userCopy: (flags & addon.abi.flags.USER_COPY) !== 0n,
        handler: bridge?.onBatch,
      });
      bridge?.attach(dev);
      // FETCH every tag first: START_DEV waits for them, and the partition scan reads at once.
      await dev.start();
      // A target whose native side learns the geometry (a network export's size) settles it now.
      const shape = opened.afterStart ? opened.afterStart(parseStatus(dev.status())) : opened;
      const params: Params = {
        ...shape.params,
        devSectors: Math.floor(shape.size / 512),
        maxSectors: info.maxIoBufBytes / 512,
      };
      await addon.setParams(devId, params);
      await addon.startDev(devId, process.pid);
      await waitForDisk(devId, params.devSectors);
      const record: DeviceRecord = {
        id: devId,
        pid: process.pid,
        target: spec.name,
        mode,
        queues: info.nrHwQueues,
        depth: info.queueDepth,
        size: shape.size,
        blockDevice: `/dev/ublkb${devId}`,
        charDevice: `/dev/ublkc${devId}`,
        log: o.log,
        info: opened.info,
      };
      writeRecord(record);
      const started = dev;
      return new Server(record, started, opened, started.wait(), o.statusLog ?? (() => undefined), bridge);
    } catch (e) {
      await bridge?.close();
      await rollback(devId, dev);
      opened.close();
      throw explain(e);
    }
  }

  /**
   * Drain (nothing is held for later any more), STOP_DEV (the kernel waits for what is in flight, then
   * aborts every tag), let the queues end, DEL_DEV. Bounded; safe to call more than once.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const id = this.record.id;
      clearInterval(this.watch);
      this.dev.drain();
      await addon.stopDev(id).catch(() => undefined);
      await joinWithin(this.dev, STOP_TIMEOUT_MS);
      await this.done.catch(() => undefined);
      await this.bridge?.close();
      this.dev.close();
      this.opened.close();
      await removeFromKernel(id).catch(() => undefined);
      removeRecord(id);
    })();
    return this.stopping;
  }
}

const STOP_TIMEOUT_MS = 10_000;

/** Joins the queue threads; if the kernel never aborts their tags, ends them by force. */
async function joinWithin(dev: NativeDevice, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), ms)));
  const joined = dev.join().catch(() => undefined);
  if ((await Promise.race([joined, late])) === 'late') dev.forceStop();
  clearTimeout(timer);
  await joined;
}

/** A target that serves some requests through a copy needs USER_COPY beside zero copy. */
function copyFlags(opened: OpenedTarget, mode: DataMode, features: bigint): bigint {
  const USER_COPY = addon.abi.flags.USER_COPY;
  if (!opened.userCopy || (mode !== 'lease' && mode !== 'auto-lease')) return 0n;
  if ((features & USER_COPY) === 0n)
    throw new UserError(`this target must see some requests' bytes, and the kernel has no USER_COPY beside ${mode}: use --data-mode copy`);
  return USER_COPY;
}
/** `add` promises a usable /dev/ublkbN: wait until its node exists and the block layer shows its size. */
async function waitForDisk(id: number, sectors: number): Promise<void> {
  const sizeFile = `/sys/block/ublkb${id}/size`;
  for (let i = 0; i < 500; i++) {
    try {
      if (fs.existsSync(`/dev/ublkb${id}`) && Number(fs.readFileSync(sizeFile, 'utf8')) === sectors) return;
    } catch {
      // not there yet
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`/dev/ublkb${id} did not appear with ${sectors} sectors within 5 s`);
}

async function rollback(devId: number | undefined, dev: NativeDevice | undefined): Promise<void> {
  if (devId === undefined) return;
  // STOP_DEV aborts the armed FETCHes so the queue threads can end; then the id is freed.
  await addon.stopDev(devId).catch(() => undefined);
  if (dev) {
    dev.forceStop();
    await dev.join().catch(() => undefined);
    dev.close();
  }
  await removeFromKernel(devId).catch(() => undefined);
}

/**
 * STOP_DEV then DEL_DEV_ASYNC: the synchronous DEL_DEV would wait for every opener of /dev/ublkbN (a
 * running fio, say) to close it. The kernel frees the id when the last opener goes.
 */
export async function removeFromKernel(id: number): Promise<void> {
  await addon.stopDev(id).catch(() => undefined);
  try {
    await addon.delDevAsync(id);
  } catch (e) {
    if (isKernelError(e) && e.code === 'ENODEV') return;
    if (!(isKernelError(e) && e.code === 'EOPNOTSUPP')) throw e;
    await addon.delDev(id);
  }
}


/** Serves until a signal or until the kernel stops the device, then tears down and exits. */
export async function serveUntilStopped(server: Server, log: (line: string) => void): Promise<void> {
  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    log(`stopping: ${why}`);
    void server.stop().then(() => {
      log('stopped');
      process.exit(0);
    });
  };
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => stop(sig));
  await server.done.then(
    () => stop('the kernel stopped the device'),
    (e: Error) => stop(`queue failure: ${e.message}`),
  );
}

