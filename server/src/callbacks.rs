//! Completion callbacks: an async job (`POST /run`) or a workflow run (`POST
//! /api/script-runs`) started with `callback: {url, events?}` has its final state POSTed to
//! `url`, signed, at least once.
//!
//! Durable through an outbox: the callback's row is written in the transaction that inserts its
//! job or run (`WriteOp::WithCallback`), and [`Deliverer`] delivers the `pending` rows whose
//! owner has ended, so a crash or restart at any point only delays a callback. Delivery runs on its own
//! blocking threads (at most [`CONCURRENCY`] requests at once) and never on a job's path, so a
//! slow receiver slows no job. The receiver must be idempotent: a delivery whose answer was
//! lost (a crash between the POST and the commit of `delivered`) is made again.
//!
//! Only hosts in `callbacks.allowedHosts` are called: the URL's host is checked when the job is
//! asked for ([`check`]), and again at each delivery after DNS resolution ([`resolve`]: every
//! address must be loopback or an allowed address), so a name that resolves elsewhere is never
//! contacted. Redirects are not followed (a 3xx is a failed attempt).
//!
//! In a cluster every node runs a deliverer over the one outbox; a node takes a callback for
//! one attempt first ([`Store::claim_callback`]), so two nodes never POST it at once.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::config::CallbacksConfig;
use crate::db::{Store, WriteOp};
use crate::jobs::model::{Job, JobStatus};
use crate::runs::model::{Run, RunStatus};
use crate::time::now_ms;

/// Deliveries in flight at once (each holds a blocking thread for up to [`TIMEOUT`]).
pub const CONCURRENCY: usize = 4;
/// How long one attempt may take (connect, send, answer).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts kept per callback for `GET .../callbacks` (the oldest are dropped).
pub const KEPT_ATTEMPTS: usize = 20;
/// How long a node holds a callback it is trying before another node may try it (a node that
/// died mid-attempt): well past one attempt's [`TIMEOUT`].
const LEASE_MS: i64 = 60 * 1000;
/// The longest wait between two attempts.
const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;
/// The events a callback may ask for.
pub const EVENTS: [&str; 3] = ["completed", "failed", "status"];
/// The events a callback gets when the request names none.
pub const DEFAULT_EVENTS: [&str; 2] = ["completed", "failed"];
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Script-Runner-Signature";
/// The header naming what a delivery reports: `completed`, `failed` or `status`.
pub const EVENT_HEADER: &str = "X-Script-Runner-Event";
/// The event of every status change short of the end.
const STATUS: &str = "status";

/// What one attempt delivers.
enum Delivery {
    /// A status change: its number (a run's event number; 1 for a job's start), the owner as
    /// it was then (JSON), and when it happened (unix ms).
    Status { seq: i64, body: Vec<u8>, at: i64 },
    /// The end: `completed` or `failed`.
    End(&'static str),
}

/// A job as it was when it started: running, no end, no output yet (a `status` delivery of a
/// job's start made after the job has moved on).
fn as_started(job: &Job) -> Job {
    let mut started = job.clone();
    started.status = JobStatus::Running;
    (started.code, started.error, started.ended_at, started.duration_ms) = (None, None, None, None);
    for info in [&mut started.stdout, &mut started.stderr] {
        (info.size, info.truncated, info.lines, info.error) = (0, false, Some(0), None);
        info.preview.clear();
    }
    started
}

/// Failed attempts since the last success: what the backoff of the next one counts.
fn failures_in_a_row(callback: &Callback) -> u32 {
    let failed = callback.attempt_log.iter().rev().take_while(|a| a.error.is_some()).count();
    u32::try_from(failed).unwrap_or(u32::MAX)
}

/// A callback as stored: where it goes and how its delivery went.
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    /// `cb_<owner id>`: one callback per job or run.
    pub id: String,
    /// `job` or `run`.
    pub owner_kind: String,
    /// The job's or run's id.
    pub owner_id: String,
    /// Where the final state is POSTed.
    pub url: String,
    /// The final outcomes that are delivered (`completed`, `failed`).
    pub events: Vec<String>,
    /// `pending`, `delivered`, `failed` (gave up after `maxAgeSec`), `skipped` (the job's
    /// outcome is not one of `events`).
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (unix ms); meaningful while `pending`.
    pub next_attempt_at: i64,
    /// The HTTP status of the last attempt, if it got one.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// The last [`KEPT_ATTEMPTS`] attempts, oldest first.
    pub attempt_log: Vec<Attempt>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the successful attempt.
    pub delivered_at: Option<i64>,
    /// `status` callbacks: how far the owner's status changes were delivered (a run: the number
    /// of its last event delivered or passed; a job: 1 once its start was).
    pub status_seq: i64,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// When it started (unix ms).
    pub at: i64,
    /// The answer's HTTP status, if one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed without a 2xx, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
    /// What it delivered: `completed`, `failed` or `status` (absent in rows written before
    /// `status` callbacks existed: those were all the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// A callback a request asked for, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The URL, http or https.
    pub url: String,
    /// The events asked for (all of [`EVENTS`] when the request named none).
    pub events: Vec<String>,
}

impl Target {
    /// The outbox row for `job_id`'s callback, due as soon as the job ends.
    pub fn for_job(&self, job_id: &str) -> Callback {
        self.for_owner("job", job_id)
    }

    /// The outbox row for `run_id`'s callback, due as soon as the run ends.
    pub fn for_run(&self, run_id: &str) -> Callback {
        self.for_owner("run", run_id)
    }

    fn for_owner(&self, kind: &str, owner_id: &str) -> Callback {
        let now = now_ms();
        Callback {
            id: format!("cb_{owner_id}"),
            owner_kind: kind.into(),
            owner_id: owner_id.to_string(),
            url: self.url.clone(),
            events: self.events.clone(),
            state: "pending".into(),
            attempts: 0,
            next_attempt_at: now,
            last_status: None,
            last_error: None,
            attempt_log: Vec::new(),
            created_at: now,
            delivered_at: None,
            status_seq: 0,
        }
    }
}

/// Checks a request's `callback` (its `url` and `events`) without any network access: a secret
/// is configured, the URL is http (this build has no TLS client) and its host is in `callbacks.allowedHosts`. The message
/// of the error says which rule it broke.
pub fn check(config: &CallbacksConfig, url: &str, events: Option<Vec<String>>) -> Result<Target, String> {
    if config.secret.is_none() {
        return Err("callbacks are disabled: set callbacks.secret in config.json to sign them".into());
    }
    if url.starts_with("https://") {
        // The server's HTTP client is built without TLS: an https callback could never succeed.
        return Err(format!("callback url {url:?}: https is not supported (the receiver is on an allowed, usually loopback, host: use http)"));
    }
    let host = host_of(url).ok_or_else(|| format!("callback url {url:?} is not an http URL with a host"))?;
    if !host_allowed(config, &host) {
        return Err(format!("callback host {host:?} is not in callbacks.allowedHosts"));
    }
    let events = match events {
        None => DEFAULT_EVENTS.iter().map(|e| e.to_string()).collect(),
        Some(events) => {
            if events.is_empty() {
                return Err("callback.events must name at least one of completed, failed, status".into());
            }
            if let Some(bad) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
                return Err(format!("callback event {bad:?} is not one of completed, failed, status"));
            }
            let mut unique: Vec<String> = Vec::new();
            for event in events {
                if !unique.contains(&event) {
                    unique.push(event);
                }
            }
            unique
        }
    };
    Ok(Target { url: url.to_string(), events })
}

/// The host of an http(s) URL, lower case, without brackets or port; `None` when the URL is
/// not one (or carries user info, which could hide the host from a reader).
fn host_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let host =
        if let Some(v6) = authority.strip_prefix('[') { v6.split(']').next()? } else { authority.split(':').next()? };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn host_allowed(config: &CallbacksConfig, host: &str) -> bool {
    config.allowed_hosts.iter().any(|h| h.trim_matches(['[', ']']).eq_ignore_ascii_case(host))
}

/// The addresses a callback may be sent to: `url`'s host resolved, each address loopback or
/// written in `callbacks.allowedHosts`; an error when the host is not allowed or any address is
/// neither (a name that resolves elsewhere is never called).
pub fn resolve(config: &CallbacksConfig, url: &str) -> Result<Vec<SocketAddr>, String> {
    let host = host_of(url).ok_or_else(|| format!("not an http(s) URL: {url}"))?;
    if !host_allowed(config, &host) {
        return Err(format!("host {host} is not in callbacks.allowedHosts"));
    }
    let default_port = if url.starts_with("https://") { 443 } else { 80 };
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let port = authority
        .rsplit_once(':')
        .filter(|(h, _)| !h.ends_with(':') && (!authority.starts_with('[') || h.ends_with(']')))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(default_port);
    let addrs: Vec<SocketAddr> =
        (host.as_str(), port).to_socket_addrs().map_err(|e| format!("resolving {host}: {e}"))?.collect();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    let allowed_ips: Vec<IpAddr> =
        config.allowed_hosts.iter().filter_map(|h| h.trim_matches(['[', ']']).parse().ok()).collect();
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback() && !allowed_ips.contains(&a.ip())) {
        return Err(format!("{host} resolves to {}, which is not loopback nor in callbacks.allowedHosts", bad.ip()));
    }
    Ok(addrs)
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn sign(secret: &[u8], unix: i64, body: &[u8]) -> String {
    let mut message = format!("{unix}.").into_bytes();
    message.extend_from_slice(body);
    format!("t={unix},v1={}", hex(&hmac_sha256(secret, &message)))
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else { return [0; 32] };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The wait before attempt `attempts + 1`: 1 s, 2 s, 4 s, … capped at 5 min, plus up to a
/// quarter more of jitter so receivers that failed together are not hit together.
pub fn backoff_ms(attempts: u32) -> i64 {
    let base = 1000_i64.saturating_mul(1_i64 << attempts.saturating_sub(1).min(20)).min(MAX_BACKOFF_MS);
    let mut r = [0u8; 4];
    let jitter = match getrandom::fill(&mut r) {
        Ok(()) => i64::from(u32::from_le_bytes(r)) % (base / 4 + 1),
        Err(_) => 0,
    };
    base + jitter
}

/// Maps a job's final status to a callback event: `succeeded` is `completed`, every other end
/// (`failed`, `timed_out`, `canceled`) is `failed`; `None` while it has not ended.
pub fn event_of(status: JobStatus) -> Option<&'static str> {
    match status {
        JobStatus::Succeeded => Some("completed"),
        JobStatus::Failed | JobStatus::TimedOut | JobStatus::Canceled => Some("failed"),
        JobStatus::Queued | JobStatus::Running => None,
    }
}

/// Maps a run's final status to a callback event: `completed` is `completed`, every other end
/// (`failed`, `cancelled`, `aborted_limit`) is `failed`; `None` while it has not ended.
pub fn run_event_of(status: RunStatus) -> Option<&'static str> {
    match status {
        RunStatus::Completed => Some("completed"),
        s if s.is_terminal() => Some("failed"),
        _ => None,
    }
}

/// What a callback reports on: a job or a workflow run, as stored.
#[derive(Debug, Clone)]
pub enum Owner {
    /// A job (`POST /run`).
    Job(Job),
    /// A workflow run (`POST /api/script-runs`).
    Run(Run),
}

impl Owner {
    /// Its callback event, once it has ended.
    fn event(&self) -> Option<&'static str> {
        match self {
            Owner::Job(job) => event_of(job.status),
            Owner::Run(run) => run_event_of(run.status),
        }
    }

    /// When it ended (unix ms), if it says.
    fn ended_at(&self) -> Option<i64> {
        match self {
            Owner::Job(job) => job.ended_at,
            Owner::Run(run) => run.finished_at,
        }
    }

    fn id(&self) -> &str {
        match self {
            Owner::Job(job) => &job.id,
            Owner::Run(run) => &run.id,
        }
    }
}

/// Builds the JSON body of a callback (the HTTP layer's views: the object of `GET /jobs/{id}`
/// for a job, the `run` of `GET /api/script-runs/{id}` for a run).
pub type Body = Arc<dyn Fn(&Owner) -> Vec<u8> + Send + Sync>;

/// The delivery task: picks due callbacks of ended jobs, POSTs them, records each attempt.
pub struct Deliverer {
    store: Store,
    config: CallbacksConfig,
    body: Body,
    wake: Arc<Notify>,
    agent: ureq::Agent,
}

impl Deliverer {
    /// A deliverer over `store`; call [`Deliverer::run`] on the server's runtime.
    pub fn new(store: Store, config: CallbacksConfig, body: Body) -> Arc<Deliverer> {
        let agent = ureq::AgentBuilder::new().timeout(TIMEOUT).redirects(0).build();
        Arc::new(Deliverer { store, config, body, wake: Arc::new(Notify::new()), agent })
    }

    /// Delivers until the process ends: wakes when a job ends (the lifecycle feed) and at least
    /// every second (a due retry, a job ended on a restart), so pending rows of a previous run
    /// resume at start.
    pub async fn run(self: Arc<Self>) {
        let mut feed = crate::events::hub().subscribe();
        let wake = Arc::clone(&self.wake);
        tokio::spawn(async move {
            loop {
                match feed.recv().await {
                    Ok(event) if event.phase == crate::events::Phase::Ended => wake.notify_one(),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => wake.notify_one(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let in_flight = Arc::new(std::sync::Mutex::new(std::collections::HashSet::<String>::new()));
        loop {
            let store = self.store.clone();
            let due = crate::sync::blocking(move || store.due_callbacks(now_ms(), 64)).await;
            let due = match due {
                Ok(Ok(due)) => due,
                Ok(Err(e)) => {
                    warn!("callbacks: reading the outbox: {e}");
                    Vec::new()
                }
                Err(e) => {
                    warn!("callbacks: reading the outbox: {e}");
                    Vec::new()
                }
            };
            for (callback, job) in due {
                if !crate::sync::lock(&in_flight).insert(callback.id.clone()) {
                    continue;
                }
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
                let this = Arc::clone(&self);
                let in_flight = Arc::clone(&in_flight);
                tokio::spawn(async move {
                    let id = callback.id.clone();
                    let done = crate::sync::blocking(move || {
                        // Read again: the page above may predate an attempt that ended since.
                        match this.store.get_callback(&callback.id) {
                            Ok(Some(now)) if now.state == "pending" && now.next_attempt_at <= now_ms() => {
                                match this.store.claim_callback(&now.id, now.next_attempt_at, now_ms() + LEASE_MS) {
                                    Ok(true) => this.attempt(now, &job),
                                    // Another node of the cluster is trying it.
                                    Ok(false) => None,
                                    Err(e) => {
                                        warn!("callbacks: taking {}: {e}", now.id);
                                        None
                                    }
                                }
                            }
                            Ok(_) => None,
                            Err(e) => {
                                warn!("callbacks: reading {}: {e}", callback.id);
                                None
                            }
                        }
                    })
                    .await;
                    if let Ok(Some(pending)) = done {
                        let _ = pending.wait().await;
                    }
                    crate::sync::lock(&in_flight).remove(&id);
                    drop(permit);
                });
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
            // A job's end is published before its final row may be committed: look again
            // shortly after.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What a callback's next attempt delivers: the owner's next status change not yet
    /// delivered (a `status` callback), else its end once it has ended; `None` for nothing yet.
    fn next_delivery(&self, callback: &Callback, owner: &Owner) -> Option<Delivery> {
        if callback.events.iter().any(|e| e == STATUS) {
            match owner {
                Owner::Run(run) => match self.store.next_status_event(&run.id, callback.status_seq) {
                    Ok(Some((seq, body, at))) => return Some(Delivery::Status { seq, body: body.into_bytes(), at }),
                    Ok(None) => {}
                    Err(e) => {
                        warn!("callback {}: reading the status changes of {}: {e}", callback.id, run.id);
                        return None;
                    }
                },
                Owner::Job(job) if callback.status_seq == 0 => {
                    if let Some(started_at) = job.started_at {
                        let body = (self.body)(&Owner::Job(as_started(job)));
                        return Some(Delivery::Status { seq: 1, body, at: started_at });
                    }
                }
                Owner::Job(_) => {}
            }
        }
        owner.event().map(Delivery::End)
    }

    /// Makes one attempt (or settles a callback not to be made) and orders its record.
    fn attempt(&self, mut callback: Callback, owner: &Owner) -> Option<crate::db::Pending> {
        let delivery = self.next_delivery(&callback, owner)?;
        let now = now_ms();
        let (event, body, happened_at) = match delivery {
            Delivery::End(event) if !callback.events.iter().any(|e| e == event) => {
                callback.state = "skipped".into();
                return self.record(&callback);
            }
            Delivery::End(event) => (event, (self.body)(owner), owner.ended_at().unwrap_or(callback.created_at)),
            Delivery::Status { ref body, at, .. } => (STATUS, body.clone(), at),
        };
        let started = Instant::now();
        let result = self.post(&callback.url, event, &body);
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (status, error) = match result {
            Ok(status) if (200..300).contains(&status) => (Some(status), None),
            Ok(status) => (Some(status), Some(format!("answered {status}"))),
            Err(e) => (None, Some(e)),
        };
        callback.attempts += 1;
        callback.last_status = status;
        callback.last_error.clone_from(&error);
        callback.attempt_log.push(Attempt {
            at: now,
            status,
            error: error.clone(),
            duration_ms,
            event: Some(event.into()),
        });
        if callback.attempt_log.len() > KEPT_ATTEMPTS {
            callback.attempt_log.remove(0);
        }
        let max_age_ms = i64::try_from(self.config.max_age_sec).unwrap_or(i64::MAX / 2).saturating_mul(1000);
        let expired = now_ms() - happened_at >= max_age_ms;
        match (delivery, error) {
            (Delivery::End(_), None) => {
                callback.state = "delivered".into();
                callback.delivered_at = Some(now_ms());
                info!("callback {} of {} delivered after {} attempt(s)", callback.id, owner.id(), callback.attempts);
            }
            (Delivery::End(_), Some(error)) if expired => {
                callback.state = "failed".into();
                warn!("callback {} of {} failed, giving up: {error}", callback.id, owner.id());
            }
            // A status change delivered, or given up: the next one (or the end) is due at once.
            (Delivery::Status { seq, .. }, None) => {
                callback.status_seq = seq;
                callback.next_attempt_at = now_ms();
            }
            (Delivery::Status { seq, .. }, Some(error)) if expired => {
                warn!("callback {} of {}: giving up a status change: {error}", callback.id, owner.id());
                callback.status_seq = seq;
                callback.next_attempt_at = now_ms();
            }
            (_, Some(_)) => callback.next_attempt_at = now_ms() + backoff_ms(failures_in_a_row(&callback)),
        }
        self.record(&callback)
    }

    /// Orders the write of a callback's new delivery state.
    fn record(&self, callback: &Callback) -> Option<crate::db::Pending> {
        match self.store.writer().enqueue(WriteOp::update_callback(callback)) {
            Ok(pending) => Some(pending),
            Err(e) => {
                warn!("callback {}: not recorded: {e}", callback.id);
                None
            }
        }
    }

    /// POSTs `body` signed to `url` after checking where it resolves, naming the `event` it
    /// delivers; the answer's status.
    fn post(&self, url: &str, event: &str, body: &[u8]) -> Result<u16, String> {
        // The resolution is checked, then ureq resolves again: an allowed host's resolver is
        // trusted not to change its answer in between (a name under an attacker's control is
        // not in allowedHosts).
        resolve(&self.config, url)?;
        let secret = self.config.secret.as_deref().unwrap_or_default();
        let signature = sign(secret.as_bytes(), now_ms() / 1000, body);
        let answer = self
            .agent
            .post(url)
            .set("Content-Type", "application/json")
            .set(SIGNATURE_HEADER, &signature)
            .set(EVENT_HEADER, event)
            .send_bytes(body);
        match answer {
            Ok(response) => Ok(response.status()),
            Err(ureq::Error::Status(status, _)) => Ok(status),
            Err(ureq::Error::Transport(t)) => Err(t.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hosts: &[&str]) -> CallbacksConfig {
        CallbacksConfig {
            secret: Some("s".into()),
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            max_age_sec: 60,
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn hosts_outside_the_list_are_refused_without_resolving() {
        let c = config(&["127.0.0.1", "::1", "localhost"]);
        assert!(check(&c, "http://127.0.0.1:9/x", None).is_ok());
        assert!(check(&c, "http://[::1]:9/x", None).is_ok());
        assert!(check(&c, "http://LOCALHOST/x", None).is_ok());
        assert!(check(&c, "http://example.com/x", None).is_err());
        assert!(check(&c, "http://10.1.2.3/", None).is_err());
        assert!(check(&c, "http://127.0.0.1@10.1.2.3/", None).is_err());
        assert!(check(&c, "ftp://127.0.0.1/", None).is_err());
        assert!(check(&c, "https://127.0.0.1/", None).is_err(), "no TLS client: refused rather than failing later");
        assert!(check(&c, "http://127.0.0.1/", Some(vec!["started".into()])).is_err());
        assert!(check(&c, "http://127.0.0.1/", Some(vec![])).is_err());
        let events = check(&c, "http://127.0.0.1/", Some(vec!["status".into(), "status".into()])).map(|t| t.events);
        assert_eq!(events, Ok(vec!["status".to_string()]));
        let no_secret = CallbacksConfig { secret: None, ..c };
        assert!(check(&no_secret, "http://127.0.0.1/", None).is_err());
    }

    #[test]
    fn an_allowed_name_that_resolves_elsewhere_is_refused() {
        // `10.1.2.3` parses as itself (no DNS); allowed as a name only through the list.
        let c = config(&["127.0.0.1"]);
        assert!(resolve(&c, "http://127.0.0.1:8080/").is_ok());
        let c = config(&["10.1.2.3"]);
        assert!(resolve(&c, "http://10.1.2.3:8080/").is_ok(), "an address written in the list is allowed");
        let c = config(&["127.0.0.2", "10.1.2.4"]);
        assert!(resolve(&c, "http://10.1.2.3/").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert!((1000..=1250).contains(&backoff_ms(1)));
        assert!((4000..=5000).contains(&backoff_ms(3)));
        assert!((300_000..=375_000).contains(&backoff_ms(30)));
    }
}
