// The shipped systemd unit: `systemd-analyze verify` finds nothing to say about it (scripts/setup.sh installs
// systemd-analyze; without it this test fails rather than skips), and it runs up --all at boot, after the
// local filesystems, and down --all at shutdown.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';

const UNIT = 'systemd/ublk-ts.service';

/** The unit's settings as key → values, section by section. */
function parseUnit(text: string): Record<string, Record<string, string[]>> {
  const out: Record<string, Record<string, string[]>> = {};
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) {
      section = s[1];
      out[section] = {};
      continue;
    }
    const eq = line.indexOf('=');
    const key = line.slice(0, eq);
    (out[section][key] ??= []).push(line.slice(eq + 1));
  }
  return out;
}

describe('systemd unit', () => {
  it('passes systemd-analyze verify without a word', () => {
    const r = spawnSync('systemd-analyze', ['verify', UNIT], { encoding: 'utf8' });
    if (r.error) throw new Error(`systemd-analyze cannot run (${r.error.message}): scripts/setup.sh installs it (package systemd)`);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('runs up --all after the local filesystems, down --all at shutdown, and leaves good devices up when one fails', () => {
    const u = parseUnit(fs.readFileSync(UNIT, 'utf8'));
    expect(u.Service.Type).toEqual(['oneshot']);
    expect(u.Service.RemainAfterExit).toEqual(['yes']);
    expect(u.Service.ExecStart).toEqual(['/usr/local/bin/ublk-ts up --all']);
    expect(u.Service.ExecStop).toEqual(['/usr/local/bin/ublk-ts down --all']);
    expect(u.Service.KillMode).toEqual(['process']);
    expect(u.Unit.After.join(' ').split(/\s+/)).toContain('local-fs.target');
    expect(u.Unit.Before.join(' ').split(/\s+/)).toContain('remote-fs-pre.target');
    expect(u.Unit.ConditionPathExists).toEqual(['/etc/ublk-ts/devices.json']);
    expect(u.Install.WantedBy).toEqual(['multi-user.target']);
  });
});
