//! The job as the domain sees it (storage converts it to and from its row, in `db/jobs.rs`).

use serde::Serialize;

use crate::config::Mode;

use crate::process::logs::{Stream, StreamSummary};
use crate::process::supervisor::{Ending, Outcome, Spawned};

/// Upstream's six statuses (note `canceled` with one l).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a free slot.
    Queued,
    /// Its process is running.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, was killed by a signal, could not start, or was interrupted by a restart.
    Failed,
    /// Stopped after its script's `timeoutSec`.
    TimedOut,
    /// Stopped on request.
    Canceled,
}

impl JobStatus {
    /// Every status, for validating filters.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::TimedOut,
        JobStatus::Canceled,
    ];

    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Canceled => "canceled",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the job can no longer change.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// One output stream of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Log file name inside `logsDir` (never a path: it is checked before use).
    pub log_ref: String,
    /// Bytes stored.
    pub size: u64,
    /// Whether output past the cap was dropped.
    pub truncated: bool,
    /// Tail of the output as text.
    pub preview: String,
    /// Lines stored; `None` when unknown (imported, or interrupted by a crash).
    pub lines: Option<u64>,
    /// Why its output could not be stored, if it could not.
    pub error: Option<String>,
}

impl StreamInfo {
    fn empty(log_ref: String) -> StreamInfo {
        StreamInfo { log_ref, size: 0, truncated: false, preview: String::new(), lines: None, error: None }
    }

    fn finish(&mut self, summary: StreamSummary) {
        self.size = summary.size;
        self.truncated = summary.truncated;
        self.preview = summary.preview;
        self.lines = Some(summary.lines);
        self.error = summary.error;
    }
}

/// A job: one run of one whitelisted script.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// `job_<unix ms>_<sequence>`, as upstream.
    pub id: String,
    /// The script run.
    pub script_id: String,
    /// How the client asked to be answered.
    pub mode: Mode,
    /// Where it is in its life.
    pub status: JobStatus,
    /// The arguments, passed verbatim as argv.
    pub args: Vec<String>,
    /// Exit code; -1 for timeout, cancel, signal or spawn failure; `None` before the end.
    pub code: Option<i32>,
    /// Why it failed without an exit code of its own.
    pub error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub ended_at: Option<i64>,
    /// Milliseconds from start to end.
    pub duration_ms: Option<i64>,
    /// Standard output.
    pub stdout: StreamInfo,
    /// Standard error.
    pub stderr: StreamInfo,
    /// Process group leader while running.
    pub pid: Option<i32>,
    /// Leader start time (clock ticks since boot).
    pub proc_start_ticks: Option<u64>,
    /// The `idempotencyKey` it was started under.
    pub idempotency_key: Option<String>,
    /// The cluster node that runs or ran it (`None` on SQLite, and while queued for any node).
    pub node: Option<String>,
    /// A workflow step's job: `<runId>:<label>`, exported to its process as
    /// `SCRIPT_STEP_KEY` so the script can make an external write exactly once. Not on the
    /// wire (the job object is upstream's); the run's journal names the job.
    pub step_key: Option<String>,
}

impl Job {
    /// A new queued job.
    pub fn new(id: String, script_id: &str, mode: Mode, args: Vec<String>, now: i64) -> Job {
        Job {
            stdout: StreamInfo::empty(format!("{id}.stdout.log")),
            stderr: StreamInfo::empty(format!("{id}.stderr.log")),
            id,
            script_id: script_id.to_string(),
            mode,
            status: JobStatus::Queued,
            args,
            code: None,
            error: None,
            created_at: now,
            started_at: None,
            ended_at: None,
            duration_ms: None,
            pid: None,
            proc_start_ticks: None,
            idempotency_key: None,
            node: None,
            step_key: None,
        }
    }

    /// Why output was lost, `stdout: <reason>` and/or `stderr: <reason>`; `None` when every
    /// byte the script wrote was stored or dropped at the cap.
    pub fn output_error(&self) -> Option<String> {
        let errors: Vec<String> = [("stdout", &self.stdout), ("stderr", &self.stderr)]
            .into_iter()
            .filter_map(|(name, info)| info.error.as_ref().map(|e| format!("{name}: {e}")))
            .collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    }

    /// One stream.
    pub fn stream(&self, stream: Stream) -> &StreamInfo {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    /// Records that the process is about to be started (an async job's start is committed
    /// before its process can exist: see `jobs::Shared::record_start`).
    pub fn mark_starting(&mut self, now: i64) {
        self.status = JobStatus::Running;
        self.started_at = Some(now);
    }

    /// Records that the process started.
    pub fn mark_running(&mut self, spawned: &Spawned) {
        self.status = JobStatus::Running;
        self.started_at = Some(spawned.started_at);
        self.pid = Some(spawned.pid);
    }

    /// Ends the job without it having run to its end (cancel while queued, restart, shutdown).
    pub fn end(&mut self, status: JobStatus, error: Option<String>, now: i64) {
        self.status = status;
        self.code = Some(-1);
        self.error = error;
        self.ended_at = Some(now);
        self.duration_ms = Some(self.started_at.map_or(0, |s| (now - s).max(0)));
        self.pid = None;
        self.proc_start_ticks = None;
    }

    /// Applies what the supervisor reported.
    pub fn finish(&mut self, outcome: Outcome) {
        if let Some(spawned) = &outcome.spawned {
            self.started_at.get_or_insert(spawned.started_at);
        }
        let (status, code, error) = match outcome.ending {
            Ending::Exited(0) => (JobStatus::Succeeded, 0, None),
            Ending::Exited(code) => (JobStatus::Failed, code, None),
            Ending::Signaled(sig) => (JobStatus::Failed, -1, Some(format!("killed by signal {sig}"))),
            Ending::TimedOut => (JobStatus::TimedOut, -1, None),
            Ending::Canceled => (JobStatus::Canceled, -1, None),
            Ending::SpawnFailed(message) => (JobStatus::Failed, -1, Some(message)),
        };
        self.status = status;
        self.code = Some(code);
        self.error = error;
        self.ended_at = Some(outcome.ended_at);
        self.duration_ms = Some(outcome.duration_ms);
        self.stdout.finish(outcome.stdout);
        self.stderr.finish(outcome.stderr);
        self.pid = None;
        self.proc_start_ticks = None;
    }
}
