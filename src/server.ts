// Serving one device in this process: negotiate, ADD_DEV, start the queues, START_DEV; tear down on stop.
// Every failure after ADD_DEV rolls the device back, so bad input never leaves a half-made device.
import fs from 'node:fs';
import os from 'node:os';
import { addon, type DataMode, type NativeDevice, type Params } from './native.js';
import { chooseMode, getFeatures, modeFlags } from './features.js';
import { explain, isKernelError, UserError } from './errors.js';
import { loadTarget } from './targets.js';
import { removeRecord, writeRecord, type DeviceRecord } from './state.js';
import type { OpenedTarget } from './target.js';

export interface ServeOptions {
  target: string;
  targetOptions: Record<string, unknown>;
  id?: number;
  queues?: number;
  depth?: number;
  mode?: DataMode | 'auto';
  maxIoBytes?: number;
  log: string;
}

export const MAX_IO_BYTES = 1 << 20;

export class Server {
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly record: DeviceRecord,
    private readonly dev: NativeDevice,
    private readonly opened: OpenedTarget,
    readonly done: Promise<void>,
  ) {}

  /** Brings the device up; resolves once /dev/ublkbN exists and serves IO. */
  static async start(o: ServeOptions): Promise<Server> {
    const spec = await loadTarget(o.target);
    const queues = o.queues ?? os.availableParallelism();
    const depth = o.depth ?? 128;
    if (!Number.isInteger(queues) || queues < 1 || queues > 64) throw new UserError(`--queues must be 1..64, not ${queues}`);
    if (!Number.isInteger(depth) || depth < 1 || depth > 4096) throw new UserError(`--depth must be 1..4096, not ${depth}`);
    const features = await getFeatures();
    const mode = chooseMode(o.mode ?? 'auto', features, spec.movesData);
    const opened = await spec.open(o.targetOptions);
    let devId: number | undefined;
    let dev: NativeDevice | undefined;
    try {
      const info = await addon.addDev({
        devId: o.id ?? -1 >>> 0,
        queues,
        depth,
        maxIoBufBytes: o.maxIoBytes ?? MAX_IO_BYTES,
        flags: modeFlags(mode),
      });
      devId = info.devId;
      if ((info.flags & modeFlags(mode)) !== modeFlags(mode))
        throw new UserError(`the kernel refused the flags of data mode ${mode}`);
      dev = new addon.Device({
        devId,
        queues: info.nrHwQueues,
        depth: info.queueDepth,
        maxIoBufBytes: info.maxIoBufBytes,
        mode,
        target: spec.name,
        fds: opened.fds,
        options: opened.options,
      });
      // FETCH every tag first: START_DEV waits for them, and the partition scan reads at once.
      await dev.start();
      const params: Params = {
        ...opened.params,
        devSectors: Math.floor(opened.size / 512),
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
        size: opened.size,
        blockDevice: `/dev/ublkb${devId}`,
        charDevice: `/dev/ublkc${devId}`,
        log: o.log,
        info: opened.info,
      };
      writeRecord(record);
      const started = dev;
      return new Server(record, started, opened, started.wait());
    } catch (e) {
      await rollback(devId, dev);
      opened.close();
      throw explain(e);
    }
  }

  /** STOP_DEV, let the queues drain and end, DEL_DEV. Safe to call more than once. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const id = this.record.id;
      await addon.stopDev(id).catch(() => undefined);
      await this.done.catch(() => undefined);
      this.dev.close();
      this.opened.close();
      await removeFromKernel(id).catch(() => undefined);
      removeRecord(id);
    })();
    return this.stopping;
  }
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
    await dev.wait().catch(() => undefined);
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

