//! The step SDKs (`sdk/typescript`, `sdk/python`) against the real server: workflow sources
//! that define `main(args, ctx)`, run through the SDKs' loaders by `node`, `tsx` and
//! `python3`, with every step kind, replay after a crash (a journaled result comes back
//! without its function running again, a thrown error comes back as the same error),
//! divergence, a guardrail, the label lint, two runs at once, and the ported examples killed
//! mid-run (the workflow process, then the server).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{entry, labels, lines, signal, wait_file, Builder, TestServer};
use serde_json::{json, Value};

/// Bound for anything a test waits for (a Node or Python start is ~50-100 ms a process).
const WAIT: Duration = Duration::from_secs(30);

/// The repository (for the examples).
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The SDKs' languages as the tests run them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Lang {
    /// JavaScript under `node`.
    Js,
    /// Python under `python3`.
    Py,
}

impl Lang {
    /// The source of a test in this language.
    fn pick(self, js: &'static str, py: &'static str) -> &'static str {
        match self {
            Lang::Js => js,
            Lang::Py => py,
        }
    }

    /// The inline interpreter name the tests configure for it.
    fn interpreter(self) -> &'static str {
        match self {
            Lang::Js => "node",
            Lang::Py => "python",
        }
    }
}

/// An absolute path of a program on PATH (interpreters are configured by absolute path).
fn which(program: &str) -> String {
    crate::common::on_path(program)
        .unwrap_or_else(|| panic!("{program} is not on PATH: the SDK tests need it (.ci/run installs it)"))
        .display()
        .to_string()
}

/// `tsx` (TypeScript for the examples): `$SCRIPT_RUNNER_TEST_TSX`, else the copy `tests/run`
/// installs into `target/node-tools`.
fn tsx() -> String {
    if let Ok(path) = std::env::var("SCRIPT_RUNNER_TEST_TSX") {
        return path;
    }
    let path = Path::new(REPO).join("target/node-tools/node_modules/.bin/tsx");
    assert!(path.is_file(), "{} is missing: tests/run installs tsx there (npm)", path.display());
    // Not canonicalised: the server knows tsx by its program's name (the link's, not the
    // name of the script it links to).
    path.display().to_string()
}

/// A deployment with `node` and `python` inline interpreters and the `workflows` keys of
/// `extra`, plus an `echo-args` script (prints its arguments as a JSON array, and appends its
/// step key to `<dir>/jobs`).
fn builder(extra: Value) -> (Builder, PathBuf) {
    let b = Builder::new();
    let dir = b.dir().to_path_buf();
    let mut workflows =
        json!({ "interpreters": { "node": [which("node")], "python": [which("python3")], "bash": ["/bin/bash"] } });
    if let (Some(w), Value::Object(x)) = (workflows.as_object_mut(), extra) {
        w.extend(x);
    }
    let echo = format!(
        r#"echo "$SCRIPT_STEP_KEY" >> '{}/jobs'; printf '['; sep=''; for a in "$@"; do printf '%s"%s"' "$sep" "$a"; sep=,; done; echo ']'"#,
        dir.display()
    );
    let b = b.script_entry("echo-args", &echo, json!({ "mode": "async" })).top("workflows", workflows);
    (b, dir)
}

/// Launches an inline source in `lang` (`@D` replaced by the deployment folder).
fn launch(server: &TestServer, lang: Lang, dir: &Path, source: &str, args: Value) -> String {
    let source = source.replace("@D", dir.to_str().unwrap());
    let r = server.launch_run(json!({ "source": source, "interpreter": lang.interpreter(), "args": args }));
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["run"]["id"].as_str().unwrap().to_string()
}

/// Waits until the run's process is the one that wrote `file` (its pid), then returns it.
fn held_pid(dir: &Path, file: &str) -> i32 {
    wait_file(&dir.join(file), WAIT).trim().parse().unwrap()
}

/// A run's stderr log of one execution (the answer's text if there is no such execution: it
/// is shown in failure messages, which must not fail themselves).
fn stderr(server: &TestServer, id: &str, attempt: i32) -> String {
    let r = server.get(&format!("/api/script-runs/{id}/logs?stream=stderr&attempt={attempt}"));
    match r.status {
        200 => r.body["data"].as_str().unwrap_or_default().to_string(),
        _ => r.text,
    }
}

// ---------------------------------------------------------------- every step kind

const EVERY_KIND_JS: &str = r#"
import { appendFileSync } from "node:fs";
export default async function main(args, ctx) {
  const out = { args: ctx.args, runId: ctx.runId === process.env.SCRIPT_RUN_ID, attempt: ctx.attempt };
  out.run = await ctx.step.run("run", async () => { appendFileSync("@D/side", "run\n"); return { n: 1 }; });
  out.value = await ctx.step.value("value", () => 42);
  out.plain = await ctx.step.value("plain", "text");
  const cmd = await ctx.step.command("command", ["sh", "-c", "echo out; echo \"$SCRIPT_STEP_KEY\" >&2; exit 3"]);
  out.command = [cmd.exitCode, cmd.stdout, cmd.stderr];
  const job = await ctx.step.script("script", "echo-args", ["a", "b"]);
  out.script = [job.status, job.exitCode, job.stdout];
  out.started = typeof (await ctx.step.scriptStart("start", "echo-args", ["c"]));
  await ctx.step.sleep("sleep", "50ms");
  out.approval = await ctx.step.approval("approval", "ship?");
  out.input = await ctx.step.input("input", "how many?", { type: "integer" });
  out.event = await ctx.step.waitEvent("event", "go");
  await ctx.progress(3, 4, "almost");
  try {
    await ctx.step.run("boom", () => { throw new TypeError("kaboom"); });
  } catch (e) {
    out.boom = [e.name, e.code, e.errorName, e.message, e.label];
  }
  console.log("a print of the workflow's own, not its output");
  return out;
}
"#;

const EVERY_KIND_PY: &str = r#"
import os

def main(args, ctx):
    out = {"args": ctx.args, "runId": ctx.run_id == os.environ["SCRIPT_RUN_ID"], "attempt": ctx.attempt}
    def run():
        with open("@D/side", "a") as f:
            f.write("run\n")
        return {"n": 1}
    out["run"] = ctx.step.run("run", run)
    out["value"] = ctx.step.value("value", lambda: 42)
    out["plain"] = ctx.step.value("plain", "text")
    cmd = ctx.step.command("command", ["sh", "-c", "echo out; echo \"$SCRIPT_STEP_KEY\" >&2; exit 3"])
    out["command"] = [cmd.exit_code, cmd.stdout, cmd.stderr]
    job = ctx.step.script("script", "echo-args", ["a", "b"])
    out["script"] = [job.status, job.exit_code, job.stdout]
    out["started"] = type(ctx.step.script_start("start", "echo-args", ["c"])).__name__
    ctx.step.sleep("sleep", "50ms")
    decision = ctx.step.approval("approval", "ship?")
    out["approval"] = {"approved": decision.approved, "by": decision.by, "comment": decision.comment}
    out["input"] = ctx.step.input("input", "how many?", {"type": "integer"})
    out["event"] = ctx.step.wait_event("event", "go")
    ctx.progress(3, 4, "almost")
    try:
        def boom():
            raise TypeError("kaboom")
        ctx.step.run("boom", boom)
    except Exception as e:
        out["boom"] = [type(e).__name__, e.code, e.error_name, str(e.message), e.label]
    print("a print of the workflow's own, not its output", flush=True)
    return out
"#;

fn every_step_kind(lang: Lang) {
    let (b, d) = builder(json!({}));
    let server = b.start();
    let source = lang.pick(EVERY_KIND_JS, EVERY_KIND_PY);
    let id = launch(&server, lang, &d, source, json!({ "who": "me" }));
    server.wait_step(&id, "approval", "started");
    let r = server.post(&format!("/api/script-runs/{id}/approvals/approval"), json!({ "approved": true, "by": "ann" }));
    assert_eq!(r.status, 200, "{}", r.text);
    server.wait_step(&id, "input", "started");
    let r = server.post(&format!("/api/script-runs/{id}/inputs/input"), json!({ "value": "x" }));
    assert_eq!(r.status, 400, "the schema refuses a string: {}", r.text);
    let r = server.post(&format!("/api/script-runs/{id}/inputs/input"), json!({ "value": 7 }));
    assert_eq!(r.status, 200, "{}", r.text);
    server.wait_step(&id, "event", "started");
    let r = server.post(&format!("/api/script-runs/{id}/events/go"), json!({ "level": 2 }));
    assert_eq!(r.status, 200, "{}", r.text);

    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}\n{}", stderr(&server, &id, 1));
    let key = format!("{id}:command");
    let boom_name = match lang {
        Lang::Js => "TypeError",
        Lang::Py => "TypeError",
    };
    assert_eq!(
        body["run"]["output"],
        json!({
            "args": { "who": "me" }, "runId": true, "attempt": 1,
            "run": { "n": 1 }, "value": 42, "plain": "text",
            "command": [3, "out\n", format!("{key}\n")],
            "script": ["succeeded", 0, "[\"a\",\"b\"]\n"],
            "started": if lang == Lang::Js { "string" } else { "str" },
            "approval": { "approved": true, "by": "ann", "comment": null },
            "input": 7, "event": { "level": 2 },
            "boom": ["StepFailedError", "STEP_FAILED", boom_name, "kaboom", "boom"],
        }),
        "{body}"
    );
    assert_eq!(lines(&d.join("side")), ["run"]);
    let types: Vec<(String, String, String)> = body["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (text("stepKey"), text("stepType"), text("status"))
        })
        .collect();
    let expected = [
        ("run", "value", "completed"),
        ("value", "value", "completed"),
        ("plain", "value", "completed"),
        ("command", "command", "failed"),
        ("script", "script", "completed"),
        ("start", "script", "completed"),
        ("sleep", "sleep", "completed"),
        ("approval", "approval", "completed"),
        ("input", "input", "completed"),
        ("event", "event", "completed"),
        ("boom", "value", "failed"),
    ];
    let expected: Vec<(String, String, String)> =
        expected.iter().map(|(a, b, c)| ((*a).into(), (*b).into(), (*c).into())).collect();
    assert_eq!(types, expected, "{body}");
    assert_eq!(entry(&body, "boom")["error"], json!("kaboom"), "{body}");
    assert_eq!(entry(&body, "boom")["result"]["name"], json!(boom_name), "{body}");
    assert_eq!(body["run"]["progress"]["current"], json!(3), "{body}");
}

#[test]
fn every_step_kind_in_javascript() {
    every_step_kind(Lang::Js);
}

#[test]
fn every_step_kind_in_python() {
    every_step_kind(Lang::Py);
}

// ---------------------------------------------------------------- replay after a crash

const CRASH_JS: &str = r#"
import { appendFileSync, writeFileSync } from "node:fs";
export default async function main(args, ctx) {
  const a = await ctx.step.run("a", () => { appendFileSync("@D/side", "a\n"); return { pid: process.pid }; });
  let boom;
  try {
    await ctx.step.run("boom", () => { appendFileSync("@D/side", "boom\n"); throw new RangeError("too far"); });
  } catch (e) {
    boom = { name: e.name, code: e.code, errorName: e.errorName, message: e.message };
  }
  appendFileSync("@D/booms", JSON.stringify(boom) + "\n");
  const cmd = await ctx.step.command("cmd", ["sh", "-c", "echo c >> @D/side; echo done"]);
  if (ctx.attempt === 1) {
    writeFileSync("@D/held", String(process.pid));
    await new Promise((resolve) => setTimeout(resolve, 60000));
  }
  const last = await ctx.step.run("last", () => { appendFileSync("@D/side", "last\n"); return ctx.attempt; });
  return { firstPid: a.pid, boom, cmd: cmd.stdout, replayed: cmd.replayed, last, attempt: ctx.attempt };
}
"#;

const CRASH_PY: &str = r#"
import json, os, time

def main(args, ctx):
    def a():
        with open("@D/side", "a") as f:
            f.write("a\n")
        return {"pid": os.getpid()}
    first = ctx.step.run("a", a)
    def boom():
        with open("@D/side", "a") as f:
            f.write("boom\n")
        raise ValueError("too far")
    try:
        ctx.step.run("boom", boom)
    except Exception as e:
        caught = {"name": type(e).__name__, "code": e.code, "errorName": e.error_name, "message": str(e.message)}
    with open("@D/booms", "a") as f:
        f.write(json.dumps(caught) + "\n")
    cmd = ctx.step.command("cmd", ["sh", "-c", "echo c >> @D/side; echo done"])
    if ctx.attempt == 1:
        with open("@D/held", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    def last():
        with open("@D/side", "a") as f:
            f.write("last\n")
        return ctx.attempt
    n = ctx.step.run("last", last)
    return {"firstPid": first["pid"], "boom": caught, "cmd": cmd.stdout, "replayed": cmd.replayed, "last": n, "attempt": ctx.attempt}
"#;

fn crash_replays(lang: Lang) {
    let (b, d) = builder(json!({}));
    let server = b.start();
    let source = lang.pick(CRASH_JS, CRASH_PY);
    let id = launch(&server, lang, &d, source, json!({}));
    let pid = held_pid(&d, "held");
    signal(pid, libc::SIGKILL);

    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}\n{}", stderr(&server, &id, 2));
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    let (name, error_name) = match lang {
        Lang::Js => ("StepFailedError", "RangeError"),
        Lang::Py => ("StepFailedError", "ValueError"),
    };
    let boom = json!({ "name": name, "code": "STEP_FAILED", "errorName": error_name, "message": "too far" });
    assert_eq!(
        body["run"]["output"],
        json!({ "firstPid": pid, "boom": boom, "cmd": "done\n", "replayed": true, "last": 2, "attempt": 2 }),
        "the second execution replays a, boom and cmd from the journal: {body}"
    );
    // Each function ran once; the thrown error came back the same on the replay.
    assert_eq!(lines(&d.join("side")), ["a", "boom", "c", "last"]);
    let booms = lines(&d.join("booms"));
    assert_eq!(booms.len(), 2, "{booms:?}");
    assert_eq!(booms[0], booms[1], "the replayed error is the one thrown");
    assert_eq!(labels(&body), ["a", "boom", "cmd", "last"]);
}

#[test]
fn javascript_replays_results_and_errors_after_a_kill_9_without_running_again() {
    crash_replays(Lang::Js);
}

#[test]
fn python_replays_results_and_errors_after_a_kill_9_without_running_again() {
    crash_replays(Lang::Py);
}

// ---------------------------------------------------------------- divergence and usage

const DIVERGE_JS: &str = r#"
export default async function main(args, ctx) {
  if (ctx.attempt === 1) {
    await ctx.step.run("x", () => 1);
    process.kill(process.pid, "SIGKILL");
  }
  const out = {};
  try { await ctx.step.sleep("x", 10); } catch (e) { out.diverged = [e.name, e.code, e.message.includes('"x"')]; }
  try { await ctx.step.run("", () => 1); } catch (e) { out.usage = [e.name, e.code]; }
  try { await ctx.step.command("r", ["true"], { retry: 0 }); } catch (e) { out.retry = [e.name, e.code]; }
  try { await ctx.progress(-1, 3); } catch (e) { out.progress = [e.name, e.code]; }
  if (args.uncaught) await ctx.step.sleep("x", 10);
  return out;
}
"#;

const DIVERGE_PY: &str = r#"
import os, signal

def main(args, ctx):
    if ctx.attempt == 1:
        ctx.step.run("x", lambda: 1)
        os.kill(os.getpid(), signal.SIGKILL)
    out = {}
    try:
        ctx.step.sleep("x", 0.01)
    except Exception as e:
        out["diverged"] = [type(e).__name__, e.code, '"x"' in str(e)]
    try:
        ctx.step.run("", lambda: 1)
    except Exception as e:
        out["usage"] = [type(e).__name__, e.code]
    try:
        ctx.step.command("r", ["true"], retry=0)
    except Exception as e:
        out["retry"] = [type(e).__name__, e.code]
    try:
        ctx.progress(-1, 3)
    except Exception as e:
        out["progress"] = [type(e).__name__, e.code]
    if args.get("uncaught"):
        ctx.step.sleep("x", 0.01)
    return out
"#;

fn divergence_and_usage(lang: Lang) {
    let (b, d) = builder(json!({}));
    let server = b.start();
    let source = lang.pick(DIVERGE_JS, DIVERGE_PY);
    let caught = launch(&server, lang, &d, source, json!({}));
    let uncaught = launch(&server, lang, &d, source, json!({ "uncaught": true }));

    let body = server.wait_run_terminal(&caught, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}\n{}", stderr(&server, &caught, 2));
    assert_eq!(
        body["run"]["output"],
        json!({
            "diverged": ["StepDivergedError", "STEP_DIVERGED", true],
            "usage": ["UsageError", "USAGE"],
            "retry": ["UsageError", "USAGE"],
            "progress": ["UsageError", "USAGE"],
        }),
        "{body}"
    );
    assert_eq!(labels(&body), ["x"], "nothing refused was journaled: {body}");

    // Uncaught, a divergence ends the workflow with the CLI's exit code for a step that
    // could not run (3), its code on stderr.
    let body = server.wait_run_terminal(&uncaught, WAIT);
    assert_eq!(body["run"]["status"], json!("failed"), "{body}");
    let error = body["run"]["error"].as_str().unwrap();
    assert!(error.starts_with("exit code 3"), "{body}");
    assert!(stderr(&server, &uncaught, 2).contains("STEP_DIVERGED"), "{body}");
}

#[test]
fn javascript_divergence_and_usage_errors_are_typed_and_exit_3_uncaught() {
    divergence_and_usage(Lang::Js);
}

#[test]
fn python_divergence_and_usage_errors_are_typed_and_exit_3_uncaught() {
    divergence_and_usage(Lang::Py);
}

// ---------------------------------------------------------------- a guardrail

const GUARD_JS: &str = r#"
import { appendFileSync } from "node:fs";
export default async function main(args, ctx) {
  for (let i = 1; i <= 5; i++) {
    await ctx.step.run(`s-${i}`, () => { appendFileSync("@D/side", `${i}\n`); return i; });
  }
  return "not reached";
}
"#;

const GUARD_PY: &str = r#"
def main(args, ctx):
    for i in range(1, 6):
        def side(i=i):
            with open("@D/side", "a") as f:
                f.write(f"{i}\n")
            return i
        ctx.step.run(f"s-{i}", side)
    return "not reached"
"#;

fn guardrail(lang: Lang) {
    let (b, d) = builder(json!({ "maxSteps": 3 }));
    let server = b.start();
    let source = lang.pick(GUARD_JS, GUARD_PY);
    let id = launch(&server, lang, &d, source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("aborted_limit"), "{body}");
    assert!(body["run"]["error"].as_str().unwrap().contains("SCRIPT_RUN_MAX_STEPS"), "{body}");
    assert_eq!(labels(&body), ["s-1", "s-2", "s-3"]);
    // The fourth step's function never ran: the SDK asks before it runs anything.
    assert_eq!(lines(&d.join("side")), ["1", "2", "3"]);
}

#[test]
fn javascript_guardrail_stops_the_run_before_the_next_function_runs() {
    guardrail(Lang::Js);
}

#[test]
fn python_guardrail_stops_the_run_before_the_next_function_runs() {
    guardrail(Lang::Py);
}

// ---------------------------------------------------------------- the label lint

#[test]
fn a_literal_label_inside_a_typescript_or_python_loop_is_refused_at_launch_with_its_line() {
    let (b, _d) = builder(json!({}));
    let server = b.start();
    let ts = "export default async function main(args, ctx) {\n  for (const claim of args.claims) {\n    await ctx.step.run(\"verify\", () => claim);\n  }\n}\n";
    let py =
        "def main(args, ctx):\n    for claim in args[\"claims\"]:\n        ctx.step.run(\"verify\", lambda: claim)\n";
    for (interpreter, source, line) in [("node", ts, 3), ("python", py, 3)] {
        let r = server.launch_run(json!({ "source": source, "interpreter": interpreter, "args": {} }));
        crate::common::assert_error(&r, 400, "label_lint_violation");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("line {line}")) && message.contains("\"verify\""), "{message}");
    }
    let fine = "export default async function main(args, ctx) {\n  for (const [i, claim] of args.claims.entries()) {\n    await ctx.step.run(`verify-${i}`, () => claim);\n  }\n  return 1;\n}\n";
    let r = server.launch_run(json!({ "source": fine, "interpreter": "node", "args": { "claims": ["a"] } }));
    assert_eq!(r.status, 201, "{}", r.text);
}

// ---------------------------------------------------------------- two runs at once

const FAN_JS: &str = r#"
import { appendFileSync } from "node:fs";
export default async function main(args, ctx) {
  const items = await ctx.step.value("items", () => args.items);
  const results = await Promise.all(items.map((item, i) => ctx.step.run(`item-${i}`, async () => {
    appendFileSync(`@D/side-${args.tag}`, `${item}\n`);
    await new Promise((resolve) => setTimeout(resolve, 20));
    return item * 10;
  })));
  const total = await ctx.step.command("total", ["sh", "-c", `echo ${results.reduce((a, b) => a + b, 0)}`]);
  return { tag: args.tag, results, total: Number(total.stdout.trim()) };
}
"#;

const FAN_PY: &str = r#"
import time
from concurrent.futures import ThreadPoolExecutor

def main(args, ctx):
    items = ctx.step.value("items", lambda: args["items"])
    def one(i, item):
        def work():
            with open(f"@D/side-{args['tag']}", "a") as f:
                f.write(f"{item}\n")
            time.sleep(0.02)
            return item * 10
        return ctx.step.run(f"item-{i}", work)
    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(lambda p: one(*p), enumerate(items)))
    total = ctx.step.command("total", ["sh", "-c", f"echo {sum(results)}"])
    return {"tag": args["tag"], "results": results, "total": int(total.stdout.strip())}
"#;

fn two_runs_at_once(lang: Lang) {
    let (b, d) = builder(json!({}));
    let server = b.start();
    let source = lang.pick(FAN_JS, FAN_PY);
    let one = launch(&server, lang, &d, source, json!({ "tag": "one", "items": [1, 2, 3, 4, 5] }));
    let two = launch(&server, lang, &d, source, json!({ "tag": "two", "items": [6, 7, 8, 9, 10] }));
    for (id, tag, items) in [(&one, "one", [1, 2, 3, 4, 5]), (&two, "two", [6, 7, 8, 9, 10])] {
        let body = server.wait_run_terminal(id, WAIT);
        assert_eq!(body["run"]["status"], json!("completed"), "{body}");
        let results: Vec<i64> = items.iter().map(|i| i * 10).collect();
        let total: i64 = results.iter().sum();
        assert_eq!(body["run"]["output"], json!({ "tag": tag, "results": results, "total": total }), "{body}");
        assert_eq!(body["journal"].as_array().unwrap().len(), 7, "{body}");
        let mut side = lines(&d.join(format!("side-{tag}")));
        side.sort_by_key(|s| s.parse::<i64>().unwrap());
        let expected: Vec<String> = items.iter().map(i64::to_string).collect();
        assert_eq!(side, expected, "each item's function ran once");
    }
}

#[test]
fn two_javascript_runs_at_once_each_fanning_out_steps_keep_their_own_journals() {
    two_runs_at_once(Lang::Js);
}

#[test]
fn two_python_runs_at_once_each_fanning_out_steps_keep_their_own_journals() {
    two_runs_at_once(Lang::Py);
}

// ---------------------------------------------------------------- configured workflows

#[test]
fn a_configured_workflow_with_an_interpreter_runs_its_file_not_executable_through_the_loader() {
    let (b, d) = builder(json!({}));
    // Not executable, no `#!` line: the interpreter reads it.
    let file = d.join("workflows/double.py");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        "def main(args, ctx):\n    return {\"double\": ctx.step.run(\"double\", lambda: args[\"n\"] * 2)}\n",
    )
    .unwrap();
    let plain = d.join("workflows/plain.mjs");
    std::fs::write(&plain, "console.log(JSON.stringify({ plain: process.env.SCRIPT_RUN_ARGS }));\n").unwrap();
    let server = b
        .raw_script(json!({ "id": "double", "kind": "workflow", "path": file, "interpreter": [which("python3")] }))
        .raw_script(json!({ "id": "plain", "kind": "workflow", "path": plain, "interpreter": [which("node")] }))
        .start();
    let r = server.launch_run(json!({ "workflowId": "double", "args": { "n": 21 }, "background": false }));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["run"]["status"], json!("completed"), "{}", r.text);
    assert_eq!(r.body["run"]["output"], json!({ "double": 42 }), "{}", r.text);
    // A source without `main` runs as it always did: its stdout is its output.
    let r = server.launch_run(json!({ "workflowId": "plain", "args": { "n": 1 }, "background": false }));
    assert_eq!(r.body["run"]["output"], json!({ "plain": "{\"n\":1}" }), "{}", r.text);
}

#[test]
fn check_config_refuses_an_interpreter_on_a_script_or_by_relative_path() {
    for (entry, needle) in [
        (json!({ "id": "s", "path": "/bin/true", "interpreter": ["/bin/sh"] }), "interpreter: only a workflow"),
        (
            json!({ "id": "w", "kind": "workflow", "path": "/bin/true", "interpreter": ["node"] }),
            "node must be an absolute path",
        ),
        (json!({ "id": "w", "kind": "workflow", "path": "/nonexistent.py", "interpreter": ["/bin/sh"] }), "path:"),
    ] {
        let out = Builder::new().raw_script(entry).write().check_config();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
}

// ---------------------------------------------------------------- the ported examples

/// The offline stand-ins of the examples' LLM and agent calls, as configured scripts: each is
/// a wrapper that appends its step key to `<dir>/calls` and runs `examples/agents/<name>.sh`.
const AGENTS: [&str; 6] = ["classify", "follow-up", "verify-claim", "synthesize", "revise", "review"];

/// A deployment with the examples as configured workflows (TypeScript under tsx, Python under
/// python3) and their stand-in scripts.
fn examples() -> (Builder, PathBuf) {
    let b = Builder::new();
    let dir = b.dir().to_path_buf();
    let mut b = b.workflows(json!({}));
    for name in AGENTS {
        let agent = Path::new(REPO).join(format!("examples/agents/{name}.sh"));
        let body = format!(
            "echo \"$SCRIPT_STEP_KEY\" >> '{}/calls'\nexec '{}' \"$@\"",
            dir.display(),
            std::fs::canonicalize(agent).unwrap().display()
        );
        b = b.script_entry(name, &body, json!({ "mode": "async", "args": { "maxItems": 10, "itemMaxLength": 65536 } }));
    }
    let (tsx, python) = (tsx(), which("python3"));
    for (id, file, interpreter) in [
        ("classify-ts", "typescript/classify-and-act.ts", &tsx),
        ("fan-out-ts", "typescript/fan-out-and-synthesize.ts", &tsx),
        ("loop-ts", "typescript/loop-until-done.ts", &tsx),
        ("classify-py", "python/classify_and_act.py", &python),
        ("fan-out-py", "python/fan_out_and_synthesize.py", &python),
        ("loop-py", "python/loop_until_done.py", &python),
    ] {
        let path = std::fs::canonicalize(Path::new(REPO).join("examples").join(file)).unwrap();
        b = b.raw_script(json!({ "id": id, "kind": "workflow", "path": path, "interpreter": [interpreter] }));
    }
    (b, dir)
}

/// The examples' launch arguments (the seed patterns' own).
fn example_args(id: &str) -> Value {
    match id.split('-').next().unwrap() {
        "classify" => json!({ "item": "Production API is down for every customer since 09:12" }),
        "fan" => json!({ "claims": [
            "Script Workflow runs journal every ctx.step.* call by label.",
            "A repeated durable label replays the first journaled result.",
            "SCRIPT_RUN_MAX_AGENT_TASKS defaults to 50.",
        ] }),
        _ => json!({
            "maxPasses": 3,
            "rubric": "Clear, specific, no invented claims, under 120 words.",
            "startingDraft": "Agent Swarm lets teams run durable agent workflows and inspect each step.",
        }),
    }
}

/// Waits until the run sleeps in a `sleep` step with a live process; returns that pid.
fn sleeping_pid(server: &TestServer, id: &str) -> i32 {
    let body = server.wait_run_body(id, "in a sleep step with a pid", WAIT, |b| {
        b["run"]["pid"].is_i64()
            && b["journal"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["stepType"] == json!("sleep") && e["status"] == json!("started"))
    });
    i32::try_from(body["run"]["pid"].as_i64().unwrap()).unwrap()
}

/// A run's output with its own id replaced (the stand-ins echo their step keys).
fn output_of(body: &Value) -> Value {
    let run = if body["run"].is_object() { &body["run"] } else { body };
    let text = run["output"].to_string().replace(run["id"].as_str().unwrap(), "<run>");
    serde_json::from_str(&text).unwrap()
}

/// Every script step of the run called its stand-in once: its step key is in `calls` once.
fn assert_called_once(dir: &Path, body: &Value) {
    let calls = lines(&dir.join("calls"));
    let run = body["run"]["id"].as_str().unwrap();
    for e in body["journal"].as_array().unwrap().iter().filter(|e| e["stepType"] == json!("script")) {
        let key = format!("{run}:{}", e["stepKey"].as_str().unwrap());
        assert_eq!(calls.iter().filter(|c| **c == key).count(), 1, "{key} in {calls:?}");
    }
}

#[test]
fn the_examples_replay_after_a_kill_9_of_the_workflow_and_of_the_server() {
    let (b, d) = examples();
    let mut server = b.start();
    for id in ["classify-ts", "fan-out-ts", "loop-ts", "classify-py", "fan-out-py", "loop-py"] {
        // Undisturbed, for the output a crash must not change.
        let r = server.launch_run(json!({ "workflowId": id, "args": example_args(id), "background": false }));
        assert_eq!(r.status, 201, "{}", r.text);
        let clean = &r.body["run"];
        assert_eq!(clean["status"], json!("completed"), "{id}: {clean}");
        assert!(clean["output"].is_object(), "{id}: {clean}");
        let clean = output_of(clean);

        // kill -9 of the workflow process in its sleep: the server restarts it with replay.
        let r = server.launch_run(json!({ "workflowId": id, "args": example_args(id) }));
        let killed = r.body["run"]["id"].as_str().unwrap().to_string();
        signal(sleeping_pid(&server, &killed), libc::SIGKILL);
        let body = server.wait_run_terminal(&killed, WAIT);
        assert_eq!(body["run"]["status"], json!("completed"), "{id}: {body}");
        assert_eq!(body["run"]["attempt"], json!(2), "{id}: {body}");
        assert_eq!(output_of(&body), clean, "{id}: {body}");
        assert_called_once(&d, &body);

        // kill -9 of the server while the workflow sleeps: the restarted server resumes it.
        let r = server.launch_run(json!({ "workflowId": id, "args": example_args(id) }));
        let orphaned = r.body["run"]["id"].as_str().unwrap().to_string();
        sleeping_pid(&server, &orphaned);
        server.kill9();
        server.restart();
        let body = server.wait_run_terminal(&orphaned, WAIT);
        assert_eq!(body["run"]["status"], json!("completed"), "{id}: {body}");
        assert_eq!(output_of(&body), clean, "{id}: {body}");
        assert_called_once(&d, &body);
    }
}
