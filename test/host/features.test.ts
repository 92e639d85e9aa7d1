import { describe, expect, it } from 'vitest';
import { addon } from '../../src/native.js';
import { allowedModes, chooseMode, flagNames, modeFlags } from '../../src/features.js';

const F = addon.abi.flags;
const all72 = F.SUPPORT_ZERO_COPY | F.USER_COPY | F.AUTO_BUF_REG | F.USER_RECOVERY | F.CMD_IOCTL_ENCODE;

describe('data mode choice', () => {
  it('prefers auto-lease, then lease, user-copy, copy', () => {
    expect(chooseMode('auto', all72)).toBe('auto-lease');
    expect(chooseMode('auto', F.SUPPORT_ZERO_COPY | F.USER_COPY)).toBe('lease');
    expect(chooseMode('auto', F.USER_COPY)).toBe('user-copy');
    expect(chooseMode('auto', 0n)).toBe('copy');
  });
  it('gives a target that moves no data the mode where the kernel does nothing', () => {
    expect(chooseMode('auto', all72, false)).toBe('user-copy');
  });
  it('honours a forced mode the kernel has and refuses one it lacks', () => {
    expect(chooseMode('copy', all72)).toBe('copy');
    expect(() => chooseMode('lease', F.USER_COPY)).toThrow(/not supported by this kernel/);
  });
  it('needs zero copy as the fallback of auto-lease', () => {
    expect(modeFlags('auto-lease')).toBe(F.AUTO_BUF_REG | F.SUPPORT_ZERO_COPY);
    expect(allowedModes(F.AUTO_BUF_REG)).toEqual(['copy']);
  });
  it('names flags', () => {
    expect(flagNames(F.USER_COPY | F.AUTO_BUF_REG)).toEqual(['USER_COPY', 'AUTO_BUF_REG']);
  });
});
