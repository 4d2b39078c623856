//! Step retries and time-outs (`script-runner step <label> --retry N [--backoff 1s[:1m]]
//! [--timeout <d>]` on command and script steps): failed attempts are journaled with the next
//! try's time, a restart of the server waits only what is left and never runs a journaled
//! attempt twice, a time-out stops the step's whole process group. Every try appends a line to
//! a file in the deployment folder, so "how many times did it run" is read from the file.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{entry, labels, lines, read_pids, wait_gone, Builder};
use serde_json::{json, Value};

/// Bound for anything a test waits for.
const WAIT: Duration = Duration::from_secs(30);

fn builder() -> (Builder, PathBuf) {
    let b = Builder::new();
    let dir = b.dir().to_path_buf();
    (b, dir)
}

/// A workflow source with `@D` replaced by the deployment folder.
fn src(dir: &Path, template: &str) -> String {
    template.replace("@D", dir.to_str().unwrap())
}

fn now_ms() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// The attempts of a journal entry.
fn attempts(step: &Value) -> &Vec<Value> {
    step["attempts"].as_array().unwrap_or_else(|| panic!("no attempts array: {step}"))
}

/// A command that appends the time (Unix ms) to `@D/count` and fails (exit 3, with `try N`
/// on stderr) until it has run `ok_from` times.
fn flaky(ok_from: u32) -> String {
    format!(
        "sh -c 'date +%s%3N >> @D/count; n=$(wc -l < @D/count); if [ $n -lt {ok_from} ]; then echo \"try $n\" >&2; exit 3; fi; echo fine'"
    )
}

#[test]
fn a_command_step_that_fails_twice_then_succeeds_journals_two_attempts_and_exits_0() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        &format!(
            "set -e\nscript-runner step flaky --retry 3 --backoff 100ms -- {} > @D/out\necho '{{\"done\": true}}'\n",
            flaky(3)
        ),
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(lines(&d.join("count")).len(), 3, "tries: {:?}", lines(&d.join("count")));
    assert_eq!(lines(&d.join("out")), ["fine"]);
    let step = entry(&body, "flaky");
    assert_eq!(step["status"], json!("completed"), "{step}");
    assert_eq!(step["result"]["exitCode"], json!(0), "{step}");
    assert_eq!(step["config"]["retry"], json!(3), "{step}");
    assert_eq!(step["config"]["backoffMs"], json!(100), "{step}");
    assert!(step.get("nextAttemptAt").is_none(), "an ended step waits for no try: {step}");
    let tries = attempts(step);
    assert_eq!(tries.len(), 2, "{step}");
    for (i, attempt) in tries.iter().enumerate() {
        let n = i + 1;
        assert_eq!(attempt["attempt"], json!(n), "{attempt}");
        assert_eq!(attempt["status"], json!("failed"), "{attempt}");
        assert_eq!(attempt["exitCode"], json!(3), "{attempt}");
        assert_eq!(attempt["error"], json!("exit code 3"), "{attempt}");
        assert_eq!(attempt["stderrTail"], json!(format!("try {n}\n")), "{attempt}");
        assert!(attempt["startedAt"].is_string() && attempt["endedAt"].is_string(), "{attempt}");
        assert!(attempt.get("jobId").is_none(), "a command's attempt has no job: {attempt}");
    }
}

#[test]
fn a_command_step_out_of_attempts_fails_with_the_last_result_and_its_replay_runs_nothing() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    // The first execution kills itself after the step: the server restarts it with replay.
    let source = src(
        &d,
        &format!(
            r#"script-runner step flaky --retry 2 --backoff 50ms -- {}
echo "exit $?" >> @D/codes
if [ ! -e @D/crashed ]; then touch @D/crashed; kill -9 $$; fi
echo '{{"done": true}}'
"#,
            flaky(100)
        ),
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "the run was replayed once: {body}");
    assert_eq!(lines(&d.join("count")).len(), 3, "1 try and 2 retries, never again on replay");
    assert_eq!(lines(&d.join("codes")), ["exit 3", "exit 3"], "the replay fails the same way");
    let step = entry(&body, "flaky");
    assert_eq!(step["status"], json!("failed"), "{step}");
    assert_eq!(step["error"], json!("exit code 3"), "{step}");
    assert_eq!(step["result"]["stderr"], json!("try 3\n"), "the last try's result is the step's: {step}");
    let numbers: Vec<&Value> = attempts(step).iter().map(|a| &a["attempt"]).collect();
    assert_eq!(numbers, [&json!(1), &json!(2)], "{step}");
}

#[test]
fn a_retry_interrupted_by_a_server_kill_waits_only_the_rest_and_runs_the_next_attempt_once() {
    const BACKOFF_MS: i64 = 6000;
    let (b, d) = builder();
    let mut server = b.workflows(json!({})).start();
    let source = src(
        &d,
        &format!(
            "set -e\nscript-runner step flaky --retry 3 --backoff 6s -- {}\necho '{{\"done\": true}}'\n",
            flaky(2)
        ),
    );
    let id = server.launch_bash(&source, json!({}));
    let waiting = server.wait_run_body(&id, "attempt 1 journaled", WAIT, |b| {
        b["journal"].as_array().is_some_and(|j| {
            j.iter().any(|e| e["stepKey"] == json!("flaky") && e["attempts"].as_array().is_some_and(|a| a.len() == 1))
        })
    });
    let step = entry(&waiting, "flaky");
    assert_eq!(step["status"], json!("started"), "{step}");
    assert!(step["nextAttemptAt"].is_string(), "{step}");
    let due = step["result"]["nextAttemptAtMs"].as_i64().unwrap_or_else(|| panic!("no nextAttemptAtMs: {step}"));

    server.kill9();
    // Down for half the backoff: a fresh backoff begun after the restart would end well after
    // the journaled time (no test time is lost: the backoff lasts that long anyway).
    let up_at = due - BACKOFF_MS / 2;
    if now_ms() < up_at {
        std::thread::sleep(Duration::from_millis(u64::try_from(up_at - now_ms()).unwrap()));
    }
    server.restart();
    let restarted_ms = now_ms();

    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    let tries = lines(&d.join("count"));
    assert_eq!(tries.len(), 2, "attempt 1 once, attempt 2 once: {tries:?}");
    let second: i64 = tries[1].parse().unwrap();
    assert!(second >= due, "attempt 2 ran at {second}, before its journaled time {due}");
    assert!(
        second < restarted_ms + BACKOFF_MS,
        "attempt 2 ran {} ms after the restart: it waited a whole backoff again",
        second - restarted_ms
    );
    let step = entry(&body, "flaky");
    assert_eq!(step["status"], json!("completed"), "{step}");
    assert_eq!(attempts(step).len(), 1, "{step}");
    assert_eq!(attempts(step)[0]["attempt"], json!(1), "{step}");
}

#[test]
fn a_script_step_retry_interrupted_by_a_server_kill_submits_the_next_job_once_when_due() {
    let (b, d) = builder();
    let mut server = b
        .workflows(json!({}))
        .script("flaky", r#"date +%s%3N >> "$1"; n=$(wc -l < "$1"); [ "$n" -ge 2 ] || exit 3; echo ok"#)
        .start();
    let source = src(
        &d,
        "set -e\nscript-runner step s --script flaky --retry 2 --backoff 3s @D/count\necho '{\"done\": true}'\n",
    );
    let id = server.launch_bash(&source, json!({}));
    let waiting = server.wait_run_body(&id, "attempt 1 journaled", WAIT, |b| {
        b["journal"].as_array().is_some_and(|j| {
            j.iter().any(|e| e["stepKey"] == json!("s") && e["attempts"].as_array().is_some_and(|a| a.len() == 1))
        })
    });
    let step = entry(&waiting, "s");
    let due = step["result"]["nextAttemptAtMs"].as_i64().unwrap_or_else(|| panic!("no nextAttemptAtMs: {step}"));
    let next_job = step["jobId"].as_str().unwrap().to_string();
    assert_ne!(step["attempts"][0]["jobId"].as_str(), Some(next_job.as_str()), "{step}");

    server.kill9();
    server.restart();

    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    let tries = lines(&d.join("count"));
    assert_eq!(tries.len(), 2, "job 1 once, job 2 once: {tries:?}");
    let second: i64 = tries[1].parse().unwrap();
    assert!(second >= due, "the second job ran at {second}, before its journaled time {due}");
    let step = entry(&body, "s");
    assert_eq!(step["status"], json!("completed"), "{step}");
    assert_eq!(step["jobId"], json!(next_job), "the journaled next job is the one that ran: {step}");
    assert_eq!(attempts(step).len(), 1, "{step}");
}

#[test]
fn a_command_step_time_out_kills_its_whole_process_group() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"script-runner step slow --timeout 1s -- sh -c 'sleep 1000 & echo $! > @D/pids; echo $$ >> @D/pids; wait'
echo "exit $?" >> @D/codes
echo '{"done": true}'
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let pids = read_pids(&d.join("pids"), 2, WAIT);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(lines(&d.join("codes")), ["exit 124"]);
    let step = entry(&body, "slow");
    assert_eq!(step["status"], json!("failed"), "{step}");
    assert_eq!(step["error"], json!("timed out after 1s"), "{step}");
    assert_eq!(step["result"]["exitCode"], json!(124), "{step}");
    assert_eq!(step["config"]["timeoutMs"], json!(1000), "{step}");
    // The shell and the sleep it left behind (its child, in its group) are both gone.
    assert!(wait_gone(&pids, WAIT).is_empty(), "left alive: {pids:?}");
}

#[test]
fn cancelling_a_run_stops_the_process_group_of_its_running_command_step() {
    // The command leads its own process group (so a time-out can stop its children): the
    // run's stop reaches it through the step client, which stops that group before it ends.
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"script-runner step slow -- sh -c 'sleep 1000 & echo $! > @D/pids; echo $$ >> @D/pids; wait'
echo '{"done": true}'
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let pids = read_pids(&d.join("pids"), 2, WAIT);
    let r = server.request("DELETE", &format!("/api/script-runs/{id}"), None, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("cancelled"), "{body}");
    assert!(wait_gone(&pids, WAIT).is_empty(), "left alive: {pids:?}");
}

#[test]
fn a_script_step_retries_in_new_jobs_and_its_time_out_cancels_the_job() {
    let (b, d) = builder();
    let server = b
        .workflows(json!({}))
        .script(
            "flaky",
            r#"echo x >> "$1"; n=$(wc -l < "$1"); if [ "$n" -lt 2 ]; then echo "fail $n" >&2; exit 3; fi; echo ok"#,
        )
        .script("slow", r#"sleep 1000 & echo $! >> "$1"; echo $$ >> "$1"; wait"#)
        .start();
    let source = src(
        &d,
        r#"script-runner step flaky --script flaky --retry 2 --backoff 100ms @D/count > @D/flaky.out
echo "flaky $?" >> @D/codes
script-runner step slow --script slow --retry 1 --backoff 100ms --timeout 1s @D/pids
echo "slow $?" >> @D/codes
echo '{"done": true}'
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(lines(&d.join("codes")), ["flaky 0", "slow 1"]);

    // Failed once, then succeeded in a second job.
    assert_eq!(lines(&d.join("count")).len(), 2);
    assert_eq!(lines(&d.join("flaky.out")), ["ok"]);
    let flaky = entry(&body, "flaky");
    assert_eq!(flaky["status"], json!("completed"), "{flaky}");
    let tries = attempts(flaky);
    assert_eq!(tries.len(), 1, "{flaky}");
    assert_eq!((&tries[0]["attempt"], &tries[0]["exitCode"]), (&json!(1), &json!(3)), "{flaky}");
    assert_eq!(tries[0]["stderrTail"], json!("fail 1\n"), "{flaky}");
    let first_job = tries[0]["jobId"].as_str().unwrap_or_else(|| panic!("no jobId: {flaky}"));
    assert_ne!(Some(first_job), flaky["jobId"].as_str(), "each try is a new job: {flaky}");
    assert_eq!(flaky["result"]["jobId"], flaky["jobId"], "{flaky}");
    assert_eq!(server.job(first_job)["status"], json!("failed"));

    // Timed out twice: each job cancelled, its process group gone.
    let slow = entry(&body, "slow");
    assert_eq!(slow["status"], json!("failed"), "{slow}");
    let error = slow["error"].as_str().unwrap();
    assert!(error.starts_with("timed out after 1s"), "{slow}");
    let tries = attempts(slow);
    assert_eq!(tries.len(), 1, "{slow}");
    assert!(tries[0]["error"].as_str().unwrap().starts_with("timed out after 1s"), "{slow}");
    for job in [tries[0]["jobId"].as_str().unwrap(), slow["jobId"].as_str().unwrap()] {
        assert_eq!(server.job(job)["status"], json!("canceled"), "{job}");
    }
    let pids = read_pids(&d.join("pids"), 4, WAIT);
    assert!(wait_gone(&pids, WAIT).is_empty(), "left alive: {pids:?}");
}

#[test]
fn bad_retry_backoff_and_timeout_values_are_usage_errors_that_journal_nothing() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let cases = [
        "--retry 0 -- true",
        "--retry 101 -- true",
        "--retry x -- true",
        "--backoff 1s -- true",
        "--retry 2 --backoff 0s -- true",
        "--retry 2 --backoff 2s:1s -- true",
        "--retry 2 --backoff soon -- true",
        "--timeout 0s -- true",
        "--timeout 25h -- true",
        "--sleep 1s --retry 2",
        "--value 1 --timeout 1s",
    ];
    let calls: String =
        cases.iter().map(|c| format!("script-runner step bad {c} 2>> @D/err; echo $? >> @D/codes\n")).collect();
    let source = src(&d, &format!("{calls}echo '{{\"done\": true}}'\n"));
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(lines(&d.join("codes")), vec!["2"; cases.len()], "stderr: {:?}", lines(&d.join("err")));
    let err = lines(&d.join("err"));
    assert_eq!(err.len(), cases.len(), "one line each: {err:?}");
    assert!(err.iter().all(|l| l.starts_with("script-runner step: ")), "{err:?}");
    assert!(labels(&body).is_empty(), "{body}");
}
