// One process at a time starts a server for a device: the takeover mark is an flock, so a holder that
// died leaves nothing stale, and a live holder, in this process or another, keeps everyone else out.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { asTakeover } from '../../src/takeover.js';

let dir: string;
const mark = () => path.join(dir, 'ublkb7.takeover');
const holders: ChildProcess[] = [];

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-takeover-'));
  process.env.UBLK_TS_STATE_DIR = dir;
});
afterAll(() => {
  delete process.env.UBLK_TS_STATE_DIR;
  fs.rmSync(dir, { recursive: true, force: true });
});
afterEach(() => holders.splice(0).forEach((c) => c.kill('SIGKILL')));

/** Another process that locks the mark and writes its pid there, as asTakeover does; resolves once it has. */
function otherHolder(): Promise<ChildProcess> {
  const c = spawn('bash', ['-c', `exec 9>>${mark()} && flock -n 9 && echo $$ >&9 && echo locked && exec sleep 60`], { stdio: ['ignore', 'pipe', 'inherit'] });
  holders.push(c);
  return new Promise((resolve, reject) => {
    c.stdout!.once('data', () => resolve(c));
    c.once('exit', (code) => reject(new Error(`holder exited (${code})`)));
  });
}

describe('asTakeover', () => {
  it('runs its work holding the mark, with its pid in it, and removes it after', async () => {
    const seen = await asTakeover(7, async () => fs.readFileSync(mark(), 'utf8'));
    expect(seen).toBe(`${process.pid}\n`);
    expect(fs.existsSync(mark())).toBe(false);
  });

  it('refuses in one line while another process holds it, and takes it once that process is gone', async () => {
    const other = await otherHolder();
    const work = () => asTakeover(7, () => Promise.resolve('done'));
    await expect(work()).rejects.toThrow(`ublkb7: ublk-ts pid ${other.pid} is starting a server for it now: left to it`);
    other.kill('SIGKILL');
    await new Promise((r) => other.once('exit', r));
    expect(fs.existsSync(mark())).toBe(true); // its file stays, its lock went with it
    await expect(work()).resolves.toBe('done');
  });

  it('refuses a second takeover in the same process while the first runs', async () => {
    const inner = await asTakeover(7, () => asTakeover(7, () => Promise.resolve('twice')).catch((e: Error) => e.message));
    expect(inner).toMatch(`ublk-ts pid ${process.pid} is starting a server for it now`);
  });
});
