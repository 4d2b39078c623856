//! Workflow runs on the wire: the run object and its journal entries, as the run API and the
//! internal step routes answer them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A run (`GET /api/script-runs/{id}` and every answer that returns a run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    /// Run id (`run_<ms>_<seq>`).
    pub id: String,
    /// The workflow script's id, or the name given to an inline source or flow.
    pub script_name: String,
    /// The workflow script's id when the run came from the catalog.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub workflow_id: Option<String>,
    /// The interpreter of an inline source.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub interpreter: Option<String>,
    /// The flow a durable flow run executes.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub flow: Option<String>,
    /// `running`, `awaiting`, `paused`, `completed`, `failed`, `cancelled` or `aborted_limit`.
    #[cfg_attr(feature = "openapi", schema(value_type = RunStatus))]
    pub status: String,
    /// The launch arguments.
    pub args: Value,
    /// The run's output (its stdout as JSON, else as text), once it has ended.
    pub output: Value,
    /// Why it failed, was cancelled or was stopped by a guardrail.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub error: Option<String>,
    /// What went wrong without failing the run (e.g. a log that could not be stored).
    pub warnings: Vec<String>,
    /// SHA-256 of the source, hex.
    pub source_sha256: String,
    /// The current execution's process.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub pid: Option<i32>,
    /// ISO time.
    pub created_at: String,
    /// ISO time of the first execution's start.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub started_at: Option<String>,
    /// ISO time.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub finished_at: Option<String>,
    /// ISO time of the current execution's last heartbeat.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_heartbeat_at: Option<String>,
    /// The cluster node that holds the run (ours; only in a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub node: Option<String>,
    /// The key the run was launched under.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub idempotency_key: Option<String>,
    /// Executions so far (1 for the first).
    pub attempt: i32,
    /// The last progress reported.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub progress: Option<Progress>,
    /// The run this one was forked from.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub forked_from: Option<String>,
    /// What an `awaiting` run waits for (absent otherwise): the step someone outside the run
    /// must decide, give a value to or send an event to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub waiting_for: Option<WaitingFor>,
    /// The launch's retry option (`null` without one).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub retry: Option<RetryOption>,
    /// The failed executions the retry option re-ran, oldest first (empty without a retry).
    #[serde(default)]
    pub attempts: Vec<RunAttempt>,
    /// When the next execution of a failed run being retried starts (ISO time); `null` when
    /// none waits.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub next_attempt_at: Option<String>,
}

/// `retry` on launch: re-run a failed run with replay (completed steps are not run again; the
/// failed ones are moved out of the journal into `attempts` and run again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryOption {
    /// Executions in all, the first one included (1 to 100): `3` re-runs a failed run at
    /// most twice.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub attempts: u32,
    /// Milliseconds between a failed execution's end and the next one's start (0 to
    /// 86400000; 0 when absent).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 86400000))]
    pub delay_ms: u64,
}

/// A failed execution of a run that its retry option re-ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunAttempt {
    /// The execution's number (the run's `attempt` then: `GET .../logs?attempt=N` reads its
    /// log).
    pub attempt: i32,
    /// ISO time the execution started.
    pub started_at: String,
    /// ISO time it ended.
    pub ended_at: String,
    /// Always `failed`.
    pub status: String,
    /// Why it failed (as the run's `error` would have said).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub error: Option<String>,
    /// Its process's exit code (`null` when it did not exit by itself: a signal, a spawn
    /// failure).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub exit_code: Option<i32>,
    /// The journal entries that had failed, as they were (moved out of the journal so the
    /// next execution runs those steps again).
    pub failed_steps: Vec<StepView>,
}

/// The step an `awaiting` run waits for, and what it asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WaitingFor {
    /// The step's label (`stepKey`).
    pub label: String,
    /// `approval`, `input` or `event`.
    pub kind: String,
    /// An approval's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub message: Option<String>,
    /// An input's prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub prompt: Option<String>,
    /// An input's JSON schema (absent: any value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub schema: Option<Value>,
    /// An event step's event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub event: Option<String>,
    /// When an event step times out (ISO time; absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub deadline_at: Option<String>,
    /// (ours; only with `resume.secret` configured) A URL that approves the approval, submits
    /// the input (`POST {value, by?}`) or delivers the event (the body is its payload), without
    /// the server's token: the token in it is the credential. Works once, until `expiresAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub resume_url: Option<String>,
    /// (ours; with `resumeUrl`) A URL that denies the approval, or fails the input or event
    /// step. Either URL of the pair decides the step; the other then answers `409`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub deny_url: Option<String>,
    /// (ours; with `resumeUrl`) When both URLs stop working (ISO time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub expires_at: Option<String>,
}

/// `GET` and `POST /api/resume/{token}`: the step a resume URL decides, and what it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ResumeUrlView {
    /// Always true.
    pub ok: bool,
    /// The run.
    pub run_id: String,
    /// The run's status.
    #[cfg_attr(feature = "openapi", schema(value_type = RunStatus))]
    pub run_status: String,
    /// The step's label (`stepKey`).
    pub label: String,
    /// `approval`, `input` or `event`.
    pub kind: String,
    /// `resume` or `deny`: which URL of the pair this is.
    pub action: String,
    /// What a `POST` to it does: `approve`, `submit`, `deliver`, `deny` (an approval) or `fail`
    /// (an input or event step).
    pub effect: String,
    /// An approval's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub message: Option<String>,
    /// An input's prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub prompt: Option<String>,
    /// An input's JSON schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub schema: Option<Value>,
    /// An event step's event name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub event: Option<String>,
    /// When the URL stops working (ISO time).
    pub expires_at: String,
    /// Whether the step has been decided (through this URL, its pair, or the run API): a
    /// `POST` then answers `409 ALREADY_DECIDED`.
    pub decided: bool,
    /// When this URL was used (ISO time), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub used_at: Option<String>,
}

/// A run's progress, as its workflow reported it (`POST .../progress`). (Fields in the
/// order the server has always written them.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    /// Units done.
    pub current: i64,
    /// What it is doing.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub message: Option<String>,
    /// Units in all (0 when unknown).
    pub total: i64,
}

/// A journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    /// The label.
    pub step_key: String,
    /// `command`, `script`, `value`, `sleep`, `approval` or `node`.
    #[cfg_attr(feature = "openapi", schema(value_type = StepType))]
    pub step_type: String,
    /// What the step was asked to do (replays must ask the same).
    pub config: Value,
    /// `started`, `completed` or `failed`.
    #[cfg_attr(feature = "openapi", schema(value_type = StepStatus))]
    pub status: String,
    /// What it produced.
    pub result: Value,
    /// Why it failed.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub error: Option<String>,
    /// The job a script step started.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub job_id: Option<String>,
    /// ISO time.
    pub started_at: String,
    /// ISO time.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub completed_at: Option<String>,
    /// How long it took.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub duration_ms: Option<i64>,
    /// A retried step's failed attempts, oldest first (`--retry N`); empty when it was never
    /// retried. The step's `result` and `error` are its last attempt's.
    #[serde(default)]
    pub attempts: Vec<StepAttempt>,
    /// While a retried step waits between tries: when the next try is due (ISO time); a
    /// restarted run waits only what is left of it. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub next_attempt_at: Option<String>,
}

/// One failed try of a retried step, as journaled before the next try.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepAttempt {
    /// 1 for the first try.
    pub attempt: u32,
    /// Always `failed` (a try that succeeded is the step's result).
    pub status: String,
    /// Its exit code (a script step's job code; null when the job had none).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub exit_code: Option<i64>,
    /// Why it failed (`exit code 3`, `timed out after 2s`, `job ... failed with exit code 1`).
    pub error: String,
    /// The last (at most 4096) bytes of its stderr.
    pub stderr_tail: String,
    /// ISO time.
    pub started_at: String,
    /// ISO time.
    pub ended_at: String,
    /// The job of a script step's attempt (absent for a command step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub job_id: Option<String>,
}

/// `{ok, run}`: the answer of the routes that return one run (a launch whose idempotency key
/// matched an earlier one adds `deduplicated: true`). Fields in the order the server has
/// always written them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunAnswer {
    /// `true` when a launch's idempotency key matched this earlier run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub deduplicated: Option<bool>,
    /// Always true.
    pub ok: bool,
    /// The run.
    pub run: RunView,
}

/// `GET /api/script-runs/{id}`: the run and its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub output_error: Option<String>,
    /// Run id.
    pub run_id: String,
    /// `stdout` or `stderr`.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::jobs::LogStream))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub output_error: Option<String>,
    /// Run id.
    pub run_id: String,
    /// `stdout` or `stderr`.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::jobs::LogStream))]
    pub stream: String,
    /// Lines in the log (complete lines while the execution runs).
    pub total_lines: u64,
    /// Always false so far: an execution's log is capped at `maxLogBytesPerStream` like a
    /// job's, but the run does not record whether the cap was reached (a known gap).
    pub truncated: bool,
}

/// `POST /api/script-runs` body: exactly one of `workflowId` (a configured workflow),
/// `source` with `interpreter` (inline), or `flow`. The server reads it field by field (an
/// unknown field is `400 INVALID_REQUEST`); this type is its schema and what a typed client
/// sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LaunchRequest {
    /// A workflow of scripts.json (`"kind": "workflow"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// An inline source (when `workflows.interpreters` allows its interpreter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The interpreter of `source` (a key of `workflows.interpreters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<String>,
    /// A flow to run durably (a flow file of `workflows.flowsDir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// The name an inline source or flow run is listed under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_name: Option<String>,
    /// The run's arguments (any JSON; `{}` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// Launches at most one run per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// `true` (the default): answer `201` at once; `false`: answer when the run has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<bool>,
    /// POST the run (as `GET /api/script-runs/{id}` shows its `run`) to this URL when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<crate::jobs::CallbackRequest>,
    /// Re-run the run when an execution fails (see `RetryOption`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryOption>,
}

/// `POST /api/script-runs/{id}/fork` body (optional; an empty body forks from the start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ForkRequest {
    /// The label to fork at: the journal before it is kept, it and what follows run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_step: Option<String>,
    /// Another source for the fork (an inline run's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `POST /api/script-runs/{id}/approvals/{label}` body: a human's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApprovalRequest {
    /// Approved or denied.
    pub approved: bool,
    /// Who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `POST /api/script-runs/{id}/inputs/{label}` body: the value an input step waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InputRequest {
    /// The value (any JSON; it must match the step's schema, if it has one).
    pub value: serde_json::Value,
    /// Who supplied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// A run's status (the schema of the `status` fields, which the types keep as text).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code, reason = "a schema only: the fields that carry a status are text")]
pub enum RunStatus {
    /// An execution runs.
    Running,
    /// Waiting for an approval.
    Awaiting,
    /// Paused by a request or parked.
    Paused,
    /// Ended well.
    Completed,
    /// Ended badly.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Stopped by a guardrail (`workflows.maxSteps`, ...).
    AbortedLimit,
}

/// A journal entry's type (the schema of the `stepType` fields, which the types keep as text).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "a schema only: the fields that carry a step type are text")]
pub enum StepType {
    /// A local command.
    Command,
    /// A configured script, run as a job.
    Script,
    /// A recorded value.
    Value,
    /// A durable sleep.
    Sleep,
    /// A human decision.
    Approval,
    /// A node of a flow.
    Node,
    /// A value supplied from outside the run, checked against a JSON schema.
    Input,
    /// A named event posted to the run (or a time-out).
    Event,
}

/// A journal entry's status (the schema of its `status` field, which the type keeps as text).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "a schema only: the fields that carry a step status are text")]
pub enum StepStatus {
    /// Begun, not ended (a sleep, an approval, a script's job).
    Started,
    /// Ended well.
    Completed,
    /// Ended badly.
    Failed,
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
