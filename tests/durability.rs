//! Durability: history and logs survive restarts, crash (kill -9) recovery, the SIGTERM drain,
//! configuration errors at startup, and the one-time import of an upstream `jobs.json`.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Builder, Deployment, TestServer};
use serde_json::{json, Value};

/// Bound for a job to reach a state the test is waiting for.
const WAIT: Duration = Duration::from_secs(10);
/// Bound for a SIGTERM-ed server to exit: shutdownGraceSec 2 + killGraceSec 1 + a few seconds
/// (with [`LONG_GRACE`], counted from the end of its last job instead).
const DRAIN_BOUND: Duration = Duration::from_secs(8);

/// The process group of a pid (field 5 of /proc/<pid>/stat).
fn pgid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Waits until the stdout log page shows this text (complete output printed before a crash).
fn wait_log(server: &TestServer, id: &str, expected: &str) {
    wait_stream_log(server, id, "stdout", expected);
}

/// Waits until the log page of `stream` shows this text and the log file holds it: a job's
/// output is kept in memory for its first 20 ms (README, Logs), and these tests kill -9 the
/// server next, which loses what is only in memory.
fn wait_stream_log(server: &TestServer, id: &str, stream: &str, expected: &str) {
    let deadline = Instant::now() + WAIT;
    let file = server.dir().join("logs").join(format!("{id}.{stream}.log"));
    loop {
        let page = server.get(&format!("/jobs/{id}/logs?stream={stream}"));
        let on_disk = std::fs::read_to_string(&file).is_ok_and(|text| text == expected);
        if page.status == 200 && page.body["data"] == json!(expected) && on_disk {
            return;
        }
        assert!(Instant::now() < deadline, "{stream} log of {id} never showed {expected:?}: {}", page.text);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn total(server: &TestServer, query: &str) -> i64 {
    let r = server.get(&format!("/jobs{query}"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["total"].as_i64().unwrap()
}

/// Runs `script-runner serve --config <config>` and returns its exit code and stderr. A server
/// that starts instead of failing is killed and reported.
fn serve_directly(config: &Path) -> (Option<i32>, String) {
    let dir = config.parent().unwrap();
    let stderr_path = dir.join("serve-directly.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(crate::common::BIN)
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let Some(status) = crate::common::exit_within(&mut child, Duration::from_secs(15)) else {
        panic!(
            "`serve` did not fail within 15 s; its log:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    };
    (status.code(), std::fs::read_to_string(&stderr_path).unwrap_or_default())
}

/// Asserts that both `check-config` and `serve` refuse this deployment with exit code 2 and a
/// message (never a panic) holding every one of `needles`.
fn assert_config_rejected(deployment: &Deployment, needles: &[&str]) {
    let out = deployment.check_config();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "check-config should exit 2; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked at"), "check-config panicked:\n{stderr}");
    assert!(stderr.contains("invalid configuration"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "check-config message should name {needle:?}:\n{stderr}");
    }

    let (code, stderr) = serve_directly(&deployment.config);
    assert_eq!(code, Some(2), "serve should exit 2; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked at"), "serve panicked:\n{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "serve message should name {needle:?}:\n{stderr}");
    }
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// Restart keeps history
// ---------------------------------------------------------------------------------------------

#[test]
fn restart_keeps_job_history_and_logs() {
    let body = "i=1; while [ $i -le 5 ]; do echo \"line $i of $1\"; i=$((i+1)); done; echo oops >&2; exit \"$2\"";
    let mut server =
        Builder::new().script("echo-sync", body).script_entry("echo-async", body, json!({ "mode": "async" })).start();

    let mut ids = Vec::new();
    for (name, code) in [("s1", "0"), ("s2", "3")] {
        let r = server.run("echo-sync", &[name, code], None);
        assert_eq!(r.status, 200, "{}", r.text);
        ids.push(r.body["jobId"].as_str().unwrap().to_string());
    }
    for (name, code) in [("a1", "0"), ("a2", "4")] {
        ids.push(server.run_async("echo-async", &[name, code]));
    }
    for id in &ids {
        server.wait_terminal(id, WAIT);
    }

    let pages = |server: &TestServer, id: &str| -> Vec<Value> {
        [
            "stream=stdout&offset=0&limit=10",
            "stream=stdout&offset=10&limit=20",
            "stream=stdout&offset=1000",
            "stream=stderr",
            "unit=lines&offset=0&limit=2",
            "unit=lines&offset=2&limit=100",
            "unit=lines&stream=stderr",
        ]
        .iter()
        .map(|q| {
            let r = server.get(&format!("/jobs/{id}/logs?{q}"));
            assert_eq!(r.status, 200, "{q}: {}", r.text);
            r.body
        })
        .collect()
    };
    let jobs_before: Vec<Value> = ids.iter().map(|id| server.job(id)).collect();
    let logs_before: Vec<Vec<Value>> = ids.iter().map(|id| pages(&server, id)).collect();
    let list_before = server.get("/jobs").body;
    assert_eq!(list_before["total"], json!(4), "{list_before}");
    assert_eq!(jobs_before[1]["status"], json!("failed"));
    assert_eq!(jobs_before[1]["code"], json!(3));
    assert_eq!(logs_before[2][4]["lines"], json!(["line 1 of a1", "line 2 of a1"]));

    let status = server.terminate(DRAIN_BOUND);
    assert!(status.success(), "server exited with {status:?} after SIGTERM");
    server.restart();

    for (i, id) in ids.iter().enumerate() {
        assert_eq!(server.job(id), jobs_before[i], "job {id} changed across the restart");
        assert_eq!(pages(&server, id), logs_before[i], "logs of {id} changed across the restart");
    }
    let list_after = server.get("/jobs").body;
    assert_eq!(list_after, list_before, "GET /jobs changed across the restart");
}

// ---------------------------------------------------------------------------------------------
// kill -9 recovery
// ---------------------------------------------------------------------------------------------

#[test]
fn kill9_recovery_kills_the_orphaned_job_group_and_fails_the_job() {
    let mut server = Builder::new()
        .script_entry(
            "orphan",
            "echo 'before the crash'\nsleep 300 &\nprintf '%s\\n%s\\n' $$ $! > \"$1\"\nsleep 300",
            json!({ "mode": "async" }),
        )
        .start();
    let pid_file = server.dir().join("orphan.pids");
    let id = server.run_async("orphan", &[&path_str(&pid_file)]);
    let pids = crate::common::read_pids(&pid_file, 2, WAIT);
    server.wait_job(&id, WAIT, |s| s == "running");
    wait_log(&server, &id, "before the crash\n");

    server.kill9();
    for &pid in &pids {
        assert!(crate::common::alive(pid), "job process {pid} should outlive a kill -9 of the server");
    }

    server.restart();
    let left = crate::common::wait_gone(&pids, WAIT);
    assert!(left.is_empty(), "processes {left:?} of the interrupted job survived the restart");
    let job = server.job(&id);
    assert_eq!(job["status"], json!("failed"), "{job}");
    assert_eq!(job["code"], json!(-1), "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("restart"), "error should say the server restarted: {job}");
    assert!(job["endedAt"].is_string(), "{job}");
    assert_eq!(total(&server, "?status=running"), 0);

    let bytes = server.get(&format!("/jobs/{id}/logs?stream=stdout"));
    assert_eq!(bytes.status, 200, "{}", bytes.text);
    assert_eq!(bytes.body["data"], json!("before the crash\n"), "{}", bytes.text);
    assert_eq!(bytes.body["totalSize"], json!(17), "{}", bytes.text);
    let lines = server.get(&format!("/jobs/{id}/logs?stream=stdout&unit=lines"));
    assert_eq!(lines.status, 200, "{}", lines.text);
    assert_eq!(lines.body["lines"], json!(["before the crash"]), "{}", lines.text);
    assert_eq!(lines.body["totalLines"], json!(1), "{}", lines.text);
}

#[test]
fn kill9_recovery_keeps_the_partial_output_in_the_job_record() {
    let mut server = Builder::new()
        .script_entry(
            "partial",
            "echo 'before the crash'\necho oops >&2\necho $$ > \"$1\"\nsleep 300",
            json!({ "mode": "async" }),
        )
        .start();
    let pid_file = server.dir().join("partial.pid");
    let id = server.run_async("partial", &[&path_str(&pid_file)]);
    crate::common::read_pids(&pid_file, 1, WAIT);
    // Both streams stored before the crash: what recovery must keep.
    wait_log(&server, &id, "before the crash\n");
    wait_stream_log(&server, &id, "stderr", "oops\n");

    server.kill9();
    server.restart();
    let job = server.job(&id);
    assert_eq!(job["status"], json!("failed"), "{job}");
    assert_eq!(job["stdoutSize"], json!(17), "{job}");
    assert_eq!(job["stderrSize"], json!(5), "{job}");
    // The preview is the tail of what the script wrote; the log still holds all of it.
    assert_eq!(job["stdoutPreview"], json!("before the crash\n"), "{job}");
    assert_eq!(job["stderrPreview"], json!("oops\n"), "{job}");
}

#[test]
fn kill9_recovery_kills_a_job_process_that_left_the_group() {
    let mut server = Builder::new()
        .script_entry(
            "leaver",
            "setsid sh -c 'echo $$ > \"$0.leaver\"; exec sleep 300' \"$1\" &\necho $$ > \"$1\"\nsleep 300",
            json!({ "mode": "async" }),
        )
        .start();
    let pid_file = server.dir().join("job.pid");
    let id = server.run_async("leaver", &[&path_str(&pid_file)]);
    let leader = crate::common::read_pids(&pid_file, 1, WAIT)[0];
    let leaver = crate::common::read_pids(&server.dir().join("job.pid.leaver"), 1, WAIT)[0];
    server.wait_job(&id, WAIT, |s| s == "running");
    // Wait until the leaver has exec'd sleep in its own session and group.
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(format!("/proc/{leaver}/comm")).unwrap_or_default().trim() != "sleep" {
        assert!(Instant::now() < deadline, "leaver {leaver} never became sleep");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(pgid_of(leaver), Some(leader), "the test process should have left the job's group");

    server.kill9();
    assert!(crate::common::alive(leaver), "the leaver should outlive a kill -9 of the server");

    server.restart();
    let left = crate::common::wait_gone(&[leader, leaver], WAIT);
    assert!(left.is_empty(), "processes {left:?} of the interrupted job survived the restart");
    let job = server.job(&id);
    assert_eq!(job["status"], json!("failed"), "{job}");
    assert_eq!(job["code"], json!(-1), "{job}");
}

#[test]
fn kill9_recovery_runs_queued_async_jobs_in_order_and_fails_queued_sync_jobs() {
    let mut server = Builder::new()
        .runner("maxConcurrent", json!(1))
        .script_entry("long", "echo $$ > \"$1\"\nsleep 300", json!({ "mode": "async" }))
        .script_entry("mark", "echo \"$1\" >> \"$2\"", json!({ "mode": "async" }))
        .start();
    let dir = server.dir().to_path_buf();
    let order = dir.join("order.txt");
    let long = server.run_async("long", &[&path_str(&dir.join("long.pid"))]);
    let long_pid = crate::common::read_pids(&dir.join("long.pid"), 1, WAIT)[0];
    server.wait_job(&long, WAIT, |s| s == "running");
    let first = server.run_async("mark", &["first", &path_str(&order)]);
    let second = server.run_async("mark", &["second", &path_str(&order)]);

    // A sync request waiting in the queue; its connection dies with the server.
    let url = format!("{}/run", server.base);
    let body = json!({ "scriptId": "mark", "args": ["sync", path_str(&order)], "mode": "sync" }).to_string();
    let caller = std::thread::spawn(move || {
        let _ = ureq::post(&url).set("Content-Type", "application/json").send_string(&body);
    });
    let deadline = Instant::now() + WAIT;
    let sync_id = loop {
        let queued = server.get("/jobs?status=queued").body;
        let sync = queued["jobs"].as_array().unwrap().iter().find(|j| j["mode"] == json!("sync")).cloned();
        if let Some(job) = sync {
            break job["jobId"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the sync request never showed up queued: {queued}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(server.job(&first)["status"], json!("queued"));
    assert_eq!(server.job(&second)["status"], json!("queued"));

    server.kill9();
    let _ = caller.join();
    server.restart();

    let job = server.job(&long);
    assert_eq!(job["status"], json!("failed"), "{job}");
    assert_eq!(job["code"], json!(-1), "{job}");
    assert!(crate::common::wait_gone(&[long_pid], WAIT).is_empty());

    let a = server.wait_terminal(&first, WAIT);
    let b = server.wait_terminal(&second, WAIT);
    assert_eq!(a["status"], json!("succeeded"), "{a}");
    assert_eq!(b["status"], json!("succeeded"), "{b}");
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "first\nsecond\n", "queued jobs ran out of order");

    let sync = server.job(&sync_id);
    assert_eq!(sync["status"], json!("failed"), "{sync}");
    assert_eq!(sync["code"], json!(-1), "{sync}");
    assert!(sync["error"].is_string(), "{sync}");
    assert!(sync["startedAt"].is_null(), "the abandoned sync job never started: {sync}");
    // The list is read from the database, where a job's end lands just after the job itself
    // answers it (its row is written behind): nothing queued or running once it has.
    crate::common::wait_until(
        || format!("jobs still listed queued or running: {}", server.get("/jobs").text),
        WAIT,
        || (total(&server, "?status=queued") == 0 && total(&server, "?status=running") == 0).then_some(()),
    );
}

// ---------------------------------------------------------------------------------------------
// SIGTERM drain
// ---------------------------------------------------------------------------------------------

/// A shutdown grace far longer than any test waits: a job ends in a drain when the test lets
/// it (a gate), or is canceled by the test, never by the grace running out on a slow machine.
const LONG_GRACE: u64 = 30;

/// After a signal to the server: polls with async runs of `probe` (a script that does nothing)
/// until the server refuses them with 503 SHUTTING_DOWN, i.e. it is draining; returns the
/// refusal. A probe accepted before that is queued or runs like any other job.
fn wait_draining(server: &TestServer, probe: &str) -> crate::common::Resp {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = server.run(probe, &[], Some("async"));
        if r.status != 202 {
            return r;
        }
        assert!(Instant::now() < deadline, "runs still accepted {WAIT:?} after the signal");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_lets_a_running_job_finish_within_the_grace() {
    let b = Builder::new().runner("shutdownGraceSec", json!(LONG_GRACE));
    let gate = b.dir().join("gate");
    let body = format!("echo started\n{}\necho finished", crate::common::wait_for_gate(&gate));
    let mut server =
        b.script_entry("short", &body, json!({ "mode": "async" })).script_entry("probe", "true", json!({})).start();
    let id = server.run_async("short", &[]);
    server.wait_job(&id, WAIT, |s| s == "running");

    // The job is still running (held by its gate) when the drain starts, and ends inside it.
    server.signal(libc::SIGTERM);
    assert_eq!(wait_draining(&server, "probe").status, 503);
    crate::common::open_gate(&gate);
    // Once its last job has ended, the server exits without waiting out the grace.
    let status = server.wait_exit(DRAIN_BOUND);
    assert!(status.success(), "server exited with {status:?} after SIGTERM");
    // A clean stop leaves everything in the database file: the WAL is checkpointed and
    // truncated (or removed), so the next start has nothing to replay.
    let wal = std::fs::metadata(server.dir().join("db.sqlite-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "WAL left after a clean stop");

    server.restart();
    let job = server.job(&id);
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    assert_eq!(job["code"], json!(0), "{job}");
    assert_eq!(job["stdoutPreview"], json!("started\nfinished\n"), "{job}");
}

#[test]
fn sigterm_cancels_a_job_that_outlives_the_grace() {
    let mut server = Builder::new()
        .script_entry(
            "forever",
            "sleep 300 &\nprintf '%s\\n%s\\n' $$ $! > \"$1\"\nsleep 300",
            json!({ "mode": "async" }),
        )
        .start();
    let pid_file = server.dir().join("forever.pids");
    let id = server.run_async("forever", &[&path_str(&pid_file)]);
    let pids = crate::common::read_pids(&pid_file, 2, WAIT);
    server.wait_job(&id, WAIT, |s| s == "running");

    let started = Instant::now();
    let status = server.terminate(DRAIN_BOUND);
    let took = started.elapsed();
    assert!(status.success(), "server exited with {status:?} after SIGTERM");
    assert!(took >= Duration::from_millis(1500), "server exited after {took:?}, before the 2 s shutdown grace");
    let left = crate::common::wait_gone(&pids, WAIT);
    assert!(left.is_empty(), "processes {left:?} of the canceled job survived the shutdown");

    server.restart();
    let job = server.job(&id);
    assert_eq!(job["status"], json!("canceled"), "{job}");
    assert_eq!(job["code"], json!(-1), "{job}");
    assert!(job["endedAt"].is_string(), "{job}");
}

#[test]
fn draining_server_refuses_runs_with_503_but_still_serves_reads() {
    let mut server = Builder::new()
        .runner("shutdownGraceSec", json!(LONG_GRACE))
        .script_entry("forever", "echo $$ > \"$1\"\nsleep 300", json!({ "mode": "async" }))
        .script("quick", "echo hi")
        .start();
    let pid_file = server.dir().join("forever.pid");
    let id = server.run_async("forever", &[&path_str(&pid_file)]);
    crate::common::read_pids(&pid_file, 1, WAIT);
    server.wait_job(&id, WAIT, |s| s == "running");

    server.signal(libc::SIGTERM);
    // The signal is handled asynchronously: poll until runs are refused.
    let refused = wait_draining(&server, "quick");
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.body["ok"], json!(false), "{}", refused.text);
    assert_eq!(refused.body["error"]["code"], json!("SHUTTING_DOWN"), "{}", refused.text);
    let sync = server.run("quick", &[], Some("sync"));
    assert_eq!(sync.status, 503, "{}", sync.text);

    // Reads are served while the job keeps the drain going (30 s of grace left).
    let job = server.get(&format!("/jobs/{id}"));
    assert_eq!(job.status, 200, "{}", job.text);
    assert_eq!(job.body["status"], json!("running"), "{}", job.text);
    assert_eq!(server.get("/jobs").status, 200);
    assert_eq!(server.get(&format!("/jobs/{id}/logs")).status, 200);

    // Ending the last job ends the drain: the server exits long before the grace.
    let canceled = server.post(&format!("/jobs/{id}/cancel"), json!({}));
    assert_eq!(canceled.status, 200, "{}", canceled.text);
    assert_eq!(canceled.body["status"], json!("canceled"), "{}", canceled.text);
    let status: ExitStatus = server.wait_exit(DRAIN_BOUND);
    assert!(status.success(), "server exited with {status:?} after SIGTERM");
}

#[test]
fn sigint_drains_like_sigterm() {
    let b = Builder::new().runner("shutdownGraceSec", json!(LONG_GRACE));
    let gate = b.dir().join("gate");
    let body = format!("{}\necho finished", crate::common::wait_for_gate(&gate));
    let mut server =
        b.script_entry("short", &body, json!({ "mode": "async" })).script_entry("probe", "true", json!({})).start();
    let id = server.run_async("short", &[]);
    server.wait_job(&id, WAIT, |s| s == "running");

    server.signal(libc::SIGINT);
    assert_eq!(wait_draining(&server, "probe").status, 503);
    crate::common::open_gate(&gate);
    let status = server.wait_exit(DRAIN_BOUND);
    assert!(status.success(), "server exited with {status:?} after SIGINT");

    server.restart();
    let job = server.job(&id);
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    assert_eq!(job["stdoutPreview"], json!("finished\n"), "{job}");
}

#[test]
fn queued_async_jobs_survive_a_sigterm_shutdown_and_run_after_restart() {
    let b = Builder::new().runner("maxConcurrent", json!(1)).runner("shutdownGraceSec", json!(LONG_GRACE));
    let gate = b.dir().join("gate");
    let mut server = b
        .script_entry("busy", &crate::common::wait_for_gate(&gate), json!({ "mode": "async" }))
        .script_entry("mark", "echo \"$1\" >> \"$2\"", json!({ "mode": "async" }))
        .script_entry("probe", "true", json!({}))
        .start();
    let order = server.dir().join("order.txt");
    let busy = server.run_async("busy", &[]);
    server.wait_job(&busy, WAIT, |s| s == "running");
    let first = server.run_async("mark", &["first", &path_str(&order)]);
    let second = server.run_async("mark", &["second", &path_str(&order)]);

    // `busy` holds the only slot until the drain has begun, then ends inside it: the slot it
    // frees must not go to a queued job.
    server.signal(libc::SIGTERM);
    assert_eq!(wait_draining(&server, "probe").status, 503);
    crate::common::open_gate(&gate);
    let status = server.wait_exit(DRAIN_BOUND);
    assert!(status.success(), "server exited with {status:?} after SIGTERM");
    assert!(!order.exists(), "a queued job ran during the shutdown");

    server.restart();
    assert_eq!(server.job(&busy)["status"], json!("succeeded"));
    let a = server.wait_terminal(&first, WAIT);
    let b = server.wait_terminal(&second, WAIT);
    assert_eq!(a["status"], json!("succeeded"), "{a}");
    assert_eq!(b["status"], json!("succeeded"), "{b}");
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "first\nsecond\n");
}

// ---------------------------------------------------------------------------------------------
// Job ids
// ---------------------------------------------------------------------------------------------

#[test]
fn job_ids_stay_unique_across_restarts() {
    let mut server = Builder::new().script("quick", "echo hi").start();
    let mut ids = Vec::new();
    let run_three = |server: &TestServer, ids: &mut Vec<String>| {
        for _ in 0..3 {
            let r = server.run("quick", &[], None);
            assert_eq!(r.status, 200, "{}", r.text);
            ids.push(r.body["jobId"].as_str().unwrap().to_string());
        }
    };
    run_three(&server, &mut ids);
    assert!(server.terminate(DRAIN_BOUND).success());
    server.restart();
    run_three(&server, &mut ids);
    server.kill9();
    server.restart();
    run_three(&server, &mut ids);

    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "job ids repeat: {ids:?}");
    assert_eq!(total(&server, ""), 9);
    for id in &ids {
        assert_eq!(server.job(id)["status"], json!("succeeded"));
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------------------------

#[test]
fn config_unknown_key_in_config_json_is_rejected() {
    let deployment = Builder::new().script("a", "true").runner("maxConcurent", json!(2)).write();
    assert_config_rejected(&deployment, &[&path_str(&deployment.config), "maxConcurent"]);

    let deployment = Builder::new().script("a", "true").top("bogusKey", json!(1)).write();
    assert_config_rejected(&deployment, &[&path_str(&deployment.config), "bogusKey"]);
}

#[test]
fn config_unknown_key_in_a_script_entry_is_rejected() {
    let deployment = Builder::new().script_entry("a", "true", json!({ "timeoutSecs": 5 })).write();
    assert_config_rejected(&deployment, &[&scripts_json(&deployment), "script \"a\"", "timeoutSecs"]);
}

#[test]
fn config_duplicate_script_id_is_rejected() {
    let deployment = Builder::new().script("a", "true").script("b", "true").script("a", "false").write();
    assert_config_rejected(&deployment, &[&scripts_json(&deployment), "script \"a\"", "duplicate"]);
}

#[test]
fn config_missing_script_path_is_rejected() {
    let deployment = Builder::new()
        .script("ok", "true")
        .raw_script(json!({ "id": "gone", "path": "./scripts/nope.sh", "mode": "sync" }))
        .write();
    assert_config_rejected(&deployment, &[&scripts_json(&deployment), "script \"gone\"", "path", "nope.sh"]);
}

#[test]
fn config_non_executable_script_path_is_rejected() {
    let builder = Builder::new();
    let plain = builder.dir().join("scripts/plain.sh");
    std::fs::write(&plain, "#!/bin/sh\necho hi\n").unwrap();
    let deployment = builder.raw_script(json!({ "id": "plain", "path": path_str(&plain) })).write();
    assert_config_rejected(
        &deployment,
        &[&scripts_json(&deployment), "script \"plain\"", "path", "plain.sh", "executable"],
    );
}

#[test]
fn config_invalid_item_pattern_is_rejected() {
    let deployment = Builder::new().script_entry("re", "true", json!({ "args": { "itemPattern": "^([a-z" } })).write();
    assert_config_rejected(&deployment, &[&scripts_json(&deployment), "script \"re\"", "itemPattern"]);
}

#[test]
fn config_bad_numbers_are_rejected() {
    let deployment = Builder::new().script("a", "true").runner("maxConcurrent", json!(-1)).write();
    assert_config_rejected(&deployment, &[&path_str(&deployment.config), "maxConcurrent"]);

    let deployment = Builder::new().script("a", "true").runner("maxConcurrent", json!(0)).write();
    assert_config_rejected(&deployment, &[&path_str(&deployment.config), "maxConcurrent"]);

    let deployment = Builder::new().script("a", "true").runner("killGraceSec", json!(1.5)).write();
    assert_config_rejected(&deployment, &[&path_str(&deployment.config), "killGraceSec"]);

    let deployment = Builder::new().script_entry("a", "true", json!({ "timeoutSec": "x" })).write();
    assert_config_rejected(&deployment, &[&scripts_json(&deployment), "script \"a\"", "timeoutSec"]);

    let deployment = Builder::new().script_entry("a", "true", json!({ "args": { "maxItems": -3 } })).write();
    assert_config_rejected(&deployment, &[&scripts_json(&deployment), "script \"a\"", "maxItems"]);
}

fn scripts_json(deployment: &Deployment) -> String {
    path_str(&deployment.dir.path().join("scripts.json"))
}

#[test]
fn config_missing_or_malformed_files_are_rejected_naming_the_file() {
    let deployment = Builder::new().script("a", "true").write();
    std::fs::write(&deployment.config, "{ \"server\": { \"port\": 0 ").unwrap();
    assert_config_rejected(&deployment, &[&path_str(&deployment.config)]);

    let deployment = Builder::new().script("a", "true").write();
    std::fs::write(deployment.dir.path().join("scripts.json"), "[1, 2").unwrap();
    assert_config_rejected(&deployment, &[&scripts_json(&deployment)]);

    let deployment = Builder::new().script("a", "true").write();
    std::fs::remove_file(deployment.dir.path().join("scripts.json")).unwrap();
    assert_config_rejected(&deployment, &[&scripts_json(&deployment)]);

    let deployment = Builder::new().script("a", "true").write();
    std::fs::remove_file(&deployment.config).unwrap();
    assert_config_rejected(&deployment, &[&path_str(&deployment.config)]);
}

#[test]
fn config_inline_scripts_array_works_without_scripts_file() {
    let deployment = Builder::new().script("inline-echo", "echo inline \"$1\"").write();
    let config_path = deployment.config.clone();
    let scripts_path = deployment.dir.path().join("scripts.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    let scripts: Value = serde_json::from_slice(&std::fs::read(&scripts_path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("scriptsFile");
    config["scripts"] = scripts["scripts"].clone();
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    std::fs::remove_file(&scripts_path).unwrap();

    let out = deployment.check_config();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("inline-echo"), "{stdout}");

    let server = deployment.start();
    let r = server.run("inline-echo", &["x"], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    assert_eq!(r.body["stdout"], json!("inline x\n"), "{}", r.text);
}

#[test]
fn check_config_on_a_valid_config_exits_0_and_lists_the_scripts() {
    let deployment = Builder::new()
        .script("first-script", "true")
        .script_entry("second-script", "true", json!({ "mode": "async", "timeoutSec": 7 }))
        .write();
    let out = deployment.check_config();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("first-script"), "{stdout}");
    assert!(stdout.contains("second-script"), "{stdout}");
    assert!(!stderr.contains("panicked at"), "{stderr}");
}

#[test]
fn config_file_env_var_names_the_config_when_no_flag_is_given() {
    let deployment = Builder::new().script("from-env-var", "true").write();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(crate::common::BIN)
        .arg("check-config")
        .env("CONFIG_FILE", &deployment.config)
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("from-env-var"), "{stdout}");
    assert!(stdout.contains(&path_str(&deployment.config)), "{stdout}");

    // Without CONFIG_FILE, the empty working directory has no config.json: it must fail.
    let out = Command::new(crate::common::BIN)
        .arg("check-config")
        .env_remove("CONFIG_FILE")
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// Upstream jobs.json import
// ---------------------------------------------------------------------------------------------

const UP_OK: &str = "job_1732190000000_1";
const UP_FAILED: &str = "job_1732190000500_2";
const UP_RUNNING: &str = "job_1732190001000_3";

fn upstream_jobs() -> Value {
    json!([
        {
            "jobId": UP_OK, "scriptId": "quick-echo", "status": "succeeded", "code": 0,
            "startedAt": "2024-11-21T12:00:00.010Z", "endedAt": "2024-11-21T12:00:00.025Z",
            "durationMs": 15, "createdAt": "2024-11-21T12:00:00.000Z", "mode": "sync",
            "stdoutRef": format!("{UP_OK}.stdout.log"), "stderrRef": format!("{UP_OK}.stderr.log"),
            "stdoutSize": 16, "stderrSize": 0, "stdoutTruncated": false, "stderrTruncated": false,
            "stdoutPreview": "hello world\nbye\n", "stderrPreview": ""
        },
        {
            "jobId": UP_FAILED, "scriptId": "long-task", "status": "failed", "code": 2,
            "startedAt": "2024-11-21T12:00:00.510Z", "endedAt": "2024-11-21T12:00:01.510Z",
            "durationMs": 1000, "createdAt": "2024-11-21T12:00:00.500Z", "mode": "async",
            "stdoutRef": format!("{UP_FAILED}.stdout.log"), "stderrRef": format!("{UP_FAILED}.stderr.log"),
            "stdoutSize": 0, "stderrSize": 5, "stdoutTruncated": false, "stderrTruncated": false,
            "stdoutPreview": "", "stderrPreview": "boom\n"
        },
        {
            "jobId": UP_RUNNING, "scriptId": "long-task", "status": "running", "code": null,
            "startedAt": "2024-11-21T12:00:01.010Z", "endedAt": null, "durationMs": null,
            "createdAt": "2024-11-21T12:00:01.000Z", "mode": "async",
            "stdoutRef": format!("{UP_RUNNING}.stdout.log"), "stderrRef": format!("{UP_RUNNING}.stderr.log"),
            "stdoutSize": 6, "stderrSize": 0, "stdoutTruncated": false, "stderrTruncated": false,
            "stdoutPreview": "step1\n", "stderrPreview": ""
        }
    ])
}

/// A deployment holding an upstream jobs.json and its logs.
fn upstream_deployment() -> Deployment {
    let deployment = Builder::new().script("quick-echo", "echo hi").write();
    let dir = deployment.dir.path();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let log = |name: String, text: &str| std::fs::write(dir.join("logs").join(name), text).unwrap();
    log(format!("{UP_OK}.stdout.log"), "hello world\nbye\n");
    log(format!("{UP_OK}.stderr.log"), "");
    log(format!("{UP_FAILED}.stdout.log"), "");
    log(format!("{UP_FAILED}.stderr.log"), "boom\n");
    log(format!("{UP_RUNNING}.stdout.log"), "step1\n");
    log(format!("{UP_RUNNING}.stderr.log"), "");
    std::fs::write(dir.join("jobs.json"), serde_json::to_vec_pretty(&upstream_jobs()).unwrap()).unwrap();
    deployment
}

#[test]
fn upstream_jobs_json_is_imported_with_its_fields() {
    let server = upstream_deployment().start();
    let upstream = upstream_jobs();

    for (i, id) in [UP_OK, UP_FAILED].into_iter().enumerate() {
        let job = server.job(id);
        let want = &upstream[i];
        for key in crate::common::UPSTREAM_JOB_FIELDS {
            assert_eq!(job[key], want[key], "imported {id}: field {key} differs: {job}");
        }
    }

    let job = server.job(UP_RUNNING);
    assert_eq!(job["status"], json!("failed"), "{job}");
    assert_eq!(job["code"], json!(-1), "{job}");
    assert!(job["endedAt"].is_string(), "{job}");
    assert_eq!(job["createdAt"], json!("2024-11-21T12:00:01.000Z"), "{job}");
    assert_eq!(job["stdoutPreview"], json!("step1\n"), "{job}");

    assert_eq!(total(&server, ""), 3);
    assert_eq!(total(&server, "?status=running"), 0);
}

#[test]
fn upstream_imported_logs_are_readable_by_bytes_and_lines() {
    let server = upstream_deployment().start();

    let r = server.get(&format!("/jobs/{UP_OK}/logs"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["data"], json!("hello world\nbye\n"), "{}", r.text);
    assert_eq!(r.body["totalSize"], json!(16), "{}", r.text);
    assert_eq!(r.body["nextOffset"], json!(16), "{}", r.text);

    let r = server.get(&format!("/jobs/{UP_OK}/logs?offset=6&limit=5"));
    assert_eq!(r.body["data"], json!("world"), "{}", r.text);
    assert_eq!(r.body["nextOffset"], json!(11), "{}", r.text);

    let r = server.get(&format!("/jobs/{UP_OK}/logs?unit=lines"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["lines"], json!(["hello world", "bye"]), "{}", r.text);
    assert_eq!(r.body["totalLines"], json!(2), "{}", r.text);

    let r = server.get(&format!("/jobs/{UP_OK}/logs?unit=lines&offset=1&limit=1"));
    assert_eq!(r.body["lines"], json!(["bye"]), "{}", r.text);

    let r = server.get(&format!("/jobs/{UP_FAILED}/logs?stream=stderr"));
    assert_eq!(r.body["data"], json!("boom\n"), "{}", r.text);
    let r = server.get(&format!("/jobs/{UP_FAILED}/logs?stream=stderr&unit=lines"));
    assert_eq!(r.body["lines"], json!(["boom"]), "{}", r.text);

    let r = server.get(&format!("/jobs/{UP_RUNNING}/logs?unit=lines"));
    assert_eq!(r.body["lines"], json!(["step1"]), "{}", r.text);
}

#[test]
fn upstream_import_never_reads_logs_outside_the_logs_dir() {
    let deployment = Builder::new().script("quick-echo", "echo hi").write();
    let dir = deployment.dir.path();
    std::fs::write(dir.join("secret.txt"), "top secret\n").unwrap();
    let jobs = json!([{
        "jobId": "job_1732190000000_9", "scriptId": "quick-echo", "status": "succeeded", "code": 0,
        "createdAt": "2024-11-21T12:00:00.000Z", "mode": "sync",
        "stdoutRef": "../secret.txt", "stderrRef": path_str(&dir.join("secret.txt")),
        "stdoutSize": 11, "stderrSize": 11, "stdoutPreview": "", "stderrPreview": ""
    }]);
    std::fs::write(dir.join("jobs.json"), jobs.to_string()).unwrap();
    let server = deployment.start();

    for query in ["stream=stdout", "stream=stderr", "stream=stdout&unit=lines", "stream=stderr&unit=lines"] {
        let r = server.get(&format!("/jobs/job_1732190000000_9/logs?{query}"));
        assert!(r.status < 500, "{query}: {} {}", r.status, r.text);
        assert!(!r.text.contains("top secret"), "{query}: a log ref escaped logsDir: {}", r.text);
    }
}

#[test]
fn upstream_import_happens_once_across_restarts() {
    let mut server = upstream_deployment().start();
    assert_eq!(total(&server, ""), 3);
    let ran = server.run("quick-echo", &[], None);
    assert_eq!(ran.status, 200, "{}", ran.text);
    let before = server.job(UP_OK);

    assert!(server.terminate(DRAIN_BOUND).success());
    // Upstream rewrote its file meanwhile: a changed job and a new one.
    let mut changed = upstream_jobs();
    changed[0]["stdoutPreview"] = json!("changed\n");
    changed[0]["status"] = json!("failed");
    let mut extra = changed[1].clone();
    extra["jobId"] = json!("job_1732190002000_4");
    changed.as_array_mut().unwrap().push(extra);
    std::fs::write(server.dir().join("jobs.json"), serde_json::to_vec(&changed).unwrap()).unwrap();

    server.restart();
    assert_eq!(total(&server, ""), 4, "imported jobs were duplicated or re-imported");
    assert_eq!(server.job(UP_OK), before, "an imported job changed on restart");
    assert_eq!(server.get("/jobs/job_1732190002000_4").status, 404);

    server.kill9();
    server.restart();
    assert_eq!(total(&server, ""), 4, "imported jobs were duplicated or re-imported");
}

#[test]
fn upstream_jobs_json_that_is_not_json_fails_startup_naming_the_key() {
    let deployment = Builder::new().script("quick-echo", "echo hi").write();
    std::fs::write(deployment.dir.path().join("jobs.json"), "[{\"jobId\": \"job_1\", oops").unwrap();
    let (code, stderr) = serve_directly(&deployment.config);
    assert!(code.is_some_and(|c| c != 0), "serve should fail, got {code:?}; stderr:\n{stderr}");
    assert!(stderr.contains("runner.jobStoreFile"), "{stderr}");
    assert!(stderr.contains("jobs.json"), "{stderr}");
    assert!(!stderr.contains("panicked at"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// One server per database; recovery by deployment marker
// ---------------------------------------------------------------------------------------------

#[test]
/// A second server on the same database: SQLite refuses it (one server per file). On PostgreSQL
/// servers on one database form a cluster (tests/cluster.rs), but not two under one node id: the
/// same config again is refused while the first runs.
fn a_second_server_on_the_same_database_refuses_to_start() {
    let server = Builder::new().script("noop", "true").start();
    let (code, stderr) = serve_directly(&server.deployment.config);
    assert_ne!(code, Some(0), "a second server started on the same database: {stderr}");
    if crate::common::on_postgres() {
        assert!(stderr.contains("node id test-node is in use by a live node"), "{stderr}");
    } else {
        assert!(stderr.contains("locked") && stderr.contains("db.sqlite.lock"), "{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(server.get("/healthz").status, 200, "the first server must be unaffected");
}

/// `DATABASE_URL` wins over `database.url`; `database.poolSize` is checked.
#[test]
fn the_database_url_from_the_environment_wins_and_the_pool_size_is_checked() {
    let deployment = Builder::new()
        .script("noop", "true")
        .top("database", json!({ "url": "sqlite://config.db", "poolSize": 2 }))
        .write();
    let dir = deployment.dir.path().to_path_buf();
    let env_url = format!("sqlite://{}", dir.join("env.db").display());
    let server = deployment.start_with_env(&[("DATABASE_URL", &env_url)]);
    assert_eq!(server.run("noop", &[], None).status, 200);
    assert!(dir.join("env.db").exists() && !dir.join("config.db").exists());
    drop(server);

    let deployment = Builder::new().script("noop", "true").top("database", json!({ "poolSize": 0 })).write();
    let out = deployment.check_config();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database.poolSize"), "{out:?}");
}

/// Starts `sleep 300` in its own group with this `SCRIPT_RUNNER_DB`, as a job of that
/// deployment's previous run would be.
fn orphan_of(deployment_db: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    Command::new("sleep")
        .arg("300")
        .env("SCRIPT_RUNNER_DB", deployment_db)
        .env("SCRIPT_RUNNER_JOB_ID", "job_0_0")
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn recovery_kills_this_deployments_orphans_even_without_a_job_row_and_spares_others() {
    // The marker is the database's path, or on PostgreSQL an id the first server stores in the
    // database: the orphans are made while a server runs, and the next start finds them.
    let mut server = Builder::new().script("noop", "true").start();
    server.kill9();
    let db = server.deployment.marker();
    let mut ours = orphan_of(&db);
    let mut theirs = orphan_of("/somewhere/else/db.sqlite");
    let (ours_pid, theirs_pid) = (ours.id() as i32, theirs.id() as i32);

    server.restart();
    let left = crate::common::wait_gone(&[ours_pid], WAIT);
    let _ = ours.kill();
    let _ = ours.wait();
    let theirs_alive = crate::common::alive(theirs_pid);
    let _ = theirs.kill();
    let _ = theirs.wait();
    assert!(left.is_empty(), "an orphan of this deployment survived the start");
    assert!(theirs_alive, "a process of another deployment was killed");
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn kill9_recovery_fails_a_running_sync_job_and_kills_it() {
    let mut server = Builder::new().script("hold", "echo $$ > \"$1\"\nsleep 300").start();
    let pid_file = server.dir().join("hold.pid");
    let url = format!("{}/run", server.base);
    let body = json!({ "scriptId": "hold", "args": [path_str(&pid_file)], "mode": "sync" }).to_string();
    let caller = std::thread::spawn(move || {
        let _ = ureq::post(&url).set("Content-Type", "application/json").send_string(&body);
    });
    let pid = crate::common::read_pids(&pid_file, 1, WAIT)[0];
    // A running sync job is written once it has run briefly: it shows up in listings.
    let deadline = Instant::now() + WAIT;
    let id = loop {
        let running = server.get("/jobs?status=running").body;
        if let Some(job) = running["jobs"].as_array().and_then(|jobs| jobs.first()) {
            break job["jobId"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the running sync job never showed up in /jobs: {running}");
        std::thread::sleep(Duration::from_millis(20));
    };

    server.kill9();
    let _ = caller.join();
    assert!(crate::common::alive(pid), "the job's process should outlive the server");
    server.restart();

    assert!(crate::common::wait_gone(&[pid], WAIT).is_empty(), "the sync job's process survived");
    let job = server.job(&id);
    assert_eq!(job["status"], json!("failed"), "{job}");
    assert_eq!(job["code"], json!(-1), "{job}");
    assert!(job["error"].as_str().unwrap_or("").contains("restarted"), "{job}");
}

// ---------------------------------------------------------------- crash loop: at most once

/// A small deterministic generator (xorshift), so a failing loop can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn a_kill_9_loop_under_async_load_never_runs_an_acknowledged_job_twice() {
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261204);
    println!("crash loop seed {seed} (replay with CRASH_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let builder = Builder::new().runner("maxConcurrent", json!(4)).runner("maxQueued", json!(10000));
    let side = builder.dir().join("side");
    // Short jobs: most start and end between two kills, before their running state would
    // otherwise have been written.
    let body = format!("echo \"$1 $$\" >> '{}'", side.display());
    let mut server = builder.script_entry("mark", &body, json!({ "mode": "async" })).start();
    let started = Instant::now();
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    let kills = 8;
    for round in 0..kills {
        let base = server.base.clone();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let window = Duration::from_millis(50 + rng.below(250));
        let got = std::thread::scope(|scope| {
            let submitter = scope.spawn(|| {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
                let mut got = Vec::new();
                for n in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let tag = format!("r{round}n{n}");
                    let body = json!({ "scriptId": "mark", "args": [tag], "mode": "async" });
                    match agent.post(&format!("{base}/run")).send_json(body) {
                        Ok(r) if r.status() == 202 => {
                            let v: Value = r.into_json().unwrap();
                            got.push((tag, v["jobId"].as_str().unwrap().to_string()));
                        }
                        // Refused or cut off by the kill: never acknowledged.
                        _ => break,
                    }
                }
                got
            });
            std::thread::sleep(window);
            server.kill9();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            submitter.join().unwrap()
        });
        acknowledged.extend(got);
        server.restart();
    }
    assert!(acknowledged.len() > 50, "too little load to mean anything: {}", acknowledged.len());
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut failed_by_restart = 0;
    let mut outcomes = Vec::new();
    for (tag, id) in &acknowledged {
        let job = server.wait_terminal(id, Duration::from_secs(30));
        outcomes.push((tag.clone(), job));
    }
    for line in std::fs::read_to_string(&side).unwrap_or_default().lines() {
        *counts.entry(line.split(' ').next().unwrap_or_default().to_string()).or_default() += 1;
    }
    for (tag, job) in &outcomes {
        let ran = counts.get(tag).copied().unwrap_or(0);
        assert!(ran <= 1, "seed {seed}: job {} ({tag}) ran {ran} times: {job}", job["jobId"]);
        match job["status"].as_str() {
            Some("succeeded") => assert_eq!(ran, 1, "seed {seed}: {job}"),
            Some("failed") => {
                let error = job["error"].as_str().unwrap_or_default();
                assert!(error.contains("restarted"), "seed {seed}: failed without the restart reason: {job}");
                failed_by_restart += 1;
            }
            other => panic!("seed {seed}: job {tag} ended {other:?}: {job}"),
        }
    }
    println!(
        "crash loop: {kills} kills, {} acknowledged jobs, {failed_by_restart} failed by a restart, none ran twice, {:?}",
        acknowledged.len(),
        started.elapsed()
    );
}
