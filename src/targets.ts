// Finds target folders at run time: adding a target is adding a folder under targets/.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { projectRoot } from './native.js';
import type { TargetSpec } from './target.js';
import { oneLine, UserError } from './errors.js';
import { defineTarget, type TypeScriptTarget } from './api.js';

const dir = path.join(projectRoot, 'dist', 'targets');

export function targetNames(): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((n) => fs.existsSync(path.join(dir, n, 'index.js')))
    .sort();
}

/** A target given by path (a module of the user's own) rather than by folder name. */
export function isTargetPath(name: string): boolean {
  return name.includes('/') || /\.[cm]?js$/.test(name);
}

/** A folder's or a module's default export: a native target's spec, or a target written in TypeScript. */
function asSpec(x: TargetSpec | TypeScriptTarget): TargetSpec {
  return 'movesData' in x ? x : defineTarget(x);
}

const OTHERS_WRITE = 0o022;
const STICKY = 0o1000;

/**
 * A module given by path runs with the rights of whoever runs ublk-ts (root, as a rule), so it must be as
 * much ours as the state directory is: the file, and every folder above it, owned by root or the caller
 * and writable by no one else; a folder whose sticky bit keeps others from replacing what is not theirs
 * (/tmp) may be writable by others. Symlinks are followed first: what is checked is what is imported.
 */
function untrustedModule(file: string): string | undefined {
  const uid = process.geteuid?.() ?? 0;
  const real = fs.realpathSync(file);
  for (let p = real; ; p = path.dirname(p)) {
    const st = fs.statSync(p);
    if (st.uid !== 0 && st.uid !== uid) return `${p} belongs to uid ${st.uid}, not root${uid === 0 ? '' : ` or ${uid}`}`;
    if (st.mode & OTHERS_WRITE && !(p !== real && st.mode & STICKY)) return `${p} is writable by others (mode ${(st.mode & 0o7777).toString(8)})`;
    if (p === path.dirname(p)) return undefined;
  }
}

export async function loadTarget(name: string): Promise<TargetSpec> {
  let file: string;
  if (isTargetPath(name)) {
    file = path.resolve(name);
    if (!fs.existsSync(file)) throw new UserError(`--target ${name}: no such file`, 'not-found');
    const why = untrustedModule(file);
    if (why) throw new UserError(`--target ${name}: refusing to load it: ${why}`);
  } else {
    if (!targetNames().includes(name)) throw new UserError(`unknown target "${name}" (have: ${targetNames().join(', ')})`);
    file = path.join(dir, name, 'index.js');
  }
  let mod: { default?: TargetSpec | TypeScriptTarget };
  try {
    mod = (await import(pathToFileURL(file).href)) as typeof mod;
  } catch (e) {
    // A user's file that is not a module (a disk image, a directory, a syntax error) is a mistake in --target.
    if (!isTargetPath(name)) throw e;
    throw new UserError(`--target ${name}: cannot load it as a JavaScript module (${oneLine(e)})`);
  }
  if (!mod.default || typeof mod.default.open !== 'function')
    throw new UserError(`--target ${name}: its default export is not a target (an object with name and open())`);
  return asSpec(mod.default);
}

export async function loadAllTargets(): Promise<TargetSpec[]> {
  return Promise.all(targetNames().map(loadTarget));
}
