//! `script-runner migrate-db` as an operator runs it: a real server makes a history on SQLite
//! (jobs sync, async, failed, imported from upstream's jobs.json; workflow runs and their
//! journal) and stops; the command copies it; a server started on the copy answers the API byte
//! for byte as the first did, and numbers new jobs and runs after the copied ones. And the
//! refusals: a non-empty target, a database a server is using, bad or unreachable URLs, each
//! one line on stderr without a password.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{self, Builder, TestServer, BIN};
use serde_json::{json, Value};

/// Bound for anything a test waits for.
const WAIT: Duration = Duration::from_secs(20);

/// The upstream job in the history's jobs.json.
const UPSTREAM_JOB: &str = "job_1732190000000_1";

/// Runs `script-runner migrate-db --from <from> --to <to>`.
fn migrate_db(from: &str, to: &str) -> Output {
    Command::new(BIN).args(["migrate-db", "--from", from, "--to", to]).env_remove("DATABASE_URL").output().unwrap()
}

/// The URL with the password of its user info left out.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((userinfo, host)) = rest.rsplit_once('@') else { return url.to_string() };
    format!("{scheme}://{}@{host}", userinfo.split_once(':').map_or(userinfo, |(user, _)| user))
}

/// The password of a URL's user info, if any.
fn password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let (userinfo, _) = rest.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, password)| password.to_string())
}

/// Asserts the command failed with this exit code, one line on stderr holding every one of
/// `needles`, nothing on stdout, no panic and no `secret`.
fn assert_refused(out: &Output, code: i32, needles: &[&str], secret: Option<&str>) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    if let Some(secret) = secret {
        assert!(!stderr.contains(secret), "the password is shown: {stderr}");
    }
    stderr
}

/// Points the deployment's config.json at another database.
fn set_database(server: &TestServer, url: &str) {
    let path = &server.deployment.config;
    let mut config: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    config["database"]["url"] = json!(url);
    std::fs::write(path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// A name for a database of this test's own in the PostgreSQL cluster.
fn pg_name(prefix: &str, dir: &Path) -> String {
    let dir = dir.file_name().unwrap().to_string_lossy().to_lowercase();
    format!("{prefix}_{}", dir.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
}

/// A server on SQLite with a history: an upstream jobs.json imported at its start; jobs sync,
/// async (output past the in-memory preview, so in a log file), failed, with an idempotency key;
/// a workflow run that completed (command, value and script steps) and one that failed.
fn history() -> TestServer {
    let b = Builder::new()
        .sqlite()
        .workflows(json!({}))
        .script("hello", r#"echo "hello $*"; echo "to stderr" >&2"#)
        .script("fail", r#"echo "about to fail"; echo "it failed" >&2; exit 3"#)
        .script_entry("later", "echo one; sleep 0.1; echo two; echo oops >&2", json!({ "mode": "async" }));
    let dir = b.dir().to_path_buf();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(dir.join("logs").join(format!("{UPSTREAM_JOB}.stdout.log")), "hello world\n").unwrap();
    std::fs::write(dir.join("logs").join(format!("{UPSTREAM_JOB}.stderr.log")), "").unwrap();
    let upstream = json!([{
        "jobId": UPSTREAM_JOB, "scriptId": "hello", "status": "succeeded", "code": 0,
        "startedAt": "2024-11-21T12:00:00.010Z", "endedAt": "2024-11-21T12:00:00.025Z",
        "durationMs": 15, "createdAt": "2024-11-21T12:00:00.000Z", "mode": "sync",
        "stdoutRef": format!("{UPSTREAM_JOB}.stdout.log"), "stderrRef": format!("{UPSTREAM_JOB}.stderr.log"),
        "stdoutSize": 12, "stderrSize": 0, "stdoutTruncated": false, "stderrTruncated": false,
        "stdoutPreview": "hello world\n", "stderrPreview": ""
    }]);
    std::fs::write(dir.join("jobs.json"), upstream.to_string()).unwrap();
    let server = b.start();

    let r = server.run("hello", &["a b"], None);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    let r = server.post("/run", json!({ "scriptId": "hello", "args": ["k"], "idempotencyKey": "key-1" }));
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    let r = server.run("fail", &[], None);
    assert_eq!(r.body["status"], json!("failed"), "{}", r.text);
    let id = server.run_async("later", &["x"]);
    assert_eq!(server.wait_terminal(&id, WAIT)["status"], json!("succeeded"));

    let completed = server.launch_bash(
        r#"script-runner step greet -- echo hi
script-runner step v --value '{"n": 1, "list": [1, 2.5, "x"]}'
script-runner step s --script hello from-run
echo '{"ok": true}'
"#,
        json!({ "who": "me" }),
    );
    let failed = server.launch_bash("script-runner step first -- echo first\necho bad >&2\nexit 4\n", json!({}));
    for (id, status) in [(completed, "completed"), (failed, "failed")] {
        let body = server.wait_run_terminal(&id, WAIT);
        assert_eq!(body["run"]["status"], json!(status), "{body}");
    }
    server
}

/// What a client reads of the history: every listing, job, run and journal, and the logs, as
/// the raw text of each answer, by request path.
fn snapshot(server: &TestServer) -> Vec<(String, String)> {
    let mut paths: Vec<String> = [
        "/jobs",
        "/jobs?limit=2&offset=1",
        "/jobs?status=failed",
        "/jobs?status=succeeded",
        "/jobs?scriptId=hello",
        "/jobs?idempotencyKey=key-1",
        "/api/script-runs",
        "/api/script-runs?status=failed",
    ]
    .map(String::from)
    .to_vec();
    for job in server.get("/jobs?limit=500").body["jobs"].as_array().unwrap() {
        let id = job["jobId"].as_str().unwrap();
        paths.push(format!("/jobs/{id}"));
        paths.push(format!("/jobs/{id}/logs"));
        paths.push(format!("/jobs/{id}/logs?stream=stderr&unit=lines"));
    }
    for run in server.get("/api/script-runs?limit=500").body["runs"].as_array().unwrap() {
        let id = run["id"].as_str().unwrap();
        paths.push(format!("/api/script-runs/{id}"));
        paths.push(format!("/api/script-runs/{id}/logs"));
        // Ended: the stream is every stored event, then it closes.
        paths.push(format!("/api/script-runs/{id}/events"));
    }
    paths
        .into_iter()
        .map(|path| {
            let r = server.get(&path);
            assert_eq!(r.status, 200, "GET {path}: {}", r.text);
            (path, r.text)
        })
        .collect()
}

/// The sequence number in a `job_<ms>_<seq>` or `run_<ms>_<seq>` id.
fn seq_of(id: &str) -> u64 {
    id.rsplit('_').next().unwrap().parse().unwrap()
}

/// Makes a history on SQLite, moves it to `to` with migrate-db, starts the server on `to` and
/// checks it answers as before; then a new job and a new run are numbered after the copied ones
/// and listed first.
fn history_moves_to(to: &str) {
    let mut server = history();
    let before = snapshot(&server);
    let jobs = server.get("/jobs").body;
    let runs = server.get("/api/script-runs").body;
    let journal: usize = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| server.script_run(run["id"].as_str().unwrap())["journal"].as_array().unwrap().len())
        .sum();
    let events: usize = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            let stream = server.get(&format!("/api/script-runs/{}/events", run["id"].as_str().unwrap())).text;
            stream.lines().filter(|line| line.starts_with("id: ")).count()
        })
        .sum();
    assert!(events > 0);
    let from = server.deployment.database_url();
    assert!(server.terminate(WAIT).success());

    let out = migrate_db(&from, to);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout,
        format!(
            "copied {} jobs, 1 imports, {} runs, {journal} journal entries, {events} run events, 0 callbacks, 0 used resume URLs from {from} to {}\n",
            jobs["total"],
            runs["total"],
            without_password(to)
        )
    );
    if let Some(password) = password(to) {
        assert!(!stdout.contains(&password) && !String::from_utf8_lossy(&out.stderr).contains(&password));
    }

    set_database(&server, to);
    server.restart();
    let after = snapshot(&server);
    assert_eq!(after.len(), before.len());
    for ((path, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(is, was, "GET {path} answers differently after the migration");
    }

    let old_jobs: Vec<&str> = jobs["jobs"].as_array().unwrap().iter().map(|j| j["jobId"].as_str().unwrap()).collect();
    let r = server.run("hello", &["new"], None);
    let new_job = r.body["jobId"].as_str().unwrap().to_string();
    assert!(old_jobs.iter().all(|old| seq_of(old) < seq_of(&new_job)), "{new_job} after {old_jobs:?}");
    let listed = server.get("/jobs").body;
    assert_eq!(listed["jobs"][0]["jobId"], json!(new_job), "{listed}");
    assert_eq!(listed["total"], json!(jobs["total"].as_u64().unwrap() + 1), "{listed}");

    let new_run = server.launch_bash("echo 1\n", json!({}));
    server.wait_run_terminal(&new_run, WAIT);
    let old_runs = runs["runs"].as_array().unwrap();
    assert!(old_runs.iter().all(|old| seq_of(old["id"].as_str().unwrap()) < seq_of(&new_run)), "{new_run}");
    assert_eq!(server.get("/api/script-runs").body["runs"][0]["id"], json!(new_run));
}

#[test]
fn a_sqlite_history_moved_to_postgres_answers_the_api_byte_for_byte() {
    let Some(admin) = common::pg_admin_url() else {
        println!("skipped: needs the PostgreSQL pass (tests/run)");
        return;
    };
    let scratch = tempfile::Builder::new().prefix("sr-migrate-").tempdir().unwrap();
    history_moves_to(&common::new_pg_database(&admin, &pg_name("migrated", scratch.path())));
}

#[test]
fn a_sqlite_history_moved_to_another_sqlite_file_answers_the_api_byte_for_byte() {
    let scratch = tempfile::Builder::new().prefix("sr-migrate-").tempdir().unwrap();
    history_moves_to(&format!("sqlite://{}", scratch.path().join("moved/script-runner.db").display()));
}

/// A server on a deployment's database with one job (`hello <arg>`), stopped.
fn stopped_with_a_job(builder: Builder, arg: &str) -> TestServer {
    let mut server = builder.script("hello", "echo hello \"$1\"").start();
    assert_eq!(server.run("hello", &[arg], None).body["status"], json!("succeeded"));
    assert!(server.terminate(WAIT).success());
    server
}

#[test]
fn migrating_into_a_non_empty_target_is_refused_and_changes_neither_database() {
    let mut source = stopped_with_a_job(Builder::new().sqlite(), "source");
    // On PostgreSQL in its pass.
    let mut target = stopped_with_a_job(Builder::new(), "target");
    let (from, to) = (source.deployment.database_url(), target.deployment.database_url());
    let out = migrate_db(&from, &to);
    let shown = without_password(&to);
    let needles = [shown.as_str(), "table jobs is not empty", "will not overwrite"];
    assert_refused(&out, 1, &needles, password(&to).as_deref());

    source.restart();
    target.restart();
    let (source_jobs, target_jobs) = (source.get("/jobs").body, target.get("/jobs").body);
    assert_eq!(source_jobs["total"], json!(1), "{source_jobs}");
    assert_eq!(target_jobs["total"], json!(1), "{target_jobs}");
    assert_eq!(target_jobs["jobs"][0]["stdoutPreview"], json!("hello target\n"), "{target_jobs}");
}

#[test]
fn migrate_db_refuses_while_a_server_runs_on_the_source() {
    // On PostgreSQL in its pass: its advisory lock; SQLite's lock file otherwise.
    let server = Builder::new().script("hello", "echo hello").start();
    assert_eq!(server.run("hello", &[], None).body["status"], json!("succeeded"));
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("copy.db");
    let from = server.deployment.database_url();
    let out = migrate_db(&from, &format!("sqlite://{}", target.display()));
    assert_refused(&out, 1, &["locked", "another script-runner"], password(&from).as_deref());
    assert!(!target.exists(), "the target was created");
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn migrate_db_refuses_while_a_server_runs_on_the_target() {
    let source = stopped_with_a_job(Builder::new().sqlite(), "source");
    let target = Builder::new().script("hello", "echo hello").start();
    let to = target.deployment.database_url();
    let out = migrate_db(&source.deployment.database_url(), &to);
    assert_refused(&out, 1, &["locked", "another script-runner"], password(&to).as_deref());
    assert_eq!(target.get("/jobs").body["total"], json!(0));
}

#[test]
fn migrate_db_errors_are_one_line_and_never_show_a_password() {
    let source = stopped_with_a_job(Builder::new().sqlite(), "source");
    let from = source.deployment.database_url();
    let secret = Some("hunter2");
    // Nothing listens on port 1.
    let out = migrate_db(&from, "postgres://sr:hunter2@127.0.0.1:1/sr");
    assert_refused(&out, 1, &["cannot connect to postgres://sr@127.0.0.1:1/sr"], secret);
    // libpq quotes a token it cannot decode.
    let out = migrate_db(&from, "postgres://sr:hunter2%zz@127.0.0.1:1/sr");
    assert_refused(&out, 1, &["cannot connect to"], secret);
    let out = migrate_db(&from, "mysql://sr:hunter2@127.0.0.1/sr");
    assert_refused(&out, 2, &["--to", "unsupported URL", "mysql://sr@127.0.0.1/sr"], secret);
    let missing = source.dir().join("missing.db");
    let elsewhere = format!("sqlite://{}", source.dir().join("elsewhere.db").display());
    let out = migrate_db(&format!("sqlite://{}", missing.display()), &elsewhere);
    assert_refused(&out, 1, &["no such database file"], None);
    assert!(!missing.exists() && !source.dir().join("elsewhere.db").exists());
}
