//! Run-level retry (`retry: {attempts, delayMs}` on `POST /api/script-runs`): a failed
//! execution is re-run with replay, so completed steps are not run again and only the failed
//! one is; each failed execution stays visible in the run's `attempts`. Real bash workflows on
//! a real server; every step appends its label to a file, so "ran once" and "ran twice" are
//! read from that file.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{lines, Builder, Resp, TestServer};
use serde_json::{json, Value};

/// Bound for anything a test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// A server that runs inline bash workflows, and its folder.
fn server() -> (TestServer, PathBuf) {
    let b = Builder::new();
    let dir = b.dir().to_path_buf();
    (b.workflows(json!({})).start(), dir)
}

/// Steps a, b, c, each appending its label (and the time, ms) to `count`; b fails (exit 3)
/// the first time it runs and succeeds after (a marker file remembers).
fn flaky_b(dir: &Path) -> String {
    r#"set -e
script-runner step a -- sh -c 'echo "a $(date +%s%3N)" >> @D/count'
script-runner step b -- sh -c 'echo "b $(date +%s%3N)" >> @D/count; [ -e @D/marker ] && exit 0; touch @D/marker; echo "b broke" >&2; exit 3'
script-runner step c -- sh -c 'echo "c $(date +%s%3N)" >> @D/count'
echo '{"done": true}'
"#
    .replace("@D", dir.to_str().unwrap())
}

/// Steps a then b, where b always fails (exit 3).
fn always_failing_b(dir: &Path) -> String {
    r#"set -e
script-runner step a -- sh -c 'echo "a $(date +%s%3N)" >> @D/count'
script-runner step b -- sh -c 'echo "b $(date +%s%3N)" >> @D/count; echo "b broke" >&2; exit 3'
"#
    .replace("@D", dir.to_str().unwrap())
}

/// Launches an inline bash run with these extra launch fields; the answer.
fn launch(server: &TestServer, source: &str, extra: Value) -> Resp {
    let mut body = json!({"source": source, "interpreter": "bash"});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    server.launch_run(body)
}

/// Launches and returns the run's id.
fn launched(server: &TestServer, source: &str, extra: Value) -> String {
    let r = launch(server, source, extra);
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["run"]["id"].as_str().unwrap().to_string()
}

/// The labels in the count file, in the order the steps ran.
fn ran(dir: &Path) -> Vec<String> {
    lines(&dir.join("count")).iter().map(|l| l.split(' ').next().unwrap().to_string()).collect()
}

/// When (ms) each run of `label` happened, from the count file.
fn times_of(dir: &Path, label: &str) -> Vec<i64> {
    lines(&dir.join("count"))
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("{label} ")).map(|t| t.parse().unwrap()))
        .collect()
}

/// The journal entry with this label, if any.
fn step<'a>(body: &'a Value, label: &str) -> Option<&'a Value> {
    body["journal"].as_array().unwrap().iter().find(|e| e["stepKey"] == json!(label))
}

/// Waits until the run has `n` failed executions in its attempts; returns its body.
fn wait_attempts(server: &TestServer, id: &str, n: usize) -> Value {
    server.wait_run_body(id, &format!("{n} failed attempt(s)"), WAIT, |b| {
        b["run"]["attempts"].as_array().is_some_and(|a| a.len() >= n)
    })
}

fn iso_ms(iso: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(iso).unwrap().timestamp_millis()
}

#[test]
fn a_retried_run_re_runs_only_the_failed_step_and_keeps_the_failure_in_its_attempts() {
    let (server, dir) = server();
    let id = launched(&server, &flaky_b(&dir), json!({"retry": {"attempts": 3, "delayMs": 200}}));
    let body = server.wait_run_terminal(&id, WAIT);
    let run = &body["run"];
    assert_eq!(run["status"], json!("completed"), "{body}");
    assert_eq!(run["output"], json!({"done": true}), "{body}");
    assert_eq!(run["error"], Value::Null, "{body}");
    assert_eq!(run["attempt"], json!(2), "the second execution completed it: {body}");
    assert_eq!(run["retry"], json!({"attempts": 3, "delayMs": 200}), "{body}");
    assert_eq!(run["nextAttemptAt"], Value::Null, "nothing waits any more: {body}");
    assert_eq!(ran(&dir), ["a", "b", "b", "c"], "a once (replayed), b twice, c once");

    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{body}");
    let failed = &attempts[0];
    assert_eq!(failed["attempt"], json!(1), "{failed}");
    assert_eq!(failed["status"], json!("failed"), "{failed}");
    assert_eq!(failed["exitCode"], json!(3), "{failed}");
    assert!(failed["error"].as_str().unwrap().starts_with("exit code 3"), "{failed}");
    assert!(iso_ms(failed["startedAt"].as_str().unwrap()) <= iso_ms(failed["endedAt"].as_str().unwrap()), "{failed}");
    let steps = failed["failedSteps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "only b failed: {failed}");
    assert_eq!((&steps[0]["stepKey"], &steps[0]["status"]), (&json!("b"), &json!("failed")), "{failed}");
    assert_eq!(steps[0]["config"]["command"][0], json!("sh"), "the entry as it was journaled: {failed}");

    // The journal holds the steps of the execution that completed: b's failure moved out.
    for label in ["a", "b", "c"] {
        assert_eq!(step(&body, label).unwrap()["status"], json!("completed"), "{label}: {body}");
    }
    // The failed execution's log is still readable by its number.
    let r = server.get(&format!("/api/script-runs/{id}/logs?stream=stderr&attempt=1"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["data"].as_str().unwrap().contains("b broke"), "{}", r.text);

    // The re-execution is on the run's events, between the start and the end.
    let events = server.request("GET", &format!("/api/script-runs/{id}/events"), None, &[]);
    assert_eq!(events.status, 200, "{}", events.text);
    let retrying = events.text.find("event: retrying").unwrap_or_else(|| panic!("no retrying event: {}", events.text));
    assert!(retrying < events.text.find("event: end").unwrap(), "{}", events.text);
    // The list shows the same.
    let list = server.get("/api/script-runs?limit=5");
    let listed = list.body["runs"].as_array().unwrap().iter().find(|r| r["id"] == json!(id)).unwrap().clone();
    assert_eq!(listed["attempts"], run["attempts"], "{listed}");
}

#[test]
fn a_run_that_keeps_failing_ends_failed_after_its_last_attempt_with_each_failure_kept() {
    let (server, dir) = server();
    let id = launched(&server, &always_failing_b(&dir), json!({"retry": {"attempts": 3, "delayMs": 0}}));
    let body = server.wait_run_terminal(&id, WAIT);
    let run = &body["run"];
    assert_eq!(run["status"], json!("failed"), "{body}");
    assert!(run["error"].as_str().unwrap().starts_with("exit code 3"), "{body}");
    assert_eq!(run["attempt"], json!(3), "three executions in all: {body}");
    assert_eq!(ran(&dir), ["a", "b", "b", "b"], "a once, b in each of the three executions");
    let attempts = run["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "the two retried failures; the last one is the run's own end: {body}");
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["attempt"], json!(n + 1), "{attempt}");
        assert_eq!(attempt["failedSteps"][0]["stepKey"], json!("b"), "{attempt}");
    }
    // The last failure stays in the journal, as a run without retry leaves it.
    assert_eq!(step(&body, "b").unwrap()["status"], json!("failed"), "{body}");
    assert_eq!(run["nextAttemptAt"], Value::Null, "{body}");
}

#[test]
fn without_a_retry_option_a_failed_run_ends_failed_at_once() {
    let (server, dir) = server();
    let id = launched(&server, &flaky_b(&dir), json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    let run = &body["run"];
    assert_eq!(run["status"], json!("failed"), "{body}");
    assert_eq!(run["attempt"], json!(1), "{body}");
    assert_eq!((&run["retry"], &run["attempts"], &run["nextAttemptAt"]), (&Value::Null, &json!([]), &Value::Null));
    assert_eq!(ran(&dir), ["a", "b"]);
    assert_eq!(step(&body, "b").unwrap()["status"], json!("failed"), "{body}");
}

#[test]
fn a_run_cancelled_while_it_waits_for_its_next_attempt_is_not_re_run() {
    let (server, dir) = server();
    let id = launched(&server, &always_failing_b(&dir), json!({"retry": {"attempts": 5, "delayMs": 600_000}}));
    let waiting = wait_attempts(&server, &id, 1);
    let run = &waiting["run"];
    assert_eq!(run["status"], json!("running"), "a run waiting for its next attempt is running: {waiting}");
    assert_eq!(run["pid"], Value::Null, "with no process: {waiting}");
    let next = iso_ms(run["nextAttemptAt"].as_str().unwrap_or_else(|| panic!("no nextAttemptAt: {waiting}")));
    let ended = iso_ms(run["attempts"][0]["endedAt"].as_str().unwrap());
    assert_eq!(next - ended, 600_000, "the delay counts from the failed execution's end: {waiting}");
    assert!(step(&waiting, "b").is_none(), "b's failure moved out of the journal: {waiting}");

    let r = server.request("DELETE", &format!("/api/script-runs/{id}"), None, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("cancelled"), "{body}");
    assert_eq!(body["run"]["attempts"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(ran(&dir), ["a", "b"], "no second execution");
}

#[test]
fn a_run_cancelled_during_an_execution_is_not_retried() {
    let (server, dir) = server();
    let source = r#"set -e
script-runner step a -- sh -c 'echo "a 0" >> @D/count'
echo go > @D/started
sleep 60
"#
    .replace("@D", dir.to_str().unwrap());
    let id = launched(&server, &source, json!({"retry": {"attempts": 3, "delayMs": 0}}));
    crate::common::wait_file(&dir.join("started"), WAIT);
    let r = server.request("DELETE", &format!("/api/script-runs/{id}"), None, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("cancelled"), "{body}");
    assert_eq!((&body["run"]["attempt"], &body["run"]["attempts"]), (&json!(1), &json!([])), "{body}");
}

#[test]
fn bad_retry_values_are_refused_with_a_message_that_names_them() {
    let (server, dir) = server();
    let source = flaky_b(&dir);
    for (retry, says) in [
        (json!({"attempts": 0}), "retry.attempts must be 1 to 100"),
        (json!({"attempts": 101}), "retry.attempts must be 1 to 100"),
        (json!({"attempts": 3, "delayMs": 86_400_001}), "retry.delayMs must be 0 to 86400000"),
        (json!({"attempts": -1}), "retry must be"),
        (json!({"attempts": 2.5}), "retry must be"),
        (json!({"delayMs": 10}), "retry must be"),
        (json!({"attempts": 2, "delayMs": "1s"}), "retry must be"),
        (json!({"attempts": 2, "backoff": 2}), "unknown field retry.backoff"),
        (json!(3), "retry must be"),
    ] {
        let r = launch(&server, &source, json!({ "retry": retry }));
        assert_eq!(r.status, 400, "{retry}: {}", r.text);
        assert_eq!(r.body["error"]["code"], json!("INVALID_REQUEST"), "{retry}: {}", r.text);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{retry}: {message}");
    }
    let list = server.get("/api/script-runs");
    assert_eq!(list.body["total"], json!(0), "nothing launched: {}", list.text);
    assert!(!dir.join("count").exists(), "nothing ran");
}

#[test]
fn the_retry_option_is_part_of_what_an_idempotency_key_launched() {
    let (server, dir) = server();
    let source = flaky_b(&dir);
    let first = launch(&server, &source, json!({"idempotencyKey": "k1", "retry": {"attempts": 2, "delayMs": 0}}));
    assert_eq!(first.status, 201, "{}", first.text);
    let again = launch(&server, &source, json!({"idempotencyKey": "k1", "retry": {"attempts": 2, "delayMs": 0}}));
    assert_eq!((again.status, &again.body["deduplicated"]), (200, &json!(true)), "{}", again.text);
    let other = launch(&server, &source, json!({"idempotencyKey": "k1", "retry": {"attempts": 3, "delayMs": 0}}));
    assert_eq!(other.status, 409, "{}", other.text);
    assert_eq!(other.body["error"]["code"], json!("IDEMPOTENCY_CONFLICT"), "{}", other.text);
    let none = launch(&server, &source, json!({"idempotencyKey": "k1"}));
    assert_eq!(none.status, 409, "{}", none.text);
}

#[test]
fn a_server_killed_during_the_delay_waits_only_what_is_left_of_it_then_re_runs_the_failed_step() {
    const DELAY_MS: i64 = 8_000;
    let b = Builder::new();
    let dir = b.dir().to_path_buf();
    let mut server = b.workflows(json!({})).start();
    let id = launched(&server, &flaky_b(&dir), json!({"retry": {"attempts": 2, "delayMs": DELAY_MS}}));
    let waiting = wait_attempts(&server, &id, 1);
    let next = iso_ms(waiting["run"]["nextAttemptAt"].as_str().unwrap_or_else(|| panic!("{waiting}")));

    server.kill9();
    // Down for half the delay: a restart that began the delay again could not re-run b before
    // `restarted + DELAY_MS`, well after `next`.
    let up_at = next - DELAY_MS / 2;
    let now = chrono::Utc::now().timestamp_millis();
    if now < up_at {
        std::thread::sleep(Duration::from_millis(u64::try_from(up_at - now).unwrap()));
    }
    server.restart();
    let restarted = chrono::Utc::now().timestamp_millis();

    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(ran(&dir), ["a", "b", "b", "c"], "a once, b again after the restart, then c");
    assert_eq!(body["run"]["attempts"].as_array().unwrap().len(), 1, "{body}");
    let second_b = times_of(&dir, "b")[1];
    assert!(second_b >= next, "b ran again {} ms before its attempt was due: {body}", next - second_b);
    assert!(
        second_b < restarted + DELAY_MS,
        "b ran again {} ms after the restart: the delay began again: {body}",
        second_b - restarted
    );
}
