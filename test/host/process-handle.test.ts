// A process proven ours is signalled through its pidfd: once it has ended, a new process that got its pid
// is never signalled, however soon the pid comes round again.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { ProcessHandle } from '../../src/process-handle.js';

const started: ChildProcess[] = [];
const sleeper = () => {
  const c = spawn('sleep', ['60'], { stdio: 'ignore' });
  started.push(c);
  return c;
};
const ended = (c: ChildProcess) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));
afterEach(() => started.splice(0).forEach((c) => c.kill('SIGKILL')));

/** A new sleeper with exactly this pid (the kernel hands out ns_last_pid + 1 next; retried on a race). */
async function sleeperWithPid(pid: number): Promise<ChildProcess> {
  for (let i = 0; i < 50; i++) {
    fs.writeFileSync('/proc/sys/kernel/ns_last_pid', String(pid - 1));
    const c = sleeper();
    if (c.pid === pid) return c;
    c.kill('SIGKILL');
    await ended(c);
  }
  throw new Error(`could not get pid ${pid} again`);
}

describe('ProcessHandle', () => {
  it('is refused when the proof fails, or there is no such process', () => {
    const c = sleeper();
    expect(ProcessHandle.prove(c.pid!, () => false)).toBeUndefined();
    expect(ProcessHandle.prove(2 ** 22 + 1, () => true)).toBeUndefined();
  });

  it('signals the process it proved', async () => {
    const c = sleeper();
    const h = ProcessHandle.prove(c.pid!, () => true)!;
    expect(h.exited()).toBe(false);
    h.signal('SIGTERM');
    await ended(c);
    expect(c.signalCode).toBe('SIGTERM');
    expect(h.exited()).toBe(true);
    h.close();
  });

  it('never signals a process that took the pid after the proven one ended', async () => {
    const a = sleeper();
    const h = ProcessHandle.prove(a.pid!, () => true)!;
    a.kill('SIGKILL');
    await ended(a);
    const b = await sleeperWithPid(a.pid!);
    h.signal('SIGTERM');
    h.signal('SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    expect(b.exitCode).toBeNull();
    expect(b.signalCode).toBeNull();
    expect(h.exited()).toBe(true);
    h.close();
  });
});
