//! The blocks as OOMOL's engine runs them: `script-runner block <name> --address ...` against a
//! real mosquitto broker and a real server, with a test engine playing the engine's side
//! (subscribe `session/<S>`, spawn the worker, wait for `BlockReady`, publish `BlockInputs`,
//! collect every message until `BlockFinished`, wait for the process to exit).
//!
//! What is checked is what a user of Studio sees: the outputs (the same as `--inputs` gives for
//! the same inputs), the error of a failing block (the same text), the block's log lines (the
//! followed job's lines on the worker's stdout and stderr), its progress bar, one server job for
//! a job id the engine started twice, and a worker that never hangs.
#![allow(clippy::unwrap_used, missing_docs)]

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{alive, open_gate, unused_port, wait_for_gate, wait_for_gate_word, Builder, TestServer, BIN};
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS, RecvTimeoutError};
use serde_json::{json, Map, Value};

const BLOCKS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../blocks");
/// The engine's packet limit (256 MiB), both ways.
const MQTT_MAX_PACKET: usize = 256 * 1024 * 1024;
/// Longest wait for a worker's `BlockReady` (the engine re-spawns after about 3 s; this bound is
/// only for a loaded CI machine not to fail the test).
const READY_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for a worker's `BlockFinished` once it has its inputs.
const FINISH_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for a worker to exit after its `BlockFinished`.
const EXIT_WAIT: Duration = Duration::from_secs(30);
/// Upper bound for anything else a test waits for.
const WAIT: Duration = Duration::from_secs(30);
/// A worker whose broker is down must have given up within this.
const BROKER_DOWN_BOUND: Duration = Duration::from_secs(15);

// =============================================================================================
// The broker
// =============================================================================================

/// `mosquitto` on PATH, else Debian's `/usr/sbin/mosquitto` (off a non-root user's PATH). Its
/// absence fails the test: these tests are the only check of the worker front end.
fn mosquitto_binary() -> PathBuf {
    crate::common::on_path("mosquitto")
        .into_iter()
        .chain(["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"].map(PathBuf::from))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| {
            panic!(
                "mosquitto (the MQTT broker OOMOL's engine uses) is neither on PATH nor at /usr/sbin/mosquitto: \
                 these tests need it (apt-get install mosquitto; .ci/run installs it)"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A mosquitto broker of one test, on a free loopback port (mosquitto 2 with no config listens
/// on localhost only and lets anonymous clients in), logging every packet (`-v`) for failure
/// messages; killed on drop.
struct Broker {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let bin = mosquitto_binary();
        let dir = tempfile::Builder::new().prefix("sr-mqtt-").tempdir().unwrap();
        let mut last_log = String::new();
        for _ in 0..10 {
            let port = unused_port();
            let log_path = dir.path().join(format!("mosquitto-{port}.log"));
            let log = File::create(&log_path).unwrap();
            let mut child = Command::new(&bin)
                .args(["-v", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let exited = child.try_wait().unwrap().is_some();
                if !exited && TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok() {
                    // Still ours (not another process that took the port).
                    if child.try_wait().unwrap().is_none() {
                        return Broker { child, port, log: log_path, _dir: dir };
                    }
                }
                if exited || child.try_wait().unwrap().is_some() || Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("mosquitto did not come up on any of 10 ports; its last log:\n{last_log}");
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// =============================================================================================
// The test engine
// =============================================================================================

/// A message the engine received on `session/<S>`.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    message: Value,
}

impl Received {
    fn kind(&self) -> &str {
        self.message["type"].as_str().unwrap_or_default()
    }
}

/// The engine's side of one session: an MQTT client subscribed to `session/<S>` that records
/// every message, and publishes `BlockInputs`.
struct Engine {
    session: String,
    address: String,
    broker_log: PathBuf,
    client: Client,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    next_job: AtomicU64,
}

impl Engine {
    /// Connects to the broker as the engine of `session` and subscribes to `session/<S>`
    /// (acknowledged before this returns, so no message of a worker started after is missed).
    fn connect(broker: &Broker, session: &str) -> Engine {
        let mut options = MqttOptions::new(format!("oocana-scheduler-{session}"), "127.0.0.1", broker.port);
        options.set_keep_alive(Duration::from_secs(60));
        options.set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET);
        options.set_clean_session(true);
        let (client, mut connection) = Client::new(options, 64);
        client.subscribe(format!("session/{session}"), QoS::AtLeastOnce).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, subscribed_rx) = mpsc::channel::<Result<(), String>>();
        let thread = {
            let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut last_error = String::new();
                while !stop.load(Ordering::Acquire) {
                    match connection.recv_timeout(Duration::from_millis(100)) {
                        Ok(Ok(Event::Incoming(Incoming::Publish(publish)))) => {
                            let message = serde_json::from_slice(&publish.payload)
                                .unwrap_or_else(|_| json!({ "unparsable": String::from_utf8_lossy(&publish.payload) }));
                            let message = match message {
                                Value::Object(_) => message,
                                other => json!({ "not an object": other }),
                            };
                            received.lock().unwrap().push(Received { at: Instant::now(), message });
                        }
                        Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => {
                            let _ = subscribed_tx.send(Ok(()));
                        }
                        Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                        Ok(Err(e)) => {
                            if e.to_string() != last_error {
                                last_error = e.to_string();
                                let _ = subscribed_tx.send(Err(last_error.clone()));
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
        };
        let deadline = Instant::now() + WAIT;
        let mut errors = Vec::new();
        loop {
            match subscribed_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(())) => break,
                Ok(Err(e)) => errors.push(e),
                Err(_) => panic!(
                    "the test engine could not subscribe at the broker {} within {WAIT:?}: {errors:?}",
                    broker.address()
                ),
            }
        }
        Engine {
            session: session.to_string(),
            address: broker.address(),
            broker_log: broker.log.clone(),
            client,
            received,
            stop,
            thread: Some(thread),
            next_job: AtomicU64::new(1),
        }
    }

    /// A job id of this session not used before.
    fn job_id(&self, tag: &str) -> String {
        format!("{tag}-{}", self.next_job.fetch_add(1, Ordering::Relaxed))
    }

    /// Every message of `job` received so far, in order of arrival.
    fn messages(&self, job: &str) -> Vec<Received> {
        self.received.lock().unwrap().iter().filter(|r| r.message["job_id"] == json!(job)).cloned().collect()
    }

    /// Every message received so far (all jobs).
    fn all_messages(&self) -> Vec<Value> {
        self.received.lock().unwrap().iter().map(|r| r.message.clone()).collect()
    }

    /// Spawns `script-runner block <name> --address <broker> --session-id <S> --job-id <job>`.
    fn spawn(&self, name: &str, job: &str) -> Worker {
        Worker::spawn(&self.address, &self.session, name, job)
    }

    /// Waits for the `count`-th `BlockReady` of `job`; returns it.
    fn wait_ready(&self, worker: &mut Worker, count: usize) -> Received {
        let job = worker.job.clone();
        self.wait_messages(worker, "BlockReady", READY_WAIT, |messages| {
            messages.iter().filter(|r| r.kind() == "BlockReady").nth(count - 1).cloned()
        })
        .unwrap_or_else(|| panic!("job {job}: no BlockReady"))
    }

    /// Polls the messages of the worker's job until `probe` gives a value, at most `timeout`.
    /// Panics (with the worker's output) on time-out, or when the worker has exited and 5 s
    /// more brought nothing.
    fn wait_messages<T>(
        &self,
        worker: &mut Worker,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&[Received]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut exited_at: Option<Instant> = None;
        loop {
            if let Some(value) = probe(&self.messages(&worker.job)) {
                return Some(value);
            }
            if exited_at.is_none() && worker.try_exit().is_some() {
                exited_at = Some(Instant::now());
            }
            let gave_up = exited_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(5));
            if gave_up || Instant::now() >= deadline {
                let why = match worker.status {
                    Some(status) if gave_up => format!("the worker exited ({status}) and 5 s later still nothing"),
                    _ => format!("not within {timeout:?}"),
                };
                let messages: Vec<String> = self.messages(&worker.job).iter().map(|r| r.message.to_string()).collect();
                panic!(
                    "worker {} (job {}): no {what}: {why}\nmessages: {}\nstdout: {}\nstderr: {}\nthe broker's log of it:\n{}",
                    worker.name,
                    worker.job,
                    tail(&messages.join("\n")),
                    tail(&worker.stdout()),
                    tail(&worker.stderr()),
                    tail(&self.broker_log_of(&worker.job)),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The broker's log lines about the worker processes of `job` (client ids
    /// `oocana-worker-<job>-<pid>`).
    fn broker_log_of(&self, job: &str) -> String {
        let client = format!("oocana-worker-{job}-");
        let log = std::fs::read_to_string(&self.broker_log).unwrap_or_default();
        log.lines().filter(|l| l.contains(&client)).collect::<Vec<_>>().join("\n")
    }

    /// Publishes `BlockInputs` for `job` (QoS 1), as the engine does once the block is ready.
    fn send_inputs(&self, name: &str, job: &str, inputs: &Value) {
        let message = json!({
            "type": "BlockInputs",
            "session_id": self.session,
            "job_id": job,
            "stacks": [],
            "block_path": format!("{BLOCKS_DIR}/{name}/block.oo.yaml"),
            "inputs": inputs,
            "inputs_def": null,
            "inputs_def_patch": null,
        });
        let topic = format!("inputs/{}/{job}", self.session);
        self.client.publish(topic, QoS::AtLeastOnce, false, message.to_string()).unwrap();
    }

    /// Runs block `name` for a fresh job of this session with these inputs, as the engine
    /// does: spawn, `BlockReady`, `BlockInputs`, messages until `BlockFinished`, exit.
    fn run(&self, name: &str, inputs: &Value) -> Outcome {
        let job = self.job_id(name);
        let mut worker = self.spawn(name, &job);
        let ready = self.wait_ready(&mut worker, 1);
        self.send_inputs(name, &job, inputs);
        self.finish(worker, &ready)
    }

    /// Waits for the worker's `BlockFinished` and its exit; checks the messages' envelope.
    fn finish(&self, mut worker: Worker, ready: &Received) -> Outcome {
        let finished = self
            .wait_messages(&mut worker, "BlockFinished", FINISH_WAIT, |m| {
                m.iter().find(|r| r.kind() == "BlockFinished").map(|r| r.message.clone())
            })
            .unwrap();
        let status = worker.wait_exit(EXIT_WAIT);
        let ready_latency = ready.at.saturating_duration_since(worker.spawned);
        eprintln!("BlockReady of {} (job {}) after {ready_latency:?}", worker.name, worker.job);
        let messages: Vec<Value> = self.messages(&worker.job).into_iter().map(|r| r.message).collect();
        let outcome =
            Outcome { messages, finished, status, stdout: worker.stdout(), stderr: worker.stderr(), ready_latency };
        outcome.check_envelope(&self.session, &worker.job);
        outcome
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.client.try_disconnect();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One worker process, its output collected as it comes.
struct Worker {
    name: String,
    job: String,
    child: Child,
    spawned: Instant,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Worker {
    /// Spawns the worker as the engine does: working directory the block's folder (when it
    /// has one), stdin `/dev/null`, stdout and stderr piped.
    fn spawn(address: &str, session: &str, name: &str, job: &str) -> Worker {
        let folder = Path::new(BLOCKS_DIR).join(name);
        let cwd = if folder.is_dir() { folder } else { PathBuf::from(BLOCKS_DIR) };
        let spawned = Instant::now();
        let mut child = Command::new(BIN)
            .args(["block", name, "--address", address, "--session-id", session, "--job-id", job])
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (stdout, stderr) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        Worker { name: name.into(), job: job.into(), child, spawned, stdout, stderr, readers, status: None }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// The exit status, once the process has exited.
    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Waits for the process to exit (then for its output to be read), at most `timeout`;
    /// kills it and panics after.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_exit() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "worker {} (job {}) did not exit within {timeout:?}\nstdout: {}\nstderr: {}",
                    self.name,
                    self.job,
                    tail(&self.stdout()),
                    tail(&self.stderr())
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The end of a process's output, for a failure message.
fn tail(text: &str) -> &str {
    let mut from = text.len().saturating_sub(4000);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    &text[from..]
}

/// Appends everything `from` gives to `into`, on a thread of its own.
fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// What one worker run gave.
#[derive(Debug)]
struct Outcome {
    /// Every message of its job on `session/<S>`, in order (`BlockReady` first).
    messages: Vec<Value>,
    /// Its `BlockFinished`.
    finished: Value,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    #[allow(dead_code, reason = "printed by Engine::finish; kept for a test that needs it")]
    ready_latency: Duration,
}

impl Outcome {
    /// The `result` of a block that succeeded (panics with the error and output otherwise).
    fn outputs(&self) -> Value {
        assert!(
            self.finished["error"].is_null() && self.finished["result"].is_object(),
            "the block failed: {}\nstderr: {}",
            self.finished,
            self.stderr
        );
        self.finished["result"].clone()
    }

    /// The `error` of a block that failed (panics otherwise).
    fn error(&self) -> String {
        assert!(self.finished["result"].is_null(), "a failed block has result null: {}", self.finished);
        self.finished["error"]
            .as_str()
            .unwrap_or_else(|| panic!("the block did not fail: {}\nstderr: {}", self.finished, self.stderr))
            .to_string()
    }

    /// The `progress` of every `BlockProgress`, in order.
    fn progress(&self) -> Vec<f64> {
        self.messages
            .iter()
            .filter(|m| m["type"] == "BlockProgress")
            .map(|m| m["progress"].as_f64().unwrap_or_else(|| panic!("progress is not a number: {m}")))
            .collect()
    }

    /// Every message names the session and job; `BlockReady` comes first and `BlockFinished`
    /// once, last, with `result` and `error` (one of them null); the process exited 0.
    fn check_envelope(&self, session: &str, job: &str) {
        let kinds: Vec<&str> = self.messages.iter().map(|m| m["type"].as_str().unwrap_or("?")).collect();
        for m in &self.messages {
            assert_eq!(m["session_id"], json!(session), "{m}");
            assert_eq!(m["job_id"], json!(job), "{m}");
            assert!(
                matches!(m["type"].as_str(), Some("BlockReady" | "BlockProgress" | "BlockFinished")),
                "unexpected message: {m}"
            );
        }
        assert_eq!(kinds.first(), Some(&"BlockReady"), "{:?}", self.messages);
        assert_eq!(kinds.iter().filter(|k| **k == "BlockReady").count(), 1, "{:?}", self.messages);
        assert_eq!(kinds.last(), Some(&"BlockFinished"), "BlockFinished must be the last message: {:?}", self.messages);
        assert_eq!(kinds.iter().filter(|k| **k == "BlockFinished").count(), 1, "{:?}", self.messages);
        let f = &self.finished;
        assert!(f.get("result").is_some() && f.get("error").is_some(), "{f}");
        assert!(f["result"].is_null() != f["error"].is_null(), "exactly one of result and error: {f}");
        assert!(
            self.status.success(),
            "the worker exits 0 once it has said BlockFinished: {:?}\n{}",
            self.status,
            self.stderr
        );
    }
}

// =============================================================================================
// Inputs, the --inputs front end, comparisons
// =============================================================================================

/// The inputs OOMOL's engine sends for a node of `name` that sets `given`: every handle of the
/// block, the manifest's default where the node keeps it (null for a bare `value:`).
fn node_inputs(name: &str, given: Value) -> Value {
    let manifest = script_runner_blocks::manifest(name).unwrap();
    let given = given.as_object().cloned().unwrap();
    for key in given.keys() {
        assert!(manifest.input(key).is_some(), "block {name} has no input {key}");
    }
    let mut inputs = Map::new();
    for def in &manifest.inputs {
        let value = given
            .get(&def.handle)
            .cloned()
            .or_else(|| def.value.clone())
            .unwrap_or_else(|| panic!("a node of {name} must set {} (no default)", def.handle));
        inputs.insert(def.handle.clone(), value);
    }
    Value::Object(inputs)
}

/// The outcome of `script-runner block <name> --inputs <json>`.
struct Cli {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cli(name: &str, inputs: &Value) -> Cli {
    let out = Command::new(BIN).args(["block", name, "--inputs", &inputs.to_string()]).output().unwrap();
    Cli {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The outputs `--inputs` prints (the block must succeed).
fn cli_outputs(name: &str, inputs: &Value) -> Value {
    let out = cli(name, inputs);
    assert_eq!(out.code, 0, "block {name} {inputs}: stdout {} stderr {}", out.stdout, out.stderr);
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

/// Runs a read-only block through both front ends with the same inputs; its outputs must be the
/// same, value for value. Returns them.
fn same_outputs(engine: &Engine, name: &str, inputs: Value) -> Value {
    let by_cli = cli_outputs(name, &inputs);
    let by_worker = engine.run(name, &inputs).outputs();
    assert_eq!(by_worker, by_cli, "block {name} {inputs}: the worker's outputs differ from --inputs'");
    by_worker
}

/// Runs a block that changes something through both front ends, each with its own inputs (on
/// its own job or run); their outputs must be the same once `ids` (each mapped to a
/// placeholder) and times are masked. Returns `(cli, worker)` outputs.
fn alike_outputs(
    engine: &Engine,
    name: &str,
    cli_inputs: Value,
    worker_inputs: Value,
    ids: &[(&str, &str)],
) -> (Value, Value) {
    let by_cli = cli_outputs(name, &cli_inputs);
    let by_worker = engine.run(name, &worker_inputs).outputs();
    assert_eq!(
        masked(&by_worker, ids),
        masked(&by_cli, ids),
        "block {name}: the worker's outputs differ from --inputs' (ids and times masked)\nworker: {by_worker}\ncli:    {by_cli}"
    );
    (by_cli, by_worker)
}

/// Keys whose values are times or process ids (they differ between two runs of one thing).
const VOLATILE_KEYS: [&str; 9] = [
    "createdAt",
    "startedAt",
    "endedAt",
    "finishedAt",
    "lastHeartbeatAt",
    "completedAt",
    "decidedAt",
    "durationMs",
    "pid",
];

/// `value` with every volatile key's value replaced and, in every string, each id replaced by
/// its placeholder.
fn masked(value: &Value, ids: &[(&str, &str)]) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if VOLATILE_KEYS.contains(&k.as_str()) { json!("<volatile>") } else { masked(v, ids) };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| masked(v, ids)).collect()),
        Value::String(s) => {
            let mut s = s.clone();
            for (id, placeholder) in ids {
                s = s.replace(id, placeholder);
            }
            Value::String(s)
        }
        other => other.clone(),
    }
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_else(|| panic!("no string {key:?} in {value}"))
}

/// `GET /jobs` total.
fn jobs_total(server: &TestServer) -> u64 {
    let r = server.get("/jobs?limit=500");
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["total"].as_u64().unwrap()
}

/// `GET /api/script-runs` total.
fn runs_total(server: &TestServer) -> u64 {
    let r = server.get("/api/script-runs?limit=500");
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["total"].as_u64().unwrap()
}

/// A session id of its own for each test.
fn session(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

// =============================================================================================
// (1) The same outputs as --inputs
// =============================================================================================

#[test]
fn job_blocks_give_under_the_worker_the_outputs_they_give_with_inputs() {
    let b = Builder::new();
    let gates = b.dir().join("gates");
    std::fs::create_dir_all(&gates).unwrap();
    let server = b
        .script("echo", "echo \"hi $1\"; echo \"warn $1\" >&2")
        .script("lines", "for i in 1 2 3 4 5; do echo line$i; done; echo err-line >&2")
        .script("hold", &format!("echo held\n{}", wait_for_gate_word("\"$1\"")))
        .start();
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("job-blocks"));
    let url = server.base.as_str();

    // run-script-sync: nothing in its outputs names the job, so they are equal as they are.
    let inputs =
        node_inputs("run-script-sync", json!({ "script_id": "echo", "args": ["a b"], "script_runner_url": url }));
    let out = same_outputs(&engine, "run-script-sync", inputs);
    assert_eq!(out, json!({ "stdout": "hi a b\n", "stderr": "warn a b\n", "exit_code": 0, "status": "succeeded" }));
    // A node that gives args a bare `value:` sends null: no arguments, as with --inputs.
    let inputs = node_inputs("run-script-sync", json!({ "script_id": "echo", "args": null, "script_runner_url": url }));
    let out = same_outputs(&engine, "run-script-sync", inputs);
    assert_eq!(out["stdout"], "hi \n", "{out}");

    // run-script-async: a job each, alike but for its id.
    let inputs = node_inputs("run-script-async", json!({ "script_id": "lines", "script_runner_url": url }));
    let cli_job = cli_outputs("run-script-async", &inputs);
    let worker_job = engine.run("run-script-async", &inputs).outputs();
    let (a, b) = (str_of(&cli_job, "job_id").to_string(), str_of(&worker_job, "job_id").to_string());
    assert_ne!(a, b, "a job each");
    assert_eq!(masked(&worker_job, &[(&b, "<job>")]), masked(&cli_job, &[(&a, "<job>")]));
    let (ja, jb) = (server.wait_terminal(&a, WAIT), server.wait_terminal(&b, WAIT));
    let same_fields = ["scriptId", "status", "code", "mode", "args", "stdoutPreview", "stderrPreview"];
    for key in same_fields {
        assert_eq!(ja[key], jb[key], "{key}: {ja}\n{jb}");
    }
    assert_eq!(ja["status"], "succeeded", "{ja}");

    // The read-only job blocks, on job a.
    let status = same_outputs(
        &engine,
        "get-job-status",
        node_inputs("get-job-status", json!({ "job_id": a, "script_runner_url": url })),
    );
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["stderr_preview"], "err-line\n", "{status}");
    let page = same_outputs(
        &engine,
        "get-job-logs",
        node_inputs("get-job-logs", json!({ "job_id": a, "offset": 1, "limit": 2, "script_runner_url": url })),
    );
    assert_eq!(page, json!({ "logs": ["line2", "line3"], "total_lines": 5 }));
    let page = same_outputs(
        &engine,
        "get-job-logs",
        node_inputs("get-job-logs", json!({ "job_id": a, "stream": "stderr", "script_runner_url": url })),
    );
    assert_eq!(page, json!({ "logs": ["err-line"], "total_lines": 1 }));
    let waited = same_outputs(
        &engine,
        "wait-job",
        node_inputs(
            "wait-job",
            json!({ "job_id": a, "timeout_sec": 20, "poll_interval_ms": 50, "script_runner_url": url }),
        ),
    );
    assert_eq!(waited["job_id"], json!(a), "{waited}");
    assert_eq!(waited["status"], "succeeded", "{waited}");
    let scripts =
        same_outputs(&engine, "list-scripts", node_inputs("list-scripts", json!({ "script_runner_url": url })));
    assert_eq!(scripts["scripts"].as_array().unwrap().len(), 3, "{scripts}");

    // cancel-job: a running job each, then one that has ended (read-only: equal as it is).
    let (gate_c, gate_d) = (gates.join("c"), gates.join("d"));
    let c = server.run_async("hold", &[gate_c.to_str().unwrap()]);
    let d = server.run_async("hold", &[gate_d.to_str().unwrap()]);
    server.wait_job(&c, WAIT, |s| s == "running");
    server.wait_job(&d, WAIT, |s| s == "running");
    let (canceled, _) = alike_outputs(
        &engine,
        "cancel-job",
        node_inputs("cancel-job", json!({ "job_id": c, "script_runner_url": url })),
        node_inputs("cancel-job", json!({ "job_id": d, "script_runner_url": url })),
        &[(&c, "<job>"), (&d, "<job>")],
    );
    assert_eq!(canceled["success"], true, "{canceled}");
    assert_eq!(server.wait_terminal(&d, WAIT)["status"], "canceled");
    let again = same_outputs(
        &engine,
        "cancel-job",
        node_inputs("cancel-job", json!({ "job_id": c, "script_runner_url": url })),
    );
    assert_eq!(again["success"], false, "{again}");

    // list-jobs, once every job has ended: every filter, and the defaults of a node that
    // lists only the URL.
    for given in [
        json!({ "script_runner_url": url }),
        json!({ "script_id": "lines", "script_runner_url": url }),
        json!({ "status": "canceled", "script_runner_url": url }),
        json!({ "status": "succeeded", "limit": 2, "offset": 1, "script_runner_url": url }),
    ] {
        let listed = same_outputs(&engine, "list-jobs", node_inputs("list-jobs", given.clone()));
        assert!(listed["total"].as_u64().unwrap() >= 2, "{given}: {listed}");
    }
    let listed = cli_outputs("list-jobs", &json!({ "script_runner_url": url }));
    let sparse = engine.run("list-jobs", &json!({ "script_runner_url": url })).outputs();
    assert_eq!(sparse, listed, "defaults filled as --inputs fills them");
    assert_eq!(listed["total"], 8, "four sync jobs, two async, two canceled: {listed}");
}

#[test]
fn a_block_with_large_outputs_finishes_with_them_under_the_worker() {
    // A megabyte on each stream (the server keeps 1 MiB per stream): the outputs are the whole
    // streams, a BlockFinished of about 2 MB.
    let big = "head -c 1000000 /dev/zero | tr '\\0' x | fold -w 10000";
    let server = Builder::new().script("big", &format!("{big}\n{big} >&2")).start();
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("large-outputs"));
    let inputs = node_inputs("run-script-sync", json!({ "script_id": "big", "script_runner_url": server.base }));
    let out = same_outputs(&engine, "run-script-sync", inputs);
    assert_eq!(out["status"], "succeeded", "{}", out["status"]);
    for stream in ["stdout", "stderr"] {
        let text = out[stream].as_str().unwrap();
        assert_eq!(text.len(), 1_000_099, "{stream}: 100 lines of 10000 x (the last without a newline)");
        assert!(text.lines().all(|l| l.len() == 10_000 && l.bytes().all(|b| b == b'x')), "{stream}");
    }
}

/// A server with a workflow that waits for an approval, then for a gate file of its own
/// (`<dir>/gates/<run id>`), and one that reports progress 1/2 and ends at once.
fn run_server() -> (TestServer, PathBuf) {
    let b = Builder::new().workflows(json!({ "parkAfterSec": 60 }));
    let gates = b.dir().join("gates");
    std::fs::create_dir_all(&gates).unwrap();
    let gate = wait_for_gate_word(&format!("'{}/'\"$SCRIPT_RUN_ID\"", gates.display()));
    let server = b
        .workflow(
            "gated",
            &format!(
                "script-runner step before -- true >&2\nscript-runner step gate --approval \"go?\" >&2 || exit 4\n{gate}\necho '{{\"done\": true}}'"
            ),
        )
        .workflow("progress", "script-runner step --progress 1/2 \"half\"\nscript-runner step one -- true\necho '{\"n\": 1}'")
        .start();
    (server, gates)
}

#[test]
fn run_blocks_give_under_the_worker_the_outputs_they_give_with_inputs() {
    let (server, gates) = run_server();
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("run-blocks"));
    let url = server.base.as_str();
    let run_inputs = |name: &str, run: &str| node_inputs(name, json!({ "run_id": run, "script_runner_url": url }));

    // launch-script-run: a run each (keys of their own), alike but for ids.
    let launch = |key: &str| {
        node_inputs(
            "launch-script-run",
            json!({ "workflow_id": "gated", "args": { "k": 1 }, "idempotency_key": key, "script_runner_url": url }),
        )
    };
    let (cli_launch, worker_launch) = (launch("cli-gated-1"), launch("worker-gated-1"));
    let by_cli = cli_outputs("launch-script-run", &cli_launch);
    let by_worker = engine.run("launch-script-run", &worker_launch).outputs();
    let (r1, r2) = (str_of(&by_cli, "run_id").to_string(), str_of(&by_worker, "run_id").to_string());
    let ids = [(r1.as_str(), "<run>"), (r2.as_str(), "<run>"), ("cli-gated-1", "<key>"), ("worker-gated-1", "<key>")];
    assert_eq!(masked(&by_worker, &ids), masked(&by_cli, &ids), "worker {by_worker}\ncli {by_cli}");
    assert_eq!(by_worker["run"]["idempotencyKey"], "worker-gated-1", "{by_worker}");
    assert_eq!(by_worker["status"], "running", "{by_worker}");
    for run in [&r1, &r2] {
        server.wait_run(run, WAIT, |s| s == "awaiting");
    }

    // pause, resume, approve: the same step on a run each.
    let pair = |name: &str, cli_inputs: Value, worker_inputs: Value| {
        alike_outputs(&engine, name, cli_inputs, worker_inputs, &ids).0
    };
    let paused = pair("pause-script-run", run_inputs("pause-script-run", &r1), run_inputs("pause-script-run", &r2));
    assert_eq!(paused["status"], "paused", "{paused}");
    let resumed = pair("resume-script-run", run_inputs("resume-script-run", &r1), run_inputs("resume-script-run", &r2));
    assert_eq!(resumed["status"], "running", "{resumed}");
    for run in [&r1, &r2] {
        server.wait_run(run, WAIT, |s| s == "awaiting");
    }
    let approve = |run: &str| {
        node_inputs(
            "approve-step",
            json!({ "run_id": run, "label": "gate", "approved": true, "by": "ci", "comment": "looks good", "script_runner_url": url }),
        )
    };
    let approved = pair("approve-step", approve(&r1), approve(&r2));
    // The run waits for its gate file after the approval: running, whichever front end.
    assert_eq!(approved["status"], "running", "{approved}");
    for run in [&r1, &r2] {
        open_gate(&gates.join(run));
        let done = server.wait_run_terminal(run, WAIT);
        assert_eq!(done["run"]["status"], "completed", "{done}");
        assert_eq!(done["run"]["output"], json!({ "done": true }), "{done}");
    }

    // cancel-script-run: two more runs, cancelled while they await.
    let by_cli = cli_outputs("launch-script-run", &launch("cli-gated-2"));
    let by_worker = engine.run("launch-script-run", &launch("worker-gated-2")).outputs();
    let (r3, r4) = (str_of(&by_cli, "run_id").to_string(), str_of(&by_worker, "run_id").to_string());
    for run in [&r3, &r4] {
        server.wait_run(run, WAIT, |s| s == "awaiting");
    }
    let ids2 = [(r3.as_str(), "<run>"), (r4.as_str(), "<run>"), ("cli-gated-2", "<key>"), ("worker-gated-2", "<key>")];
    let (cancelled, _) = alike_outputs(
        &engine,
        "cancel-script-run",
        run_inputs("cancel-script-run", &r3),
        run_inputs("cancel-script-run", &r4),
        &ids2,
    );
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    // launch-script-run with wait: the finished run.
    let launch_wait = |key: &str| {
        node_inputs(
            "launch-script-run",
            json!({ "workflow_id": "progress", "idempotency_key": key, "wait": true, "script_runner_url": url }),
        )
    };
    let by_cli = cli_outputs("launch-script-run", &launch_wait("cli-progress"));
    let by_worker = engine.run("launch-script-run", &launch_wait("worker-progress")).outputs();
    let (r5, r6) = (str_of(&by_cli, "run_id").to_string(), str_of(&by_worker, "run_id").to_string());
    let ids3 =
        [(r5.as_str(), "<run>"), (r6.as_str(), "<run>"), ("cli-progress", "<key>"), ("worker-progress", "<key>")];
    assert_eq!(masked(&by_worker, &ids3), masked(&by_cli, &ids3), "worker {by_worker}\ncli {by_cli}");
    assert_eq!(by_worker["status"], "completed", "{by_worker}");
    assert_eq!(by_worker["run"]["output"], json!({ "n": 1 }), "{by_worker}");
    assert_eq!(by_worker["run"]["progress"], json!({ "current": 1, "total": 2, "message": "half" }), "{by_worker}");

    // Every run has ended: the read-only blocks give equal outputs.
    let got = same_outputs(&engine, "get-script-run", run_inputs("get-script-run", &r1));
    assert_eq!(got["status"], "completed", "{got}");
    assert_eq!(got["output"], json!({ "done": true }), "{got}");
    assert_eq!(crate::common::labels(&got), ["before", "gate"], "{got}");
    let got = same_outputs(&engine, "get-script-run", run_inputs("get-script-run", &r6));
    assert_eq!(got["journal"].as_array().unwrap().len(), 1, "{got}");
    same_outputs(&engine, "get-script-run", run_inputs("get-script-run", &r4));
    for given in [
        json!({ "script_runner_url": url }),
        json!({ "status": "completed", "script_runner_url": url }),
        json!({ "script_name": "gated", "limit": 2, "offset": 1, "script_runner_url": url }),
    ] {
        let listed = same_outputs(&engine, "list-script-runs", node_inputs("list-script-runs", given.clone()));
        assert!(listed["total"].as_u64().unwrap() >= 3, "{given}: {listed}");
    }
    // Cancelling a run that has ended returns it unchanged.
    let unchanged = same_outputs(&engine, "cancel-script-run", run_inputs("cancel-script-run", &r5));
    assert_eq!(unchanged["status"], "completed", "{unchanged}");
    assert_eq!(runs_total(&server), 6);
}

// =============================================================================================
// (2) The followed job's lines are the block's log
// =============================================================================================

/// A server whose `talk` script prints a line on each stream, waits for the gate file `$1`,
/// then prints one more on each.
fn talk_server() -> TestServer {
    Builder::new()
        .script(
            "talk",
            &format!(
                "echo out-one\necho err-one >&2\n{}\necho out-two\necho err-two >&2",
                wait_for_gate_word("\"$1\"")
            ),
        )
        .start()
}

#[test]
fn run_script_sync_under_the_worker_prints_the_jobs_lines_while_it_runs() {
    let server = talk_server();
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("sync-lines"));
    let gate = server.dir().join("go");
    let job = engine.job_id("run-script-sync");
    let mut worker = engine.spawn("run-script-sync", &job);
    let ready = engine.wait_ready(&mut worker, 1);
    let inputs = node_inputs(
        "run-script-sync",
        json!({ "script_id": "talk", "args": [gate.to_str().unwrap()], "script_runner_url": server.base }),
    );
    engine.send_inputs("run-script-sync", &job, &inputs);

    see_lines_while_running(&engine, &mut worker, "out-one", "err-one");
    open_gate(&gate);
    let out = engine.finish(worker, &ready);
    assert_eq!(out.stdout, "out-one\nout-two\n", "the job's stdout lines, once each, on the worker's stdout");
    assert_eq!(out.stderr, "err-one\nerr-two\n", "the job's stderr lines, once each, on the worker's stderr");
    let outputs = out.outputs();
    assert_eq!(outputs["stdout"], "out-one\nout-two\n", "{outputs}");
    assert_eq!(outputs["stderr"], "err-one\nerr-two\n", "{outputs}");
    assert_eq!(outputs["status"], "succeeded", "{outputs}");
}

#[test]
fn wait_job_under_the_worker_prints_the_jobs_lines_while_it_runs() {
    let server = talk_server();
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("wait-lines"));
    let gate = server.dir().join("go");
    let id = server.run_async("talk", &[gate.to_str().unwrap()]);
    let job = engine.job_id("wait-job");
    let mut worker = engine.spawn("wait-job", &job);
    let ready = engine.wait_ready(&mut worker, 1);
    let inputs = node_inputs(
        "wait-job",
        json!({ "job_id": id, "timeout_sec": 120, "poll_interval_ms": 50, "script_runner_url": server.base }),
    );
    engine.send_inputs("wait-job", &job, &inputs);

    see_lines_while_running(&engine, &mut worker, "out-one", "err-one");
    open_gate(&gate);
    let out = engine.finish(worker, &ready);
    assert_eq!(out.stdout, "out-one\nout-two\n", "the job's stdout lines, once each, on the worker's stdout");
    assert_eq!(out.stderr, "err-one\nerr-two\n", "the job's stderr lines, once each, on the worker's stderr");
    let outputs = out.outputs();
    assert_eq!(outputs["status"], "succeeded", "{outputs}");
    assert_eq!(outputs["job_id"], json!(id), "{outputs}");
}

/// Waits until the worker has printed the line `out` on its stdout and `err` on its stderr;
/// its block must not have finished meanwhile (the job waits for the test's gate).
fn see_lines_while_running(engine: &Engine, worker: &mut Worker, out: &str, err: &str) {
    let (stdout, stderr) = (Arc::clone(&worker.stdout), Arc::clone(&worker.stderr));
    let has_line = |buf: &Arc<Mutex<Vec<u8>>>, line: &str| {
        String::from_utf8_lossy(&buf.lock().unwrap()).lines().any(|l| l == line)
    };
    engine.wait_messages(worker, &format!("{out:?} on stdout and {err:?} on stderr"), WAIT, |messages| {
        assert!(
            !messages.iter().any(|r| r.kind() == "BlockFinished"),
            "the block finished while its job waits for the gate: {messages:?}"
        );
        (has_line(&stdout, out) && has_line(&stderr, err)).then_some(())
    });
}

// =============================================================================================
// (3) Progress
// =============================================================================================

#[test]
fn get_script_run_sends_the_runs_progress_as_a_percentage_before_it_finishes() {
    let server = Builder::new().workflows(json!({})).start();
    let gate = server.dir().join("go");
    let source = format!("script-runner step --progress 1/2 \"half\"\n{}\necho '{{}}'", wait_for_gate(&gate));
    let run = server.launch_bash(&source, json!({}));
    server.wait_run_body(&run, "progress 1/2", WAIT, |b| b["run"]["progress"]["current"] == json!(1));
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("get-progress"));

    let inputs = node_inputs("get-script-run", json!({ "run_id": run, "script_runner_url": server.base }));
    let out = engine.run("get-script-run", &inputs);
    assert_eq!(out.progress(), [50.0], "{:?}", out.messages);
    let kinds: Vec<&str> = out.messages.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["BlockReady", "BlockProgress", "BlockFinished"]);
    assert_eq!(out.outputs()["status"], "running");
    open_gate(&gate);
    server.wait_run_terminal(&run, WAIT);
}

#[test]
fn launch_script_run_with_wait_sends_progress_while_the_run_runs() {
    let server = Builder::new().workflows(json!({})).start();
    let gate = server.dir().join("go");
    let source = format!(
        "script-runner step --progress 1/2 \"half\"\n{}\nscript-runner step --progress 2/2 \"all\"\necho '{{\"fine\": true}}'",
        wait_for_gate(&gate)
    );
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("launch-progress"));
    let job = engine.job_id("launch-script-run");
    let mut worker = engine.spawn("launch-script-run", &job);
    let ready = engine.wait_ready(&mut worker, 1);
    let inputs = node_inputs(
        "launch-script-run",
        json!({ "source": source, "interpreter": "bash", "wait": true, "script_runner_url": server.base }),
    );
    engine.send_inputs("launch-script-run", &job, &inputs);

    // 50 % while the run waits for the gate: the progress bar moves before the block ends.
    engine.wait_messages(&mut worker, "BlockProgress 50", WAIT, |messages| {
        assert!(!messages.iter().any(|r| r.kind() == "BlockFinished"), "finished before the gate opened: {messages:?}");
        messages
            .iter()
            .any(|r| r.kind() == "BlockProgress" && r.message["progress"].as_f64() == Some(50.0))
            .then_some(())
    });
    open_gate(&gate);
    let out = engine.finish(worker, &ready);
    assert_eq!(out.progress(), [50.0, 100.0], "{:?}", out.messages);
    let outputs = out.outputs();
    assert_eq!(outputs["status"], "completed", "{outputs}");
    assert_eq!(outputs["run"]["output"], json!({ "fine": true }), "{outputs}");
}

// =============================================================================================
// (4) Errors end in BlockFinished with the error --inputs prints
// =============================================================================================

/// Runs a block that fails through both front ends with the same inputs: the worker ends with
/// `BlockFinished {result: null, error}`, exits 0, prints the error on its stderr as the CLI
/// does, and its error is the CLI's (`script-runner block <name>: <error>` there,
/// `<name>: <error>` here). Returns the worker's error.
fn same_error(name: &str, inputs: Value, cause: &str) -> String {
    let by_cli = cli(name, &inputs);
    assert_ne!(by_cli.code, 0, "--inputs must fail: {}", by_cli.stdout);
    assert_eq!(by_cli.stdout, "", "no outputs on failure");
    let cli_line = by_cli.stderr.trim_end().to_string();
    assert!(!cli_line.contains('\n'), "one line: {cli_line}");

    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session(&format!("error-{name}")));
    let out = engine.run(name, &inputs);
    let error = out.error();
    assert!(error.contains(cause), "the error must name the cause ({cause:?}): {error}");
    assert!(cli_line.contains(cause), "{cli_line}");
    assert!(
        out.stderr.lines().any(|l| l == cli_line),
        "the worker prints the error on its stderr as --inputs does ({cli_line:?}): {:?}",
        out.stderr
    );
    assert_eq!(format!("script-runner block {error}"), cli_line, "the worker's error is the CLI's");
    assert_eq!(out.stdout, "", "{}", out.stdout);
    error
}

#[test]
fn a_mistyped_input_ends_the_block_with_an_error_naming_the_input() {
    let server = Builder::new().script("echo", "echo hi").start();
    let inputs = node_inputs("run-script-async", json!({ "script_id": 3, "script_runner_url": server.base }));
    let error = same_error("run-script-async", inputs, "input script_id");
    assert!(error.starts_with("run-script-async: "), "{error}");
    assert_eq!(jobs_total(&server), 0, "nothing started");
}

#[test]
fn a_missing_required_input_ends_the_block_with_an_error_naming_the_input() {
    let server = Builder::new().script("echo", "echo hi").start();
    let mut inputs = node_inputs("run-script-sync", json!({ "script_id": "echo", "script_runner_url": server.base }));
    inputs.as_object_mut().unwrap().remove("script_id");
    same_error("run-script-sync", inputs, "input script_id: required");
    assert_eq!(jobs_total(&server), 0, "nothing started");
}

#[test]
fn an_unknown_input_handle_ends_the_block_with_a_did_you_mean() {
    let server = Builder::new().script("echo", "echo hi").start();
    let inputs = json!({ "jobid": "job_1", "script_runner_url": server.base, "token": null });
    same_error("get-job-status", inputs, "input jobid: no such input (did you mean \"job_id\"?)");
}

#[test]
fn an_unknown_script_ends_the_block_with_the_servers_http_400() {
    let server = Builder::new().script("echo", "echo hi").start();
    let inputs =
        node_inputs("run-script-sync", json!({ "script_id": "no-such-script", "script_runner_url": server.base }));
    same_error("run-script-sync", inputs, "HTTP 400 SCRIPT_NOT_FOUND");
    assert_eq!(jobs_total(&server), 0);
}

#[test]
fn an_unreachable_server_ends_the_block_with_cannot_reach() {
    // Nothing listens there, and no other test's server or connection can take it meanwhile.
    let url = format!("http://127.0.0.1:{}", unused_port());
    let inputs = node_inputs("run-script-async", json!({ "script_id": "echo", "script_runner_url": url }));
    same_error("run-script-async", inputs, &format!("cannot reach script-runner at {url}"));
}

#[test]
fn a_server_that_does_not_answer_in_time_ends_the_block_with_did_not_answer() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let inputs =
        node_inputs("run-script-sync", json!({ "script_id": "x", "timeout_sec": 1, "script_runner_url": url }));
    same_error("run-script-sync", inputs, &format!("script-runner at {url} did not answer within 1 s"));
}

#[test]
fn a_malformed_answer_ends_the_block_with_malformed_response() {
    use std::io::Write;
    // Answers 200 with a body that is not JSON.
    let liar = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", liar.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in liar.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot json!");
        }
    });
    let inputs = node_inputs("list-scripts", json!({ "script_runner_url": url }));
    same_error("list-scripts", inputs, "malformed response from script-runner");
}

#[test]
fn an_unknown_block_name_ends_with_unknown_block() {
    let error = same_error("no-such-block", json!({}), "unknown block");
    assert!(error.contains("no-such-block"), "{error}");
}

// =============================================================================================
// (5) A job id the engine started twice starts one server job
// =============================================================================================

/// Starts two workers of one engine job, both ready before the engine sends the inputs once
/// (both are subscribed to the job's inputs topic, as after the engine's re-spawn), calls
/// `meanwhile` with both, waits for both to finish and exit; returns both `BlockFinished`
/// results (both must have succeeded).
fn twice(engine: &Engine, name: &str, inputs: &Value, meanwhile: impl FnOnce(&mut Worker, &mut Worker)) -> Vec<Value> {
    let job = engine.job_id(name);
    let mut first = engine.spawn(name, &job);
    engine.wait_ready(&mut first, 1);
    let mut second = engine.spawn(name, &job);
    engine.wait_ready(&mut second, 2);
    engine.send_inputs(name, &job, inputs);
    meanwhile(&mut first, &mut second);
    engine.wait_messages(&mut first, "two BlockFinished", FINISH_WAIT, |messages| {
        (messages.iter().filter(|r| r.kind() == "BlockFinished").count() == 2).then_some(())
    });
    for worker in [&mut first, &mut second] {
        let status = worker.wait_exit(EXIT_WAIT);
        assert!(status.success(), "{status:?}: {}", worker.stderr());
    }
    let finished: Vec<Value> =
        engine.messages(&job).into_iter().filter(|r| r.kind() == "BlockFinished").map(|r| r.message).collect();
    assert_eq!(finished.len(), 2, "one BlockFinished per process: {finished:?}");
    for f in &finished {
        assert!(f["error"].is_null(), "{f}\n{}\n{}", first.stderr(), second.stderr());
    }
    finished.into_iter().map(|f| f["result"].clone()).collect()
}

/// A server whose `once` script appends a line to `<dir>/starts` per start and prints its pid;
/// `gated`: then waits for the gate file `<dir>/go`.
fn once_server(gated: bool) -> TestServer {
    let b = Builder::new();
    let starts = b.dir().join("starts");
    let gate = if gated { wait_for_gate(&b.dir().join("go")) } else { String::new() };
    b.script("once", &format!("echo start >> '{}'\necho \"pid $$\"\n{gate}", starts.display())).start()
}

#[test]
fn run_script_async_started_twice_for_one_engine_job_starts_one_server_job() {
    let server = once_server(false);
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("async-twice"));
    let inputs = node_inputs("run-script-async", json!({ "script_id": "once", "script_runner_url": server.base }));
    let results = twice(&engine, "run-script-async", &inputs, |_, _| {});
    let (a, b) = (&results[0], &results[1]);
    assert_eq!(a["job_id"], b["job_id"], "both processes give the one job: {a} {b}");
    let id = str_of(a, "job_id");
    server.wait_terminal(id, WAIT);
    assert_eq!(crate::common::lines(&server.dir().join("starts")), ["start"], "the script started once");
    assert_eq!(jobs_total(&server), 1);
}

#[test]
fn run_script_sync_started_twice_for_one_engine_job_starts_one_server_job() {
    let server = once_server(true);
    let gate = server.dir().join("go");
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("sync-twice"));
    let inputs = node_inputs("run-script-sync", json!({ "script_id": "once", "script_runner_url": server.base }));
    let mut stdouts = Vec::new();
    let results = twice(&engine, "run-script-sync", &inputs, |first, second| {
        // Both follow the one job while it waits for the gate.
        for worker in [first, second] {
            let out = Arc::clone(&worker.stdout);
            engine.wait_messages(worker, "the job's pid line on stdout", WAIT, |_| {
                String::from_utf8_lossy(&out.lock().unwrap()).contains("pid ").then_some(())
            });
            stdouts.push(out);
        }
        open_gate(&gate);
    });
    assert_eq!(results[0], results[1], "both give the one job's outputs");
    let outputs = &results[0];
    assert_eq!(outputs["status"], "succeeded", "{outputs}");
    let stdout = outputs["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("pid "), "{outputs}");
    for out in &stdouts {
        assert_eq!(String::from_utf8_lossy(&out.lock().unwrap()), stdout, "each worker shows the one job's lines");
    }
    assert_eq!(crate::common::lines(&server.dir().join("starts")), ["start"], "the script started once");
    assert_eq!(jobs_total(&server), 1);
}

#[test]
fn launch_script_run_started_twice_for_one_engine_job_starts_one_run() {
    let server = Builder::new().workflows(json!({})).start();
    let starts = server.dir().join("starts");
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("launch-twice"));
    let source = format!("echo start >> '{}'\necho '{{}}'", starts.display());
    let inputs = node_inputs(
        "launch-script-run",
        json!({ "source": source, "interpreter": "bash", "script_runner_url": server.base }),
    );
    let results = twice(&engine, "launch-script-run", &inputs, |_, _| {});
    let (a, b) = (&results[0], &results[1]);
    assert_eq!(a["run_id"], b["run_id"], "both processes give the one run: {a} {b}");
    server.wait_run_terminal(str_of(a, "run_id"), WAIT);
    assert_eq!(crate::common::lines(&starts), ["start"], "the workflow ran once");
    assert_eq!(runs_total(&server), 1);
}

#[test]
fn a_worker_started_again_after_the_first_finished_gives_the_first_job() {
    let server = once_server(false);
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("async-again"));
    let inputs = node_inputs("run-script-async", json!({ "script_id": "once", "script_runner_url": server.base }));
    let job = engine.job_id("run-script-async");
    let mut results = Vec::new();
    for _ in 0..2 {
        let mut worker = engine.spawn("run-script-async", &job);
        engine.wait_ready(&mut worker, results.len() + 1);
        engine.send_inputs("run-script-async", &job, &inputs);
        engine.wait_messages(&mut worker, "BlockFinished", FINISH_WAIT, |messages| {
            (messages.iter().filter(|r| r.kind() == "BlockFinished").count() == results.len() + 1).then_some(())
        });
        assert!(worker.wait_exit(EXIT_WAIT).success(), "{}", worker.stderr());
        let last = engine.messages(&job).into_iter().rfind(|r| r.kind() == "BlockFinished").unwrap();
        results.push(last.message["result"].clone());
    }
    assert_eq!(results[0]["job_id"], results[1]["job_id"], "{results:?}");
    server.wait_terminal(str_of(&results[0], "job_id"), WAIT);
    assert_eq!(crate::common::lines(&server.dir().join("starts")), ["start"]);
    assert_eq!(jobs_total(&server), 1);
}

// =============================================================================================
// (6, 7) The broker
// =============================================================================================

#[test]
fn a_worker_whose_broker_is_down_exits_non_zero_with_one_line_naming_it() {
    let server = Builder::new().script("echo", "echo hi").start();
    // Nothing listens there.
    let address = format!("127.0.0.1:{}", unused_port());
    let started = Instant::now();
    let mut worker = Worker::spawn(&address, "down", "run-script-async", "job-1");
    let status = worker.wait_exit(Duration::from_secs(60));
    let took = started.elapsed();
    assert!(!status.success(), "{status:?}");
    assert!(took < BROKER_DOWN_BOUND, "gave up after {took:?}");
    let stderr = worker.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    let expected = format!("script-runner block run-script-async: cannot reach the MQTT broker at {address}");
    assert!(lines[0].starts_with(&expected), "{:?} should start with {expected:?}", lines[0]);
    assert_eq!(worker.stdout(), "");
    assert_eq!(jobs_total(&server), 0, "nothing started");
    eprintln!("broker down: exit {status:?} after {took:?}: {}", lines[0]);
}

#[test]
fn a_worker_that_has_not_been_sent_inputs_keeps_waiting() {
    let server = Builder::new().script("echo", "echo hi").start();
    let broker = Broker::start();
    let engine = Engine::connect(&broker, &session("no-inputs"));
    let job = engine.job_id("run-script-async");
    let mut worker = engine.spawn("run-script-async", &job);
    engine.wait_ready(&mut worker, 1);
    std::thread::sleep(Duration::from_secs(2));
    assert!(worker.try_exit().is_none() && alive(worker.pid()), "exited without inputs: {}", worker.stderr());
    let kinds: Vec<String> = engine.messages(&job).iter().map(|r| r.kind().to_string()).collect();
    assert_eq!(kinds, ["BlockReady"]);
    worker.child.kill().unwrap();
    let status = worker.wait_exit(WAIT);
    assert!(!status.success());
    assert_eq!(jobs_total(&server), 0, "nothing started");
    assert!(engine.all_messages().iter().all(|m| m["type"] == "BlockReady"), "{:?}", engine.all_messages());
}
