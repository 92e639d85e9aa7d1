// stats without a device: the block layer's counters parsed, rates from two samples, the server's counters
// as it publishes them, and the table.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceStats, parseBlockStat, type Sample } from '../../src/stats.js';
import { statsHeader, statsTable } from '../../src/stats-report.js';
import { readStats, removeRecord, writeRecord, writeStats } from '../../src/state.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-stats-'));
const before = process.env.UBLK_TS_STATE_DIR;
beforeAll(() => (process.env.UBLK_TS_STATE_DIR = dir));
afterAll(() => {
  if (before === undefined) delete process.env.UBLK_TS_STATE_DIR;
  else process.env.UBLK_TS_STATE_DIR = before;
  fs.rmSync(dir, { recursive: true, force: true });
});

// /sys/block/<disk>/stat of a 6.x kernel: 17 fields.
const STAT_A = '    1000        0     8000      100     2000        0    16000      200        3      300      300        0        0        0        0       10        1';
const STAT_B = '    3000        5    24000      300     2500        0    20000      250        7      900      900        4        0     2048        1       14        2';

function sampleOf(stat: string, mono: number, server?: Sample['server']): Sample {
  return { id: 7, time: 1_700_000_000_000 + mono, mono, block: parseBlockStat(stat), inFlight: { read: 2, write: 1 }, server };
}

const counters = { requests: 0, leased: 0, copied: 0, errors: 0, retries: 0, shortTransfers: 0 };

describe('stats', () => {
  it('parses the fields it uses, and an older kernel without discard and flush', () => {
    expect(parseBlockStat(STAT_B)).toEqual({
      readIos: 3000,
      readSectors: 24000,
      writeIos: 2500,
      writeSectors: 20000,
      discardIos: 4,
      discardSectors: 2048,
      flushIos: 14,
    });
    expect(parseBlockStat(STAT_B.trim().split(/\s+/).slice(0, 11).join(' ')).flushIos).toBe(0);
  });

  it('computes rates over the window, with the server counters and its name', () => {
    writeRecord({ id: 7, pid: 1, target: 'null', mode: 'user-copy', queues: 1, depth: 1, size: 1, blockDevice: '/dev/ublkb7', charDevice: '/dev/ublkc7', log: '', info: {}, name: 'db', recovery: false, serve: { target: 'null', targetOptions: {}, mode: 'user-copy' } });
    const a = sampleOf(STAT_A, 1000, { ...counters, requests: 100, time: 1_700_000_000_900, pid: 42 });
    const b = sampleOf(STAT_B, 3000, { ...counters, requests: 2600, leased: 2500, time: 1_700_000_002_900, pid: 42 });
    const s = deviceStats(a, b);
    expect(s).toMatchObject({
      id: 7,
      name: 'db',
      mode: 'user-copy',
      window: { seconds: 2 },
      read: { iops: 1000, bytesPerSecond: 16000 * 512 / 2, ios: 3000, bytes: 24000 * 512 },
      write: { iops: 250, bytesPerSecond: 4000 * 512 / 2 },
      discard: { iops: 2, bytesPerSecond: 2048 * 512 / 2 },
      flush: { iops: 2, ios: 14 },
      inFlight: { read: 2, write: 1 },
      server: { pid: 42, requests: 2600, leased: 2500, requestsPerSecond: 1250, age: 0.1 },
    });
    // A server that restarted between the samples has no rate yet; a device without a server, no counters.
    expect(deviceStats(a, { ...b, server: { ...b.server!, pid: 43 } }).server?.requestsPerSecond).toBeNull();
    expect(deviceStats(a, { ...b, server: undefined }).server).toBeNull();
    // A device made again under the same id counts from zero: never a negative rate.
    expect(deviceStats(b, a).read.iops).toBe(0);
    removeRecord(7);
  });

  it('keeps the counters beside the record, and removes them with it', () => {
    writeStats(9, { ...counters, requests: 5, time: 1, pid: 2 });
    expect(readStats(9)?.requests).toBe(5);
    removeRecord(9);
    expect(readStats(9)).toBeUndefined();
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('draws a row a device under the header, stamped when piped', () => {
    const s = deviceStats(sampleOf(STAT_A, 0), sampleOf(STAT_B, 1000));
    expect(statsHeader(false)).toMatch(/^DEVICE +NAME +MODE +READ\/s +READ B\/s +WRITE\/s +WRITE B\/s +INFLIGHT +REQUESTS/);
    expect(statsTable([s])).toEqual([expect.stringMatching(/^ublkb7 +- +- +2000 +7\.8M +500 +2.0M +2\/1 +- /)]);
    expect(statsTable([s], '12:00:00')[0]).toMatch(/^12:00:00 ublkb7 /);
  });
});
