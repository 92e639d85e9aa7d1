import { describe, expect, it } from 'vitest';
import { defineTarget } from '../../src/api.js';

describe('defineTarget', () => {
  const echo = defineTarget({
    name: 'echo',
    options: { size: { describe: 'bytes' } },
    open: (o) => ({ size: Number(o.size ?? 4096), info: { got: JSON.stringify(o) }, read() {}, discard() {} }),
  });
  it('gives every TypeScript target --opt key=value, handed to open() as its own options', async () => {
    const t = await echo.open({ size: '8192', opt: ['mode=fast', 'path=/a=b'] });
    expect(t.size).toBe(8192);
    expect(JSON.parse(String(t.info.got))).toMatchObject({ size: '8192', mode: 'fast', path: '/a=b' });
    expect(t.typescript).toBeDefined();
    expect(t.userCopy).toBe(true);
    expect(t.info.language).toBe('typescript');
    // discard handled: the device advertises discard
    expect(t.params.discard).toBeDefined();
  });
  it("refuses a malformed --opt and a size that is not whole blocks, in one line naming the target", async () => {
    await expect(echo.open({ opt: ['novalue'] })).rejects.toThrow(/^echo: --opt "novalue" must be key=value$/);
    await expect(echo.open({ size: '1000' })).rejects.toThrow(/^echo: size 1000 is not a positive multiple of the block size 512$/);
  });
  it("says a target's own error on one line, prefixed by its name", async () => {
    const bad = defineTarget({ name: 'bad', open: () => { throw new Error('needs --file'); } });
    await expect(bad.open({})).rejects.toThrow(/^bad: needs --file$/);
  });
});
