// Each target's index.ts hands its native side options by key; the native side reads only the keys its ops
// table declares (.options, checked as it reads them: test/native). Here every key each index.ts passes is
// one of those, so a key misspelt on either side fails a test instead of silently reading as absent.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { addon } from '../../src/native.js';
import type { OpenedTarget, TargetSpec } from '../../src/target.js';
import file from '../../targets/file/index.js';
import nullTarget from '../../targets/null/index.js';
import stripe from '../../targets/stripe/index.js';
import mirror from '../../targets/mirror/index.js';
import nbd from '../../targets/nbd/index.js';
import fault from '../../targets/fault/index.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-keys-'));
const img = (name: string) => {
  const p = path.join(dir, name);
  fs.writeFileSync(p, Buffer.alloc(1 << 20));
  return p;
};

/** Every option a target may be given, so that each key its open() can pass is passed. */
const cases: { spec: TargetSpec; native: string; opts: Record<string, unknown> }[] = [
  { spec: file, native: 'file', opts: { file: img('file.img') } },
  { spec: nullTarget, native: 'null', opts: { size: '1M' } },
  { spec: stripe, native: 'stripe', opts: { leg: [img('s1.img'), img('s2.img')], chunk: '64k' } },
  { spec: mirror, native: 'mirror', opts: { leg: [img('m1.img'), img('m2.img')], 'assume-clean': true, 'claim-legs': true, 'resync-rate': 10, 'bitmap-chunk': '64k' } },
  { spec: nbd, native: 'nbd', opts: { socket: path.join(dir, 'nbd.sock'), export: 'x', timeout: 5, reconnect: 2, send: 'auto' } },
  { spec: nbd, native: 'nbd', opts: { host: 'localhost', port: 10809 } },
  {
    spec: fault,
    native: 'fault',
    opts: { over: 'file', file: img('f.img'), 'fail-range': ['0:4k'], 'stall-range': ['8k:4k'], 'corrupt-range': ['16k:4k'], 'delay-us': 5, 'fail-after': 3, 'fail-queue-after': 4 },
  },
  { spec: fault, native: 'fault', opts: { over: 'mirror', leg: [img('fm1.img'), img('fm2.img')], 'resync-rate': 5, 'fail-range': ['0:4k'] } },
];

describe('option keys between index.ts and the native targets', () => {
  it.each(cases)('every key $native\'s open() passes ($opts) is one its native target declares', async ({ spec, native, opts }) => {
    let opened: OpenedTarget | undefined;
    try {
      opened = await spec.open(opts);
      const declared = new Set(addon.targetOptions[native]);
      // A wrapper passes the wrapped target's keys beside its own.
      if (native === 'fault') for (const k of addon.targetOptions[String(opts.over)]) declared.add(k);
      const passed = Object.keys(opened.options ?? {});
      expect(passed.length).toBeGreaterThan(native === 'null' ? -1 : 0);
      expect(passed.filter((k) => !declared.has(k))).toEqual([]);
    } finally {
      opened?.close();
    }
  });

  it('every native target with options declares them', () => {
    for (const name of ['file', 'stripe', 'mirror', 'nbd', 'fault', 'bridge']) expect(addon.targetOptions[name]?.length).toBeGreaterThan(0);
  });
});
