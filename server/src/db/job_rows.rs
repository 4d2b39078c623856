//! Jobs in storage: the domain's [`Job`] to and from its row. The job service never sees a
//! row; the stored spellings of statuses and modes, and the args kept as JSON text, stay here.

use super::models::{JobRow, NewImport};
use super::WriteOp;
use crate::config::Mode;
use crate::jobs::model::{Job, JobStatus, StreamInfo};

impl From<&Job> for JobRow {
    /// The row that stores the job.
    fn from(job: &Job) -> JobRow {
        JobRow {
            id: job.id.clone(),
            script_id: job.script_id.clone(),
            mode: job.mode.as_str().to_string(),
            status: job.status.as_str().to_string(),
            args: serde_json::to_string(&job.args).unwrap_or_else(|_| "[]".to_string()),
            code: job.code,
            error: job.error.clone(),
            created_at: job.created_at,
            started_at: job.started_at,
            ended_at: job.ended_at,
            duration_ms: job.duration_ms,
            stdout_ref: job.stdout.log_ref.clone(),
            stderr_ref: job.stderr.log_ref.clone(),
            stdout_size: to_i64(job.stdout.size),
            stderr_size: to_i64(job.stderr.size),
            stdout_truncated: job.stdout.truncated,
            stderr_truncated: job.stderr.truncated,
            stdout_preview: job.stdout.preview.clone(),
            stderr_preview: job.stderr.preview.clone(),
            stdout_lines: job.stdout.lines.map(to_i64),
            stderr_lines: job.stderr.lines.map(to_i64),
            pid: job.pid,
            proc_start_ticks: job.proc_start_ticks.map(to_i64),
            idempotency_key: job.idempotency_key.clone(),
            stdout_error: job.stdout.error.clone(),
            stderr_error: job.stderr.error.clone(),
            node: job.node.clone(),
            step_key: job.step_key.clone(),
        }
    }
}

impl From<JobRow> for Job {
    /// From a database row; a value the row cannot hold sensibly is read leniently (an unknown
    /// status as `failed`), so one odd row never makes a listing fail.
    fn from(row: JobRow) -> Job {
        Job {
            mode: Mode::parse(&row.mode).unwrap_or(Mode::Async),
            status: JobStatus::parse(&row.status).unwrap_or(JobStatus::Failed),
            args: serde_json::from_str(&row.args).unwrap_or_default(),
            stdout: StreamInfo {
                log_ref: row.stdout_ref,
                size: to_u64(row.stdout_size),
                truncated: row.stdout_truncated,
                preview: row.stdout_preview,
                lines: row.stdout_lines.map(to_u64),
                error: row.stdout_error,
            },
            stderr: StreamInfo {
                log_ref: row.stderr_ref,
                size: to_u64(row.stderr_size),
                truncated: row.stderr_truncated,
                preview: row.stderr_preview,
                lines: row.stderr_lines.map(to_u64),
                error: row.stderr_error,
            },
            id: row.id,
            script_id: row.script_id,
            code: row.code,
            error: row.error,
            created_at: row.created_at,
            started_at: row.started_at,
            ended_at: row.ended_at,
            duration_ms: row.duration_ms,
            pid: row.pid,
            proc_start_ticks: row.proc_start_ticks.map(to_u64),
            idempotency_key: row.idempotency_key,
            node: row.node,
            step_key: row.step_key,
        }
    }
}

impl WriteOp {
    /// Inserts a new job.
    pub fn insert_job(job: &Job) -> WriteOp {
        WriteOp::InsertJob(Box::new(JobRow::from(job)))
    }

    /// Rewrites the stored job with the same id.
    pub fn update_job(job: &Job) -> WriteOp {
        WriteOp::UpdateJob(Box::new(JobRow::from(job)))
    }

    /// Inserts jobs imported from `source` (existing ids are skipped) and records the import.
    pub fn import(jobs: &[Job], source: String, imported_at: i64) -> WriteOp {
        let record = NewImport { source, imported_at, jobs: i32::try_from(jobs.len()).unwrap_or(i32::MAX) };
        WriteOp::Import { rows: jobs.iter().map(JobRow::from).collect(), record }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
