// The version of the code installed: package.json's version and a digest of the built server (the native
// addon and the JavaScript a server runs), so that two builds of the same version still differ. A server
// stores it in its record when it starts (`list` shows it); `upgrade` compares it with what is installed.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { projectRoot } from './native.js';

let cached: string | undefined;

/** Every file a server's behaviour comes from, sorted: the addon, the bundles, the compiled modules. */
function builtFiles(): string[] {
  const out = [path.join(projectRoot, 'build', 'Release', 'ublk_ts.node')];
  const walk = (dir: string) => {
    let names: string[];
    try {
      names = fs.readdirSync(dir).sort();
    } catch {
      return; // not built (a checkout run from src/): the addon alone tells builds apart
    }
    for (const n of names) {
      const p = path.join(dir, n);
      if (fs.statSync(p).isDirectory()) walk(p);
      else if (/\.m?js$/.test(n)) out.push(p);
    }
  };
  walk(path.join(projectRoot, 'dist'));
  return out;
}

/** `0.1.0+1a2b3c4d5e`: the package version, then the first hex digits of the build's digest. */
export function codeVersion(): string {
  if (cached !== undefined) return cached;
  const pkg = JSON.parse(fs.readFileSync(path.join(projectRoot, 'package.json'), 'utf8')) as { version: string };
  const h = crypto.createHash('sha256');
  for (const f of builtFiles()) {
    h.update(path.relative(projectRoot, f));
    try {
      h.update(fs.readFileSync(f));
    } catch {
      h.update('missing');
    }
  }
  cached = `${pkg.version}+${h.digest('hex').slice(0, 10)}`;
  return cached;
}
