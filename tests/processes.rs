//! Process supervision as a user sees it: cancel and timeout end the whole process group
//! (checked on real pids in /proc), processes a script leaves behind are ended, the queue keeps
//! its limits and its order, and a job runs with stdin from /dev/null in its own process group.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{
    alive, open_gate, read_pids, text, wait_file, wait_for_gate, wait_for_gate_word, wait_gone, Builder, TestServer,
};
use serde_json::{json, Value};

/// How long a script gets to write its pids.
const PIDS_WAIT: Duration = Duration::from_secs(10);
/// How long a job gets to end in the tests' polling loops.
const END_WAIT: Duration = Duration::from_secs(15);
/// How long processes get to be gone once the server says their job ended (they are killed by
/// then; only reaping is left).
const GONE_WAIT: Duration = Duration::from_secs(10);

/// A script line that records the shell's pid, then its last background child's pid, in `file`.
fn write_pids(file: &Path) -> String {
    format!("printf '%s\\n%s\\n' $$ $! > '{}'", file.display())
}

/// `POST /jobs/:id/cancel`, with how long the call took.
fn cancel(server: &TestServer, id: &str) -> (crate::common::Resp, Duration) {
    let t = Instant::now();
    let r = server.post(&format!("/jobs/{id}/cancel"), json!({}));
    (r, t.elapsed())
}

/// Pids that outlived the bound, with their command lines, for assertion messages.
fn describe(pids: &[i32]) -> String {
    pids.iter()
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p} ({})", String::from_utf8_lossy(&cmd).replace('\0', " ").trim())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts an async job and waits until its process runs.
fn start_running(server: &TestServer, script: &str) -> String {
    let id = server.run_async(script, &[]);
    server.wait_job(&id, END_WAIT, |s| s == "running");
    id
}

#[test]
fn cancel_kills_the_whole_process_group() {
    let b = Builder::new();
    let pids_file = b.dir().join("pids");
    let server = b
        .script_entry("tree", &format!("sleep 300 &\n{}\nwait", write_pids(&pids_file)), json!({"mode": "async"}))
        .start();
    let id = server.run_async("tree", &[]);
    let pids = read_pids(&pids_file, 2, PIDS_WAIT);
    assert!(pids.iter().all(|&p| alive(p)), "script and child should run before the cancel: {pids:?}");

    let (r, _) = cancel(&server, &id);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("canceled"), "{}", r.text);
    assert_eq!(r.body["code"], json!(-1), "{}", r.text);
    assert!(r.body["endedAt"].is_string(), "the call waits for the end: {}", r.text);
    let left = wait_gone(&pids, GONE_WAIT);
    assert!(left.is_empty(), "still alive after cancel: {}", describe(&left));
    assert_eq!(server.job(&id)["status"], json!("canceled"));
}

#[test]
fn cancel_kills_a_script_that_ignores_sigterm_after_the_grace() {
    let b = Builder::new();
    let pids_file = b.dir().join("pids");
    // The child inherits the ignored SIGTERM.
    let body = format!("trap '' TERM\nsleep 300 &\n{}\nwait", write_pids(&pids_file));
    let server = b.script_entry("stubborn", &body, json!({"mode": "async"})).start();
    let id = server.run_async("stubborn", &[]);
    let pids = read_pids(&pids_file, 2, PIDS_WAIT);

    let (r, took) = cancel(&server, &id);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("canceled"), "{}", r.text);
    assert_eq!(r.body["code"], json!(-1), "{}", r.text);
    // killGraceSec is 1: SIGTERM alone cannot end it, only the SIGKILL after the grace.
    assert!(took >= Duration::from_millis(800), "cancel returned after {took:?}, before the 1 s grace");
    // The cancel answers once the job ended: by then the SIGKILL went to the whole group.
    let answered = Instant::now();
    let left = wait_gone(&pids, GONE_WAIT);
    assert!(left.is_empty(), "still alive {:?} after the cancel answered: {}", answered.elapsed(), describe(&left));
}

#[test]
fn cancel_of_a_script_that_traps_sigterm_ends_when_it_exits() {
    let b = Builder::new();
    let pids_file = b.dir().join("pids");
    let body = format!("trap 'echo cleaning up; exit 0' TERM\nsleep 300 &\n{}\nwait", write_pids(&pids_file));
    // A long grace, so that "the trap ended it" and "it waited for the grace" are far apart.
    let server = b.runner("killGraceSec", json!(10)).script_entry("tidy", &body, json!({"mode": "async"})).start();
    let id = server.run_async("tidy", &[]);
    let pids = read_pids(&pids_file, 2, PIDS_WAIT);

    let (r, took) = cancel(&server, &id);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("canceled"), "{}", r.text);
    assert_eq!(r.body["code"], json!(-1), "{}", r.text);
    assert!(took < Duration::from_secs(5), "cancel took {took:?}: it should not wait for the 10 s grace");
    assert_eq!(r.body["stdoutPreview"], json!("cleaning up\n"), "the trap ran: {}", r.text);
    let left = wait_gone(&pids, GONE_WAIT);
    assert!(left.is_empty(), "still alive after cancel: {}", describe(&left));
}

#[test]
fn cancel_of_a_queued_job_ends_it_at_once_and_it_never_starts() {
    let b = Builder::new().runner("maxConcurrent", json!(1));
    let marker = b.dir().join("second-started");
    let server = b
        .script_entry("long", "sleep 300", json!({"mode": "async"}))
        .script_entry("second", &format!("touch '{}'", marker.display()), json!({"mode": "async"}))
        .script("quick", "echo done")
        .start();
    let first = start_running(&server, "long");
    let r = server.run("second", &[], Some("async"));
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], json!("queued"), "{}", r.text);
    let second = text(&r.body["jobId"]).to_string();

    let (r, took) = cancel(&server, &second);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("canceled"), "{}", r.text);
    assert_eq!(r.body["code"], json!(-1), "{}", r.text);
    assert_eq!(r.body["startedAt"], Value::Null, "{}", r.text);
    // Far below the 300 s the running job would hold the slot, had the cancel waited for it.
    assert!(took < Duration::from_secs(5), "canceling a queued job took {took:?}");

    // Free the slot, then run one more job through the same FIFO queue: had the canceled job
    // stayed queued, it would have run before this one.
    let (r, _) = cancel(&server, &first);
    assert_eq!(r.body["status"], json!("canceled"), "{}", r.text);
    let r = server.run("quick", &[], None);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    assert!(!marker.exists(), "the canceled queued job ran");
    let job = server.job(&second);
    assert_eq!(job["status"], json!("canceled"), "{job}");
    assert_eq!(job["startedAt"], Value::Null, "{job}");
}

#[test]
fn cancel_of_a_finished_job_returns_it_unchanged() {
    let server = Builder::new().script("hello", "echo hello").start();
    let r = server.run("hello", &[], None);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    let id = text(&r.body["jobId"]).to_string();
    let before = server.job(&id);

    let (r, _) = cancel(&server, &id);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, before);
    assert_eq!(server.job(&id), before);
}

#[test]
fn cancel_of_an_unknown_job_is_404() {
    let server = Builder::new().script("hello", "echo hello").start();
    let (r, _) = cancel(&server, "job_0_0");
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.body["ok"], json!(false), "{}", r.text);
    assert_eq!(r.body["error"]["code"], json!("JOB_NOT_FOUND"), "{}", r.text);
    assert_eq!(r.body["error"]["message"], json!("job not found: job_0_0"), "{}", r.text);
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let b = Builder::new();
    let pids_file = b.dir().join("pids");
    let body = format!("sleep 30 &\n{}\nwait", write_pids(&pids_file));
    let server = b.script_entry("slow", &body, json!({"timeoutSec": 1})).start();

    let r = server.run("slow", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("timed_out"), "{}", r.text);
    assert_eq!(r.body["code"], json!(-1), "{}", r.text);
    let duration = r.body["durationMs"].as_i64().unwrap();
    // Not before the timeout, and far from the 30 s the script would run.
    assert!((900..=10_000).contains(&duration), "durationMs {duration}, timeoutSec is 1");
    let pids = read_pids(&pids_file, 2, PIDS_WAIT);
    let left = wait_gone(&pids, GONE_WAIT);
    assert!(left.is_empty(), "still alive after the timeout: {}", describe(&left));
}

#[test]
fn processes_left_behind_by_a_finished_script_are_killed() {
    let b = Builder::new();
    let pids_file = b.dir().join("pids");
    // The leftover keeps the script's stdout open, as a careless script's would.
    let body = format!("sleep 300 &\n{}\necho bye", write_pids(&pids_file));
    let server = b.script("leaky", &body).start();

    let r = server.run("leaky", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    assert_eq!(r.body["code"], json!(0), "{}", r.text);
    assert_eq!(r.body["stdout"], json!("bye\n"), "{}", r.text);
    let pids = read_pids(&pids_file, 2, PIDS_WAIT);
    let left = wait_gone(&pids[1..], GONE_WAIT);
    assert!(left.is_empty(), "the leftover child is still alive: {}", describe(&left));
}

/// `[start, end)` in ns, from a marker file `start <ns>\nend <ns>\n`.
fn interval(file: &Path) -> (u128, u128) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let value = |key: &str| -> u128 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no {key:?} in {text:?}", file.display()))
    };
    (value("start "), value("end "))
}

#[test]
fn no_more_than_max_concurrent_scripts_run_at_once_and_the_queue_is_fifo() {
    let b = Builder::new().runner("maxConcurrent", json!(2));
    let marks = b.dir().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // Each job records its start, holds its slot until the test opens its gate `<n>.go`, then
    // records its end: which jobs run is decided by the server alone, never by timing.
    let body = format!(
        "f='{}'/\"$1\"\necho \"start $(date +%s%N)\" > \"$f\"\n{}\necho \"end $(date +%s%N)\" >> \"$f\"",
        marks.display(),
        wait_for_gate_word("\"$f.go\"")
    );
    let server = b.script_entry("work", &body, json!({"mode": "async"})).start();
    let names = ["0", "1", "2", "3", "4"];
    let ids: Vec<String> = names.iter().map(|n| server.run_async("work", &[n])).collect();
    let status = |n: usize| server.job(&ids[n])["status"].as_str().unwrap().to_string();

    // Jobs 0 and 1 take both slots, and hold them: two scripts run at once.
    for n in [0, 1] {
        wait_file(&marks.join(names[n]), END_WAIT);
    }
    assert_eq!((status(0), status(1)), ("running".to_string(), "running".to_string()));
    // Each time a slot frees, the next job in submission order starts, and only it.
    for next in 2..names.len() {
        for (n, name) in names.iter().enumerate().skip(next) {
            assert_eq!(status(n), "queued", "job {n} while jobs {} and {} hold both slots", next - 2, next - 1);
            assert!(!marks.join(name).exists(), "job {n} started while jobs {} and {} ran", next - 2, next - 1);
        }
        open_gate(&marks.join(format!("{}.go", next - 2)));
        assert_eq!(server.wait_terminal(&ids[next - 2], END_WAIT)["status"], json!("succeeded"));
        // Had another queued job taken the slot, this one would stay queued behind held slots.
        wait_file(&marks.join(names[next]), END_WAIT);
        assert_eq!(status(next), "running", "job {next} after job {} ended", next - 2);
    }
    for n in [3, 4] {
        open_gate(&marks.join(format!("{n}.go")));
    }
    for id in &ids {
        let job = server.wait_terminal(id, END_WAIT);
        assert_eq!(job["status"], json!("succeeded"), "{job}");
    }

    // As the scripts recorded it: at each script's start, at most 2 scripts were between their
    // start and end markers (a third would have started before a gate opened).
    let spans: Vec<(u128, u128)> = names.iter().map(|n| interval(&marks.join(n))).collect();
    let overlap = |at: u128| spans.iter().filter(|(s, e)| *s <= at && at < *e).count();
    let most_at_once = spans.iter().map(|(s, _)| overlap(*s)).max().unwrap();
    assert_eq!(most_at_once, 2, "maxConcurrent 2: {most_at_once} scripts ran at once: {spans:?}");
}

#[test]
fn job_list_never_shows_more_than_max_concurrent_running() {
    let server = Builder::new()
        .runner("maxConcurrent", json!(2))
        .script_entry("short", "sleep 0.1", json!({"mode": "async"}))
        .start();
    let ids: Vec<String> = (0..20).map(|_| server.run_async("short", &[])).collect();

    let deadline = Instant::now() + END_WAIT;
    let mut most_running = 0;
    loop {
        let r = server.get("/jobs?limit=50");
        assert_eq!(r.status, 200, "{}", r.text);
        let jobs = r.body["jobs"].as_array().unwrap();
        let count = |pred: &dyn Fn(&str) -> bool| jobs.iter().filter(|j| pred(text(&j["status"]))).count();
        let running = count(&|s| s == "running");
        let summary: Vec<String> = jobs
            .iter()
            .map(|j| format!("{} {} started {} ended {}", j["jobId"], j["status"], j["startedAt"], j["endedAt"]))
            .collect();
        assert!(running <= 2, "GET /jobs shows {running} running with maxConcurrent 2:\n{}", summary.join("\n"));
        most_running = most_running.max(running);
        if count(&|s| s == "succeeded") == ids.len() {
            break;
        }
        assert!(count(&|s| matches!(s, "queued" | "running" | "succeeded")) == ids.len(), "{}", r.text);
        assert!(Instant::now() < deadline, "jobs not finished within {END_WAIT:?}: {}", r.text);
    }
    assert_eq!(most_running, 2, "never saw 2 jobs running with maxConcurrent 2");
}

#[test]
fn queued_jobs_start_in_submission_order() {
    let server = Builder::new()
        .runner("maxConcurrent", json!(1))
        .script_entry("step", "sleep 0.2", json!({"mode": "async"}))
        .start();
    let ids: Vec<String> = (0..4).map(|_| server.run_async("step", &[])).collect();
    let jobs: Vec<Value> = ids.iter().map(|id| server.wait_terminal(id, END_WAIT)).collect();
    for job in &jobs {
        assert_eq!(job["status"], json!("succeeded"), "{job}");
    }
    for pair in jobs.windows(2) {
        assert!(
            text(&pair[0]["endedAt"]) <= text(&pair[1]["startedAt"]),
            "job started before the one queued ahead of it ended:\n{}\n{}",
            pair[0],
            pair[1]
        );
    }
}

#[test]
fn sync_runs_wait_in_the_same_queue() {
    let b = Builder::new().runner("maxConcurrent", json!(1));
    let gate = b.dir().join("first.go");
    let server =
        b.script_entry("first", &wait_for_gate(&gate), json!({"mode": "async"})).script("quick", "echo hi").start();
    let first = start_running(&server, "first");

    // The sync run waits in the queue as long as the running job holds the only slot, and
    // runs once it ends. Observed first, asserted after the gate is open (a failed assertion
    // must not leave the request thread waiting).
    let (seen_queued, answered_early, r) = std::thread::scope(|s| {
        let sync = s.spawn(|| server.run("quick", &[], None));
        let deadline = Instant::now() + END_WAIT;
        let seen_queued = loop {
            let queued = server.get("/jobs?status=queued").body;
            let jobs = queued["jobs"].as_array().cloned().unwrap_or_default();
            if let Some(job) = jobs.iter().find(|j| j["scriptId"] == json!("quick")) {
                break Some(job.clone());
            }
            if Instant::now() >= deadline || sync.is_finished() {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let answered_early = sync.is_finished() || server.job(&first)["status"] != json!("running");
        open_gate(&gate);
        (seen_queued, answered_early, sync.join().unwrap())
    });
    let queued = seen_queued.expect("the sync run never showed up queued behind the running job");
    assert_eq!(queued["mode"], json!("sync"), "{queued}");
    assert!(!answered_early, "the sync run answered, or the first job ended, before the gate opened");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    assert_eq!(r.body["jobId"], queued["jobId"], "{}", r.text);
    let first = server.job(&first);
    assert_eq!(first["status"], json!("succeeded"), "the sync run returned before the running job ended: {first}");
    assert!(
        text(&r.body["startedAt"]) >= text(&first["endedAt"]),
        "the sync run started at {} before the running job ended at {}",
        r.body["startedAt"],
        first["endedAt"]
    );
}

#[test]
fn runs_beyond_the_queue_capacity_are_refused_with_429() {
    let server = Builder::new()
        .runner("maxConcurrent", json!(1))
        .runner("maxQueued", json!(2))
        .script_entry("long", "sleep 300", json!({"mode": "async"}))
        .start();
    let running = start_running(&server, "long");
    let queued: Vec<String> = (0..2).map(|_| server.run_async("long", &[])).collect();

    let r = server.run("long", &[], Some("async"));
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.body["ok"], json!(false), "{}", r.text);
    assert_eq!(r.body["error"]["code"], json!("QUEUE_FULL"), "{}", r.text);

    let (r, _) = cancel(&server, &queued[0]);
    assert_eq!(r.body["status"], json!("canceled"), "{}", r.text);
    let r = server.run("long", &[], Some("async"));
    assert_eq!(r.status, 202, "a freed place in the queue should take a run: {}", r.text);
    assert_eq!(r.body["status"], json!("queued"), "{}", r.text);
    let accepted = text(&r.body["jobId"]).to_string();

    for id in [&queued[1], &accepted, &running] {
        let (r, _) = cancel(&server, id);
        assert_eq!(r.body["status"], json!("canceled"), "{}", r.text);
    }
}

#[test]
fn stdin_is_dev_null() {
    // timeoutSec bounds the test if stdin were an open pipe and `cat` blocked.
    let server =
        Builder::new().script_entry("reader", "cat\nreadlink /proc/$$/fd/0 >&2", json!({"timeoutSec": 10})).start();
    let r = server.run("reader", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    assert_eq!(r.body["stdout"], json!(""), "{}", r.text);
    assert_eq!(r.body["stderr"], json!("/dev/null\n"), "{}", r.text);
    // Far below the 10 s timeout a blocked `cat` would run into.
    let duration = r.body["durationMs"].as_i64().unwrap();
    assert!(duration < 8000, "cat on stdin took {duration} ms");
}

/// Field 5 of `/proc/<pid>/stat`: the process group id.
fn pgid_of(pid: u32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn a_job_leads_its_own_process_group() {
    let server = Builder::new().script("group", "echo $$\nps -o pgid= -p $$").start();
    let r = server.run("group", &[], None);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    let numbers: Vec<i64> = text(&r.body["stdout"]).split_whitespace().map(|w| w.parse().unwrap()).collect();
    let [pid, pgid] = numbers[..] else { panic!("expected pid and pgid: {}", r.text) };
    assert_eq!(pgid, pid, "the script should lead its own group");
    assert_ne!(pgid, pgid_of(server.pid()), "the script shares the server's group");
}

/// Voluntary context switches of the server's threads that take no part in running sync jobs
/// (the main thread and the database read pool's threads), by thread id.
fn idle_thread_wakeups(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "script-runner" && !comm.starts_with("r2d2") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let switches = status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"));
        total += switches.and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
    }
    total
}

/// A job's exit must not wake threads that have nothing to do with it. The SIGCHLD of an exit
/// that lands while another job is being spawned used to be queued for the whole process (the
/// spawning thread blocked every signal) and delivered to some sleeping thread only to be
/// dropped: about one job in four under load woke the main thread or a pool thread.
#[test]
fn job_exits_do_not_wake_unrelated_server_threads() {
    let server = Builder::new().script("hello", "echo hello").runner("maxConcurrent", json!(4)).start();
    assert_eq!(server.run("hello", &[], None).status, 200);
    let before = idle_thread_wakeups(server.pid());
    let ran = std::thread::scope(|s| {
        let callers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..100).filter(|_| server.run("hello", &[], None).body["status"] == json!("succeeded")).count()
                })
            })
            .collect();
        callers.into_iter().map(|c| c.join().unwrap()).sum::<usize>()
    });
    assert_eq!(ran, 400);
    let woken = idle_thread_wakeups(server.pid()) - before;
    assert!(woken < 20, "400 jobs woke the server's idle threads {woken} times");
}
