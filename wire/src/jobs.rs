//! The job API's answers: the job object (`GET /jobs/:id`, the sync run result, the cancel
//! result), the async run's `202`, the job list, log pages and the script catalog.

use serde::{Deserialize, Serialize};

/// The job object of `GET /jobs/:id`, the sync run result and the cancel result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// `true`, except inside a list where the envelope carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub ok: Option<bool>,
    /// Job id.
    pub job_id: String,
    /// Script id.
    pub script_id: String,
    /// Status.
    #[cfg_attr(feature = "openapi", schema(value_type = JobStatus))]
    pub status: String,
    /// Exit code; -1 for timeout, cancel, signal or spawn failure; null before the end.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub code: Option<i32>,
    /// ISO time.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub started_at: Option<String>,
    /// ISO time.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub ended_at: Option<String>,
    /// Milliseconds.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub duration_ms: Option<i64>,
    /// ISO time.
    pub created_at: String,
    /// `sync` or `async`.
    #[cfg_attr(feature = "openapi", schema(value_type = JobMode))]
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
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub error: Option<String>,
    /// Why some of the job's output could not be stored (`stdout: cannot write <file>: <reason>`),
    /// whatever the job's status (ours); `null` when all of it was stored or dropped at the cap.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub output_error: Option<String>,
    /// The stored stdout as text (sync run result only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub stdout: Option<String>,
    /// The stored stderr as text (sync run result only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub stderr: Option<String>,
    /// The idempotency key the job was started under (ours).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub idempotency_key: Option<String>,
    /// `true` when the request's idempotency key matched this earlier job (sync run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub deduplicated: Option<bool>,
    /// The cluster node that runs or ran the job (ours; only in a cluster, once a node took it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub node: Option<String>,
    /// A queued job's place in its server's queue, from 1 (`GET /jobs/:id` only, ours): one
    /// more than the queued jobs ahead of it that start before it, which are those of its own
    /// script and those of other scripts with room under their `concurrency`. A job of a
    /// script at its limit does not count for the jobs of other scripts behind it. Absent on
    /// any other job, in lists, and on a job waiting in a cluster's shared queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false, minimum = 1))]
    pub queue_position: Option<u64>,
}

/// `202` answer of an async run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// Always true.
    pub ok: bool,
    /// Job id.
    pub job_id: String,
    /// `queued` or `running`; any status when deduplicated.
    #[cfg_attr(feature = "openapi", schema(value_type = JobStatus))]
    pub status: String,
    /// `true` when the request's idempotency key matched this earlier job.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub deduplicated: Option<bool>,
}

/// `GET /jobs` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BytesPage {
    /// Always true.
    pub ok: bool,
    /// Job id.
    pub job_id: String,
    /// `stdout` or `stderr`.
    #[cfg_attr(feature = "openapi", schema(value_type = LogStream))]
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
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub output_error: Option<String>,
    /// The bytes as text (invalid UTF-8 shown as U+FFFD).
    pub data: String,
}

/// A line page of a log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LinesPage {
    /// Always true.
    pub ok: bool,
    /// Job id.
    pub job_id: String,
    /// `stdout` or `stderr`.
    #[cfg_attr(feature = "openapi", schema(value_type = LogStream))]
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
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub output_error: Option<String>,
    /// The lines without their newline.
    pub lines: Vec<String>,
}

/// `GET /scripts` answer: the whitelist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScriptList {
    /// Always true.
    pub ok: bool,
    /// Every configured script, in scripts.json's order.
    pub scripts: Vec<ScriptView>,
}

/// One script of `GET /scripts`. Fields in the order the server has always written them
/// (sorted: they went through a `serde_json::Value`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ScriptView {
    /// Argument rules.
    pub args: ArgsView,
    /// Most jobs of this script running at once on a server (`concurrency` in scripts.json,
    /// ours); `null` when only `runner.maxConcurrent` limits it. In a cluster, per node.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 1))]
    pub concurrency: Option<usize>,
    /// Free text.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub description: Option<String>,
    /// Script id.
    pub id: String,
    /// Mode used when the request names none.
    #[cfg_attr(feature = "openapi", schema(value_type = JobMode))]
    pub mode: String,
    /// Seconds; 0 = no limit.
    pub timeout_sec: u64,
}

/// Argument rules of a script (fields sorted, as [`ScriptView`]'s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ArgsView {
    /// Longest argument, in characters.
    pub item_max_length: usize,
    /// Pattern each argument must match.
    pub item_pattern: String,
    /// Most arguments.
    pub max_items: usize,
}

/// `POST /run` body. The server reads it field by field (upstream's error codes: a missing
/// `scriptId` is `SCRIPT_NOT_FOUND`, bad arguments `INVALID_ARGS`); this type is its schema
/// and what a typed client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobRequest {
    /// The script to run (its id in scripts.json).
    pub script_id: String,
    /// Its arguments, checked against the script's rules (`GET /scripts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// `sync` (answer at the end) or `async` (`202` at once); the script's mode when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<JobMode>))]
    pub mode: Option<String>,
    /// Runs the script at most once per key (1 to 200 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// POST the job's final state here when it ends (async jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackRequest>,
}

/// A completion callback asked for: the server POSTs the job (as `GET /jobs/{id}` shows it),
/// signed with `X-Script-Runner-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`, until
/// the receiver answers 2xx (retried with backoff for `callbacks.maxAgeSec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallbackRequest {
    /// An http URL whose host is in `callbacks.allowedHosts` (default: loopback only).
    pub url: String,
    /// Which outcomes are delivered: `completed` (succeeded), `failed` (failed, timed out,
    /// canceled); both when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

/// One completion callback of a job and how its delivery went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CallbackView {
    /// Callback id.
    pub id: String,
    /// Where it is POSTed.
    pub url: String,
    /// The outcomes delivered.
    pub events: Vec<String>,
    /// `pending`, `delivered`, `failed` (gave up) or `skipped` (the outcome was not asked for).
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (ISO time), while pending.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub next_attempt_at: Option<String>,
    /// The HTTP status of the last attempt.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_error: Option<String>,
    /// ISO time.
    pub created_at: String,
    /// ISO time of the successful attempt.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub delivered_at: Option<String>,
    /// The last attempts (at most 20), oldest first.
    pub attempt_log: Vec<CallbackAttempt>,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CallbackAttempt {
    /// ISO time it started.
    pub at: String,
    /// The answer's HTTP status, if one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub status: Option<u16>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
    /// What it delivered: `completed`, `failed` or `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub event: Option<String>,
}

/// `GET /jobs/{id}/callbacks` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallbackList {
    /// Always true.
    pub ok: bool,
    /// The job's callbacks (none when it was started without one).
    pub callbacks: Vec<CallbackView>,
}

/// A job's mode (the schema of the `mode` fields, which the types keep as text).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "a schema only: the fields that carry a mode are text")]
pub enum JobMode {
    /// The answer waits for the job's end.
    Sync,
    /// The answer is `202` at once.
    Async,
}

/// A log's stream (the schema of the `stream` fields, which the types keep as text).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "a schema only: the fields that carry a stream are text")]
pub enum LogStream {
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
}

/// A job's status (the schema of the `status` fields, which the types keep as text).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code, reason = "a schema only: the fields that carry a status are text")]
pub enum JobStatus {
    /// Waiting for a free slot.
    Queued,
    /// Its process runs.
    Running,
    /// Exit code 0.
    Succeeded,
    /// Another exit code, a signal, or a spawn failure.
    Failed,
    /// Stopped at its `timeoutSec`.
    TimedOut,
    /// Cancelled (`POST /jobs/{id}/cancel`, or a shutdown).
    Canceled,
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn job() -> JobView {
        JobView {
            ok: Some(true),
            job_id: "job_1_1".into(),
            script_id: "echo".into(),
            status: "succeeded".into(),
            code: Some(0),
            started_at: Some("2026-01-01T00:00:00.000Z".into()),
            ended_at: Some("2026-01-01T00:00:00.005Z".into()),
            duration_ms: Some(5),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            mode: "sync".into(),
            stdout_ref: "job_1_1.stdout.log".into(),
            stderr_ref: "job_1_1.stderr.log".into(),
            stdout_size: 3,
            stderr_size: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_preview: "hi\n".into(),
            stderr_preview: String::new(),
            args: vec!["hi".into()],
            error: None,
            output_error: None,
            stdout: None,
            stderr: None,
            idempotency_key: None,
            deduplicated: None,
            node: None,
            queue_position: None,
        }
    }

    #[test]
    fn the_job_object_keeps_upstreams_field_order_and_reads_back_equal() {
        let text = serde_json::to_string(&job()).expect("serialise");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        let upstream =
            ["jobId", "scriptId", "status", "code", "startedAt", "endedAt", "durationMs", "createdAt", "mode"];
        let positions: Vec<usize> = upstream.iter().map(|k| text.find(&format!("\"{k}\"")).expect(k)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        // Fields of the sync answer only are left out, not written as null.
        assert!(value.get("stdout").is_none() && value.get("deduplicated").is_none(), "{text}");
        assert!(value.get("queuePosition").is_none(), "{text}");
        assert_eq!(value["outputError"], Value::Null);
        assert_eq!(serde_json::from_str::<JobView>(&text).expect("read back"), job());
    }

    #[test]
    fn a_job_list_and_an_async_answer_read_what_the_server_writes() {
        let list: JobList = serde_json::from_value(json!({ "ok": true, "jobs": [job()], "total": 7 })).expect("list");
        assert_eq!((list.jobs.len(), list.total), (1, 7));
        let accepted: Accepted =
            serde_json::from_value(json!({ "ok": true, "jobId": "job_1_2", "status": "queued" })).expect("202");
        assert_eq!(accepted.deduplicated, None);
        assert!(serde_json::from_value::<Accepted>(json!({ "ok": true, "status": "queued" })).is_err());
    }
}
