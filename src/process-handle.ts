// A process proven to be ours (a device's server or supervisor), held by a pidfd from the proof to the
// last signal: a pid read from a record may belong to another process by the time it is signalled, a
// pidfd never does.
import fs from 'node:fs';
import os from 'node:os';
import { addon } from './native.js';

export class ProcessHandle {
  private constructor(
    readonly pid: number,
    private readonly fd: number,
  ) {}

  /**
   * A handle on pid if `proof` holds for it. The pidfd is taken first and checked again after the proof:
   * a process that is still alive then is the one /proc/pid showed to the proof.
   */
  static prove(pid: number, proof: (pid: number) => boolean): ProcessHandle | undefined {
    let fd: number;
    try {
      fd = addon.pidfdOpen(pid);
    } catch {
      return undefined; // no such process
    }
    if (!proof(pid) || addon.pidfdExited(fd)) {
      fs.closeSync(fd);
      return undefined;
    }
    return new ProcessHandle(pid, fd);
  }

  exited(): boolean {
    return addon.pidfdExited(this.fd);
  }

  /** Signals the process, unless it has ended (then nothing is signalled, whoever has its pid now). */
  signal(sig: NodeJS.Signals): void {
    try {
      addon.pidfdSignal(this.fd, os.constants.signals[sig]);
    } catch {
      // ESRCH: it ended
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
