//! Runs and journal entries as their wire views: what the run API answers, and what the run's
//! events carry. One conversion for both, so an event's body is exactly what the matching API
//! read returns (it is stored when the change is, and a resumed reader gets those bytes).

use script_runner_wire::runs::{Progress as WireProgress, RetryOption, RunAttempt, RunView, StepAttempt, StepView};
use serde_json::Value;

use super::model::{JournalEntry, Run, RunStatus, StepStatus};
use crate::process::supervisor::Ending;
use crate::time::iso;

/// A run on the wire: statuses spelled, times as ISO text.
pub fn run_view(run: Run) -> RunView {
    run_view_of(&run)
}

/// [`run_view`] of a borrowed run: what an event takes under the run's lock, without copying
/// its source.
pub fn run_view_of(run: &Run) -> RunView {
    RunView {
        args: run.args.clone(),
        output: run.output.clone().unwrap_or(Value::Null),
        warnings: run.warnings.clone(),
        created_at: iso(run.created_at),
        started_at: run.started_at.map(iso),
        finished_at: run.finished_at.map(iso),
        last_heartbeat_at: run.last_heartbeat_at.map(iso),
        progress: run.progress.as_ref().map(|p| WireProgress {
            current: p.current,
            message: p.message.clone(),
            total: p.total,
        }),
        id: run.id.clone(),
        script_name: run.script_name.clone(),
        workflow_id: run.workflow_id.clone(),
        interpreter: run.interpreter.clone(),
        flow: run.flow.clone(),
        status: run.status.as_str().to_string(),
        error: run.error.clone(),
        source_sha256: run.source_sha256.clone(),
        pid: run.pid,
        idempotency_key: run.idempotency_key.clone(),
        attempt: run.attempt,
        forked_from: run.forked_from.clone(),
        node: run.node.clone(),
        // Kept on the run until its next wait replaces it; meaningful only while awaiting.
        waiting_for: run
            .waiting_for
            .as_ref()
            .filter(|_| run.status == RunStatus::Awaiting)
            .and_then(|w| serde_json::from_value(w.clone()).ok()),
        retry: run.retry.map(|r| RetryOption { attempts: r.attempts, delay_ms: r.delay_ms }),
        // Each is the engine's own writing (see `attempt_view`); one that does not read back
        // (a hand-edited database) is left out rather than failing the whole view.
        attempts: run.attempts.iter().filter_map(|a| serde_json::from_value(a.clone()).ok()).collect(),
        next_attempt_at: run.next_attempt_at.map(iso),
    }
}

/// A failed execution as the run keeps it in its `attempts` (the wire `RunAttempt`, as JSON):
/// execution `attempt`, from `started_at` to `ended_at`, with the error it failed with and
/// the journal entries that had failed in it.
pub fn attempt_view(
    attempt: i32,
    started_at: i64,
    ended_at: i64,
    error: Option<String>,
    ending: &Ending,
    failed_steps: Vec<JournalEntry>,
) -> Value {
    let view = RunAttempt {
        attempt,
        started_at: iso(started_at),
        ended_at: iso(ended_at),
        status: RunStatus::Failed.as_str().to_string(),
        error,
        exit_code: match ending {
            Ending::Exited(code) => Some(*code),
            _ => None,
        },
        failed_steps: failed_steps.into_iter().map(step_view).collect(),
    };
    // A wire view always serializes; `null` only guards the impossible.
    serde_json::to_value(view).unwrap_or(Value::Null)
}

/// A journal entry on the wire: its label is the `stepKey`, types and statuses spelled, times
/// as ISO text.
pub fn step_view(entry: JournalEntry) -> StepView {
    let next_attempt_at = match entry.status {
        StepStatus::Started => entry.result.as_ref().and_then(|r| r.get("nextAttemptAtMs")).and_then(Value::as_i64),
        _ => None,
    };
    StepView {
        attempts: entry
            .attempts
            .iter()
            .map(|a| StepAttempt {
                attempt: a.attempt,
                status: "failed".into(),
                exit_code: a.exit_code,
                error: a.error.clone(),
                stderr_tail: a.stderr_tail.clone(),
                started_at: iso(a.started_at),
                ended_at: iso(a.ended_at),
                job_id: a.job_id.clone(),
            })
            .collect(),
        next_attempt_at: next_attempt_at.map(iso),
        config: entry.config,
        result: entry.result.unwrap_or(Value::Null),
        started_at: iso(entry.started_at),
        completed_at: entry.completed_at.map(iso),
        step_key: entry.label,
        step_type: entry.step_type.as_str().to_string(),
        status: entry.status.as_str().to_string(),
        error: entry.error,
        job_id: entry.job_id,
        duration_ms: entry.duration_ms,
    }
}
