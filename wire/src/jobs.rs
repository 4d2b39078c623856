//! The job API's answers: the job object (`GET /jobs/:id`, the sync run result, the cancel
//! result), the async run's `202`, the job list, log pages and the script catalog.

use serde::{Deserialize, Serialize};

/// The job object of `GET /jobs/:id`, the sync run result and the cancel result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// `true`, except inside a list where the envelope carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    /// Job id.
    pub job_id: String,
    /// Script id.
    pub script_id: String,
    /// Status.
    pub status: String,
    /// Exit code; -1 for timeout, cancel, signal or spawn failure; null before the end.
    pub code: Option<i32>,
    /// ISO time.
    pub started_at: Option<String>,
    /// ISO time.
    pub ended_at: Option<String>,
    /// Milliseconds.
    pub duration_ms: Option<i64>,
    /// ISO time.
    pub created_at: String,
    /// `sync` or `async`.
    pub mode: String,
    /// Log file name.
    pub stdout_ref: String,
    /// Log file name.
    pub stderr_ref: String,
    /// Bytes stored.
    pub stdout_size: u64,
    /// Bytes stored.
    pub stderr_size: u64,
    /// Output dropped at the cap.
    pub stdout_truncated: bool,
    /// Output dropped at the cap.
    pub stderr_truncated: bool,
    /// Tail of stdout.
    pub stdout_preview: String,
    /// Tail of stderr.
    pub stderr_preview: String,
    /// Arguments as run (ours; upstream does not return them).
    pub args: Vec<String>,
    /// Why the job failed without an exit code of its own (ours).
    pub error: Option<String>,
    /// Why some of the job's output could not be stored (`stdout: cannot write <file>: <reason>`),
    /// whatever the job's status (ours); `null` when all of it was stored or dropped at the cap.
    pub output_error: Option<String>,
    /// The stored stdout as text (sync run result only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// The stored stderr as text (sync run result only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// The idempotency key the job was started under (ours).
    pub idempotency_key: Option<String>,
    /// `true` when the request's idempotency key matched this earlier job (sync run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deduplicated: Option<bool>,
}

/// `202` answer of an async run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// Always true.
    pub ok: bool,
    /// Job id.
    pub job_id: String,
    /// `queued` or `running`; any status when deduplicated.
    pub status: String,
    /// `true` when the request's idempotency key matched this earlier job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deduplicated: Option<bool>,
}

/// `GET /jobs` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    /// Always true.
    pub ok: bool,
    /// The page, newest first.
    pub jobs: Vec<JobView>,
    /// Jobs matching the filter in all.
    pub total: i64,
}

/// A byte page of a log (upstream's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BytesPage {
    /// Always true.
    pub ok: bool,
    /// Job id.
    pub job_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Byte offset of the page.
    pub offset: u64,
    /// Byte offset of the next page.
    pub next_offset: u64,
    /// Log size now.
    pub total_size: u64,
    /// Output dropped at the cap.
    pub truncated: bool,
    /// Why some of the job's output could not be stored (ours; see the job object).
    pub output_error: Option<String>,
    /// The bytes as text (invalid UTF-8 shown as U+FFFD).
    pub data: String,
}

/// A line page of a log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinesPage {
    /// Always true.
    pub ok: bool,
    /// Job id.
    pub job_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Line offset of the page.
    pub offset: u64,
    /// Line offset of the next page.
    pub next_offset: u64,
    /// Lines in the log (complete lines while the job runs).
    pub total_lines: u64,
    /// Output dropped at the cap.
    pub truncated: bool,
    /// Why some of the job's output could not be stored (ours; see the job object).
    pub output_error: Option<String>,
    /// The lines without their newline.
    pub lines: Vec<String>,
}

/// One script of `GET /scripts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptView {
    /// Script id.
    pub id: String,
    /// Mode used when the request names none.
    pub mode: String,
    /// Seconds; 0 = no limit.
    pub timeout_sec: u64,
    /// Argument rules.
    pub args: ArgsView,
    /// Free text.
    pub description: Option<String>,
}

/// Argument rules of a script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgsView {
    /// Most arguments.
    pub max_items: usize,
    /// Pattern each argument must match.
    pub item_pattern: String,
    /// Longest argument, in characters.
    pub item_max_length: usize,
}
