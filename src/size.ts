// Human sizes: 4096, 4k, 512M, 1G, 2T (powers of 1024).
import type { Options } from 'yargs';
import { UserError } from './errors.js';

/** The --size option: targets that have a size share its meaning. */
export const sizeOption: Options = {
  type: 'string',
  describe: 'device size, e.g. 10G (file: create or grow the file to it; null: default 250G)',
};

const UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

export function parseSize(text: string): number {
  const m = /^(\d+)([kmgt]?)(i?b)?$/i.exec(text.trim());
  // Every caller parses --size: the message names it.
  if (!m) throw new UserError(`--size "${text}" is not a size (use e.g. 4096, 64M, 10G)`);
  const n = Number(m[1]) * UNITS[m[2].toLowerCase()];
  if (!Number.isSafeInteger(n)) throw new UserError(`--size "${text}" is too large (at most 8191T)`);
  return n;
}

export function formatSize(bytes: number): string {
  for (const [u, f] of [['T', 2 ** 40], ['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const)
    if (bytes >= f && bytes % f === 0) return `${bytes / f}${u}`;
  return `${bytes}B`;
}
