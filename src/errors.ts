// Errors a user sees: one line, saying what to do, with a kind that picks the exit status (README: Exit status).
import fs from 'node:fs';
import path from 'node:path';
import { projectRoot } from './native.js';

/** What went wrong, as scripts see it: the `code` of a `--json` error and, through EXIT_STATUS, the exit status. */
export type ErrorKind = 'usage' | 'not-found' | 'kernel' | 'backend' | 'busy' | 'other';

export const EXIT_STATUS: Readonly<Record<ErrorKind, number>> = { other: 1, usage: 2, 'not-found': 3, kernel: 4, backend: 5, busy: 6 };

const KINDS = Object.keys(EXIT_STATUS) as ErrorKind[];

export function isErrorKind(k: unknown): k is ErrorKind {
  return typeof k === 'string' && (KINDS as string[]).includes(k);
}

export class UserError extends Error {
  // By name, not by class: targets and the bundles each load their own copy of this module.
  override readonly name = 'UserError';
  constructor(
    message: string,
    readonly kind: ErrorKind = 'usage',
  ) {
    super(message);
  }
}

export interface KernelError extends Error {
  code: string;
  errno: number;
  command: string;
}

export function isKernelError(e: unknown): e is KernelError {
  return e instanceof Error && typeof (e as Partial<KernelError>).command === 'string';
}

/** The kind of any thrown value: the kernel's refusals and failed system calls are known. */
export function errorKind(e: unknown): ErrorKind {
  // A UserError says it; so does the addon's error for a target that failed to start (its backend).
  const k = e instanceof Error ? (e as { kind?: unknown }).kind : undefined;
  if (isErrorKind(k)) return k;
  if (e instanceof Error && e.name === 'UserError') return 'usage';
  if (isKernelError(e)) return 'kernel';
  // A system call on the backing store (open, stat, read) that nobody turned into a sentence.
  if (e instanceof Error && typeof (e as NodeJS.ErrnoException).syscall === 'string') return 'backend';
  return 'other';
}

/** The message on one line, whatever the thrower wrote. */
export function oneLine(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  return text.trim().replace(/\s*\n\s*/g, '; ') || 'failed';
}

// The VM harness ships with a clone, not with an installed package: suggest it only where it exists, and
// say where to run it from when npm would not find the project from here.
function vmHint(): string {
  if (!fs.existsSync(path.join(projectRoot, 'scripts', 'vm-run'))) return '';
  let inside = false;
  try {
    const rel = path.relative(projectRoot, process.cwd());
    inside = !rel.startsWith('..') && !path.isAbsolute(rel);
  } catch {
    // The working directory is gone: say where to go.
  }
  return `, or run inside the test VM: ${inside ? '' : `cd ${projectRoot} && `}npm run vm -- ublk-ts <verb>`;
}

export const NO_DRIVER = `ublk driver not available: /dev/ublk-control is missing (load it with \`modprobe ublk_drv\`; the kernel needs CONFIG_BLK_DEV_UBLK)${vmHint()}`;

/** Turns a missing control node into the one-line driver message; passes everything else through. */
export function explain(e: unknown): Error {
  if (isKernelError(e) && e.command === 'open /dev/ublk-control' && e.code === 'ENOENT') return new UserError(NO_DRIVER, 'kernel');
  return e instanceof Error ? e : new Error(String(e));
}
