// `ublk-ts upgrade`: a new server, started from the code installed now, takes a device over from the
// running one with no IO failed or lost. The old server is asked on the device's control socket to hand
// over (Server.handover: QUIESCE_DEV where the device has it, what it started is served to the end, what
// arrives later is left to the kernel, which re-issues it; then it closes /dev/ublkcN without deleting the
// device and exits). The device waits QUIESCED, its IO held by the kernel, until the new server
// re-attaches as `recover` does (START_USER_RECOVERY, FETCH, END_USER_RECOVERY) with the saved options.
// A device under a --restart supervisor is re-attached by the supervisor, which starts its servers from
// the installed code and takes a handover for no crash; `upgrade` waits for that server.
import { addon, DEV_STATE, DEV_STATE_NAMES } from './native.js';
import { askServer, HANDOVER_COMMAND } from './control.js';
import { explain, UserError } from './errors.js';
import { nextServer } from './lifecycle.js';
import { ProcessHandle } from './process-handle.js';
import { readRecord, readRecords, servesDevice, supervises, type DeviceRecord } from './state.js';
import { loadTarget } from './targets.js';
import { asTakeover } from './takeover.js';

export interface Upgraded {
  id: number;
  blockDevice: string;
  from: { pid: number; version: string };
  to: { pid: number; version: string };
  /** How the old server let go: quiesce (QUIESCE_DEV) or recovery. */
  handover: string;
  /** The --restart supervisor started the new server. */
  supervised: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The old server ends right after its reply; one that does not is killed (the kernel re-issues what it held). */
const EXIT_WAIT_MS = 10_000;
/** A supervisor's next server: its start-up and re-attach. */
const SUPERVISED_WAIT_MS = 60_000;
const UNKNOWN = 'unknown';

/**
 * Why the device with this record cannot be upgraded (undefined if it can). Its data would not survive
 * its server (a volatile target, or no recovery), or a handover could fail IO (no REISSUE).
 */
export async function cannotUpgrade(rec: DeviceRecord): Promise<string | undefined> {
  if (!rec.recovery) {
    const spec = await loadTarget(rec.serve.target).catch(() => undefined);
    if (spec?.volatile) return `target ${rec.target} keeps its data in its server process, so a new server would serve an empty disk: not upgraded`;
    return `it was added with --no-recovery, so it ends with its server: not upgraded`;
  }
  const info = await addon.getDevInfo(rec.id).catch((e: unknown) => {
    throw explain(e);
  });
  if (info.state !== DEV_STATE.LIVE) return `it is ${DEV_STATE_NAMES[info.state] ?? info.state}, not live: \`ublk-ts recover -n ${rec.id}\` starts a server for it`;
  if ((info.flags & addon.abi.flags.USER_RECOVERY_REISSUE) === 0n)
    return 'it has no USER_RECOVERY_REISSUE (the kernel lacked it when it was added), so a handover could fail the IO in flight: not upgraded';
  return undefined;
}

/** The record of a device whose server runs, or a one-line refusal. */
function runningRecord(id: number): DeviceRecord {
  const rec = readRecord(id);
  if (!rec) throw new UserError(`-n ${id}: no device of ublk-ts with that id (\`ublk-ts list\` shows them)`, 'not-found');
  if (!servesDevice(rec.pid, id)) throw new UserError(`ublkb${id} has no running server to upgrade: \`ublk-ts recover -n ${id}\` starts one`, 'not-found');
  return rec;
}

/** Waits for the supervisor's next server: the record names a new pid that holds /dev/ublkcN. */
async function supervisedServer(id: number, oldPid: number, supervisor: ProcessHandle): Promise<DeviceRecord> {
  const end = Date.now() + SUPERVISED_WAIT_MS;
  while (Date.now() < end) {
    const rec = readRecord(id);
    if (rec && rec.pid !== oldPid && servesDevice(rec.pid, id)) return rec;
    if (supervisor.exited()) break;
    await sleep(20);
  }
  const rec = readRecord(id);
  throw new UserError(
    `ublkb${id}: the supervisor (pid ${supervisor.pid}) did not re-attach a new server${supervisor.exited() ? ' and ended' : ` within ${SUPERVISED_WAIT_MS / 1000} s`}; the device holds its IO until \`ublk-ts recover -n ${id}\` (log: ${rec?.log ?? '?'})`,
    'backend',
  );
}

/** Holds the device's takeover mark from the handover until the new server serves: a `gc` or `recover`
 * meanwhile leaves the waiting device to it. */
export function upgradeDevice(id: number): Promise<Upgraded> {
  return asTakeover(id, () => takeOver(id));
}

async function takeOver(id: number): Promise<Upgraded> {
  const rec = runningRecord(id);
  const why = await cannotUpgrade(rec);
  if (why !== undefined) throw new UserError(`ublkb${id}: ${why}`);
  const old = ProcessHandle.prove(rec.pid, (p) => servesDevice(p, id));
  if (!old) throw new UserError(`ublkb${id}: its server ended meanwhile: \`ublk-ts recover -n ${id}\` starts one`, 'not-found');
  const supervisor = rec.supervisor !== undefined ? ProcessHandle.prove(rec.supervisor, (p) => supervises(p, rec)) : undefined;
  try {
    const reply = await askServer(id, HANDOVER_COMMAND);
    if (!reply.ok) throw new UserError(`ublkb${id}: its server refused to hand over: ${reply.error ?? 'no reason given'}`, 'backend');
    // The old server closes its files and exits right after replying (an `up` name's link stays); a new
    // one is started only then: the kernel lets one server at a time open /dev/ublkcN.
    const end = Date.now() + EXIT_WAIT_MS;
    while (!old.exited() && Date.now() < end) await sleep(5);
    old.signal('SIGKILL');
    const next = supervisor ? await supervisedServer(id, rec.pid, supervisor) : await nextServer(rec);
    return {
      id,
      blockDevice: rec.blockDevice,
      from: { pid: rec.pid, version: rec.version ?? UNKNOWN },
      to: { pid: next.pid, version: next.version ?? UNKNOWN },
      handover: reply.message ?? UNKNOWN,
      supervised: supervisor !== undefined,
    };
  } finally {
    old.close();
    supervisor?.close();
  }
}

export interface UpgradeAll {
  upgraded: Upgraded[];
  /** Devices left as they are, each with the reason (a volatile target, no recovery). */
  skipped: { id: number; reason: string }[];
}

/** Every device whose server runs, one after the other; those that cannot be upgraded are skipped, said why. */
export async function upgradeAll(onSkip: (id: number, reason: string) => void): Promise<UpgradeAll> {
  const out: UpgradeAll = { upgraded: [], skipped: [] };
  for (const rec of readRecords().sort((a, b) => a.id - b.id)) {
    if (!servesDevice(rec.pid, rec.id)) continue;
    const reason = await cannotUpgrade(rec);
    if (reason !== undefined) {
      out.skipped.push({ id: rec.id, reason });
      onSkip(rec.id, reason);
      continue;
    }
    out.upgraded.push(await upgradeDevice(rec.id));
  }
  return out;
}

export function describe(u: Upgraded): string {
  return `ublkb${u.id}: ${u.from.version} -> ${u.to.version} (pid ${u.from.pid} -> ${u.to.pid}, ${u.handover}${u.supervised ? ', by its supervisor' : ''})`;
}
