// Stable paths: /dev/ublk-ts/NAME, a symbolic link to /dev/ublkbN, so that fstab and scripts name a device
// by its entry in the config file rather than by an id the kernel hands out. UBLK_TS_DEV_DIR overrides the
// folder (tests).
import fs from 'node:fs';
import path from 'node:path';
import { oneLine, UserError } from './errors.js';

export function linkDir(): string {
  return process.env.UBLK_TS_DEV_DIR ?? '/dev/ublk-ts';
}

export function linkPath(name: string): string {
  return path.join(linkDir(), name);
}

const blockDevice = (id: number) => `/dev/ublkb${id}`;

/** Where the link points now, if it is one. */
export function linkTarget(name: string): string | undefined {
  try {
    return fs.readlinkSync(linkPath(name));
  } catch {
    return undefined;
  }
}

/** Points NAME at the device, replacing in one step whatever link was there (a device that went away). */
export function makeLink(name: string, id: number): string {
  const link = linkPath(name);
  if (linkTarget(name) === blockDevice(id)) return link;
  try {
    fs.mkdirSync(linkDir(), { recursive: true });
    const tmp = `${link}.${process.pid}.tmp`;
    fs.rmSync(tmp, { force: true });
    fs.symlinkSync(blockDevice(id), tmp);
    fs.renameSync(tmp, link);
  } catch (e) {
    throw new UserError(`cannot link ${link} to ${blockDevice(id)}: ${oneLine(e)}`, 'other');
  }
  return link;
}

/** Removes NAME only while it still points at this device: by then it may name a newer one. */
export function removeLink(name: string, id: number): void {
  if (linkTarget(name) === blockDevice(id)) fs.rmSync(linkPath(name), { force: true });
}
