//! One-time import of an upstream `jobs.json` (the Node.js script-runner's job store).
//!
//! Upstream keeps its history as a JSON array of job objects in `runner.jobStoreFile`. If that
//! file exists at start and was not imported before, its jobs are copied into the database with
//! their ids, times, statuses, previews and log references, so their logs stay readable when
//! `runner.logsDir` is upstream's logs folder (the default, `logs/` beside `jobs.json`, is the
//! same as upstream's). Jobs the file shows queued or running end `failed` with code -1, as
//! upstream itself does when it loads the file. The file is left untouched.

use std::path::Path;

use log::info;
use serde_json::{Map, Value};

use super::model::{Job, JobStatus, StreamInfo};
use crate::config::Mode;
use crate::db::{Store, StoreError, WriteOp};
use crate::time::{now_ms, parse_iso};

/// Largest job store read (upstream rewrites the whole file, so real ones are far smaller).
const MAX_STORE_BYTES: u64 = 512 * 1024 * 1024;

/// Why an import failed: startup stops with this message.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read or is not a JSON array.
    #[error("runner.jobStoreFile {path}: {message} (fix or move the file, or remove the key)")]
    Invalid {
        /// The job store.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Storage failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Imports the job store if there is one to import; returns how many jobs were imported.
pub fn import_job_store(path: &Path, store: &Store) -> Result<Option<usize>, ImportError> {
    if !path.is_file() {
        return Ok(None);
    }
    let source = path.display().to_string();
    if store.is_imported(&source)? {
        return Ok(None);
    }
    let invalid = |message: String| ImportError::Invalid { path: source.clone(), message };
    let size = std::fs::metadata(path).map_err(|e| invalid(e.to_string()))?.len();
    if size > MAX_STORE_BYTES {
        return Err(invalid(format!("{size} bytes is more than the {MAX_STORE_BYTES} bytes read")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let parsed: Value = serde_json::from_str(&text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let Value::Array(items) = parsed else { return Err(invalid("not a JSON array of jobs".into())) };
    let now = now_ms();
    let jobs: Vec<_> = items.iter().filter_map(Value::as_object).filter_map(|o| job_from_upstream(o, now)).collect();
    let count = jobs.len();
    store.writer().write_blocking(WriteOp::import(&jobs, source, now))?;
    info!("imported {count} job(s) from {}", path.display());
    Ok(Some(count))
}

fn job_from_upstream(o: &Map<String, Value>, now: i64) -> Option<Job> {
    let id = o.get("jobId")?.as_str()?.to_string();
    if id.is_empty() {
        return None;
    }
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    let int = |k: &str| o.get(k).and_then(Value::as_i64);
    let time = |k: &str| o.get(k).and_then(Value::as_str).and_then(parse_iso);
    let flag = |k: &str| o.get(k).and_then(Value::as_bool).unwrap_or(false);
    let stream = |prefix: &str| StreamInfo {
        log_ref: text(&format!("{prefix}Ref")).unwrap_or_default(),
        size: int(&format!("{prefix}Size")).and_then(|v| u64::try_from(v).ok()).unwrap_or(0),
        truncated: flag(&format!("{prefix}Truncated")),
        preview: text(&format!("{prefix}Preview")).unwrap_or_default(),
        lines: None,
        error: None,
    };
    let created_at = time("createdAt").or_else(|| time("startedAt")).unwrap_or(now);
    let mut job = Job::new(id, &text("scriptId").unwrap_or_default(), Mode::Async, Vec::new(), created_at);
    job.mode = text("mode").as_deref().and_then(Mode::parse).unwrap_or(Mode::Async);
    job.args = o
        .get("args")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    job.stdout = stream("stdout");
    job.stderr = stream("stderr");
    job.started_at = time("startedAt");
    job.ended_at = time("endedAt");
    job.duration_ms = int("durationMs");
    job.code = int("code").and_then(|c| i32::try_from(c).ok());
    job.status = text("status").as_deref().and_then(JobStatus::parse).unwrap_or(JobStatus::Failed);
    if !job.status.is_terminal() {
        job.end(JobStatus::Failed, Some("imported from an upstream job store while unfinished".into()), now);
    }
    Some(job)
}
