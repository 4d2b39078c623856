//! The service's Prometheus metrics: one private registry and typed handles, served as text by
//! `GET /metrics` (see `http/metrics.rs`).
//!
//! Why a process-wide instance ([`get`]): the events counted happen in every layer (a job
//! ending, a log chunk stored, a batch committed, a request answered), and a handle threaded
//! through each of them would touch every constructor for a one-line count. The layers call
//! [`get`] and one method; [`init`] registers the configured scripts once at start.
//!
//! Cost: the counts on the paths that matter (a job, a request, a step, a log chunk, a commit)
//! are atomic adds on handles resolved in advance (a job's script is found in a map built at
//! start), or a look-up of a series that already exists; nothing is allocated per event. Gauges
//! of what is in flight (queued and running jobs, live runs) are read when scraped, so keeping
//! them costs nothing between scrapes.
//!
//! Label cardinality is bounded by construction: `script` only takes the ids of the configured
//! scripts (a job of any other script, e.g. one another cluster node has, is not counted by
//! script), `route` the route patterns of the server (or `unmatched`), `method` a fixed list
//! (or `other`), `status` the statuses the code knows. Nothing from a request becomes a label.
//!
//! In a cluster every node serves its own metrics (its jobs, its runs, its requests).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use log::warn;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::Config;

/// The content type of the text exposition format (`text/plain; version=0.0.4`).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `route` label of a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Final statuses of a job, as spelled on the wire (`JobStatus::as_str`).
const JOB_END_STATUSES: [&str; 4] = ["succeeded", "failed", "timed_out", "canceled"];
/// Statuses of a live run (`RunStatus::as_str`), reported by [`Metrics::set_live_runs`].
const LIVE_RUN_STATUSES: [&str; 3] = ["running", "awaiting", "paused"];
/// Final statuses of a run (`RunStatus::as_str`).
const RUN_END_STATUSES: [&str; 4] = ["completed", "failed", "cancelled", "aborted_limit"];
/// Step types (`StepType::as_str`).
const STEP_TYPES: [&str; 8] = ["command", "script", "value", "sleep", "approval", "node", "input", "event"];
/// Methods given their own `method` label; any other is `other`.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// Buckets of a job's run time and queue wait, in seconds: from a short script to an hour.
const JOB_BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
/// Buckets of a request's latency, in seconds (a sync `POST /run` lasts as long as its job).
const HTTP_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];
/// Buckets of a database commit, in seconds.
const COMMIT_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Why the metrics could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The registry refused a metric or the encoder a family (a bug: names and labels are
    /// constants of this module).
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
    /// The encoded text was not UTF-8 (a bug of the encoder).
    #[error("metrics: the encoded text is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Creates the metrics with a series per configured script. Call it once, first thing at start,
/// before anything is counted: a count made before it creates the metrics without the scripts
/// (their jobs are then not counted by script), and a second call is ignored with a warning.
pub fn init(config: &Config) {
    let ids: Vec<&str> = config.scripts.iter().map(|s| s.id.as_str()).collect();
    let fresh = match Metrics::new(&ids) {
        Ok(metrics) => metrics,
        Err(e) => {
            warn!("{e}; serving metrics without per-script series");
            return;
        }
    };
    if METRICS.set(fresh).is_err() {
        warn!("metrics were created before the configured scripts were registered");
    }
}

/// The process's metrics (created without scripts if [`init`] has not run, e.g. in a CLI
/// command or a unit test: counting then works, and no script has a series).
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(|| {
        Metrics::new(&[]).unwrap_or_else(|e| {
            // Unreachable in practice (the names are constants); a registry without the
            // failed metric still counts the rest.
            warn!("{e}");
            Metrics::unregistered()
        })
    })
}

/// The `method` label of a request's method: the method, if it is a common one; `other` for
/// any other (a client may send any token as a method).
pub fn method_label(method: &str) -> &'static str {
    METHODS.iter().find(|m| **m == method).copied().unwrap_or("other")
}

/// The handles of one configured script, resolved at start.
struct ScriptMetrics {
    started: IntCounter,
    /// One per [`JOB_END_STATUSES`], in that order.
    ended: [IntCounter; 4],
    duration: Histogram,
    queue_wait: Histogram,
}

/// Every metric of the service, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    scripts: HashMap<String, ScriptMetrics>,
    jobs_queued: IntGauge,
    jobs_running: IntGauge,
    spawn_failures: IntCounter,
    log_bytes: IntCounter,
    /// One per [`LIVE_RUN_STATUSES`].
    runs: [IntGauge; 3],
    /// One per [`RUN_END_STATUSES`].
    runs_ended: [IntCounter; 4],
    /// One per [`STEP_TYPES`].
    steps_recorded: [IntCounter; STEP_TYPES.len()],
    /// One per [`STEP_TYPES`].
    steps_replayed: [IntCounter; STEP_TYPES.len()],
    approvals_waiting: IntGauge,
    streams_open: IntGauge,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    db_commit: Histogram,
}

/// The families, created but not yet registered.
struct Families {
    jobs_started: IntCounterVec,
    jobs_ended: IntCounterVec,
    job_duration: HistogramVec,
    queue_wait: HistogramVec,
    jobs_queued: IntGauge,
    jobs_running: IntGauge,
    spawn_failures: IntCounter,
    log_bytes: IntCounter,
    runs: IntGaugeVec,
    runs_ended: IntCounterVec,
    steps_recorded: IntCounterVec,
    steps_replayed: IntCounterVec,
    approvals_waiting: IntGauge,
    streams_open: IntGauge,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    db_commit: Histogram,
}

impl Families {
    fn new() -> Result<Families, prometheus::Error> {
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| HistogramOpts::new(name, help).buckets(buckets.to_vec());
        Ok(Families {
            jobs_started: IntCounterVec::new(
                Opts::new("script_runner_jobs_started_total", "Jobs that left the queue to run, by script."),
                &["script"],
            )?,
            jobs_ended: IntCounterVec::new(
                Opts::new("script_runner_jobs_ended_total", "Jobs that ended, by script and final status."),
                &["script", "status"],
            )?,
            job_duration: HistogramVec::new(
                histogram(
                    "script_runner_job_duration_seconds",
                    "Run time of the jobs that were started, from their spawn to their end, by script.",
                    &JOB_BUCKETS,
                ),
                &["script"],
            )?,
            queue_wait: HistogramVec::new(
                histogram(
                    "script_runner_job_queue_wait_seconds",
                    "Time jobs waited from their creation to their start, by script.",
                    &JOB_BUCKETS,
                ),
                &["script"],
            )?,
            jobs_queued: IntGauge::new("script_runner_jobs_queued", "Jobs waiting in this server's queue.")?,
            jobs_running: IntGauge::new("script_runner_jobs_running", "Jobs running on this server.")?,
            streams_open: IntGauge::new(
                "script_runner_streams_open",
                "Event streams open on this server (server.maxStreams bounds them).",
            )?,
            spawn_failures: IntCounter::new(
                "script_runner_spawn_failures_total",
                "Processes (jobs and workflow executions) that could not be started.",
            )?,
            log_bytes: IntCounter::new(
                "script_runner_log_bytes_total",
                "Bytes of process output stored (under the per-stream cap), jobs and workflow executions.",
            )?,
            runs: IntGaugeVec::new(
                Opts::new("script_runner_runs", "Live workflow runs this server holds, by status."),
                &["status"],
            )?,
            runs_ended: IntCounterVec::new(
                Opts::new("script_runner_runs_ended_total", "Workflow runs that reached a final status, by status."),
                &["status"],
            )?,
            steps_recorded: IntCounterVec::new(
                Opts::new("script_runner_steps_recorded_total", "Workflow steps journaled, by step type."),
                &["type"],
            )?,
            steps_replayed: IntCounterVec::new(
                Opts::new(
                    "script_runner_steps_replayed_total",
                    "Workflow steps answered from the journal instead of executed again, by step type.",
                ),
                &["type"],
            )?,
            approvals_waiting: IntGauge::new(
                "script_runner_approvals_waiting",
                "Workflow runs on this server waiting for an approval decision.",
            )?,
            http_requests: IntCounterVec::new(
                Opts::new("script_runner_http_requests_total", "HTTP requests answered, by method, route and status."),
                &["method", "route", "status"],
            )?,
            http_duration: HistogramVec::new(
                histogram(
                    "script_runner_http_request_duration_seconds",
                    "Time from a request's arrival to its answer, by method and route.",
                    &HTTP_BUCKETS,
                ),
                &["method", "route"],
            )?,
            db_commit: Histogram::with_opts(histogram(
                "script_runner_db_commit_duration_seconds",
                "Time of each database commit of a group of writes.",
                &COMMIT_BUCKETS,
            ))?,
        })
    }
}

impl Metrics {
    /// The metrics, registered, with the series of these scripts created at zero.
    fn new(script_ids: &[&str]) -> Result<Metrics, MetricsError> {
        let f = Families::new()?;
        let registry = Registry::new();
        registry.register(Box::new(f.jobs_started.clone()))?;
        registry.register(Box::new(f.jobs_ended.clone()))?;
        registry.register(Box::new(f.job_duration.clone()))?;
        registry.register(Box::new(f.queue_wait.clone()))?;
        registry.register(Box::new(f.jobs_queued.clone()))?;
        registry.register(Box::new(f.jobs_running.clone()))?;
        registry.register(Box::new(f.streams_open.clone()))?;
        registry.register(Box::new(f.spawn_failures.clone()))?;
        registry.register(Box::new(f.log_bytes.clone()))?;
        registry.register(Box::new(f.runs.clone()))?;
        registry.register(Box::new(f.runs_ended.clone()))?;
        registry.register(Box::new(f.steps_recorded.clone()))?;
        registry.register(Box::new(f.steps_replayed.clone()))?;
        registry.register(Box::new(f.approvals_waiting.clone()))?;
        registry.register(Box::new(f.http_requests.clone()))?;
        registry.register(Box::new(f.http_duration.clone()))?;
        registry.register(Box::new(f.db_commit.clone()))?;
        Ok(Metrics::resolve(registry, f, script_ids))
    }

    /// Metrics that count but render nothing (when registering failed).
    fn unregistered() -> Metrics {
        match Families::new() {
            Ok(f) => Metrics::resolve(Registry::new(), f, &[]),
            // The options are constants: `Families::new` failing twice is not a state to serve in.
            Err(e) => panic!("metrics: {e}"),
        }
    }

    /// Resolves every handle the counting methods use, so counting never looks a label up.
    fn resolve(registry: Registry, f: Families, script_ids: &[&str]) -> Metrics {
        let scripts = script_ids
            .iter()
            .map(|id| {
                let metrics = ScriptMetrics {
                    started: f.jobs_started.with_label_values(&[id]),
                    ended: JOB_END_STATUSES.map(|status| f.jobs_ended.with_label_values(&[id, status])),
                    duration: f.job_duration.with_label_values(&[id]),
                    queue_wait: f.queue_wait.with_label_values(&[id]),
                };
                ((*id).to_string(), metrics)
            })
            .collect();
        Metrics {
            registry,
            scripts,
            jobs_queued: f.jobs_queued,
            jobs_running: f.jobs_running,
            streams_open: f.streams_open,
            spawn_failures: f.spawn_failures,
            log_bytes: f.log_bytes,
            runs: LIVE_RUN_STATUSES.map(|status| f.runs.with_label_values(&[status])),
            runs_ended: RUN_END_STATUSES.map(|status| f.runs_ended.with_label_values(&[status])),
            steps_recorded: STEP_TYPES.map(|kind| f.steps_recorded.with_label_values(&[kind])),
            steps_replayed: STEP_TYPES.map(|kind| f.steps_replayed.with_label_values(&[kind])),
            approvals_waiting: f.approvals_waiting,
            http_requests: f.http_requests,
            http_duration: f.http_duration,
            db_commit: f.db_commit,
        }
    }

    /// A job left the queue to run after waiting `waited` since it was created. A script that
    /// is not configured here is not counted (its id never becomes a label).
    pub fn job_started(&self, script: &str, waited: Duration) {
        if let Some(m) = self.scripts.get(script) {
            m.started.inc();
            m.queue_wait.observe(waited.as_secs_f64());
        }
    }

    /// A job ended with this final status (`JobStatus::as_str`); `ran` is its run time when it
    /// was started (a job canceled in the queue has none).
    pub fn job_ended(&self, script: &str, status: &str, ran: Option<Duration>) {
        let Some(m) = self.scripts.get(script) else { return };
        if let Some(i) = JOB_END_STATUSES.iter().position(|s| *s == status) {
            m.ended[i].inc();
        }
        if let Some(ran) = ran {
            m.duration.observe(ran.as_secs_f64());
        }
    }

    /// The jobs in flight on this server, as read when scraped.
    pub fn set_jobs(&self, queued: usize, running: usize) {
        self.jobs_queued.set(i64::try_from(queued).unwrap_or(i64::MAX));
        self.jobs_running.set(i64::try_from(running).unwrap_or(i64::MAX));
    }

    /// The event streams open, as read when scraped.
    pub fn set_streams_open(&self, open: usize) {
        self.streams_open.set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// A process could not be started.
    pub fn spawn_failed(&self) {
        self.spawn_failures.inc();
    }

    /// The handle of the stored log bytes, for a writer that counts every chunk.
    pub fn log_bytes(&self) -> &IntCounter {
        &self.log_bytes
    }

    /// The live runs this server holds, by status (`RunStatus::as_str`; a final status is
    /// ignored), and how many of them wait for an approval, as read when scraped.
    pub fn set_live_runs<'a>(&self, statuses: impl IntoIterator<Item = &'a str>) {
        let mut counts = [0_i64; 3];
        for status in statuses {
            if let Some(i) = LIVE_RUN_STATUSES.iter().position(|s| *s == status) {
                counts[i] += 1;
            }
        }
        for (gauge, n) in self.runs.iter().zip(counts) {
            gauge.set(n);
        }
        self.approvals_waiting.set(counts[1]);
    }

    /// A run reached this final status (`RunStatus::as_str`).
    pub fn run_ended(&self, status: &str) {
        if let Some(i) = RUN_END_STATUSES.iter().position(|s| *s == status) {
            self.runs_ended[i].inc();
        }
    }

    /// A step of this type (`StepType::as_str`) was journaled.
    pub fn step_recorded(&self, step_type: &str) {
        if let Some(i) = STEP_TYPES.iter().position(|s| *s == step_type) {
            self.steps_recorded[i].inc();
        }
    }

    /// A step of this type was answered from the journal (a replay).
    pub fn step_replayed(&self, step_type: &str) {
        if let Some(i) = STEP_TYPES.iter().position(|s| *s == step_type) {
            self.steps_replayed[i].inc();
        }
    }

    /// A request was answered. `method` is one of [`method_label`]'s; `route` must be a route
    /// pattern of the server or [`UNMATCHED_ROUTE`], never a request's path.
    pub fn http_request(&self, method: &'static str, route: &str, status: &str, elapsed: Duration) {
        self.http_requests.with_label_values(&[method, route, status]).inc();
        self.http_duration.with_label_values(&[method, route]).observe(elapsed.as_secs_f64());
    }

    /// A group of writes was committed in `elapsed`.
    pub fn db_committed(&self, elapsed: Duration) {
        self.db_commit.observe(elapsed.as_secs_f64());
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut text = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut text)?;
        Ok(String::from_utf8(text)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn only_configured_scripts_have_series_and_counts_render() {
        let m = Metrics::new(&["a"]).unwrap();
        m.job_started("a", Duration::from_millis(5));
        m.job_ended("a", "succeeded", Some(Duration::from_millis(20)));
        m.job_started("nope", Duration::ZERO);
        m.job_ended("nope", "failed", None);
        m.http_request(method_label("BREW"), "unmatched", "404", Duration::from_millis(1));
        let text = m.render().unwrap();
        assert!(text.contains("script_runner_jobs_started_total{script=\"a\"} 1"), "{text}");
        assert!(text.contains("script_runner_jobs_ended_total{script=\"a\",status=\"succeeded\"} 1"), "{text}");
        assert!(text.contains("script_runner_jobs_ended_total{script=\"a\",status=\"failed\"} 0"), "{text}");
        assert!(!text.contains("nope"), "{text}");
        assert!(text.contains("method=\"other\""), "{text}");
    }
}
