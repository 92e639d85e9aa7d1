// The background server process `ublk-ts add` starts. It brings the device up itself (the char device,
// its mappings and the rings must belong to the process that serves them), reports on fd 3 (the device id
// right after ADD_DEV, then one line with the outcome), then serves until SIGTERM/SIGINT, a queue failure,
// or until the kernel stops the device. A device `up` brings up has a name: the server links
// /dev/ublk-ts/NAME to it before saying it is up, and removes the link when it ends.
import fs from 'node:fs';
import { Server, serveUntilStopped, type ServeOptions } from './server.js';
import { errorKind, oneLine } from './errors.js';
import { makeLink, removeLink } from './dev-links.js';
import { writeRecord } from './state.js';

/** What `ublk-ts add` and `up` hand over (lifecycle.addDevice). */
export type DaemonOptions = ServeOptions & { name?: string };

function report(msg: object, last = true): void {
  try {
    fs.writeSync(3, JSON.stringify(msg) + '\n');
    if (last) fs.closeSync(3);
  } catch {
    // The parent may be gone; the log still has the story.
  }
}

async function main(): Promise<void> {
  const { name, ...opts } = JSON.parse(process.argv[2]) as DaemonOptions;
  const log = (line: string) => console.log(`${new Date().toISOString()} ${line}`);
  let server: Server | undefined;
  try {
    server = await Server.start({ ...opts, onAdded: (id) => report({ added: id }, false), statusLog: log });
    if (name !== undefined) {
      const { id } = server.record;
      // 'exit' runs however the server ends (serveUntilStopped exits; so does an uncaught error).
      process.on('exit', () => removeLink(name, id));
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
  log(`serving ${server.record.blockDevice} (${server.record.target}, ${server.record.mode})`);
  report({ ok: true, record: server.record });
  await serveUntilStopped(server, log);
}

void main();
