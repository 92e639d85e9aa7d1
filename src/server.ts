// Serving one device in this process: negotiate, ADD_DEV, start the queues, START_DEV; tear down on stop.
// Every failure after ADD_DEV rolls the device back, so bad input never leaves a half-made device.
import fs from 'node:fs';
import os from 'node:os';
import { addon, awaitsServer, DEV_STATE, DEV_STATE_NAMES, type DataMode, type DevInfo, type NativeDevice, type Params } from './native.js';
import { DEFAULT_DEPTH, LIMITS } from './device-options.js';
import { checkOptions, wholeIn } from './option-schema.js';
import { chooseMode, deviceFlags, getFeatures, modeFlags } from './features.js';
import { explain, isKernelError, UserError } from './errors.js';
import { isTargetPath, loadTarget } from './targets.js';
import { removeRecord, writeRecord, writeStats, type DeviceRecord } from './state.js';
import type { OpenedTarget, TargetSpec } from './target.js';
import { Bridge, bridgeDevice } from './bridge.js';
import { reattachRefusal } from './reattach-check.js';
import { HANDOVER_COMMAND, RESIZE_COMMAND, serveControl, type ControlAnswer, type ControlReply } from './control.js';
import { codeVersion } from './version.js';

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
  /** Create the device with USER_RECOVERY (it outlives this server; `recover` re-attaches another). */
  recovery?: boolean;
  /** Re-attach to this device, whose server is gone, instead of creating one. */
  recover?: number;
  /** The pid of the --restart supervisor, for the record. */
  supervisor?: number;
  /** Let the kernel scan the partition table at START_DEV (by default it is not, where the kernel allows). */
  partScan?: boolean;
  /** Re-attaching: the flags the device was added with, carried into the new record. */
  flagsAsked?: string;
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
  private lastLogged = '';
  private baseInfo: Record<string, string | number | boolean>;
  private closeControl: (() => void) | undefined;
  /** Set once a handover began: the device is being let go to a next server, not stopped. */
  handingOver = false;
  /** What ends this process once its device is handed over (set by serveUntilStopped); without it the
   * server (one a program runs in its own process) refuses to hand over. */
  onHandedOver: (() => void) | undefined;

  private constructor(
    readonly record: DeviceRecord,
    private readonly dev: NativeDevice,
    private readonly opened: OpenedTarget,
    readonly done: Promise<void>,
    readonly log: (line: string) => void,
    private readonly bridge: Bridge | undefined,
  ) {
    this.baseInfo = opened.info;
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
    const status = JSON.parse(text) as Record<string, string | number | boolean>;
    // Numbers are progress (a resync's percent): the record follows them, the log only changes of state.
    const state = JSON.stringify(Object.entries(status).filter(([, v]) => typeof v !== 'number'));
    if (state !== this.lastLogged) this.log(`target status: ${text}`);
    this.lastLogged = state;
    // A target whose backends changed (a mirror's new leg) is re-served with them after a crash.
    const now = this.opened.restate?.(status);
    if (now) {
      this.record.serve = { ...this.record.serve, targetOptions: now.options };
      this.baseInfo = { ...this.baseInfo, ...now.info };
    }
    // Keys the target no longer reports (a resync's progress once it ended) leave the record too.
    this.record.info = { ...this.baseInfo, ...status };
    writeRecord(this.record);
  }

  /** The device's control socket: `upgrade`'s handover, and a target's own verbs (`ublk-ts mirror fail`). */
  private async listen(): Promise<void> {
    this.closeControl = await serveControl(this.record.id, async (command): Promise<ControlAnswer> => {
      if (command === HANDOVER_COMMAND) return this.handoverCommand();
      const resize = RESIZE_COMMAND.exec(command);
      if (resize) return this.resizeCommand(Number(resize[1]));
      const native = this.opened.prepare ? await this.opened.prepare(command) : command;
      const reply = JSON.parse(await this.dev.command(native)) as ControlReply;
      this.checkStatus(); // `list` right after the verb shows what it did
      return reply;
    });
  }

  /**
   * Brings the device up; resolves once /dev/ublkbN exists and serves IO. With `recover`, re-attaches to
   * a device whose server is gone instead: START_USER_RECOVERY, FETCH every tag, END_USER_RECOVERY.
   */
  static async start(o: ServeOptions): Promise<Server> {
    const spec = o.spec ?? (await loadTarget(o.target));
    // A later server of a device whose data lived in its dead server's memory would serve an empty disk.
    if (spec.volatile && (o.supervisor !== undefined || o.recover !== undefined))
      throw new UserError(`target ${spec.name} keeps its data in its server process: ${o.recover !== undefined ? 'nothing to recover' : '--restart would re-attach an empty disk'}`);
    // Whoever started it (add, up, recover, a program): the target's values as its schema allows them.
    o = { ...o, targetOptions: checkOptions(spec.options, o.targetOptions) };
    wholeIn('--number', o.id, LIMITS.number);
    wholeIn('--queues', o.queues, LIMITS.queues);
    wholeIn('--depth', o.depth, LIMITS.depth);
    const features = await getFeatures();
    const attach = o.recover === undefined ? await create(o, spec, features) : await reattach(o.recover, o, spec);
    const { info, mode, opened, asked } = attach;
    const devId = info.devId;
    let dev: NativeDevice | undefined;
    let bridge: Bridge | undefined;
    try {
      // A target written in TypeScript is served by the native bridge, which hands its requests over.
      bridge =
        opened.typescript &&
        new Bridge(opened.typescript, { queues: info.nrHwQueues, depth: info.queueDepth, maxIoBytes: info.maxIoBufBytes }, o.statusLog ?? (() => undefined));
      dev = new addon.Device({
        devId,
        queues: info.nrHwQueues,
        depth: info.queueDepth,
        maxIoBufBytes: info.maxIoBufBytes,
        mode,
        target: bridge ? 'bridge' : spec.name,
        fds: opened.fds,
        options: bridge ? { ...opened.options, ...bridge.nativeOptions } : opened.options,
        userCopy: (info.flags & addon.abi.flags.USER_COPY) !== 0n,
        handler: bridge?.onBatch,
        buffers: bridge?.buffers,
      });
      bridge?.attach(bridgeDevice(dev));
      await dev.open();
      // A target whose native side learns the geometry (a network export's size) settles it now.
      const shape = opened.afterStart ? opened.afterStart(parseStatus(dev.status())) : opened;
      let sectors = Math.floor(shape.size / 512);
      if (o.recover !== undefined) {
        // Before any FETCH: once a queue has fetched every tag, the kernel hands it IO again.
        const kept = await addon.getParams(devId);
        const refused = reattachRefusal(devId, kept, shape);
        if (refused !== undefined) throw new UserError(`${refused}: not re-attaching`, 'backend');
        sectors = kept.devSectors;
      }
      // FETCH every tag first: START_DEV waits for them, and the partition scan reads at once.
      await dev.start();
      if (o.recover === undefined) {
        const params: Params = { ...shape.params, devSectors: sectors, maxSectors: info.maxIoBufBytes / 512 };
        await addon.setParams(devId, params);
        await addon.startDev(devId, process.pid);
        await waitForDisk(devId, sectors);
      } else {
        await addon.endUserRecovery(devId, process.pid);
      }
      const record: DeviceRecord = {
        id: devId,
        pid: process.pid,
        // A target given by path is that path: its module may take a built-in's name.
        target: isTargetPath(o.target) ? o.target : spec.name,
        mode,
        queues: info.nrHwQueues,
        depth: info.queueDepth,
        size: sectors * 512,
        blockDevice: `/dev/ublkb${devId}`,
        charDevice: `/dev/ublkc${devId}`,
        log: o.log,
        info: opened.info,
        recovery: (info.flags & addon.abi.flags.USER_RECOVERY) !== 0n,
        flagsAsked: asked,
        serve: { target: o.target, targetOptions: o.targetOptions, mode, maxIoBytes: o.maxIoBytes },
        supervisor: o.supervisor,
        version: codeVersion(),
      };
      writeRecord(record);
      const started = dev;
      const server = new Server(record, started, opened, started.wait(), o.statusLog ?? (() => undefined), bridge);
      // The device serves either way; without the socket only upgrade and the target's verbs are missing.
      await server.listen().catch((e: Error) => server.log(`no control socket: ${e.message}`));
      return server;
    } catch (e) {
      await bridge?.close();
      // A failed re-attach leaves the device as it found it, waiting for the next try.
      await rollback(o.recover === undefined ? devId : undefined, dev);
      opened.close();
      throw explain(e);
    }
  }

  /** A command to the native target from the server's own steps (`resize`): its refusal as a UserError. */
  private async nativeCommand(command: string): Promise<void> {
    const reply = JSON.parse(await this.dev.command(command)) as ControlReply;
    if (!reply.ok) throw new UserError(reply.error ?? `the target refused "${command}"`, 'backend');
  }

  /** `resize`: the backend first (the target's own step), then the kernel (UPDATE_SIZE), then the record
   * (a later server re-attaches at the new size). Checked by the caller: a whole number of blocks. */
  private async resizeCommand(size: number): Promise<ControlAnswer> {
    const id = this.record.id;
    if (!this.opened.resize) return { ok: false, error: `target ${this.record.target} cannot be resized (file, nbd and mirror can)` };
    const options = await this.opened.resize(size, parseStatus(this.dev.status()), (command) => this.nativeCommand(command));
    try {
      await addon.updateSize(id, size / 512);
    } catch (e) {
      if (isKernelError(e) && e.code === 'ENODEV') throw new UserError(`/dev/ublkb${id} has no disk (not started, or stopped): not resized`, 'not-found');
      throw explain(e);
    }
    this.record.size = size;
    if (options) this.record.serve = { ...this.record.serve, targetOptions: options };
    writeRecord(this.record);
    this.log(`resized /dev/ublkb${id} to ${size} bytes`);
    return { ok: true };
  }

  private async handoverCommand(): Promise<ControlAnswer> {
    const exit = this.onHandedOver;
    if (!exit) return { ok: false, error: 'this server runs inside a program: it does not hand its device over' };
    if (this.stopping) return { ok: false, error: 'the server is stopping' };
    // The message is the path taken (`upgrade` prints it). The process ends once the reply is out: the
    // next server is started when it is read.
    return { ok: true, message: await this.handover(), after: exit };
  }

  /**
   * Lets the device go to a next server without stopping it (`upgrade`): QUIESCE_DEV where the device has
   * it (the kernel holds new IO and aborts the idle commands); the queues serve what they started to the
   * end and leave what arrives later to the kernel (re-issued to the next server); then the target and
   * /dev/ublkcN are closed. The device waits, QUIESCED with its IO held, until a new server re-attaches
   * with the record, which stays. Resolves with the path taken.
   */
  async handover(): Promise<string> {
    this.handingOver = true;
    const id = this.record.id;
    let how = 'recovery';
    this.stopping = (async () => {
      clearInterval(this.watch);
      this.closeControl?.();
      this.dev.prepareHandover();
      const info = await addon.getDevInfo(id);
      if ((info.flags & addon.abi.flags.QUIESCE) !== 0n) {
        // A failed QUIESCE_DEV (a queue without an idle command in time) still hands over: what this
        // server holds is re-issued to the next one.
        how = await addon.quiesceDev(id, QUIESCE_TIMEOUT_MS).then(
          () => 'quiesce',
          (e: Error) => `recovery: QUIESCE_DEV failed: ${e.message}`,
        );
      }
      this.dev.handover();
      await joinWithin(this.dev, STOP_TIMEOUT_MS);
      await this.done.catch(() => undefined);
      await this.bridge?.close();
      this.dev.close();
      this.opened.close();
    })();
    await this.stopping;
    this.log(`handed /dev/ublkb${id} over (${how})`);
    return how;
  }

  /**
   * Drain (nothing is held for later any more), STOP_DEV (the kernel waits for what is in flight, then
   * aborts every tag), let the queues end, DEL_DEV. Bounded; safe to call more than once.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const id = this.record.id;
      clearInterval(this.watch);
      this.closeControl?.();
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
const QUIESCE_TIMEOUT_MS = 5_000;
/** A server's exit status after it handed its device over: the supervisor starts the next one at once. */
export const HANDED_OVER_EXIT = 75;

/** The default queue count: one per CPU, but not past what pays off (each is a thread, a ring and buffers). */
export const DEFAULT_QUEUES_CAP = 4;

/** Where start() serves: a new device, or one re-attached. The target is open; closing it is start()'s. */
interface Attach {
  info: DevInfo;
  mode: DataMode;
  opened: OpenedTarget;
  /** The flags ADD_DEV asked for, as hex (`features -n`). */
  asked?: string;
}

async function create(o: ServeOptions, spec: TargetSpec, features: bigint): Promise<Attach> {
  const queues = o.queues ?? spec.defaultQueues ?? Math.min(os.availableParallelism(), DEFAULT_QUEUES_CAP);
  const depth = o.depth ?? DEFAULT_DEPTH;
  const mode = chooseMode(o.mode ?? 'auto', features, spec.movesData);
  const opened = await spec.open(o.targetOptions);
  let devId: number | undefined;
  try {
    const flags = modeFlags(mode) | copyFlags(opened, mode, features) | recoveryFlags(o.recovery === true && !spec.volatile, features);
    const asked = flags | deviceFlags(o.partScan === true, features);
    const info = await addon.addDev({ devId: o.id ?? -1 >>> 0, queues, depth, maxIoBufBytes: o.maxIoBytes ?? MAX_IO_BYTES, flags: asked });
    devId = info.devId;
    o.onAdded?.(devId);
    if ((info.flags & flags) !== flags) throw new UserError(`the kernel refused the flags of data mode ${mode}`);
    return { info, mode, opened, asked: `0x${asked.toString(16)}` };
  } catch (e) {
    await rollback(devId, undefined);
    opened.close();
    throw explain(e);
  }
}

/** Recovery with reissue where the kernel has it: what the dead server held is served again by the next. */
function recoveryFlags(on: boolean, features: bigint): bigint {
  const F = addon.abi.flags;
  if (!on) return 0n;
  if ((features & F.USER_RECOVERY) === 0n) throw new UserError('this kernel has no USER_RECOVERY: use --no-recovery', 'kernel');
  // QUIESCE lets `upgrade` have the kernel hold new IO while the server is replaced.
  return F.USER_RECOVERY | (features & (F.USER_RECOVERY_REISSUE | F.QUIESCE));
}

const RECOVERY_WAIT_MS = 10_000;

/**
 * The device must be one whose server is gone (QUIESCED: the kernel's release work has run), with the
 * queues, depth and data mode it was added with; then START_USER_RECOVERY, retried while the old server's
 * files are still being released (EBUSY).
 */
async function reattach(id: number, o: ServeOptions, spec: TargetSpec): Promise<Attach> {
  const end = Date.now() + RECOVERY_WAIT_MS;
  let info = await addon.getDevInfo(id);
  if ((info.flags & addon.abi.flags.USER_RECOVERY) === 0n) throw new UserError(`device ${id} was added without recovery: it cannot be re-attached`);
  while (!awaitsServer(info.state) && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    info = await addon.getDevInfo(id);
  }
  if (!awaitsServer(info.state)) {
    const state = DEV_STATE_NAMES[info.state] ?? String(info.state);
    throw new UserError(`device ${id} is ${state}${info.state === DEV_STATE.LIVE ? ` (served by pid ${info.ublksrvPid})` : ''}: nothing to recover`);
  }
  const mode = o.mode === undefined || o.mode === 'auto' ? undefined : o.mode;
  if (!mode || (info.flags & modeFlags(mode)) !== modeFlags(mode)) throw new UserError(`device ${id} was not added in data mode ${String(o.mode)}: not re-attaching`);
  if (o.queues !== undefined && o.queues !== info.nrHwQueues) throw new UserError(`device ${id} has ${info.nrHwQueues} queues, not ${o.queues}: not re-attaching`);
  if (o.depth !== undefined && o.depth !== info.queueDepth) throw new UserError(`device ${id} has depth ${info.queueDepth}, not ${o.depth}: not re-attaching`);
  const opened = await spec.open(o.targetOptions);
  for (;;) {
    try {
      await addon.startUserRecovery(id);
      return { info, mode, opened, asked: o.flagsAsked };
    } catch (e) {
      if (!(isKernelError(e) && e.code === 'EBUSY') || Date.now() >= end) {
        opened.close();
        throw explain(e);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

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
  server.onHandedOver = () => process.exit(HANDED_OVER_EXIT);
  const stop = (why: string) => {
    // A handover ends the queues too, but leaves the device to the next server; it ends the process itself.
    if (stopping || server.handingOver) return;
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

