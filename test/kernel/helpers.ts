// Shared by the kernel suite: run the CLI and shell tools, and leave no device behind.
import { execFileSync, spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
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

/** Polls `ok` until it holds; throws after `ms`, naming what was awaited. */
export async function waitFor(what: string, ok: () => boolean, ms: number): Promise<void> {
  for (const t0 = Date.now(); Date.now() - t0 < ms; await sleep(100)) if (ok()) return;
  throw new Error(`${what}: not within ${ms} ms`);
}

/** A server in the foreground, killed when the test ends; resolves once its unix socket exists. */
export async function socketServer(cmd: string, args: string[], sock: string): Promise<ChildProcess> {
  fs.rmSync(sock, { force: true });
  const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  p.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  onTestFinished(() => {
    p.kill('SIGKILL');
  });
  await waitFor(`${cmd} socket ${sock}`, () => fs.existsSync(sock) || p.exitCode !== null, 20_000);
  if (!fs.existsSync(sock)) throw new Error(`${cmd} ${args.join(' ')} ended (${p.exitCode}) before its socket appeared: ${err.trim()}`);
  return p;
}

/** nbdkit in the foreground on a unix socket (killed when the test ends). */
export const nbdkit = (sock: string, ...args: string[]) => socketServer('nbdkit', ['-f', '--exit-with-parent', '-U', sock, ...args], sock);

/** Ends a server started above and waits until it is gone. */
export async function stopServer(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const gone = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await gone;
}

/** A loop device over a sparse file on the guest's tmpfs, direct IO; detached when the test ends. */
export function loopDevice(file: string, size: string, sectorSize: number): string {
  sh(`truncate -s ${size} ${file}`);
  const loop = sh(`losetup --show -f --sector-size ${sectorSize} --direct-io=on ${file}`).trim();
  onTestFinished(() => {
    sh(`losetup -d ${loop} || true`);
  });
  return loop;
}

/** A request queue limit of block device dev, from sysfs. */
export const queueAttr = (dev: string, name: string) => fs.readFileSync(`/sys/block/${path.basename(dev)}/queue/${name}`, 'utf8').trim();

/** The sectors block device dev has discarded so far (/sys/block/<dev>/stat, field 14). */
export const discardedSectors = (dev: string) => Number(fs.readFileSync(`/sys/block/${path.basename(dev)}/stat`, 'utf8').trim().split(/\s+/)[13]);

/** scsi_debug parameters: 4096-byte sectors that discard (UNMAP) in 16 KiB grains, 1 MiB at a time, and read back zeroes there. */
export const SCSI_DEBUG_4K_DISCARD = 'sector_size=4096 lbpu=1 lbprz=1 unmap_granularity=4 unmap_max_blocks=256';

/** A device over a leg made with SCSI_DEBUG_4K_DISCARD and 512-byte legs takes the strictest of them all. */
export function expectScsiDebug4kLimits(dev: string): void {
  expect.soft(queueAttr(dev, 'logical_block_size')).toBe('4096');
  expect.soft(queueAttr(dev, 'discard_max_bytes')).toBe(String(1 << 20));
  expect.soft(queueAttr(dev, 'discard_granularity')).toBe(String(16 << 10));
}

/** scsi_debug's one disk, 16 MiB, with `params` (it has no discard unless they ask); unloaded when the test ends. */
export async function scsiDebug(params: string): Promise<string> {
  const mods = process.env.UBLK_TS_KMOD_DIR;
  sh(`modprobe -d ${mods} sd_mod && modprobe -d ${mods} scsi_debug dev_size_mb=16 delay=0 ${params}`);
  onTestFinished(() => {
    sh('rmmod scsi_debug || true');
  });
  const disk = () => sh('ls /sys/bus/pseudo/drivers/scsi_debug/adapter0/host*/target*/*/block 2>/dev/null || true').trim();
  await waitFor('the scsi_debug disk', () => disk() !== '' && fs.existsSync(`/dev/${disk()}`), 20_000);
  return `/dev/${disk()}`;
}
