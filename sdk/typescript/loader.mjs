#!/usr/bin/env node
// The workflow loader: `node loader.mjs <source>` (or `tsx loader.mjs <source>`) imports the
// source, calls its `main(args, ctx)` and takes the return value as the run's output, so a
// workflow is a plain function and the SDK handles the process around it. Contract: the
// "loader" section of sdk/README.md.
//
// Exit codes (the CLI's): 0 done; 1 a failed step (StepFailedError) or any other error thrown
// out of main; 2 a usage error (UsageError, or a source without main); 3 a step that could not
// be run (divergence, a guardrail, a server error, the server unreachable, not in a run).

import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { pathToFileURL } from "node:url";

import { fromEnv, ScriptRunnerError, StepFailedError } from "./index.mjs";

/** Writes text to a stream and resolves once it is flushed (so process.exit loses nothing). */
function write(stream, text) {
  return new Promise((resolve) => stream.write(text, () => resolve()));
}

/** Ends the process with `code` after `line` (if any) is on stderr. */
async function fail(code, line) {
  if (line) await write(process.stderr, line.endsWith("\n") ? line : `${line}\n`);
  process.exit(code);
}

/**
 * Whether this process runs TypeScript sources itself (tsx, deno, bun), so a source copy is
 * written with `.ts` and TypeScript in it works; `SCRIPT_RUN_SOURCE_EXT` decides when set.
 */
function copyExtension() {
  const forced = process.env.SCRIPT_RUN_SOURCE_EXT;
  if (forced) return `.${forced.replace(/^\./, "")}`;
  if (globalThis.Deno || process.versions.bun || process.versions.deno) return ".ts";
  const flags = [...process.execArgv, process.env.NODE_OPTIONS ?? ""].join(" ");
  if (/\btsx\b/.test(flags) || /\btsx\b/.test(process.argv[0] ?? "")) return ".ts";
  return ".mjs";
}

/**
 * The file to import: the source itself when its name says it is a module, else a copy beside
 * it named `<source>.mjs` (`.ts` under tsx): the server names an inline source `source`, with
 * no extension, which Node would not load as ESM.
 */
function importable(source) {
  if (/\.(mjs|js|ts|mts|cjs|cts|jsx|tsx)$/.test(source)) return source;
  const copy = `${source}${copyExtension()}`;
  const text = readFileSync(source);
  if (!existsSync(copy) || !readFileSync(copy).equals(text)) writeFileSync(copy, text);
  return copy;
}

const SDK_ERRORS = {
  StepFailedError: ["StepFailedError"],
  ScriptRunnerError: [
    "StepFailedError", "UsageError", "StepDivergedError", "LimitExceededError", "ServerError",
    "NotInRunError", "UnreachableError", "ProtocolError", "ScriptRunnerError",
  ],
};

/**
 * Whether `e` is an SDK error of `cls`: by `instanceof`, or by name and code when the source
 * imported another copy of the SDK (whose classes are not this module's).
 */
function isSdkError(e, cls) {
  if (e instanceof cls) return true;
  return e instanceof Error && typeof e.code === "string" && SDK_ERRORS[cls.name].includes(e.name);
}

async function main() {
  const source = process.argv[2];
  if (!source) return fail(2, "script-runner: USAGE: usage: loader.mjs <source>");
  let mod;
  try {
    mod = await import(pathToFileURL(path.resolve(importable(source))).href);
  } catch (e) {
    return fail(1, `script-runner: cannot load ${source}: ${e?.stack ?? e}`);
  }
  const entry = typeof mod.default === "function" ? mod.default : typeof mod.main === "function" ? mod.main : null;
  if (entry === null) {
    return fail(2, `script-runner: USAGE: ${source} has no main: export default async function main(args, ctx) { ... }`);
  }
  let output;
  try {
    const ctx = fromEnv();
    const value = await entry(ctx.args, ctx);
    output = JSON.stringify(value === undefined ? null : value);
    if (output === undefined) throw new TypeError(`main returned a ${typeof value}, which is not JSON`);
  } catch (e) {
    if (isSdkError(e, StepFailedError)) return fail(1, `script-runner: step ${JSON.stringify(e.label)} failed: ${e.message}`);
    if (isSdkError(e, ScriptRunnerError)) return fail(e.code === "USAGE" ? 2 : 3, `script-runner: ${e.code}: ${e.message}`);
    return fail(1, String(e?.stack ?? e));
  }
  const file = process.env.SCRIPT_RUN_OUTPUT;
  try {
    if (file) await writeFile(file, output);
    else await write(process.stdout, `${output}\n`);
  } catch (e) {
    return fail(1, `script-runner: cannot write the output${file ? ` to ${file}` : ""}: ${e?.message ?? e}`);
  }
  process.exit(0);
}

main();
