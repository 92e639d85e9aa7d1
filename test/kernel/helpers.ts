// Shared by the kernel suite: run the CLI and shell tools, and leave no device behind.
import { execFileSync, spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { expect, onTestFinished } from 'vitest';
import { deleteDevice, type ListedDevice } from '../../src/lifecycle.js';
import type { DeviceRecord } from '../../src/state.js';

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

/** Says the command failed, with one line on stderr; returns that stderr. */
export function failedInOneLine(r: SpawnSyncReturns<string>): string {
  expect(r.status, r.stderr).not.toBe(0);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  return r.stderr;
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

/** Where a test mounts a filesystem (delAll unmounts it). */
export const MNT = '/tmp/ublk-mnt';

/** After each test: no mount, no device, no scratch file left (the guest's tmpfs is its RAM). */
export function delAll(): void {
  sh(`mountpoint -q ${MNT} && umount ${MNT} || true`);
  cli('del', '--all', '--force'); // a test's fio may still hold a device: it is killed only after this
  fs.rmSync(path.join('/tmp', 'ublk-ts-test'), { recursive: true, force: true });
  // A tool that opened /dev/ublkbN after its device was gone made a regular file there (on the guest's RAM):
  // it must not be taken for the next device of that number.
  for (const n of fs.readdirSync('/dev').filter((n) => /^ublk[bc]\d+$/.test(n)))
    if (!fs.statSync(`/dev/${n}`).isBlockDevice() && !fs.statSync(`/dev/${n}`).isCharacterDevice()) fs.rmSync(`/dev/${n}`);
}

/** What `add --json` (and `recover --json`) prints: the device's record. */
export type AddedDevice = DeviceRecord;

/** A device's entry in `list --json`; one that ublk-ts added carries its record's info. */
export type Listed = ListedDevice & Pick<DeviceRecord, 'info'>;

/** The device's entry in `list --json`, if it is listed. */
export const listEntry = (id: number): Listed | undefined => cliJson<Listed[]>('list').find((d) => d.id === id);

/** The device's entry in `list --json`; throws if it is not listed. */
export function listed(id: number): Listed {
  const d = listEntry(id);
  if (!d) throw new Error(`device ${id} is not listed`);
  return d;
}

/** The device's state in `list --json` (undefined while it is not listed). */
export const stateOf = (id: number) => listEntry(id)?.state;

export const DATA_MODES = ['auto-lease', 'lease', 'user-copy', 'copy'] as const;

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What `p` settles to, or 'hung' if it has not within `ms`. */
export const hung = <T>(p: Promise<T>, ms: number) => Promise.race([p, sleep(ms).then(() => 'hung' as const)]);

/** Whether process `pid` exists. */
export const alive = (pid: number) => fs.existsSync(`/proc/${pid}`);

/** Reads and writes in flight on /dev/ublkbN, from the block layer. */
export const inflight = (id: number) => fs.readFileSync(`/sys/block/ublkb${id}/inflight`, 'utf8').trim().split(/\s+/).map(Number);

/** Turns off request merging, so N requests of fio stay N requests in flight (two adjacent random reads would merge). */
export const noMerges = (id: number) => fs.writeFileSync(`/sys/block/ublkb${id}/queue/nomerges`, '2');

/** Waits (bounded: `polls` checks, 100 ms apart) until `n` reads are in flight on the device, then says so. */
export async function readsInFlight(id: number, n: number, polls: number): Promise<void> {
  for (let i = 0; i < polls && inflight(id)[0] < n; i++) await sleep(100);
  expect(inflight(id)[0]).toBe(n);
}

/**
 * Deletes the device through the API `del --force` calls, in this process (under emulation with fio busy, a fresh
 * node process alone takes seconds), and says it took under 5 s and that `load` on it ended within a minute.
 */
export async function deletePromptly(id: number, load: { exit: Promise<number | null> }, what: string): Promise<void> {
  const t0 = Date.now();
  await deleteDevice(id);
  const took = Date.now() - t0;
  console.log(`del ${what} took ${took} ms`);
  expect(took).toBeLessThan(5000);
  expect(await hung(load.exit, 60_000)).not.toBe('hung');
}

/** Starts a command in the background with its output (stdout and stderr) collected; killed when the test ends. */
export function inBackground(cmd: string, args: string[]): { exit: Promise<number | null>; output: () => string } {
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<number | null>((r) => p.on('exit', (code) => r(code)));
  onTestFinished(() => {
    p.kill('SIGKILL');
  });
  return { exit, output: () => out };
}

/**
 * fio in the background. It must be killed when the test ends: a later device may reuse the same
 * /dev/ublkbN path, and a leaked fio would write into it.
 */
export const fioInBackground = (args: string[]) => inBackground('fio', args);

/** fio's options to check every block it wrote (crc32c), stop at the first bad one, and save no state file. */
export const FIO_VERIFY = '--verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0';

/** fio's one job (or its group), as --output-format=json reports it. */
export interface FioJob {
  error: number;
  job_runtime: number;
  read: FioDirection;
  write: FioDirection;
}
interface FioDirection {
  io_bytes: number;
  iops: number;
  total_ios: number;
}

/** The first job of fio's --output-format=json output (whatever fio printed before the JSON skipped). */
export const fioJob = (out: string) => (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: FioJob[] }).jobs[0];

/** Waits (bounded: `polls` checks, 100 ms apart) until no ublk device and no server process is left, then says so. */
export async function nothingLeft(polls = 100): Promise<void> {
  for (let i = 0; i < polls && (ublkDevices().length > 0 || serverPids().length > 0); i++) await sleep(100);
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

/** A device-mapper device with `table` over a loop device over `file`; removed when the test ends. */
export function dmDevice(name: string, file: string, table: (loop: string) => string): string {
  const loop = sh(`losetup --show -f ${file}`).trim();
  // No udev in the guest: dmsetup must not wait for it; devtmpfs makes /dev/dm-N.
  sh(`printf '${table(loop)}' | dmsetup create --noudevsync ${name}`);
  onTestFinished(() => {
    sh(`dmsetup remove --noudevsync ${name} 2>/dev/null || true; losetup -d ${loop} || true`);
  });
  return `/dev/dm-${sh(`dmsetup info -c --noheadings -o minor ${name}`).trim()}`;
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
