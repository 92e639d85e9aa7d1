// Usage mistakes, on any host (no ublk needed: arguments are checked before the driver is asked). Each one
// is a single line on stderr that names the option, exits with the usage status (README: Exit status), and
// with --json is that same line as {"error", "code"} JSON.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const CLI = path.resolve('dist/ublk-ts.mjs');
const USAGE = 2;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-usage-'));
// Never created: every mistake below is refused before a target would make it.
const img = path.join(dir, 'disk.img');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LANG: 'C' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

// [what the user typed, what the one line must name]
const mistakes: [string[], string][] = [
  [[], 'command'],
  [['frobnicate'], 'frobnicate'],
  [['--bogus'], '--bogus'],
  [['features', '--bogus'], '--bogus'],
  [['list', 'extra'], 'extra'],
  [['add'], '--target'],
  [['add', '--target'], '--target'],
  [['add', '--target', 'bogus'], '--target'],
  [['add', '--target', 'file'], '--file'],
  [['add', '--target', 'file', '--file', img, '--logical-block-size', '1000'], '--logical-block-size'],
  [['add', '--target', 'file', '--file', img, '--size', '1000', '--logical-block-size', '4096'], '--size'],
  [['add', '--target', 'file', '--file', img, '--read-only', '--size', '1G'], '--size'],
  [['add', '--target', 'null', '--size', '10X'], '--size'],
  [['add', '--target', 'null', '--size', '0'], '--size'],
  [['add', '--target', 'null', '--data-mode', 'telepathy'], '--data-mode'],
  [['add', '--target', 'null', '--queues', '0'], '--queues'],
  [['add', '--target', 'null', '--queues', 'abc'], '--queues'],
  [['add', '--target', 'null', '-q'], '-q'],
  [['add', '--target', 'null', '--depth', '5000'], '--depth'],
  [['add', '--target', 'null', '-n', '-1'], '-n'],
  [['add', '--target', 'null', '--file', img], '--file'],
  [['add', '--target', 'null', '--bogus-opt', '3'], '--bogus-opt'],
  [['del'], '-n'],
  [['del', '-n', '1', '--all'], '--all'],
  [['del', '-n', 'abc'], '-n'],
  [['features', '-n', 'abc'], '-n'],
  [['features', '-n'], '-n'],
  [['resize', '--size', '1G'], '--number'],
  [['resize', '-n', '0'], '--size'],
  [['resize', '-n', '0', '--size', '12Q'], '--size'],
  [['resize', '-n', 'x', '--size', '1G'], '-n'],
  [['resize', '-n', '0', '--size'], '--size'],
  [['del', '-n'], '-n'],
];

afterAll(() => {
  expect(fs.readdirSync(dir)).toEqual([]);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe.concurrent('usage mistakes: one line naming the option, exit status 2, JSON with --json', () => {
  it('has at least 15 of them', () => expect(mistakes.length).toBeGreaterThanOrEqual(15));
  for (const [args, option] of mistakes) {
    it(`ublk-ts ${args.join(' ').replace(dir, '$DIR')}`, async () => {
      const [text, json] = await Promise.all([run(args), run([...args, '--json'])]);
      expect(text.stdout).toBe('');
      expect(text.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(text.stderr).toContain(option);
      expect(text.status).toBe(USAGE);

      expect(json.stdout).toBe('');
      expect(json.stderr.trimEnd().split('\n')).toHaveLength(1);
      const err = JSON.parse(json.stderr) as { error: unknown; code: unknown };
      expect(err).toEqual({ error: expect.stringContaining(option), code: 'usage' });
      expect(json.status).toBe(USAGE);
    });
  }
});
