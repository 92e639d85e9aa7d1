// Shared by the kernel suite: run the CLI and shell tools, and leave no device behind.
import { execFileSync, spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { expect, onTestFinished } from 'vitest';

export const CLI = path.resolve('dist/ublk-ts.mjs');

export function cli(...args: string[]): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 300_000 });
}

/** Runs the CLI and parses its --json output; throws with stderr on failure. */
export function cliJson<T>(...args: string[]): T {
  const r = cli(...args, '--json');
  if (r.status !== 0) throw new Error(`ublk-ts ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

export function sh(cmd: string, timeout = 900_000): string {
  return execFileSync('bash', ['-c', cmd], { encoding: 'utf8', timeout, maxBuffer: 64 << 20 });
}

export function ublkDevices(): string[] {
  return fs.existsSync('/sys/class/ublk-char') ? fs.readdirSync('/sys/class/ublk-char') : [];
}

export function serverPids(): number[] {
  const out = spawnSync('pgrep', ['-f', 'ublk-ts-daemon.mjs'], { encoding: 'utf8' });
  return out.stdout.split('\n').filter(Boolean).map(Number);
}

/** Scratch space on the guest's tmpfs. */
export function scratch(name: string): string {
  const dir = path.join('/tmp', 'ublk-ts-test', name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** After each test: no mount, no device, no scratch file left (the guest's tmpfs is its RAM). */
export function delAll(): void {
  sh('mountpoint -q /tmp/ublk-mnt && umount /tmp/ublk-mnt || true');
  cli('del', '--all');
  fs.rmSync(path.join('/tmp', 'ublk-ts-test'), { recursive: true, force: true });
  // A tool that opened /dev/ublkbN after its device was gone made a regular file there (on the guest's RAM):
  // it must not be taken for the next device of that number.
  for (const n of fs.readdirSync('/dev').filter((n) => /^ublk[bc]\d+$/.test(n)))
    if (!fs.statSync(`/dev/${n}`).isBlockDevice() && !fs.statSync(`/dev/${n}`).isCharacterDevice()) fs.rmSync(`/dev/${n}`);
}

export interface AddedDevice {
  id: number;
  blockDevice: string;
  mode: string;
  pid: number;
  queues: number;
  depth: number;
  size: number;
  /** The server's log file. */
  log: string;
  info: Record<string, string | number | boolean>;
}

export const DATA_MODES = ['auto-lease', 'lease', 'user-copy', 'copy'] as const;

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Reads and writes in flight on /dev/ublkbN, from the block layer. */
export const inflight = (id: number) => fs.readFileSync(`/sys/block/ublkb${id}/inflight`, 'utf8').trim().split(/\s+/).map(Number);

/** Turns off request merging, so N requests of fio stay N requests in flight (two adjacent random reads would merge). */
export const noMerges = (id: number) => fs.writeFileSync(`/sys/block/ublkb${id}/queue/nomerges`, '2');

/**
 * Starts fio in the background with its output collected. It is always killed when the test ends: a later
 * device may reuse the same /dev/ublkbN path, and a leaked fio would write into it.
 */
export function fioInBackground(args: string[]): { exit: Promise<number | null>; output: () => string } {
  const fio = spawn('fio', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  fio.stdout.on('data', (d: Buffer) => (out += d.toString()));
  fio.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<number | null>((r) => fio.on('exit', (code) => r(code)));
  onTestFinished(() => {
    fio.kill('SIGKILL');
  });
  return { exit, output: () => out };
}

/** Waits (bounded) until no ublk device and no server process is left, then says so. */
export async function nothingLeft(): Promise<void> {
  for (let i = 0; i < 100 && (ublkDevices().length > 0 || serverPids().length > 0); i++) await sleep(100);
  expect(ublkDevices()).toEqual([]);
  expect(serverPids()).toEqual([]);
}
