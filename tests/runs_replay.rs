//! Durable workflow runs, replay and exactly-once: real bash workflows on a real server. Every
//! step's side effect appends a line to a file in the deployment folder, so "exactly once" is
//! read from the file after crashes, kills, pauses, parks and forks.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{alive, entry, labels, lines, read_pids, signal, wait_file, wait_gone, Builder, Resp, TestServer};
use script_runner_client::{ClientError, Workflow};
use serde_json::{json, Value};

/// Bound for anything a test waits for.
const WAIT: Duration = Duration::from_secs(20);

/// A builder and its folder. Workflow processes survive a SIGKILL of the server: the
/// server's drop kills every process left of its deployment (see [`crate::common::reap`]).
fn builder() -> (Builder, PathBuf) {
    let b = Builder::new();
    let dir = b.dir().to_path_buf();
    (b, dir)
}

/// A workflow source with `@D` replaced by the deployment folder.
fn src(dir: &Path, template: &str) -> String {
    template.replace("@D", dir.to_str().unwrap())
}

/// The text of a file, trimmed.
fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

/// Waits until the run has this status and a live pid; returns the pid.
fn wait_pid(server: &TestServer, id: &str, status: &str) -> i32 {
    let body = server.wait_run_body(id, &format!("{status} with a pid"), WAIT, |b| {
        b["run"]["status"] == json!(status) && b["run"]["pid"].is_i64()
    });
    i32::try_from(body["run"]["pid"].as_i64().unwrap()).unwrap()
}

fn assert_ok(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["ok"], json!(true), "{}", r.text);
}

fn now_ms() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// A run's log page (bytes) of one stream, of an attempt (latest when None).
fn log(server: &TestServer, id: &str, stream: &str, attempt: Option<i32>) -> String {
    let attempt = attempt.map(|a| format!("&attempt={a}")).unwrap_or_default();
    let r = server.get(&format!("/api/script-runs/{id}/logs?stream={stream}{attempt}"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["data"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------- step kinds

#[test]
fn command_step_prints_stdout_journals_its_result_and_returns_its_exit_code() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"set -e
out=$(script-runner step greet -- sh -c 'echo greet >> @D/side; echo hello-from-step')
echo "captured=$out" > @D/captured
set +e
script-runner step boom -- sh -c 'echo boom >> @D/side; echo "it broke" >&2; exit 7' > /dev/null
rc=$?
set -e
echo "{\"rc\":$rc}"
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"rc": 7}), "{body}");
    assert_eq!(text(&d.join("captured")), "captured=hello-from-step");
    assert_eq!(lines(&d.join("side")), ["greet", "boom"]);

    assert_eq!(labels(&body), ["greet", "boom"]);
    let greet = entry(&body, "greet");
    assert_eq!(greet["stepType"], json!("command"), "{greet}");
    assert_eq!(greet["status"], json!("completed"), "{greet}");
    assert_eq!(
        greet["config"],
        json!({"command": ["sh", "-c", src(&d, "echo greet >> @D/side; echo hello-from-step")]}),
        "{greet}"
    );
    assert_eq!(greet["result"], json!({"exitCode": 0, "stdout": "hello-from-step\n", "stderr": ""}), "{greet}");
    assert!(greet["error"].is_null(), "{greet}");
    assert!(greet["completedAt"].is_string() && greet["durationMs"].is_i64(), "{greet}");

    let boom = entry(&body, "boom");
    assert_eq!(boom["status"], json!("failed"), "{boom}");
    assert_eq!(boom["result"], json!({"exitCode": 7, "stdout": "", "stderr": "it broke\n"}), "{boom}");
    assert_eq!(boom["error"], json!("exit code 7"), "{boom}");
    // The CLI printed the step's stderr to the workflow's stderr.
    assert!(log(&server, &id, "stderr", None).contains("it broke"));
}

#[test]
fn failed_command_step_replays_its_failure_on_resume_and_a_fork_reruns_it() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    std::fs::write(d.join("hold"), "").unwrap();
    let source = src(
        &d,
        r#"script-runner step a -- sh -c 'echo a >> @D/side'
script-runner step boom -- sh -c 'echo boom >> @D/side; echo "disk full" >&2; exit 5'
rc=$?
echo "$SCRIPT_RUN_ATTEMPT:$rc" >> @D/rcs
while [ -e @D/hold ]; do sleep 0.05; done
exit $rc
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    assert_eq!(wait_file(&d.join("rcs"), WAIT), "1:5");
    let pid = wait_pid(&server, &id, "running");
    let before = server.script_run(&id);
    let boom = entry(&before, "boom").clone();
    assert_eq!(boom["status"], json!("failed"), "{boom}");
    assert_eq!(boom["result"], json!({"exitCode": 5, "stdout": "", "stderr": "disk full\n"}), "{boom}");

    let paused = server.post(&format!("/api/script-runs/{id}/pause"), json!({}));
    assert_ok(&paused, 200);
    assert_eq!(paused.body["run"]["status"], json!("paused"), "{}", paused.text);
    assert!(wait_gone(&[pid], WAIT).is_empty(), "the paused run's process {pid} still runs");

    std::fs::remove_file(d.join("hold")).unwrap();
    let resumed = server.post(&format!("/api/script-runs/{id}/resume"), json!({}));
    assert_ok(&resumed, 200);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("failed"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    let error = body["run"]["error"].as_str().unwrap();
    assert!(error.starts_with("exit code 5") && error.contains("disk full"), "{error}");
    // Same exit code on replay, the step not re-run, its entry unchanged.
    assert_eq!(lines(&d.join("rcs")), ["1:5", "2:5"]);
    assert_eq!(lines(&d.join("side")), ["a", "boom"]);
    assert_eq!(entry(&body, "boom"), &boom);
    assert_eq!(entry(&body, "a"), entry(&before, "a"));
    // The replayed failure printed the same stderr in the second execution.
    assert!(log(&server, &id, "stderr", Some(2)).contains("disk full"), "{}", log(&server, &id, "stderr", Some(2)));

    // A fork copies only the completed entries: `a` replays, the failed `boom` runs again.
    let fork = server.post(&format!("/api/script-runs/{id}/fork"), json!({}));
    assert_ok(&fork, 201);
    let fork_id = fork.body["run"]["id"].as_str().unwrap().to_string();
    assert_eq!(fork.body["run"]["forkedFrom"], json!(id), "{}", fork.text);
    let forked = server.wait_run_terminal(&fork_id, WAIT);
    assert_eq!(forked["run"]["status"], json!("failed"), "{forked}");
    assert_eq!(lines(&d.join("side")), ["a", "boom", "boom"]);
    assert_eq!(entry(&forked, "a")["result"], entry(&before, "a")["result"]);
    assert_eq!(entry(&forked, "boom")["result"], boom["result"]);
    // The original is untouched.
    assert_eq!(server.script_run(&id)["journal"], body["journal"]);
}

#[test]
fn script_step_runs_a_job_journals_its_id_and_a_failing_job_fails_the_step() {
    let (b, d) = builder();
    let server = b
        .workflows(json!({}))
        .script("greet", &src(&d, r#"echo "job says $1"; echo job >> @D/jobside"#))
        .script("broken", r#"echo "job broke" >&2; exit 4"#)
        .start();
    let source = src(
        &d,
        r#"set -e
script-runner step s1 --script greet world > @D/s1.out
script-runner step s2 --script broken
echo unreachable >> @D/side
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("failed"), "{body}");
    let error = body["run"]["error"].as_str().unwrap();
    assert!(error.starts_with("exit code 4"), "the CLI exits with the job's code: {error}");
    assert!(log(&server, &id, "stderr", None).contains("job broke"));
    assert_eq!(text(&d.join("s1.out")), "job says world");
    assert_eq!(lines(&d.join("jobside")), ["job"]);
    assert!(!d.join("side").exists());

    let s1 = entry(&body, "s1");
    assert_eq!(s1["stepType"], json!("script"), "{s1}");
    assert_eq!(s1["status"], json!("completed"), "{s1}");
    assert_eq!(s1["config"], json!({"scriptId": "greet", "args": ["world"]}), "{s1}");
    let job1 = s1["jobId"].as_str().unwrap_or_else(|| panic!("no jobId: {s1}"));
    assert_eq!(s1["result"]["jobId"], json!(job1), "{s1}");
    assert_eq!(s1["result"]["stdout"], json!("job says world\n"), "{s1}");
    assert_eq!(s1["result"]["exitCode"], json!(0), "{s1}");
    let job = server.job(job1);
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    assert_eq!(job["scriptId"], json!("greet"), "{job}");

    let s2 = entry(&body, "s2");
    assert_eq!(s2["status"], json!("failed"), "{s2}");
    let job2 = s2["jobId"].as_str().unwrap_or_else(|| panic!("no jobId: {s2}"));
    assert_eq!(s2["result"]["exitCode"], json!(4), "{s2}");
    assert!(s2["error"].as_str().unwrap().contains(job2), "{s2}");
    let job = server.job(job2);
    assert_eq!(job["status"], json!("failed"), "{job}");
    assert_eq!(job["code"], json!(4), "{job}");
}

#[test]
fn value_steps_return_the_first_value_on_resume_and_on_a_fork_with_other_source() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    std::fs::write(d.join("hold"), "").unwrap();
    std::fs::write(d.join("input"), r#"{"n":1}"#).unwrap();
    let source = src(
        &d,
        r#"set -e
script-runner step v --value "$(cat @D/input)" > @D/v.$SCRIPT_RUN_ATTEMPT
script-runner step t --value-from -- date +%s%N > @D/t.$SCRIPT_RUN_ATTEMPT
while [ -e @D/hold ]; do sleep 0.05; done
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let first_t = wait_file(&d.join("t.1"), WAIT);
    assert_eq!(text(&d.join("v.1")), r#"{"n":1}"#);
    assert!(first_t.parse::<u64>().is_ok(), "{first_t}");

    let paused = server.post(&format!("/api/script-runs/{id}/pause"), json!({}));
    assert_ok(&paused, 200);
    std::fs::write(d.join("input"), r#"{"n":2}"#).unwrap();
    std::fs::remove_file(d.join("hold")).unwrap();
    assert_ok(&server.post(&format!("/api/script-runs/{id}/resume"), json!({})), 200);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    assert_eq!(text(&d.join("v.2")), r#"{"n":1}"#, "the replay returns the first value");
    assert_eq!(text(&d.join("t.2")), first_t, "the replay returns the first value-from");
    assert_eq!(entry(&body, "v")["result"], json!({"n": 1}));
    assert_eq!(entry(&body, "v")["stepType"], json!("value"));
    assert_eq!(entry(&body, "t")["result"].to_string(), first_t);

    let fork_source = src(
        &d,
        r#"set -e
script-runner step v --value '{"n":3}' > @D/fork.v
script-runner step t --value-from -- echo other > @D/fork.t
"#,
    );
    let fork = server.post(&format!("/api/script-runs/{id}/fork"), json!({"source": fork_source}));
    assert_ok(&fork, 201);
    let fork_id = fork.body["run"]["id"].as_str().unwrap();
    let forked = server.wait_run_terminal(fork_id, WAIT);
    assert_eq!(forked["run"]["status"], json!("completed"), "{forked}");
    assert_eq!(text(&d.join("fork.v")), r#"{"n":1}"#);
    assert_eq!(text(&d.join("fork.t")), first_t);
}

#[test]
fn durable_sleep_survives_a_server_kill_and_wakes_when_first_due() {
    const NAP_MS: i64 = 10_000;
    let (b, d) = builder();
    let mut server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"set -e
script-runner step before -- sh -c 'echo before >> @D/side'
script-runner step nap --sleep 10s
script-runner step after -- sh -c 'echo after >> @D/side'
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let started = server.wait_step(&id, "nap", "started");
    let nap = entry(&started, "nap");
    assert_eq!(nap["stepType"], json!("sleep"), "{nap}");
    assert_eq!(nap["config"], json!({"durationMs": NAP_MS}), "{nap}");
    let wake_ms = nap["result"]["wakeAtMs"].as_i64().unwrap_or_else(|| panic!("no wakeAtMs: {nap}"));
    let begun_ms = wake_ms - NAP_MS;

    server.kill9();
    // Down for half the nap: the first wake-up is then due well before a fresh 10 s sleep
    // begun after the restart would end (which the server, back up, cannot end earlier than
    // `restarted_ms + NAP_MS`). No test time is lost: the nap lasts that long anyway.
    let up_at = begun_ms + NAP_MS / 2;
    if now_ms() < up_at {
        std::thread::sleep(Duration::from_millis(u64::try_from(up_at - now_ms()).unwrap()));
    }
    server.restart();
    let restarted_ms = now_ms();

    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    assert_eq!(lines(&d.join("side")), ["before", "after"]);
    let nap = entry(&body, "nap");
    assert_eq!(nap["status"], json!("completed"), "{nap}");
    let duration = nap["durationMs"].as_i64().unwrap();
    let completed_ms = begun_ms + duration;
    assert!(duration >= NAP_MS - 100, "woke before it was due: {duration} ms: {nap}");
    assert!(
        completed_ms < restarted_ms + NAP_MS,
        "the sleep ended {} ms after the server was back (wake {wake_ms}, back {restarted_ms}): it slept again: {nap}",
        completed_ms - restarted_ms
    );
}

#[test]
fn approval_approved_takes_the_exit_0_path_and_denied_the_exit_1_path() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"script-runner step gate --approval "ship it?" > @D/decision.$SCRIPT_RUN_ID
rc=$?
if [ $rc = 0 ]; then
  script-runner step ship -- sh -c 'echo shipped >> @D/side.$SCRIPT_RUN_ID'
fi
echo "{\"rc\":$rc}"
"#,
    );
    let yes = server.launch_bash(&source, json!({"n": 1}));
    let no = server.launch_bash(&source, json!({"n": 2}));
    for id in [&yes, &no] {
        let pid = wait_pid(&server, id, "awaiting");
        assert!(alive(pid));
        let gate = entry(&server.script_run(id), "gate").clone();
        assert_eq!(gate["stepType"], json!("approval"), "{gate}");
        assert_eq!(gate["status"], json!("started"), "{gate}");
        assert_eq!(gate["config"], json!({"message": "ship it?"}), "{gate}");
    }

    let r = server.post(
        &format!("/api/script-runs/{yes}/approvals/gate"),
        json!({"approved": true, "by": "alice", "comment": "lgtm"}),
    );
    assert_ok(&r, 200);
    let r = server.post(&format!("/api/script-runs/{no}/approvals/gate"), json!({"approved": false, "by": "bob"}));
    assert_ok(&r, 200);

    let body = server.wait_run_terminal(&yes, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"rc": 0}), "{body}");
    assert_eq!(body["run"]["attempt"], json!(1), "{body}");
    let gate = entry(&body, "gate");
    assert_eq!(gate["status"], json!("completed"), "{gate}");
    assert_eq!(gate["result"]["approved"], json!(true), "{gate}");
    assert_eq!(gate["result"]["by"], json!("alice"), "{gate}");
    assert_eq!(gate["result"]["comment"], json!("lgtm"), "{gate}");
    let printed: Value = serde_json::from_str(&text(&d.join(format!("decision.{yes}")))).unwrap();
    assert_eq!(printed["approved"], json!(true));
    assert_eq!(lines(&d.join(format!("side.{yes}"))), ["shipped"]);

    let body = server.wait_run_terminal(&no, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"rc": 1}), "{body}");
    let gate = entry(&body, "gate");
    assert_eq!(gate["result"]["approved"], json!(false), "{gate}");
    assert_eq!(gate["result"]["by"], json!("bob"), "{gate}");
    assert!(!d.join(format!("side.{no}")).exists());
    assert_eq!(labels(&body), ["gate"]);
}

/// Regression (CI, stop 7): a decision the step client reads before the approval's own status
/// commit has returned lets the execution end first; the approval then found no process and
/// started a second execution, whose step client was refused (exit 3) and overwrote the
/// output. Decisions are posted the moment each entry exists, for many runs at once, to
/// make the step client read them before it ever waits. A decision that lands before its run
/// is `awaiting` must not leave it awaiting: the park (after 1 s) would then stop a process
/// that goes on after the gate, and nothing would restart it.
#[test]
fn a_decision_read_at_once_ends_the_run_with_a_single_execution() {
    const RUNS: usize = 12;
    let (b, d) = builder();
    let server = b.workflows(json!({"parkAfterSec": 1})).start();
    let source = src(
        &d,
        r#"script-runner step gate --approval "ship it?" > /dev/null
rc=$?
sleep 1.5
echo "{\"rc\":$rc}"
"#,
    );
    let ids: Vec<String> = (0..RUNS).map(|n| server.launch_bash(&source, json!({ "n": n }))).collect();
    std::thread::scope(|scope| {
        for id in &ids {
            let server = &server;
            scope.spawn(move || {
                let deadline = Instant::now() + WAIT;
                loop {
                    let r = server.post(
                        &format!("/api/script-runs/{id}/approvals/gate"),
                        json!({"approved": false, "by": "bob"}),
                    );
                    if r.status == 200 {
                        return;
                    }
                    assert_eq!(r.status, 404, "{}", r.text);
                    assert!(Instant::now() < deadline, "run {id}: no approval entry within {WAIT:?}");
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
    });
    for id in &ids {
        let body = server.wait_run_terminal(id, WAIT);
        assert_eq!(body["run"]["status"], json!("completed"), "{body}");
        assert_eq!(body["run"]["output"], json!({"rc": 1}), "{body}");
        assert_eq!(body["run"]["attempt"], json!(1), "a second execution started: {body}\n{}", server.server_log());
        assert!(!server.server_log().contains("parking its process"), "{}", server.server_log());
        assert_eq!(body["run"]["warnings"], json!([]), "{body}");
    }
}

#[test]
fn parked_approval_stops_the_process_and_the_decision_restarts_it_with_replay() {
    let (b, d) = builder();
    let server = b.workflows(json!({"parkAfterSec": 1})).start();
    // The pid comes from the script: the awaiting state with a live process lasts only the
    // 1 s before the park, too short to be sure a poll sees it.
    let source = src(
        &d,
        r#"set -e
echo $$ > @D/pid.$SCRIPT_RUN_ATTEMPT
script-runner step a -- sh -c 'echo a >> @D/side'
script-runner step gate --approval "go?" > /dev/null
script-runner step b -- sh -c 'echo b >> @D/side'
echo "{\"attempt\":$SCRIPT_RUN_ATTEMPT}"
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let pid: i32 = wait_file(&d.join("pid.1"), WAIT).parse().unwrap();
    server.wait_run_body(&id, "parked (awaiting, pid null)", WAIT, |b| {
        b["run"]["status"] == json!("awaiting") && b["run"]["pid"].is_null()
    });
    assert!(wait_gone(&[pid], WAIT).is_empty(), "the parked process {pid} still runs");
    // Read once the process is gone: the run stays awaiting, with no pid, in its first attempt.
    let parked = server.script_run(&id);
    assert_eq!(parked["run"]["status"], json!("awaiting"), "{parked}");
    assert!(parked["run"]["pid"].is_null(), "{parked}");
    assert_eq!(parked["run"]["attempt"], json!(1), "{parked}");
    assert_eq!(entry(&parked, "gate")["status"], json!("started"));
    assert_eq!(parked["run"]["waitingFor"], json!({"label": "gate", "kind": "approval", "message": "go?"}), "{parked}");

    let r = server.post(&format!("/api/script-runs/{id}/approvals/gate"), json!({"approved": true}));
    assert_ok(&r, 200);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    assert_eq!(body["run"]["output"], json!({"attempt": 2}), "{body}");
    assert_eq!(lines(&d.join("side")), ["a", "b"], "a completed step ran again after the park");
    assert_eq!(entry(&body, "a"), entry(&parked, "a"));
    assert_eq!(labels(&body), ["a", "gate", "b"]);
}

#[test]
fn progress_is_reflected_on_the_run() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        &format!(
            r#"set -e
script-runner step --progress 1/3 "fetching"
echo ready > @D/p1
{gate}
script-runner step a --progress 2/3 "building" -- sh -c 'echo a >> @D/side'
"#,
            gate = crate::common::wait_for_gate(&d.join("go"))
        ),
    );
    let id = server.launch_bash(&source, json!({}));
    let initial = server.script_run(&id);
    assert!(initial["run"]["progress"].is_null() || initial["run"]["progress"]["current"] == json!(1), "{initial}");
    wait_file(&d.join("p1"), WAIT);
    let body = server.script_run(&id);
    assert_eq!(body["run"]["progress"], json!({"current": 1, "total": 3, "message": "fetching"}), "{body}");
    crate::common::open_gate(&d.join("go"));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["progress"], json!({"current": 2, "total": 3, "message": "building"}), "{body}");
    assert_eq!(lines(&d.join("side")), ["a"]);
    assert_eq!(labels(&body), ["a"], "a progress report is not a journal entry");
}

// ---------------------------------------------------------------- crashes

#[test]
fn workflow_process_killed_mid_run_restarts_with_replay_and_side_effects_once() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    // The first execution holds still after the nap (at most about a minute) until the test
    // kills it; the second replays a, b and the nap, and runs c.
    let source = src(
        &d,
        r#"set -e
script-runner step a -- sh -c 'echo a >> @D/side'
script-runner step b -- sh -c 'echo b >> @D/side'
script-runner step nap --sleep 1s
if [ "$SCRIPT_RUN_ATTEMPT" = 1 ]; then
  echo $$ > @D/held
  i=0; while [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
fi
script-runner step c -- sh -c 'echo c >> @D/side'
echo "{\"attempt\":$SCRIPT_RUN_ATTEMPT}"
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let pid: i32 = wait_file(&d.join("held"), WAIT).parse().unwrap();
    assert_eq!(wait_pid(&server, &id, "running"), pid, "run.pid is the workflow's bash");
    assert_eq!(entry(&server.script_run(&id), "nap")["status"], json!("completed"));
    signal(pid, libc::SIGKILL);

    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    assert_eq!(body["run"]["output"], json!({"attempt": 2}), "{body}");
    assert_eq!(lines(&d.join("side")), ["a", "b", "c"]);
    let warnings = body["run"]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{body}");
    assert!(warnings[0].as_str().unwrap().contains("signal 9"), "{body}");
    assert_eq!(labels(&body), ["a", "b", "nap", "c"]);
    assert!(body["journal"].as_array().unwrap().iter().all(|e| e["status"] == json!("completed")), "{body}");
}

#[test]
fn workflow_process_killed_four_times_fails_after_three_restarts() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"script-runner step a -- sh -c 'echo a >> @D/side'
echo $$ >> @D/pids
while true; do sleep 0.05; done
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    for attempt in 1..=4 {
        let pids = read_pids(&d.join("pids"), attempt, WAIT);
        let pid = pids[attempt - 1];
        assert_eq!(wait_pid(&server, &id, "running"), pid, "attempt {attempt}");
        signal(pid, libc::SIGKILL);
    }
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("failed"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(4), "{body}");
    let error = body["run"]["error"].as_str().unwrap();
    assert!(error.contains("signal 9"), "{error}");
    assert_eq!(body["run"]["warnings"].as_array().unwrap().len(), 3, "one warning per restart: {body}");
    assert_eq!(lines(&d.join("side")), ["a"]);
    assert_eq!(lines(&d.join("pids")).len(), 4);
}

#[test]
fn fork_from_a_step_replays_the_steps_before_it_and_reruns_the_rest() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"set -e
script-runner step a -- sh -c 'echo a >> @D/side'
script-runner step b -- sh -c 'echo b >> @D/side'
script-runner step c -- sh -c 'echo c >> @D/side'
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let original = server.wait_run_terminal(&id, WAIT);
    assert_eq!(original["run"]["status"], json!("completed"), "{original}");
    let fork = server.post(&format!("/api/script-runs/{id}/fork"), json!({"fromStep": "b"}));
    assert_ok(&fork, 201);
    let fork_id = fork.body["run"]["id"].as_str().unwrap();
    let forked = server.wait_run_terminal(fork_id, WAIT);
    assert_eq!(forked["run"]["status"], json!("completed"), "{forked}");
    assert_eq!(lines(&d.join("side")), ["a", "b", "c", "b", "c"]);
    assert_eq!(labels(&forked), ["a", "b", "c"]);
    assert_eq!(entry(&forked, "a")["completedAt"], entry(&original, "a")["completedAt"], "a was copied");
    assert_ne!(entry(&forked, "b")["completedAt"], entry(&original, "b")["completedAt"], "b ran again");
    assert_eq!(server.script_run(&id)["journal"], original["journal"], "the original changed");
}

#[test]
fn server_killed_mid_run_resumes_it_kills_the_old_processes_and_side_effects_happen_once() {
    let (b, d) = builder();
    let mut server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"set -e
echo $$ >> @D/pids
script-runner step a -- sh -c 'echo a >> @D/side'
script-runner step b -- sh -c 'echo b >> @D/side'
if [ "$SCRIPT_RUN_ATTEMPT" = 1 ]; then
  sleep 60 &
  echo $! >> @D/pids
  wait
fi
script-runner step c -- sh -c 'echo c >> @D/side'
echo "{\"attempt\":$SCRIPT_RUN_ATTEMPT}"
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let old = read_pids(&d.join("pids"), 2, WAIT);
    assert_eq!(wait_pid(&server, &id, "running"), old[0], "run.pid is the workflow's bash");
    assert_eq!(lines(&d.join("side")), ["a", "b"]);

    server.kill9();
    assert!(alive(old[0]) && alive(old[1]), "the workflow outlives a server SIGKILL (precondition)");
    server.restart();

    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    assert_eq!(body["run"]["output"], json!({"attempt": 2}), "{body}");
    assert_eq!(lines(&d.join("side")), ["a", "b", "c"]);
    assert_eq!(labels(&body), ["a", "b", "c"]);
    let left = wait_gone(&old[..2], WAIT);
    assert!(left.is_empty(), "processes of the old execution still run: {left:?}");
    assert_eq!(lines(&d.join("pids")).len(), 3, "one new execution");
}

#[test]
fn awaiting_and_paused_runs_stay_put_across_a_server_kill_and_continue_with_replay() {
    let (b, d) = builder();
    let mut server = b.workflows(json!({})).start();
    std::fs::write(d.join("hold"), "").unwrap();
    // Default parkAfterSec (60): the awaiting run still has its process when the server dies.
    let awaiting = server.launch_bash(
        &src(
            &d,
            r#"set -e
script-runner step a -- sh -c 'echo a >> @D/side.awaiting'
script-runner step gate --approval "go?" > /dev/null
script-runner step b -- sh -c 'echo b >> @D/side.awaiting'
"#,
        ),
        json!({}),
    );
    let paused = server.launch_bash(
        &src(
            &d,
            r#"set -e
script-runner step a -- sh -c 'echo a >> @D/side.paused'
while [ -e @D/hold ]; do sleep 0.05; done
script-runner step b -- sh -c 'echo b >> @D/side.paused'
"#,
        ),
        json!({}),
    );
    let awaiting_pid = wait_pid(&server, &awaiting, "awaiting");
    // Step a journaled, not only its side effect done: paused between the two, the run would
    // rightly run it again on resume.
    server.wait_step(&paused, "a", "completed");
    let paused_pid = wait_pid(&server, &paused, "running");
    let r = server.post(&format!("/api/script-runs/{paused}/pause"), json!({}));
    assert_ok(&r, 200);
    assert!(wait_gone(&[paused_pid], WAIT).is_empty(), "the paused run's process {paused_pid} still runs");

    server.kill9();
    server.restart();
    let left = wait_gone(&[awaiting_pid], WAIT);
    assert!(left.is_empty(), "the awaiting run's old process survived the restart: {left:?}");
    // Checked at the end, so the rest of the flow is exercised either way.
    let mut stale_pids = Vec::new();
    for (id, status) in [(&awaiting, "awaiting"), (&paused, "paused")] {
        let body = server.script_run(id);
        assert_eq!(body["run"]["status"], json!(status), "{body}");
        assert_eq!(body["run"]["attempt"], json!(1), "{body}");
        if !body["run"]["pid"].is_null() {
            stale_pids.push(format!("{status} run shows pid {}, a process stopped at the restart", body["run"]["pid"]));
        }
    }

    let r = server.post(&format!("/api/script-runs/{awaiting}/approvals/gate"), json!({"approved": true}));
    assert_ok(&r, 200);
    std::fs::remove_file(d.join("hold")).unwrap();
    assert_ok(&server.post(&format!("/api/script-runs/{paused}/resume"), json!({})), 200);
    for id in [&awaiting, &paused] {
        let body = server.wait_run_terminal(id, WAIT);
        assert_eq!(body["run"]["status"], json!("completed"), "{body}");
        assert_eq!(body["run"]["attempt"], json!(2), "{body}");
        assert_eq!(labels(&body).last().map(String::as_str), Some("b"), "{body}");
    }
    assert_eq!(lines(&d.join("side.awaiting")), ["a", "b"]);
    assert_eq!(lines(&d.join("side.paused")), ["a", "b"]);
    assert!(stale_pids.is_empty(), "after the restart, runs without a process show a pid: {stale_pids:?}");
}

#[test]
fn workflow_killed_while_its_script_step_job_runs_replays_onto_the_same_job() {
    let (b, d) = builder();
    // The job runs until the test opens its gate, which it does once the workflow's second
    // execution is about to replay the step: the job surely still ran when the workflow was
    // killed, and still runs when the replay starts.
    let gate = d.join("job.go");
    let job = format!(
        "{}\necho ran >> '{}'\necho slow-done",
        crate::common::wait_for_gate(&gate),
        d.join("jobside").display()
    );
    let server = b.workflows(json!({})).script("slow", &job).start();
    let source = src(
        &d,
        r#"set -e
script-runner step a -- sh -c 'echo a >> @D/side'
echo "$SCRIPT_RUN_ATTEMPT" >> @D/attempts
script-runner step s --script slow > @D/s.$SCRIPT_RUN_ATTEMPT
script-runner step b -- sh -c 'echo b >> @D/side'
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let started = server.wait_step(&id, "s", "started");
    let job_id = entry(&started, "s")["jobId"].as_str().unwrap().to_string();
    let pid = wait_pid(&server, &id, "running");
    signal(pid, libc::SIGKILL);
    let last = RefCell::new(Vec::new());
    crate::common::wait_until(
        || format!("no second execution: {:?}", last.borrow()),
        WAIT,
        || {
            let attempts = lines(&d.join("attempts"));
            if attempts == ["1", "2"] {
                return Some(());
            }
            *last.borrow_mut() = attempts;
            None
        },
    );
    let job = server.job(&job_id);
    assert_eq!(job["status"], json!("running"), "the job must still run when the replay reaches it: {job}");
    crate::common::open_gate(&gate);

    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
    let s = entry(&body, "s");
    assert_eq!(s["jobId"], json!(job_id), "{s}");
    assert_eq!(s["status"], json!("completed"), "{s}");
    assert_eq!(s["result"]["stdout"], json!("slow-done\n"), "{s}");
    assert_eq!(text(&d.join("s.2")), "slow-done");
    assert_eq!(lines(&d.join("jobside")), ["ran"], "the job ran once");
    assert_eq!(lines(&d.join("side")), ["a", "b"]);
    let jobs = server.get("/jobs?scriptId=slow");
    assert_eq!(jobs.status, 200, "{}", jobs.text);
    assert_eq!(jobs.body["total"], json!(1), "a second job was started: {}", jobs.text);
    assert_eq!(jobs.body["jobs"][0]["jobId"], json!(job_id), "{}", jobs.text);
}

// ---------------------------------------------------------------- divergence, repeated labels

#[test]
fn fork_with_source_requesting_another_command_or_step_type_diverges() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let id = server.launch_bash("script-runner step a -- echo 1\n", json!({}));
    let original = server.wait_run_terminal(&id, WAIT);
    assert_eq!(original["run"]["status"], json!("completed"), "{original}");
    let recorded = entry(&original, "a").clone();
    assert_eq!(recorded["config"], json!({"command": ["echo", "1"]}), "{recorded}");

    for (name, step) in [("cmd", "script-runner step a -- echo 2"), ("type", "script-runner step a --value 1")] {
        let source = src(&d, &format!("{step} > @D/{name}.out 2> @D/{name}.err\necho $? > @D/{name}.rc\n"));
        let fork = server.post(&format!("/api/script-runs/{id}/fork"), json!({"source": source}));
        assert_ok(&fork, 201);
        let fork_id = fork.body["run"]["id"].as_str().unwrap();
        let forked = server.wait_run_terminal(fork_id, WAIT);
        assert_eq!(forked["run"]["status"], json!("completed"), "{forked}");
        assert_eq!(text(&d.join(format!("{name}.rc"))), "3", "{name}: the CLI exit code");
        let err = text(&d.join(format!("{name}.err")));
        assert!(err.contains("STEP_DIVERGED") && err.contains("\"a\""), "{name}: {err}");
        assert_eq!(text(&d.join(format!("{name}.out"))), "", "{name}: the diverged step printed a result");
        assert_eq!(labels(&forked), ["a"], "{forked}");
        assert_eq!(entry(&forked, "a")["config"], recorded["config"], "{name}: {forked}");
        assert_eq!(entry(&forked, "a")["result"], recorded["result"], "{name}: {forked}");
        assert_eq!(entry(&forked, "a")["stepType"], json!("command"), "{name}: {forked}");
    }
    assert_eq!(server.script_run(&id)["journal"], original["journal"], "the original journal changed");
}

#[test]
fn resume_with_a_changed_command_diverges_and_leaves_the_journal_unchanged() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    std::fs::write(d.join("hold"), "").unwrap();
    std::fs::write(d.join("input"), "1").unwrap();
    let source = src(
        &d,
        r#"script-runner step a -- echo "$(cat @D/input)" > @D/out.$SCRIPT_RUN_ATTEMPT 2> @D/err.$SCRIPT_RUN_ATTEMPT
echo $? > @D/rc.$SCRIPT_RUN_ATTEMPT
while [ -e @D/hold ]; do sleep 0.05; done
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    assert_eq!(wait_file(&d.join("rc.1"), WAIT), "0");
    assert_eq!(text(&d.join("out.1")), "1");
    let before = server.script_run(&id);
    assert_ok(&server.post(&format!("/api/script-runs/{id}/pause"), json!({})), 200);
    std::fs::write(d.join("input"), "2").unwrap();
    std::fs::remove_file(d.join("hold")).unwrap();
    assert_ok(&server.post(&format!("/api/script-runs/{id}/resume"), json!({})), 200);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(text(&d.join("rc.2")), "3");
    let err = text(&d.join("err.2"));
    assert!(err.contains("STEP_DIVERGED") && err.contains("\"a\""), "{err}");
    assert_eq!(text(&d.join("out.2")), "");
    assert_eq!(body["journal"], before["journal"], "the journal changed");
}

#[test]
fn label_requested_twice_in_one_execution_returns_the_first_result_with_a_warning() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"set -e
x=$(script-runner step dup -- sh -c 'echo dup >> @D/side; echo first')
y=$(script-runner step dup -- sh -c 'echo dup >> @D/side; echo first')
v1=$(script-runner step v --value 1)
v2=$(script-runner step v --value 2)
echo "{\"x\":\"$x\",\"y\":\"$y\",\"v1\":$v1,\"v2\":$v2}"
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"x": "first", "y": "first", "v1": 1, "v2": 1}), "{body}");
    assert_eq!(lines(&d.join("side")), ["dup"]);
    assert_eq!(labels(&body), ["dup", "v"]);
    let warnings: Vec<&str> = body["run"]["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(warnings.len(), 2, "{body}");
    assert!(warnings.iter().any(|w| w.contains("\"dup\"")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("\"v\"")), "{warnings:?}");
}

// ---------------------------------------------------------------- guardrails

#[test]
fn max_steps_aborts_before_the_step_over_the_limit_runs() {
    let (b, d) = builder();
    let server = b.workflows(json!({"maxSteps": 3})).start();
    let source = src(
        &d,
        r#"set -e
script-runner step s1 -- sh -c 'echo s1 >> @D/side'
script-runner step s2 -- sh -c 'echo s2 >> @D/side'
script-runner step s3 -- sh -c 'echo s3 >> @D/side'
script-runner step s4 -- sh -c 'echo s4 >> @D/side'
script-runner step s5 -- sh -c 'echo s5 >> @D/side'
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("aborted_limit"), "{body}");
    assert_eq!(body["run"]["error"], json!("SCRIPT_RUN_MAX_STEPS exceeded (4/3)"), "{body}");
    assert!(body["run"]["pid"].is_null(), "{body}");
    assert_eq!(lines(&d.join("side")), ["s1", "s2", "s3"]);
    assert_eq!(labels(&body), ["s1", "s2", "s3"]);
}

#[test]
fn max_script_steps_aborts_before_the_second_job_is_submitted() {
    let (b, d) = builder();
    let server = b.workflows(json!({"maxScriptSteps": 1})).script("job", &src(&d, "echo job >> @D/jobside")).start();
    let source = src(
        &d,
        r#"set -e
script-runner step j1 --script job
script-runner step j2 --script job
echo after >> @D/side
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("aborted_limit"), "{body}");
    assert_eq!(body["run"]["error"], json!("SCRIPT_RUN_MAX_SCRIPT_STEPS exceeded (2/1)"), "{body}");
    assert_eq!(lines(&d.join("jobside")), ["job"]);
    assert!(!d.join("side").exists());
    assert_eq!(labels(&body), ["j1"]);
    let jobs = server.get("/jobs?scriptId=job");
    assert_eq!(jobs.body["total"], json!(1), "{}", jobs.text);
}

/// Script steps begun at once count against `maxScriptSteps` before any of them is journaled:
/// of four concurrent ones with a limit of 2, at most 2 jobs are ever submitted.
#[test]
fn max_script_steps_counts_concurrent_script_steps() {
    let (b, d) = builder();
    let server = b.workflows(json!({"maxScriptSteps": 2})).script("job", &src(&d, "echo job >> @D/jobside")).start();
    let source = "for n in 1 2 3 4; do script-runner step j$n --script job > /dev/null 2>&1 & done\nwait\n";
    for round in 0..5 {
        let id = server.launch_bash(source, json!({ "round": round }));
        let body = server.wait_run_terminal(&id, WAIT);
        assert_eq!(body["run"]["status"], json!("aborted_limit"), "{body}");
        assert!(labels(&body).len() <= 2, "{body}");
    }
    let jobs = server.get("/jobs?scriptId=job");
    assert!(jobs.body["total"].as_u64().unwrap() <= 10, "more than 2 jobs per run: {}", jobs.text);
}

#[test]
fn max_wall_ms_aborts_a_long_run_and_stops_its_processes() {
    let (b, d) = builder();
    // Long enough for step a and the pids to happen first on a slow machine; the workflow
    // itself would take a minute.
    let server = b.workflows(json!({"maxWallMs": 5000})).start();
    let source = src(
        &d,
        r#"script-runner step a -- sh -c 'echo a >> @D/side'
echo $$ >> @D/pids
sleep 60 &
echo $! >> @D/pids
wait
echo never >> @D/side
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let pids = read_pids(&d.join("pids"), 2, WAIT);
    let body = server.wait_run_terminal(&id, Duration::from_secs(45));
    assert_eq!(body["run"]["status"], json!("aborted_limit"), "{body}");
    let error = body["run"]["error"].as_str().unwrap();
    assert!(error.starts_with("SCRIPT_RUN_MAX_WALL_MS exceeded ("), "{error}");
    assert!(wait_gone(&pids, WAIT).is_empty(), "the workflow's processes still run");
    assert_eq!(lines(&d.join("side")), ["a"]);
    let started = script_runner::time::parse_iso(body["run"]["startedAt"].as_str().unwrap()).unwrap();
    let finished = script_runner::time::parse_iso(body["run"]["finishedAt"].as_str().unwrap()).unwrap();
    let took = finished - started;
    assert!((4000..30_000).contains(&took), "aborted after {took} ms, not at the 5000 ms limit");
}

#[test]
fn max_result_bytes_aborts_when_a_step_result_is_too_large() {
    let (b, d) = builder();
    let server = b.workflows(json!({"maxResultBytes": 100})).start();
    let source = src(
        &d,
        r#"set -e
script-runner step small -- sh -c 'echo small >> @D/side'
script-runner step big -- sh -c 'printf "%01000d" 0'
echo after >> @D/side
"#,
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("aborted_limit"), "{body}");
    let error = body["run"]["error"].as_str().unwrap();
    assert!(error.starts_with("SCRIPT_RUN_MAX_RESULT_BYTES exceeded ("), "{error}");
    assert!(error.ends_with("/100)"), "{error}");
    assert_eq!(labels(&body), ["small"], "the oversized result was journaled");
    assert_eq!(lines(&d.join("side")), ["small"]);
}

#[test]
fn max_steps_from_the_environment_applies_unless_config_sets_it() {
    let template = r#"set -e
script-runner step s1 -- sh -c 'echo s1 >> @D/side'
script-runner step s2 -- sh -c 'echo s2 >> @D/side'
script-runner step s3 -- sh -c 'echo s3 >> @D/side'
script-runner step s4 -- sh -c 'echo s4 >> @D/side'
script-runner step s5 -- sh -c 'echo s5 >> @D/side'
"#;
    for (config, expected, ran) in [
        (json!({}), "SCRIPT_RUN_MAX_STEPS exceeded (3/2)", vec!["s1", "s2"]),
        (json!({"maxSteps": 3}), "SCRIPT_RUN_MAX_STEPS exceeded (4/3)", vec!["s1", "s2", "s3"]),
    ] {
        let (b, d) = builder();
        let server = b.workflows(config.clone()).write().start_with_env(&[("SCRIPT_RUN_MAX_STEPS", "2")]);
        let id = server.launch_bash(&src(&d, template), json!({}));
        let body = server.wait_run_terminal(&id, WAIT);
        assert_eq!(body["run"]["status"], json!("aborted_limit"), "config {config}: {body}");
        assert_eq!(body["run"]["error"], json!(expected), "config {config}: {body}");
        assert_eq!(lines(&d.join("side")), ran, "config {config}");
    }
}

// ---------------------------------------------------------------- the Rust client

#[test]
fn rust_client_drives_steps_of_a_run_with_its_token() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).start();
    let source = src(
        &d,
        r#"set -e
echo "$SCRIPT_RUN_TOKEN" > @D/token.tmp
mv @D/token.tmp @D/token
script-runner step gate --approval "wait for the client" > /dev/null
script-runner step shared -- sh -c 'echo shared >> @D/side; echo from-step' > @D/shared.out
v=$(script-runner step picked --value '"from-cli"')
echo "{\"picked\":$v}"
"#,
    );
    let id = server.launch_bash(&source, json!({"k": "v"}));
    let token = wait_file(&d.join("token"), WAIT);
    wait_pid(&server, &id, "awaiting");

    let wf = Workflow::new(&server.base, &id, &token, None);
    let shared = ["sh".to_string(), "-c".into(), src(&d, "echo shared >> @D/side; echo from-step")];
    let ran = wf.command("shared", &shared).unwrap();
    assert_eq!((ran.exit_code, ran.stdout.as_str(), ran.replayed), (0, "from-step\n", false));
    assert_eq!(wf.value("picked", json!("from-client")).unwrap(), json!("from-client"));
    let computed: i64 = wf.step("computed", || Ok::<_, String>(41 + 1)).unwrap();
    assert_eq!(computed, 42);
    let again: i64 = wf.step("computed", || Err::<i64, _>("the closure ran again")).unwrap();
    assert_eq!(again, 42);
    let failed = wf.command("fails", &["sh", "-c", "echo nope >&2; exit 9"]).unwrap();
    assert_eq!((failed.exit_code, failed.stderr.as_str()), (9, "nope\n"));
    wf.progress(1, 2, Some("half")).unwrap();
    assert_eq!(server.script_run(&id)["run"]["progress"], json!({"current": 1, "total": 2, "message": "half"}));

    match Workflow::new(&server.base, &id, "not-the-token", None).value("x", json!(1)) {
        Err(ClientError::Server { status, code, .. }) => assert_eq!((status, code.as_str()), (403, "FORBIDDEN")),
        other => panic!("a wrong token was accepted: {other:?}"),
    }

    let body = server.script_run(&id);
    assert_eq!(entry(&body, "fails")["status"], json!("failed"), "{body}");
    assert_eq!(entry(&body, "computed")["result"], json!(42), "{body}");

    let r = server.post(&format!("/api/script-runs/{id}/approvals/gate"), json!({"approved": true}));
    assert_ok(&r, 200);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"picked": "from-client"}), "{body}");
    assert_eq!(text(&d.join("shared.out")), "from-step", "the CLI replayed the client's step");
    assert_eq!(lines(&d.join("side")), ["shared"], "the step the client ran ran again");
    assert_eq!(labels(&body), ["gate", "shared", "picked", "computed", "fails"]);
}

/// Kill -9 between a script step's journal entry and its job's insert leaves an entry naming
/// a job that does not exist (the id is journaled first, so never a job the journal does not
/// know of). The state is made by hand with the server down: the replay submits the job under
/// the journaled id, once, and the run goes on.
#[test]
fn a_journaled_job_id_with_no_job_is_submitted_once_on_replay() {
    let (b, d) = builder();
    let mut server = b.workflows(json!({})).script("once", &src(&d, "echo ran >> @D/jobside; echo once-done")).start();
    let source = src(
        &d,
        &format!(
            r#"set -e
script-runner step s --script once > @D/s.$SCRIPT_RUN_ATTEMPT
{gate}
echo done
"#,
            gate = crate::common::wait_for_gate(&d.join("go"))
        ),
    );
    let id = server.launch_bash(&source, json!({}));
    server.wait_step(&id, "s", "completed");
    server.kill9();
    let changed = server.deployment.execute_sql(
        "UPDATE script_run_journal SET status = 'started', result = NULL, completed_at = NULL, \
         duration_ms = NULL, job_id = 'job_1_424242' WHERE run_id = $1 AND step_key = 's'",
        &id,
    );
    assert_eq!(changed, 1);
    crate::common::open_gate(&d.join("go"));
    server.restart();

    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}\n{}", server.server_log());
    let s = entry(&body, "s");
    assert_eq!(s["status"], json!("completed"), "{s}");
    assert_eq!(s["jobId"], json!("job_1_424242"), "{s}");
    assert_eq!(s["result"]["stdout"], json!("once-done\n"), "{s}");
    assert_eq!(lines(&d.join("jobside")), ["ran", "ran"], "the missing job ran once");
    let job = server.get("/jobs/job_1_424242");
    assert_eq!(job.status, 200, "{}", job.text);
    assert_eq!(job.body["status"], json!("succeeded"), "{}", job.text);
    let jobs = server.get("/jobs?scriptId=once");
    assert_eq!(jobs.body["total"], json!(2), "{}", jobs.text);
}

/// A script step's job that was queued when the server died runs after the restart; canceling
/// its run (paused, so no replay has reached the step) cancels that job too.
#[test]
fn a_job_queued_by_a_script_step_before_a_server_kill_is_canceled_with_its_run() {
    let (b, d) = builder();
    let hold = crate::common::wait_for_gate(&d.join("hold.go"));
    let slow =
        format!("{}; echo ran >> '{}'", crate::common::wait_for_gate(&d.join("slow.go")), d.join("jobside").display());
    let mut server = b
        .workflows(json!({}))
        .runner("maxConcurrent", json!(1))
        .script_entry("hold", &hold, json!({"mode": "async"}))
        .script_entry("slow", &slow, json!({"mode": "async"}))
        .start();
    let holder = server.run_async("hold", &[]);
    server.wait_job(&holder, WAIT, |s| s == "running");
    let id = server.launch_bash("script-runner step s --script slow\n", json!({}));
    let started = server.wait_step(&id, "s", "started");
    let job_id = entry(&started, "s")["jobId"].as_str().unwrap().to_string();
    server.wait_job(&job_id, WAIT, |s| s == "queued");
    assert_ok(&server.post(&format!("/api/script-runs/{id}/pause"), json!({})), 200);
    server.wait_run(&id, WAIT, |s| s == "paused");

    server.kill9();
    server.restart();
    // The holder was running: it ended with the server; the queued job runs now.
    server.wait_job(&job_id, WAIT, |s| s == "running");
    let r = server.request("DELETE", &format!("/api/script-runs/{id}"), None, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    let job = server.wait_job(&job_id, WAIT, |s| s != "running");
    assert_eq!(job["status"], json!("canceled"), "{job}");
    assert_eq!(server.script_run(&id)["run"]["status"], json!("cancelled"));
    crate::common::open_gate(&d.join("slow.go"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!d.join("jobside").exists(), "the job went on after its run was cancelled");
}

/// A decision journaled just before a server kill, without the status change that follows it,
/// is made here by hand with the server down: the restarted server takes the run on from the
/// decision instead of leaving it `awaiting` for good.
#[test]
fn a_run_awaiting_a_decision_journaled_before_a_server_kill_goes_on_at_restart() {
    let (b, d) = builder();
    let mut server = b.workflows(json!({})).start();
    let source = src(&d, "script-runner step gate --approval \"ship it?\" > /dev/null\necho \"{\\\"rc\\\":$?}\"\n");
    let id = server.launch_bash(&source, json!({}));
    server.wait_run(&id, WAIT, |s| s == "awaiting");
    server.kill9();
    let decided = server.deployment.execute_sql(
        "UPDATE script_run_journal SET status = 'completed', completed_at = started_at, duration_ms = 0, \
         result = '{\"approved\":true,\"by\":\"alice\",\"comment\":null,\"decidedAt\":\"2026-01-01T00:00:00.000Z\"}' \
         WHERE run_id = $1 AND step_key = 'gate'",
        &id,
    );
    assert_eq!(decided, 1);
    server.restart();

    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"rc": 0}), "{body}");
    assert_eq!(body["run"]["attempt"], json!(2), "{body}");
}

/// A script step refused for a full queue journals nothing: the label stays free (and counts
/// for no guardrail), and the step client says why.
#[test]
fn a_script_step_refused_for_a_full_queue_journals_nothing() {
    let (b, d) = builder();
    let hold = crate::common::wait_for_gate(&d.join("hold.go"));
    let server = b
        .workflows(json!({}))
        .runner("maxConcurrent", json!(1))
        .runner("maxQueued", json!(0))
        .script_entry("hold", &hold, json!({"mode": "async"}))
        .script("quick", "echo quick")
        .start();
    let holder = server.run_async("hold", &[]);
    server.wait_job(&holder, WAIT, |s| s == "running");
    let source = src(&d, "script-runner step s --script quick 2> @D/err\necho $? > @D/rc\n");
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(text(&d.join("rc")), "3");
    assert!(text(&d.join("err")).contains("QUEUE_FULL"), "{}", text(&d.join("err")));
    assert_eq!(labels(&body), Vec::<String>::new(), "{body}");
    crate::common::open_gate(&d.join("hold.go"));
}

/// Two step clients of one execution begin the same script label at once: one job runs, both
/// get its result (the second with the repeated-label warning), neither gets an error.
#[test]
fn the_same_script_label_begun_twice_at_once_runs_one_job() {
    let (b, d) = builder();
    let server = b.workflows(json!({})).script("once", &src(&d, "echo ran >> @D/jobside; echo once-done")).start();
    let source = src(
        &d,
        r#"script-runner step s --script once > @D/out.1 2> @D/err.1 &
script-runner step s --script once > @D/out.2 2> @D/err.2 &
wait
"#,
    );
    for round in 0..5 {
        let _ = std::fs::remove_file(d.join("jobside"));
        let id = server.launch_bash(&source, json!({ "round": round }));
        let body = server.wait_run_terminal(&id, WAIT);
        assert_eq!(body["run"]["status"], json!("completed"), "{body}");
        for n in [1, 2] {
            assert_eq!(text(&d.join(format!("out.{n}"))), "once-done", "{}", text(&d.join(format!("err.{n}"))));
        }
        assert_eq!(lines(&d.join("jobside")), ["ran"], "one job per label: {body}");
        assert_eq!(entry(&body, "s")["status"], json!("completed"), "{body}");
    }
}

// ---------------------------------------------------------------- crash loop

#[test]
fn a_kill_9_loop_runs_every_completed_step_once_and_the_in_flight_one_at_least_once() {
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261204);
    println!("run crash loop seed {seed} (replay with CRASH_SEED={seed})");
    let mut state = seed | 1;
    let mut below = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let (b, d) = builder();
    let mut server = b.workflows(json!({ "maxSteps": 1000 })).start();
    let steps = 40;
    let source = src(
        &d,
        &format!(
            "set -e\nfor i in $(seq 1 {steps}); do\n  script-runner step \"s$i\" -- sh -c \"echo s$i >> @D/side; sleep 0.02\"\ndone\necho '{{\"ok\": true}}'"
        ),
    );
    let id = server.launch_bash(&source, json!({}));
    let started = Instant::now();
    // A bounded number of kills at random moments (a kill lands before a replay of the whole
    // journal may have caught up, as in a real crash loop), then the run must finish by itself:
    // however loaded the machine, the loop ends, and a run stuck after the kills is a failure.
    let max_kills = 12;
    let mut kills = 0;
    let mut progress = Vec::new();
    while kills < max_kills {
        std::thread::sleep(Duration::from_millis(100 + below(300)));
        let run = server.script_run(&id);
        if !matches!(run["run"]["status"].as_str(), Some("running" | "awaiting" | "paused")) {
            break;
        }
        progress.push(labels(&run).len());
        server.kill9();
        kills += 1;
        server.restart();
    }
    let ended = server.wait_run(&id, Duration::from_secs(45), |s| !matches!(s, "running" | "awaiting" | "paused"));
    println!("run crash loop: journal length at each kill {progress:?}");
    assert_eq!(ended["run"]["status"], "completed", "seed {seed}, after {kills} kills: {ended}");
    let side = lines(&d.join("side"));
    let mut extra = 0;
    for i in 1..=steps {
        let label = format!("s{i}");
        let ran = side.iter().filter(|l| **l == label).count();
        assert!(ran >= 1, "seed {seed}: step {label} never ran: {side:?}");
        extra += ran - 1;
    }
    // A step runs again only if a kill caught it between its side effect and its journal
    // entry: at most one step per kill.
    assert!(extra <= kills, "seed {seed}: {extra} repeated side effects for {kills} kills: {side:?}");
    assert_eq!(labels(&ended).len(), steps, "{ended}");
    println!(
        "run crash loop: {kills} kills, {steps} steps, {extra} in-flight steps run again, {:?}",
        started.elapsed()
    );
}
