// The package's entry point for code: block devices with targets written in TypeScript.
import { defineTarget, type OptionValues, type TypeScriptTarget } from './api.js';
import type { DataMode } from './native.js';
import type { TargetSpec } from './target.js';

export { defineTarget } from './api.js';
export type { BlockDevice, BlockOp, BlockRequest, OptionValues, Route, TypeScriptTarget } from './api.js';

export interface CreateOptions {
  /** A target written in TypeScript, or one of the package's own (its spec). */
  target: TypeScriptTarget | TargetSpec;
  /** The target's options, as `--opt key=value` would give them. */
  options?: OptionValues;
  queues?: number;
  depth?: number;
  mode?: DataMode | 'auto';
}

export interface DeviceHandle {
  id: number;
  /** /dev/ublkbN */
  path: string;
  /** Stops and deletes the device; resolves once it is gone. */
  delete(): Promise<void>;
}

/** Creates a device served by this process; its handlers run on this process's event loop. */
export async function createDevice(o: CreateOptions): Promise<DeviceHandle> {
  const { Server } = await import('./server.js');
  const spec = 'movesData' in o.target ? o.target : defineTarget(o.target);
  const server = await Server.start({
    target: spec.name,
    spec,
    targetOptions: o.options ?? {},
    queues: o.queues ?? 1,
    depth: o.depth,
    mode: o.mode,
    log: '-',
  });
  return { id: server.record.id, path: server.record.blockDevice, delete: () => server.stop() };
}
