//! How a job's process is started and its pipes are read, as a client sees it: large output
//! written at once by a script that exits at once, both streams filled in turn (no deadlock on
//! a full pipe), a leader that exits while a process that left its session holds stdout open,
//! logs readable while the job runs (also output written in its first milliseconds), the
//! environment a script gets, its signal state (nothing blocked, SIGPIPE at its default),
//! spawn failures that end the job cleanly, and many jobs committed at once surviving a restart.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::common::{page, text, Builder, TestServer};
use serde_json::{json, Value};

/// Upper bound for any job in this file to reach a final state.
const WAIT: Duration = Duration::from_secs(15);
/// One mebibyte: the default `maxLogBytesPerStream`, sixteen pipe buffers.
const MIB: usize = 1024 * 1024;

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Deterministic ASCII text of exactly `len` bytes, numbered lines so that a shifted, repeated
/// or missing chunk shows (the last line is cut where the length ends).
fn numbered_text(tag: &str, len: usize) -> String {
    let mut s = String::with_capacity(len + 64);
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!("{tag} {i:07} {:06}\n", (i * 7919) % 1_000_003));
        i += 1;
    }
    s.truncate(len);
    s
}

/// The stored stream of a job: its log file in the logs folder or, for a short output kept
/// with the job instead of a file, the job's preview (then all of the stream, as its size says).
fn log_file(server: &TestServer, job: &Value, stream: &str) -> Vec<u8> {
    let name = text(&job[format!("{stream}Ref")]);
    match std::fs::read(server.dir().join("logs").join(name)) {
        Ok(bytes) => bytes,
        Err(_) => {
            let preview = text(&job[format!("{stream}Preview")]).as_bytes().to_vec();
            assert_eq!(
                job[format!("{stream}Size")],
                json!(preview.len()),
                "no file, and the preview is not all: {job}"
            );
            preview
        }
    }
}

/// Short description of a long text for assertion messages: length, start and end.
fn describe(s: &str) -> String {
    let head: String = s.chars().take(40).collect();
    let tail: String = s.chars().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    format!("{} bytes, starts {head:?}, ends {tail:?}", s.len())
}

/// Asserts that a job's stream, as stored and as served by byte pages, is exactly `expected`:
/// its size, the log file, the first and last bytes and a page that reassembles all of it.
fn assert_stream_is(server: &TestServer, job: &Value, stream: &str, expected: &str) {
    let id = text(&job["jobId"]);
    assert_eq!(job[format!("{stream}Size")], json!(expected.len()), "{stream} size of {id}");
    assert_eq!(job[format!("{stream}Truncated")], json!(false), "{stream} of {id}");
    let file = log_file(server, job, stream);
    assert!(
        file == expected.as_bytes(),
        "{stream} log file of {id} differs: {}",
        describe(&String::from_utf8_lossy(&file))
    );

    let head = page(server, id, &format!("stream={stream}&offset=0&limit=64"));
    assert_eq!(text(&head["data"]), &expected[..64]);
    assert_eq!(num(&head["totalSize"]), expected.len() as u64);
    assert_eq!(num(&head["nextOffset"]), 64);
    let tail_at = expected.len() - 100;
    let tail = page(server, id, &format!("stream={stream}&offset={tail_at}&limit=65536"));
    assert_eq!(text(&tail["data"]), &expected[tail_at..]);
    assert_eq!(num(&tail["nextOffset"]), expected.len() as u64);

    // Everything, in pages of at most 1 MiB.
    let mut got = String::new();
    let mut offset = 0u64;
    loop {
        let body = page(server, id, &format!("stream={stream}&offset={offset}&limit={MIB}"));
        let data = text(&body["data"]);
        if data.is_empty() {
            break;
        }
        got.push_str(data);
        offset = num(&body["nextOffset"]);
    }
    assert!(got == expected, "{stream} of {id} by byte pages differs: {}", describe(&got));
}

// ---------------------------------------------------------------------------------------------
// Large output from a script that exits at once
// ---------------------------------------------------------------------------------------------

#[test]
fn one_mebibyte_written_in_one_write_by_a_script_that_exits_at_once_is_stored_exactly() {
    let builder = Builder::new();
    let expected = numbered_text("out", MIB);
    let data = builder.dir().join("big.txt");
    std::fs::write(&data, &expected).unwrap();
    // dd reads the file in one read and writes it in one write(2) of 1 MiB, sixteen times the
    // pipe buffer: the write only returns once the server has read nearly all of it; the
    // process (the job's leader, by exec) then exits at once.
    let body = format!("exec dd if='{}' bs={MIB} count=1 status=none", data.display());
    let server = builder.script_entry("big", &body, json!({ "timeoutSec": 60 })).start();

    let t = Instant::now();
    let r = server.run("big", &[], None);
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", describe(&r.text));
    assert_eq!(r.body["status"], json!("succeeded"), "{}", describe(&r.text));
    assert_eq!(r.body["code"], json!(0));
    assert_eq!(r.body["stdoutSize"], json!(MIB));
    assert_eq!(r.body["stderrSize"], json!(0));
    assert!(r.body["stdout"] == json!(expected), "sync stdout differs: {}", describe(text(&r.body["stdout"])));
    assert_eq!(r.body["stderr"], json!(""));
    // A server that stopped reading (the writer blocked for good) ends in the 60 s timeout.
    assert!(took < Duration::from_secs(30), "a 1 MiB job took {took:?}");

    let job = server.job(text(&r.body["jobId"]));
    assert_eq!(job["status"], json!("succeeded"));
    assert_eq!(job["stdoutSize"], json!(MIB));
    assert_eq!(job["stdoutPreview"], json!(&expected[MIB - 4096..]), "the preview is the last 4096 bytes");
    assert_stream_is(&server, &job, "stdout", &expected);
}

#[test]
fn one_mebibyte_on_each_stream_written_in_turn_does_not_deadlock_and_is_stored_exactly() {
    // 48 rounds: each writes a chunk of ~21.8 KiB to stdout, then one to stderr (one cat, one
    // write each). After three rounds either pipe is full: a server that read one stream to its
    // end before the other would leave the script blocked for good (and the job timed out).
    let builder = Builder::new();
    let rounds = 48;
    let chunk = MIB / rounds + 1;
    let out = numbered_text("out", chunk * rounds);
    let err = numbered_text("err", chunk * rounds);
    let parts = builder.dir().join("parts");
    std::fs::create_dir_all(&parts).unwrap();
    for i in 0..rounds {
        std::fs::write(parts.join(format!("out.{i}")), &out[i * chunk..(i + 1) * chunk]).unwrap();
        std::fs::write(parts.join(format!("err.{i}")), &err[i * chunk..(i + 1) * chunk]).unwrap();
    }
    let body = format!(
        "cd '{}' || exit 9\ni=0\nwhile [ $i -lt {rounds} ]; do cat out.$i; cat err.$i >&2; i=$((i+1)); done",
        parts.display()
    );
    let server = builder
        .runner("maxLogBytesPerStream", json!(2 * MIB))
        .script_entry("both", &body, json!({ "timeoutSec": 60 }))
        .start();

    let t = Instant::now();
    let r = server.run("both", &[], None);
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", describe(&r.text));
    assert_eq!(r.body["status"], json!("succeeded"), "deadlocked on a full pipe? {}", r.body["error"]);
    assert_eq!(r.body["code"], json!(0));
    // A deadlock ends in the 60 s timeout (status timed_out, asserted above).
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(r.body["stdout"] == json!(out), "sync stdout differs: {}", describe(text(&r.body["stdout"])));
    assert!(r.body["stderr"] == json!(err), "sync stderr differs: {}", describe(text(&r.body["stderr"])));

    let job = server.job(text(&r.body["jobId"]));
    assert_stream_is(&server, &job, "stdout", &out);
    assert_stream_is(&server, &job, "stderr", &err);
}

#[test]
fn large_async_output_interleaved_line_by_line_on_both_streams_is_stored_exactly() {
    // One process alternating single-line writes on the two streams (mawk flushes each line),
    // 12,000 lines each (> 64 KiB per stream), as an async job.
    let script = r#"awk 'BEGIN { for (i = 1; i <= 12000; i++) {
  printf "out %05d\n", i; fflush("/dev/stdout")
  printf "err %05d\n", i > "/dev/stderr"; fflush("/dev/stderr") } }'"#;
    let server = Builder::new().script_entry("lines", script, json!({ "timeoutSec": 10 })).start();
    let id = server.run_async("lines", &[]);
    let job = server.wait_terminal(&id, WAIT);
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    let out: String = (1..=12000).map(|i| format!("out {i:05}\n")).collect();
    let err: String = (1..=12000).map(|i| format!("err {i:05}\n")).collect();
    assert!(out.len() > 64 * 1024);
    assert_stream_is(&server, &job, "stdout", &out);
    assert_stream_is(&server, &job, "stderr", &err);
    let lines = page(&server, &id, "unit=lines&stream=stderr&offset=11998&limit=10");
    assert_eq!(lines["lines"], json!(["err 11999", "err 12000"]));
    assert_eq!(lines["totalLines"], json!(12000));
}

// ---------------------------------------------------------------------------------------------
// A leader that exits while a process that left its session holds stdout open
// ---------------------------------------------------------------------------------------------

#[test]
fn leader_exiting_while_a_setsid_process_holds_stdout_ends_the_job_in_bounded_time() {
    let builder = Builder::new();
    let pid_file = builder.dir().join("helper.pid");
    // The helper leaves the job's group and session (setsid), records its pid, writes a line
    // 300 ms later and keeps stdout open 30 s more. The leader waits until the helper has left
    // the group (else the group kill at the leader's exit could reach it first), writes its
    // own line and exits.
    let body = format!(
        "setsid sh -c 'echo $$ > \"$0\"; sleep 0.3; echo late line from the helper; exec sleep 30' '{pid}' &\n\
         i=0; while [ ! -s '{pid}' ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done\n\
         echo leader line",
        pid = pid_file.display()
    );
    let server = builder.script("leaver", &body).start();

    let t = Instant::now();
    let r = server.run("leaver", &[], None);
    let took = t.elapsed();
    let helper: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    assert_eq!(r.body["code"], json!(0));
    // The server drains at most 2 s after the leader's exit, then ends the job: not when the
    // helper lets go of stdout, 30 s later.
    assert!(took < Duration::from_secs(15), "the job took {took:?} with a helper holding stdout for 30 s");
    assert!(crate::common::alive(helper), "the helper that left the session was killed");
    let stdout = text(&r.body["stdout"]);
    assert!(stdout.starts_with("leader line\n"), "{stdout:?}");
    // The helper's line is written 300 ms after it starts, inside the 2 s drain, and is seen
    // in practice; it is not asserted (its timing depends on the machine), only that nothing
    // else shows up.
    assert!(
        stdout == "leader line\n" || stdout == "leader line\nlate line from the helper\n",
        "unexpected stdout {stdout:?}"
    );
    let job = server.job(text(&r.body["jobId"]));
    assert_eq!(job["status"], json!("succeeded"));
    assert_eq!(job["stdoutSize"], json!(stdout.len()));
    assert_eq!(log_file(&server, &job, "stdout"), stdout.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Logs while the job runs
// ---------------------------------------------------------------------------------------------

/// Polls the job's log pages until both the byte page and the line page show `line` as the
/// only output, at most `bound`; returns how long it took (from `since`).
fn wait_for_first_line(server: &TestServer, id: &str, line: &str, since: Instant, bound: Duration) -> Duration {
    loop {
        let bytes = page(server, id, "");
        let lines = page(server, id, "unit=lines");
        if bytes["data"] == json!(format!("{line}\n")) && lines["lines"] == json!([line]) {
            assert_eq!(lines["totalLines"], json!(1), "{lines}");
            return since.elapsed();
        }
        assert!(since.elapsed() < bound, "after {bound:?} the logs show {bytes} / {lines}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_line_written_before_a_sleep_is_readable_while_the_job_runs() {
    // The sleep outlasts any wait of the test (which cancels the job): the line must show
    // while the job runs, not once it has ended.
    let server = Builder::new().script("slow", "echo first line\nsleep 30\necho second line").start();
    let id = server.run_async("slow", &[]);
    let seen = wait_for_first_line(&server, &id, "first line", Instant::now(), Duration::from_secs(10));
    let job = server.job(&id);
    assert_eq!(job["status"], json!("running"), "seen after {seen:?}: {job}");
    assert_eq!(job["code"], json!(null));
    assert_eq!(job["stdoutSize"], json!(11), "{job}");
    // The preview is live too (the tail of what the script wrote so far).
    assert_eq!(job["stdoutPreview"], json!("first line\n"), "{job}");
    assert_eq!(job["stderrPreview"], json!(""), "{job}");
    // Done: cancel rather than wait for the sleep; the line stays.
    let r = server.post(&format!("/jobs/{id}/cancel"), json!({}));
    assert_eq!(r.body["status"], json!("canceled"), "{}", r.text);
    assert_eq!(text(&page(&server, &id, "")["data"]), "first line\n");
}

#[test]
fn output_that_fills_the_pipe_in_the_first_milliseconds_is_all_readable_while_the_job_runs() {
    // 300 KiB at once (the pipe holds 64 KiB: the writer blocks until the server reads), then a
    // marker line, then a sleep. All of it must be readable while the job still runs.
    let builder = Builder::new();
    let expected = format!("{}marker\n", numbered_text("early", 300 * 1024));
    let data = builder.dir().join("early.txt");
    std::fs::write(&data, &expected[..300 * 1024]).unwrap();
    let server = builder.script("early", &format!("cat '{}'\necho marker\nsleep 30", data.display())).start();

    let id = server.run_async("early", &[]);
    let t = Instant::now();
    let total = loop {
        let head = page(&server, &id, "limit=1");
        let total = num(&head["totalSize"]);
        if total == expected.len() as u64 || t.elapsed() > Duration::from_secs(10) {
            break total;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(total, expected.len() as u64, "stored after {:?}", t.elapsed());
    assert_eq!(server.job(&id)["status"], json!("running"));
    let all = page(&server, &id, &format!("limit={MIB}"));
    assert!(all["data"] == json!(expected), "differs: {}", describe(text(&all["data"])));
    let total_lines = expected.matches('\n').count() as u64;
    let last = page(&server, &id, &format!("unit=lines&offset={}&limit=10", total_lines - 2));
    assert_eq!(last["totalLines"], json!(total_lines), "{last}");
    let tail: Vec<&str> = expected.lines().skip(total_lines as usize - 2).collect();
    assert!(tail[1].ends_with("marker"), "{tail:?}");
    assert_eq!(last["lines"], json!(tail), "the last two lines: {last}");
    let r = server.post(&format!("/jobs/{id}/cancel"), json!({}));
    assert_eq!(r.body["status"], json!("canceled"), "{}", r.text);
    assert_eq!(r.body["stdoutSize"], json!(expected.len()));
}

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

/// Runs `/usr/bin/env -0` as the script (no shell in between, which would drop variables
/// whose names are not shell identifiers); returns the job and every `KEY=VALUE` entry in
/// order (read from the stored log, which keeps the NUL separators).
fn run_env(server: &TestServer) -> (Value, Vec<(String, String)>) {
    let r = server.run("env", &["-0"], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    let raw = log_file(server, &r.body, "stdout");
    let entries = raw
        .split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let e = String::from_utf8_lossy(e);
            let (k, v) = e.split_once('=').unwrap_or((&e, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    (r.body, entries)
}

/// A scripts.json entry running `/usr/bin/env` with this `env` map.
fn env_entry(env: Value) -> Value {
    json!({ "id": "env", "path": "/usr/bin/env", "mode": "sync", "env": env })
}

/// The values of `key` in the entries (one per occurrence).
fn values<'a>(entries: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    entries.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

#[test]
fn script_env_overrides_inherited_variables_once_and_the_rest_is_inherited() {
    // The harness starts the server with the test's environment plus RUST_LOG=info: RUST_LOG
    // and HOME are inherited variables the scripts.json map overrides.
    let server = Builder::new()
        .raw_script(env_entry(json!({
            "RUST_LOG": "set by scripts.json",
            "HOME": "/nonexistent/home for the script",
            "SR_SPAWN_EXTRA": "x=1 y=2",
            "SR_SPAWN_EMPTY": ""
        })))
        .start();
    let (job, entries) = run_env(&server);
    let id = text(&job["jobId"]);

    assert_eq!(values(&entries, "RUST_LOG"), ["set by scripts.json"], "the server's own RUST_LOG=info must lose");
    assert_eq!(values(&entries, "HOME"), ["/nonexistent/home for the script"]);
    assert_eq!(values(&entries, "SR_SPAWN_EXTRA"), ["x=1 y=2"]);
    assert_eq!(values(&entries, "SR_SPAWN_EMPTY"), [""]);
    assert_eq!(values(&entries, "SCRIPT_RUNNER_JOB_ID"), [id]);
    let db = values(&entries, "SCRIPT_RUNNER_DB");
    assert_eq!(db.len(), 1, "{entries:?}");
    assert_eq!(db[0], server.deployment.marker(), "SCRIPT_RUNNER_DB is the deployment's marker");
    let path = std::env::var("PATH").unwrap();
    assert_eq!(values(&entries, "PATH"), [path.as_str()], "PATH is inherited as is");

    // Exactly the server's environment (the test's, plus RUST_LOG) with the map on top and the
    // two job variables: nothing twice, nothing lost, nothing else.
    let mut seen = BTreeSet::new();
    for (k, _) in &entries {
        assert!(seen.insert(k.as_str()), "{k} appears twice in the script's environment");
    }
    let got: BTreeMap<String, String> = entries.iter().cloned().collect();
    let mut expected: BTreeMap<String, String> = std::env::vars().collect();
    for (k, v) in [
        ("RUST_LOG", "set by scripts.json"),
        ("HOME", "/nonexistent/home for the script"),
        ("SR_SPAWN_EXTRA", "x=1 y=2"),
        ("SR_SPAWN_EMPTY", ""),
        ("SCRIPT_RUNNER_JOB_ID", id),
        ("SCRIPT_RUNNER_DB", db[0]),
    ] {
        expected.insert(k.into(), v.into());
    }
    assert_eq!(got, expected, "the script's environment");
}

#[test]
fn scripts_json_cannot_override_the_job_id_or_the_deployment_marker() {
    // Crash recovery finds a deployment's processes by SCRIPT_RUNNER_DB, and a script's job by
    // SCRIPT_RUNNER_JOB_ID: the server's values win over the scripts.json map, once each.
    let server = Builder::new()
        .raw_script(env_entry(json!({ "SCRIPT_RUNNER_JOB_ID": "job_0_0", "SCRIPT_RUNNER_DB": "/elsewhere.db" })))
        .start();
    let (job, entries) = run_env(&server);
    assert_eq!(values(&entries, "SCRIPT_RUNNER_JOB_ID"), [text(&job["jobId"])]);
    let db = values(&entries, "SCRIPT_RUNNER_DB");
    assert_eq!(db.len(), 1, "{entries:?}");
    assert_ne!(db[0], "/elsewhere.db");
    assert_eq!(db[0], server.deployment.marker());
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

/// A `SigXxx:` mask from /proc status lines.
fn mask(status: &str, name: &str) -> u64 {
    let line = status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("no {name} in {status:?}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn script_has_no_signal_blocked_and_sigpipe_at_its_default() {
    // grep itself is the job's process (a shell would hide the mask: dash clears it at start),
    // reading its own /proc status.
    let server = Builder::new().raw_script(json!({ "id": "signals", "path": "/usr/bin/grep", "mode": "sync" })).start();
    let r = server.run("signals", &["-E", "^(SigBlk|SigIgn):", "/proc/self/status"], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    let status = text(&r.body["stdout"]);
    assert_eq!(mask(status, "SigBlk:"), 0, "the script starts with signals blocked: {status:?}");
    let pipe_bit = 1u64 << (libc::SIGPIPE - 1);
    assert_eq!(mask(status, "SigIgn:") & pipe_bit, 0, "the script starts with SIGPIPE ignored: {status:?}");
    // Signals the server ignores because it was started with them ignored stay ignored (as
    // with posix_spawn); SIGPIPE, which the server ignores itself, does not.
    let server_status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    assert_ne!(mask(&server_status, "SigIgn:") & pipe_bit, 0, "the server should ignore SIGPIPE: {server_status}");
    assert_eq!(
        mask(status, "SigIgn:"),
        mask(&server_status, "SigIgn:") & !pipe_bit,
        "ignored signals of the script vs the server's: {status:?}"
    );
}

#[test]
fn yes_piped_into_head_ends_quickly_by_sigpipe_without_an_error() {
    // With SIGPIPE at its default, `yes` dies of it (status 141) once `head` has exited; with
    // SIGPIPE ignored (Rust's setting in the server) it would print "Broken pipe" and exit 1.
    let script = "exec 3>&1\n(yes; echo \"yes exited $?\" >&3) | head -n 1";
    let server = Builder::new().script_entry("yes", script, json!({ "timeoutSec": 30 })).start();
    let t = Instant::now();
    let r = server.run("yes", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert_eq!(r.body["stderr"], json!(""), "{}", r.text);
    assert_eq!(r.body["stderrSize"], json!(0));
    // head's "y" and the subshell's line go to the same pipe in either order (head may
    // close its input, and so kill `yes`, before it flushes its output).
    let mut lines: Vec<&str> = text(&r.body["stdout"]).lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["y", "yes exited 141"], "{}", r.text);
}

// ---------------------------------------------------------------------------------------------
// Spawn failures
// ---------------------------------------------------------------------------------------------

/// The server's open pipe descriptors (a spawn must close both ends of its pipes).
fn pipe_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("pipe:")))
        .count()
}

/// The server's child processes (from every thread's `children` list).
fn children(pid: u32) -> Vec<i32> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        all.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    all
}

/// Asserts a failed job that never started: code -1, an error `cannot start ...` holding
/// `cause`, no output, an end time.
fn assert_cannot_start(job: &Value, cause: &str) {
    assert_eq!(job["status"], json!("failed"), "{job}");
    assert_eq!(job["code"], json!(-1), "{job}");
    let error = text(&job["error"]);
    assert!(error.starts_with("cannot start"), "{error}");
    assert!(error.contains(cause), "the error should name the cause {cause:?}: {error}");
    assert_eq!(job["stdoutSize"], json!(0));
    assert_eq!(job["stderrSize"], json!(0));
    assert!(job["endedAt"].is_string(), "{job}");
}

#[test]
fn cwd_gone_or_not_a_directory_fails_async_jobs_with_the_cause_and_leaks_nothing() {
    let builder = Builder::new();
    let gone = builder.dir().join("gone");
    let file = builder.dir().join("file-cwd");
    std::fs::create_dir_all(&gone).unwrap();
    std::fs::create_dir_all(&file).unwrap();
    let server = builder
        .script_entry("gone", "echo never", json!({ "cwd": gone.to_str().unwrap(), "mode": "async" }))
        .script_entry("notdir", "echo never", json!({ "cwd": file.to_str().unwrap(), "mode": "async" }))
        .script("fine", "echo fine")
        .start();
    std::fs::remove_dir(&gone).unwrap();
    std::fs::remove_dir(&file).unwrap();
    std::fs::write(&file, "a file now").unwrap();

    // A first job, so that every lazily opened descriptor is open before counting.
    assert_eq!(server.run("fine", &[], None).body["stdout"], json!("fine\n"));
    let pipes_before = pipe_fds(server.pid());

    let t = Instant::now();
    let r = server.run("gone", &[], None);
    assert_eq!(r.status, 202, "{}", r.text);
    let id = text(&r.body["jobId"]).to_string();
    let job = server.wait_terminal(&id, WAIT);
    assert_cannot_start(&job, "No such file or directory");
    assert!(text(&job["error"]).contains("working directory"), "{job}");
    let id2 = server.run_async("notdir", &[]);
    let job2 = server.wait_terminal(&id2, WAIT);
    assert_cannot_start(&job2, "Not a directory");
    assert!(text(&job2["error"]).contains("working directory"), "{job2}");
    assert!(t.elapsed() < Duration::from_secs(10), "spawn failures took {:?}", t.elapsed());
    // The same failure as a sync run: 200 with the failed job, not a 500.
    let r = server.run("gone", &[], Some("sync"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_cannot_start(&r.body, "No such file or directory");
    assert_eq!(r.body["stdout"], json!(""));
    assert_eq!(r.body["stderr"], json!(""));
    // Listed as failed, logs empty.
    let listed = server.get("/jobs?status=failed").body;
    assert_eq!(listed["total"], json!(3), "{listed}");
    let logs = page(&server, &id, "");
    assert_eq!(logs["data"], json!(""));
    assert_eq!(logs["totalSize"], json!(0));

    // Many more failures leave no pipe open and no child unreaped.
    let ids: Vec<String> = (0..20).map(|_| server.run_async("gone", &[])).collect();
    for id in &ids {
        assert_eq!(server.wait_terminal(id, WAIT)["status"], json!("failed"));
    }
    assert_eq!(pipe_fds(server.pid()), pipes_before, "pipes leaked by failed spawns");
    let kids = children(server.pid());
    assert!(kids.is_empty(), "the server still has children (zombies of failed spawns?): {kids:?}");
    assert_eq!(server.run("fine", &[], None).body["stdout"], json!("fine\n"));
}

#[test]
fn an_argument_with_a_nul_byte_is_refused_before_any_job_exists() {
    // JSON can carry U+0000 and the default pattern accepts it, but argv cannot hold it: the
    // request is refused (not a job that fails at spawn, not a 500).
    let server = Builder::new().script("echo", "printf '%s\\n' \"$@\"").start();
    let r = server.post("/run", json!({ "scriptId": "echo", "args": ["ok", "a\u{0}b"] }));
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["error"]["code"], json!("INVALID_ARGS"), "{}", r.text);
    assert_eq!(r.body["error"]["message"], json!("arg[1] must not contain a NUL character"), "{}", r.text);
    assert_eq!(server.get("/jobs").body["total"], json!(0));
    assert_eq!(server.run("echo", &["ok"], None).body["stdout"], json!("ok\n"));
}

#[test]
fn an_env_value_with_a_nul_byte_is_refused_at_start() {
    // scripts.json can carry U+0000 in an `env` value, which no environment can hold: the
    // configuration is refused (exit 2 naming the script, the key and the cause), as for a
    // bad variable name, rather than failing every run of the script.
    let deployment = Builder::new()
        .script_entry("nul", "echo never", json!({ "env": { "SR_NUL": "a\u{0}b" } }))
        .script("fine", "echo fine")
        .write();
    let check = deployment.check_config();
    assert_eq!(check.status.code(), Some(2), "{check:?}");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("nul") && stderr.contains("SR_NUL") && stderr.contains("NUL character"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Many jobs committed at once
// ---------------------------------------------------------------------------------------------

const MANY: usize = 40;
const ECHO_BOTH: &str = "echo \"out $1\"\necho \"err $1\" >&2";

/// Submits `MANY` runs of `script` at once (one thread each, released together), with the
/// argument `n<i>`; returns the responses in order of i.
fn submit_all(server: &TestServer, script: &str, mode: &str) -> Vec<crate::common::Resp> {
    let barrier = Barrier::new(MANY);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..MANY)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || {
                    let arg = format!("n{i}");
                    barrier.wait();
                    server.run(script, &[&arg], Some(mode))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `GET /jobs?limit=100`: the jobs by id, asserting the total.
fn listed(server: &TestServer, total: usize) -> BTreeMap<String, Value> {
    let r = server.get("/jobs?limit=100");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], json!(total), "{}", r.text);
    let jobs = r.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), total);
    jobs.iter().map(|j| (text(&j["jobId"]).to_string(), j.clone())).collect()
}

/// Asserts the job of argument `n<i>` succeeded with its own output.
fn assert_own_output(job: &Value, i: usize) {
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    assert_eq!(job["code"], json!(0), "{job}");
    assert_eq!(job["args"], json!([format!("n{i}")]), "{job}");
    assert_eq!(job["stdoutPreview"], json!(format!("out n{i}\n")), "{job}");
    assert_eq!(job["stderrPreview"], json!(format!("err n{i}\n")), "{job}");
    assert_eq!(job["stdoutSize"], json!(format!("out n{i}\n").len()), "{job}");
}

#[test]
fn forty_async_runs_at_once_all_succeed_with_their_own_output_and_survive_a_restart() {
    let mut server = Builder::new()
        .runner("maxConcurrent", json!(8))
        .script_entry("echo", ECHO_BOTH, json!({ "mode": "async" }))
        .start();
    let responses = submit_all(&server, "echo", "async");
    let ids: Vec<String> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.status, 202, "{}", r.text);
            text(&r.body["jobId"]).to_string()
        })
        .collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), MANY, "job ids are not unique: {ids:?}");
    for (i, id) in ids.iter().enumerate() {
        let job = server.wait_terminal(id, WAIT);
        assert_own_output(&job, i);
        assert_eq!(text(&page(&server, id, "")["data"]), format!("out n{i}\n"));
        assert_eq!(text(&page(&server, id, "stream=stderr")["data"]), format!("err n{i}\n"));
    }
    let before = listed(&server, MANY);
    for (i, id) in ids.iter().enumerate() {
        assert_own_output(&before[id], i);
    }

    let status = server.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    server.restart();
    let after = listed(&server, MANY);
    for (i, id) in ids.iter().enumerate() {
        assert_own_output(&after[id], i);
        assert_eq!(after[id], before[id], "job {id} changed across the restart");
    }
}

#[test]
fn forty_sync_runs_at_once_are_committed_when_answered_and_survive_kill_9() {
    // A sync answer waits for the job's commit (made by a waiting request thread or the
    // background writer): after every answer, even a SIGKILL of the server loses none.
    let mut server = Builder::new().runner("maxConcurrent", json!(8)).script("echo", ECHO_BOTH).start();
    let responses = submit_all(&server, "echo", "sync");
    let mut ids = Vec::new();
    for (i, r) in responses.iter().enumerate() {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_own_output(&r.body, i);
        assert_eq!(r.body["stdout"], json!(format!("out n{i}\n")));
        assert_eq!(r.body["stderr"], json!(format!("err n{i}\n")));
        ids.push(text(&r.body["jobId"]).to_string());
    }

    server.kill9();
    server.restart();
    let after = listed(&server, MANY);
    for (i, id) in ids.iter().enumerate() {
        let job = &after[id];
        assert_own_output(job, i);
        for key in ["startedAt", "endedAt", "durationMs", "createdAt", "stdoutRef", "error"] {
            assert_eq!(job[key], responses[i].body[key], "{key} of {id} after kill -9");
        }
    }
}
