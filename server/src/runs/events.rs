//! A run's events: what happened to it, in order, stored with the change each reports and
//! read back by number (`GET /api/script-runs/{id}/events` streams them; `Last-Event-ID` resumes).
//!
//! Writing: every change of a run or its journal that a reader cares about is written with its
//! events in one transaction ([`WriteOp::WithEvents`]), so an event is never lost and never
//! announces what was not stored. The database numbers them per run (1, 2, ...). One change makes
//! one event: a status change is `paused`, `resumed`, `end` or else `status`; a journal entry
//! started is `step.begin` (`approval.asked` for an approval), one ended is `step.record`
//! (`approval.decided`).
//!
//! Bounding what is stored: progress may be reported very often; a `progress` event supersedes
//! the run's earlier ones (deleted in its transaction), so a run keeps one progress row however
//! often it reports. A reader resuming after a superseded one misses nothing it needs: the
//! latest progress is there, and every run view carries the progress too.
//!
//! Waking readers: after a commit the writer rings [`Bells`] with the runs that got events;
//! a reader waits on its run's bell, and also polls (another node of a cluster may hold the
//! run and write its events: no bell rings here for those).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::model::{JournalEntry, Progress, Run, RunStatus, StepStatus, StepType};
use super::view::{run_view_of, step_view};
use crate::db::{NewEvent, WriteOp};
use crate::sync::lock;
use crate::time::now_ms;

/// The kinds of run events, with the body each carries. Names are dotted lowercase; the body
/// is JSON equal to what the matching API read returned when the event happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The run was created, or its status changed to `running` or `awaiting` (other than a
    /// resume): the run, as `GET /api/script-runs/{id}` shows it (its `run`).
    Status,
    /// A server-side step (a script, a sleep) was journaled as started: the journal entry, as
    /// the run API shows a step (`journal[]`).
    StepBegin,
    /// A step was journaled as ended (completed or failed; a step the client executed is
    /// journaled ended at once): the journal entry.
    StepRecord,
    /// The workflow reported progress: the run (its `progress` is the new one). Supersedes the
    /// run's earlier `progress` events (only the latest is kept).
    Progress,
    /// An approval step was journaled: the journal entry (status `started`).
    ApprovalAsked,
    /// An approval was decided: the journal entry (its `result` holds the decision).
    ApprovalDecided,
    /// The run was paused: the run.
    Paused,
    /// A paused run was resumed: the run.
    Resumed,
    /// A new run was forked from this one: the new run, as the fork answered it.
    Forked,
    /// The run ended (completed, failed, cancelled, aborted_limit): the final run. A stream
    /// closes after it (once nothing more is stored).
    End,
    /// An execution failed and the run's `retry` option re-runs it: the run, its failed
    /// execution last in `attempts` (with the failed steps moved out of the journal) and
    /// `nextAttemptAt` when the next execution starts.
    Retrying,
}

impl EventKind {
    /// Every kind (for the API's documentation).
    pub const ALL: [EventKind; 11] = [
        EventKind::Status,
        EventKind::StepBegin,
        EventKind::StepRecord,
        EventKind::Progress,
        EventKind::ApprovalAsked,
        EventKind::ApprovalDecided,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::Forked,
        EventKind::End,
        EventKind::Retrying,
    ];

    /// The kind with this name.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The event's name (the SSE `event:` field, and what is stored).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::StepBegin => "step.begin",
            EventKind::StepRecord => "step.record",
            EventKind::Progress => "progress",
            EventKind::ApprovalAsked => "approval.asked",
            EventKind::ApprovalDecided => "approval.decided",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::Forked => "forked",
            EventKind::End => "end",
            EventKind::Retrying => "retrying",
        }
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its number within the run, from 1 (the SSE `id`).
    pub seq: u64,
    /// What it reports.
    pub kind: EventKind,
    /// JSON text, as stored (streamed byte for byte).
    pub body: String,
    /// When it happened, Unix ms.
    pub at: i64,
}

/// A page of a run's events and whether the run had ended before it was read (then nothing
/// but a fork's `forked` can follow the page's last event).
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// Events after the asked number, in order, at most the asked count.
    pub events: Vec<StoredEvent>,
    /// The stored run was terminal when the page was read (read before the events: a page
    /// read after the end holds the `end` event).
    pub ended: bool,
}

/// An event of `kind` about `run_id` with `body` (a wire view).
fn event(run_id: &str, kind: EventKind, body: &impl serde::Serialize) -> NewEvent {
    NewEvent {
        run_id: run_id.to_string(),
        kind: kind.as_str(),
        // A wire view always serializes; "null" only guards the impossible.
        body: serde_json::to_string(body).unwrap_or_else(|_| "null".to_string()),
        at: now_ms(),
        supersedes: kind == EventKind::Progress,
    }
}

/// `op` with `events`, or alone when there are none.
fn with(op: WriteOp, events: Vec<NewEvent>) -> WriteOp {
    if events.is_empty() {
        op
    } else {
        WriteOp::WithEvents { op: Box::new(op), events }
    }
}

/// What a run was before a change, as far as its events are concerned.
#[derive(Debug, Clone)]
pub struct Before {
    status: RunStatus,
    progress: Option<Progress>,
}

impl Before {
    /// Notes what `run` is now, before it is changed.
    pub fn of(run: &Run) -> Before {
        Before { status: run.status, progress: run.progress.clone() }
    }
}

/// The write of a changed run, with the event its change makes: `end`, `paused`, `resumed` or
/// `status` for a new status, else `progress` for new progress, else none (a heartbeat, a pid).
pub fn update_run(before: &Before, run: &Run) -> WriteOp {
    let kind = if run.status != before.status {
        Some(match run.status {
            status if status.is_terminal() => EventKind::End,
            RunStatus::Paused => EventKind::Paused,
            RunStatus::Running if before.status == RunStatus::Paused => EventKind::Resumed,
            _ => EventKind::Status,
        })
    } else if run.progress != before.progress {
        Some(EventKind::Progress)
    } else {
        None
    };
    let events = kind.map(|kind| vec![event(&run.id, kind, &run_view_of(run))]).unwrap_or_default();
    with(WriteOp::update_run(run), events)
}

/// The write of a run whose failed execution is retried, with its `retrying` event: the run
/// row and the removal of its failed journal entries `dropped` (now in its attempts), in one
/// transaction.
pub fn retry_run(run: &Run, dropped: Vec<String>) -> WriteOp {
    let op = WriteOp::retry_run(run, dropped);
    with(op, vec![event(&run.id, EventKind::Retrying, &run_view_of(run))])
}

/// The write of a new run with its first `status` event; for a fork, also `forked` on the run
/// it was forked from (naming the new run), in the same transaction.
pub fn insert_run(run: &Run) -> WriteOp {
    let view = run_view_of(run);
    let mut events = vec![event(&run.id, EventKind::Status, &view)];
    if let Some(source) = &run.forked_from {
        events.push(event(source, EventKind::Forked, &view));
    }
    with(WriteOp::insert_run(run), events)
}

/// [`insert_run`] with the run's completion callback in the same transaction (inside the
/// events' write, so their bell still rings).
pub fn insert_run_with_callback(run: &Run, callback: &crate::callbacks::Callback) -> WriteOp {
    match insert_run(run) {
        WriteOp::WithEvents { op, events } => {
            WriteOp::WithEvents { op: Box::new(WriteOp::with_callback(*op, callback)), events }
        }
        op => WriteOp::with_callback(op, callback),
    }
}

/// The write of a new journal entry, with `approval.asked`, `step.begin` (started) or
/// `step.record` (ended at once). Stored only if the entry was new (the first writer wins).
pub fn insert_step(entry: &JournalEntry) -> WriteOp {
    let kind = match (entry.step_type, entry.status) {
        (StepType::Approval, StepStatus::Started) => EventKind::ApprovalAsked,
        (_, StepStatus::Started) => EventKind::StepBegin,
        _ => EventKind::StepRecord,
    };
    let events = vec![event(&entry.run_id, kind, &step_view(entry.clone()))];
    with(WriteOp::insert_steps(std::slice::from_ref(entry)), events)
}

/// The write that ends a started journal entry, with `approval.decided` or `step.record`.
/// Stored only if the entry was still started (the first end wins).
pub fn finish_step(entry: &JournalEntry) -> WriteOp {
    let kind = if entry.step_type == StepType::Approval { EventKind::ApprovalDecided } else { EventKind::StepRecord };
    with(WriteOp::finish_step(entry), vec![event(&entry.run_id, kind, &step_view(entry.clone()))])
}

/// The write that journals a failed attempt of a started, retried entry (its attempts, the
/// next try's time, a script step's next job), with `step.begin`: the step begins again. Stored
/// only if the entry is still started with the attempts `before` (the first writer wins).
pub fn retry_step(entry: &JournalEntry, before: &[super::model::Attempt]) -> WriteOp {
    with(
        WriteOp::retry_step(entry, before),
        vec![event(&entry.run_id, EventKind::StepBegin, &step_view(entry.clone()))],
    )
}

/// The bells readers of a run's events wait on: one per run that has readers now, rung after a
/// commit that stored events of that run. A bell exists only while someone holds a
/// [`Subscription`] to it, so the map never holds more runs than there are open streams.
#[derive(Default)]
pub struct Bells {
    runs: Mutex<HashMap<String, Bell>>,
}

struct Bell {
    rung: watch::Sender<u64>,
    readers: usize,
}

impl Bells {
    /// Rings the bell of `run_id`, if anyone waits on it. Quick and never blocking: it is
    /// called on the writer's committing thread.
    pub fn ring(&self, run_id: &str) {
        if let Some(bell) = lock(&self.runs).get(run_id) {
            bell.rung.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A subscription to the bell of `run_id`; dropping it removes the bell if it was the last.
    pub fn subscribe(self: &Arc<Self>, run_id: &str) -> Subscription {
        let mut runs = lock(&self.runs);
        let bell = runs.entry(run_id.to_string()).or_insert_with(|| Bell { rung: watch::channel(0).0, readers: 0 });
        bell.readers += 1;
        Subscription { bells: Arc::clone(self), run_id: run_id.to_string(), rx: bell.rung.subscribe() }
    }

    /// How many runs have a bell now (readers waiting).
    pub fn len(&self) -> usize {
        lock(&self.runs).len()
    }

    /// Whether no run has a bell.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A reader's hold on a run's bell.
pub struct Subscription {
    bells: Arc<Bells>,
    run_id: String,
    rx: watch::Receiver<u64>,
}

impl Subscription {
    /// Marks every ring so far as heard: call it before reading the events, so that a commit
    /// after the read is heard by [`Subscription::rung`].
    pub fn heard(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Waits for a ring not heard yet, at most `timeout`.
    pub async fn rung(&mut self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.rx.changed()).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut runs = lock(&self.bells.runs);
        if let Some(bell) = runs.get_mut(&self.run_id) {
            bell.readers -= 1;
            if bell.readers == 0 {
                runs.remove(&self.run_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_change_makes_one_event_named_for_it() {
        let kinds = |from: RunStatus, to: RunStatus| {
            let mut run = Run { status: from, ..Run::fresh("run_1_1".into(), 1) };
            let before = Before::of(&run);
            run.status = to;
            match update_run(&before, &run) {
                WriteOp::WithEvents { events, .. } => events.iter().map(|e| e.kind).collect::<Vec<_>>(),
                _ => Vec::new(),
            }
        };
        assert_eq!(kinds(RunStatus::Running, RunStatus::Paused), ["paused"]);
        assert_eq!(kinds(RunStatus::Paused, RunStatus::Running), ["resumed"]);
        assert_eq!(kinds(RunStatus::Awaiting, RunStatus::Running), ["status"]);
        assert_eq!(kinds(RunStatus::Running, RunStatus::Completed), ["end"]);
        assert!(kinds(RunStatus::Running, RunStatus::Running).is_empty());
    }

    /// What the store holds of a run's events: (number, kind).
    fn stored(store: &crate::db::Store, run_id: &str, after: u64, limit: i64) -> Vec<(u64, &'static str)> {
        let page = store.events_after(run_id, after, limit).expect("read").expect("a run");
        page.events.iter().map(|e| (e.seq, e.kind.as_str())).collect()
    }

    #[test]
    fn events_are_numbered_per_run_stored_only_with_a_change_and_progress_keeps_its_latest() {
        use crate::db::{Location, Store};
        let dir = tempfile::tempdir().expect("temp dir");
        let mut locations = vec![Location::Sqlite(dir.path().join("events.db"))];
        locations.extend(crate::db::tests::pg_location("events"));
        for location in locations {
            let store = Store::open(&location).expect("open");
            let write = |op: WriteOp| store.writer().write_blocking(op).expect("write");
            let mut run = Run::fresh("run_1_1".into(), 1);
            write(insert_run(&run));
            write(insert_run(&Run { forked_from: Some("run_1_1".into()), ..Run::fresh("run_1_2".into(), 2) }));
            let started = JournalEntry {
                run_id: run.id.clone(),
                label: "nap".into(),
                seq: 1,
                step_type: StepType::Sleep,
                config: serde_json::json!({"durationMs": 5}),
                status: StepStatus::Started,
                result: None,
                error: None,
                job_id: None,
                started_at: 3,
                completed_at: None,
                duration_ms: None,
                attempts: Vec::new(),
            };
            write(insert_step(&started));
            // The label was journaled already: nothing stored, nothing announced.
            write(insert_step(&started));
            for current in [1, 2] {
                let before = Before::of(&run);
                run.progress = Some(Progress { current, total: 2, message: None });
                write(update_run(&before, &run));
            }
            let ended = JournalEntry { status: StepStatus::Completed, completed_at: Some(9), ..started };
            write(finish_step(&ended));
            write(finish_step(&ended));
            let before = Before::of(&run);
            run.last_heartbeat_at = Some(10);
            write(update_run(&before, &run));

            assert_eq!(
                stored(&store, "run_1_1", 0, 100),
                [(1, "status"), (2, "forked"), (3, "step.begin"), (5, "progress"), (6, "step.record")],
                "{location}"
            );
            assert_eq!(stored(&store, "run_1_1", 3, 1), [(5, "progress")], "{location}");
            assert_eq!(stored(&store, "run_1_2", 0, 100), [(1, "status")], "{location}");
            assert!(store.events_after("run_9_9", 0, 1).expect("read").is_none());
        }
    }

    #[test]
    fn a_bell_lives_while_someone_listens() {
        let bells = Arc::new(Bells::default());
        bells.ring("run_1_1");
        assert!(bells.is_empty());
        let a = bells.subscribe("run_1_1");
        let b = bells.subscribe("run_1_1");
        assert_eq!(bells.len(), 1);
        drop(a);
        assert_eq!(bells.len(), 1);
        drop(b);
        assert!(bells.is_empty());
    }
}
