// Unit tests of the step SDK against an in-process fake of the server's step routes.

import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, existsSync, appendFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import {
  Context, fromEnv, parseDuration, showDuration, ScriptRunnerError, StepFailedError, UsageError,
  StepDivergedError, LimitExceededError, ServerError, NotInRunError, UnreachableError, ProtocolError,
} from "../index.mjs";
import { FakeServer } from "./fake-server.mjs";

let fake;
const dir = mkdtempSync(path.join(tmpdir(), "sr-sdk-ts-"));

before(async () => {
  fake = await new FakeServer().start();
});
after(async () => {
  await fake.stop();
});
beforeEach(() => {
  fake.journal.clear();
  fake.requests.length = 0;
  fake.unavailable = 0;
  fake.maxSteps = Infinity;
  fake.progress.length = 0;
});

/** Whether a process is gone (or a zombie waiting for its reaper: it has ended). */
function gone(pid) {
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /s, "")[0] === "Z";
  } catch {
    return true;
  }
}

/** A context for the fake run (a new one is a new execution: a replay). */
const ctx = (extra = {}) => new Context({ url: fake.url, runId: fake.runId, token: fake.token, args: { a: 1 }, ...extra });

test("run: executes once, journals the JSON result, and a replay returns it without calling fn", async () => {
  let calls = 0;
  const fn = async () => {
    calls++;
    return { at: new Date(0), n: 1, skip: undefined };
  };
  const first = await ctx().step.run("pick", fn);
  assert.deepEqual(first, { at: "1970-01-01T00:00:00.000Z", n: 1 });
  assert.equal(calls, 1);
  const entry = fake.journal.get("pick");
  assert.equal(entry.status, "completed");
  assert.equal(entry.stepType, "value");
  assert.equal(entry.config, null);
  const again = await ctx().step.run("pick", fn);
  assert.deepEqual(again, first);
  assert.equal(calls, 1, "fn is not called on replay");
  assert.equal(fake.calls("record").length, 1);
});

test("run: a thrown error is journaled and replayed as StepFailedError with the same message and errorName", async () => {
  let calls = 0;
  const fn = () => {
    calls++;
    throw new TypeError("bad input");
  };
  const seen = [];
  for (let i = 0; i < 2; i++) {
    await assert.rejects(ctx().step.run("boom", fn), (e) => {
      seen.push(e);
      return true;
    });
  }
  assert.equal(calls, 1);
  for (const e of seen) {
    assert.ok(e instanceof StepFailedError && e instanceof ScriptRunnerError);
    assert.equal(e.code, "STEP_FAILED");
    assert.equal(e.label, "boom");
    assert.equal(e.message, "bad input");
    assert.equal(e.errorName, "TypeError");
    assert.deepEqual(e.result, { name: "TypeError", message: "bad input" });
  }
  const entry = fake.journal.get("boom");
  assert.equal(entry.status, "failed");
  assert.equal(entry.error, "bad input");
  assert.deepEqual(entry.result, { name: "TypeError", message: "bad input" });
});

test("value: journals a value once; a failing function journals nothing and is called again next time", async () => {
  assert.deepEqual(await ctx().step.value("v", [1, "x"]), [1, "x"]);
  assert.deepEqual(await ctx().step.value("v", [2]), [1, "x"], "a replay returns the first value");
  let calls = 0;
  const flaky = () => {
    calls++;
    if (calls === 1) throw new RangeError("not yet");
    return "ok";
  };
  await assert.rejects(ctx().step.value("f", flaky), (e) => e instanceof RangeError && e.message === "not yet");
  assert.equal(fake.journal.has("f"), false);
  assert.equal(fake.calls("record", "f").length, 0);
  assert.equal(await ctx().step.value("f", flaky), "ok");
  assert.equal(await ctx().step.value("f", flaky), "ok");
  assert.equal(calls, 2);
});

test("divergence, a guardrail and other error answers are typed", async () => {
  await ctx().step.value("d", 1);
  await assert.rejects(ctx().step.sleep("d", 5), (e) => e instanceof StepDivergedError && e.code === "STEP_DIVERGED" && e.status === 409 && /journaled as value/.test(e.message));
  fake.maxSteps = 1;
  let called = false;
  await assert.rejects(ctx().step.run("over", () => (called = true)), (e) => e instanceof LimitExceededError && e.code === "LIMIT_EXCEEDED");
  assert.equal(called, false);
  await assert.rejects(
    new Context({ url: fake.url, runId: fake.runId, token: "wrong" }).step.value("x", 1),
    (e) => e instanceof ServerError && e.code === "FORBIDDEN" && e.status === 403 && e.serverMessage === "not this run's token",
  );
});

test("usage errors are raised before any request", async () => {
  const c = ctx();
  const cases = [
    () => c.step.run("", () => 1),
    () => c.step.run("x", 42),
    () => c.step.value(undefined, 1),
    () => c.step.value("x", 10n),
    () => c.step.command("x", []),
    () => c.step.command("x", ["true"], { retry: 0 }),
    () => c.step.command("x", ["true"], { retry: 101 }),
    () => c.step.command("x", ["true"], { retry: 1.5 }),
    () => c.step.command("x", ["true"], { timeout: 0 }),
    () => c.step.command("x", ["true"], { timeout: "25h" }),
    () => c.step.command("x", ["true"], { timeout: "soon" }),
    () => c.step.command("x", ["true"], { backoff: "1s" }),
    () => c.step.command("x", ["true"], { retry: 1, backoff: "2s", backoffMax: "1s" }),
    () => c.step.command("x", ["true"], { retries: 2 }),
    () => c.step.script("x", "s", [{}]),
    () => c.step.script("x", 5),
    () => c.step.sleep("x", -1),
    () => c.step.waitEvent("x", "e", { timeout: 0 }),
    () => c.progress(-1, 3),
    () => c.progress(1, 2.5),
  ];
  for (const [i, call] of cases.entries()) {
    await assert.rejects(call(), (e) => e instanceof UsageError && e.code === "USAGE", `case ${i}`);
  }
  assert.equal(fake.requests.length, 0);
});

test("durations: numbers are ms, strings take units, as the CLI", () => {
  assert.equal(parseDuration(250), 250);
  assert.equal(parseDuration("500ms"), 500);
  assert.equal(parseDuration("10s"), 10_000);
  assert.equal(parseDuration("5m"), 300_000);
  assert.equal(parseDuration("1h"), 3_600_000);
  assert.equal(parseDuration("1m30s"), 90_000);
  assert.equal(parseDuration("2"), 2000);
  assert.throws(() => parseDuration("10 parsecs"), UsageError);
  assert.equal(showDuration(2000), "2s");
  assert.equal(showDuration(1500), "1500ms");
});

test("503 STORE_UNAVAILABLE is retried until the store is back", async () => {
  fake.unavailable = 2;
  const t0 = Date.now();
  assert.equal(await ctx().step.value("after-outage", 7), 7);
  assert.equal(fake.calls("begin", "after-outage").length, 3);
  assert.ok(Date.now() - t0 >= 700, "pauses 250 ms then 500 ms");
});

test("labels are sent as one percent-encoded path segment", async () => {
  await ctx().step.value("a/b c?é", 1);
  assert.equal(fake.calls("begin")[0].rawLabel, "a%2Fb%20c%3F%C3%A9");
  assert.equal(fake.journal.get("a/b c?é").result, 1);
});

test("command: captures stdout, stderr, exit code and SCRIPT_STEP_KEY; a replay does not run it", async () => {
  const marker = path.join(dir, "cmd-ran");
  const argv = ["sh", "-c", `echo ran >> ${marker}; echo "key=$SCRIPT_STEP_KEY"; echo oops >&2; exit 3`];
  const first = await ctx().step.command("cmd", argv);
  assert.deepEqual(first, { exitCode: 3, stdout: `key=${fake.runId}:cmd\n`, stderr: "oops\n", replayed: false });
  const entry = fake.journal.get("cmd");
  assert.equal(entry.status, "failed");
  assert.equal(entry.error, "exit code 3");
  assert.deepEqual(entry.config, { command: argv });
  const again = await ctx().step.command("cmd", argv);
  assert.deepEqual(again, { ...first, replayed: true });
  assert.equal(readFileSync(marker, "utf8"), "ran\n");
  const ok = await ctx().step.command("ok", ["echo", 1, true]);
  assert.equal(ok.stdout, "1 true\n");
  assert.equal(fake.journal.get("ok").status, "completed");
});

test("command: a time-out stops the process group with exit code 124", async () => {
  const pidFile = path.join(dir, "grandchild.pid");
  const t0 = Date.now();
  const r = await ctx().step.command("slow", ["sh", "-c", `sleep 30 & echo $! > ${pidFile}; wait`], { timeout: 200 });
  assert.ok(Date.now() - t0 < 1500, `took ${Date.now() - t0} ms`);
  assert.equal(r.exitCode, 124);
  const entry = fake.journal.get("slow");
  assert.equal(entry.error, "timed out after 200ms");
  assert.equal(entry.config.timeoutMs, 200);
  const grandchild = Number(readFileSync(pidFile, "utf8"));
  assert.ok(gone(grandchild), "the group's other processes are stopped too");
});

test("command: killed by a signal is 128 + the signal; a command that cannot start is 127", async () => {
  const r = await ctx().step.command("killed", ["sh", "-c", "kill -9 $$"]);
  assert.equal(r.exitCode, 137);
  const missing = await ctx().step.command("missing", ["/nonexistent/tool", "x"]);
  assert.equal(missing.exitCode, 127);
  assert.match(missing.stderr, /^cannot start \/nonexistent\/tool: .*ENOENT.*\n$/);
  assert.equal(fake.journal.get("missing").status, "failed");
});

test("command: retries journal each failed try on the attempts route, and the last try is the step", async () => {
  const counter = path.join(dir, "tries");
  const argv = ["sh", "-c", `echo x >> ${counter}; n=$(wc -l < ${counter}); echo "try $n" >&2; [ "$n" -ge 3 ]`];
  const r = await ctx().step.command("flaky", argv, { retry: 3, backoff: "20ms", backoffMax: "40ms" });
  assert.equal(r.exitCode, 0);
  assert.equal(r.stderr, "try 3\n");
  const attempts = fake.calls("attempts", "flaky");
  assert.deepEqual(attempts.map((a) => [a.body.attempt, a.body.error, a.body.stderrTail, a.body.exitCode]), [
    [1, "exit code 1", "try 1\n", 1],
    [2, "exit code 1", "try 2\n", 1],
  ]);
  assert.deepEqual(fake.journal.get("flaky").config, { command: argv, retry: 3, backoffMs: 20, backoffMaxMs: 40 });
  assert.equal(fake.journal.get("flaky").status, "completed");
  const all = await ctx().step.command("never", ["false"], { retry: 1, backoff: 10 });
  assert.equal(all.exitCode, 1);
  assert.equal(fake.calls("attempts", "never").length, 1);
  assert.equal(fake.journal.get("never").status, "failed");
});

test("command: a resumed retried step runs the next attempt number, not the journaled ones", async () => {
  const argv = ["sh", "-c", "exit 5"];
  const config = { command: argv, retry: 2, backoffMs: 10 };
  await ctx().step.value("seed", 0);
  fake.journal.set("resumed", {
    ...fake.entry("resumed", "command", config, "started", { nextAttemptAtMs: Date.now() + 50 }),
    attempts: [{ attempt: 1, status: "failed", exitCode: 5, error: "exit code 5", stderrTail: "" }],
  });
  const r = await ctx().step.command("resumed", argv, { retry: 2, backoff: 10 });
  assert.equal(r.exitCode, 5);
  assert.deepEqual(fake.calls("attempts", "resumed").map((a) => a.body.attempt), [2]);
  assert.equal(fake.journal.get("resumed").status, "failed");
});

test("script: the job's result; a failed job is StepFailedError now and on replay; scriptStart gives the job id", async () => {
  fake.scripts.echo = async (args, key) => ({ status: "succeeded", exitCode: 0, stdout: JSON.stringify({ args, key }), stderr: "" });
  fake.scripts.fail = async () => ({ status: "failed", exitCode: 2, stdout: "", stderr: "no\n" });
  const r = await ctx().step.script("s", "echo", ["a", 2]);
  assert.equal(r.status, "succeeded");
  assert.equal(r.exitCode, 0);
  assert.match(r.jobId, /^job_/);
  assert.deepEqual(JSON.parse(r.stdout), { args: ["a", "2"], key: `${fake.runId}:s` });
  for (let i = 0; i < 2; i++) {
    await assert.rejects(ctx().step.script("f", "fail", [], { timeout: "1m" }), (e) =>
      e instanceof StepFailedError && e.label === "f" && e.result.exitCode === 2 && e.result.stderr === "no\n" && /exit code 2/.test(e.message));
  }
  assert.deepEqual(fake.journal.get("f").config, { scriptId: "fail", args: [], timeoutMs: 60_000 });
  const jobId = await ctx().step.scriptStart("st", "echo", ["b"]);
  assert.equal(await ctx().step.scriptStart("st", "echo", ["b"]), jobId);
  assert.equal(fake.journal.get("st").config.wait, false);
});

test("sleep: sleeps until the journaled wake-up time, then records it; a replay does not sleep", async () => {
  const t0 = Date.now();
  await ctx().step.sleep("nap", "300ms");
  const took = Date.now() - t0;
  assert.ok(took >= 290 && took < 1500, `took ${took}`);
  assert.equal(fake.journal.get("nap").status, "completed");
  assert.deepEqual(fake.journal.get("nap").config, { durationMs: 300 });
  const t1 = Date.now();
  await ctx().step.sleep("nap", 300);
  assert.ok(Date.now() - t1 < 200);
});

test("approval, input and waitEvent wait for the server's decision", async () => {
  const c = ctx();
  const pending = c.step.approval("ship", "Ship it?");
  setTimeout(() => fake.settle("ship", "completed", { approved: true, by: "alice" }), 100);
  assert.deepEqual(await pending, { approved: true, by: "alice", comment: null });
  assert.ok(fake.calls("wait", "ship").length >= 1);
  assert.deepEqual(await ctx().step.approval("ship", "Ship it?"), { approved: true, by: "alice", comment: null });

  const schema = { type: "object" };
  const asked = c.step.input("age", "How old?", schema);
  setTimeout(() => fake.settle("age", "completed", { value: { age: 3 }, by: "bob" }), 50);
  assert.deepEqual(await asked, { age: 3 });
  assert.deepEqual(fake.journal.get("age").config, { prompt: "How old?", schema });
  const denied = c.step.input("no", "Name?");
  setTimeout(() => fake.settle("no", "failed", null, "input denied by carol"), 50);
  await assert.rejects(denied, (e) => e instanceof StepFailedError && e.message === "input denied by carol");

  const ev = c.step.waitEvent("hook", "deploy");
  setTimeout(() => fake.settle("hook", "completed", { payload: { sha: "abc" } }), 50);
  assert.deepEqual(await ev, { sha: "abc" });
  await assert.rejects(c.step.waitEvent("late", "never", { timeout: "100ms" }), (e) =>
    e instanceof StepFailedError && /did not arrive within 100 ms/.test(e.message));
  assert.equal(fake.journal.get("late").config.timeoutMs, 100);
});

test("concurrent steps from Promise.all all run and journal", async () => {
  const c = ctx();
  const labels = Array.from({ length: 40 }, (_, i) => `p-${i}`);
  const values = await Promise.all(labels.map((l, i) => (i % 2 ? c.step.run(l, async () => i) : c.step.command(l, ["echo", String(i)]))));
  assert.deepEqual(values.map((v, i) => (i % 2 ? v : Number(v.stdout))), labels.map((_, i) => i));
  assert.equal(fake.journal.size, 40);
});

test("progress posts current, total and message", async () => {
  await ctx().progress(3, 10, "three");
  await ctx().progress(0, 0);
  assert.deepEqual(fake.progress, [{ current: 3, total: 10, message: "three" }, { current: 0, total: 0, message: null }]);
});

test("fromEnv reads the run from the environment and names a missing variable", () => {
  const c = fromEnv(fake.env({ SCRIPT_RUN_ARGS: '{"x":[1]}', SCRIPT_RUN_ATTEMPT: "3" }));
  assert.equal(c.runId, fake.runId);
  assert.deepEqual(c.args, { x: [1] });
  assert.equal(c.attempt, 3);
  assert.equal(fromEnv(fake.env()).args, null);
  assert.throws(() => fromEnv({ SCRIPT_RUNNER_URL: "http://x" }), (e) => e instanceof NotInRunError && e.code === "NOT_IN_RUN" && e.variable === "SCRIPT_RUN_ID");
});

test("an unreachable server and a malformed answer are typed", async () => {
  const gone = new FakeServer();
  await gone.start();
  const url = gone.url;
  await gone.stop();
  await assert.rejects(new Context({ url, runId: "r", token: "t" }).step.value("x", 1), (e) => e instanceof UnreachableError && e.code === "UNREACHABLE");
  const http = await import("node:http");
  const odd = http.createServer((req, res) => res.end(JSON.stringify({ ok: true, action: "jump" })));
  await new Promise((r) => odd.listen(0, "127.0.0.1", r));
  try {
    await assert.rejects(new Context({ url: `http://127.0.0.1:${odd.address().port}`, runId: "r", token: "t" }).step.value("x", 1),
      (e) => e instanceof ProtocolError && e.code === "PROTOCOL");
  } finally {
    odd.closeAllConnections();
    await new Promise((r) => odd.close(r));
  }
});

test("a step's fn that appends to a file runs once across executions", async () => {
  const log = path.join(dir, "once");
  for (let i = 0; i < 3; i++) await ctx().step.run("once", () => appendFileSync(log, "x"));
  assert.equal(readFileSync(log, "utf8"), "x");
  assert.ok(existsSync(log));
});

test("command: each captured stream is capped at 16 MiB (the rest is read and dropped)", async () => {
  const r = await ctx().step.command("big", ["sh", "-c", "head -c 17825792 /dev/zero | tr '\\0' a; echo done >&2"]);
  assert.equal(r.exitCode, 0);
  assert.equal(r.stdout.length, 16 * 1024 * 1024);
  assert.equal(r.stderr, "done\n");
});

test("run: a value that is not JSON journals nothing and is a UsageError", async () => {
  await assert.rejects(ctx().step.run("big-int", () => 1n), (e) => e instanceof UsageError && /not JSON/.test(e.message));
  assert.equal(fake.journal.has("big-int"), false);
  assert.equal(fake.calls("record", "big-int").length, 0);
});

test("a second writer of a label gets the first writer's entry: its result, or its failure", async () => {
  const theirs = await ctx().step.run("raced", () => {
    fake.journal.set("raced", fake.entry("raced", "value", null, "completed", "theirs"));
    return "mine";
  });
  assert.equal(theirs, "theirs");
  await assert.rejects(ctx().step.run("raced-fail", () => {
    fake.journal.set("raced-fail", fake.entry("raced-fail", "value", null, "failed", { name: "SyntaxError", message: "first" }, "first"));
    return "mine";
  }), (e) => e instanceof StepFailedError && e.message === "first" && e.errorName === "SyntaxError");
});
