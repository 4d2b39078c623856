//! The workflow-run API as a client sees it (issue 3): launch, output, failure, source pinning,
//! idempotency, bad input, listing, logs, cancel, pause/resume, fork, run-token isolation and
//! the server's auth token. Every test starts a real server and runs real bash workflows.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::path::Path;
use std::time::Duration;

use crate::common::{
    alive, assert_error, entry, labels, lines, open_gate, wait_file, wait_for_gate, wait_gone, wait_until, Builder,
    Resp, TestServer,
};
use serde_json::{json, Value};

/// Upper bound for anything a test waits for.
const WAIT: Duration = Duration::from_secs(20);

/// The fields of a run on the wire.
const RUN_FIELDS: [&str; 23] = [
    "id",
    "scriptName",
    "workflowId",
    "interpreter",
    "flow",
    "status",
    "args",
    "output",
    "error",
    "warnings",
    "sourceSha256",
    "pid",
    "createdAt",
    "startedAt",
    "finishedAt",
    "lastHeartbeatAt",
    "idempotencyKey",
    "attempt",
    "progress",
    "forkedFrom",
    "retry",
    "attempts",
    "nextAttemptAt",
];

/// The fields of a journal entry on the wire.
const STEP_FIELDS: [&str; 10] =
    ["stepKey", "stepType", "config", "status", "result", "error", "jobId", "startedAt", "completedAt", "durationMs"];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn message(r: &Resp) -> String {
    r.body["error"]["message"].as_str().unwrap_or_default().to_string()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(data))
}

/// Asserts a run object has exactly the documented fields.
fn assert_run_fields(run: &Value) {
    let obj = run.as_object().unwrap_or_else(|| panic!("run is not an object: {run}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = RUN_FIELDS.to_vec();
    if crate::common::on_postgres() {
        // A cluster node names the node that holds the run.
        expected.push("node");
    }
    expected.sort_unstable();
    assert_eq!(keys, expected, "{run}");
}

/// `201 {ok, run}`: returns the run.
fn launched(r: &Resp) -> Value {
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["ok"], json!(true), "{}", r.text);
    assert_run_fields(&r.body["run"]);
    r.body["run"].clone()
}

fn id_of(run: &Value) -> String {
    run["id"].as_str().unwrap().to_string()
}

/// Launches and returns the run id (201 expected).
fn launch(server: &TestServer, body: Value) -> String {
    id_of(&launched(&server.launch_run(body)))
}

/// POSTs raw bytes to `/api/script-runs`.
fn post_raw(server: &TestServer, body: &[u8]) -> Resp {
    server.request("POST", "/api/script-runs", Some(body), &[("Content-Type", "application/json")])
}

/// Polls until `cond` holds, at most [`WAIT`]; the failure names `what`.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    wait_until(|| format!("timed out after {WAIT:?} waiting for {what}"), WAIT, || cond().then_some(()));
}

/// How many lines of the file equal `line`.
fn count(path: &Path, line: &str) -> usize {
    lines(path).iter().filter(|l| *l == line).count()
}

fn pid_in(path: &Path) -> i32 {
    wait_file(path, WAIT).parse().unwrap()
}

fn post_empty(server: &TestServer, path: &str) -> Resp {
    server.post(path, json!({}))
}

fn listed_ids(r: &Resp) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["runs"].as_array().unwrap().iter().map(id_of).collect()
}

// ---------------------------------------------------------------------------------------------
// Launch
// ---------------------------------------------------------------------------------------------

#[test]
fn launch_of_a_configured_workflow_is_201_with_the_run_and_gets_args_on_stdin_and_env() {
    let b = Builder::new();
    let dir = b.dir().to_path_buf();
    let d = dir.display();
    let body = format!(
        r#"cat > {d}/stdin.json
printf '%s' "$SCRIPT_RUN_ARGS" > {d}/env-args.json
printf '%s %s' "$SCRIPT_RUN_ID" "$SCRIPT_RUN_ATTEMPT" > {d}/env-id
script-runner step record -- true
echo '{{"done": true}}'"#
    );
    let server = b.workflows(json!({})).workflow("wf", &body).start();
    let args = json!({ "name": "héllo wörld", "n": [1, 2, 3], "nested": { "q": "it's \"quoted\" $HOME" } });

    let run = launched(&server.launch_run(json!({ "workflowId": "wf", "args": args })));
    let id = id_of(&run);
    assert_eq!(run["workflowId"], json!("wf"), "{run}");
    assert_eq!(run["scriptName"], json!("wf"), "{run}");
    assert_eq!(run["interpreter"], Value::Null, "{run}");
    assert_eq!(run["status"], json!("running"), "{run}");
    assert_eq!(run["attempt"], json!(1), "the answer counts the execution it started: {run}");
    assert_eq!(run["args"], args, "{run}");
    assert_eq!(run["forkedFrom"], Value::Null, "{run}");
    assert_eq!(run["idempotencyKey"], Value::Null, "{run}");
    assert_eq!(run["warnings"], json!([]), "{run}");
    assert!(run["createdAt"].is_string(), "{run}");
    let file = std::fs::read(dir.join("workflows/wf.sh")).unwrap();
    assert_eq!(run["sourceSha256"], json!(sha256_hex(&file)), "{run}");

    let body = server.wait_run_terminal(&id, WAIT);
    let run = &body["run"];
    assert_run_fields(run);
    assert_eq!(run["status"], json!("completed"), "{body}");
    assert_eq!(run["output"], json!({ "done": true }), "{body}");
    assert_eq!(run["error"], Value::Null, "{body}");
    assert_eq!(run["attempt"], json!(1), "{body}");
    assert_eq!(run["pid"], Value::Null, "{body}");
    assert!(run["startedAt"].is_string() && run["finishedAt"].is_string(), "{body}");
    assert_eq!(labels(&body), vec!["record"], "{body}");
    for field in STEP_FIELDS {
        assert!(entry(&body, "record").get(field).is_some(), "journal entry lacks {field}: {body}");
    }

    let stdin: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("stdin.json")).unwrap()).unwrap();
    assert_eq!(stdin, args, "args on stdin");
    let env: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("env-args.json")).unwrap()).unwrap();
    assert_eq!(env, args, "args in SCRIPT_RUN_ARGS");
    assert_eq!(std::fs::read_to_string(dir.join("env-id")).unwrap(), format!("{id} 1"));
}

#[test]
fn launch_of_inline_source_is_201_with_its_sha256_and_gets_args_on_stdin_and_env() {
    let server = Builder::new().workflows(json!({})).start();
    let d = server.dir().display().to_string();
    let source = format!(
        r#"cat > {d}/stdin.json
printf '%s' "$SCRIPT_RUN_ARGS" > {d}/env-args.json
script-runner step greet -- echo hello >/dev/null
echo '["inline", 1]'
"#
    );
    let args = json!({ "list": ["a b", "c"], "k": null });
    let run = launched(&server.launch_run(json!({
        "source": source, "interpreter": "bash", "scriptName": "my-inline", "args": args,
    })));
    assert_eq!(run["interpreter"], json!("bash"), "{run}");
    assert_eq!(run["workflowId"], Value::Null, "{run}");
    assert_eq!(run["scriptName"], json!("my-inline"), "{run}");
    assert_eq!(run["args"], args, "{run}");
    assert_eq!(run["sourceSha256"], json!(sha256_hex(source.as_bytes())), "{run}");

    let body = server.wait_run_terminal(&id_of(&run), WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!(["inline", 1]), "{body}");
    assert_eq!(entry(&body, "greet")["result"]["stdout"], json!("hello\n"), "{body}");
    let dir = server.dir();
    let stdin: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("stdin.json")).unwrap()).unwrap();
    assert_eq!(stdin, args);
    let env: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("env-args.json")).unwrap()).unwrap();
    assert_eq!(env, args);

    // Without args the workflow gets `{}`.
    let r = server.launch_run(json!({ "source": format!("cat > {d}/noargs.json"), "interpreter": "bash" }));
    let run = launched(&r);
    assert_eq!(run["args"], json!({}), "{run}");
    server.wait_run_terminal(&id_of(&run), WAIT);
    let stdin: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("noargs.json")).unwrap()).unwrap();
    assert_eq!(stdin, json!({}));
}

#[test]
fn background_false_answers_when_terminal_with_output_as_json_or_text() {
    let server = Builder::new().workflows(json!({})).start();
    let fg = |source: &str| {
        let r = server.launch_run(json!({ "source": source, "interpreter": "bash", "background": false }));
        let run = launched(&r);
        assert!(run["finishedAt"].is_string(), "{run}");
        run
    };

    let run = fg("script-runner step quiet -- echo noise >&2\nprintf '  {\"a\": 1, \"list\": [1, 2]}  \\n\\n'");
    assert_eq!(run["status"], json!("completed"), "{run}");
    assert_eq!(run["output"], json!({ "a": 1, "list": [1, 2] }), "{run}");

    let run = fg("printf '\\n  hello\\nworld  \\n\\n'");
    assert_eq!(run["status"], json!("completed"), "{run}");
    assert_eq!(run["output"], json!("hello\nworld"), "{run}");

    // A number alone is JSON too; a step's printed stdout makes the whole output text.
    let run = fg("echo 42");
    assert_eq!(run["output"], json!(42), "{run}");
    let run = fg("script-runner step talk -- echo from-step\necho '{\"a\": 1}'");
    assert_eq!(run["output"], json!("from-step\n{\"a\": 1}"), "{run}");

    // The answer is what GET says.
    let body = server.script_run(&id_of(&run));
    assert_eq!(body["run"], run);
}

#[test]
fn a_non_zero_exit_fails_the_run_with_the_exit_code_and_the_stderr_tail() {
    let server = Builder::new().workflows(json!({})).start();
    let source = "script-runner step ok -- true\necho 'early noise' >&2\necho 'fatal: disk full' >&2\nexit 3\n";
    let r = server.launch_run(json!({ "source": source, "interpreter": "bash", "background": false }));
    let run = launched(&r);
    assert_eq!(run["status"], json!("failed"), "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(error.starts_with("exit code 3: "), "{run}");
    assert!(error.trim_end().ends_with("fatal: disk full"), "{run}");
    assert_eq!(run["pid"], Value::Null, "{run}");
    let body = server.script_run(&id_of(&run));
    assert_eq!(body["run"]["status"], json!("failed"));
    assert_eq!(entry(&body, "ok")["status"], json!("completed"), "{body}");

    // Also in the background.
    let id = launch(&server, json!({ "source": "echo oops >&2; exit 7", "interpreter": "bash" }));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("failed"), "{body}");
    assert_eq!(body["run"]["error"], json!("exit code 7: oops"), "{body}");
}

// ---------------------------------------------------------------------------------------------
// Source pinning
// ---------------------------------------------------------------------------------------------

#[test]
fn a_run_keeps_executing_the_source_stored_at_launch_after_the_file_changes() {
    let b = Builder::new();
    let dir = b.dir().to_path_buf();
    let d = dir.display();
    let gate = wait_for_gate(&dir.join("go"));
    let v1 = format!(
        r#"echo "v1 attempt $SCRIPT_RUN_ATTEMPT" >> {d}/ran
script-runner step first -- bash -c 'echo first >> {d}/side'
echo $$ > {d}/pid
{gate}
echo v1-done"#
    );
    let server = b.workflows(json!({})).workflow("wf", &v1).start();
    let file = dir.join("workflows/wf.sh");
    let v1_sha = sha256_hex(&std::fs::read(&file).unwrap());

    let id = launch(&server, json!({ "workflowId": "wf" }));
    let pid = pid_in(&dir.join("pid"));
    server.wait_step(&id, "first", "completed");

    // Edit the workflow file while the run is running.
    let v2 = format!("#!/bin/bash\necho \"v2 attempt $SCRIPT_RUN_ATTEMPT\" >> {d}/ran\necho v2-done\n");
    std::fs::write(&file, &v2).unwrap();

    // A second execution of the same run (pause, resume) still runs v1.
    let r = post_empty(&server, &format!("/api/script-runs/{id}/pause"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(wait_gone(&[pid], WAIT).is_empty(), "the paused execution is still alive");
    std::fs::remove_file(dir.join("pid")).unwrap();
    let r = post_empty(&server, &format!("/api/script-runs/{id}/resume"));
    assert_eq!(r.status, 200, "{}", r.text);
    pid_in(&dir.join("pid"));
    open_gate(&dir.join("go"));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!("v1-done"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    assert_eq!(body["run"]["sourceSha256"], json!(v1_sha), "{body}");
    assert_eq!(lines(&dir.join("ran")), vec!["v1 attempt 1", "v1 attempt 2"]);
    assert_eq!(lines(&dir.join("side")), vec!["first"], "the completed step replayed");

    // A new launch takes the new file.
    let run = launched(&server.launch_run(json!({ "workflowId": "wf", "background": false })));
    assert_eq!(run["output"], json!("v2-done"), "{run}");
    assert_eq!(run["sourceSha256"], json!(sha256_hex(v2.as_bytes())), "{run}");
    assert_eq!(lines(&dir.join("ran")), vec!["v1 attempt 1", "v1 attempt 2", "v2 attempt 1"]);
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

#[test]
fn an_idempotency_key_deduplicates_the_same_launch_and_rejects_a_different_one() {
    let server = Builder::new().workflows(json!({})).workflow("wf", "echo configured").start();
    let d = server.dir().display().to_string();
    let dir = server.dir().to_path_buf();
    let gate = wait_for_gate(&dir.join("go"));
    let source = format!("echo \"ran $SCRIPT_RUN_ID\" >> {d}/ran\n{gate}\necho done");
    let request = json!({ "source": source, "interpreter": "bash", "args": { "n": 1 }, "idempotencyKey": "k1" });

    let first = launched(&server.launch_run(request.clone()));
    let id = id_of(&first);
    assert_eq!(first["idempotencyKey"], json!("k1"), "{first}");
    assert!(first.get("deduplicated").is_none());

    let again = server.launch_run(request.clone());
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["ok"], json!(true), "{}", again.text);
    assert_eq!(again.body["deduplicated"], json!(true), "{}", again.text);
    assert_eq!(again.body["run"]["id"], json!(id), "{}", again.text);
    assert_run_fields(&again.body["run"]);

    // Same key, another request: 409.
    let mut other_args = request.clone();
    other_args["args"] = json!({ "n": 2 });
    assert_error(&server.launch_run(other_args), 409, "IDEMPOTENCY_CONFLICT");
    let mut other_source = request.clone();
    other_source["source"] = json!("echo other");
    assert_error(&server.launch_run(other_source), 409, "IDEMPOTENCY_CONFLICT");
    let other_workflow = json!({ "workflowId": "wf", "args": { "n": 1 }, "idempotencyKey": "k1" });
    assert_error(&server.launch_run(other_workflow), 409, "IDEMPOTENCY_CONFLICT");

    let list = server.get("/api/script-runs");
    assert_eq!(listed_ids(&list), vec![id.clone()]);
    assert_eq!(list.body["total"], json!(1));

    open_gate(&dir.join("go"));
    server.wait_run_terminal(&id, WAIT);
    // After the end too: the existing run, completed; nothing ran again.
    let again = server.launch_run(request.clone());
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["deduplicated"], json!(true), "{}", again.text);
    assert_eq!(again.body["run"]["id"], json!(id));
    assert_eq!(again.body["run"]["status"], json!("completed"));
    assert_eq!(again.body["run"]["output"], json!("done"));
    assert_eq!(lines(&dir.join("ran")), vec![format!("ran {id}")]);

    // Another key is another run.
    let mut k2 = request;
    k2["idempotencyKey"] = json!("k2");
    let second = id_of(&launched(&server.launch_run(k2)));
    assert_ne!(second, id);
    server.wait_run_terminal(&second, WAIT);
    let list = server.get("/api/script-runs");
    assert_eq!(list.body["total"], json!(2), "{}", list.text);
    assert_eq!(lines(&dir.join("ran")).len(), 2);
}

#[test]
fn concurrent_launches_with_one_idempotency_key_make_one_run() {
    let server = Builder::new().workflows(json!({})).start();
    let d = server.dir().display().to_string();
    let request = json!({
        "source": format!("echo \"ran $SCRIPT_RUN_ID\" >> {d}/ran"), "interpreter": "bash", "idempotencyKey": "race",
    });
    let answers: Vec<Resp> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| server.launch_run(request.clone()))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<&Resp> = answers.iter().filter(|r| r.status == 201).collect();
    assert_eq!(created.len(), 1, "{:?}", answers.iter().map(|r| &r.text).collect::<Vec<_>>());
    let id = id_of(&created[0].body["run"]);
    for r in answers.iter().filter(|r| r.status != 201) {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["deduplicated"], json!(true), "{}", r.text);
        assert_eq!(r.body["run"]["id"], json!(id), "{}", r.text);
    }
    server.wait_run_terminal(&id, WAIT);
    assert_eq!(server.get("/api/script-runs").body["total"], json!(1));
    assert_eq!(lines(&server.dir().join("ran")), vec![format!("ran {id}")]);
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_launch_requests_get_clear_4xx_and_create_no_run() {
    let server = Builder::new().workflows(json!({})).workflow("wf", "echo hi").start();

    assert_error(&server.launch_run(json!({ "workflowId": "nope" })), 404, "WORKFLOW_NOT_FOUND");
    let r = server.launch_run(json!({ "source": "echo hi", "interpreter": "cobol" }));
    assert_error(&r, 400, "UNKNOWN_INTERPRETER");
    assert!(message(&r).contains("cobol"), "{}", r.text);
    // Both, neither.
    let r = server.launch_run(json!({ "workflowId": "wf", "source": "echo hi", "interpreter": "bash" }));
    assert_error(&r, 400, "INVALID_REQUEST");
    assert_error(&server.launch_run(json!({})), 400, "INVALID_REQUEST");
    assert_error(&server.launch_run(json!({ "args": { "a": 1 } })), 400, "INVALID_REQUEST");
    // Source without an interpreter.
    assert_error(&server.launch_run(json!({ "source": "echo hi" })), 400, "INVALID_REQUEST");
    // Unknown field.
    let r = server.launch_run(json!({ "workflowId": "wf", "bogusField": 1 }));
    assert_error(&r, 400, "INVALID_REQUEST");
    assert!(message(&r).contains("bogusField"), "{}", r.text);
    // Wrong types.
    assert_error(&server.launch_run(json!({ "workflowId": 5 })), 400, "INVALID_REQUEST");
    assert_error(&server.launch_run(json!({ "workflowId": "wf", "background": "no" })), 400, "INVALID_REQUEST");
    // Bad JSON.
    assert_error(&post_raw(&server, b"{\"workflowId\":"), 400, "INVALID_JSON");
    assert_error(&post_raw(&server, b"not json"), 400, "INVALID_JSON");
    assert_error(&post_raw(&server, b""), 400, "INVALID_JSON");
    // Not an object.
    for body in [&b"[1, 2]"[..], b"\"wf\"", b"null", b"42"] {
        assert_error(&post_raw(&server, body), 400, "INVALID_JSON");
    }
    // Args: 64 KiB of JSON is the limit.
    let args_of = |json_len: usize| json!({ "b": "x".repeat(json_len - 8) });
    assert_eq!(serde_json::to_string(&args_of(65_537)).unwrap().len(), 65_537);
    let r = server.launch_run(json!({ "workflowId": "wf", "args": args_of(65_537) }));
    assert_error(&r, 413, "ARGS_TOO_LARGE");
    let r = server.launch_run(json!({ "workflowId": "wf", "args": args_of(300_000) }));
    assert_error(&r, 413, "ARGS_TOO_LARGE");

    // None of that created a run.
    let list = server.get("/api/script-runs");
    assert_eq!(list.body["total"], json!(0), "{}", list.text);

    // Exactly at the limit is accepted, and the workflow gets all of it.
    let r = server.launch_run(json!({ "workflowId": "wf", "args": args_of(65_536), "background": false }));
    let run = launched(&r);
    assert_eq!(run["status"], json!("completed"), "{run}");
    assert_eq!(run["args"], args_of(65_536));
}

#[test]
fn inline_source_is_403_when_no_interpreter_is_configured() {
    let server = Builder::new().workflow("wf", "echo configured").start();
    let r = server.launch_run(json!({ "source": "echo hi", "interpreter": "bash" }));
    assert_error(&r, 403, "INLINE_SOURCE_DISABLED");
    assert_eq!(server.get("/api/script-runs").body["total"], json!(0));
    // Configured workflows still run.
    let run = launched(&server.launch_run(json!({ "workflowId": "wf", "background": false })));
    assert_eq!(run["status"], json!("completed"), "{run}");
    assert_eq!(run["output"], json!("configured"), "{run}");
}

#[test]
fn a_literal_step_label_in_a_loop_is_a_400_label_lint_violation_naming_the_line() {
    let looped = "# a configured workflow\nwhile read x; do\n  script-runner step same -- true\ndone < /dev/null";
    let server = Builder::new().workflows(json!({})).workflow("looped", looped).start();

    let source = "echo start\nfor f in a b c; do\n  script-runner step review -- echo \"$f\"\ndone\n";
    let r = server.launch_run(json!({ "source": source, "interpreter": "bash" }));
    assert_error(&r, 400, "label_lint_violation");
    assert!(message(&r).contains("line 3"), "{}", r.text);
    assert!(message(&r).contains("review"), "{}", r.text);

    let r = server
        .launch_run(json!({ "source": "for i in 1 2; do script-runner step x -- true; done", "interpreter": "bash" }));
    assert_error(&r, 400, "label_lint_violation");
    assert!(message(&r).contains("line 1"), "{}", r.text);

    // The file's line: the body starts on line 2, after the shebang.
    let r = server.launch_run(json!({ "workflowId": "looped" }));
    assert_error(&r, 400, "label_lint_violation");
    assert!(message(&r).contains("line 4"), "{}", r.text);
    assert_eq!(server.get("/api/script-runs").body["total"], json!(0));

    // A label that carries the item is fine, and each iteration is its own step.
    let source = "for f in a b c; do\n  script-runner step \"review-$f\" -- echo \"$f\" >/dev/null\ndone\n";
    let r = server.launch_run(json!({ "source": source, "interpreter": "bash", "background": false }));
    let run = launched(&r);
    assert_eq!(run["status"], json!("completed"), "{run}");
    let body = server.script_run(&id_of(&run));
    assert_eq!(labels(&body), vec!["review-a", "review-b", "review-c"], "{body}");
}

#[test]
fn an_unknown_run_id_is_404_run_not_found_on_every_route() {
    let server = Builder::new().workflows(json!({})).start();
    let id = "run_1_999";
    assert_error(&server.get(&format!("/api/script-runs/{id}")), 404, "RUN_NOT_FOUND");
    assert_error(&server.request("DELETE", &format!("/api/script-runs/{id}"), None, &[]), 404, "RUN_NOT_FOUND");
    assert_error(&post_empty(&server, &format!("/api/script-runs/{id}/pause")), 404, "RUN_NOT_FOUND");
    assert_error(&post_empty(&server, &format!("/api/script-runs/{id}/resume")), 404, "RUN_NOT_FOUND");
    assert_error(&post_empty(&server, &format!("/api/script-runs/{id}/fork")), 404, "RUN_NOT_FOUND");
    let r = server.post(&format!("/api/script-runs/{id}/fork"), json!({ "fromStep": "a" }));
    assert_error(&r, 404, "RUN_NOT_FOUND");
    assert_error(&server.get(&format!("/api/script-runs/{id}/logs")), 404, "RUN_NOT_FOUND");
    assert_error(&server.get(&format!("/api/script-runs/{id}/logs?unit=lines")), 404, "RUN_NOT_FOUND");
    let r = server.post(&format!("/api/script-runs/{id}/approvals/x"), json!({ "approved": true }));
    assert_error(&r, 404, "RUN_NOT_FOUND");
    assert_eq!(server.get("/api/script-runs").body["total"], json!(0));
}

// ---------------------------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------------------------

#[test]
fn the_list_filters_by_status_and_name_pages_and_is_newest_first() {
    let server = Builder::new().workflows(json!({})).start();
    let fg = |name: &str, source: &str| {
        let r = server.launch_run(json!({
            "source": source, "interpreter": "bash", "scriptName": name, "background": false,
        }));
        id_of(&launched(&r))
    };
    let r1 = fg("alpha", "echo 1");
    let r2 = fg("beta", "exit 3");
    let r3 = fg("alpha", "echo 3");
    let r4 = launch(
        &server,
        json!({ "source": wait_for_gate(&server.dir().join("go")), "interpreter": "bash", "scriptName": "alpha" }),
    );

    let all = server.get("/api/script-runs");
    assert_eq!(listed_ids(&all), vec![r4.clone(), r3.clone(), r2.clone(), r1.clone()]);
    assert_eq!(all.body["total"], json!(4));
    assert_eq!(all.body["ok"], json!(true));
    for run in all.body["runs"].as_array().unwrap() {
        assert_run_fields(run);
    }
    let statuses: Vec<&Value> = all.body["runs"].as_array().unwrap().iter().map(|r| &r["status"]).collect();
    assert_eq!(statuses, vec!["running", "completed", "failed", "completed"]);

    let check = |query: &str, ids: Vec<&String>, total: u64| {
        let r = server.get(&format!("/api/script-runs?{query}"));
        let expected: Vec<String> = ids.into_iter().cloned().collect();
        assert_eq!(listed_ids(&r), expected, "?{query}: {}", r.text);
        assert_eq!(r.body["total"], json!(total), "?{query}: {}", r.text);
    };
    check("status=completed", vec![&r3, &r1], 2);
    check("status=running", vec![&r4], 1);
    check("status=failed", vec![&r2], 1);
    check("status=cancelled", vec![], 0);
    check("scriptName=alpha", vec![&r4, &r3, &r1], 3);
    check("scriptName=beta", vec![&r2], 1);
    check("scriptName=nobody", vec![], 0);
    check("scriptName=alpha&status=completed", vec![&r3, &r1], 2);
    check("limit=2", vec![&r4, &r3], 4);
    check("limit=2&offset=2", vec![&r2, &r1], 4);
    check("limit=1&offset=1", vec![&r3], 4);
    check("offset=4", vec![], 4);
    check("scriptName=alpha&limit=1&offset=2", vec![&r1], 3);

    let r = server.get("/api/script-runs?status=bogus");
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["ok"], json!(false));
    let r = server.get("/api/script-runs?limit=abc");
    assert_eq!(r.status, 400, "{}", r.text);

    open_gate(&server.dir().join("go"));
    server.wait_run_terminal(&r4, WAIT);
    check("status=completed", vec![&r4, &r3, &r1], 3);
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

#[test]
fn logs_page_by_bytes_and_by_lines_for_each_attempt() {
    let server = Builder::new().workflows(json!({})).start();
    let dir = server.dir().to_path_buf();
    let d = dir.display();
    let source = format!(
        r#"for i in 1 2 3 4 5; do echo "a$SCRIPT_RUN_ATTEMPT out $i"; done
echo "a$SCRIPT_RUN_ATTEMPT err 1" >&2
echo "a$SCRIPT_RUN_ATTEMPT err 2" >&2
if [ "$SCRIPT_RUN_ATTEMPT" = 1 ]; then
  echo $$ > {d}/pid
  while true; do sleep 0.05; done
fi
"#
    );
    let id = launch(&server, json!({ "source": source, "interpreter": "bash" }));
    let pid = pid_in(&dir.join("pid"));
    // While attempt 1 runs, its log is readable.
    wait_for("attempt 1's stdout", || {
        server.get(&format!("/api/script-runs/{id}/logs?unit=lines")).body["totalLines"] == json!(5)
    });
    let r = post_empty(&server, &format!("/api/script-runs/{id}/pause"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(wait_gone(&[pid], WAIT).is_empty());
    let r = post_empty(&server, &format!("/api/script-runs/{id}/resume"));
    assert_eq!(r.status, 200, "{}", r.text);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");

    let full = |a: u32| (1..=5).map(|i| format!("a{a} out {i}\n")).collect::<String>();
    let logs = |query: &str| {
        let r = server.get(&format!("/api/script-runs/{id}/logs?{query}"));
        assert_eq!(r.status, 200, "?{query}: {}", r.text);
        assert_eq!(r.body["ok"], json!(true));
        assert_eq!(r.body["runId"], json!(id));
        r.body
    };

    // Bytes, default: the latest attempt's stdout, whole.
    let page = logs("");
    assert_eq!(page["stream"], json!("stdout"));
    assert_eq!(page["data"], json!(full(2)), "{page}");
    assert_eq!(page["offset"], json!(0));
    assert_eq!(page["totalSize"], json!(full(2).len()));
    assert_eq!(page["nextOffset"], json!(full(2).len()));
    let page = logs("offset=3&limit=5");
    assert_eq!(page["data"], json!(&full(2)[3..8]), "{page}");
    assert_eq!(page["offset"], json!(3));
    assert_eq!(page["nextOffset"], json!(8));
    assert_eq!(page["totalSize"], json!(full(2).len()));
    // Walking the pages gives the whole log.
    let (mut offset, mut text) = (0u64, String::new());
    loop {
        let page = logs(&format!("attempt=1&offset={offset}&limit=7"));
        let data = page["data"].as_str().unwrap();
        if data.is_empty() {
            break;
        }
        text.push_str(data);
        offset = page["nextOffset"].as_u64().unwrap();
    }
    assert_eq!(text, full(1));
    let page = logs(&format!("offset={}", full(2).len() + 10));
    assert_eq!(page["data"], json!(""), "{page}");

    // Per attempt.
    assert_eq!(logs("attempt=1")["data"], json!(full(1)));
    assert_eq!(logs("attempt=2")["data"], json!(full(2)));
    assert_eq!(logs("stream=stderr")["data"], json!("a2 err 1\na2 err 2\n"));
    assert_eq!(logs("stream=stderr&attempt=1")["data"], json!("a1 err 1\na1 err 2\n"));
    assert_eq!(logs("stream=stderr")["stream"], json!("stderr"));

    // Lines.
    let page = logs("unit=lines");
    assert_eq!(page["lines"], json!(["a2 out 1", "a2 out 2", "a2 out 3", "a2 out 4", "a2 out 5"]), "{page}");
    assert_eq!(page["totalLines"], json!(5));
    assert_eq!(page["nextOffset"], json!(5));
    let page = logs("unit=lines&offset=1&limit=2");
    assert_eq!(page["lines"], json!(["a2 out 2", "a2 out 3"]), "{page}");
    assert_eq!(page["offset"], json!(1));
    assert_eq!(page["nextOffset"], json!(3));
    assert_eq!(page["totalLines"], json!(5));
    let page = logs("unit=lines&attempt=1&offset=3");
    assert_eq!(page["lines"], json!(["a1 out 4", "a1 out 5"]), "{page}");
    let page = logs("unit=lines&stream=stderr&attempt=1");
    assert_eq!(page["lines"], json!(["a1 err 1", "a1 err 2"]), "{page}");
    assert_eq!(page["totalLines"], json!(2));

    // Bad queries.
    for query in ["attempt=3", "stream=bogus", "unit=words", "offset=-1", "attempt=x"] {
        let r = server.get(&format!("/api/script-runs/{id}/logs?{query}"));
        assert_eq!(r.status, 400, "?{query}: {}", r.text);
        assert_eq!(r.body["ok"], json!(false));
    }
}

// ---------------------------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------------------------

/// Starts a workflow that leaves `sleep 1000` running in its group, cancels it, and checks
/// the run and that the group is gone. `prelude` runs first (e.g. a trap).
fn cancel_running(prelude: &str) {
    let server = Builder::new().workflows(json!({})).start();
    let dir = server.dir().to_path_buf();
    let d = dir.display();
    let source = format!(
        r#"{prelude}
sleep 1000 &
echo $! > {d}/child
echo $$ > {d}/pid
script-runner step started -- true
wait
echo not-reached"#
    );
    let id = launch(&server, json!({ "source": source, "interpreter": "bash" }));
    let (child, pid) = (pid_in(&dir.join("child")), pid_in(&dir.join("pid")));
    let running = server.wait_step(&id, "started", "completed");
    assert_eq!(running["run"]["status"], json!("running"));
    assert_eq!(running["run"]["pid"], json!(pid), "{running}");
    assert!(alive(child) && alive(pid));

    let r = server.request("DELETE", &format!("/api/script-runs/{id}"), None, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ok"], json!(true));
    let run = r.body["run"].clone();
    assert_run_fields(&run);
    assert_eq!(run["status"], json!("cancelled"), "{run}");
    assert_eq!(run["pid"], Value::Null, "{run}");
    assert!(run["finishedAt"].is_string(), "{run}");
    assert_eq!(wait_gone(&[pid, child], WAIT), Vec::<i32>::new(), "the workflow's process group survived");
    let body = server.script_run(&id);
    assert_eq!(body["run"], run);
    assert_eq!(labels(&body), vec!["started"]);
    let out = server.get(&format!("/api/script-runs/{id}/logs"));
    assert!(!out.body["data"].as_str().unwrap().contains("not-reached"), "{}", out.text);

    // Cancelling again: unchanged.
    let r = server.request("DELETE", &format!("/api/script-runs/{id}"), None, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["run"], run);
}

#[test]
fn cancel_of_a_running_run_kills_its_process_group() {
    cancel_running("");
}

#[test]
fn cancel_kills_a_workflow_that_ignores_sigterm_after_the_grace() {
    cancel_running("trap '' TERM");
}

#[test]
fn cancel_of_a_terminal_run_returns_it_unchanged() {
    let server = Builder::new().workflows(json!({})).start();
    for (source, status) in [("echo '{\"x\": 1}'", "completed"), ("echo bad >&2; exit 4", "failed")] {
        let run = launched(&server.launch_run(json!({ "source": source, "interpreter": "bash", "background": false })));
        assert_eq!(run["status"], json!(status), "{run}");
        let id = id_of(&run);
        let before = server.script_run(&id);
        let r = server.request("DELETE", &format!("/api/script-runs/{id}"), None, &[]);
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["ok"], json!(true));
        assert_eq!(r.body["run"], before["run"], "DELETE changed a {status} run");
        assert_eq!(server.script_run(&id), before);
    }
}

// ---------------------------------------------------------------------------------------------
// Pause / resume
// ---------------------------------------------------------------------------------------------

#[test]
fn pause_stops_the_process_and_resume_replays_completed_steps_exactly_once() {
    let server = Builder::new().workflows(json!({})).start();
    let dir = server.dir().to_path_buf();
    let d = dir.display();
    let gate = wait_for_gate(&dir.join("go"));
    let source = format!(
        r#"script-runner step one -- bash -c 'echo one >> {d}/side'
script-runner step two -- bash -c 'echo two >> {d}/side'
echo "attempt $SCRIPT_RUN_ATTEMPT" >> {d}/attempts
if [ "$SCRIPT_RUN_ATTEMPT" = 1 ]; then
  sleep 1000 &
  echo $! > {d}/child
  echo $$ > {d}/pid
  wait
fi
{gate}
script-runner step three -- bash -c 'echo three >> {d}/side'
echo '{{"done": true}}'"#
    );
    let id = launch(&server, json!({ "source": source, "interpreter": "bash" }));
    let (child, pid) = (pid_in(&dir.join("child")), pid_in(&dir.join("pid")));
    server.wait_step(&id, "two", "completed");

    let r = post_empty(&server, &format!("/api/script-runs/{id}/pause"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["run"]["status"], json!("paused"), "{}", r.text);
    assert_eq!(wait_gone(&[pid, child], WAIT), Vec::<i32>::new(), "the paused run's processes survived");
    let paused = server.script_run(&id);
    assert_eq!(paused["run"]["status"], json!("paused"));
    assert_eq!(labels(&paused), vec!["one", "two"]);
    // Paused, it cannot take steps, and it stays paused.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.script_run(&id)["run"]["status"], json!("paused"));

    let r = post_empty(&server, &format!("/api/script-runs/{id}/resume"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["run"]["status"], json!("running"), "{}", r.text);
    wait_for("attempt 2 to start", || lines(&dir.join("attempts")).len() == 2);
    let body = server.script_run(&id);
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    // Resume of a running run: wrong state.
    assert_error(&post_empty(&server, &format!("/api/script-runs/{id}/resume")), 409, "INVALID_STATE");

    open_gate(&dir.join("go"));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({ "done": true }), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    assert_eq!(labels(&body), vec!["one", "two", "three"]);
    assert_eq!(lines(&dir.join("side")), vec!["one", "two", "three"], "each completed step ran exactly once");
    assert_eq!(lines(&dir.join("attempts")), vec!["attempt 1", "attempt 2"]);
    // The journal entries of steps one and two are the ones from attempt 1.
    assert_eq!(entry(&body, "one"), entry(&paused, "one"));
    assert_eq!(entry(&body, "two"), entry(&paused, "two"));

    // Terminal: neither pause nor resume.
    assert_error(&post_empty(&server, &format!("/api/script-runs/{id}/pause")), 409, "INVALID_STATE");
    assert_error(&post_empty(&server, &format!("/api/script-runs/{id}/resume")), 409, "INVALID_STATE");
    assert_eq!(server.script_run(&id)["run"], body["run"]);
}

#[test]
fn a_paused_run_shows_no_pid() {
    let server = Builder::new().workflows(json!({})).start();
    let dir = server.dir().to_path_buf();
    let d = dir.display();
    let gate = wait_for_gate(&dir.join("go"));
    let source = format!("echo $$ > {d}/pid\n{gate}");
    let id = launch(&server, json!({ "source": source, "interpreter": "bash" }));
    let pid = pid_in(&dir.join("pid"));
    wait_for("the pid on the run", || server.script_run(&id)["run"]["pid"] == json!(pid));
    let r = post_empty(&server, &format!("/api/script-runs/{id}/pause"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["run"]["status"], json!("paused"), "{}", r.text);
    assert!(wait_gone(&[pid], WAIT).is_empty(), "the paused run's process survived");
    // The process is gone, so the run must not point at it (its pid may be reused).
    let body = server.script_run(&id);
    assert_eq!(body["run"]["status"], json!("paused"), "{body}");
    assert_eq!(body["run"]["pid"], Value::Null, "GET after pause: {body}");
    assert_eq!(r.body["run"]["pid"], Value::Null, "pause answer: {}", r.text);
}

#[test]
fn resume_of_a_run_that_is_not_paused_is_409_invalid_state() {
    let server = Builder::new().workflows(json!({})).start();
    let id = launch(&server, json!({ "source": wait_for_gate(&server.dir().join("go")), "interpreter": "bash" }));
    assert_error(&post_empty(&server, &format!("/api/script-runs/{id}/resume")), 409, "INVALID_STATE");
    // Cancelled: both are wrong.
    let r = server.request("DELETE", &format!("/api/script-runs/{id}"), None, &[]);
    assert_eq!(r.body["run"]["status"], json!("cancelled"), "{}", r.text);
    assert_error(&post_empty(&server, &format!("/api/script-runs/{id}/pause")), 409, "INVALID_STATE");
    assert_error(&post_empty(&server, &format!("/api/script-runs/{id}/resume")), 409, "INVALID_STATE");
    assert_eq!(server.script_run(&id)["run"]["status"], json!("cancelled"));
}

#[test]
fn cancel_of_a_paused_run_makes_it_cancelled_for_good() {
    let server = Builder::new().workflows(json!({})).start();
    let dir = server.dir().to_path_buf();
    let d = dir.display();
    let gate = wait_for_gate(&dir.join("go"));
    let source = format!("echo $$ >> {d}/pids\n{gate}");
    let id = launch(&server, json!({ "source": source, "interpreter": "bash" }));
    let pid = pid_in(&dir.join("pids"));
    let r = post_empty(&server, &format!("/api/script-runs/{id}/pause"));
    assert_eq!(r.body["run"]["status"], json!("paused"), "{}", r.text);
    assert!(wait_gone(&[pid], WAIT).is_empty());

    let r = server.request("DELETE", &format!("/api/script-runs/{id}"), None, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["run"]["status"], json!("cancelled"), "{}", r.text);
    assert!(r.body["run"]["finishedAt"].is_string(), "{}", r.text);
    assert_error(&post_empty(&server, &format!("/api/script-runs/{id}/resume")), 409, "INVALID_STATE");
    let body = server.script_run(&id);
    assert_eq!(body["run"]["status"], json!("cancelled"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(1), "{body}");
    assert_eq!(lines(&dir.join("pids")).len(), 1, "a cancelled run was executed again");
}

// ---------------------------------------------------------------------------------------------
// Fork
// ---------------------------------------------------------------------------------------------

/// Three command steps, each appending `<label> <run id>` to `side`.
fn three_steps(d: &str) -> String {
    format!(
        r#"script-runner step a -- bash -c 'echo "a $SCRIPT_RUN_ID" >> {d}/side'
script-runner step b -- bash -c 'echo "b $SCRIPT_RUN_ID" >> {d}/side'
script-runner step c -- bash -c 'echo "c $SCRIPT_RUN_ID" >> {d}/side'
echo '{{"finished": true}}'"#
    )
}

#[test]
fn fork_copies_the_journal_and_re_executes_from_the_given_step() {
    let server = Builder::new().workflows(json!({})).start();
    let dir = server.dir().to_path_buf();
    let d = dir.display().to_string();
    let side = dir.join("side");
    let run = launched(&server.launch_run(json!({
        "source": three_steps(&d), "interpreter": "bash", "args": { "x": 1 }, "background": false,
    })));
    assert_eq!(run["status"], json!("completed"), "{run}");
    let orig = id_of(&run);
    let original = server.script_run(&orig);
    assert_eq!(labels(&original), vec!["a", "b", "c"]);

    // Without fromStep: every completed entry is copied; nothing re-executes.
    let r = server.post(&format!("/api/script-runs/{orig}/fork"), json!({}));
    let fork = launched(&r);
    let f1 = id_of(&fork);
    assert_ne!(f1, orig);
    assert_eq!(fork["forkedFrom"], json!(orig), "{fork}");
    assert_eq!(fork["sourceSha256"], original["run"]["sourceSha256"], "{fork}");
    assert_eq!(fork["args"], json!({ "x": 1 }), "{fork}");
    let body = server.wait_run_terminal(&f1, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({ "finished": true }), "{body}");
    assert_eq!(labels(&body), vec!["a", "b", "c"]);
    for label in ["a", "b", "c"] {
        assert_eq!(entry(&body, label), entry(&original, label), "entry {label} is not the original's copy");
        assert_eq!(count(&side, &format!("{label} {f1}")), 0, "fork re-executed step {label}");
    }

    // From step b: a is copied; b and c run again, once each.
    let r = server.post(&format!("/api/script-runs/{orig}/fork"), json!({ "fromStep": "b" }));
    let fork = launched(&r);
    let f2 = id_of(&fork);
    assert!(f2 != orig && f2 != f1);
    assert_eq!(fork["forkedFrom"], json!(orig), "{fork}");
    let body = server.wait_run_terminal(&f2, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(labels(&body), vec!["a", "b", "c"]);
    assert_eq!(entry(&body, "a"), entry(&original, "a"));
    assert_eq!(count(&side, &format!("a {f2}")), 0, "step a before fromStep was re-executed");
    assert_eq!(count(&side, &format!("b {f2}")), 1, "the fromStep step must be re-executed once");
    assert_eq!(count(&side, &format!("c {f2}")), 1);
    assert_ne!(entry(&body, "b")["result"], Value::Null);

    // Unknown fromStep.
    let r = server.post(&format!("/api/script-runs/{orig}/fork"), json!({ "fromStep": "zzz" }));
    assert_error(&r, 404, "STEP_NOT_FOUND");

    // The original is untouched, and its steps ran once.
    assert_eq!(server.script_run(&orig), original);
    for label in ["a", "b", "c"] {
        assert_eq!(count(&side, &format!("{label} {orig}")), 1);
    }
    assert_eq!(lines(&side).len(), 5, "{:?}", lines(&side));
    let list = server.get("/api/script-runs");
    assert_eq!(listed_ids(&list), vec![f2, f1, orig]);
}

#[test]
fn fork_with_new_source_replays_onto_the_fixed_source() {
    let server = Builder::new().workflows(json!({})).start();
    let dir = server.dir().to_path_buf();
    let d = dir.display().to_string();
    let side = dir.join("side");
    let broken = format!(
        r#"script-runner step a -- bash -c 'echo "a $SCRIPT_RUN_ID" >> {d}/side'
echo "bug: b is broken" >&2
exit 3"#
    );
    let run = launched(&server.launch_run(json!({ "source": broken, "interpreter": "bash", "background": false })));
    assert_eq!(run["status"], json!("failed"), "{run}");
    let orig = id_of(&run);
    let original = server.script_run(&orig);

    // A forked source must pass the label lint too.
    let looped = "for i in 1 2; do script-runner step a -- true; done";
    let r = server.post(&format!("/api/script-runs/{orig}/fork"), json!({ "source": looped }));
    assert_error(&r, 400, "label_lint_violation");

    let fixed = format!(
        r#"script-runner step a -- bash -c 'echo "a $SCRIPT_RUN_ID" >> {d}/side'
script-runner step b -- bash -c 'echo "b $SCRIPT_RUN_ID" >> {d}/side'
echo '{{"fixed": true}}'"#
    );
    let r = server.post(&format!("/api/script-runs/{orig}/fork"), json!({ "source": fixed }));
    let fork = launched(&r);
    let f = id_of(&fork);
    assert_eq!(fork["forkedFrom"], json!(orig));
    assert_eq!(fork["sourceSha256"], json!(sha256_hex(fixed.as_bytes())), "{fork}");
    let body = server.wait_run_terminal(&f, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({ "fixed": true }), "{body}");
    assert_eq!(labels(&body), vec!["a", "b"]);
    assert_eq!(entry(&body, "a"), entry(&original, "a"));
    assert_eq!(lines(&side), vec![format!("a {orig}"), format!("b {f}")]);
    assert_eq!(server.script_run(&orig), original, "the original changed");
}

#[test]
fn fork_copies_only_completed_entries_so_a_failed_step_runs_again() {
    let server = Builder::new().workflows(json!({})).start();
    let dir = server.dir().to_path_buf();
    let d = dir.display().to_string();
    let side = dir.join("side");
    let source = format!(
        r#"set -e
script-runner step a -- bash -c 'echo "a $SCRIPT_RUN_ID" >> {d}/side'
script-runner step b -- bash -c 'echo "b $SCRIPT_RUN_ID" >> {d}/side; test -f {d}/fixed'
echo '{{"end": true}}'"#
    );
    let run = launched(&server.launch_run(json!({ "source": source, "interpreter": "bash", "background": false })));
    assert_eq!(run["status"], json!("failed"), "{run}");
    let orig = id_of(&run);
    let original = server.script_run(&orig);
    assert_eq!(entry(&original, "b")["status"], json!("failed"), "{original}");

    std::fs::write(dir.join("fixed"), "").unwrap();
    let fork = launched(&server.post(&format!("/api/script-runs/{orig}/fork"), json!({})));
    let f = id_of(&fork);
    let body = server.wait_run_terminal(&f, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({ "end": true }), "{body}");
    assert_eq!(entry(&body, "a"), entry(&original, "a"));
    assert_eq!(entry(&body, "b")["status"], json!("completed"), "{body}");
    assert_eq!(
        lines(&side),
        vec![format!("a {orig}"), format!("b {orig}"), format!("b {f}")],
        "the failed step must run again in the fork, the completed one must not"
    );
    assert_eq!(server.script_run(&orig), original);
}

// ---------------------------------------------------------------------------------------------
// Token isolation
// ---------------------------------------------------------------------------------------------

#[test]
fn a_run_token_opens_its_own_journal_only() {
    let server = Builder::new().workflows(json!({})).start();
    let dir = server.dir().to_path_buf();
    let d = dir.display();
    let gate = wait_for_gate(&dir.join("go"));
    let a = launch(
        &server,
        json!({ "interpreter": "bash", "source": format!(
            "echo \"$SCRIPT_RUN_TOKEN\" > {d}/token-a.tmp && mv {d}/token-a.tmp {d}/token-a\n\
             script-runner step a1 --value '{{\"x\": 1}}' >/dev/null\n\
             {gate}\necho a-done"
        ) }),
    );
    let b = launch(
        &server,
        json!({ "interpreter": "bash", "source": format!(
            "script-runner step b1 --value '{{\"y\": 2}}' >/dev/null\n\
             {gate}\necho b-done"
        ) }),
    );
    let token = wait_file(&dir.join("token-a"), WAIT);
    server.wait_step(&a, "a1", "completed");
    let b_before = server.wait_step(&b, "b1", "completed");
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let json_body = |v: Value| serde_json::to_vec(&v).unwrap();
    let record = json_body(json!({
        "stepKey": "evil", "stepType": "value", "config": null, "status": "completed", "result": { "pwned": true },
    }));
    let overwrite = json_body(json!({
        "stepKey": "b1", "stepType": "value", "config": null, "status": "completed", "result": { "pwned": true },
    }));

    // A's token on B's journal: 403.
    let r = server.request("GET", &format!("/api/internal/script-runs/{b}/steps/b1"), None, &auth);
    assert_error(&r, 403, "FORBIDDEN");
    assert!(!r.text.contains("\"y\""), "B's result leaked: {}", r.text);
    let r = server.request("GET", &format!("/api/internal/script-runs/{b}/steps/nope"), None, &auth);
    assert_error(&r, 403, "FORBIDDEN");
    let r = server.request("POST", &format!("/api/internal/script-runs/{b}/steps"), Some(&record), &auth);
    assert_error(&r, 403, "FORBIDDEN");
    let r = server.request("POST", &format!("/api/internal/script-runs/{b}/steps"), Some(&overwrite), &auth);
    assert_error(&r, 403, "FORBIDDEN");
    let begin = json_body(json!({ "stepType": "value", "config": null }));
    let r = server.request("POST", &format!("/api/internal/script-runs/{b}/steps/evil/begin"), Some(&begin), &auth);
    assert_error(&r, 403, "FORBIDDEN");
    let progress = json_body(json!({ "current": 1, "total": 2 }));
    let r = server.request("POST", &format!("/api/internal/script-runs/{b}/progress"), Some(&progress), &auth);
    assert_error(&r, 403, "FORBIDDEN");

    // No token, or a made-up one.
    let r = server.get(&format!("/api/internal/script-runs/{b}/steps/b1"));
    assert_error(&r, 401, "UNAUTHORIZED");
    let json_only = [("Content-Type", "application/json")];
    let r = server.request("POST", &format!("/api/internal/script-runs/{b}/steps"), Some(&record), &json_only);
    assert_error(&r, 401, "UNAUTHORIZED");
    let fake = [("Authorization", "Bearer 0000"), ("Content-Type", "application/json")];
    let r = server.request("POST", &format!("/api/internal/script-runs/{b}/steps"), Some(&record), &fake);
    assert_error(&r, 403, "FORBIDDEN");

    // B's journal is unchanged.
    let b_after = server.script_run(&b);
    assert_eq!(b_after["journal"], b_before["journal"]);

    // A's token on A's journal works.
    let r = server.request("GET", &format!("/api/internal/script-runs/{a}/steps/a1"), None, &auth);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ok"], json!(true));
    assert_eq!(r.body["step"]["stepKey"], json!("a1"), "{}", r.text);
    assert_eq!(r.body["step"]["result"], json!({ "x": 1 }), "{}", r.text);
    let r = server.request("GET", &format!("/api/internal/script-runs/{a}/steps/nope"), None, &auth);
    assert_error(&r, 404, "STEP_NOT_FOUND");

    open_gate(&dir.join("go"));
    let a_end = server.wait_run_terminal(&a, WAIT);
    let b_end = server.wait_run_terminal(&b, WAIT);
    assert_eq!(a_end["run"]["status"], json!("completed"), "{a_end}");
    assert_eq!(b_end["run"]["status"], json!("completed"), "{b_end}");
    assert_eq!(b_end["journal"], b_before["journal"], "B's journal changed");
    assert_eq!(labels(&a_end), vec!["a1"]);
}

// ---------------------------------------------------------------------------------------------
// Server auth token
// ---------------------------------------------------------------------------------------------

#[test]
fn with_a_server_token_public_routes_need_it_and_workflow_steps_use_the_run_token() {
    const SECRET: &str = "s3cret-token";
    let server = Builder::new().server("authToken", json!(SECRET)).workflows(json!({})).start();
    let dir = server.dir().to_path_buf();
    let d = dir.display();
    let gate = wait_for_gate(&dir.join("go"));
    let source = format!(
        r#"script-runner step --progress 1/2 "half way"
script-runner step one -- bash -c 'echo one >> {d}/side'
script-runner step two --value '{{"k": "v"}}' >/dev/null
echo "$SCRIPT_RUN_TOKEN" > {d}/token.tmp && mv {d}/token.tmp {d}/token
{gate}
echo '{{"ok": true}}'"#
    );
    let body = serde_json::to_vec(&json!({ "source": source, "interpreter": "bash" })).unwrap();
    let bearer = format!("Bearer {SECRET}");
    let authed = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];

    // Without the token, or with a wrong one: 401, and nothing runs.
    assert_error(&post_raw(&server, &body), 401, "UNAUTHORIZED");
    let wrong = [("Authorization", "Bearer nope"), ("Content-Type", "application/json")];
    assert_error(&server.request("POST", "/api/script-runs", Some(&body), &wrong), 401, "UNAUTHORIZED");
    let r = server.request("GET", "/api/script-runs", None, &authed);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], json!(0));

    let r = server.request("POST", "/api/script-runs", Some(&body), &authed);
    let id = id_of(&launched(&r));
    let get = |path: &str| server.request("GET", path, None, &authed);

    // The workflow's steps reach the internal routes with its run token alone.
    let run_token = wait_file(&dir.join("token"), WAIT);
    let before = get(&format!("/api/script-runs/{id}"));
    assert_eq!(before.status, 200, "{}", before.text);
    assert_eq!(labels(&before.body), vec!["one", "two"], "{}", before.text);
    assert_eq!(before.body["run"]["progress"], json!({ "current": 1, "total": 2, "message": "half way" }));
    let run_bearer = format!("Bearer {run_token}");
    let r = server.request(
        "GET",
        &format!("/api/internal/script-runs/{id}/steps/two"),
        None,
        &[("Authorization", run_bearer.as_str())],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["step"]["result"], json!({ "k": "v" }));
    // The server token is not a run token.
    let r = server.request("GET", &format!("/api/internal/script-runs/{id}/steps/two"), None, &authed);
    assert_error(&r, 403, "FORBIDDEN");
    let r = server.get(&format!("/api/internal/script-runs/{id}/steps/two"));
    assert_error(&r, 401, "UNAUTHORIZED");

    // Every public run route needs the server token.
    let none: [(&str, &str); 0] = [];
    let json_only = [("Content-Type", "application/json")];
    let empty = b"{}".to_vec();
    let approve = serde_json::to_vec(&json!({ "approved": true })).unwrap();
    for (method, path, payload) in [
        ("GET", "/api/script-runs".to_string(), None),
        ("GET", format!("/api/script-runs/{id}"), None),
        ("GET", format!("/api/script-runs/{id}/logs"), None),
        ("DELETE", format!("/api/script-runs/{id}"), None),
        ("POST", format!("/api/script-runs/{id}/pause"), Some(&empty)),
        ("POST", format!("/api/script-runs/{id}/resume"), Some(&empty)),
        ("POST", format!("/api/script-runs/{id}/fork"), Some(&empty)),
        ("POST", format!("/api/script-runs/{id}/approvals/x"), Some(&approve)),
    ] {
        let headers: &[(&str, &str)] = if payload.is_some() { &json_only } else { &none };
        let r = server.request(method, &path, payload.map(Vec::as_slice), headers);
        assert_error(&r, 401, "UNAUTHORIZED");
        let mut with_wrong: Vec<(&str, &str)> = headers.to_vec();
        with_wrong.push(("Authorization", "Bearer nope"));
        let r = server.request(method, &path, payload.map(Vec::as_slice), &with_wrong);
        assert_error(&r, 401, "UNAUTHORIZED");
    }
    // The run token is not the server token either.
    let r = server.request("GET", "/api/script-runs", None, &[("Authorization", run_bearer.as_str())]);
    assert_error(&r, 401, "UNAUTHORIZED");

    // Nothing of that touched the run: it completes.
    open_gate(&dir.join("go"));
    let last = RefCell::new(String::new());
    let end = wait_until(
        || format!("run still running: {}", last.borrow()),
        WAIT,
        || {
            let r = get(&format!("/api/script-runs/{id}"));
            assert_eq!(r.status, 200, "{}", r.text);
            if r.body["run"]["status"] != json!("running") {
                return Some(r.body);
            }
            *last.borrow_mut() = r.text;
            None
        },
    );
    assert_eq!(end["run"]["status"], json!("completed"), "{end}");
    assert_eq!(end["run"]["output"], json!({ "ok": true }), "{end}");
    assert_eq!(end["run"]["attempt"], json!(1), "{end}");
    assert_eq!(labels(&end), vec!["one", "two"]);
    assert_eq!(lines(&dir.join("side")), vec!["one"]);
    let r = get("/api/script-runs");
    assert_eq!(r.body["total"], json!(1), "{}", r.text);
    let r = get(&format!("/api/script-runs/{id}/logs?unit=lines"));
    assert_eq!(r.status, 200, "{}", r.text);
}

// ---------------------------------------------------------------------------------------------
// Internal routes: the token is judged before the body
// ---------------------------------------------------------------------------------------------

#[test]
fn internal_routes_refuse_a_missing_or_foreign_token_whatever_the_body_holds() {
    let server = Builder::new().workflows(json!({})).start();
    let dir = server.dir().to_path_buf();
    // Two runs, each waiting on a gate with its token written out.
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let gate = wait_for_gate(&dir.join(format!("go-{name}")));
        let source = format!(
            "echo \"$SCRIPT_RUN_TOKEN\" > {d}/token-{name}.tmp && mv {d}/token-{name}.tmp {d}/token-{name}\n{gate}\necho '{{}}'",
            d = dir.display()
        );
        ids.push(launch(&server, json!({ "source": source, "interpreter": "bash" })));
        tokens.push(wait_file(&dir.join(format!("token-{name}")), WAIT).trim().to_string());
    }
    let (a, foreign) = (&ids[0], &tokens[1]);
    let oversized = vec![b'{'; 3 * 1024 * 1024];
    let bodies: [(&str, &[u8]); 4] =
        [("malformed", b"{not json"), ("empty", b""), ("not an object", b"[1]"), ("oversized", &oversized)];
    let routes = [
        format!("/api/internal/script-runs/{a}/steps/s1/begin"),
        format!("/api/internal/script-runs/{a}/steps"),
        format!("/api/internal/script-runs/{a}/progress"),
    ];
    let foreign_bearer = format!("Bearer {foreign}");
    /// Who asks, with which headers, and the refusal expected.
    type Auth<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let auths: [Auth; 3] = [
        ("no token", vec![], 401, "UNAUTHORIZED"),
        ("a wrong token", vec![("Authorization", "Bearer nope")], 403, "FORBIDDEN"),
        ("another run's token", vec![("Authorization", foreign_bearer.as_str())], 403, "FORBIDDEN"),
    ];
    for route in &routes {
        for (what, body) in bodies {
            for (who, headers, status, code) in &auths {
                let mut headers = headers.clone();
                headers.push(("Content-Type", "application/json"));
                let r = server.request("POST", route, Some(body), &headers);
                assert_eq!(r.status, *status, "{route} with {who} and a {what} body: {}", r.text);
                assert_eq!(r.body["error"]["code"], json!(code), "{route} with {who} and a {what} body: {}", r.text);
            }
        }
    }
    // Nothing was written: no journal entry, no progress.
    let run = server.script_run(a);
    assert_eq!(run["journal"], json!([]), "{run}");
    assert_eq!(run["run"]["progress"], Value::Null, "{run}");
    // The run's own token still gets its body judged (400 for the malformed one).
    let own = format!("Bearer {}", tokens[0]);
    let r = server.request(
        "POST",
        &routes[2],
        Some(b"{not json"),
        &[("Authorization", own.as_str()), ("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 400, "{}", r.text);
    for name in ["a", "b"] {
        open_gate(&dir.join(format!("go-{name}")));
    }
}
