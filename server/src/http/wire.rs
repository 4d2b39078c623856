//! Wire types: the JSON the API answers, field for field upstream's.

use serde::Serialize;

use crate::config::Script;
use crate::jobs::model::Job;
use crate::time::iso;

/// The job object of `GET /jobs/:id`, the sync run result and the cancel result.
#[derive(Debug, Serialize)]
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
    pub status: &'static str,
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
    pub mode: &'static str,
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

impl JobView {
    /// The object with `ok: true`.
    pub fn new(job: Job) -> JobView {
        let mut view = JobView::item(job);
        view.ok = Some(true);
        view
    }

    /// The object inside a list.
    pub fn item(job: Job) -> JobView {
        let output_error = job.output_error();
        JobView {
            output_error,
            ok: None,
            status: job.status.as_str(),
            code: job.code,
            started_at: job.started_at.map(iso),
            ended_at: job.ended_at.map(iso),
            duration_ms: job.duration_ms,
            created_at: iso(job.created_at),
            mode: job.mode.as_str(),
            stdout_size: job.stdout.size,
            stderr_size: job.stderr.size,
            stdout_truncated: job.stdout.truncated,
            stderr_truncated: job.stderr.truncated,
            stdout_ref: job.stdout.log_ref,
            stderr_ref: job.stderr.log_ref,
            stdout_preview: job.stdout.preview,
            stderr_preview: job.stderr.preview,
            job_id: job.id,
            script_id: job.script_id,
            args: job.args,
            error: job.error,
            stdout: None,
            stderr: None,
            idempotency_key: job.idempotency_key,
            deduplicated: None,
        }
    }
}

/// `202` answer of an async run.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// Always true.
    pub ok: bool,
    /// Job id.
    pub job_id: String,
    /// `queued` or `running`; any status when deduplicated.
    pub status: &'static str,
    /// `true` when the request's idempotency key matched this earlier job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deduplicated: Option<bool>,
}

/// `GET /jobs` answer.
#[derive(Debug, Serialize)]
pub struct JobList {
    /// Always true.
    pub ok: bool,
    /// The page, newest first.
    pub jobs: Vec<JobView>,
    /// Jobs matching the filter in all.
    pub total: i64,
}

/// A byte page of a log (upstream's shape).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BytesPage {
    /// Always true.
    pub ok: bool,
    /// Job id.
    pub job_id: String,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
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
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinesPage {
    /// Always true.
    pub ok: bool,
    /// Job id.
    pub job_id: String,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
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
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptView {
    /// Script id.
    pub id: String,
    /// Mode used when the request names none.
    pub mode: &'static str,
    /// Seconds; 0 = no limit.
    pub timeout_sec: u64,
    /// Argument rules.
    pub args: ArgsView,
    /// Free text.
    pub description: Option<String>,
}

/// Argument rules of a script.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgsView {
    /// Most arguments.
    pub max_items: usize,
    /// Pattern each argument must match.
    pub item_pattern: String,
    /// Longest argument, in characters.
    pub item_max_length: usize,
}

impl ScriptView {
    /// The catalog entry of a script.
    pub fn new(script: &Script, default_mode: crate::config::Mode) -> ScriptView {
        ScriptView {
            id: script.id.clone(),
            mode: script.effective_mode(default_mode).as_str(),
            timeout_sec: script.timeout_sec,
            args: ArgsView {
                max_items: script.args.max_items,
                item_pattern: script.args.item_pattern.as_str().to_string(),
                item_max_length: script.args.item_max_length,
            },
            description: script.description.clone(),
        }
    }
}
