import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import fault, { parseRange } from '../../targets/fault/index.js';
import { checkOptions } from '../../src/option-schema.js';

/** As a server opens it: the values checked against the schema, the defaults filled in. */
const open = async (o: Record<string, unknown>) => fault.open(checkOptions(fault.options, o));

describe('fault ranges', () => {
  it('parses OFF:LEN with sizes, and an errno by name or number', () => {
    expect(parseRange('fail-range', '1M:64k', true)).toEqual([1 << 20, 64 << 10, os.constants.errno.EIO]);
    expect(parseRange('fail-range', '8M:4k:ENOSPC', true)).toEqual([8 << 20, 4096, os.constants.errno.ENOSPC]);
    expect(parseRange('fail-range', '0:512:5', true)).toEqual([0, 512, 5]);
    expect(parseRange('stall-range', '4096:4096', false)).toEqual([4096, 4096]);
  });
  it('refuses what is not a range, in one line naming the option', () => {
    expect(() => parseRange('fail-range', '1M', true)).toThrow(/^--fail-range "1M" must be OFF:LEN\[:ERRNO\]/);
    expect(() => parseRange('stall-range', '1M:64k:EIO', false)).toThrow(/^--stall-range .* must be OFF:LEN,/);
    expect(() => parseRange('fail-range', 'x:64k', true)).toThrow(/"x" is not a size/);
    expect(() => parseRange('fail-range', '0:0', true)).toThrow(/must not be 0/);
    expect(() => parseRange('fail-range', '0:4k:EWHAT', true)).toThrow(/"EWHAT" is not an errno/);
  });
});

describe('fault options', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-fault-'));
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.alloc(1 << 20));
  it('needs --over and a target it can wrap', async () => {
    await expect(open({ file: img })).rejects.toThrow(/needs --over TARGET, one of file, null, mirror, stripe, nbd/);
    await expect(open({ over: 'fault' })).rejects.toThrow(/needs --over/);
  });
  it('refuses corruption without data to corrupt, and absurd delays', async () => {
    await expect(open({ over: 'null', 'corrupt-range': ['0:4k'] })).rejects.toThrow(/--corrupt-range needs a target with data/);
    await expect(open({ over: 'null', 'delay-us': 1e9 })).rejects.toThrow(/^--delay-us must be a whole number from 0 to 60000000, not 1000000000$/);
    await expect(open({ over: 'null', 'fail-after': -1 })).rejects.toThrow(/^--fail-after must be a whole number from 0 to/);
  });
  it('passes the wrapped target and its faults to the native side, asking for USER_COPY only to corrupt', async () => {
    const t = await open({ over: 'file', file: img, 'fail-range': ['4k:4k:ENOSPC'], 'corrupt-range': ['0:512'] });
    t.close();
    expect(t.size).toBe(1 << 20);
    expect(t.options).toMatchObject({ over: 'file', 'fail-range': [4096, 4096, os.constants.errno.ENOSPC], 'corrupt-range': [0, 512] });
    expect(t.userCopy).toBe(true);
    expect(t.info).toMatchObject({ over: 'file', faults: 'fail-range,corrupt-range' });
    const n = await open({ over: 'null', size: '1G', 'delay-us': 10 });
    expect(n.userCopy).toBe(false);
    expect(n.info.faults).toBe('delay-us');
  });
});
