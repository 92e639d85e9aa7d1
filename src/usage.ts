// Command-line mistakes, each said in one line that names the option and what it allows: yargs' own
// messages restated, number checks, and a dry run of the target's validation, all before the kernel is asked
// anything (so a host without ublk still says what is wrong with the arguments).
import fs from 'node:fs';
import type { Options } from 'yargs';
import { errorKind, oneLine, UserError } from './errors.js';
import type { TargetSpec } from './target.js';
import { wholeIn } from './option-schema.js';
import { waitingBeneath } from './device-uses.js';

/** What a message about a mistake can refer to. */
export interface UsageContext {
  argv: readonly string[];
  commands: readonly string[];
  /** The verb given, when it is one of `commands`. */
  command?: string;
  /** The options the verb takes, global ones included. */
  options: Record<string, Options>;
  /** add: the target chosen, its own options, and those only other targets take (name → those targets). */
  target?: string;
  targetOwn?: readonly string[];
  foreign?: ReadonlyMap<string, readonly string[]>;
}

/** The verb: the first word that is not an option (no global option takes a value). */
export function verbOf(argv: readonly string[]): string | undefined {
  return argv.find((t) => !t.startsWith('-'));
}

export const flag = (name: string): string => (name.length === 1 ? `-${name}` : `--${name}`);

function aliases(o: Options | undefined): string[] {
  const a = o?.alias;
  return a === undefined ? [] : typeof a === 'string' ? [a] : [...a];
}

/** How an option shows in a list: `-n/--number`. */
function shown(name: string, o: Options | undefined): string {
  return [...aliases(o).filter((a) => a.length === 1), name].map(flag).join('/');
}

function tokenNames(tok: string, name: string): boolean {
  if (name.length === 1) return tok === `-${name}` || (/^-[A-Za-z]/.test(tok) && tok.startsWith(`-${name}`));
  return tok === `--${name}` || tok.startsWith(`--${name}=`) || tok === `--no-${name}`;
}

/** The option as the user typed it (`-n` or `--number`), else its long form. */
function asTyped(ctx: UsageContext, name: string): string {
  const names = [name, ...aliases(ctx.options[name])];
  for (const tok of ctx.argv) for (const n of names) if (tokenNames(tok, n)) return tok.startsWith('--') ? flag(n) : `-${n}`;
  return flag(name);
}

/** The text last given to an option (`--queues abc`, `--queues=abc`, `-q4`): yargs keeps only the parsed number. */
export function rawValue(argv: readonly string[], names: readonly string[]): string | undefined {
  let value: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i];
    if (tok === '--') break;
    for (const n of names) {
      const f = flag(n);
      if (tok === f) value = argv[i + 1];
      else if (n.length > 1 && tok.startsWith(`${f}=`)) value = tok.slice(f.length + 1);
      else if (n.length === 1 && tok.startsWith(f) && tok.length > 2) value = tok.slice(2).replace(/^=/, '');
    }
  }
  return value;
}

/** Whether the user asked for JSON (the last of --json, --json=BOOL, --no-json wins), known even when parsing fails. */
export function wantsJson(argv: readonly string[]): boolean {
  let json = false;
  for (const tok of argv) {
    if (tok === '--') break;
    if (tok === '--json' || tok === '--json=true') json = true;
    else if (tok === '--no-json' || tok === '--json=false') json = false;
  }
  return json;
}

const unquote = (s: string) => s.trim().replace(/^"(.*)"$/, '$1');

function choicesOf(ctx: UsageContext, name: string): string | undefined {
  const c = ctx.options[name]?.choices;
  return c && c.length ? c.map(String).join(', ') : undefined;
}

function optionList(ctx: UsageContext): string {
  return [...Object.entries(ctx.options).map(([k, o]) => shown(k, o)), '--help'].join(', ');
}

function unknownArguments(names: string[], ctx: UsageContext): string {
  // yargs names an unknown `--foo-bar` twice (foo-bar, fooBar): report the form that was typed.
  const opt = names.find((n) => ctx.argv.some((t) => tokenNames(t, n)));
  if (opt !== undefined) {
    const f = asTyped(ctx, opt);
    const others = ctx.foreign?.get(opt);
    if (others && ctx.target) {
      const own = ctx.targetOwn?.length ? ctx.targetOwn.map(flag).join(', ') : 'none';
      return `${f} is an option of target ${others.join(' or ')}, not of ${ctx.target} (target ${ctx.target} takes: ${own})`;
    }
    if (!ctx.command) return `unknown option ${f} (give a command first: ${ctx.commands.join(', ')})`;
    return `unknown option ${f} (ublk-ts ${ctx.command}${ctx.target ? ` --target ${ctx.target}` : ''} takes: ${optionList(ctx)})`;
  }
  const word = names[0] ?? '';
  if (!ctx.command) return `unknown command "${word}" (commands: ${ctx.commands.join(', ')})`;
  return `unexpected argument "${word}" (ublk-ts ${ctx.command} takes only options: ${optionList(ctx)})`;
}

/** yargs' message about a mistake, restated on one line with the option and what it allows. */
export function usageMessage(raw: string, ctx: UsageContext): string {
  let m: RegExpExecArray | null;
  if ((m = /^Unknown arguments?: (.+)$/s.exec(raw.trim()))) return unknownArguments(m[1].split(', '), ctx);
  if ((m = /Argument: (.+?), Given: (.+?), Choices: (.+)$/m.exec(raw))) {
    const choices = m[3].split(', ').map(unquote).join(', ');
    return `${asTyped(ctx, m[1])} must be one of: ${choices} (not "${unquote(m[2])}")`;
  }
  if ((m = /^Missing required arguments?: ([^,\n]+)/.exec(raw))) {
    const c = choicesOf(ctx, m[1]);
    return `${ctx.command ?? 'ublk-ts'} needs ${flag(m[1])}${c ? ` (one of: ${c})` : ''}`;
  }
  if ((m = /^Not enough arguments following: (.+)$/.exec(raw))) {
    const c = choicesOf(ctx, m[1]);
    return `${asTyped(ctx, m[1])} needs a value${c ? ` (one of: ${c})` : ''}`;
  }
  return oneLine(raw);
}

/** No verb given: an option before it is the first thing to point out, else the missing verb. */
export function missingCommand(ctx: UsageContext): string {
  const known = new Set(['--json', '--no-json', '--help', '-h', '--version']);
  const stray = ctx.argv.find((t) => t.startsWith('-') && t !== '--' && !known.has(t.replace(/=.*$/, '')));
  if (stray) return `unknown option ${stray.replace(/=.*$/, '')} (give a command first: ${ctx.commands.join(', ')})`;
  return `missing command (one of: ${ctx.commands.join(', ')})`;
}

/** A whole-number option in [min, max]; undefined when not given. */
export function wholeNumber(ctx: UsageContext, name: string, value: unknown, min: number, max: number): number | undefined {
  const raw = rawValue(ctx.argv, [name, ...aliases(ctx.options[name])]) ?? String(value);
  return wholeIn(asTyped(ctx, name), value, [min, max], `"${raw}"`);
}

/**
 * Options that take a value must get one: `--queues` at the end of the line is a mistake, not "unset".
 * Lists (`array`) are left as their target made them: they take any number of values.
 */
export function valueRequired(options: Record<string, Options>): Record<string, Options> {
  const takesOne = (o: Options) => o.type !== 'boolean' && o.type !== 'count' && o.array !== true;
  return Object.fromEntries(Object.entries(options).map(([k, o]) => [k, takesOne(o) ? { ...o, requiresArg: true } : o]));
}

/** An option that takes one value, given twice (yargs then hands over both): say so rather than guess. */
export function noRepeats(ctx: UsageContext, args: Record<string, unknown>): void {
  for (const [k, o] of Object.entries(ctx.options))
    if (o.array !== true && Array.isArray(args[k])) throw new UserError(`${asTyped(ctx, k)} is given more than once; give it once`);
}

/** The size of a regular file, -1 for anything else that exists, undefined when nothing is there. */
function sizeOf(p: string): number | undefined {
  try {
    const st = fs.statSync(p);
    return st.isFile() ? st.size : -1;
  } catch {
    return undefined;
  }
}

/**
 * Opens the target once and closes it again: its own validation (which lives in its open()) then speaks
 * before the kernel is asked anything. Returns how to undo what the open made, a file it created or grew
 * (found among the option values), for when `add` stops before a server takes over.
 */
export async function checkTarget(spec: TargetSpec, opts: Record<string, unknown>, mode?: string): Promise<() => void> {
  const paths = [...new Set(Object.values(opts).filter((v): v is string => typeof v === 'string' && v !== ''))];
  const before = new Map(paths.map((p) => [p, sizeOf(p)]));
  const undo = () => {
    for (const [p, was] of before) {
      const now = sizeOf(p);
      if (now === undefined || now < 0) continue;
      if (was === undefined) fs.rmSync(p, { force: true });
      else if (was >= 0 && now > was) fs.truncateSync(p, was);
    }
  };
  const beneath = await waitingBeneath(opts);
  if (beneath) throw new UserError(`${beneath} waits for a server of its own (ublk-ts recover): reading it would wait until then`, 'backend');
  let opened: Awaited<ReturnType<TargetSpec['open']>>;
  try {
    opened = await spec.open(opts);
  } catch (e) {
    undo(); // what it made before it gave up
    // A target that threw something other than a sentence still failed on its backend, not on our side.
    throw errorKind(e) === 'other' ? new UserError(`target ${spec.name}: ${oneLine(e)}`, 'backend') : e;
  }
  opened.close();
  // A TypeScript target's handlers get their bytes by user copy (pread/pwrite on /dev/ublkcN), which the
  // driver refuses on a device made in copy mode: it would come up and fail every request.
  if (opened.typescript && mode === 'copy') {
    undo();
    throw new UserError(`--data-mode copy cannot serve target ${spec.name}: a target written in TypeScript needs user copy (use auto, auto-lease, lease or user-copy)`);
  }
  return undo;
}
