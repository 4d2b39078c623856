//! PostgreSQL only (issue 14, point 4): a database that cannot be used at start is one line on
//! stderr and a non-zero exit, never with its password; a database lost while serving answers
//! `503 STORE_UNAVAILABLE`, lets running jobs go on, and writes their end once it is back.
//!
//! Outside the PostgreSQL pass (`tests/run`) each test says it is skipped and passes.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::{Connection, RunQueryDsl};
use serde_json::json;

use crate::common::{self, alive, assert_error, open_gate, wait_file, wait_for_gate, wait_until, Builder};

/// The test cluster's admin URL, or `None` (after saying so) outside the PostgreSQL pass.
fn admin_url() -> Option<String> {
    let admin = common::pg_admin_url();
    if admin.is_none() {
        println!("skipped: needs the PostgreSQL pass (tests/run)");
    }
    admin
}

/// The parts of `postgres://user:password@host:port/database`.
struct PgUrl {
    user: String,
    password: String,
    address: String,
    database: String,
}

impl PgUrl {
    fn parse(url: &str) -> PgUrl {
        let rest = url.split_once("://").unwrap().1;
        let (userinfo, rest) = rest.rsplit_once('@').unwrap();
        let (user, password) = userinfo.split_once(':').expect("the test cluster's URL has a password");
        let (address, database) = rest.split_once('/').unwrap();
        PgUrl {
            user: user.into(),
            password: password.into(),
            address: address.into(),
            database: database.split('?').next().unwrap().into(),
        }
    }

    fn with(&self, password: &str, address: &str, database: &str) -> String {
        format!("postgres://{}:{password}@{address}/{database}", self.user)
    }
}

/// Runs `script-runner serve` on a deployment whose database cannot be used; returns its exit
/// code, stdout and stderr (panics if it is still running after 30 s).
fn serve_failing(url: &str) -> (Option<i32>, String, String) {
    let deployment = Builder::new().script("noop", "true").top("database", json!({ "url": url })).write();
    let dir = deployment.dir.path();
    let (out, err) = (dir.join("serve.stdout"), dir.join("serve.stderr"));
    let mut child = Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&deployment.config)
        .env("RUST_LOG", "debug")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let Some(status) = common::exit_within(&mut child, Duration::from_secs(30)) else {
        panic!("`serve` on {url:?} did not exit within 30 s: {}", std::fs::read_to_string(&err).unwrap());
    };
    (status.code(), std::fs::read_to_string(&out).unwrap(), std::fs::read_to_string(&err).unwrap())
}

/// Asserts a failed start: a non-zero exit, the expected line as the last line of stderr (the
/// error, after whatever was logged), no panic, and none of `secrets` anywhere.
fn assert_start_fails(url: &str, line: &str, secrets: &[&str]) {
    let (code, stdout, stderr) = serve_failing(url);
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}; stderr:\n{stderr}");
    let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    assert_eq!(last, format!("script-runner: {line}"), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for secret in secrets {
        assert!(!stderr.contains(secret) && !stdout.contains(secret), "{secret:?} leaked:\n{stdout}\n{stderr}");
    }
}

#[test]
fn an_unreachable_server_fails_the_start_with_one_line_naming_it_without_the_password() {
    let Some(admin) = admin_url() else { return };
    let pg = PgUrl::parse(&admin);
    let port = common::unused_port();
    let url = pg.with(&pg.password, &format!("127.0.0.1:{port}"), "postgres");
    let line = format!(
        "cannot connect to postgres://{}@127.0.0.1:{port}/postgres: connection refused (is PostgreSQL running and \
         listening there?)",
        pg.user
    );
    assert_start_fails(&url, &line, &[&pg.password]);
}

#[test]
fn a_wrong_password_fails_the_start_and_neither_password_is_shown() {
    let Some(admin) = admin_url() else { return };
    let pg = PgUrl::parse(&admin);
    let wrong = "not-the-password-7f3e";
    let url = pg.with(wrong, &pg.address, &pg.database);
    let line = format!(
        "cannot connect to postgres://{}@{}/{}: password authentication failed for user \"{}\"",
        pg.user, pg.address, pg.database, pg.user
    );
    assert_start_fails(&url, &line, &[wrong, &pg.password]);
}

#[test]
fn a_missing_database_fails_the_start_saying_how_to_create_it() {
    let Some(admin) = admin_url() else { return };
    let pg = PgUrl::parse(&admin);
    let name = format!("missing_{}", std::process::id());
    let url = pg.with(&pg.password, &pg.address, &name);
    let (host, port) = pg.address.rsplit_once(':').unwrap();
    let line = format!(
        "cannot connect to postgres://{}@{}/{name}: database \"{name}\" does not exist (create it: createdb -h {host} \
         -p {port} -U {} {name})",
        pg.user, pg.address, pg.user
    );
    assert_start_fails(&url, &line, &[&pg.password]);
}

/// A server that starts, serves and stops on a URL with a password logs it nowhere.
#[test]
fn a_server_on_a_url_with_a_password_never_logs_it() {
    let Some(admin) = admin_url() else { return };
    let password = PgUrl::parse(&admin).password;
    let mut server = Builder::new().script("hello", "echo hello").start();
    assert!(server.deployment.database_url().contains(&password), "the test needs a URL with a password");
    assert_eq!(server.run("hello", &[], Some("sync")).status, 200);
    assert_eq!(server.get("/jobs/nope").status, 404);
    assert!(server.terminate(Duration::from_secs(20)).success());
    let log = server.server_log();
    assert!(log.contains("listening on"), "{log}");
    assert!(!log.contains(&password), "the password is in the server's log:\n{log}");
}

/// A TCP proxy between the server and PostgreSQL that the test can cut (every connection
/// closed, new ones closed as soon as they are accepted) and restore.
struct Proxy {
    address: SocketAddr,
    state: Arc<ProxyState>,
}

struct ProxyState {
    up: AtomicBool,
    /// Both ends of every connection relayed so far.
    streams: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState { up: AtomicBool::new(true), streams: Mutex::new(Vec::new()) });
        let upstream = upstream.to_string();
        let accepting = Arc::clone(&state);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !accepting.up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                {
                    let mut streams = accepting.streams.lock().unwrap();
                    streams.push(client.try_clone().unwrap());
                    streams.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 16 * 1024];
                        loop {
                            match from.read(&mut buffer) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buffer[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { address, state }
    }

    /// Closes every relayed connection and refuses new ones.
    fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        for stream in self.state.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }
}

#[derive(diesel::QueryableByName)]
struct StatusRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    stdout_preview: String,
}

/// A job's status and stdout preview as stored, read straight from PostgreSQL (not through the
/// server, which answers a job in flight from memory).
fn stored_job(url: &str, id: &str) -> Option<(String, String)> {
    let mut conn = diesel::PgConnection::establish(url).unwrap();
    diesel::sql_query("SELECT status, stdout_preview FROM jobs WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(id)
        .load::<StatusRow>(&mut conn)
        .unwrap()
        .pop()
        .map(|row| (row.status, row.stdout_preview))
}

/// Lines of the script that appends a line to `file` each time it runs.
fn count_runs(file: &Path) -> usize {
    std::fs::read_to_string(file).map(|t| t.lines().count()).unwrap_or(0)
}

#[test]
fn a_database_lost_while_serving_answers_503_and_running_jobs_end_recorded_once_it_is_back() {
    let Some(admin) = admin_url() else { return };
    let pg = PgUrl::parse(&admin);
    let database = format!("lost_{}", std::process::id());
    let direct = common::new_pg_database(&admin, &database);
    let proxy = Proxy::start(&pg.address);
    let proxied = pg.with(&pg.password, &proxy.address.to_string(), &database);

    let builder = Builder::new();
    let dir = builder.dir().to_path_buf();
    let (pid_file, gate, quick_runs) = (dir.join("work.pid"), dir.join("work.go"), dir.join("quick.runs"));
    let work = format!("echo $$ > '{}'; {}; echo finished", pid_file.display(), wait_for_gate(&gate));
    let mut server = builder
        .top("database", json!({ "url": proxied }))
        .script_entry("work", &work, json!({ "mode": "async" }))
        .script("quick", &format!("echo ran >> '{}'; echo quick", quick_runs.display()))
        .start();

    let earlier = server.run("quick", &[], Some("sync"));
    assert_eq!(earlier.status, 200, "{}", earlier.text);
    let earlier = earlier.body["jobId"].as_str().unwrap().to_string();
    let id = server.run_async("work", &[]);
    let pid: i32 = wait_file(&pid_file, Duration::from_secs(20)).parse().unwrap();
    // Its start is written behind the process's spawn: under load the cut could land first,
    // and the row would still say `queued` below. Waiting for it also puts a commit just
    // before the cut: the reads that fail below must take back its vouching for the database,
    // or the sync run is started (and hangs, its end unwritable) instead of refused.
    wait_until(
        || format!("job {id}'s start was not written:\n{}", server.server_log()),
        Duration::from_secs(20),
        || stored_job(&direct, &id).filter(|(status, _)| status == "running"),
    );

    proxy.cut();
    // Reads that need the database answer 503 promptly (the pool's 3 s time-out), not hang.
    for path in [format!("/jobs/{earlier}"), "/jobs".to_string()] {
        let started = Instant::now();
        let r = server.get(&path);
        assert_error(&r, 503, "STORE_UNAVAILABLE");
        assert!(started.elapsed() < Duration::from_secs(10), "GET {path} took {:?}", started.elapsed());
    }
    // A job in flight is answered from memory, where its state is current.
    assert_eq!(server.job(&id)["status"], json!("running"));
    // New runs are refused, async and sync, and start nothing.
    let runs_before = count_runs(&quick_runs);
    for mode in ["async", "sync"] {
        let started = Instant::now();
        let r = server.run("quick", &[], Some(mode));
        assert_error(&r, 503, "STORE_UNAVAILABLE");
        assert!(started.elapsed() < Duration::from_secs(10), "POST /run ({mode}) took {:?}", started.elapsed());
    }
    assert_eq!(count_runs(&quick_runs), runs_before, "a refused run was started");
    // The running job goes on; it ends while the database is still away.
    assert!(alive(pid), "the running job's process was killed");
    open_gate(&gate);
    server.wait_terminal(&id, Duration::from_secs(20));
    assert_eq!(stored_job(&direct, &id).map(|(status, _)| status).as_deref(), Some("running"));

    proxy.restore();
    // Its end is written once the database is back (the writer reconnects with backoff).
    let stored = wait_until(
        || format!("job {id}'s end was not written after the database came back:\n{}", server.server_log()),
        Duration::from_secs(30),
        || stored_job(&direct, &id).filter(|(status, _)| status == "succeeded"),
    );
    assert_eq!(stored.1, "finished\n");
    let job = server.job(&id);
    assert_eq!((job["status"].as_str(), job["stdoutPreview"].as_str()), (Some("succeeded"), Some("finished\n")));
    // New runs work again, and reads.
    let r = server.run("quick", &[], Some("sync"));
    assert_eq!((r.status, r.body["stdout"].as_str()), (200, Some("quick\n")), "{}", r.text);
    let again = server.run_async("quick", &[]);
    server.wait_job(&again, Duration::from_secs(20), |s| s == "succeeded");
    assert_eq!(server.get(&format!("/jobs/{earlier}")).status, 200);

    // The node held on to its place in the cluster: nobody declared it dead for the outage.
    let cluster = server.get("/cluster");
    assert_eq!(cluster.body["nodes"][0]["state"], json!("up"), "{}", cluster.text);
    let log = server.server_log();
    assert!(log.contains("reconnected"), "{log}");
    assert!(!log.contains(&pg.password), "the password is in the server's log:\n{log}");
    assert!(server.terminate(Duration::from_secs(20)).success(), "{}", server.server_log());
}

/// A node cut off from the database past its lease (a partition) is declared dead by another
/// node, which fails its running job; when the network is back the cut-off node records nothing
/// (the job stays failed, though its process ran to its end) and stops, exiting non-zero with a
/// line that says it was fenced.
#[test]
fn a_node_cut_off_past_its_lease_is_declared_dead_and_fenced_when_it_comes_back() {
    let Some(admin) = admin_url() else { return };
    let pg = PgUrl::parse(&admin);
    let database = format!("partition_{}", std::process::id());
    let direct = common::new_pg_database(&admin, &database);
    let proxy = Proxy::start(&pg.address);
    let proxied = pg.with(&pg.password, &proxy.address.to_string(), &database);
    let builder = Builder::new();
    let (pid_file, gate) = (builder.dir().join("work.pid"), builder.dir().join("work.go"));
    let work = format!("echo $$ > '{}'; {}; echo finished", pid_file.display(), wait_for_gate(&gate));
    let mut cut_off = builder
        .top("database", json!({ "url": proxied }))
        .top("cluster", json!({ "nodeId": "cut-off", "leaseSec": 1 }))
        .script_entry("work", &work, json!({ "mode": "sync" }))
        .start();
    let mut other = Builder::new()
        .top("database", json!({ "url": direct }))
        .top("cluster", json!({ "nodeId": "other", "leaseSec": 1 }))
        .script("work", "true")
        .start();

    // A sync job on the node to be cut off, written as running (it has run past 20 ms).
    let body = json!({ "scriptId": "work", "mode": "sync" });
    let request = std::thread::spawn({
        let url = format!("{}/run", cut_off.base);
        move || ureq::post(&url).timeout(Duration::from_secs(60)).send_json(body).map(|r| r.status()).ok()
    });
    let pid: i32 = wait_file(&pid_file, Duration::from_secs(20)).parse().unwrap();
    let job = wait_until(
        || "the sync job was never written as running".to_string(),
        Duration::from_secs(20),
        || other.get("/jobs?status=running").body["jobs"][0]["jobId"].as_str().map(str::to_string),
    );

    proxy.cut();
    let error = wait_until(
        || format!("the cut-off node was never declared dead:\n{}", other.server_log()),
        Duration::from_secs(30),
        || {
            let job = other.job(&job);
            (job["status"] == json!("failed")).then(|| job["error"].as_str().unwrap_or_default().to_string())
        },
    );
    assert!(error.contains("node cut-off was lost"), "{error}");
    let nodes = other.get("/cluster").body["nodes"].clone();
    let state = nodes.as_array().unwrap().iter().find(|n| n["id"] == json!("cut-off")).unwrap()["state"].clone();
    assert_eq!(state, json!("dead"), "{nodes}");
    // The job's process is on this machine: the node that declared its owner dead killed it.
    wait_until(
        || format!("process {pid} of the dead node still runs"),
        Duration::from_secs(10),
        || (!alive(pid)).then_some(()),
    );

    open_gate(&gate);
    proxy.restore();
    let status = cut_off.wait_exit(Duration::from_secs(40));
    assert!(!status.success(), "the fenced node went on");
    let log = cut_off.server_log();
    let last = log.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(last.starts_with("script-runner: this node was fenced"), "{log}");
    assert!(!log.contains(&pg.password), "{log}");
    // It recorded nothing after its lease: the job stays as the other node ended it.
    assert_eq!(stored_job(&direct, &job).map(|(status, _)| status).as_deref(), Some("failed"));
    let _ = request.join();
    assert!(other.terminate(Duration::from_secs(20)).success(), "{}", other.server_log());
}

/// A workflow whose next step falls in a database outage waits it out: the step client retries
/// `503 STORE_UNAVAILABLE` (its calls are keyed by label, so a retry is answered from the
/// journal), and the run completes with every step journaled once the database is back.
#[test]
fn a_workflow_step_during_a_database_outage_waits_for_it_and_the_run_completes() {
    let Some(admin) = admin_url() else { return };
    let pg = PgUrl::parse(&admin);
    let database = format!("outage_run_{}", std::process::id());
    let direct = common::new_pg_database(&admin, &database);
    let proxy = Proxy::start(&pg.address);
    let proxied = pg.with(&pg.password, &proxy.address.to_string(), &database);

    let builder = Builder::new();
    let dir = builder.dir().to_path_buf();
    let (gate, reached) = (dir.join("second.go"), dir.join("reached"));
    let mut server = builder.top("database", json!({ "url": proxied })).workflows(json!({})).start();
    let source = format!(
        "script-runner step first --value-from -- echo 1 >/dev/null\ntouch '{}'\n{}\n\
         script-runner step second --value-from -- echo 2 >/dev/null\necho '{{\"done\":true}}'\n",
        reached.display(),
        wait_for_gate(&gate)
    );
    let id = server.launch_bash(&source, json!({}));
    wait_until(
        || format!("the run never reached its gate: {}\n{}", server.script_run(&id), server.server_log()),
        Duration::from_secs(20),
        || reached.exists().then_some(()),
    );

    proxy.cut();
    // The second step begins while the database is away; it must not fail the run.
    open_gate(&gate);
    std::thread::sleep(Duration::from_secs(4));
    proxy.restore();

    let body = server.wait_run_terminal(&id, Duration::from_secs(60));
    assert_eq!(body["run"]["status"], json!("completed"), "{body}\n{}", server.server_log());
    let steps: Vec<(&str, &str)> = body["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stepKey"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("first", "completed"), ("second", "completed")], "{body}");
    assert!(stored_run_status(&direct, &id).is_some_and(|s| s == "completed"));
    assert!(server.terminate(Duration::from_secs(20)).success(), "{}", server.server_log());
}

/// A run's status as stored in the database.
fn stored_run_status(url: &str, id: &str) -> Option<String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
    }
    let mut conn = diesel::PgConnection::establish(url).ok()?;
    let rows: Vec<Row> = diesel::sql_query("SELECT status FROM script_runs WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(id)
        .load(&mut conn)
        .ok()?;
    rows.into_iter().next().map(|r| r.status)
}

/// A start that fails after the database was opened (here: an upstream `jobs.json` that is not
/// JSON) exits with its code every time, never by a signal: threads left inside libpq once
/// raced OpenSSL's exit handler, and about 1 exit in 10 was a SIGSEGV.
#[test]
fn a_start_that_fails_after_opening_the_database_always_exits_with_its_code() {
    let Some(admin) = admin_url() else { return };
    let url = common::new_pg_database(&admin, &format!("exit_code_{}", std::process::id()));
    let deployment = Builder::new().script("noop", "true").top("database", json!({ "url": url })).write();
    std::fs::write(deployment.dir.path().join("jobs.json"), "[{\"jobId\": \"job_1\", oops").unwrap();
    for attempt in 0..25 {
        let out = Command::new(common::BIN)
            .args(["serve", "--config"])
            .arg(&deployment.config)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "attempt {attempt}: {:?}\n{stderr}", out.status);
        assert!(stderr.contains("runner.jobStoreFile"), "{stderr}");
    }
}
