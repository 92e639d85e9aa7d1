// Finds target folders at run time: adding a target is adding a folder under targets/.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { projectRoot } from './native.js';
import type { TargetSpec } from './target.js';
import { UserError } from './errors.js';

const dir = path.join(projectRoot, 'dist', 'targets');

export function targetNames(): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((n) => fs.existsSync(path.join(dir, n, 'index.js')))
    .sort();
}

export async function loadTarget(name: string): Promise<TargetSpec> {
  if (!targetNames().includes(name)) throw new UserError(`unknown target "${name}" (have: ${targetNames().join(', ')})`);
  const mod = (await import(pathToFileURL(path.join(dir, name, 'index.js')).href)) as { default: TargetSpec };
  return mod.default;
}

export async function loadAllTargets(): Promise<TargetSpec[]> {
  return Promise.all(targetNames().map(loadTarget));
}
