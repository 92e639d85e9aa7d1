// The mirror's record after `mirror rate`: a later server (recover, --restart) starts with the rates the
// running one went by, in options that pass the checks of add.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import spec from '../../targets/mirror/index.js';
import type { OpenedTarget } from '../../src/target.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mirror-rates-'));
const legs = ['a.img', 'b.img'].map((f) => path.join(dir, f));
let opened: OpenedTarget | undefined;
afterEach(() => opened?.close());
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A status as the native side reports it, for legs in sync on the opened fds. */
function status(o: OpenedTarget, max: number, min: number): Record<string, string | number | boolean> {
  return { legs: 'in-sync,in-sync', legFds: o.fds.join(','), resyncRateMax: max, resyncRateMin: min };
}

describe('mirror rate, kept for a later server', () => {
  it('nothing to keep until the rates change; then they are options in MB/s, a floor above a lower cap as the cap, no cap as none', async () => {
    for (const l of legs) fs.writeFileSync(l, Buffer.alloc(4 << 20));
    const opts = { leg: legs, 'resync-rate': 1 };
    opened = await spec.open(opts);
    const o = opened;
    expect(o.restate?.(status(o, 1e6, 4e6))).toBeUndefined(); // what the options gave
    expect(o.restate?.(status(o, 50e6, 10e6))?.options).toEqual({ leg: legs, 'resync-rate': 50, 'resync-min-rate': 10 });
    expect(o.restate?.(status(o, 50e6, 10e6))).toBeUndefined();
    const lower = o.restate?.(status(o, 2e6, 10e6))?.options;
    expect(lower).toEqual({ leg: legs, 'resync-rate': 2, 'resync-min-rate': 2 });
    expect(o.restate?.(status(o, 0, 10e6))?.options).toEqual({ leg: legs, 'resync-min-rate': 10 });
    o.close();
    opened = undefined;
    // A later server takes the kept options as add would.
    opened = await spec.open(lower ?? {});
    expect(opened.options?.['resync-rate']).toBe(2e6);
    expect(opened.options?.['resync-min-rate']).toBe(2e6);
  });
});
