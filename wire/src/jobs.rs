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
    /// The cluster node that runs or ran the job (ours; only in a cluster, once a node took it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
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
