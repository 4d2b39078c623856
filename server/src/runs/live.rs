//! The registry of live runs (those not terminal) and the state each holds in memory.
//!
//! Each live run has **one lock**, over its whole [`State`]: the run as it is now, its step
//! budget, its execution's control, the stop reason, the jobs it waits for. Every decision
//! that races with another (a decision against an execution's end, a cancel against a start)
//! is made under that one lock, so no decision can see half of another's change.
//!
//! Lock order:
//! 1. the registry's lock and a run's lock are never held together (a run's id is kept
//!    outside its lock, so the registry never needs it; [`Registry::all`] hands out a copy);
//! 2. no two runs' locks are ever held together;
//! 3. under a run's lock, only the database writer's queue is locked (to *order* a write:
//!    the single writer commits in that order); the write is *awaited* after the run's lock
//!    is released. Watchers are told ([`LiveRun::bump`]) with no lock held.
//!
//! No lock is held across an await (clippy's `await_holding_lock` checks it).
//!
//! This room holds state and reports what happened; it never starts or stops an execution
//! (that is `execution`'s, following the rules of `lifecycle`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::error::RunError;
use super::events;
use super::journal::rules::Budget;
use super::lifecycle::Stop;
use super::model::{Run, RunStatus};
use crate::db::{Pending, Writer};
use crate::process::supervisor::Control;
use crate::sync::lock;

/// What the engine knows of a live run, behind its one lock.
pub struct State {
    /// The run as it is now (the database has it as of its last committed change).
    pub run: Run,
    /// The current execution's step guardrails.
    pub budget: Budget,
    /// The current execution's control, while a process runs (or is being started).
    pub exec: Option<Arc<Control>>,
    /// Why the server is stopping the current execution, if it is.
    pub stop: Option<Stop>,
    /// Start another execution when the current one has ended (an approval landed while the
    /// process was being parked, or a foreign signal killed it).
    pub restart: bool,
    /// Jobs started by script steps and waited for, canceled with the run.
    pub jobs: HashSet<String>,
    /// Consecutive executions killed by a foreign signal.
    pub crashes: i32,
    /// When the current execution was prepared (Unix ms): the `startedAt` of its entry in the
    /// run's attempts if it fails and is retried.
    pub execution_started_at: Option<i64>,
}

impl State {
    /// Tells the running execution why it is being stopped, unless a weightier reason is
    /// already set; returns its control to cancel, or `None` if there is no process (or the
    /// reason lost).
    pub fn request_stop(&mut self, why: Stop) -> Option<Arc<Control>> {
        let control = self.exec.clone()?;
        if !why.overrides(self.stop.as_ref()) {
            return None;
        }
        self.stop = Some(why);
        Some(control)
    }

    /// Applies `change` to the run and orders its write (committed in this order whatever
    /// else is written meanwhile), with the event the change makes, if any (a new status, new
    /// progress: see [`events::update_run`]), in the same transaction. Every change of a live
    /// run passes here, so a run reaching its final status is counted here, once (a final
    /// status is never left).
    pub fn change(&mut self, writer: &Writer, change: impl FnOnce(&mut Run)) -> Result<Pending, RunError> {
        let before = events::Before::of(&self.run);
        let was_final = self.run.status.is_terminal();
        change(&mut self.run);
        if !was_final && self.run.status.is_terminal() {
            crate::metrics::get().run_ended(self.run.status.as_str());
            crate::events::hub().run(crate::events::Phase::Ended, &self.run);
        }
        Ok(writer.enqueue(events::update_run(&before, &self.run))?)
    }
}

impl State {
    /// Applies the change a retry makes to the run (its failed execution added to its
    /// attempts, the next one's start time) and orders its write with the removal of the
    /// failed journal entries `dropped` and the `retrying` event, in one transaction. The
    /// status stays `running`: nothing ends, nothing is counted.
    pub fn retry(
        &mut self,
        writer: &Writer,
        dropped: Vec<String>,
        change: impl FnOnce(&mut Run),
    ) -> Result<Pending, RunError> {
        change(&mut self.run);
        Ok(writer.enqueue(events::retry_run(&self.run, dropped))?)
    }
}

/// A run that is not terminal.
pub struct LiveRun {
    /// The run's id (outside the lock: the registry and log lines need it without locking).
    pub id: String,
    state: Mutex<State>,
    /// Bumped on every change (long polls and waiters for an end watch it).
    changed: watch::Sender<u64>,
}

impl LiveRun {
    /// A live run for `run`, with no execution yet.
    pub fn new(run: Run) -> Arc<LiveRun> {
        Arc::new(LiveRun {
            id: run.id.clone(),
            state: Mutex::new(State {
                run,
                budget: Budget::default(),
                exec: None,
                stop: None,
                restart: false,
                jobs: HashSet::new(),
                crashes: 0,
                execution_started_at: None,
            }),
            changed: watch::channel(0).0,
        })
    }

    /// The run's lock. Never hold it across an await, nor while taking the registry's.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The run as it is now.
    pub fn snapshot(&self) -> Run {
        self.lock().run.clone()
    }

    /// The run's status now.
    pub fn status(&self) -> RunStatus {
        self.lock().run.status
    }

    /// Tells everyone watching that something changed.
    pub fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that wakes on the next [`LiveRun::bump`].
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Changes the run and commits it, then tells the watchers.
    pub async fn commit(&self, writer: &Writer, change: impl FnOnce(&mut Run)) -> Result<(), RunError> {
        let pending = self.lock().change(writer, change)?;
        self.committed(pending).await
    }

    /// Changes the run if `when` holds for it (decided and changed under the lock), ordering
    /// the write; `None` (nothing changed) otherwise. Transitions that race with others use
    /// it, so that none is decided on a status another thread has changed meanwhile.
    pub fn commit_if(
        &self,
        writer: &Writer,
        when: impl FnOnce(&Run) -> bool,
        change: impl FnOnce(&mut Run),
    ) -> Result<Option<Pending>, RunError> {
        let mut state = self.lock();
        if !when(&state.run) {
            return Ok(None);
        }
        state.change(writer, change).map(Some)
    }

    /// Waits for an ordered write and tells the watchers.
    pub async fn committed(&self, pending: Pending) -> Result<(), RunError> {
        pending.wait().await?;
        self.bump();
        Ok(())
    }

    /// Adds a warning to the run (once) and commits it.
    pub async fn warn(&self, writer: &Writer, warning: String) -> Result<(), RunError> {
        self.commit(writer, |run| {
            if !run.warnings.contains(&warning) {
                run.warnings.push(warning);
            }
        })
        .await
    }
}

/// The live runs by id.
#[derive(Default)]
pub struct Registry {
    runs: Mutex<HashMap<String, Arc<LiveRun>>>,
}

impl Registry {
    /// A registry holding `runs`.
    pub fn with(runs: impl IntoIterator<Item = Arc<LiveRun>>) -> Registry {
        Registry { runs: Mutex::new(runs.into_iter().map(|live| (live.id.clone(), live)).collect()) }
    }

    /// The live run with this id.
    pub fn get(&self, id: &str) -> Option<Arc<LiveRun>> {
        lock(&self.runs).get(id).cloned()
    }

    /// Whether the run is live.
    pub fn contains(&self, id: &str) -> bool {
        lock(&self.runs).contains_key(id)
    }

    /// Adds a run.
    pub fn insert(&self, live: Arc<LiveRun>) {
        lock(&self.runs).insert(live.id.clone(), live);
    }

    /// Removes a run that has ended, and tells its watchers.
    pub fn forget(&self, live: &LiveRun) {
        lock(&self.runs).remove(&live.id);
        live.bump();
    }

    /// Every live run.
    pub fn all(&self) -> Vec<Arc<LiveRun>> {
        lock(&self.runs).values().cloned().collect()
    }
}
