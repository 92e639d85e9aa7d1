// The control plane on the real driver: features, and ADD_DEV -> SET/GET_PARAMS -> GET_DEV_INFO -> DEL_DEV.
import { afterEach, describe, expect, it } from 'vitest';
import { addon } from '../../src/native.js';
import { removeFromKernel } from '../../src/server.js';
import { cli, cliJson, delAll, nothingLeft, sleep, ublkDevices } from './helpers.js';

afterEach(delAll);

describe('features', () => {
  it('reports zero copy and automatic buffer registration on this kernel', () => {
    const f = cliJson<{ flags: string[]; dataModes: string[]; defaultMode: string }>('features');
    console.log(`guest kernel features: ${f.flags.join(' ')}`);
    expect(f.flags).toContain('SUPPORT_ZERO_COPY');
    expect(f.flags).toContain('AUTO_BUF_REG');
    expect(f.flags).toContain('USER_COPY');
    expect(f.dataModes).toEqual(['auto-lease', 'lease', 'user-copy', 'copy']);
    expect(f.defaultMode).toBe('auto-lease');
  });
  it('prints names in text mode', () => {
    const r = cli('features');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/AUTO_BUF_REG/);
    expect(r.stdout).toMatch(/data modes: auto-lease, lease, user-copy, copy/);
  });
});

describe('control plane round trip', () => {
  it('ADD_DEV, SET_PARAMS, GET_PARAMS, GET_DEV_INFO, GET_DEV_INFO2, DEL_DEV', async () => {
    const before = ublkDevices();
    const info = await addon.addDev({ queues: 2, depth: 64, maxIoBufBytes: 1 << 20, flags: addon.abi.flags.USER_COPY });
    expect(info.nrHwQueues).toBe(2);
    expect(info.queueDepth).toBe(64);
    expect(info.maxIoBufBytes).toBe(1 << 20);
    expect(info.flags & addon.abi.flags.USER_COPY).toBe(addon.abi.flags.USER_COPY);
    try {
      await addon.setParams(info.devId, { devSectors: (256 << 20) / 512, maxSectors: 2048, logicalBsShift: 12, physicalBsShift: 12 });
      const p = await addon.getParams(info.devId);
      expect(p.devSectors).toBe((256 << 20) / 512);
      expect(p.logicalBsShift).toBe(12);
      expect(p.maxSectors).toBe(2048);
      const again = await addon.getDevInfo(info.devId);
      expect(again).toMatchObject({ devId: info.devId, nrHwQueues: 2, queueDepth: 64, state: 0 });
      const viaPath = await addon.getDevInfo2(info.devId);
      expect(viaPath.devId).toBe(info.devId);
    } finally {
      await addon.delDev(info.devId);
    }
    await expect(addon.getDevInfo(info.devId)).rejects.toMatchObject({ code: 'ENODEV', command: 'GET_DEV_INFO' });
    expect(ublkDevices()).toEqual(before);
  });

  it('turns kernel refusals into errors naming the command and errno', async () => {
    await expect(addon.addDev({ queues: 1, depth: 0, maxIoBufBytes: 1 << 20, flags: 0n })).rejects.toMatchObject({
      code: 'EINVAL',
      command: 'ADD_DEV',
    });
    await expect(addon.startDev(999999, process.pid)).rejects.toMatchObject({ code: 'ENODEV', command: 'START_DEV' });
  });
});

describe('a FETCH the kernel refuses', () => {
  // The CLI never gets here (it picks a mode the kernel allows); the native API with a device added in
  // copy mode but served as user-copy does: a FETCH without a buffer is refused with EINVAL.
  it('fails start at once with the kernel reason, and rollback leaves nothing', async () => {
    const info = await addon.addDev({ queues: 1, depth: 4, maxIoBufBytes: 1 << 20, flags: 0n });
    const dev = new addon.Device({ devId: info.devId, queues: 1, depth: 4, maxIoBufBytes: 1 << 20, mode: 'user-copy', target: 'null', fds: [] });
    const t0 = Date.now();
    await dev.open();
    await expect(dev.start()).rejects.toThrow(/refused FETCH of tag \d+: Invalid argument/);
    expect(Date.now() - t0).toBeLessThan(5000);
    dev.forceStop();
    await dev.join().catch(() => undefined);
    dev.close();
    await removeFromKernel(info.devId);
    // DEL_DEV_ASYNC returns before the driver drops its last reference: wait (bounded) for it to go.
    const gone = async () => addon.getDevInfo(info.devId).then(() => false, () => true);
    for (let i = 0; i < 50 && !(await gone()); i++) await sleep(100);
    await expect(addon.getDevInfo(info.devId)).rejects.toMatchObject({ code: 'ENODEV' });
    await nothingLeft();
  });
});
