//! Row structs: what a database row holds, nothing more. The domain converts them to and from
//! its own types (`jobs::Job`), and the HTTP layer has its own wire types.

use diesel::prelude::*;

use super::schema::{imports, jobs};

/// A `jobs` row without its sequence number; also used whole for inserts and for updates
/// (every update rewrites the row, `None` meaning NULL).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(
    table_name = jobs,
    check_for_backend(diesel::sqlite::Sqlite),
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
