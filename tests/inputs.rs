//! Input steps (`script-runner step <label> --input "<prompt>" [--schema ...]`): the run awaits
//! a value submitted to `POST /api/script-runs/{id}/inputs/{label}`, checked against the
//! step's JSON schema, journaled, printed by the step and returned on every replay.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{assert_error, entry, labels, lines, wait_file, Builder, Resp, TestServer};
use serde_json::{json, Value};

/// Bound for anything a test waits for.
const WAIT: Duration = Duration::from_secs(20);

/// The schema of the tests' input: an object with a string `name` and an optional
/// non-negative integer `age`.
const SCHEMA: &str = r#"{"type":"object","required":["name"],"properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0}}}"#;

fn builder() -> (Builder, PathBuf) {
    let b = Builder::new();
    let dir = b.dir().to_path_buf();
    (b, dir)
}

/// A workflow source with `@D` replaced by the deployment folder and `@S` by [`SCHEMA`].
fn src(dir: &Path, template: &str) -> String {
    template.replace("@D", dir.to_str().unwrap()).replace("@S", SCHEMA)
}

fn assert_ok(r: &Resp) {
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ok"], json!(true), "{}", r.text);
}

/// Waits until the run is `awaiting`.
fn wait_awaiting(server: &TestServer, id: &str) -> Value {
    server.wait_run_body(id, "awaiting", WAIT, |b| b["run"]["status"] == json!("awaiting"))
}

#[test]
fn an_input_is_awaited_journaled_and_printed_as_json() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        &format!(
            r#"set -e
v=$(script-runner step ask --input "who are you?" --schema '@S')
echo "$v" > @D/printed
{gate}
echo "{{\"got\":$v}}"
"#,
            gate = crate::common::wait_for_gate(&d.join("go"))
        ),
    );
    let id = server.launch_bash(&source, json!({}));
    let body = wait_awaiting(&server, &id);
    let ask = entry(&body, "ask");
    assert_eq!(ask["stepType"], json!("input"), "{ask}");
    assert_eq!(ask["status"], json!("started"), "{ask}");
    assert_eq!(ask["config"]["prompt"], json!("who are you?"), "{ask}");
    assert_eq!(ask["config"]["schema"], serde_json::from_str::<Value>(SCHEMA).unwrap(), "{ask}");
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    assert_eq!(
        body["run"]["waitingFor"],
        json!({"label": "ask", "kind": "input", "prompt": "who are you?", "schema": schema}),
        "{body}"
    );

    let value = json!({"name": "ada", "age": 36});
    let r = server.post(&format!("/api/script-runs/{id}/inputs/ask"), json!({"value": value, "by": "ops"}));
    assert_ok(&r);
    wait_file(&d.join("printed"), WAIT);
    // Given once: a second value is refused and the first stays.
    let r = server.post(&format!("/api/script-runs/{id}/inputs/ask"), json!({"value": {"name": "bob"}}));
    assert_error(&r, 409, "ALREADY_DECIDED");
    crate::common::open_gate(&d.join("go"));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"got": value}), "{body}");
    assert!(body["run"].get("waitingFor").is_none(), "{body}");
    let ask = entry(&body, "ask");
    assert_eq!(ask["status"], json!("completed"), "{ask}");
    assert_eq!(ask["result"]["value"], value, "{ask}");
    assert_eq!(ask["result"]["by"], json!("ops"), "{ask}");
    let printed: Value = serde_json::from_str(&std::fs::read_to_string(d.join("printed")).unwrap()).unwrap();
    assert_eq!(printed, value);
}

#[test]
fn a_value_that_fails_the_schema_is_400_with_its_path_and_journals_nothing() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"set -e
v=$(script-runner step ask --input "who?" --schema '@S')
echo "{\"got\":$v}"
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    wait_awaiting(&server, &id);
    let path = format!("/api/script-runs/{id}/inputs/ask");

    let r = server.post(&path, json!({"value": {"name": "ada", "age": -1}}));
    assert_error(&r, 400, "INPUT_INVALID");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("/age"), "the message names no path: {message}");
    let r = server.post(&path, json!({"value": {"name": 7}}));
    assert_error(&r, 400, "INPUT_INVALID");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("/name"), "{}", r.text);
    let r = server.post(&path, json!({"value": "just text"}));
    assert_error(&r, 400, "INPUT_INVALID");
    let r = server.post(&path, json!({"by": "no value"}));
    assert_error(&r, 400, "INVALID_REQUEST");

    // Nothing journaled: the step still waits, the run still awaits.
    let body = server.script_run(&id);
    assert_eq!(body["run"]["status"], json!("awaiting"), "{body}");
    let ask = entry(&body, "ask");
    assert_eq!(ask["status"], json!("started"), "{ask}");
    assert!(ask["result"].is_null(), "{ask}");

    let r = server.post(&path, json!({"value": {"name": "ada"}}));
    assert_ok(&r);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"got": {"name": "ada"}}), "{body}");
}

#[test]
fn an_input_without_a_schema_takes_any_value_and_an_unknown_label_is_404() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"set -e
v=$(script-runner step ask --input "anything?")
echo "{\"got\":$v}"
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    wait_awaiting(&server, &id);
    let r = server.post(&format!("/api/script-runs/{id}/inputs/other"), json!({"value": 1}));
    assert_error(&r, 404, "STEP_NOT_FOUND");
    // An input is no approval, nor the other way round.
    let r = server.post(&format!("/api/script-runs/{id}/approvals/ask"), json!({"approved": true}));
    assert_error(&r, 404, "STEP_NOT_FOUND");
    let r = server.post(&format!("/api/script-runs/{id}/inputs/ask"), json!({"value": [1, "two", null]}));
    assert_ok(&r);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["output"], json!({"got": [1, "two", null]}), "{body}");
}

#[test]
fn a_step_whose_schema_is_no_schema_is_refused_and_journals_nothing() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"script-runner step ask --input "?" --schema '{"type": 12}'
echo "{\"rc\":$?}"
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["output"], json!({"rc": 3}), "{body}");
    assert!(labels(&body).is_empty(), "{body}");
}

/// An input submitted the moment its entry exists, before the run is `awaiting` and before the
/// step client waits, is kept (as an early approval decision is): the step returns it and the
/// run ends in one execution, never parked. Many runs at once, to land in that window.
#[test]
fn an_input_that_lands_before_the_step_waits_is_kept() {
    const RUNS: usize = 8;
    let (b, d) = builder();
    let server = b.workflows(json!({"parkAfterSec": 1})).start();
    let source = src(
        &d,
        r#"v=$(script-runner step ask --input "n?" --schema '{"type":"integer"}')
sleep 1.5
echo "{\"got\":$v}"
"#,
    );
    let ids: Vec<String> = (0..RUNS).map(|n| server.launch_bash(&source, json!({ "n": n }))).collect();
    std::thread::scope(|scope| {
        for (n, id) in ids.iter().enumerate() {
            let server = &server;
            scope.spawn(move || {
                let deadline = Instant::now() + WAIT;
                loop {
                    let r = server.post(&format!("/api/script-runs/{id}/inputs/ask"), json!({ "value": n }));
                    if r.status == 200 {
                        return;
                    }
                    assert_eq!(r.status, 404, "{}", r.text);
                    assert!(Instant::now() < deadline, "run {id}: no input entry within {WAIT:?}");
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
    });
    for (n, id) in ids.iter().enumerate() {
        let body = server.wait_run_terminal(id, WAIT);
        assert_eq!(body["run"]["status"], json!("completed"), "{body}");
        assert_eq!(body["run"]["output"], json!({ "got": n }), "{body}");
        assert_eq!(body["run"]["attempt"], json!(1), "a second execution started: {body}");
    }
    assert!(!server.server_log().contains("parking its process"), "{}", server.server_log());
}

#[test]
fn a_parked_input_restarts_the_run_which_replays_the_value() {
    let (b, d) = builder();
    let server = b.workflows(json!({"parkAfterSec": 1})).start();
    let source = src(
        &d,
        r#"set -e
script-runner step a -- sh -c 'echo a >> @D/side'
v=$(script-runner step ask --input "who?" --schema '@S')
echo "$SCRIPT_RUN_ATTEMPT $v" >> @D/printed
script-runner step b -- sh -c 'echo b >> @D/side'
echo "{\"attempt\":$SCRIPT_RUN_ATTEMPT,\"got\":$v}"
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let parked = server.wait_run_body(&id, "parked (awaiting, pid null)", WAIT, |b| {
        b["run"]["status"] == json!("awaiting") && b["run"]["pid"].is_null()
    });
    assert_eq!(parked["run"]["attempt"], json!(1), "{parked}");
    assert_eq!(entry(&parked, "ask")["status"], json!("started"));

    let r = server.post(&format!("/api/script-runs/{id}/inputs/ask"), json!({"value": {"name": "ada"}}));
    assert_ok(&r);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"attempt": 2, "got": {"name": "ada"}}), "{body}");
    assert_eq!(lines(&d.join("side")), ["a", "b"], "a completed step ran again after the park");
    // The replay printed the journaled value; the first execution never printed one.
    assert_eq!(lines(&d.join("printed")), [r#"2 {"name":"ada"}"#]);
    assert_eq!(labels(&body), ["a", "ask", "b"]);
}

// ---------------------------------------------------------------- event steps

#[test]
fn an_event_step_receives_the_payload_posted_to_the_run_and_prints_it() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        &format!(
            r#"set -e
{gate}
p=$(script-runner step hook --wait-event paid)
echo "{{\"got\":$p}}"
"#,
            gate = crate::common::wait_for_gate(&d.join("go"))
        ),
    );
    let id = server.launch_bash(&source, json!({}));
    // No step waits yet: the event is refused, not kept.
    let r = server.post(&format!("/api/script-runs/{id}/events/paid"), json!({"early": true}));
    assert_error(&r, 404, "STEP_NOT_FOUND");
    crate::common::open_gate(&d.join("go"));
    let body = wait_awaiting(&server, &id);
    assert_eq!(body["run"]["waitingFor"], json!({"label": "hook", "kind": "event", "event": "paid"}), "{body}");
    let r = server.post(&format!("/api/script-runs/{id}/events/other"), json!({}));
    assert_error(&r, 404, "STEP_NOT_FOUND");
    // Any JSON is a payload, not only an object.
    let r = server.post(&format!("/api/script-runs/{id}/events/paid"), json!([1, {"amount": 12}]));
    assert_ok(&r);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"got": [1, {"amount": 12}]}), "{body}");
    let hook = entry(&body, "hook");
    assert_eq!(hook["stepType"], json!("event"), "{hook}");
    assert_eq!(hook["status"], json!("completed"), "{hook}");
    assert_eq!(hook["result"]["payload"], json!([1, {"amount": 12}]), "{hook}");
}

/// The time-out fails the step on the server, even while the run is parked: the failure is
/// journaled, the run restarts, and the replay fails the same way (exit 1), never waiting again.
#[test]
fn an_event_step_that_times_out_fails_and_replays_as_a_failure() {
    let (b, d) = builder();
    let server = b.workflows(json!({"parkAfterSec": 1})).start();
    let source = src(
        &d,
        r#"script-runner step a -- sh -c 'echo a >> @D/side'
script-runner step hook --wait-event paid --timeout 2500ms > /dev/null 2>> @D/err
echo "$SCRIPT_RUN_ATTEMPT $?" >> @D/rc
echo "{\"attempt\":$SCRIPT_RUN_ATTEMPT}"
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let parked = server.wait_run_body(&id, "parked (awaiting, pid null)", WAIT, |b| {
        b["run"]["status"] == json!("awaiting") && b["run"]["pid"].is_null()
    });
    assert!(parked["run"]["waitingFor"]["deadlineAt"].is_string(), "{parked}");
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"attempt": 2}), "{body}");
    let hook = entry(&body, "hook");
    assert_eq!(hook["status"], json!("failed"), "{hook}");
    assert!(hook["error"].as_str().unwrap().contains("did not arrive"), "{hook}");
    assert_eq!(lines(&d.join("rc")), ["2 1"], "the replay did not fail as journaled");
    assert_eq!(lines(&d.join("side")), ["a"]);
    assert!(std::fs::read_to_string(d.join("err")).unwrap().contains("did not arrive"));
    // Too late: nothing waits for it any more.
    let r = server.post(&format!("/api/script-runs/{id}/events/paid"), json!({}));
    assert_error(&r, 409, "INVALID_STATE");
}

/// A restarted server arms the time-out of a parked run's event step again (no process is
/// left to replay it): the step still fails at its journaled deadline.
#[test]
fn a_parked_event_step_times_out_after_a_server_restart() {
    let (b, d) = builder();
    let mut server = b.workflows(json!({"parkAfterSec": 1})).start();
    let source = src(
        &d,
        r#"script-runner step hook --wait-event paid --timeout 3s > /dev/null 2>&1
echo "{\"attempt\":$SCRIPT_RUN_ATTEMPT,\"rc\":$?}"
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    server.wait_run_body(&id, "parked (awaiting, pid null)", WAIT, |b| {
        b["run"]["status"] == json!("awaiting") && b["run"]["pid"].is_null()
    });
    server.kill9();
    server.restart();
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"attempt": 2, "rc": 1}), "{body}");
    assert_eq!(entry(&body, "hook")["status"], json!("failed"), "{body}");
}
