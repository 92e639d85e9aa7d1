// Errors a user sees: one line, saying what to do.
export class UserError extends Error {}

export interface KernelError extends Error {
  code: string;
  errno: number;
  command: string;
}

export function isKernelError(e: unknown): e is KernelError {
  return e instanceof Error && typeof (e as Partial<KernelError>).command === 'string';
}

export const NO_DRIVER =
  'ublk driver not available: /dev/ublk-control is missing (load it with `modprobe ublk_drv`; the kernel needs CONFIG_BLK_DEV_UBLK), or run inside the test VM: npm run vm -- ublk-ts <verb>';

/** Turns a missing control node into the one-line driver message; passes everything else through. */
export function explain(e: unknown): Error {
  if (isKernelError(e) && e.command === 'open /dev/ublk-control' && e.code === 'ENOENT') return new UserError(NO_DRIVER);
  return e instanceof Error ? e : new Error(String(e));
}
