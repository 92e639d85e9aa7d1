// nbd: a ublk device in front of an NBD server (nbdkit and its plugins, qemu-nbd, nbd-server). The native
// side connects and negotiates when the device starts; its status gives the export's size, flags and block
// sizes, which become the device's parameters here (afterStart).
import type { TargetSpec } from '../../src/target.js';
import type { Params } from '../../src/native.js';
import { UserError } from '../../src/errors.js';

const SEND_MODES = ['auto', 'fixed', 'zc', 'copy'] as const;
type SendMode = (typeof SEND_MODES)[number];

// Transmission flags (NBD protocol, doc/proto.md).
const NBD_FLAG_READ_ONLY = 1 << 1;
const NBD_FLAG_SEND_FLUSH = 1 << 2;
const NBD_FLAG_SEND_FUA = 1 << 3;
const NBD_FLAG_ROTATIONAL = 1 << 4;
const NBD_FLAG_SEND_TRIM = 1 << 5;
const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;

const UBLK_ATTR_READ_ONLY = 1 << 0;
const UBLK_ATTR_ROTATIONAL = 1 << 1;
const UBLK_ATTR_VOLATILE_CACHE = 1 << 2;
const UBLK_ATTR_FUA = 1 << 3;

// The largest request the device is created with (MAX_IO_BYTES of src/server.ts; not imported, so that
// loading the target does not load the server).
const MAX_IO_BYTES = 1 << 20;
// One TRIM or WRITE_ZEROES: the protocol's length is 32 bits; 1 GiB keeps every request aligned.
const MAX_ZEROES_SECTORS = (1 << 30) / 512;
// sun_path holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH = 107;
// The protocol's limit on strings.
const MAX_EXPORT_NAME = 4096;

/** A number the native status must carry. */
function field(status: Record<string, unknown>, key: string): number {
  const v = status[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`nbd: the native status has no ${key} (${JSON.stringify(status)})`);
  return v;
}

/** The device's geometry from what the server said in the handshake. */
export function shapeFromStatus(status: Record<string, unknown>): { size: number; params: Omit<Params, 'devSectors' | 'maxSectors'> } {
  const flags = field(status, 'flags');
  const minBlock = field(status, 'minBlock');
  const prefBlock = field(status, 'prefBlock');
  const maxPayload = field(status, 'maxPayload');
  const endpoint = String(status.endpoint ?? 'the server');
  if (maxPayload < MAX_IO_BYTES)
    throw new UserError(`${endpoint} takes at most ${maxPayload} bytes per request; ublk-ts sends up to ${MAX_IO_BYTES}`, 'backend');
  // A ublk logical block is 512 to 4096 bytes (the native side refused larger minimums).
  const lbs = Math.max(512, minBlock);
  const pbs = Math.min(4096, Math.max(lbs, prefBlock));
  const size = field(status, 'size') - (field(status, 'size') % lbs);
  if (size <= 0) throw new UserError(`${endpoint}: the export is smaller than one ${lbs}-byte block`, 'backend');
  const readOnly = (flags & NBD_FLAG_READ_ONLY) !== 0;
  const trim = !readOnly && (flags & NBD_FLAG_SEND_TRIM) !== 0;
  const zeroes = !readOnly && (flags & NBD_FLAG_SEND_WRITE_ZEROES) !== 0;
  return {
    size,
    params: {
      attrs:
        (readOnly ? UBLK_ATTR_READ_ONLY : 0) |
        (flags & NBD_FLAG_ROTATIONAL ? UBLK_ATTR_ROTATIONAL : 0) |
        // The server caches writes when it takes FLUSH: declare the cache so FLUSH and FUA reach it.
        (flags & NBD_FLAG_SEND_FLUSH ? UBLK_ATTR_VOLATILE_CACHE : 0) |
        (flags & NBD_FLAG_SEND_FUA ? UBLK_ATTR_FUA : 0),
      logicalBsShift: Math.log2(lbs),
      physicalBsShift: Math.log2(pbs),
      ioMinShift: Math.log2(lbs),
      ...(trim || zeroes
        ? { discard: { granularity: pbs, maxDiscardSectors: trim ? MAX_ZEROES_SECTORS : 0, maxWriteZeroesSectors: zeroes ? MAX_ZEROES_SECTORS : 0 } }
        : {}),
    },
  };
}

const spec: TargetSpec = {
  name: 'nbd',
  describe: 'an NBD server (nbdkit, qemu-nbd, nbd-server) over TCP or a unix socket',
  movesData: true,
  // One connection unless --queues asks for more: most servers (qemu-nbd by default, nbd-server) do not
  // set NBD_FLAG_CAN_MULTI_CONN, and a default that only nbdkit could take would fail for them.
  defaultQueues: 1,
  options: {
    host: { type: 'string', describe: 'NBD server host name or address' },
    port: { type: 'number', default: 10809, range: [1, 65535], describe: 'NBD server TCP port' },
    socket: { type: 'string', describe: 'NBD server unix socket (instead of --host)' },
    export: { type: 'string', default: '', describe: 'export name (default: the server\'s default export)' },
    timeout: { type: 'number', default: 30, range: [1, 3600], describe: 'seconds: the handshake, and how long a request may wait before it fails with EIO' },
    reconnect: { type: 'number', default: 0, range: [0, 1000], describe: 'after a lost connection, reconnect up to N times with backoff and resend' },
    send: { type: 'string', choices: [...SEND_MODES], default: 'auto', describe: 'how write payloads go out: fixed (send from the lease), zc (SEND_ZC), copy' },
  },
  async open(opts) {
    const host = opts.host;
    const socket = opts.socket;
    if ((host === undefined) === (socket === undefined)) throw new UserError('the nbd target needs --host HOST or --socket PATH (one of them)');
    if (host !== undefined && (typeof host !== 'string' || host === '')) throw new UserError('--host needs a host name or address');
    if (socket !== undefined && (typeof socket !== 'string' || socket === '' || Buffer.byteLength(socket) > MAX_SOCKET_PATH))
      throw new UserError(`--socket needs a path of 1 to ${MAX_SOCKET_PATH} bytes`);
    // Whole numbers in their ranges, defaults filled in (src/option-schema.ts).
    const port = Number(opts.port);
    const timeout = Number(opts.timeout);
    const reconnect = Number(opts.reconnect);
    const exportName = String(opts.export ?? '');
    if (Buffer.byteLength(exportName) > MAX_EXPORT_NAME) throw new UserError(`--export must be at most ${MAX_EXPORT_NAME} bytes`);
    const send = (opts.send ?? 'auto') as SendMode;
    if (!SEND_MODES.includes(send)) throw new UserError(`--send must be one of ${SEND_MODES.join(', ')}, not ${String(send)}`);
    const endpoint = socket !== undefined ? `unix:${socket}` : `${host}:${port}`;
    return {
      // Known once the native side has negotiated: see afterStart.
      size: 0,
      // The native init connects and adds its sockets as files 1..n.
      fds: [],
      options: {
        ...(socket !== undefined ? { socket } : { host: String(host), port }),
        export: exportName,
        timeout,
        reconnect,
        send,
      },
      // --send copy (and auto, which falls back to it where neither fixed nor zero-copy sends exist)
      // serves writes through a per-request copy while reads stay on the lease.
      userCopy: send === 'copy' || send === 'auto',
      params: {},
      info: { endpoint, export: exportName, timeout, reconnect },
      afterStart: shapeFromStatus,
      // NBD cannot tell a client its export grew: a server restarted with a larger one is taken at the
      // reconnect (connection.cc), and the status then shows its size.
      resize(to, status) {
        const has = field(status, 'size');
        if (has < to)
          throw new UserError(`${endpoint}: the export has ${has} bytes, less than --size ${to}: grow it first (a server restarted with a larger export is taken when the device reconnects: --reconnect)`, 'backend');
        return undefined;
      },
      close() {},
    };
  },
};
export default spec;
