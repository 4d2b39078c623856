//! The OOMOL worker front end: a block run as OOMOL's engine (oocana) runs a `rust` executor
//! block, `script-runner block <name> --address <host:port> --session-id <S> --job-id <J>`.
//!
//! The worker connects to the engine's MQTT broker, subscribes to `inputs/<S>/<J>`, says
//! `BlockReady` on `session/<S>`, takes the one `BlockInputs` message, runs the block through
//! the same [`crate::run_block_in`] as the `--inputs` front end (same defaults, same checks,
//! same messages), and ends with `BlockFinished`: its outputs as `result`, or the error. Every
//! path ends with `BlockFinished` once inputs have arrived, a panic included; a broker that
//! cannot be reached ends the process non-zero within [`CONNECT_BOUND`].
//!
//! Started twice for one job (the engine re-spawns a block that was slow to say ready), the
//! work is started once: the work a block starts on the server is keyed by
//! `oocana:<session>:<job>` (see [`idempotency_key`]), so the second process gets the first
//! one's job or run.
//!
//! While the block runs, the lines of the job it follows are printed (stdout to stdout, stderr
//! to stderr: the engine shows them as the block's log) and a workflow run's progress is sent as
//! `BlockProgress`.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Client, ConnectionError, Event, Incoming, MqttOptions, Outgoing, QoS, RecvTimeoutError};
use serde_json::{json, Map, Value};

use crate::{BlockError, Context, Report};

/// Longest wait for the broker to accept the connection and the subscription.
pub const CONNECT_BOUND: Duration = Duration::from_secs(10);
/// Longest wait for the broker to acknowledge the last messages before the process ends.
pub const FLUSH_BOUND: Duration = Duration::from_secs(10);
/// How long a lost broker connection is retried before the worker gives up.
pub const RECONNECT_BOUND: Duration = Duration::from_secs(30);
/// The engine's broker port when an address names none (Studio's and the CLI's default).
pub const DEFAULT_BROKER_PORT: u16 = 47688;
/// Largest packet either way (the engine's limit).
const MAX_PACKET: usize = 256 * 1024 * 1024;
/// How often the event loop looks at the block's thread.
const TICK: Duration = Duration::from_millis(50);

/// Where a worker finds its engine: the three arguments the engine appends.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The broker, `host:port`.
    pub address: String,
    /// The engine's session id.
    pub session_id: String,
    /// The engine's job id of this block run.
    pub job_id: String,
}

/// Why a worker ended without telling the engine the block finished.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// `--address` is not `host:port`.
    #[error("--address {0:?} is not host:port")]
    BadAddress(String),
    /// The broker refused or did not answer.
    #[error("cannot reach the MQTT broker at {address}: {message}")]
    Unreachable {
        /// The broker address.
        address: String,
        /// Why.
        message: String,
    },
    /// The broker connection was lost and could not be made again.
    #[error("lost the MQTT broker at {address}: {message}")]
    Lost {
        /// The broker address.
        address: String,
        /// Why.
        message: String,
    },
}

/// The idempotency key of the work one engine job starts: the same for every process the
/// engine starts for that job, different for every other job.
pub fn idempotency_key(engine: &Engine) -> String {
    format!("oocana:{}:{}", engine.session_id, engine.job_id)
}

/// Runs block `name` as the engine's worker for one job, until it has told the engine the
/// block finished (`Ok`) or cannot reach the engine's broker (`Err`).
pub fn serve(name: &str, engine: &Engine) -> Result<(), WorkerError> {
    let (host, port) = broker_address(&engine.address)?;
    // A client id of its own per process: two processes of one job (a re-spawn) must not take
    // each other's connection over (the broker drops a client whose id connects again).
    let client_id = format!("oocana-worker-{}-{}", engine.job_id, std::process::id());
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    options.set_clean_session(true);
    let (client, mut connection) = Client::new(options, 64);
    // Small messages go out at once: with Nagle's algorithm and the broker's delayed ACK, a
    // message can wait tens of milliseconds.
    let mut network = connection.eventloop.network_options();
    network.set_tcp_nodelay(true);
    connection.eventloop.set_network_options(network);
    let outbox = Arc::new(Outbox {
        client,
        topic: format!("session/{}", engine.session_id),
        engine: engine.clone(),
        sent: AtomicU64::new(0),
        finished: AtomicBool::new(false),
    });
    let inputs_topic = format!("inputs/{}/{}", engine.session_id, engine.job_id);
    let unreachable = |message: String| WorkerError::Unreachable { address: engine.address.clone(), message };
    outbox.client.subscribe(inputs_topic.as_str(), QoS::AtLeastOnce).map_err(|e| unreachable(e.to_string()))?;

    // Connected and subscribed before saying ready, so the inputs cannot be missed.
    let deadline = Instant::now() + CONNECT_BOUND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unreachable(connection_message(&e))),
            Err(RecvTimeoutError::Timeout) => {
                return Err(unreachable(format!("no answer within {} s", CONNECT_BOUND.as_secs())))
            }
            Err(RecvTimeoutError::Disconnected) => return Err(unreachable("the client closed".into())),
        }
    }
    outbox.send("BlockReady", Map::new());

    let mut started = false;
    let mut acked: u64 = 0;
    let mut lost_since: Option<Instant> = None;
    let mut flush_deadline: Option<Instant> = None;
    loop {
        // `finished` is set before BlockFinished is counted in `sent`: once it is set and every
        // message sent is acknowledged, the engine has everything.
        if outbox.finished.load(Ordering::Acquire) {
            if acked >= outbox.sent.load(Ordering::Acquire) {
                break;
            }
            let deadline = *flush_deadline.get_or_insert_with(|| Instant::now() + FLUSH_BOUND);
            if Instant::now() >= deadline {
                eprintln!("script-runner block {name}: the broker did not acknowledge every message in time");
                break;
            }
        }
        match connection.recv_timeout(TICK) {
            Ok(Ok(event)) => {
                lost_since = None;
                match event {
                    Event::Incoming(Incoming::Publish(publish)) if publish.topic == inputs_topic && !started => {
                        let Some(inputs) = block_inputs(&publish.payload, engine) else { continue };
                        started = true;
                        let (name, outbox) = (name.to_string(), Arc::clone(&outbox));
                        // The block's thread sends BlockFinished itself, so the engine hears of
                        // the end at once; this loop drives the connection meanwhile.
                        std::thread::spawn(move || outbox.finish(run(&name, &inputs, &outbox)));
                    }
                    Event::Incoming(Incoming::PubAck(_)) => acked += 1,
                    // A connection made again: the broker forgot the subscription.
                    Event::Incoming(Incoming::ConnAck(_)) if !started => {
                        let _ = outbox.client.try_subscribe(inputs_topic.as_str(), QoS::AtLeastOnce);
                    }
                    _ => {}
                }
            }
            Ok(Err(e)) => {
                // rumqttc connects again on the next poll; give up after a while.
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= RECONNECT_BOUND {
                    return Err(WorkerError::Lost { address: engine.address.clone(), message: connection_message(&e) });
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = outbox.client.disconnect();
    // Let the disconnect go out (bounded).
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match connection.recv_timeout(TICK) {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => break,
            _ => {}
        }
    }
    Ok(())
}

/// Runs the block on this thread; a panic becomes an error message.
fn run(name: &str, inputs: &Map<String, Value>, outbox: &Outbox) -> Result<Map<String, Value>, String> {
    let context = Context { idempotency_key: Some(idempotency_key(&outbox.engine)), report: outbox };
    caught(name, || crate::run_block_in(name, inputs, &context))
}

/// The outcome of `block` as the engine is told it: the outputs, or the error's text, a panic
/// included (the engine would otherwise wait for the block forever).
fn caught(name: &str, block: impl FnOnce() -> crate::BlockResult) -> Result<Map<String, Value>, String> {
    match catch_unwind(AssertUnwindSafe(block)) {
        Ok(Ok(outputs)) => Ok(outputs),
        Ok(Err(e)) => Err(block_error(name, &e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(format!("{name}: the block panicked: {what}"))
        }
    }
}

/// The error text the engine shows (the `--inputs` front end prints the same after its
/// `script-runner block ` prefix).
fn block_error(name: &str, e: &BlockError) -> String {
    format!("{name}: {e}")
}

/// The `inputs` of a `BlockInputs` message for this job; `None` for any other message.
fn block_inputs(payload: &[u8], engine: &Engine) -> Option<Map<String, Value>> {
    let message: Value = serde_json::from_slice(payload).ok()?;
    if message["type"] != "BlockInputs" || message["job_id"].as_str().is_some_and(|j| j != engine.job_id) {
        return None;
    }
    match message.get("inputs") {
        Some(Value::Object(inputs)) => Some(inputs.clone()),
        _ => Some(Map::new()),
    }
}

/// `host:port`, the port defaulting to the engine's.
fn broker_address(address: &str) -> Result<(String, u16), WorkerError> {
    let bad = || WorkerError::BadAddress(address.to_string());
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| bad())?),
        None => (address, DEFAULT_BROKER_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

fn connection_message(e: &ConnectionError) -> String {
    match e {
        ConnectionError::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// Messages to the engine, and the block's [`Report`]: lines are printed (the engine shows a
/// worker's output lines as the block's log), progress is sent as `BlockProgress`.
struct Outbox {
    client: Client,
    topic: String,
    engine: Engine,
    /// Messages handed to the client (each is acknowledged once: QoS 1).
    sent: AtomicU64,
    /// Set just before BlockFinished is sent.
    finished: AtomicBool,
}

impl Outbox {
    /// Tells the engine the block finished, with its outputs or its error.
    fn finish(&self, result: Result<Map<String, Value>, String>) {
        let mut message = Map::new();
        match result {
            Ok(outputs) => {
                message.insert("result".into(), Value::Object(outputs));
                message.insert("error".into(), Value::Null);
            }
            Err(error) => {
                let _ = writeln!(std::io::stderr(), "script-runner block {error}");
                message.insert("result".into(), Value::Null);
                message.insert("error".into(), json!(error));
            }
        }
        // Counted in `sent` before `finished` is set: the event loop must never see the block
        // finished with every message acknowledged while BlockFinished is still unsent.
        self.send_then("BlockFinished", message, || self.finished.store(true, Ordering::Release));
    }

    /// Sends one message of `kind` with the session and job ids; a failure is printed (the
    /// client only fails once the connection is closed for good).
    fn send(&self, kind: &str, fields: Map<String, Value>) {
        self.send_then(kind, fields, || {});
    }

    /// [`Outbox::send`], calling `counted` once the message is counted and before it is handed
    /// to the client.
    fn send_then(&self, kind: &str, mut fields: Map<String, Value>, counted: impl FnOnce()) {
        fields.insert("type".into(), json!(kind));
        fields.insert("session_id".into(), json!(self.engine.session_id));
        fields.insert("job_id".into(), json!(self.engine.job_id));
        let payload = Value::Object(fields).to_string();
        self.sent.fetch_add(1, Ordering::AcqRel);
        counted();
        if let Err(e) = self.client.publish(self.topic.as_str(), QoS::AtLeastOnce, false, payload) {
            self.sent.fetch_sub(1, Ordering::AcqRel);
            eprintln!("script-runner: {kind} not sent: {e}");
        }
    }
}

impl Report for Outbox {
    fn follows_logs(&self) -> bool {
        true
    }

    fn log(&self, stream: &str, line: &str) {
        // A write error (the engine closed the pipe) must not panic the block: the lines are
        // only a view of the job's log.
        let _ = if stream == "stderr" {
            writeln!(std::io::stderr(), "{line}")
        } else {
            writeln!(std::io::stdout(), "{line}")
        };
    }

    fn progress(&self, percent: f64) {
        let mut fields = Map::new();
        fields.insert("progress".into(), json!(percent));
        self.send("BlockProgress", fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_block_ends_with_an_error_naming_it() {
        let outcome = caught("wait-job", || panic!("boom {}", 1));
        assert_eq!(outcome, Err("wait-job: the block panicked: boom 1".to_string()));
        let outcome = caught("get-job-status", || Err(BlockError::Failed("nope".into())));
        assert_eq!(outcome, Err("get-job-status: nope".to_string()));
        let outcome = caught("x", || Err(BlockError::UnknownBlock("x".into())));
        assert_eq!(outcome, Err("x: unknown block \"x\"".to_string()));
    }

    #[test]
    fn broker_addresses() {
        assert_eq!(broker_address("127.0.0.1:1883").ok(), Some(("127.0.0.1".into(), 1883)));
        assert_eq!(broker_address("localhost").ok(), Some(("localhost".into(), DEFAULT_BROKER_PORT)));
        assert_eq!(broker_address("[::1]:99").ok(), Some(("::1".into(), 99)));
        assert!(broker_address("host:port").is_err());
        assert!(broker_address(":1").is_err());
    }
}
