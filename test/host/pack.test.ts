// The package as published: `npm pack` holds what an install needs and nothing else, and the tarball installs
// globally on this machine, building the addon from source, into a `ublk-ts` that runs.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-pack-'));
const prefix = path.join(tmp, 'prefix');
const env: NodeJS.ProcessEnv = { ...process.env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' };
// Like the project's .npmrc (which a global install does not read): build against the local Node headers
// where they are installed, rather than downloading them.
const nodedir = path.dirname(path.dirname(process.execPath));
if (!env.npm_config_nodedir && fs.existsSync(path.join(nodedir, 'include', 'node', 'node.h'))) env.npm_config_nodedir = nodedir;

let tarball = '';
let files: string[] = [];

beforeAll(() => {
  // --ignore-scripts: dist/ is already built (npm test runs `prepare` first), and rebuilding it here would race
  // the other host tests, which run it. The tarball goes to a temporary folder, so the tree stays clean.
  const out = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp], { encoding: 'utf8', env });
  const [info] = JSON.parse(out) as { filename: string; files: { path: string }[] }[];
  tarball = path.join(tmp, info.filename);
  files = info.files.map((f) => f.path);
}, 120_000);

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('npm pack', () => {
  it('holds no tests, no build leftovers and no development scripts', () => {
    const stray = files.filter(
      (f) =>
        /(^|\/)tests?\//.test(f) ||
        /\.test\.[cm]?[jt]s$/.test(f) ||
        /^(build|node_modules|results|\.ci)\//.test(f) ||
        (f.startsWith('scripts/') && f !== 'scripts/check-deps.sh') ||
        /\.(o|node|log|tgz|img)$/.test(f),
    );
    expect(stray).toEqual([]);
  });

  it('holds what the install and the command need', () => {
    for (const f of ['package.json', 'README.md', 'binding.gyp', 'scripts/check-deps.sh', 'dist/ublk-ts.mjs', 'dist/ublk-ts-daemon.mjs'])
      expect(files).toContain(f);
    for (const t of ['file', 'null']) {
      expect(files).toContain(`dist/targets/${t}/index.js`);
      expect(files).toContain(`targets/${t}/${t}.cc`);
    }
    expect(files.filter((f) => /^native\/.*\.cc$/.test(f)).length).toBeGreaterThan(0);
  });

  it('installs with npm install -g, building the addon, into a ublk-ts that runs', () => {
    execFileSync('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', tarball], { cwd: tmp, env, stdio: 'pipe', timeout: 540_000 });
    const pkg = path.join(prefix, 'lib', 'node_modules', 'ublk-ts');
    expect(fs.existsSync(path.join(pkg, 'build', 'Release', 'ublk_ts.node'))).toBe(true);

    const bin = path.join(prefix, 'bin', 'ublk-ts');
    const help = spawnSync(bin, ['--help'], { encoding: 'utf8' });
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/ublk-ts features/);
    const add = spawnSync(bin, ['add', '--help'], { encoding: 'utf8' });
    // yargs wraps the list of choices at 80 columns, even inside a word: read it without the breaks.
    expect(add.stdout.replace(/\s+/g, '')).toMatch(/choices:.*"file".*"null"/);

    // Loads the addon built above; without a driver it says so, and does not offer a VM the package lacks.
    const f = spawnSync(bin, ['features', '--json'], { encoding: 'utf8' });
    if (fs.existsSync('/dev/ublk-control')) expect(f.status).toBe(0);
    else {
      expect(f.status).toBe(4);
      expect(JSON.parse(f.stderr)).toEqual({ error: expect.stringMatching(/^ublk driver not available/), code: 'kernel' });
      expect(f.stderr).not.toMatch(/npm run vm/);
    }
  }, 600_000);
});
