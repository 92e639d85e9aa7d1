// What a target folder (targets/<name>/index.ts) exports: its options, validation, and how to open it.
import type { Options } from 'yargs';
import type { OptionSchema } from './option-schema.js';
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
  /**
   * An operator's command (a target verb), in the server before the native side gets it: what needs this
   * process (opening a new leg, whose fd the native side takes) happens here. Returns the native command.
   */
  prepare?(command: string): Promise<string>;
  /**
   * The options a later server of the device must be given, and what `list` shows of them, as the live
   * status says they now are (a mirror whose legs changed); undefined when unchanged.
   */
  restate?(status: Record<string, unknown>): { options: Record<string, unknown>; info: Record<string, string | number | boolean> } | undefined;
  /** A target written in TypeScript: its handlers, served through the native bridge target. */
  typescript?: BlockDevice;
  /**
   * `ublk-ts resize`, in the server, before the kernel is told: makes the backend hold `size` bytes (a file
   * grows; none shrinks) or says in a UserError why it cannot (an export not grown yet). `status` is the
   * native side's live status; `native` sends the native target a command (its `command` op) and throws
   * its refusal as a UserError. Returns the options a later server opens it with, if they change. Without
   * it, the target is not resized.
   */
  resize?(size: number, status: Record<string, unknown>, native: (command: string) => Promise<void>): Promise<Record<string, unknown> | undefined> | Record<string, unknown> | undefined;
  /** Releases what open() made. */
  close(): void;
}

/** A verb of `ublk-ts <target> <verb> -n N`, carried out by the device's running server. */
export interface TargetVerb {
  describe: string;
  /** Its options beyond -n (every verb of a target shares one namespace: same name, same meaning). */
  options: Record<string, Options>;
  /** The text the native target's command() is given; throws a UserError for bad options. */
  command(args: Record<string, unknown>): string;
}

export interface TargetSpec {
  name: string;
  describe: string;
  /** Options of `add --target <name>` (and of a config entry): src/option-schema.ts. */
  options: OptionSchema;
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
  /** Its own verbs (`ublk-ts <name> <verb>`); `status` is every such target's, from the device's record. */
  verbs?: Record<string, TargetVerb>;
  /** `<name> status`: the live state (the record's info) in a few lines. */
  describeStatus?(info: Record<string, unknown>): string;
  /** Long work the device is doing now (a resync, a scrub) in a few words, from its live state (the
   * record's info): `list` and `stats` show it. Undefined when there is none. */
  progress?(info: Record<string, unknown>): string | undefined;
}
