// The background server process `ublk-ts add` starts. It brings the device up itself (the char device,
// its mappings and the rings must belong to the process that serves them), reports on fd 3 (the device id
// right after ADD_DEV, then one line with the outcome), then serves until SIGTERM/SIGINT, a queue failure,
// or until the kernel stops the device. A device `up` brings up has a name: the server links
// /dev/ublk-ts/NAME to it before saying it is up, and removes the link when it ends. With `recover` it
// re-attaches to a device whose server died; with `restart` it is the supervisor (supervisor.ts) instead.
import fs from 'node:fs';
import { HANDED_OVER_EXIT, Server, serveUntilStopped, type ServeOptions } from './server.js';
import { errorKind, oneLine } from './errors.js';
import { makeLink, removeLink } from './dev-links.js';
import { writeRecord } from './state.js';

/** What `ublk-ts add`, `up` and `recover` hand over (lifecycle.spawnServer). */
export type DaemonOptions = ServeOptions & {
  name?: string;
  /** Run a supervisor that re-attaches a new server up to this many times when the server dies. */
  restart?: number;
};

export function report(msg: object, last = true): void {
  try {
    fs.writeSync(3, JSON.stringify(msg) + '\n');
    if (last) fs.closeSync(3);
  } catch {
    // The parent may be gone; the log still has the story.
  }
}

export const log = (line: string) => console.log(`${new Date().toISOString()} ${line}`);

async function serve(opts: DaemonOptions): Promise<void> {
  const { name, ...o } = opts;
  let server: Server | undefined;
  try {
    server = await Server.start({ ...o, onAdded: (id) => report({ added: id }, false), statusLog: log });
    if (name !== undefined) {
      const { id } = server.record;
      // 'exit' runs however the server ends (serveUntilStopped exits; so does an uncaught error). A device
      // handed over (`upgrade`) keeps its name: the next server's link would come only after a gap.
      process.on('exit', (code) => code !== HANDED_OVER_EXIT && removeLink(name, id));
      log(`linked ${makeLink(name, id)} -> ${server.record.blockDevice}`);
      server.record.name = name;
      writeRecord(server.record);
    }
  } catch (e) {
    report({ ok: false, error: oneLine(e), kind: errorKind(e) });
    log(`failed: ${(e as Error).message}`);
    await server?.stop();
    process.exit(1);
  }
  const how = o.recover === undefined ? 'serving' : 're-attached to';
  log(`${how} ${server.record.blockDevice} (${server.record.target}, ${server.record.mode}${server.record.recovery ? ', recovery on' : ''})`);
  report({ ok: true, record: server.record });
  await serveUntilStopped(server, log);
}

async function main(): Promise<void> {
  const opts = JSON.parse(process.argv[2]) as DaemonOptions;
  if (opts.restart) {
    const { supervise } = await import('./supervisor.js');
    await supervise(opts, opts.restart);
  } else await serve(opts);
}

void main();
