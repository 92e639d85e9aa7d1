// What a target folder (targets/<name>/index.ts) exports: its options, validation, and how to open it.
import type { Options } from 'yargs';
import type { Params, TargetOptions } from './native.js';
import type { BlockDevice } from './api.js';

/** What an opened target hands to the engine. */
export interface OpenedTarget {
  /** Device size in bytes. */
  size: number;
  /** Backend fds, registered as fixed files 1..n for the native members. */
  fds: number[];
  /** Options for the native side. */
  options?: TargetOptions;
  /** Some requests are served through a copy the native target reads or changes: the device needs
   * USER_COPY beside zero copy (the kernel accepts both), so the choice is made per request. */
  userCopy?: boolean;
  /** Parameters beyond size and max_sectors (block sizes, discard, cache attributes). */
  params: Omit<Params, 'devSectors' | 'maxSectors'>;
  /** Shown by `list`, kept in the device's state record. */
  info: Record<string, string | number | boolean>;
  /**
   * For a target whose native side learns the size and parameters when it starts (the handshake of a
   * network export runs in the native init): called with its status once the queues run, before
   * SET_PARAMS.
   */
  afterStart?(status: Record<string, unknown>): Pick<OpenedTarget, 'size' | 'params'>;
  /** A target written in TypeScript: its handlers, served through the native bridge target. */
  typescript?: BlockDevice;
  /** Releases what open() made. */
  close(): void;
}

export interface TargetSpec {
  name: string;
  describe: string;
  /** Command-line options of `add --target <name>`. */
  options: Record<string, Options>;
  /** False for targets that never touch request data: they need neither a lease nor a copy. */
  movesData: boolean;
  /** The queue count when `--queues` is not given (default: one per CPU, capped): a target whose backend
   * may not take a connection per queue asks for fewer. */
  defaultQueues?: number;
  /** Its data lives in its server process (memory): a later server of the device would serve an empty disk,
   * so the device gets no user recovery, and `recover` and `--restart` refuse it. */
  volatile?: boolean;
  /** Validates the options and opens the backend; throws a UserError with one line on bad input. */
  open(opts: Record<string, unknown>): Promise<OpenedTarget>;
}
