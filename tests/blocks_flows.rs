//! Blocks and flows (issue 4): every job block through `script-runner block` against a real
//! server, the block error kinds, flow validation (every input handle of a node's block listed,
//! as OOMOL's engine needs; `flow run --check`), and the flow runner's semantics (parallelism,
//! fail-fast, timeout, fan-in, flow inputs/outputs, durable replay, flow-1).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{entry, labels, wait_file, Builder, Deployment, TestServer, BIN};
use serde_json::{json, Value};

const BLOCKS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../blocks");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The outcome of a CLI call.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

fn cli(args: &[&str]) -> Out {
    let out = Command::new(BIN).args(args).output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `script-runner block <name> --inputs <json>`.
fn block(name: &str, inputs: Value) -> Out {
    cli(&["block", name, "--inputs", &inputs.to_string()])
}

/// Runs a block that must succeed; returns its outputs.
fn ok_block(name: &str, inputs: Value) -> Value {
    let out = block(name, inputs.clone());
    assert_eq!(out.code, 0, "block {name} {inputs}: stdout {} stderr {}", out.stdout, out.stderr);
    out.json()
}

/// Copies every block manifest into `<dir>/blocks/<name>/block.oo.yaml`.
fn copy_blocks(dir: &Path) {
    for entry in std::fs::read_dir(BLOCKS_DIR).unwrap() {
        let entry = entry.unwrap();
        let manifest = entry.path().join("block.oo.yaml");
        if manifest.is_file() {
            let target = dir.join("blocks").join(entry.file_name());
            std::fs::create_dir_all(&target).unwrap();
            std::fs::copy(&manifest, target.join("block.oo.yaml")).unwrap();
        }
    }
}

/// The line a test flow puts last in a node's `inputs_from` (at the entries' indentation) to
/// list every other input handle of the node's block at its manifest default; see
/// [`other_handles`]. Not YAML: a flow that is not expanded does not parse.
const OTHER_HANDLES: &str = "- (the other handles, at their defaults)";

/// The `inputs_from` entries, indented by `indent`, of every input handle of `block` (its
/// `blocks/<block>/block.oo.yaml`) not in `listed`, each with its manifest default: a bare
/// `value:` for null. A handle without a default has nothing to list and is left out (the
/// flow check reports it). OOMOL's engine runs a node only when every handle is listed.
fn other_handles(block: &str, listed: &[String], indent: &str) -> String {
    let path = Path::new(BLOCKS_DIR).join(block).join("block.oo.yaml");
    let manifest = script_runner_blocks::manifest::Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    for def in manifest.inputs.iter().filter(|d| !listed.contains(&d.handle)) {
        match &def.value {
            None => {}
            Some(Value::Null) => out.push_str(&format!("{indent}- handle: {}\n{indent}  value:\n", def.handle)),
            // JSON is YAML.
            Some(value) => out.push_str(&format!("{indent}- handle: {}\n{indent}  value: {value}\n", def.handle)),
        }
    }
    out
}

/// Replaces each [`OTHER_HANDLES`] line with [`other_handles`] of its node: the block is the
/// node's `task: self::<block>`, the listed handles the node's `- handle:` entries above the
/// line at its indentation.
fn expand_other_handles(yaml: &str) -> String {
    let mut out = String::new();
    let mut block: Option<&str> = None;
    let mut listed: Vec<(usize, String)> = Vec::new();
    for line in yaml.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with("- node_id:") && indent == 2 {
            block = None;
            listed.clear();
        } else if let Some(name) = trimmed.strip_prefix("task: self::") {
            block = Some(name.trim());
        } else if let Some(handle) = trimmed.strip_prefix("- handle:") {
            listed.push((indent, handle.trim().to_string()));
        }
        if trimmed == OTHER_HANDLES {
            let block = block.unwrap_or_else(|| panic!("{OTHER_HANDLES} outside a block node:\n{yaml}"));
            let here: Vec<String> = listed.iter().filter(|(i, _)| *i == indent).map(|(_, h)| h.clone()).collect();
            out.push_str(&other_handles(block, &here, &line[..indent]));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Writes `<dir>/flows/<name>/flow.oo.yaml` (blocks copied beside), [`OTHER_HANDLES`] lines
/// expanded; returns its path.
fn write_flow(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    if !dir.join("blocks").exists() {
        copy_blocks(dir);
    }
    let folder = dir.join("flows").join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("flow.oo.yaml");
    std::fs::write(&path, expand_other_handles(yaml)).unwrap();
    path
}

/// A flow run: exit code, events, the outputs (last line), stderr.
struct FlowOut {
    code: i32,
    events: Vec<Value>,
    outputs: Value,
    stderr: String,
    stdout: String,
}

impl FlowOut {
    fn index(&self, event: &str, node: &str) -> Vec<usize> {
        self.events
            .iter()
            .enumerate()
            .filter(|(_, e)| e["event"] == event && e["node"] == node)
            .map(|(i, _)| i)
            .collect()
    }

    fn finished(&self) -> &Value {
        self.events
            .iter()
            .find(|e| e["event"] == "flow_finished")
            .unwrap_or_else(|| panic!("no flow_finished: {}", self.stdout))
    }
}

/// `script-runner flow run <path> [--input <k=v>]...`.
fn flow_run(path: &Path, inputs: &[String]) -> FlowOut {
    let mut args = vec!["flow", "run", path.to_str().unwrap()];
    for i in inputs {
        args.extend(["--input", i.as_str()]);
    }
    let Out { code, stdout, stderr } = cli(&args);
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect();
    let (events, outputs) = match lines.split_last() {
        Some((last, rest)) => (rest.to_vec(), last.clone()),
        None => (Vec::new(), Value::Null),
    };
    FlowOut { code, events, outputs, stderr, stdout }
}

fn url_input(server: &TestServer) -> String {
    format!("script_runner_url={}", server.base)
}

/// Writes the flow `name` into the server's folder and runs it with the server's URL as its
/// `script_runner_url` input.
fn run_flow_against(server: &TestServer, name: &str, yaml: &str) -> FlowOut {
    let path = write_flow(server.dir(), name, yaml);
    flow_run(&path, &[url_input(server)])
}

fn job_server() -> TestServer {
    Builder::new()
        .script("echo", "echo hi $1")
        .script("lines", "for i in 1 2 3 4 5; do echo line$i; done; echo err-line >&2")
        .script("slow", "sleep 30")
        .script("fail", "echo oops >&2; exit 3")
        .start()
}

// ---------------------------------------------------------------- (1) job blocks

#[test]
fn run_script_sync_block_returns_streams_exit_code_and_status() {
    let server = job_server();
    let url = &server.base;
    let out = ok_block("run-script-sync", json!({ "script_id": "echo", "args": ["there"], "script_runner_url": url }));
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "hi there", "{out}");
    assert_eq!(out["stderr"], "", "{out}");
    assert_eq!(out["exit_code"], 0, "{out}");
    assert_eq!(out["status"], "succeeded", "{out}");

    let out = ok_block("run-script-sync", json!({ "script_id": "fail", "script_runner_url": url }));
    assert_eq!(out["exit_code"], 3, "{out}");
    assert_eq!(out["status"], "failed", "{out}");
    assert!(out["stderr"].as_str().unwrap().contains("oops"), "{out}");
}

#[test]
fn async_job_blocks_status_wait_logs_and_lists() {
    let server = job_server();
    let url = &server.base;
    let started = ok_block("run-script-async", json!({ "script_id": "lines", "script_runner_url": url }));
    let job_id = started["job_id"].as_str().unwrap().to_string();
    assert!(!job_id.is_empty());

    let waited = ok_block(
        "wait-job",
        json!({ "job_id": job_id, "timeout_sec": 20, "poll_interval_ms": 50, "script_runner_url": url }),
    );
    assert_eq!(waited["status"], "succeeded", "{waited}");
    assert_eq!(waited["exit_code"], 0, "{waited}");
    assert_eq!(waited["job_id"], job_id.as_str(), "{waited}");
    assert!(waited["stdout_preview"].as_str().unwrap().contains("line5"), "{waited}");

    let status = ok_block("get-job-status", json!({ "job_id": job_id, "script_runner_url": url }));
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["exit_code"], 0, "{status}");
    assert!(status["stdout_preview"].as_str().unwrap().contains("line1"), "{status}");
    assert!(status["stderr_preview"].as_str().unwrap().contains("err-line"), "{status}");

    let page = ok_block("get-job-logs", json!({ "job_id": job_id, "offset": 1, "limit": 2, "script_runner_url": url }));
    assert_eq!(page["logs"], json!(["line2", "line3"]), "{page}");
    assert_eq!(page["total_lines"], 5, "{page}");
    let all = ok_block("get-job-logs", json!({ "job_id": job_id, "script_runner_url": url }));
    assert_eq!(all["logs"], json!(["line1", "line2", "line3", "line4", "line5"]), "{all}");
    let err = ok_block("get-job-logs", json!({ "job_id": job_id, "stream": "stderr", "script_runner_url": url }));
    assert_eq!(err["logs"], json!(["err-line"]), "{err}");
    assert_eq!(err["total_lines"], 1, "{err}");

    // Another job of another script, so the filter has something to filter out.
    ok_block("run-script-sync", json!({ "script_id": "echo", "script_runner_url": url }));
    let listed = ok_block("list-jobs", json!({ "script_id": "lines", "script_runner_url": url }));
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["jobs"][0]["jobId"], job_id.as_str(), "{listed}");
    let listed = ok_block("list-jobs", json!({ "script_runner_url": url }));
    assert_eq!(listed["total"], 2, "{listed}");

    let scripts = ok_block("list-scripts", json!({ "script_runner_url": url }));
    let ids: Vec<&str> = scripts["scripts"].as_array().unwrap().iter().filter_map(|s| s["id"].as_str()).collect();
    for id in ["echo", "lines", "slow", "fail"] {
        assert!(ids.contains(&id), "{id} not in {scripts}");
    }
}

#[test]
fn cancel_job_block_cancels_a_running_job_and_reports_an_ended_one() {
    let server = job_server();
    let url = &server.base;
    let job_id = ok_block("run-script-async", json!({ "script_id": "slow", "script_runner_url": url }))["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    server.wait_job(&job_id, Duration::from_secs(20), |s| s == "running");
    let out = ok_block("cancel-job", json!({ "job_id": job_id, "script_runner_url": url }));
    assert_eq!(out["success"], true, "{out}");
    assert!(out["message"].as_str().unwrap().contains(&job_id), "{out}");
    let job = server.wait_terminal(&job_id, Duration::from_secs(20));
    assert_eq!(job["status"], "canceled", "{job}");

    let again = ok_block("cancel-job", json!({ "job_id": job_id, "script_runner_url": url }));
    assert_eq!(again["success"], false, "{again}");
    assert!(again["message"].as_str().unwrap().contains("already ended"), "{again}");

    let waited = ok_block("wait-job", json!({ "job_id": job_id, "script_runner_url": url }));
    assert_eq!(waited["status"], "canceled", "{waited}");
}

// ---------------------------------------------------------------- (2) error kinds

#[test]
fn block_errors_server_down_http_error_and_bad_input() {
    // Nothing listens there, and no other test's server or connection can take it meanwhile.
    let port = crate::common::unused_port();
    let down = format!("http://127.0.0.1:{port}");
    let out = block("list-scripts", json!({ "script_runner_url": down }));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("cannot reach script-runner at {down}")), "{}", out.stderr);

    let server = job_server();
    let out = block("run-script-sync", json!({ "script_id": "no-such-script", "script_runner_url": server.base }));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("400") && out.stderr.contains("SCRIPT_NOT_FOUND"), "{}", out.stderr);

    let out = block("run-script-sync", json!({ "script_id": 3, "script_runner_url": server.base }));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("script_id"), "{}", out.stderr);

    let out = block("get-job-status", json!({ "jobid": "x", "script_runner_url": server.base }));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("jobid") && out.stderr.contains("job_id"), "{}", out.stderr);
}

#[test]
fn token_input_is_sent_as_bearer() {
    let server = Builder::new().server("authToken", json!("s3cret-token")).script("echo", "echo hi $1").start();
    let out = block("list-scripts", json!({ "script_runner_url": server.base }));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("401") && out.stderr.contains("UNAUTHORIZED"), "{}", out.stderr);
    let out = ok_block("list-scripts", json!({ "script_runner_url": server.base, "token": "s3cret-token" }));
    assert_eq!(out["scripts"][0]["id"], "echo", "{out}");
    let out = ok_block(
        "run-script-sync",
        json!({ "script_id": "echo", "args": ["x"], "script_runner_url": server.base, "token": "s3cret-token" }),
    );
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "hi x", "{out}");
}

// ---------------------------------------------------------------- (3) flow validation

#[test]
fn flow_validation_lists_every_problem_with_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_flow(
        dir.path(),
        "bad",
        r#"
nodes:
  - node_id: typo-block
    task: self::run-script-sinc
    inputs_from:
      - handle: script_id
        value: echo
  - node_id: typo-input
    task: self::run-script-sync
    inputs_from:
      - handle: script_id
        value: echo
      - handle: argz
        value: []
      - (the other handles, at their defaults)
  - node_id: producer
    task: self::run-script-async
    inputs_from:
      - handle: script_id
        value: echo
      - (the other handles, at their defaults)
  - node_id: typo-output
    task: self::get-job-status
    inputs_from:
      - handle: job_id
        from_node:
          - node_id: producer
            output_handle: jobid
      - (the other handles, at their defaults)
  - node_id: no-script
    task: self::run-script-async
    inputs_from:
      - handle: args
        value: []
      - (the other handles, at their defaults)
  - node_id: bad-value
    task: self::get-job-logs
    inputs_from:
      - handle: job_id
        value: j1
      - handle: limit
        value: "ten"
      - (the other handles, at their defaults)
  - node_id: producer
    task: self::list-scripts
  - node_id: loop-a
    task: self::wait-job
    inputs_from:
      - handle: job_id
        from_node:
          - node_id: loop-b
            output_handle: job_id
      - (the other handles, at their defaults)
  - node_id: loop-b
    task: self::wait-job
    inputs_from:
      - handle: job_id
        from_node:
          - node_id: loop-a
            output_handle: job_id
      - (the other handles, at their defaults)
"#,
    );
    let out = flow_run(&path, &[]);
    assert_eq!(out.code, 2, "stdout {} stderr {}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("node_started"), "nothing may run: {}", out.stdout);
    let err = &out.stderr;
    let has_line = |parts: &[&str]| err.lines().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(has_line(&["typo-block", "run-script-sinc", "did you mean", "run-script-sync"]), "unknown block:\n{err}");
    assert!(has_line(&["typo-input", "argz", "did you mean", "args"]), "unknown input:\n{err}");
    assert!(has_line(&["typo-output", "jobid", "did you mean", "job_id"]), "unknown output:\n{err}");
    assert!(has_line(&["node no-script input \"script_id\": not listed in inputs_from"]), "missing input:\n{err}");
    assert!(has_line(&["bad-value", "limit"]), "value vs schema:\n{err}");
    assert!(has_line(&["producer", "duplicate"]), "duplicate id:\n{err}");
    assert!(has_line(&["cycle", "loop-a", "loop-b"]), "cycle:\n{err}");
    // The nodes that list every handle have no such problem.
    for node in ["typo-input", "producer", "bad-value", "loop-a", "loop-b"] {
        assert!(!has_line(&[&format!("node {node} "), "not listed"]), "{node}:\n{err}");
    }
}

#[test]
fn bare_value_is_null_and_ui_fields_are_ignored() {
    let server = job_server();
    let out = run_flow_against(
        &server,
        "ui",
        r#"
title: A flow as the OOMOL editor writes it
description: UI fields everywhere
icon: ":carbon:play:"
ui:
  default_width: 450
inputs_def:
  - handle: script_runner_url
    description: where
    json_schema:
      type: string
      ui:widget: text
nodes:
  - node_id: echo#1
    title: Echo it
    description: a node with UI fields
    icon: ":carbon:terminal:"
    task: self::run-script-sync
    inputs_from:
      - handle: script_id
        value: echo
      - handle: args
        value:
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
outputs_from:
  - handle: out
    from_node:
      - node_id: echo#1
        output_handle: stdout
"#,
    );
    assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
    let started = &out.events[out.index("node_started", "echo#1")[0]];
    assert!(
        started["inputs"].get("args").is_some_and(Value::is_null),
        "bare value: must be null, not the default []: {started}"
    );
    assert_eq!(out.outputs["out"].as_str().unwrap().trim(), "hi", "{}", out.outputs);

    // A bare value on a required, non-nullable input is an explicit null, which the schema refuses.
    let path = write_flow(
        server.dir(),
        "bare-required",
        r#"
nodes:
  - node_id: n
    task: self::run-script-sync
    inputs_from:
      - handle: script_id
        value:
      - (the other handles, at their defaults)
"#,
    );
    let out = flow_run(&path, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("1 problem(s)"), "{}", out.stderr);
    assert!(
        out.stderr.lines().any(|l| l.contains("node n input \"script_id\": null does not match")),
        "{}",
        out.stderr
    );
}

/// What the flow check says of a node that leaves a handle of its block out.
fn not_listed(node: &str, handle: &str) -> String {
    format!(
        "node {node} input \"{handle}\": not listed in inputs_from, so OOMOL's engine would skip this node \
         (list it with a value, a bare `value:` for null, or a connection)"
    )
}

/// The problems a failed check printed (its `  - <problem>` lines).
fn problems(stderr: &str) -> Vec<&str> {
    stderr.lines().filter_map(|l| l.strip_prefix("  - ")).collect()
}

/// A flow whose nodes leave handles out, even nullable ones with a null default; see
/// [`BROKEN_FLOW_MISSING`].
const BROKEN_FLOW: &str = r#"
inputs_def:
  - handle: script_runner_url
    json_schema:
      type: string
    value: http://127.0.0.1:1
nodes:
  - node_id: start
    task: self::run-script-async
    inputs_from:
      - handle: script_id
        value: lines
      - handle: args
        value: []
      - handle: idempotency_key
        value:
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
  - node_id: status
    task: self::get-job-status
    inputs_from:
      - handle: job_id
        from_node:
          - node_id: start
            output_handle: job_id
  - node_id: wait
    task: self::wait-job
    inputs_from:
      - handle: job_id
        from_node:
          - node_id: start
            output_handle: job_id
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
  - node_id: scripts
    task: self::list-scripts
    inputs_from:
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - handle: token
        value:
"#;

/// Every (node, handle) [`BROKEN_FLOW`] leaves out.
const BROKEN_FLOW_MISSING: [(&str, &str); 6] = [
    ("start", "token"),
    ("status", "script_runner_url"),
    ("status", "token"),
    ("wait", "timeout_sec"),
    ("wait", "poll_interval_ms"),
    ("wait", "token"),
];

/// The failed check of [`BROKEN_FLOW`] lists every handle left out, and nothing else.
fn assert_lists_every_missing_handle(out: &Out) {
    assert_eq!(out.code, 2, "stdout {} stderr {}", out.stdout, out.stderr);
    assert!(out.stdout.trim().is_empty(), "nothing may run: {}", out.stdout);
    let err = &out.stderr;
    assert!(err.contains(&format!("{} problem(s):", BROKEN_FLOW_MISSING.len())), "{err}");
    let expected: Vec<String> = BROKEN_FLOW_MISSING.iter().map(|(n, h)| not_listed(n, h)).collect();
    let mut found = problems(err);
    found.sort_unstable();
    let mut wanted: Vec<&str> = expected.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    assert_eq!(found, wanted, "{err}");
    for (node, handle) in BROKEN_FLOW_MISSING {
        assert!(
            err.lines().any(|l| l.contains(&format!("node {node} input \"{handle}\""))
                && l.contains("OOMOL's engine would skip this node")),
            "{node} {handle}:\n{err}"
        );
    }
}

#[test]
fn a_node_leaving_a_handle_out_is_refused_before_anything_runs() {
    let server = job_server();
    let out = run_flow_against(&server, "left-out", BROKEN_FLOW);
    assert_lists_every_missing_handle(&Out { code: out.code, stdout: out.stdout, stderr: out.stderr });
    // Not even the node that lists all but its nullable token started its job.
    let jobs = server.get("/jobs");
    assert_eq!(jobs.status, 200, "{}", jobs.text);
    assert_eq!(jobs.body["total"], 0, "{}", jobs.text);
}

#[test]
fn a_handle_listed_with_a_bare_value_passes_the_check_and_the_block_gets_null() {
    // No authToken: a null token sends no Authorization header, and a null idempotency_key
    // no key (each run of the flow starts its own job).
    let server = job_server();
    let yaml = r#"
inputs_def:
  - handle: script_runner_url
    json_schema:
      type: string
nodes:
  - node_id: sync
    task: self::run-script-sync
    inputs_from:
      - handle: script_id
        value: echo
      - handle: args
        value: ["x"]
      - handle: timeout_sec
        value: 30
      - handle: idempotency_key
        value:
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - handle: token
        value:
  - node_id: scripts
    task: self::list-scripts
    inputs_from:
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - handle: token
        value:
outputs_from:
  - handle: out
    from_node:
      - node_id: sync
        output_handle: stdout
  - handle: scripts
    from_node:
      - node_id: scripts
        output_handle: scripts
"#;
    let path = write_flow(server.dir(), "bare-token", yaml);
    let check = cli(&["flow", "run", "--check", path.to_str().unwrap(), "--input", &url_input(&server)]);
    assert_eq!(check.code, 0, "stdout {} stderr {}", check.stdout, check.stderr);
    for _ in 0..2 {
        let out = flow_run(&path, &[url_input(&server)]);
        assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
        for node in ["sync", "scripts"] {
            let started = &out.events[out.index("node_started", node)[0]];
            assert!(started["inputs"].get("token").is_some_and(Value::is_null), "{started}");
        }
        let started = &out.events[out.index("node_started", "sync")[0]];
        assert!(started["inputs"].get("idempotency_key").is_some_and(Value::is_null), "{started}");
        assert_eq!(out.outputs["out"].as_str().unwrap().trim(), "hi x", "{}", out.outputs);
        assert!(out.outputs["scripts"].as_array().unwrap().iter().any(|s| s["id"] == "echo"), "{}", out.outputs);
    }
    let jobs = server.get("/jobs");
    assert_eq!(jobs.body["total"], 2, "{}", jobs.text);
}

#[test]
fn flow_check_passes_the_shipped_flows_and_runs_nothing() {
    let repo = Path::new(REPO);
    // Started only to see that the check does not call it.
    let server = job_server();
    for name in ["flow-1", "fan-out-fan-in"] {
        let path = repo.join("flows").join(name).join("flow.oo.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let nodes = text.lines().filter(|l| l.starts_with("  - node_id:")).count();
        assert!(nodes > 1, "{name}: {nodes} nodes");
        let file = path.to_str().unwrap();
        // No server needed: the flow input keeps its default URL, which nothing has to answer.
        let out = cli(&["flow", "run", "--check", file]);
        assert_eq!(out.code, 0, "{name}: stdout {} stderr {}", out.stdout, out.stderr);
        assert_eq!(out.stdout, format!("{file}: ok ({nodes} nodes)\n"), "{name}");
        assert_eq!(out.stderr, "", "{name}");
        let url = url_input(&server);
        let out = cli(&["flow", "run", "--check", file, "--input", &url]);
        assert_eq!(out.code, 0, "{name}: stdout {} stderr {}", out.stdout, out.stderr);
        assert_eq!(out.stdout, format!("{file}: ok ({nodes} nodes)\n"), "{name}");
    }
    assert_eq!(server.get("/jobs").body["total"], 0, "the check started a job");
    assert_eq!(server.get("/api/script-runs").body["total"], 0, "the check launched a run");
}

#[test]
fn flow_check_of_a_broken_flow_exits_2_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_flow(dir.path(), "left-out", BROKEN_FLOW);
    let out = cli(&["flow", "run", "--check", path.to_str().unwrap()]);
    assert_lists_every_missing_handle(&out);
    assert!(out.stderr.contains(path.to_str().unwrap()), "the message names the file: {}", out.stderr);
}

#[test]
fn an_entry_with_neither_value_nor_connection_is_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_flow(
        dir.path(),
        "handle-only",
        r#"
nodes:
  - node_id: handle-only
    task: self::list-scripts
    inputs_from:
      - handle: script_runner_url
        value: http://127.0.0.1:1
      - handle: token
  - node_id: no-links
    task: self::list-scripts
    inputs_from:
      - handle: script_runner_url
        value: http://127.0.0.1:1
      - handle: token
        from_node: []
  - node_id: bare-value
    task: self::list-scripts
    inputs_from:
      - handle: script_runner_url
        value: http://127.0.0.1:1
      - handle: token
        value:
"#,
    );
    let out = cli(&["flow", "run", "--check", path.to_str().unwrap()]);
    assert_eq!(out.code, 2, "stdout {} stderr {}", out.stdout, out.stderr);
    assert_eq!(
        problems(&out.stderr),
        [not_listed("handle-only", "token"), not_listed("no-links", "token")],
        "{}",
        out.stderr
    );
}

#[test]
fn the_test_helper_lists_the_other_handles_at_their_defaults() {
    use script_runner_blocks::flow::{self, Source};
    let yaml = r#"
nodes:
  - node_id: n
    task: self::run-script-sync
    inputs_from:
      - handle: script_id
        value: echo
      - handle: token
        value: t
      - (the other handles, at their defaults)
"#;
    let expanded = expand_other_handles(yaml);
    let parsed = flow::parse(&expanded, Path::new("flow.oo.yaml"), Path::new(REPO), &serde_json::Map::new());
    let flow = parsed.unwrap_or_else(|p| panic!("{p}\n{expanded}"));
    let inputs = &flow.nodes[0].inputs;
    let value = |h: &str| match inputs.get(h) {
        Some(Source::Value(v)) => v.clone(),
        other => panic!("{h}: {other:?}\n{expanded}"),
    };
    // Listed ones kept (once), the others at their manifest defaults, null ones bare.
    assert_eq!(value("script_id"), "echo");
    assert_eq!(value("token"), "t");
    assert_eq!(expanded.matches("- handle: token").count(), 1, "{expanded}");
    assert_eq!(value("args"), json!([]));
    assert_eq!(value("idempotency_key"), Value::Null);
    assert!(expanded.contains("- handle: idempotency_key\n        value:\n"), "{expanded}");
}

// ---------------------------------------------------------------- (4)-(8) execution

#[test]
fn independent_slow_nodes_run_in_parallel() {
    let server = Builder::new().script("sleep1", "sleep 1; echo slept $1").start();
    let node = |id: &str| {
        format!(
            r#"
  - node_id: {id}
    task: self::run-script-sync
    inputs_from:
      - handle: script_id
        value: sleep1
      - handle: args
        value: ["{id}"]
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
"#
        )
    };
    let yaml = format!(
        "inputs_def:\n  - handle: script_runner_url\n    json_schema:\n      type: string\nnodes:{}{}",
        node("left"),
        node("right")
    );
    let out = run_flow_against(&server, "parallel", &yaml);
    assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
    let started: Vec<usize> = ["left", "right"].iter().map(|n| out.index("node_started", n)[0]).collect();
    let finished: Vec<usize> = ["left", "right"].iter().map(|n| out.index("node_finished", n)[0]).collect();
    assert!(
        started.iter().max() < finished.iter().min(),
        "both nodes must start before either finishes: {:#?}",
        out.events
    );
    assert_eq!(out.finished()["status"], "succeeded");
}

#[test]
fn first_failure_stops_the_flow_and_downstream_never_starts() {
    let server = job_server();
    let out = run_flow_against(
        &server,
        "failfast",
        r#"
inputs_def:
  - handle: script_runner_url
    json_schema:
      type: string
nodes:
  - node_id: broken
    task: self::run-script-async
    inputs_from:
      - handle: script_id
        value: no-such-script
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
  - node_id: downstream
    task: self::wait-job
    inputs_from:
      - handle: job_id
        from_node:
          - node_id: broken
            output_handle: job_id
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
"#,
    );
    assert_eq!(out.code, 1, "stdout {} stderr {}", out.stdout, out.stderr);
    assert!(out.index("node_started", "downstream").is_empty(), "{:#?}", out.events);
    let failed = &out.events[out.index("node_failed", "broken")[0]];
    assert!(failed["error"].as_str().unwrap().contains("SCRIPT_NOT_FOUND"), "{failed}");
    let fin = out.finished();
    assert_eq!(fin["status"], "failed", "{fin}");
    assert!(fin["error"].as_str().unwrap().contains("broken"), "{fin}");
}

#[test]
fn node_timeout_fails_the_flow() {
    let server = Builder::new().script("slow", "sleep 20").script("echo", "echo hi $1").start();
    let out = run_flow_against(
        &server,
        "timeout",
        r#"
inputs_def:
  - handle: script_runner_url
    json_schema:
      type: string
nodes:
  - node_id: sleepy
    task: self::run-script-sync
    timeout: 1
    inputs_from:
      - handle: script_id
        value: slow
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
  - node_id: after
    task: self::get-job-status
    inputs_from:
      - handle: job_id
        from_node:
          - node_id: sleepy
            output_handle: status
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
"#,
    );
    assert_eq!(out.code, 1, "stdout {} stderr {}", out.stdout, out.stderr);
    let failed = &out.events[out.index("node_failed", "sleepy")[0]];
    assert!(failed["error"].as_str().unwrap().contains("timed out"), "{failed}");
    assert!(out.index("node_finished", "sleepy").is_empty(), "{:#?}", out.events);
    assert!(out.index("node_started", "after").is_empty(), "{:#?}", out.events);
    let fin = out.finished();
    assert_eq!(fin["status"], "failed", "{fin}");
    assert!(fin["error"].as_str().unwrap().contains("sleepy"), "{fin}");
}

#[test]
fn fan_in_runs_once_and_a_node_fed_twice_runs_twice() {
    let server = job_server();
    let yaml = FAN_FLOW.replace("TWICE_URL", &format!("value: {}", server.base));
    fan_in_and_fed_twice(&server, &yaml);
}

#[test]
fn node_fed_twice_that_reads_a_flow_input_runs_twice() {
    let server = job_server();
    let yaml = FAN_FLOW.replace("TWICE_URL", "from_flow:\n          - input_handle: script_runner_url");
    fan_in_and_fed_twice(&server, &yaml);
}

fn fan_in_and_fed_twice(server: &TestServer, yaml: &str) {
    let out = run_flow_against(server, "fan", yaml);
    assert_eq!(out.code, 0, "stdout {} stderr {}", out.stdout, out.stderr);
    let fan = out.index("node_started", "fan");
    assert_eq!(fan.len(), 1, "{:#?}", out.events);
    assert!(fan[0] > out.index("node_finished", "wait-a")[0], "{:#?}", out.events);
    assert!(fan[0] > out.index("node_finished", "b")[0], "{:#?}", out.events);
    assert_eq!(out.outputs["first_lines"], json!(["line1", "line2"]), "{}", out.outputs);
    assert_eq!(out.index("node_started", "twice").len(), 2, "{:#?}", out.events);
    assert_eq!(out.index("node_finished", "twice").len(), 2, "{:#?}", out.events);
    let activations: Vec<&Value> =
        out.index("node_started", "twice").into_iter().map(|i| &out.events[i]["activation"]).collect();
    assert_eq!(activations, [&json!(1), &json!(2)], "{:#?}", out.events);
    assert_eq!(out.index("node_started", "a").len(), 1);
    // The second activation ran after wait-a: the job had ended by then.
    assert_eq!(out.outputs["last_status"], "succeeded", "{}", out.outputs);
}

const FAN_FLOW: &str = r#"
inputs_def:
  - handle: script_runner_url
    json_schema:
      type: string
nodes:
  - node_id: a
    task: self::run-script-async
    inputs_from:
      - handle: script_id
        value: lines
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
  - node_id: b
    task: self::run-script-sync
    inputs_from:
      - handle: script_id
        value: echo
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
  - node_id: wait-a
    task: self::wait-job
    inputs_from:
      - handle: job_id
        from_node:
          - node_id: a
            output_handle: job_id
      - handle: poll_interval_ms
        value: 50
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
  - node_id: fan
    task: self::get-job-logs
    inputs_from:
      - handle: job_id
        from_node:
          - node_id: wait-a
            output_handle: job_id
      - handle: offset
        from_node:
          - node_id: b
            output_handle: exit_code
      - handle: limit
        value: 2
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
  - node_id: twice
    task: self::get-job-status
    inputs_from:
      - handle: job_id
        from_node:
          - node_id: a
            output_handle: job_id
          - node_id: wait-a
            output_handle: job_id
      - handle: script_runner_url
        TWICE_URL
      - (the other handles, at their defaults)
outputs_from:
  - handle: first_lines
    from_node:
      - node_id: fan
        output_handle: logs
  - handle: last_status
    from_node:
      - node_id: twice
        output_handle: status
"#;

// ---------------------------------------------------------------- (9) durable

#[test]
fn durable_flow_replays_completed_nodes_after_a_server_crash() {
    // A fixed port: the flow's script_runner_url input must still reach the server after its
    // restart (the harness picks it and retries the start if it was taken meanwhile).
    let builder = Builder::new().workflows(json!({ "parkAfterSec": 1 }));
    let dir = builder.dir().to_path_buf();
    let side = dir.join("side.txt");
    let sleeping = dir.join("sleeping.txt");
    let mut server = builder
        .script("append", &format!("echo once >> {}; printf sleep3", side.display()))
        .script("sleep3", &format!("echo $$ >> {}; sleep 3; echo slept", sleeping.display()))
        .write()
        .start_on_fixed_port();
    write_flow(
        &dir,
        "durable",
        r#"
inputs_def:
  - handle: script_runner_url
    json_schema:
      type: string
nodes:
  - node_id: first
    task: self::run-script-sync
    inputs_from:
      - handle: script_id
        value: append
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
  - node_id: second
    task: self::run-script-sync
    inputs_from:
      - handle: script_id
        from_node:
          - node_id: first
            output_handle: stdout
      - handle: script_runner_url
        from_flow:
          - input_handle: script_runner_url
      - (the other handles, at their defaults)
outputs_from:
  - handle: slept
    from_node:
      - node_id: second
        output_handle: stdout
"#,
    );
    let r = server.launch_run(json!({ "flow": "durable", "args": { "script_runner_url": server.base } }));
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["run"]["id"].as_str().unwrap().to_string();
    wait_file(&sleeping, Duration::from_secs(20));
    server.kill9();
    server.restart();
    let body = server.wait_run_terminal(&id, Duration::from_secs(30));
    assert_eq!(body["run"]["status"], "completed", "{body}\n{}", server.server_log());
    assert_eq!(std::fs::read_to_string(&side).unwrap(), "once\n", "first node ran again: {body}");
    let keys = labels(&body);
    assert!(keys.iter().any(|k| k == "first") && keys.iter().any(|k| k == "second"), "{body}");
    assert_eq!(keys.iter().filter(|k| *k == "first").count(), 1, "{body}");
    let first = entry(&body, "first");
    assert_eq!(first["status"], "completed", "{body}");
    assert_eq!(first["result"]["stdout"], "sleep3", "{body}");
    assert!(body["run"]["attempt"].as_u64().unwrap() >= 2, "the run resumed after the crash: {body}");
    // The script the second node started is not started again by the replay.
    let starts = std::fs::read_to_string(&sleeping).unwrap();
    assert_eq!(starts.lines().count(), 1, "sleep3 started again: {starts}\n{body}");
}

// ---------------------------------------------------------------- (10) flows/flow-1

#[test]
fn shipped_flow_1_runs_green_against_the_example_service() {
    let dir = tempfile::Builder::new().prefix("sr-flow1-").tempdir().unwrap();
    let repo = Path::new(REPO);
    let mut config: Value = serde_json::from_slice(&std::fs::read(repo.join("config.json")).unwrap()).unwrap();
    config["server"]["port"] = json!(0);
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    std::fs::copy(repo.join("scripts.json"), dir.path().join("scripts.json")).unwrap();
    std::fs::create_dir_all(dir.path().join("examples")).unwrap();
    for entry in std::fs::read_dir(repo.join("examples")).unwrap() {
        let entry = entry.unwrap();
        // The scripts scripts.json names (not the SDK examples' folders).
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join("examples").join(entry.file_name())).unwrap();
        }
    }
    let config = dir.path().join("config.json");
    let server = Deployment { dir, config, database: None }.start();
    let out = flow_run(&repo.join("flows/flow-1/flow.oo.yaml"), &[url_input(&server)]);
    assert_eq!(out.code, 0, "stdout {} stderr {}\n{}", out.stdout, out.stderr, server.server_log());
    let o = &out.outputs;
    assert_eq!(o["async_status"], "succeeded", "{o}");
    assert_eq!(o["stdout_lines"], json!(["step 1/2", "step 2/2"]), "{o}");
    assert_eq!(o["stderr_lines"], json!(["long-task: counting to 2", "long-task: done"]), "{o}");
    let sync = o["sync_stdout"].as_str().unwrap();
    assert!(sync.contains("arg: hello") && sync.contains("arg: world"), "{o}");
    assert_eq!(o["sync_exit_code"], 0, "{o}");
    assert_eq!(out.finished()["status"], "succeeded");
}

/// A server with a workflow that waits for an approval (`gate`) between two steps.
fn run_server() -> TestServer {
    Builder::new()
        .workflows(json!({ "parkAfterSec": 60 }))
        .workflow(
            "gated",
            "script-runner step before -- true >&2\nscript-runner step gate --approval \"go?\" >&2 || exit 4\necho '{\"done\": true}'",
        )
        .start()
}

#[test]
fn workflow_run_blocks_launch_inspect_list_approve_pause_resume_cancel() {
    let server = run_server();
    let url = server.base.clone();
    let launched =
        ok_block("launch-script-run", json!({ "workflow_id": "gated", "args": {"k": 1}, "script_runner_url": url }));
    let run_id = launched["run_id"].as_str().unwrap().to_string();
    assert_eq!(launched["run"]["id"], json!(run_id));
    server.wait_run(&run_id, Duration::from_secs(20), |s| s == "awaiting");

    let got = ok_block("get-script-run", json!({ "run_id": run_id, "script_runner_url": url }));
    assert_eq!(got["status"], "awaiting");
    assert_eq!(labels(&got), ["before", "gate"]);
    assert_eq!(got["output"], Value::Null);

    let listed = ok_block("list-script-runs", json!({ "status": "awaiting", "script_runner_url": url }));
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["runs"][0]["id"], json!(run_id));

    let paused = ok_block("pause-script-run", json!({ "run_id": run_id, "script_runner_url": url }));
    assert_eq!(paused["status"], "paused");
    let resumed = ok_block("resume-script-run", json!({ "run_id": run_id, "script_runner_url": url }));
    assert_eq!(resumed["status"], "running");
    server.wait_run(&run_id, Duration::from_secs(20), |s| s == "awaiting");

    let approved = ok_block(
        "approve-step",
        json!({ "run_id": run_id, "label": "gate", "approved": true, "by": "ci", "script_runner_url": url }),
    );
    assert!(matches!(approved["status"].as_str(), Some("running" | "completed")), "{approved}");
    let done = server.wait_run_terminal(&run_id, Duration::from_secs(20));
    assert_eq!(done["run"]["status"], "completed", "{done}");
    assert_eq!(done["run"]["output"], json!({ "done": true }));

    // A second run, launched and waited for by the block, then cancelled while it awaits.
    let second = ok_block("launch-script-run", json!({ "workflow_id": "gated", "script_runner_url": url }));
    let second_id = second["run_id"].as_str().unwrap().to_string();
    server.wait_run(&second_id, Duration::from_secs(20), |s| s == "awaiting");
    let cancelled = ok_block("cancel-script-run", json!({ "run_id": second_id, "script_runner_url": url }));
    assert_eq!(cancelled["status"], "cancelled");

    // Errors of the run blocks carry the server's code.
    let missing = block("get-script-run", json!({ "run_id": "run_nope", "script_runner_url": url }));
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("404") && missing.stderr.contains("RUN_NOT_FOUND"), "{}", missing.stderr);
    let twice =
        block("approve-step", json!({ "run_id": run_id, "label": "gate", "approved": true, "script_runner_url": url }));
    assert_eq!(twice.code, 1);
    assert!(twice.stderr.contains("409"), "{}", twice.stderr);
}

#[test]
fn a_silent_server_is_a_timeout_and_a_non_json_answer_is_malformed() {
    use std::io::{Read, Write};
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let out = block("run-script-sync", json!({ "script_id": "x", "timeout_sec": 1, "script_runner_url": silent_url }));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("did not answer within 1 s"), "{}", out.stderr);

    // Answers 200 with a body that is not JSON.
    let liar = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let liar_url = format!("http://{}", liar.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in liar.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot json!");
        }
    });
    let out = block("list-scripts", json!({ "script_runner_url": liar_url }));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("malformed response"), "{}", out.stderr);
}
