// Feature flags by name, and which data mode a kernel allows.
import { addon, type DataMode } from './native.js';
import fs from 'node:fs';
import { explain, NO_DRIVER, UserError } from './errors.js';

export function flagNames(flags: bigint): string[] {
  return Object.entries(addon.abi.flags)
    .filter(([, bit]) => (flags & bit) !== 0n)
    .map(([name]) => name);
}

/** The flags ADD_DEV must request (and get back) for each data mode. */
export function modeFlags(mode: DataMode): bigint {
  const F = addon.abi.flags;
  switch (mode) {
    case 'auto-lease':
      // SUPPORT_ZERO_COPY too: a request the driver could not lease is leased by hand (fallback).
      return F.AUTO_BUF_REG | F.SUPPORT_ZERO_COPY;
    case 'lease':
      return F.SUPPORT_ZERO_COPY;
    case 'user-copy':
      return F.USER_COPY;
    case 'copy':
      return 0n;
  }
}

/**
 * What every device asks for beside its data mode, where the kernel has it: UPDATE_SIZE (`resize`), and
 * NO_AUTO_PART_SCAN unless a partition scan is wanted, so that a disk image's own partition table is not
 * probed when the device starts.
 */
export function deviceFlags(partScan: boolean, features: bigint): bigint {
  const F = addon.abi.flags;
  return (features & F.UPDATE_SIZE) | (partScan ? 0n : features & F.NO_AUTO_PART_SCAN);
}

export const DATA_MODES: readonly DataMode[] = ['auto-lease', 'lease', 'user-copy', 'copy'];

export function allowedModes(features: bigint): DataMode[] {
  return DATA_MODES.filter((m) => (features & modeFlags(m)) === modeFlags(m));
}

/**
 * Picks the data mode: the forced one if the kernel has it, else the best the kernel has. A target that
 * moves no data prefers the mode in which the kernel does nothing per request.
 */
export function chooseMode(requested: DataMode | 'auto', features: bigint, movesData = true): DataMode {
  const allowed = allowedModes(features);
  if (requested !== 'auto') {
    if (!allowed.includes(requested))
      throw new UserError(`--data-mode ${requested} is not supported by this kernel (it allows: ${allowed.join(', ')})`, 'kernel');
    return requested;
  }
  if (!movesData && allowed.includes('user-copy')) return 'user-copy';
  return allowed[0] ?? 'copy';
}

const CONTROL = '/dev/ublk-control';

/**
 * Fails in one line when the kernel has no ublk driver, or when this user may not use it (said first, not
 * after tripping over the state directory or a record it may not read), without loading the addon.
 */
export function requireDriver(verb = 'ublk-ts'): void {
  if (!fs.existsSync(CONTROL)) throw new UserError(NO_DRIVER, 'kernel');
  requireAccess(verb);
}

/** Where the driver is there: whether this user may use it. */
export function requireAccess(verb: string): void {
  if (!fs.existsSync(CONTROL)) return;
  try {
    fs.accessSync(CONTROL, fs.constants.R_OK | fs.constants.W_OK);
  } catch (e) {
    throw new UserError(`${verb} needs root: permission denied on ${CONTROL} (${(e as NodeJS.ErrnoException).code ?? 'EACCES'})`, 'kernel');
  }
}

export async function getFeatures(): Promise<bigint> {
  try {
    return await addon.getFeatures();
  } catch (e) {
    throw explain(e);
  }
}
