// The CLI on this host: parsing, help, and the one-line refusal where the kernel has no ublk driver.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseSize } from '../../src/size.js';

const cli = (...args: string[]) => spawnSync(process.execPath, ['dist/ublk-ts.mjs', ...args], { encoding: 'utf8' });
const hasDriver = fs.existsSync('/dev/ublk-control');

describe('sizes', () => {
  it('parses units', () => {
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('64M')).toBe(64 << 20);
    expect(parseSize('2g')).toBe(2 ** 31);
    expect(parseSize('1GiB')).toBe(2 ** 30);
  });
  it('refuses nonsense with one line', () => {
    expect(() => parseSize('ten gigs')).toThrow(/--size "ten gigs" is not a size/);
  });
});

describe('cli', () => {
  it('has help for each verb', () => {
    for (const verb of ['features', 'list', 'add', 'del']) {
      const out = execFileSync(process.execPath, ['dist/ublk-ts.mjs', verb, '--help'], { encoding: 'utf8' });
      expect(out).toContain(`ublk-ts ${verb}`);
    }
  });
  it('lists the targets found in targets/', () => {
    const out = execFileSync(process.execPath, ['dist/ublk-ts.mjs', 'add', '--help'], { encoding: 'utf8' });
    // yargs wraps help at 80 columns, inside a word where the list of targets is long.
    expect(out.replace(/\s*\n\s*/g, '')).toMatch(/choices: .*"file".*"mirror".*"null".*"stripe"/);
  });
  it('rejects an unknown data mode before touching the kernel', () => {
    const r = cli('add', '--target', 'null', '--data-mode', 'telepathy');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--data-mode must be one of: auto, .*copy \(not "telepathy"\)/);
  });
  it('del needs -n or --all', () => {
    const r = cli('del');
    expect(r.status).toBe(2);
    expect(r.stderr.trim()).toMatch(/^ublk-ts: del needs -n N .* or --all$/);
  });
  it.runIf(!hasDriver)('says in one line that the driver is missing (exit 4, code kernel)', () => {
    for (const verb of [['features'], ['list'], ['add', '--target', 'null'], ['del', '--all'], ['del', '-n', '3']]) {
      const r = cli(...verb);
      expect(r.status).toBe(4);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/ublk_drv.*CONFIG_BLK_DEV_UBLK.*npm run vm -- ublk-ts/);
      const j = cli(...verb, '--json');
      expect(j.status).toBe(4);
      expect(JSON.parse(j.stderr)).toEqual({ error: expect.stringMatching(/ublk driver not available/), code: 'kernel' });
    }
  });
  it.runIf(!hasDriver)('checks the target before the driver, and a refused add leaves no file behind', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-cli-'));
    try {
      const img = path.join(dir, 'disk.img');
      expect(cli('add', '--target', 'file').stderr).toMatch(/--file/);
      const r = cli('add', '--target', 'file', '--file', img, '--size', '1M');
      expect(r.status).toBe(4);
      expect(fs.existsSync(img)).toBe(false);
      fs.writeFileSync(img, Buffer.alloc(4096));
      expect(cli('add', '--target', 'file', '--file', img, '--size', '1M').status).toBe(4);
      expect(fs.statSync(img).size).toBe(4096);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
