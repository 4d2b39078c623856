//! Row structs: what a database row holds, nothing more. The domain converts them to and from
//! its own types (`jobs::Job`), and the HTTP layer has its own wire types.

use diesel::prelude::*;

use super::schema::{callbacks, imports, jobs, resume_tokens, script_run_events, script_run_journal, script_runs};

/// A `jobs` row without its sequence number; also used whole for inserts and for updates
/// (every update rewrites the row but its idempotency key, `None` meaning NULL).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(
    table_name = jobs,
    check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg),
    treat_none_as_null = true,
    treat_none_as_default_value = false
)]
pub struct JobRow {
    /// Job id, e.g. `job_1732190000000_1`.
    pub id: String,
    /// Script id from the whitelist.
    pub script_id: String,
    /// `sync` or `async`.
    pub mode: String,
    /// One of the six wire statuses.
    pub status: String,
    /// JSON array of the argument strings.
    pub args: String,
    /// Exit code; -1 for timeout, cancel, signal or spawn failure; NULL before the end.
    pub code: Option<i32>,
    /// Why the job failed without an exit code of its own (spawn error, restart).
    pub error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub ended_at: Option<i64>,
    /// Milliseconds from start to end.
    pub duration_ms: Option<i64>,
    /// Log file name inside `logsDir`.
    pub stdout_ref: String,
    /// Log file name inside `logsDir`.
    pub stderr_ref: String,
    /// Bytes stored.
    pub stdout_size: i64,
    /// Bytes stored.
    pub stderr_size: i64,
    /// Whether output past the cap was dropped.
    pub stdout_truncated: bool,
    /// Whether output past the cap was dropped.
    pub stderr_truncated: bool,
    /// Tail of the stream as text.
    pub stdout_preview: String,
    /// Tail of the stream as text.
    pub stderr_preview: String,
    /// Lines stored, when known.
    pub stdout_lines: Option<i64>,
    /// Lines stored, when known.
    pub stderr_lines: Option<i64>,
    /// Process group leader pid while running.
    pub pid: Option<i32>,
    /// Start time of the leader in clock ticks since boot.
    pub proc_start_ticks: Option<i64>,
    /// The `idempotencyKey` the job was started under; fixed at its insert.
    #[diesel(skip_update)]
    pub idempotency_key: Option<String>,
    /// Why stdout could not be stored, if it could not.
    pub stdout_error: Option<String>,
    /// Why stderr could not be stored, if it could not.
    pub stderr_error: Option<String>,
    /// The cluster node that runs or ran the job (NULL on SQLite, and for an async job until a
    /// node claims it). Set at insert or by the cluster's claim; an update never moves it.
    #[diesel(skip_update)]
    pub node: Option<String>,
    /// A workflow step's job: `<runId>:<label>` (its `SCRIPT_STEP_KEY`); fixed at its insert.
    #[diesel(skip_update)]
    pub step_key: Option<String>,
}

/// An `imports` row: an upstream job store that was imported.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = imports)]
pub struct NewImport {
    /// Absolute path of the imported `jobs.json`.
    pub source: String,
    /// Unix ms.
    pub imported_at: i64,
    /// How many jobs it held.
    pub jobs: i32,
}

/// A `script_runs` row without its sequence number; used whole for inserts. An update writes
/// only the columns that change after the launch (status, output, pid, progress...): the source
/// (up to 1 MB) and the arguments are not rewritten on every heartbeat.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(
    table_name = script_runs,
    check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg),
    treat_none_as_null = true,
    treat_none_as_default_value = false
)]
pub struct RunRow {
    /// Run id, e.g. `run_1732190000000_1`.
    #[diesel(skip_update)]
    pub id: String,
    /// Display name (the workflow id unless the launch named one).
    #[diesel(skip_update)]
    pub script_name: String,
    /// Configured workflow id; `None` for inline source.
    #[diesel(skip_update)]
    pub workflow_id: Option<String>,
    /// Interpreter name of an inline run.
    #[diesel(skip_update)]
    pub interpreter: Option<String>,
    /// Flow name of a durable flow run.
    #[diesel(skip_update)]
    pub flow: Option<String>,
    /// One of the run statuses.
    pub status: String,
    /// Launch arguments (JSON).
    #[diesel(skip_update)]
    pub args: String,
    /// The source every execution runs.
    #[diesel(skip_update)]
    pub source: String,
    /// sha256 of `source`, hex.
    #[diesel(skip_update)]
    pub source_sha256: String,
    /// Output (JSON).
    pub output: Option<String>,
    /// Why the run failed or was stopped.
    pub error: Option<String>,
    /// JSON array of warning strings.
    pub warnings: String,
    /// Client-chosen key that makes launches idempotent.
    #[diesel(skip_update)]
    pub idempotency_key: Option<String>,
    /// sha256 of the launch request the key was first used for.
    #[diesel(skip_update)]
    pub request_sha256: String,
    /// sha256 of the current execution's token.
    pub token_sha256: String,
    /// The run this one was forked from.
    #[diesel(skip_update)]
    pub forked_from: Option<String>,
    /// Process group leader of the current execution.
    pub pid: Option<i32>,
    /// Executions started so far.
    pub attempt: i32,
    /// Progress: current step.
    pub progress_current: Option<i64>,
    /// Progress: total steps (0 if unknown).
    pub progress_total: Option<i64>,
    /// Progress: what is happening.
    pub progress_message: Option<String>,
    /// Unix ms.
    #[diesel(skip_update)]
    pub created_at: i64,
    /// First execution start, Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms, once terminal.
    pub finished_at: Option<i64>,
    /// Last sign of life of the execution, Unix ms.
    pub last_heartbeat_at: Option<i64>,
    /// The cluster node that holds the run (NULL on SQLite, and while no node holds it). Set
    /// at insert or by the cluster (a take-over, a hand-back); an update never moves it.
    #[diesel(skip_update)]
    pub node: Option<String>,
    /// What an `awaiting` run waits for (JSON), NULL otherwise.
    pub waiting_for: Option<String>,
    /// The run's retry option as launched (JSON `{attempts, delayMs}`), NULL without one. Set
    /// at insert; an update never changes it.
    #[diesel(skip_update)]
    pub retry: Option<String>,
    /// JSON array of the failed executions a retry re-ran (see `runs::view::attempt_view`).
    pub attempts: String,
    /// When the next execution of a retried run starts, Unix ms; NULL when none waits.
    pub next_attempt_at: Option<i64>,
}

/// A `script_run_journal` row: one durable step.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = script_run_journal, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct StepRow {
    /// The run.
    pub run_id: String,
    /// The step's label (its durability key).
    pub step_key: String,
    /// Journal order within the run.
    pub seq: i64,
    /// `command`, `script`, `value`, `sleep`, `approval` or `node`.
    pub step_type: String,
    /// What the step was asked to do (JSON).
    pub config: String,
    /// `started`, `completed` or `failed`.
    pub status: String,
    /// Result (JSON).
    pub result: Option<String>,
    /// Error text of a failed step.
    pub error: Option<String>,
    /// Job started by a script step.
    pub job_id: Option<String>,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms.
    pub completed_at: Option<i64>,
    /// Milliseconds the step took.
    pub duration_ms: Option<i64>,
    /// A retried step's failed attempts (JSON array), `[]` when it was never retried.
    pub attempts: String,
}

/// A `script_run_events` row: one event of a run, as stored (and streamed).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = script_run_events, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct EventRow {
    /// The run.
    pub run_id: String,
    /// Order within the run, from 1 (the SSE event id).
    pub seq: i64,
    /// The event's name, e.g. `step.record`.
    pub kind: String,
    /// JSON text: what the matching API read answered then.
    pub body: String,
    /// Unix ms.
    pub at: i64,
}

/// A `callbacks` row (the outbox of completion callbacks); inserted whole, updated whole.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(
    table_name = callbacks,
    check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg),
    treat_none_as_null = true
)]
pub struct CallbackRow {
    /// `cb_<owner id>`.
    pub id: String,
    /// `job` or `run`.
    pub owner_kind: String,
    /// The job's or run's id.
    pub owner_id: String,
    /// Where it is POSTed.
    pub url: String,
    /// JSON array of event names.
    pub events: String,
    /// pending | delivered | failed | skipped.
    pub state: String,
    /// Attempts made.
    pub attempts: i32,
    /// Unix ms.
    pub next_attempt_at: i64,
    /// The last answer's HTTP status.
    pub last_status: Option<i32>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// JSON array of the last attempts.
    pub attempt_log: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub delivered_at: Option<i64>,
    /// How far the owner's status changes were delivered (`status` callbacks).
    pub status_seq: i64,
}

/// A `resume_tokens` row: a resume URL used, by the SHA-256 of its token (never the token).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = resume_tokens, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct ResumeTokenRow {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// The run.
    pub run_id: String,
    /// The step's label.
    pub step_key: String,
    /// `resume` or `deny`.
    pub action: String,
    /// The random id of the request that used it.
    pub use_id: String,
    /// Unix ms.
    pub used_at: i64,
}
