// The loader, run as a child process against the in-process fake server: the output, the
// exit codes of the contract's table, sources without an extension, and stop signals.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as delay } from "node:timers/promises";

import { FakeServer } from "./fake-server.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const loader = path.join(here, "..", "loader.mjs");
const sdk = path.join(here, "..", "index.mjs");
const dir = mkdtempSync(path.join(tmpdir(), "sr-loader-ts-"));
let fake;

before(async () => {
  fake = await new FakeServer({ runId: "run_loader" }).start();
});
after(async () => {
  await fake.stop();
});

/** Runs the loader on `source` (text written to `name` in a temp folder); resolves {code, signal, stdout, stderr}. */
function load(name, source, env = {}, { onSpawn } = {}) {
  const file = path.join(dir, name);
  writeFileSync(file, source);
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [loader, file], {
      env: { PATH: process.env.PATH, ...fake.env(), ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c) => (stdout += c));
    child.stderr.on("data", (c) => (stderr += c));
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr, file }));
    onSpawn?.(child);
  });
}

test("main's return value is written to $SCRIPT_RUN_OUTPUT, the workflow's prints stay out", async () => {
  const out = path.join(dir, "out1.json");
  const r = await load("ok.mjs", `
    export default async function main(args, ctx) {
      console.log("noise");
      const v = await ctx.step.value("v", () => args.n * 2);
      return { v, runId: ctx.runId, attempt: ctx.attempt };
    }`, { SCRIPT_RUN_OUTPUT: out, SCRIPT_RUN_ARGS: '{"n": 21}', SCRIPT_RUN_ATTEMPT: "2" });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "noise\n");
  assert.deepEqual(JSON.parse(readFileSync(out, "utf8")), { v: 42, runId: "run_loader", attempt: 2 });
});

test("without $SCRIPT_RUN_OUTPUT the output is printed on stdout; a named sync main works; undefined is null", async () => {
  const r = await load("named.mjs", `export function main(args) { return ["x", args]; }`, { SCRIPT_RUN_ARGS: "[1]" });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), ["x", [1]]);
  const n = await load("none.mjs", `export default function main() {}`);
  assert.equal(n.stdout, "null\n");
});

test("a source without an extension is imported from a .mjs copy beside it", async () => {
  const r = await load("source", `export default async (args, ctx) => ({ ok: typeof ctx.step.run })`);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { ok: "function" });
  assert.ok(existsSync(`${r.file}.mjs`));
});

test("a failed step exits 1 with one line naming it", async () => {
  const r = await load("fail.mjs", `
    export default async function main(args, ctx) {
      await ctx.step.run("explode", () => { throw new Error("kaboom"); });
    }`);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, 'script-runner: step "explode" failed: kaboom\n');
});

test("a usage error exits 2; a source without main exits 2", async () => {
  const r = await load("usage.mjs", `export default async (args, ctx) => ctx.step.sleep("", 5)`);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /^script-runner: USAGE: a step needs a label/);
  const m = await load("nomain.mjs", `export const x = 1;`);
  assert.equal(m.code, 2);
  assert.match(m.stderr, /has no main/);
});

test("a step that could not be run exits 3 (divergence, not in a run)", async () => {
  const src = (type) => `export default async (args, ctx) => ctx.step.${type};`;
  assert.equal((await load("d1.mjs", src(`value("dv", 1)`))).code, 0);
  const r = await load("d2.mjs", src(`sleep("dv", 10)`));
  assert.equal(r.code, 3);
  assert.match(r.stderr, /^script-runner: STEP_DIVERGED: step "dv" was journaled as value/);
  const n = await load("notrun.mjs", src(`value("x", 1)`), { SCRIPT_RUN_ID: "" });
  assert.equal(n.code, 3);
  assert.match(n.stderr, /^script-runner: NOT_IN_RUN: .*SCRIPT_RUN_ID/);
});

test("any other error exits 1 with its stack", async () => {
  const r = await load("other.mjs", `export default async () => { null.x; }`);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /TypeError: Cannot read properties of null/);
});

test("SIGTERM while a command step runs stops its process group, then the loader ends by SIGTERM", async () => {
  const pidFile = path.join(dir, "held.pid");
  const r = await load("held.mjs", `
    export default async (args, ctx) => ctx.step.command("hold", ["sh", "-c", "echo $$ > ${pidFile}; exec sleep 30"]);`,
    {}, {
      onSpawn: async (child) => {
        for (let i = 0; i < 100 && !existsSync(pidFile); i++) await delay(20);
        await delay(50);
        child.kill("SIGTERM");
      },
    });
  assert.equal(r.signal, "SIGTERM");
  const pid = Number(readFileSync(pidFile, "utf8"));
  let alive = true;
  for (let i = 0; i < 50 && alive; i++) {
    try {
      alive = readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /s, "")[0] !== "Z";
    } catch {
      alive = false;
    }
    if (alive) await delay(20);
  }
  assert.equal(alive, false, "the command's group got SIGTERM");
  assert.equal(fake.journal.has("hold"), false, "nothing journaled for the stopped command");
});

test("the SDK module imports without a run (plain scripts make their context lazily)", async () => {
  const r = await load("plain.mjs", `import { step, context } from ${JSON.stringify(sdk)};
    export default async () => { await step.value("plain", 5); return context().runId; }`);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout), "run_loader");
});
