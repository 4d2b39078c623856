//! Workflow runs in storage: the typed [`Run`] and [`JournalEntry`] of the run engine to and
//! from their rows. The engine never sees a row; the stored spellings of statuses and step
//! types, and JSON kept as text, stay on this side.

use serde_json::Value;

use super::models::{EventRow, RunRow, StepRow};
use super::{StoreError, WriteOp};
use crate::runs::events::{EventKind, StoredEvent};
use crate::runs::model::{JournalEntry, Progress, RetryPolicy, Run, RunStatus, StepStatus, StepType};

/// A value as the compact JSON text stored for it.
fn to_text(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

/// A stored JSON text as a value (`null` if it is not JSON: the column is the engine's own
/// writing, so this only guards against a hand-edited database).
fn from_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A stored retry option (`{"attempts", "delayMs"}`); `None` if the text is not one (the
/// column is the engine's own writing: this only guards against a hand-edited database).
fn retry_from_text(text: &str) -> Option<RetryPolicy> {
    let value = from_text(text);
    Some(RetryPolicy {
        attempts: u32::try_from(value.get("attempts")?.as_u64()?).ok()?,
        delay_ms: value.get("delayMs")?.as_u64()?,
    })
}

impl TryFrom<RunRow> for Run {
    type Error = StoreError;

    /// A stored run; a status the engine does not know is refused rather than guessed.
    fn try_from(row: RunRow) -> Result<Run, StoreError> {
        let status = RunStatus::parse(&row.status)
            .ok_or_else(|| StoreError::Decode(format!("run {} has an unknown status {:?}", row.id, row.status)))?;
        let progress = row.progress_current.map(|current| Progress {
            current,
            total: row.progress_total.unwrap_or(0),
            message: row.progress_message,
        });
        Ok(Run {
            status,
            args: from_text(&row.args),
            output: row.output.as_deref().map(from_text),
            warnings: serde_json::from_str(&row.warnings).unwrap_or_default(),
            progress,
            id: row.id,
            script_name: row.script_name,
            workflow_id: row.workflow_id,
            interpreter: row.interpreter,
            flow: row.flow,
            source: row.source,
            source_sha256: row.source_sha256,
            error: row.error,
            idempotency_key: row.idempotency_key,
            request_sha256: row.request_sha256,
            token_sha256: row.token_sha256,
            forked_from: row.forked_from,
            pid: row.pid,
            attempt: row.attempt,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            last_heartbeat_at: row.last_heartbeat_at,
            node: row.node,
            waiting_for: row.waiting_for.as_deref().map(from_text),
            retry: row.retry.as_deref().and_then(retry_from_text),
            attempts: serde_json::from_str(&row.attempts).unwrap_or_default(),
            next_attempt_at: row.next_attempt_at,
        })
    }
}

impl From<&Run> for RunRow {
    /// The row that stores `run`.
    fn from(run: &Run) -> RunRow {
        RunRow {
            id: run.id.clone(),
            script_name: run.script_name.clone(),
            workflow_id: run.workflow_id.clone(),
            interpreter: run.interpreter.clone(),
            flow: run.flow.clone(),
            status: run.status.as_str().to_string(),
            args: to_text(&run.args),
            source: run.source.clone(),
            source_sha256: run.source_sha256.clone(),
            output: run.output.as_ref().map(to_text),
            error: run.error.clone(),
            warnings: serde_json::to_string(&run.warnings).unwrap_or_else(|_| "[]".into()),
            idempotency_key: run.idempotency_key.clone(),
            request_sha256: run.request_sha256.clone(),
            token_sha256: run.token_sha256.clone(),
            forked_from: run.forked_from.clone(),
            pid: run.pid,
            attempt: run.attempt,
            progress_current: run.progress.as_ref().map(|p| p.current),
            progress_total: run.progress.as_ref().map(|p| p.total),
            progress_message: run.progress.as_ref().and_then(|p| p.message.clone()),
            created_at: run.created_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
            last_heartbeat_at: run.last_heartbeat_at,
            node: run.node.clone(),
            waiting_for: run.waiting_for.as_ref().map(to_text),
            retry: run.retry.map(|r| to_text(&serde_json::json!({"attempts": r.attempts, "delayMs": r.delay_ms}))),
            attempts: serde_json::to_string(&run.attempts).unwrap_or_else(|_| "[]".into()),
            next_attempt_at: run.next_attempt_at,
        }
    }
}

impl TryFrom<StepRow> for JournalEntry {
    type Error = StoreError;

    /// A stored journal entry; a step type or status the engine does not know is refused.
    fn try_from(row: StepRow) -> Result<JournalEntry, StoreError> {
        let unknown = |what: &str, value: &str| {
            StoreError::Decode(format!("step {:?} of run {} has an unknown {what} {value:?}", row.step_key, row.run_id))
        };
        let step_type = StepType::parse(&row.step_type).ok_or_else(|| unknown("step type", &row.step_type))?;
        let status = StepStatus::parse(&row.status).ok_or_else(|| unknown("status", &row.status))?;
        let attempts = serde_json::from_str(&row.attempts).map_err(|e| {
            StoreError::Decode(format!("step {:?} of run {} has unreadable attempts: {e}", row.step_key, row.run_id))
        })?;
        Ok(JournalEntry {
            attempts,
            step_type,
            status,
            config: from_text(&row.config),
            result: row.result.as_deref().map(from_text),
            run_id: row.run_id,
            label: row.step_key,
            seq: row.seq,
            error: row.error,
            job_id: row.job_id,
            started_at: row.started_at,
            completed_at: row.completed_at,
            duration_ms: row.duration_ms,
        })
    }
}

impl From<&JournalEntry> for StepRow {
    /// The row that stores `entry`.
    fn from(entry: &JournalEntry) -> StepRow {
        StepRow {
            run_id: entry.run_id.clone(),
            step_key: entry.label.clone(),
            seq: entry.seq,
            step_type: entry.step_type.as_str().to_string(),
            config: to_text(&entry.config),
            status: entry.status.as_str().to_string(),
            result: entry.result.as_ref().map(to_text),
            error: entry.error.clone(),
            job_id: entry.job_id.clone(),
            started_at: entry.started_at,
            completed_at: entry.completed_at,
            duration_ms: entry.duration_ms,
            attempts: serde_json::to_string(&entry.attempts).unwrap_or_else(|_| "[]".into()),
        }
    }
}

impl TryFrom<EventRow> for StoredEvent {
    type Error = StoreError;

    /// A stored event (its body stays the stored text); a kind the server does not know is
    /// refused rather than guessed.
    fn try_from(row: EventRow) -> Result<StoredEvent, StoreError> {
        let kind = EventKind::parse(&row.kind).ok_or_else(|| {
            StoreError::Decode(format!("event {} of run {} has an unknown kind {:?}", row.seq, row.run_id, row.kind))
        })?;
        Ok(StoredEvent { seq: u64::try_from(row.seq).unwrap_or(0), kind, body: row.body, at: row.at })
    }
}

/// Stored runs as typed runs.
pub(super) fn runs(rows: Vec<RunRow>) -> Result<Vec<Run>, StoreError> {
    rows.into_iter().map(Run::try_from).collect()
}

/// Stored journal entries as typed entries.
pub(super) fn entries(rows: Vec<StepRow>) -> Result<Vec<JournalEntry>, StoreError> {
    rows.into_iter().map(JournalEntry::try_from).collect()
}

impl WriteOp {
    /// Inserts a new run.
    pub fn insert_run(run: &Run) -> WriteOp {
        WriteOp::InsertRun(Box::new(RunRow::from(run)))
    }

    /// Rewrites the stored run with `run`'s changing columns.
    pub fn update_run(run: &Run) -> WriteOp {
        WriteOp::UpdateRun(Box::new(RunRow::from(run)))
    }

    /// Rewrites the stored run and deletes its failed journal entries `dropped`, in one
    /// transaction (a run-level retry: see [`WriteOp::RetryRun`]).
    pub fn retry_run(run: &Run, dropped: Vec<String>) -> WriteOp {
        WriteOp::RetryRun { run: Box::new(RunRow::from(run)), dropped }
    }

    /// Inserts journal entries (a label already journaled is left as it is).
    pub fn insert_steps(entries: &[JournalEntry]) -> WriteOp {
        WriteOp::InsertSteps(entries.iter().map(StepRow::from).collect())
    }

    /// Ends a started journal entry (one already ended is left as it is).
    pub fn finish_step(entry: &JournalEntry) -> WriteOp {
        WriteOp::FinishStep(Box::new(StepRow::from(entry)))
    }

    /// Journals a failed attempt of a started, retried entry: its new `attempts`, `result`
    /// (the next try's time) and `job_id` (a script step's next job), stored only if the entry
    /// is still started with the attempts `before` (a second writer of the same attempt
    /// changes nothing).
    pub fn retry_step(entry: &JournalEntry, before: &[crate::runs::model::Attempt]) -> WriteOp {
        WriteOp::RetryStep {
            row: Box::new(StepRow::from(entry)),
            before: serde_json::to_string(before).unwrap_or_else(|_| "[]".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_run_survives_its_row_unchanged() {
        let run = Run {
            status: RunStatus::Awaiting,
            args: json!({"b": [1, 2.5, "x"], "a": null}),
            output: Some(json!("text")),
            warnings: vec!["w1".into(), "w2".into()],
            progress: Some(Progress { current: 2, total: 5, message: Some("half".into()) }),
            pid: Some(7),
            retry: Some(RetryPolicy { attempts: 3, delay_ms: 200 }),
            attempts: vec![json!({"attempt": 1, "failedSteps": []})],
            next_attempt_at: Some(12),
            ..Run::fresh("run_1_1".into(), 10)
        };
        assert_eq!(Run::try_from(RunRow::from(&run)).expect("a run row decodes"), run);
        let bare = Run::fresh("run_1_2".into(), 10);
        let row = RunRow::from(&bare);
        assert_eq!((row.args.as_str(), row.warnings.as_str(), row.output.as_deref()), ("{}", "[]", None));
        assert_eq!(
            Run::try_from(RunRow { status: "odd".into(), ..row }).expect_err("an unknown status").to_string(),
            "database decode: run run_1_2 has an unknown status \"odd\""
        );
    }

    #[test]
    fn a_journal_entry_survives_its_row_unchanged() {
        let entry = JournalEntry {
            run_id: "run_1_1".into(),
            label: "fetch".into(),
            seq: 3,
            step_type: StepType::Script,
            config: json!({"scriptId": "s", "wait": false}),
            status: StepStatus::Completed,
            result: Some(json!({"jobId": "job_1_1"})),
            error: None,
            job_id: Some("job_1_1".into()),
            started_at: 5,
            completed_at: Some(9),
            duration_ms: Some(4),
            attempts: Vec::new(),
        };
        assert_eq!(JournalEntry::try_from(StepRow::from(&entry)).expect("a step row decodes"), entry);
        let row = StepRow { step_type: "teleport".into(), ..StepRow::from(&entry) };
        assert!(JournalEntry::try_from(row).is_err());
    }
}
