//! Workflow runs on the wire: the run object and its journal entries, as the run API and the
//! internal step routes answer them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A run (`GET /api/script-runs/{id}` and every answer that returns a run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    /// Run id (`run_<ms>_<seq>`).
    pub id: String,
    /// The workflow script's id, or the name given to an inline source or flow.
    pub script_name: String,
    /// The workflow script's id when the run came from the catalog.
    pub workflow_id: Option<String>,
    /// The interpreter of an inline source.
    pub interpreter: Option<String>,
    /// The flow a durable flow run executes.
    pub flow: Option<String>,
    /// `running`, `awaiting`, `paused`, `completed`, `failed`, `cancelled` or `aborted_limit`.
    pub status: String,
    /// The launch arguments.
    pub args: Value,
    /// The run's output (its stdout as JSON, else as text), once it has ended.
    pub output: Value,
    /// Why it failed, was cancelled or was stopped by a guardrail.
    pub error: Option<String>,
    /// What went wrong without failing the run (e.g. a log that could not be stored).
    pub warnings: Vec<String>,
    /// SHA-256 of the source, hex.
    pub source_sha256: String,
    /// The current execution's process.
    pub pid: Option<i32>,
    /// ISO time.
    pub created_at: String,
    /// ISO time of the first execution's start.
    pub started_at: Option<String>,
    /// ISO time.
    pub finished_at: Option<String>,
    /// ISO time of the current execution's last heartbeat.
    pub last_heartbeat_at: Option<String>,
    /// The cluster node that holds the run (ours; only in a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The key the run was launched under.
    pub idempotency_key: Option<String>,
    /// Executions so far (1 for the first).
    pub attempt: i32,
    /// The last progress reported.
    pub progress: Option<Progress>,
    /// The run this one was forked from.
    pub forked_from: Option<String>,
}

/// A run's progress, as its workflow reported it (`POST .../progress`). (Fields in the
/// order the server has always written them.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Units done.
    pub current: i64,
    /// What it is doing.
    pub message: Option<String>,
    /// Units in all (0 when unknown).
    pub total: i64,
}

/// A journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    /// The label.
    pub step_key: String,
    /// `command`, `script`, `value`, `sleep`, `approval` or `node`.
    pub step_type: String,
    /// What the step was asked to do (replays must ask the same).
    pub config: Value,
    /// `started`, `completed` or `failed`.
    pub status: String,
    /// What it produced.
    pub result: Value,
    /// Why it failed.
    pub error: Option<String>,
    /// The job a script step started.
    pub job_id: Option<String>,
    /// ISO time.
    pub started_at: String,
    /// ISO time.
    pub completed_at: Option<String>,
    /// How long it took.
    pub duration_ms: Option<i64>,
}

/// `{ok, run}`: the answer of the routes that return one run (a launch whose idempotency key
/// matched an earlier one adds `deduplicated: true`). Fields in the order the server has
/// always written them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAnswer {
    /// `true` when a launch's idempotency key matched this earlier run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplicated: Option<bool>,
    /// Always true.
    pub ok: bool,
    /// The run.
    pub run: RunView,
}

/// `GET /api/script-runs/{id}`: the run and its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    /// Its journal entries, in the order they were begun.
    pub journal: Vec<StepView>,
    /// Always true.
    pub ok: bool,
    /// The run.
    pub run: RunView,
}

/// `GET /api/script-runs`: a page of runs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunList {
    /// Always true.
    pub ok: bool,
    /// The page.
    pub runs: Vec<RunView>,
    /// Runs matching the filter in all.
    pub total: i64,
}

/// A byte page of a run execution's log (`GET /api/script-runs/{id}/logs`). Fields in the
/// order the server has always written them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunBytesPage {
    /// The bytes as text (invalid UTF-8 shown as U+FFFD).
    pub data: String,
    /// Byte offset of the next page.
    pub next_offset: u64,
    /// Byte offset of the page.
    pub offset: u64,
    /// Always true.
    pub ok: bool,
    /// Why some of the execution's output could not be stored.
    pub output_error: Option<String>,
    /// Run id.
    pub run_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Log size now.
    pub total_size: u64,
    /// Always false so far: an execution's log is capped at `maxLogBytesPerStream` like a
    /// job's, but the run does not record whether the cap was reached (a known gap).
    pub truncated: bool,
}

/// A line page of a run execution's log. Fields in the order the server has always written
/// them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunLinesPage {
    /// The lines without their newline.
    pub lines: Vec<String>,
    /// Line offset of the next page.
    pub next_offset: u64,
    /// Line offset of the page.
    pub offset: u64,
    /// Always true.
    pub ok: bool,
    /// Why some of the execution's output could not be stored.
    pub output_error: Option<String>,
    /// Run id.
    pub run_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Lines in the log (complete lines while the execution runs).
    pub total_lines: u64,
    /// Always false so far: an execution's log is capped at `maxLogBytesPerStream` like a
    /// job's, but the run does not record whether the cap was reached (a known gap).
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_runs_progress_is_written_in_the_order_the_server_always_wrote_it() {
        let progress = Progress { current: 2, message: Some("copying".into()), total: 5 };
        let text = serde_json::to_string(&progress).expect("serialise");
        assert_eq!(text, r#"{"current":2,"message":"copying","total":5}"#);
    }

    #[test]
    fn a_deduplicated_launch_says_so_and_a_plain_answer_has_no_such_field() {
        let run: RunView = serde_json::from_value(json!({
            "id": "run_1_1", "scriptName": "w", "workflowId": null, "interpreter": null, "flow": null,
            "status": "running", "args": {}, "output": null, "error": null, "warnings": [],
            "sourceSha256": "ab", "pid": 7, "createdAt": "t", "startedAt": null, "finishedAt": null,
            "lastHeartbeatAt": null, "idempotencyKey": "k", "attempt": 1, "progress": null, "forkedFrom": null
        }))
        .expect("run");
        let plain = serde_json::to_value(RunAnswer { deduplicated: None, ok: true, run: run.clone() }).expect("plain");
        assert!(plain.get("deduplicated").is_none(), "{plain}");
        let again = serde_json::to_string(&RunAnswer { deduplicated: Some(true), ok: true, run }).expect("again");
        assert!(again.starts_with(r#"{"deduplicated":true,"ok":true,"run":{"id":"run_1_1""#), "{again}");
    }
}
