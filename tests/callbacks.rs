//! Completion callbacks: signed, retried, durable across a kill -9, never in a job's way, and
//! only to allowed hosts (refused at launch otherwise). On the PostgreSQL pass a server is a
//! cluster node: its async jobs go through the cluster's queue, and every node delivers from
//! the one outbox, each callback once.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{assert_error, wait_until, Builder, TestServer};

const SECRET: &str = "test-secret";

/// A request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    /// `X-Script-Runner-Event`.
    event: String,
    body: Vec<u8>,
}

/// A callback receiver on 127.0.0.1: answers the given statuses in turn, then 200; each answer
/// after `delay`.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(statuses: Vec<u16>, delay: Duration) -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").unwrap(), statuses, delay)
    }

    fn on(listener: TcpListener, statuses: Vec<u16>, delay: Duration) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&got);
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let status = statuses.next().unwrap_or(200);
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || answer(stream, status, delay, &seen));
            }
        });
        Receiver { port, got }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

fn answer(stream: TcpStream, status: u16, delay: Duration, seen: &Mutex<Vec<Received>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (mut length, mut signature, mut event) = (0usize, String::new(), String::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "x-script-runner-signature" => signature = value.trim().to_string(),
                "x-script-runner-event" => event = value.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    seen.lock().unwrap().push(Received { signature, event, body });
    std::thread::sleep(delay);
    let mut stream = stream;
    let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// HMAC-SHA256 written out (RFC 2104), independent of the server's.
fn hmac(key: &[u8], message: &[u8]) -> String {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let inner = Sha256::new().chain_update(k.map(|b| b ^ 0x36)).chain_update(message).finalize();
    let outer = Sha256::new().chain_update(k.map(|b| b ^ 0x5c)).chain_update(inner).finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `t=<unix>,v1=<hex>` against the body, and that `t` is now-ish.
fn assert_signed(r: &Received) {
    let (t, v1) = r.signature.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(&r.body);
    assert_eq!(v1, hmac(SECRET.as_bytes(), &message), "signature {}", r.signature);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(t.parse::<u64>().unwrap()) < 60);
}

fn server() -> TestServer {
    Builder::new().top("callbacks", json!({ "secret": SECRET })).script("hello", "echo hello").start()
}

fn launch(server: &TestServer, callback: Value) -> String {
    let r = server.post("/run", json!({"scriptId": "hello", "mode": "async", "callback": callback}));
    assert_eq!(r.status, 202, "{}", r.text);
    r.body["jobId"].as_str().unwrap().to_string()
}

fn callbacks(server: &TestServer, job: &str) -> Value {
    let r = server.get(&format!("/jobs/{job}/callbacks"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["callbacks"][0].clone()
}

fn wait_delivered(server: &TestServer, job: &str, timeout: Duration) -> Value {
    wait_until(
        || format!("callback of {job} delivered: {}\n{}", callbacks(server, job), server.server_log()),
        timeout,
        || Some(callbacks(server, job)).filter(|c| c["state"] == "delivered"),
    )
}

#[test]
fn a_receiver_that_fails_three_times_then_accepts_gets_one_signed_delivery() {
    let receiver = Receiver::start(vec![500, 500, 500], Duration::ZERO);
    let server = server();
    let job = launch(&server, json!({ "url": receiver.url() }));
    let delivered = wait_delivered(&server, &job, Duration::from_secs(30));
    assert_eq!(delivered["attempts"], 4, "{delivered}");
    let statuses: Vec<&Value> = delivered["attemptLog"].as_array().unwrap().iter().map(|a| &a["status"]).collect();
    assert_eq!(statuses, [&json!(500), &json!(500), &json!(500), &json!(200)], "{delivered}");
    assert!(delivered["deliveredAt"].is_string() && delivered["nextAttemptAt"].is_null(), "{delivered}");
    let got = receiver.got();
    assert_eq!(got.len(), 4);
    got.iter().for_each(assert_signed);
    // The body is the job as GET /jobs/:id shows it.
    let body: Value = serde_json::from_slice(&got[3].body).unwrap();
    assert_eq!(body, server.job(&job));
    assert_eq!(body["status"], "succeeded");
}

#[test]
fn a_callback_to_a_host_not_allowed_is_refused_at_launch() {
    let server = server();
    for url in [
        "http://example.com/x",
        "http://10.1.2.3/",
        "http://127.0.0.1@10.1.2.3/",
        "ftp://127.0.0.1/",
        "https://127.0.0.1/",
    ] {
        let r = server.post("/run", json!({"scriptId": "hello", "mode": "async", "callback": {"url": url}}));
        assert_error(&r, 400, "CALLBACK_NOT_ALLOWED");
    }
    let r =
        server.post("/run", json!({"scriptId": "hello", "mode": "sync", "callback": {"url": "http://127.0.0.1:9/"}}));
    assert_error(&r, 400, "INVALID_ARGS");
    let r = server.post(
        "/run",
        json!({"scriptId": "hello", "mode": "async", "callback": {"url": "http://127.0.0.1:9/", "events": ["nope"]}}),
    );
    assert_error(&r, 400, "CALLBACK_NOT_ALLOWED");
    // Nothing was started.
    assert_eq!(server.get("/jobs").body["total"], 0);

    let unsigned = Builder::new().script("hello", "echo hello").start();
    let r = unsigned
        .post("/run", json!({"scriptId": "hello", "mode": "async", "callback": {"url": "http://127.0.0.1:9/"}}));
    assert_error(&r, 400, "CALLBACK_NOT_ALLOWED");
}

#[test]
fn a_pending_callback_resumes_after_a_kill9() {
    // The receiver's port, closed until after the restart.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = server();
    let job = launch(&server, json!({ "url": format!("http://127.0.0.1:{port}/hook") }));
    wait_until(
        || format!("a failed attempt: {}", callbacks(&server, &job)),
        Duration::from_secs(10),
        || Some(()).filter(|()| callbacks(&server, &job)["attempts"].as_u64() >= Some(1)),
    );
    server.kill9();
    server.restart();
    let receiver = Receiver::on(TcpListener::bind(("127.0.0.1", port)).unwrap(), vec![], Duration::ZERO);
    let delivered = wait_delivered(&server, &job, Duration::from_secs(30));
    assert_eq!(delivered["attemptLog"].as_array().unwrap().last().unwrap()["status"], 200, "{delivered}");
    assert_signed(&receiver.got()[0]);
}

#[test]
fn a_slow_receiver_does_not_slow_jobs() {
    let receiver = Receiver::start(vec![], Duration::from_secs(5));
    let server = server();
    let jobs: Vec<String> = (0..8).map(|_| launch(&server, json!({ "url": receiver.url() }))).collect();
    // Every delivery slot is held by the receiver now.
    wait_until(
        || "4 deliveries in flight".into(),
        Duration::from_secs(10),
        || Some(()).filter(|()| receiver.got().len() >= 4),
    );
    let started = Instant::now();
    for _ in 0..20 {
        let r = server.run("hello", &[], Some("sync"));
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert!(started.elapsed() < Duration::from_secs(3), "20 sync jobs took {:?}", started.elapsed());
    for job in &jobs {
        wait_delivered(&server, job, Duration::from_secs(30));
    }
}

/// Three nodes share one outbox: each callback is POSTed once (no node takes one another is
/// trying), whichever node took the job or ran it.
#[test]
fn in_a_cluster_each_callback_is_delivered_once() {
    if !crate::common::on_postgres() {
        return;
    }
    let receiver = Receiver::start(vec![], Duration::ZERO);
    let cluster = crate::common::Cluster::builder()
        .top("callbacks", json!({ "secret": SECRET }))
        .script_entry("hello", "echo hello", json!({ "mode": "async" }))
        .workflows(json!({}))
        .start(3);
    let jobs: Vec<String> = (0..12)
        .map(|i| {
            let r = cluster.nodes[i % 3]
                .post("/run", json!({"scriptId": "hello", "mode": "async", "callback": {"url": receiver.url()}}));
            assert_eq!(r.status, 202, "{}", r.text);
            r.body["jobId"].as_str().unwrap().to_string()
        })
        .collect();
    let r = cluster.nodes[1].launch_run(json!({
        "source": "echo '[1]'", "interpreter": "bash", "callback": {"url": receiver.url()}
    }));
    assert_eq!(r.status, 201, "{}", r.text);
    let run = r.body["run"]["id"].as_str().unwrap().to_string();
    for job in &jobs {
        wait_delivered(&cluster.nodes[2], job, Duration::from_secs(30));
    }
    wait_until(
        || format!("run {run}'s callback delivered"),
        Duration::from_secs(30),
        || {
            let r = cluster.nodes[0].get(&format!("/api/script-runs/{run}/callbacks"));
            Some(()).filter(|()| r.body["callbacks"][0]["state"] == "delivered")
        },
    );
    // Every node's deliverer looked at each row for a while after: still one POST each.
    std::thread::sleep(Duration::from_millis(1500));
    let mut owners: Vec<String> = receiver
        .got()
        .iter()
        .map(|r| {
            assert_signed(r);
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["id"].as_str().or(body["jobId"].as_str()).unwrap().to_string()
        })
        .collect();
    owners.sort();
    let mut expected: Vec<String> = jobs.iter().cloned().chain([run]).collect();
    expected.sort();
    assert_eq!(owners, expected, "each callback POSTed exactly once");
}

#[test]
fn a_workflow_run_posts_its_run_when_it_ends() {
    let receiver = Receiver::start(vec![503], Duration::ZERO);
    let server = Builder::new().workflows(json!({})).top("callbacks", json!({ "secret": SECRET })).start();
    let r = server.launch_run(json!({
        "source": "echo '[1]'", "interpreter": "bash", "callback": {"url": receiver.url(), "events": ["completed"]}
    }));
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["run"]["id"].as_str().unwrap().to_string();
    let delivered = wait_until(
        || format!("run {id}'s callback delivered"),
        Duration::from_secs(30),
        || {
            let r = server.get(&format!("/api/script-runs/{id}/callbacks"));
            Some(r.body["callbacks"][0].clone()).filter(|c| c["state"] == "delivered")
        },
    );
    assert_eq!(delivered["attempts"], 2, "{delivered}");
    let got = receiver.got();
    got.iter().for_each(assert_signed);
    let body: Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(body, server.script_run(&id)["run"]);
    assert_eq!(body["status"], "completed");
    // A host not allowed is refused at launch here too.
    let r =
        server.launch_run(json!({"source": "echo 1", "interpreter": "bash", "callback": {"url": "http://10.0.0.1/"}}));
    assert_error(&r, 400, "CALLBACK_NOT_ALLOWED");
}

/// `status` callbacks: every status change short of the end is POSTed in order, each once
/// (`X-Script-Runner-Event: status`, the run as it was then), then the end as `completed`.
#[test]
fn a_status_callback_gets_each_change_of_a_run_in_order_then_its_end() {
    let receiver = Receiver::start(vec![200, 500], Duration::ZERO);
    let server = Builder::new().workflows(json!({})).top("callbacks", json!({ "secret": SECRET })).start();
    let r = server.launch_run(json!({
        "source": "script-runner step ok --approval 'go?' > /dev/null\necho '[2]'",
        "interpreter": "bash",
        "callback": {"url": receiver.url(), "events": ["status", "completed"]}
    }));
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["run"]["id"].as_str().unwrap().to_string();
    let events = |receiver: &Receiver| -> Vec<(String, String)> {
        receiver
            .got()
            .iter()
            .map(|r| {
                assert_signed(r);
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                (r.event.clone(), body["status"].as_str().unwrap_or_default().to_string())
            })
            .collect()
    };
    // Created running, then awaiting: the second attempt (of `awaiting`) fails once and is
    // made again, so it is in the list twice.
    wait_until(
        || format!("running and awaiting delivered: {:?}", events(&receiver)),
        Duration::from_secs(30),
        || Some(()).filter(|()| events(&receiver).len() >= 3),
    );
    let r = server.post(&format!("/api/script-runs/{id}/approvals/ok"), json!({"approved": true}));
    assert_eq!(r.status, 200, "{}", r.text);
    let delivered = wait_until(
        || format!("run {id}'s callback delivered: {:?}", events(&receiver)),
        Duration::from_secs(30),
        || {
            let r = server.get(&format!("/api/script-runs/{id}/callbacks"));
            Some(r.body["callbacks"][0].clone()).filter(|c| c["state"] == "delivered")
        },
    );
    let s = |e: &str, st: &str| (e.to_string(), st.to_string());
    assert_eq!(
        events(&receiver),
        [
            s("status", "running"),
            s("status", "awaiting"),
            s("status", "awaiting"),
            s("status", "running"),
            s("completed", "completed")
        ],
        "{delivered}"
    );
    let logged: Vec<&Value> = delivered["attemptLog"].as_array().unwrap().iter().map(|a| &a["event"]).collect();
    assert_eq!(logged, [&json!("status"), &json!("status"), &json!("status"), &json!("status"), &json!("completed")]);
    // The end's body is the run as the API shows it.
    let body: Value = serde_json::from_slice(&receiver.got()[4].body).unwrap();
    assert_eq!(body, server.script_run(&id)["run"]);
}

/// A job's `status` callback: its start (the job as it was then: running, no output), then
/// its end.
#[test]
fn a_status_callback_gets_a_jobs_start_then_its_end() {
    let receiver = Receiver::start(vec![], Duration::ZERO);
    let server = server();
    let job = launch(&server, json!({ "url": receiver.url(), "events": ["completed", "failed", "status"] }));
    wait_delivered(&server, &job, Duration::from_secs(30));
    let got = receiver.got();
    let seen: Vec<(String, Value)> =
        got.iter().map(|r| (r.event.clone(), serde_json::from_slice::<Value>(&r.body).unwrap())).collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[0].0.as_str(), &seen[0].1["status"]), ("status", &json!("running")), "{seen:?}");
    assert!(seen[0].1["endedAt"].is_null() && seen[0].1["stdoutPreview"] == json!(""), "{seen:?}");
    assert_eq!(seen[1], ("completed".to_string(), server.job(&job)), "{seen:?}");
    // A name outside the three is refused.
    let r = server.post(
        "/run",
        json!({"scriptId": "hello", "mode": "async", "callback": {"url": receiver.url(), "events": ["started"]}}),
    );
    assert_error(&r, 400, "CALLBACK_NOT_ALLOWED");
}

#[test]
fn a_retried_run_posts_once_when_it_finally_ends_not_for_the_failure_it_retried() {
    let receiver = Receiver::start(Vec::new(), Duration::ZERO);
    let b = Builder::new().workflows(json!({})).top("callbacks", json!({ "secret": SECRET }));
    let dir = b.dir().to_path_buf();
    let server = b.start();
    // Fails (exit 3) the first time, completes the second.
    let source = format!("[ -e {0}/marker ] && {{ echo '[2]'; exit 0; }}; touch {0}/marker; exit 3", dir.display());
    let r = server.launch_run(json!({
        "source": source, "interpreter": "bash", "retry": {"attempts": 2, "delayMs": 300},
        "callback": {"url": receiver.url(), "events": ["completed", "failed"]}
    }));
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["run"]["id"].as_str().unwrap().to_string();
    wait_until(
        || format!("run {id}'s callback delivered"),
        Duration::from_secs(30),
        || {
            let r = server.get(&format!("/api/script-runs/{id}/callbacks"));
            Some(r.body["callbacks"][0].clone()).filter(|c| c["state"] == "delivered")
        },
    );
    let got = receiver.got();
    assert_eq!(got.len(), 1, "one delivery, for the final end");
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["attempts"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body, server.script_run(&id)["run"]);
}
