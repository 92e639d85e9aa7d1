// `resize -n N --size S`, checked here and carried out by the device's server (Server.resizeCommand): the
// backend is made to hold S first (a file grows, never shrinks; an NBD export must have grown), then the
// kernel is told (UPDATE_SIZE), and the record keeps the new size so that `recover` serves the same device.
import fs from 'node:fs';
import { addon } from './native.js';
import { explain, UserError } from './errors.js';
import { getFeatures } from './features.js';
import { formatSize } from './size.js';
import { askServer } from './control.js';
import { readRecord, servesDevice } from './state.js';

export interface Resized {
  id: number;
  blockDevice: string;
  from: number;
  to: number;
}

const SHOWN_MS = 5000;

/**
 * Shrinking is refused without `force`, mounted or not: what is stored past the new end is cut off, and
 * a filesystem on the device breaks unless it was shrunk first.
 */
export async function resizeDevice(id: number, size: number, force: boolean): Promise<Resized> {
  const rec = readRecord(id);
  if (!rec || !servesDevice(rec.pid, id))
    throw new UserError(`-n ${id}: no ublk-ts device with a running server (\`ublk-ts list\` shows them; \`ublk-ts recover -n ${id}\` first if its server died)`, 'not-found');
  if ((await getFeatures() & addon.abi.flags.UPDATE_SIZE) === 0n) throw new UserError('this kernel has no UPDATE_SIZE: a device cannot change size', 'kernel');
  const lbs = Number(rec.info.logicalBlockSize ?? 512);
  if (size <= 0 || size % lbs !== 0) throw new UserError(`--size must be a positive multiple of the logical block size (${lbs}), not ${size}`);
  let from: number;
  try {
    from = (await addon.getParams(id)).devSectors * 512;
  } catch (e) {
    throw explain(e);
  }
  if (size < from && !force)
    throw new UserError(`--size ${formatSize(size)} is below the device's ${formatSize(from)}: what is stored past it would be lost (shrink the filesystem first, then add --force)`);
  const reply = await askServer(id, `resize ${size}`);
  if (!reply.ok) throw new UserError(reply.error ?? 'the server did not resize the device', 'backend');
  await shown(id, size / 512);
  return { id, blockDevice: rec.blockDevice, from, to: size };
}

/** The block layer shows the new capacity (what lsblk and resize2fs read) before `resize` returns. */
async function shown(id: number, sectors: number): Promise<void> {
  const file = `/sys/block/ublkb${id}/size`;
  for (const end = Date.now() + SHOWN_MS; Date.now() < end; await new Promise((r) => setTimeout(r, 10)))
    if (Number(fs.readFileSync(file, 'utf8')) === sectors) return;
  throw new Error(`${file} does not show ${sectors} sectors within ${SHOWN_MS / 1000} s`);
}
