//! Per-script concurrency (`concurrency` in scripts.json): at most N jobs of a script run at
//! once, and a script at its limit never holds back the jobs of other scripts queued behind it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{lines, on_postgres, open_gate, wait_for_gate, wait_until, Builder, TestServer};

const WAIT: Duration = Duration::from_secs(30);

/// A script that notes its start, fails loudly if another of its jobs runs meanwhile (a
/// directory only one can create), waits for the gate `slow.go`, then notes its end.
fn slow_body(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "mkdir '{d}/slow.running' 2>/dev/null || echo \"$1\" >> '{d}/overlaps'\n\
         echo \"$1\" >> '{d}/slow.starts'\n\
         {gate}\n\
         rmdir '{d}/slow.running'\n\
         echo \"$1\" >> '{d}/slow.ends'",
        gate = wait_for_gate(&dir.join("slow.go")),
    )
}

/// `slow` (concurrency 1, blocked on a gate) and `fast`, on a server of two slots.
fn burst_server() -> TestServer {
    let builder = Builder::new().runner("maxConcurrent", json!(2));
    let slow = slow_body(builder.dir());
    let fast = format!("echo \"$1\" >> '{}/fast.log'", builder.dir().display());
    builder
        .script_entry("slow", &slow, json!({ "concurrency": 1, "mode": "async" }))
        .script_entry("fast", &fast, json!({ "mode": "async" }))
        .start()
}

fn statuses(server: &TestServer, ids: &[String]) -> Vec<String> {
    ids.iter().map(|id| server.job(id)["status"].as_str().unwrap_or_default().to_string()).collect()
}

#[test]
fn a_script_at_its_limit_never_holds_back_the_jobs_of_another_script() {
    let server = burst_server();
    let dir = server.dir().to_path_buf();
    let slows: Vec<String> = (1..=5).map(|i| server.run_async("slow", &[&format!("s{i}")])).collect();
    let fasts: Vec<String> = (1..=5).map(|i| server.run_async("fast", &[&format!("f{i}")])).collect();

    // Every fast job ends while the first slow one holds its script's only place.
    for id in &fasts {
        let job = server.wait_job(id, WAIT, |s| s == "succeeded" || s == "failed");
        assert_eq!(job["status"], json!("succeeded"), "{job}");
    }
    let slow_states = statuses(&server, &slows);
    assert_eq!(slow_states.iter().filter(|s| *s == "running").count(), 1, "{slow_states:?}");
    assert_eq!(slow_states.iter().filter(|s| *s == "queued").count(), 4, "{slow_states:?}");
    assert_eq!(lines(&dir.join("slow.starts")).len(), 1);

    // A sync request for the other script is answered meanwhile.
    let r = server.run("fast", &["sync"], Some("sync"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    assert_eq!(statuses(&server, &slows).iter().filter(|s| *s == "queued").count(), 4);

    open_gate(&dir.join("slow.go"));
    for id in &slows {
        let job = server.wait_job(id, WAIT, |s| s == "succeeded" || s == "failed");
        assert_eq!(job["status"], json!("succeeded"), "{job}");
    }
    assert!(lines(&dir.join("overlaps")).is_empty(), "two slow jobs ran at once: {:?}", lines(&dir.join("overlaps")));
    let order = ["s1", "s2", "s3", "s4", "s5"].map(String::from).to_vec();
    assert_eq!(lines(&dir.join("slow.starts")), order, "a script's own jobs start first in, first out");
    assert_eq!(lines(&dir.join("slow.ends")), order);
}

#[test]
fn a_waiting_job_shows_its_queue_position_past_a_script_at_its_limit() {
    if on_postgres() {
        // Async jobs wait in the cluster's shared queue, which has no place per server.
        return;
    }
    let builder = Builder::new().runner("maxConcurrent", json!(1));
    let slow = slow_body(builder.dir());
    let server = builder
        .script_entry("slow", &slow, json!({ "concurrency": 1, "mode": "async" }))
        .script_entry("fast", "true", json!({ "mode": "async" }))
        .start();
    let dir = server.dir().to_path_buf();
    // The only slot: slow s1 runs; s2 and s3 wait for their script, fast for the slot.
    let s1 = server.run_async("slow", &["s1"]);
    server.wait_job(&s1, WAIT, |s| s == "running");
    let s2 = server.run_async("slow", &["s2"]);
    let s3 = server.run_async("slow", &["s3"]);
    let fast = server.run_async("fast", &[]);

    let position = |id: &str| server.job(id)["queuePosition"].clone();
    assert_eq!(position(&s1), Value::Null, "a running job has no place");
    assert!(server.job(&s1).get("queuePosition").is_none(), "absent, not null, on a running job");
    assert_eq!(position(&s2), json!(1));
    assert_eq!(position(&s3), json!(2), "behind its own script's job");
    assert_eq!(position(&fast), json!(1), "the slow jobs ahead wait for their script: it starts first");

    open_gate(&dir.join("slow.go"));
    for id in [&s1, &s2, &s3, &fast] {
        server.wait_job(id, WAIT, |s| s == "succeeded");
    }
    assert!(server.job(&fast).get("queuePosition").is_none());
}

#[test]
fn a_script_with_room_left_runs_that_many_at_once() {
    let builder = Builder::new().runner("maxConcurrent", json!(4));
    let d = builder.dir().display().to_string();
    let body = format!("echo \"$1\" >> '{d}/starts'\n{}", wait_for_gate(&builder.dir().join("go")));
    let server = builder.script_entry("pair", &body, json!({ "concurrency": 2, "mode": "async" })).start();
    let dir = server.dir().to_path_buf();
    let ids: Vec<String> = (1..=4).map(|i| server.run_async("pair", &[&i.to_string()])).collect();
    wait_until(
        || format!("two starts: {:?}", lines(&dir.join("starts"))),
        WAIT,
        || (lines(&dir.join("starts")).len() == 2).then_some(()),
    );
    // Given time, no third starts while two run.
    std::thread::sleep(Duration::from_millis(500));
    // The first two in line start, in either order: both are spawned at once.
    let mut started = lines(&dir.join("starts"));
    started.sort();
    assert_eq!(started, ["1", "2"]);
    let states = statuses(&server, &ids);
    assert_eq!(states, ["running", "running", "queued", "queued"]);
    open_gate(&dir.join("go"));
    for id in &ids {
        server.wait_job(id, WAIT, |s| s == "succeeded");
    }
}

#[test]
fn scripts_shows_each_scripts_concurrency_or_null() {
    let server =
        Builder::new().script_entry("limited", "true", json!({ "concurrency": 3 })).script("free", "true").start();
    let r = server.get("/scripts");
    assert_eq!(r.status, 200, "{}", r.text);
    let scripts = r.body["scripts"].as_array().unwrap();
    let find = |id: &str| scripts.iter().find(|s| s["id"] == json!(id)).unwrap().clone();
    assert_eq!(find("limited")["concurrency"], json!(3), "{}", r.text);
    let free = find("free");
    assert!(free.get("concurrency").is_some_and(Value::is_null), "{}", r.text);
}

#[test]
fn check_config_lists_a_scripts_concurrency() {
    let deployment = Builder::new().script_entry("limited", "true", json!({ "concurrency": 2 })).write();
    let out = deployment.check_config();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("timeoutSec 0, concurrency 2)"), "{stdout}");
}

/// Asserts `check-config` refuses the deployment (exit 2) with a message holding `needle`.
fn assert_refused(builder: Builder, needle: &str) {
    let deployment = builder.write();
    let out = deployment.check_config();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "check-config should exit 2; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked at"), "{stderr}");
    assert!(stderr.contains("\"capped\"") && stderr.contains(needle), "{stderr}");
}

#[test]
fn concurrency_zero_is_refused() {
    let builder = Builder::new().script_entry("capped", "true", json!({ "concurrency": 0 }));
    assert_refused(builder, "concurrency: must be between 1 and runner.maxConcurrent (4), got 0");
}

#[test]
fn concurrency_that_is_not_an_integer_is_refused() {
    for value in [json!("two"), json!(1.5), json!(-1)] {
        let builder = Builder::new().script_entry("capped", "true", json!({ "concurrency": value }));
        assert_refused(builder, "concurrency: invalid");
    }
}

#[test]
fn concurrency_above_max_concurrent_is_refused() {
    let builder =
        Builder::new().runner("maxConcurrent", json!(2)).script_entry("capped", "true", json!({ "concurrency": 3 }));
    assert_refused(builder, "must be between 1 and runner.maxConcurrent (2), got 3");
}

#[test]
fn concurrency_on_a_workflow_is_refused() {
    let builder = Builder::new().script("capped", "true");
    let path = builder.write_executable("workflows/flow.sh", "#!/bin/bash\ntrue\n");
    let builder = builder.raw_script(json!({
        "id": "flow", "path": path.to_str().unwrap(), "kind": "workflow", "concurrency": 1
    }));
    let out = builder.write().check_config();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"flow\": concurrency: only a script has one"), "{stderr}");
}

#[test]
fn a_workflows_script_steps_follow_their_scripts_limit() {
    let builder = Builder::new().workflows(json!({}));
    let d = builder.dir().display().to_string();
    let body = format!(
        "mkdir '{d}/step.running' 2>/dev/null || echo overlap >> '{d}/overlaps'\n\
         echo start >> '{d}/starts'\n\
         sleep 0.3\n\
         rmdir '{d}/step.running'"
    );
    let server = builder.script_entry("one-at-a-time", &body, json!({ "concurrency": 1 })).start();
    let dir = server.dir().to_path_buf();
    // Three script steps begun at once, each a job of the same script.
    let source = "for n in 1 2 3; do script-runner step j$n --script one-at-a-time > /dev/null 2>&1 & done\nwait\n";
    let id = server.launch_bash(source, json!({}));
    let run = server.wait_run_terminal(&id, WAIT);
    assert_eq!(run["run"]["status"], json!("completed"), "{run}");
    assert_eq!(lines(&dir.join("starts")).len(), 3, "{run}");
    assert!(lines(&dir.join("overlaps")).is_empty(), "two steps' jobs ran at once");
}
