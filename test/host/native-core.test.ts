// The native core's host unit tests (test/native/): the request engine and the nbd target in C++, on a fake
// kernel, built plain and under ASan/UBSan. This runs them and checks both builds passed every case.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const script = fileURLToPath(new URL('../native/run.sh', import.meta.url));

describe('native core', () => {
  it('passes every case, plain and under ASan/UBSan', () => {
    let out: string;
    try {
      out = execFileSync(script, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 170_000 });
    } catch (e) {
      const err = e as { stdout?: string; stderr?: string };
      throw new Error(`test/native/run.sh failed:\n${err.stdout ?? ''}\n${err.stderr ?? ''}`);
    }
    const totals = [...out.matchAll(/^native core: (\d+) passed, (\d+) failed$/gm)].map((m) => [Number(m[1]), Number(m[2])]);
    expect(totals).toHaveLength(2);
    for (const [passed, failed] of totals) {
      expect(failed).toBe(0);
      expect(passed).toBeGreaterThanOrEqual(70);
    }
  }, 180_000);
});
