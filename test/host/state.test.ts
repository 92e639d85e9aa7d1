// The state directory is believed only when it is ours: made 0700, and a symlink, a record of another user
// or one others could have written is refused in one line (a record names a process to signal).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ensureStateDir, openLog, readRecord, writeRecord, type DeviceRecord } from '../../src/state.js';

let root = '';
let dir = '';
const before = process.env.UBLK_TS_STATE_DIR;
beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-state-'));
  dir = path.join(root, 'state');
  process.env.UBLK_TS_STATE_DIR = dir;
});
afterEach(() => {
  if (before === undefined) delete process.env.UBLK_TS_STATE_DIR;
  else process.env.UBLK_TS_STATE_DIR = before;
  fs.rmSync(root, { recursive: true, force: true });
});

const record: DeviceRecord = {
  id: 3, pid: 1, target: 'null', mode: 'auto-lease', queues: 1, depth: 1, size: 512, blockDevice: '/dev/ublkb3',
  charDevice: '/dev/ublkc3', log: '', info: {}, recovery: true, serve: { target: 'null', targetOptions: {}, mode: 'auto-lease' },
};

describe('state directory', () => {
  it('is made 0700 and its records 0600', () => {
    writeRecord(record);
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
    expect(fs.statSync(path.join(dir, 'ublkb3.json')).mode & 0o777).toBe(0o600);
    expect(readRecord(3)).toEqual(record);
  });

  it('is refused when it is a symlink', () => {
    fs.mkdirSync(path.join(root, 'elsewhere'), { mode: 0o700 });
    fs.symlinkSync(path.join(root, 'elsewhere'), dir);
    expect(() => ensureStateDir()).toThrow(/^refusing state directory .*: it is a symlink or not a directory$/);
  });

  it('is refused when others may write to it', () => {
    fs.mkdirSync(dir, { mode: 0o700 });
    fs.chmodSync(dir, 0o777);
    expect(() => writeRecord(record)).toThrow(/is writable by others \(mode 777\)/);
  });

  it('refuses a record that is a symlink, or that others could have written', () => {
    writeRecord(record);
    const file = path.join(dir, 'ublkb3.json');
    fs.renameSync(file, path.join(dir, 'real.json'));
    fs.symlinkSync(path.join(dir, 'real.json'), file);
    expect(() => readRecord(3)).toThrow(/^refusing .*ublkb3\.json: it is a symlink$/);
    fs.rmSync(file);
    fs.renameSync(path.join(dir, 'real.json'), file);
    fs.chmodSync(file, 0o666);
    expect(() => readRecord(3)).toThrow(/ublkb3\.json is writable by others/);
  });

  // chown needs root; the suite runs as root (CI, the VM), like the tool itself.
  it("refuses another user's record", () => {
    writeRecord(record);
    const file = path.join(dir, 'ublkb3.json');
    fs.chownSync(file, 65534, 65534);
    expect(() => readRecord(3)).toThrow(/ublkb3\.json belongs to uid 65534/);
  });

  it('does not write a record or a log through a symlink planted in its place', () => {
    ensureStateDir();
    const victim = path.join(root, 'victim');
    fs.writeFileSync(victim, 'untouched');
    fs.symlinkSync(victim, path.join(dir, 'ublkb3.json.tmp'));
    writeRecord(record);
    fs.symlinkSync(victim, path.join(dir, 'server.log'));
    expect(() => openLog(path.join(dir, 'server.log'))).toThrow(/cannot open log .*server\.log: it is a symlink/);
    expect(fs.readFileSync(victim, 'utf8')).toBe('untouched');
  });
});
