// `add --restart N`: a small supervisor that runs the server as its child and, when the server dies
// (a crash, kill -9), starts a new one that re-attaches to the device (user recovery), up to N times, with
// a log line per restart. A server that ends cleanly (del, SIGTERM) has deleted the device: then the
// supervisor ends too. A server that handed its device over (`upgrade`) is no crash: the supervisor
// starts the next one at once, from the code installed now, without counting a restart; `upgrade` waits
// for it. It is the process `add` talks to: it passes on the first server's report.
import { spawn } from 'node:child_process';
import { addon } from './native.js';
import { isKernelError } from './errors.js';
import { log, report, type DaemonOptions } from './daemon.js';
import { reattachOptions, type DeviceRecord } from './state.js';
import { HANDED_OVER_EXIT } from './server.js';

const BACKOFF_MS = 200;
const BACKOFF_MAX_MS = 5000;

/** The server running now: a signal to the supervisor is passed on to it. */
let current: ReturnType<typeof spawn> | undefined;

interface Outcome {
  /** The server's final report (undefined if it died before making one). */
  msg?: { ok: boolean; error?: string; record?: DeviceRecord };
  ended: Promise<Ended>;
  pid?: number;
}

interface Ended {
  how: string;
  /** It handed the device over to a next server (upgrade). */
  handedOver: boolean;
}

/** Starts a server; `relay` passes its report lines on to whoever started the supervisor. */
function startServer(o: DaemonOptions, relay: boolean): Promise<Outcome> {
  const child = spawn(process.execPath, [process.argv[1], JSON.stringify(o)], { stdio: ['ignore', 'inherit', 'inherit', 'pipe'] });
  const ended = new Promise<Ended>((r) =>
    child.on('exit', (code, sig) => r({ how: sig ? `killed by ${sig}` : `exit status ${code}`, handedOver: code === HANDED_OVER_EXIT })),
  );
  current = child;
  return new Promise((resolve) => {
    let buf = '';
    let msg: Outcome['msg'];
    const pipe = child.stdio[3] as NodeJS.ReadableStream;
    pipe.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = JSON.parse(buf.slice(0, nl)) as NonNullable<Outcome['msg']> & { added?: number };
        buf = buf.slice(nl + 1);
        if (line.added === undefined) msg = line;
        if (relay) report(line, line.added === undefined);
      }
    });
    pipe.on('close', () => resolve({ msg, ended, pid: child.pid }));
  });
}

/** Whether the device is still there to re-attach to: it has recovery and has not been stopped. */
async function recoverable(id: number): Promise<boolean> {
  try {
    const info = await addon.getDevInfo(id);
    return info.state !== 0 && (info.flags & addon.abi.flags.USER_RECOVERY) !== 0n;
  } catch (e) {
    if (isKernelError(e) && e.code === 'ENODEV') return false;
    throw e;
  }
}

export async function supervise(o: DaemonOptions, max: number): Promise<void> {
  let stopping = false;
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const)
    process.on(sig, () => {
      stopping = true;
      current?.kill('SIGTERM');
    });
  const server: DaemonOptions = { ...o, restart: 0, supervisor: process.pid, recovery: true };
  const first = await startServer(server, true);
  if (!first.msg?.ok || !first.msg.record) {
    await first.ended;
    process.exit(1);
  }
  const rec = first.msg.record;
  const id = rec.id;
  // A new server is told what the first one settled on (the data mode `auto` chose, the queues the kernel gave).
  const again: DaemonOptions = { ...server, ...reattachOptions(rec) };
  log(`supervising /dev/ublkb${id}: up to ${max} restarts`);
  let ended = await first.ended;
  let pid = first.pid;
  for (let restarts = 1; ; restarts++) {
    if (stopping) break;
    if (!(await recoverable(id))) {
      log(`server ${pid} ended (${ended.how}) and the device is gone: supervisor ends`);
      break;
    }
    if (ended.handedOver) {
      restarts--; // an upgrade, not a crash
      log(`server ${pid} handed /dev/ublkb${id} over (upgrade): starting the next server`);
    } else {
      if (restarts > max) {
        log(`server ${pid} ended (${ended.how}); ${max} restarts used up: /dev/ublkb${id} waits for \`ublk-ts recover -n ${id}\` or \`ublk-ts del -n ${id}\``);
        process.exit(1);
      }
      log(`restart ${restarts}/${max}: server ${pid} ended (${ended.how}); re-attaching /dev/ublkb${id}`);
      await new Promise((r) => setTimeout(r, Math.min(BACKOFF_MS << (restarts - 1), BACKOFF_MAX_MS)));
    }
    if (stopping) break; // `del` came during the pause: it deletes the device, nothing is to be restarted
    const next = await startServer(again, false);
    if (!next.msg?.ok) log(`${ended.handedOver ? 'the upgrade' : `restart ${restarts}/${max}`} failed: ${next.msg?.error ?? 'the server died before reporting'}`);
    ended = await next.ended;
    pid = next.pid;
  }
  process.exit(0);
}
