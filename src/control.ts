// A running server's control socket: `ublk-ts <target> <verb>` reaches the target of the device's server
// through it. One socket per device in the state directory (0600, like the records): one JSON line asked,
// one answered, then the connection closes.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { stateDir } from './state.js';
import { UserError } from './errors.js';

export interface ControlReply {
  ok: boolean;
  message?: string;
  error?: string;
}

/** A reply, and what the server does once it is out (the connection closed): not sent. */
export interface ControlAnswer extends ControlReply {
  after?: () => void;
}

/** What `upgrade` asks a server: hand the device over to a next server (Server.handover). The server
 * takes it before its target's verbs, none of which has this name. */
export const HANDOVER_COMMAND = 'handover';

/** What `resize` asks a server: `resize BYTES` (Server.resizeCommand); no target verb has this name. */
export const RESIZE_COMMAND = /^resize (\d+)$/;

const ASK_TIMEOUT_MS = 30_000;
const MAX_LINE = 64 * 1024;

export function controlPath(id: number): string {
  return path.join(stateDir(), `ublkb${id}.sock`);
}

/** Listens for commands to the device's target; returns what closes it (and removes the socket). */
export async function serveControl(id: number, handle: (command: string) => Promise<ControlAnswer>): Promise<() => void> {
  const file = controlPath(id);
  // A socket left by a server that died is ours (the directory is): a new server takes its place.
  fs.rmSync(file, { force: true });
  const server = net.createServer((conn) => {
    let text = '';
    conn.setEncoding('utf8');
    conn.on('error', () => conn.destroy());
    conn.on('data', (chunk: string) => {
      text += chunk;
      if (text.length > MAX_LINE) return conn.destroy();
      const nl = text.indexOf('\n');
      if (nl < 0) return;
      let command: unknown;
      try {
        command = (JSON.parse(text.slice(0, nl)) as { command?: unknown }).command;
      } catch {
        command = undefined;
      }
      const reply: Promise<ControlAnswer> = typeof command === 'string' ? handle(command) : Promise.resolve({ ok: false, error: 'not a command' });
      void reply
        .catch((e: Error): ControlAnswer => ({ ok: false, error: e.message }))
        .then(({ after, ...r }) => {
          if (after) conn.once('close', after);
          conn.end(`${JSON.stringify(r)}\n`);
        });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(file, () => resolve());
  });
  fs.chmodSync(file, 0o600);
  server.unref();
  return () => {
    server.close();
    fs.rmSync(file, { force: true });
  };
}

/** Sends one command to device id's server and returns its reply; a server that is not there is one line. */
export function askServer(id: number, command: string): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const conn = net.connect(controlPath(id));
    let text = '';
    const timer = setTimeout(() => {
      conn.destroy();
      reject(new UserError(`device ${id}: its server did not answer within ${ASK_TIMEOUT_MS / 1000} s`, 'backend'));
    }, ASK_TIMEOUT_MS);
    conn.setEncoding('utf8');
    conn.on('connect', () => conn.write(`${JSON.stringify({ command })}\n`));
    conn.on('data', (chunk: string) => (text += chunk));
    conn.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const gone = e.code === 'ENOENT' || e.code === 'ECONNREFUSED';
      reject(new UserError(gone ? `device ${id} has no running server to ask` : `device ${id}: ${e.message}`, gone ? 'usage' : 'backend'));
    });
    conn.on('end', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(text) as ControlReply);
      } catch {
        reject(new UserError(`device ${id}: its server's reply is not JSON`, 'backend'));
      }
    });
  });
}
