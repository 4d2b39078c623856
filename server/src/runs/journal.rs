//! The step journal: what a workflow's step client asks for (through the internal routes,
//! authorised by the run token), recorded and replayed by label, and an approval's decision.
//!
//! A label journaled before returns its stored entry (replay); a new one is counted against
//! the guardrails ([`rules::Budget`]) before it executes. Server-side steps (a script, a
//! sleep, an approval) are journaled as `started` first and ended later: a script step names
//! its job in the journal before the job exists, so a crash never leaves a job the journal
//! does not know of. What an entry means for the run's status (an approval makes it
//! `awaiting`, a decision makes it go on) is decided by [`execution`] and [`lifecycle`].

pub mod rules;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::error::RunError;
use super::launch::{sha256_hex, to_json};
use super::lifecycle;
use super::live::LiveRun;
use super::model::{
    tail, Attempt, Begun, Decision, JournalEntry, Progress, Run, RunStatus, StepRecord, StepRequest, StepStatus,
    StepType, Submission, ATTEMPT_STDERR_TAIL,
};
use super::{execution, Engine, MAX_WAIT};
use crate::jobs::model::JobStatus;
use crate::jobs::{Admission, JobError, StepJob};
use crate::process::logs::Stream;
use crate::time::now_ms;
use script_runner_wire::steps::step_key;

/// Checks a run token: it must be the token of the run's current execution.
pub fn authorize(engine: &Engine, id: &str, token: &str) -> Result<Arc<LiveRun>, RunError> {
    let hashed = sha256_hex(token.as_bytes());
    let live = engine.live.get(id).ok_or_else(|| RunError::Forbidden(id.to_string()))?;
    let granted = {
        let state = live.lock();
        constant_time_eq::constant_time_eq(hashed.as_bytes(), state.run.token_sha256.as_bytes())
    };
    if granted {
        Ok(live)
    } else {
        Err(RunError::Forbidden(id.to_string()))
    }
}

/// Authorises a step client call and notes the sign of life; a run that is not executing
/// (paused, terminal) takes no steps.
fn authorize_active(engine: &Engine, id: &str, token: &str) -> Result<Arc<LiveRun>, RunError> {
    let live = authorize(engine, id, token)?;
    let status = {
        let mut state = live.lock();
        if lifecycle::takes_steps(state.run.status) {
            state.run.last_heartbeat_at = Some(now_ms());
        }
        state.run.status
    };
    if lifecycle::takes_steps(status) {
        Ok(live)
    } else {
        Err(RunError::RunNotActive(id.to_string(), status.as_str().to_string()))
    }
}

/// A journal entry just written, read back as stored (the first writer of a label wins).
async fn stored(engine: &Engine, run_id: &str, label: &str) -> Result<JournalEntry, RunError> {
    engine
        .step(run_id, label)
        .await?
        .ok_or_else(|| RunError::EntryVanished { run_id: run_id.to_string(), label: label.to_string() })
}

/// Begins a step: replays a journaled one, checks divergence and the guardrails, and for
/// server-side kinds (script, sleep, approval) journals the start.
pub async fn begin_step(engine: &Arc<Engine>, id: &str, token: &str, request: StepRequest) -> Result<Begun, RunError> {
    let live = authorize_active(engine, id, token)?;
    let requester = sha256_hex(token.as_bytes());
    rules::check_label(&request.label).map_err(RunError::InvalidRequest)?;
    let entry = engine.step(id, &request.label).await?;
    let repeated = !live.lock().budget.requested.insert(request.label.clone());
    if let Some(entry) = entry {
        rules::check_divergence(&entry, &request).map_err(RunError::StepDiverged)?;
        if entry.status != StepStatus::Started {
            crate::metrics::get().step_replayed(entry.step_type.as_str());
        }
        if repeated {
            let warning = format!(
                "step label {:?} was requested twice in one execution; the first result was returned",
                request.label
            );
            live.warn(engine.writer(), warning).await?;
        }
        return continue_step(engine, &live, entry, &requester).await;
    }
    let mut retried = false;
    if matches!(request.step_type, StepType::Command | StepType::Script) {
        let (policy, _) = rules::check_step_options(&request.config)
            .map_err(|e| RunError::InvalidRequest(format!("step {:?}: {e}", request.label)))?;
        retried = policy.is_some();
    }
    reserve(engine, &live, &request.label, request.step_type).await?;
    let now = now_ms();
    let started = |result: Option<Value>, job_id: Option<String>| JournalEntry {
        run_id: id.to_string(),
        label: request.label.clone(),
        seq: 0,
        step_type: request.step_type,
        config: request.config.clone(),
        status: StepStatus::Started,
        result,
        error: None,
        job_id,
        started_at: now,
        completed_at: None,
        duration_ms: None,
        attempts: Vec::new(),
    };
    match request.step_type {
        // A retried command is journaled as started, so its failed attempts have an entry to
        // go to and a restart resumes it (`Resume`) at the next attempt.
        StepType::Command if retried => {
            let entry = insert_step(engine, &live, started(None, None)).await?;
            continue_step(engine, &live, entry, &requester).await
        }
        StepType::Command | StepType::Value | StepType::Node => Ok(Begun::Execute),
        StepType::Sleep => {
            let ms = request.config.get("durationMs").and_then(Value::as_i64).unwrap_or(0).max(0);
            let wake = json!({ "wakeAt": crate::time::iso(now + ms), "wakeAtMs": now + ms });
            let entry = insert_step(engine, &live, started(Some(wake), None)).await?;
            continue_step(engine, &live, entry, &requester).await
        }
        StepType::Approval => {
            let entry = insert_step(engine, &live, started(None, None)).await?;
            continue_step(engine, &live, entry, &requester).await
        }
        StepType::Input => {
            // A schema no value could be checked against is the workflow's mistake, told at
            // once rather than to whoever submits the value.
            if let Some(schema) = request.config.get("schema").filter(|s| !s.is_null()) {
                jsonschema::validator_for(schema).map_err(|e| {
                    live.lock().budget.release(&request.label);
                    RunError::InvalidRequest(format!("input {:?}: its schema is not a JSON schema: {e}", request.label))
                })?;
            }
            let entry = insert_step(engine, &live, started(None, None)).await?;
            continue_step(engine, &live, entry, &requester).await
        }
        StepType::Event => {
            let name = request.config.get("event").and_then(Value::as_str).unwrap_or_default();
            if let Err(message) = rules::check_event_name(name) {
                live.lock().budget.release(&request.label);
                return Err(RunError::InvalidRequest(message));
            }
            // The deadline is journaled, so a restarted run waits only what is left of it.
            let deadline = request.config.get("timeoutMs").and_then(Value::as_i64).map(|ms| {
                let at = now + ms.max(0);
                json!({ "deadlineAt": crate::time::iso(at), "deadlineAtMs": at })
            });
            let entry = insert_step(engine, &live, started(deadline, None)).await?;
            continue_step(engine, &live, entry, &requester).await
        }
        StepType::Script => {
            // The entry names the job before the job exists, so a crash can never leave a
            // job the journal does not know of (which a replay would start again).
            let script_id = request.config.get("scriptId").and_then(Value::as_str).unwrap_or_default();
            // A bad request or a full queue journals nothing.
            let admission = engine
                .jobs
                .validate(script_id, request.config.get("args"))
                .and_then(|()| engine.jobs.admit())
                .inspect_err(|_| {
                    live.lock().budget.release(&request.label);
                })?;
            let job_id = engine.jobs.new_job_id();
            let entry = insert_step(engine, &live, started(None, Some(job_id))).await?;
            continue_script_step(engine, &live, entry, Some(admission)).await
        }
    }
}

/// Records a step the client executed (or a started one it finished, like a sleep).
pub async fn record_step(
    engine: &Arc<Engine>,
    id: &str,
    token: &str,
    record: StepRecord,
) -> Result<JournalEntry, RunError> {
    let live = authorize_active(engine, id, token)?;
    rules::check_label(&record.label).map_err(RunError::InvalidRequest)?;
    let status = rules::check_recorded_status(record.status).map_err(RunError::InvalidRequest)?;
    let size = record.result.as_ref().map_or(0, |r| to_json(r).len()) + record.error.as_ref().map_or(0, String::len);
    let max = engine.config.workflows.max_result_bytes;
    if size as u64 > max {
        let message = format!("SCRIPT_RUN_MAX_RESULT_BYTES exceeded ({size}/{max})");
        execution::abort(engine, &live, message.clone()).await;
        return Err(RunError::LimitExceeded(message));
    }
    match engine.step(id, &record.label).await? {
        Some(existing) => {
            let request = StepRequest { label: record.label, step_type: record.step_type, config: record.config };
            rules::check_divergence(&existing, &request).map_err(RunError::StepDiverged)?;
            if existing.status != StepStatus::Started {
                return Ok(existing);
            }
            // A started entry (a sleep) that the client has finished.
            finish_step(engine, &live, existing, status, record.result, record.error).await
        }
        None => {
            if matches!(record.step_type, StepType::Input | StepType::Event) {
                // Its value comes from outside the run (`submit_input`), never from the run.
                return Err(RunError::InvalidRequest(format!(
                    "{} step {:?} is begun, not recorded: it ends from outside the run",
                    record.step_type.as_str(),
                    record.label
                )));
            }
            reserve(engine, &live, &record.label, record.step_type).await?;
            let now = now_ms();
            let entry = JournalEntry {
                run_id: id.to_string(),
                label: record.label,
                seq: 0,
                step_type: record.step_type,
                config: record.config,
                status,
                result: record.result,
                error: record.error,
                job_id: None,
                started_at: now - record.duration_ms.unwrap_or(0),
                completed_at: Some(now),
                duration_ms: record.duration_ms,
                attempts: Vec::new(),
            };
            insert_step(engine, &live, entry).await
        }
    }
}

/// Journals a failed try of a retried command step (begun as `started`, see [`begin_step`])
/// with the next try's time, from the step's backoff: the entry is answered with its
/// `attempts` and `nextAttemptAt`. An attempt number already journaled, or a step that has
/// ended, is answered with the entry as it is (nothing changes: an attempt is journaled once).
/// The last try is not an attempt to journal here: it is recorded as the step.
pub async fn record_attempt(
    engine: &Arc<Engine>,
    id: &str,
    token: &str,
    request: StepRequest,
    mut attempt: Attempt,
) -> Result<JournalEntry, RunError> {
    let live = authorize_active(engine, id, token)?;
    rules::check_label(&request.label).map_err(RunError::InvalidRequest)?;
    let label = request.label.clone();
    let Some(entry) = engine.step(id, &label).await? else {
        return Err(RunError::StepNotFound(format!("run {id} has no journal entry labelled {label:?}")));
    };
    rules::check_divergence(&entry, &request).map_err(RunError::StepDiverged)?;
    let journaled = u32::try_from(entry.attempts.len()).unwrap_or(u32::MAX);
    if entry.status != StepStatus::Started || (1..=journaled).contains(&attempt.attempt) {
        return Ok(entry);
    }
    let policy = match (entry.step_type, rules::RetryPolicy::of(&entry.config)) {
        (StepType::Command, Ok(Some(policy))) => policy,
        _ => {
            return Err(RunError::InvalidRequest(format!(
                "step {label:?} is not a retried command step: its attempts are not recorded by its client"
            )))
        }
    };
    if attempt.attempt != journaled + 1 {
        return Err(RunError::InvalidRequest(format!(
            "attempt {} of step {label:?} is not the next one ({})",
            attempt.attempt,
            journaled + 1
        )));
    }
    if attempt.attempt >= policy.attempts() {
        return Err(RunError::InvalidRequest(format!(
            "attempt {} is step {label:?}'s last: record it as the step's result",
            attempt.attempt
        )));
    }
    attempt.stderr_tail = tail(&attempt.stderr_tail, ATTEMPT_STDERR_TAIL);
    attempt.error = tail(&attempt.error, ATTEMPT_STDERR_TAIL);
    attempt.job_id = None;
    journal_attempt(engine, &live, entry, attempt, &policy, None).await
}

/// Journals `attempt` (the entry's next) and the time the next try is due, in one write; a
/// script step's next try's job id (`next_job`) goes with it, so that job is known before it
/// exists. Another writer of the same attempt wins: the stored entry is returned either way.
async fn journal_attempt(
    engine: &Engine,
    live: &LiveRun,
    entry: JournalEntry,
    attempt: Attempt,
    policy: &rules::RetryPolicy,
    next_job: Option<String>,
) -> Result<JournalEntry, RunError> {
    let before = entry.attempts.clone();
    let delay = i64::try_from(policy.delay_ms(attempt.attempt)).unwrap_or(i64::MAX);
    let at = now_ms().saturating_add(delay);
    let mut attempts = before.clone();
    attempts.push(attempt);
    let updated = JournalEntry {
        attempts,
        result: Some(json!({ "nextAttemptAt": crate::time::iso(at), "nextAttemptAtMs": at })),
        job_id: next_job.or(entry.job_id.clone()),
        ..entry
    };
    engine.writer().write(super::events::retry_step(&updated, &before)).await?;
    live.bump();
    stored(engine, &updated.run_id, &updated.label).await
}

/// Sleeps until `at` (Unix ms), or until the run has ended (a cancelled run's retry is not
/// waited for).
async fn wait_until(live: &LiveRun, at: i64) {
    let left = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
    let deadline = tokio::time::Instant::now() + left;
    let mut rx = live.watch();
    while !live.status().is_terminal() {
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            // Nobody can bump the run any more: only the time is left to wait for.
            Ok(Err(_)) => return tokio::time::sleep_until(deadline).await,
            Err(_) => return,
        }
    }
}

/// When a started, retried entry's next try is due (Unix ms), if it waits for one.
fn next_attempt_at(entry: &JournalEntry) -> Option<i64> {
    entry.result.as_ref().and_then(|r| r.get("nextAttemptAtMs")).and_then(Value::as_i64)
}

/// Waits (at most `timeout`, capped at [`MAX_WAIT`]) until a started entry has ended, and
/// returns it as it is then.
pub async fn wait_step(
    engine: &Engine,
    id: &str,
    token: &str,
    label: &str,
    timeout: Duration,
) -> Result<JournalEntry, RunError> {
    let live = authorize(engine, id, token)?;
    let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
    let mut rx = live.watch();
    loop {
        let entry = engine
            .step(id, label)
            .await?
            .ok_or_else(|| RunError::StepNotFound(format!("run {id} has no journal entry labelled {label:?}")))?;
        if entry.status != StepStatus::Started || live.status().is_terminal() {
            return Ok(entry);
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            return Ok(entry);
        }
    }
}

/// Records the run's progress.
pub async fn progress(engine: &Engine, id: &str, token: &str, progress: Progress) -> Result<Run, RunError> {
    let live = authorize_active(engine, id, token)?;
    live.commit(engine.writer(), |run| run.progress = Some(progress)).await?;
    Ok(live.snapshot())
}

/// Decides a pending approval; the run goes on (its process restarted if it was parked).
pub async fn approve(engine: &Arc<Engine>, id: &str, label: &str, decision: Decision) -> Result<(), RunError> {
    let live = engine.require_live(id, "approved").await?;
    let entry = engine.step(id, label).await?;
    let Some(entry) = entry.filter(|e| e.step_type == StepType::Approval) else {
        return Err(RunError::StepNotFound(format!("run {id} has no approval step labelled {label:?}")));
    };
    if entry.status != StepStatus::Started {
        return Err(RunError::AlreadyDecided(label.to_string()));
    }
    let result = json!({
        "approved": decision.approved,
        "by": decision.by,
        "comment": decision.comment,
        "decidedAt": crate::time::iso(now_ms()),
    });
    decide(engine, &live, entry, StepStatus::Completed, result, None, None).await
}

/// Gives a pending input step its value: checked against the step's schema first (a value
/// that does not match is refused with where it fails, and nothing is journaled), then
/// journaled as the step's result; the run goes on as after an approval.
pub async fn submit_input(engine: &Arc<Engine>, id: &str, label: &str, submission: Submission) -> Result<(), RunError> {
    let live = engine.require_live(id, "given an input").await?;
    let entry = engine.step(id, label).await?;
    let Some(entry) = entry.filter(|e| e.step_type == StepType::Input) else {
        return Err(RunError::StepNotFound(format!("run {id} has no input step labelled {label:?}")));
    };
    if entry.status != StepStatus::Started {
        return Err(RunError::AlreadyDecided(label.to_string()));
    }
    rules::check_input(label, &entry.config, &submission.value)?;
    let result = json!({
        "value": submission.value,
        "by": submission.by,
        "submittedAt": crate::time::iso(now_ms()),
    });
    decide(engine, &live, entry, StepStatus::Completed, result, None, None).await
}

/// Delivers an event to the run: the earliest started event step waiting for `name` ends
/// with `{payload, receivedAt}` and the run goes on. No step waiting for it is
/// [`RunError::StepNotFound`] (an event is not kept for a step that has not begun).
pub async fn deliver_event(engine: &Arc<Engine>, id: &str, name: &str, payload: Value) -> Result<(), RunError> {
    let live = engine.require_live(id, "sent an event").await?;
    let journal = engine.journal(id).await?;
    let waiting = journal.into_iter().filter(|e| {
        e.step_type == StepType::Event
            && e.status == StepStatus::Started
            && e.config.get("event").and_then(Value::as_str) == Some(name)
    });
    let Some(entry) = waiting.min_by_key(|e| e.seq) else {
        return Err(RunError::StepNotFound(format!("no step of run {id} waits for the event {name:?}")));
    };
    let result = json!({ "payload": payload, "receivedAt": crate::time::iso(now_ms()) });
    decide(engine, &live, entry, StepStatus::Completed, result, None, None).await
}

/// Fails a started event step whose deadline has passed (unless it ended meanwhile): the
/// failure is journaled, so every replay fails the same way, and the run goes on.
async fn time_out(engine: &Arc<Engine>, live: &Arc<LiveRun>, label: &str) -> Result<(), RunError> {
    let Some(entry) = engine.step(&live.id, label).await? else { return Ok(()) };
    if entry.status != StepStatus::Started || live.status().is_terminal() {
        return Ok(());
    }
    let name = entry.config.get("event").and_then(Value::as_str).unwrap_or_default().to_string();
    let timeout = entry.config.get("timeoutMs").and_then(Value::as_i64).unwrap_or(0);
    let error = format!("event {name:?} did not arrive within {timeout} ms");
    let result = entry.result.clone().unwrap_or(Value::Null);
    match decide(engine, live, entry, StepStatus::Failed, result, Some(error), None).await {
        Err(RunError::AlreadyDecided(_)) => Ok(()),
        other => other,
    }
}

/// Arms again the time-outs of a recovered run's started event steps (an `awaiting` run has no
/// process whose replay would): read from its journal on this thread's runtime.
pub fn rearm_deadlines(engine: &Arc<Engine>, live: &Arc<LiveRun>) {
    let (engine, live) = (Arc::clone(engine), Arc::clone(live));
    tokio::task::spawn_local(async move {
        match engine.journal(&live.id).await {
            Ok(journal) => journal
                .iter()
                .filter(|e| e.step_type == StepType::Event && e.status == StepStatus::Started)
                .for_each(|e| arm_deadline(&engine, &live, e)),
            Err(e) => log::warn!("run {}: cannot read its journal to arm its event time-outs: {e}", live.id),
        }
    });
}

/// Arms the time-out of a started event step (on its begin and on every replay that finds it
/// started, so a restart re-arms it); without `timeoutMs` it waits for ever.
fn arm_deadline(engine: &Arc<Engine>, live: &Arc<LiveRun>, entry: &JournalEntry) {
    let Some(at) = entry.result.as_ref().and_then(|r| r.get("deadlineAtMs")).and_then(Value::as_i64) else {
        return;
    };
    let left = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
    let (engine, live, label) = (Arc::clone(engine), Arc::clone(live), entry.label.clone());
    tokio::task::spawn_local(async move {
        tokio::time::sleep(left).await;
        if let Err(e) = time_out(&engine, &live, &label).await {
            log::warn!("run {}: cannot time out event step {label:?}: {e}", live.id);
        }
    });
}

/// Ends a started entry someone outside the run was awaited for (`status`, `result`, `error`),
/// and lets the run go on. Another end stored first wins (the journal keeps the first end of
/// an entry): then [`RunError::AlreadyDecided`]. `used`: the resume URL that decided it,
/// recorded used in the same transaction, only if this end is the one stored.
pub(super) async fn decide(
    engine: &Arc<Engine>,
    live: &Arc<LiveRun>,
    entry: JournalEntry,
    status: StepStatus,
    result: Value,
    error: Option<String>,
    used: Option<&super::resume::Used>,
) -> Result<(), RunError> {
    let label = entry.label.clone();
    let stored = finish_step_used(engine, live, entry, status, Some(result.clone()), error.clone(), used).await?;
    if stored.status != status || stored.result.as_ref() != Some(&result) || stored.error != error {
        return Err(RunError::AlreadyDecided(label));
    }
    // Two uses of one resume URL at once ask for the same end, and may write equal results:
    // the one whose use was stored with the end decided it.
    if let Some(used) = used {
        if !used.is_stored(engine).await? {
            return Err(RunError::AlreadyDecided(label));
        }
    }
    // The step client may read the result at once, and its execution end and settle the
    // run, on another thread: `wake` decides on the run as it is under its lock.
    if let Some(pending) = execution::wake(engine, live)? {
        live.committed(pending).await?;
    }
    live.bump();
    Ok(())
}

/// Counts a new label against the guardrails before it executes; over a limit, the run is
/// aborted and the step never runs.
async fn reserve(engine: &Arc<Engine>, live: &Arc<LiveRun>, label: &str, step_type: StepType) -> Result<(), RunError> {
    let limits = &engine.config.workflows;
    let refused = live.lock().budget.reserve(label, step_type, limits.max_steps, limits.max_script_steps).err();
    match refused {
        None => Ok(()),
        Some(message) => {
            execution::abort(engine, live, message.clone()).await;
            Err(RunError::LimitExceeded(message))
        }
    }
}

/// Inserts a journal entry (the first writer of a label wins) and returns the stored one.
async fn insert_step(engine: &Engine, live: &LiveRun, mut entry: JournalEntry) -> Result<JournalEntry, RunError> {
    entry.seq = live.lock().budget.next_seq();
    engine.writer().write(super::events::insert_step(&entry)).await?;
    crate::metrics::get().step_recorded(entry.step_type.as_str());
    live.lock().budget.journaled(&entry.label, entry.step_type);
    live.bump();
    stored(engine, &entry.run_id, &entry.label).await
}

/// What a step client gets for an existing entry: ended entries as they are; a started
/// script step once its job has ended; a started approval puts the run in `awaiting`.
///
/// `requester` is the sha256 of the run token of the step client asking: a request of an
/// execution that has been replaced meanwhile must not make the new one `awaiting`.
async fn continue_step(
    engine: &Arc<Engine>,
    live: &Arc<LiveRun>,
    entry: JournalEntry,
    requester: &str,
) -> Result<Begun, RunError> {
    if entry.status != StepStatus::Started {
        return Ok(Begun::Done(entry));
    }
    match entry.step_type {
        StepType::Script => continue_script_step(engine, live, entry, None).await,
        StepType::Approval | StepType::Input | StepType::Event => {
            if entry.step_type == StepType::Event {
                arm_deadline(engine, live, &entry);
            }
            let waiting_for = waiting_for(&entry);
            let awaiting = live.commit_if(
                engine.writer(),
                |run| lifecycle::awaits(run, requester),
                |run| {
                    run.status = RunStatus::Awaiting;
                    run.waiting_for = Some(waiting_for);
                },
            )?;
            if let Some(pending) = awaiting {
                live.committed(pending).await?;
                execution::schedule_park(engine, live);
            }
            // A decision may have landed since `entry` was read, before the run was awaiting
            // (the approval then left its status alone): go on with it.
            let now = engine.step(&entry.run_id, &entry.label).await?.unwrap_or(entry);
            if now.status == StepStatus::Started {
                return Ok(Begun::Resume(now));
            }
            if let Some(pending) = execution::wake(engine, live)? {
                live.committed(pending).await?;
            }
            Ok(Begun::Done(now))
        }
        _ => Ok(Begun::Resume(entry)),
    }
}

/// What a run awaiting `entry` shows as its `waitingFor`: the label, the kind and what the
/// step asks (an approval's message; an input's prompt and schema). Also stored: the step's
/// start (`startedAtMs`, not shown), from which its resume URLs are computed on each read.
fn waiting_for(entry: &JournalEntry) -> Value {
    let mut shown = json!({ "label": entry.label, "kind": entry.step_type.as_str(), "startedAtMs": entry.started_at });
    for key in ["message", "prompt", "schema", "event"] {
        if let Some(value) = entry.config.get(key).filter(|v| !v.is_null()) {
            shown[key] = value.clone();
        }
    }
    if let Some(at) = entry.result.as_ref().and_then(|r| r.get("deadlineAt")) {
        shown["deadlineAt"] = at.clone();
    }
    shown
}

/// A started script step: submits its job if it does not exist yet (its id was journaled
/// first; a job missing from the database has never run, and the id, unique there, lets it
/// be submitted once), then either journals the start (`wait: false`) or waits for it. A
/// retried step (`config.retry`) whose job failed journals the attempt with its next job's id
/// and due time, waits until then (a restart waits only what is left) and submits that job.
async fn continue_script_step(
    engine: &Engine,
    live: &Arc<LiveRun>,
    mut entry: JournalEntry,
    mut admission: Option<Admission>,
) -> Result<Begun, RunError> {
    loop {
        let Some(job_id) = entry.job_id.clone() else {
            return Err(RunError::StepWithoutJob(entry.label));
        };
        let waits = rules::waits_for_job(&entry.config);
        if waits {
            // Known to the run before it exists: a cancel from now on cancels it too.
            live.lock().jobs.insert(job_id.clone());
        }
        let ended = |live: &LiveRun| {
            let status = live.status();
            status.is_terminal().then_some(status)
        };
        let job = match engine.jobs.get(&job_id).await {
            Err(JobError::JobNotFound(_)) => {
                if let Some(at) = next_attempt_at(&entry) {
                    wait_until(live, at).await;
                }
                if let Some(status) = ended(live) {
                    return Err(RunError::RunNotActive(entry.run_id, status.as_str().to_string()));
                }
                let script_id = entry.config.get("scriptId").and_then(Value::as_str).unwrap_or_default();
                let args = entry.config.get("args");
                let step = StepJob { id: job_id.clone(), step_key: step_key(&entry.run_id, &entry.label) };
                let submitted = engine.jobs.submit_step(admission.take(), step, script_id, args, Some("async")).await;
                let job = match submitted {
                    Ok(submission) => submission.job,
                    // Another request for this step submitted it meanwhile (the id is unique).
                    Err(e) => engine.jobs.get(&job_id).await.map_err(|_| e)?,
                };
                if waits && ended(live).is_some() {
                    // The run ended while its job was being recorded: nobody waits for it.
                    let _ = engine.jobs.cancel(&job_id).await;
                }
                job
            }
            found => found?,
        };
        if waits {
            let stored = finish_script_step(engine, live, entry, job_id).await?;
            if stored.status != StepStatus::Started {
                return Ok(Begun::Done(stored));
            }
            // Retried: go on with the attempt's next job, as stored (another request for
            // this step may have journaled the attempt first).
            entry = stored;
            continue;
        }
        // Start only: the job id is the result (a durable flow's async run node).
        let result = json!({ "jobId": job.id, "status": job.status.as_str() });
        return finish_step(engine, live, entry, StepStatus::Completed, Some(result), None).await.map(Begun::Done);
    }
}

/// Journals the end of a started entry and returns the entry as stored.
async fn finish_step(
    engine: &Engine,
    live: &LiveRun,
    entry: JournalEntry,
    status: StepStatus,
    result: Option<Value>,
    error: Option<String>,
) -> Result<JournalEntry, RunError> {
    finish_step_used(engine, live, entry, status, result, error, None).await
}

/// [`finish_step`], recording the resume URL `used` with the end if it is the one stored.
async fn finish_step_used(
    engine: &Engine,
    live: &LiveRun,
    entry: JournalEntry,
    status: StepStatus,
    result: Option<Value>,
    error: Option<String>,
    used: Option<&super::resume::Used>,
) -> Result<JournalEntry, RunError> {
    let now = now_ms();
    let finished = JournalEntry {
        status,
        result,
        error,
        completed_at: Some(now),
        duration_ms: Some(now - entry.started_at),
        ..entry
    };
    let op = super::events::finish_step(&finished);
    let op = match used {
        Some(used) => crate::db::WriteOp::with_resume_token(op, used),
        None => op,
    };
    engine.writer().write(op).await?;
    live.bump();
    stored(engine, &finished.run_id, &finished.label).await
}

/// Waits for a script step's job (the same job on every replay: never a second one) and
/// journals its outcome: the step's end, or, for a retried step with tries left whose job
/// failed, the failed attempt with the next job's id and due time (the entry stays started).
/// With `config.timeoutMs`, a job not ended that long after it was submitted is cancelled
/// (SIGTERM to its process group, SIGKILL after the grace) and its try fails as timed out.
async fn finish_script_step(
    engine: &Engine,
    live: &LiveRun,
    entry: JournalEntry,
    job_id: String,
) -> Result<JournalEntry, RunError> {
    let timeout = rules::step_timeout_ms(&entry.config).ok().flatten();
    let mut timed_out = false;
    let job = match timeout {
        None => engine.jobs.wait(&job_id).await?,
        Some(ms) => {
            let submitted = engine.jobs.get(&job_id).await?.created_at;
            let left = submitted.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)) - now_ms();
            let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
            match tokio::time::timeout(left, engine.jobs.wait(&job_id)).await {
                Ok(job) => job?,
                Err(_) => {
                    let job = engine.jobs.cancel(&job_id).await?;
                    let job = if job.status.is_terminal() { job } else { engine.jobs.wait(&job_id).await? };
                    timed_out = job.status == JobStatus::Canceled;
                    job
                }
            }
        }
    };
    live.lock().jobs.remove(&job_id);
    let stdout = engine.jobs.stream_text(&job, Stream::Stdout).await?;
    let stderr = engine.jobs.stream_text(&job, Stream::Stderr).await?;
    let succeeded = job.status == JobStatus::Succeeded;
    let result = json!({
        "jobId": job.id,
        "status": job.status.as_str(),
        "exitCode": job.code,
        "stdout": stdout,
        "stderr": stderr,
    });
    let error = (!succeeded).then(|| match job.code {
        _ if timed_out => format!(
            "timed out after {} (job {} cancelled)",
            script_runner_client::show_duration(Duration::from_millis(timeout.unwrap_or(0))),
            job.id
        ),
        Some(code) if code >= 0 => format!("job {} {} with exit code {code}", job.id, job.status.as_str()),
        _ => format!("job {} {}", job.id, job.status.as_str()),
    });
    let policy = rules::RetryPolicy::of(&entry.config).ok().flatten();
    let tries = u32::try_from(entry.attempts.len()).unwrap_or(u32::MAX).saturating_add(1);
    if let (Some(error), Some(policy)) = (&error, policy) {
        if tries < policy.attempts() && !live.status().is_terminal() {
            let now = now_ms();
            let attempt = Attempt {
                attempt: tries,
                exit_code: job.code.map(i64::from),
                error: error.clone(),
                stderr_tail: tail(&stderr, ATTEMPT_STDERR_TAIL),
                started_at: job.started_at.unwrap_or(job.created_at),
                ended_at: job.ended_at.unwrap_or(now),
                job_id: Some(job.id.clone()),
            };
            let next_job = engine.jobs.new_job_id();
            return journal_attempt(engine, live, entry, attempt, &policy, Some(next_job)).await;
        }
    }
    let status = if succeeded { StepStatus::Completed } else { StepStatus::Failed };
    finish_step(engine, live, entry, status, Some(result), error).await
}
