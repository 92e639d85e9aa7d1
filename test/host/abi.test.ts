// The ABI header's numbers against the values computed from the Linux 7.2 uapi header.
import { describe, expect, it } from 'vitest';
import { addon } from '../../src/native.js';

const { abi } = addon;

describe('control command encodings', () => {
  it.each([
    ['GET_QUEUE_AFFINITY', 0x80207501],
    ['GET_DEV_INFO', 0x80207502],
    ['ADD_DEV', 0xc0207504],
    ['DEL_DEV', 0xc0207505],
    ['START_DEV', 0xc0207506],
    ['STOP_DEV', 0xc0207507],
    ['SET_PARAMS', 0xc0207508],
    ['GET_PARAMS', 0x80207509],
    ['START_USER_RECOVERY', 0xc0207510],
    ['END_USER_RECOVERY', 0xc0207511],
    ['GET_DEV_INFO2', 0x80207512],
    ['GET_FEATURES', 0x80207513],
    ['DEL_DEV_ASYNC', 0x80207514],
    ['UPDATE_SIZE', 0xc0207515],
    ['QUIESCE_DEV', 0xc0207516],
    ['TRY_STOP_DEV', 0xc0207517],
  ])('%s = %s', (name, value) => {
    expect(abi.commands[name]).toBe(value);
  });
});

describe('io command encodings', () => {
  it.each([
    ['FETCH_REQ', 0xc0107520],
    ['COMMIT_AND_FETCH_REQ', 0xc0107521],
    ['NEED_GET_DATA', 0xc0107522],
    ['REGISTER_IO_BUF', 0xc0107523],
    ['UNREGISTER_IO_BUF', 0xc0107524],
  ])('%s = %s', (name, value) => {
    expect(abi.ioCommands[name]).toBe(value);
  });
});

describe('feature flags', () => {
  it.each([
    ['SUPPORT_ZERO_COPY', 0],
    ['NEED_GET_DATA', 2],
    ['USER_RECOVERY', 3],
    ['USER_RECOVERY_REISSUE', 4],
    ['UNPRIVILEGED_DEV', 5],
    ['USER_COPY', 7],
    ['ZONED', 8],
    ['USER_RECOVERY_FAIL_IO', 9],
    ['AUTO_BUF_REG', 11],
    ['QUIESCE', 12],
    ['BATCH_IO', 15],
    ['NO_AUTO_PART_SCAN', 18],
    ['SHMEM_ZC', 19],
  ])('%s is bit %i', (name, bit) => {
    expect(abi.flags[name]).toBe(1n << BigInt(bit));
  });
});

describe('struct sizes and user-copy offsets', () => {
  it('has the 7.2 layouts', () => {
    expect(abi.sizes).toEqual({ ctrlCmd: 32, devInfo: 64, ioDesc: 24, ioCmd: 16, params: 136 });
  });
  it('encodes queue 3, tag 17 like the kernel', () => {
    expect(abi.userCopyOffset(3, 17) + 4096n).toBe(0x600a2001000n);
  });
});
