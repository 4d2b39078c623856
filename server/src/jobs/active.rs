//! The jobs in flight and the queue: admission, dispatch to a supervisor on the calling
//! runtime, each job's writes ordered under its own lock, and its release once its final state
//! is committed. [`super::JobManager`] is the face over it.
//!
//! Lock order: the state lock ([`State`]) and a job's lock are never held together, except a
//! job's lock while its write is ordered to the single writer (which takes no other lock).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use log::error;
use tokio::sync::{watch, Notify};

use super::model::{Job, JobStatus};
use super::JobError;
use crate::config::{Config, Mode, Script};
use crate::db::{OnOutage, Pending, Store, StoreError, WriteOp, Writer};
use crate::events::{Kind, Phase};
use crate::metrics;
use crate::process::supervisor::{self, Control, Launch, LiveStreams};
use crate::sync::lock;
use crate::time::now_ms;
use script_runner_wire::steps::STEP_KEY_ENV;

/// A job in flight.
pub(super) struct Active {
    pub(super) job: Mutex<Job>,
    pub(super) script: Arc<Script>,
    pub(super) control: Arc<Control>,
    pub(super) live: Mutex<Option<LiveStreams>>,
    /// Whether the job's row has been ordered written (then later writes are updates).
    pub(super) recorded: AtomicBool,
    /// The completion callback asked for, written with the job's first row (taken then).
    pub(super) callback: Mutex<Option<crate::callbacks::Callback>>,
    /// Holds the final job once it is committed.
    pub(super) done: watch::Sender<Option<Job>>,
    /// When a job made by this server was created (its wait in the queue is measured from it,
    /// finer than the job's millisecond `created_at`); `None` for a job made before (requeued
    /// at a restart) or by another node (claimed from a cluster's queue).
    queued_at: Option<Instant>,
}

impl Active {
    /// A job in flight; `recorded` says whether its row already exists.
    pub(super) fn new(job: Job, script: Arc<Script>, recorded: bool) -> Arc<Active> {
        Arc::new(Active {
            job: Mutex::new(job),
            script,
            control: Control::new(),
            live: Mutex::new(None),
            recorded: AtomicBool::new(recorded),
            callback: Mutex::new(None),
            done: watch::channel(None).0,
            queued_at: (!recorded).then(Instant::now),
        })
    }

    /// How long the job has waited since it was created.
    fn waited(&self) -> Duration {
        match self.queued_at {
            Some(at) => at.elapsed(),
            None => millis(now_ms() - lock(&self.job).created_at),
        }
    }

    /// Orders the write of `job`, which is this job locked by the caller: an insert the first
    /// time, updates after. Deciding and ordering under the job's lock means one job's writes
    /// reach the writer in the order they were decided, whichever threads decide them.
    pub(super) fn record(&self, job: &Job, writer: &Writer) -> Result<Pending, StoreError> {
        self.record_with(job, writer, OnOutage::Retry)
    }

    /// [`Active::record`], choosing what the write does while the database is lost: a new
    /// job's insert is refused (its request answers `503` and the job never starts); every
    /// later state happened and waits to be written.
    pub(super) fn record_with(&self, job: &Job, writer: &Writer, on_outage: OnOutage) -> Result<Pending, StoreError> {
        let op = if self.recorded.swap(true, Ordering::AcqRel) {
            WriteOp::update_job(job)
        } else {
            match lock(&self.callback).take() {
                Some(callback) => WriteOp::with_callback(WriteOp::insert_job(job), &callback),
                None => WriteOp::insert_job(job),
            }
        };
        writer.enqueue_with(op, on_outage)
    }

    /// Changes the job and orders the write of its new state.
    pub(super) fn update(&self, writer: &Writer, change: impl FnOnce(&mut Job)) -> (Job, Result<Pending, StoreError>) {
        let mut job = lock(&self.job);
        change(&mut job);
        let pending = self.record(&job, writer);
        (job.clone(), pending)
    }

    /// The job as it is now, with the live log counters of a running job.
    pub(super) fn snapshot(&self) -> Job {
        let mut job = lock(&self.job).clone();
        if let Some([out, err]) = lock(&self.live).as_ref() {
            for (info, live) in [(&mut job.stdout, out), (&mut job.stderr, err)] {
                info.size = live.size.load(Ordering::Acquire);
                info.lines = Some(live.lines.load(Ordering::Acquire));
                info.truncated = live.truncated.load(Ordering::Relaxed);
                info.preview = live.preview();
                info.error.clone_from(&lock(&live.error));
            }
        }
        job
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) queue: VecDeque<Arc<Active>>,
    pub(super) active: HashMap<String, Arc<Active>>,
    pub(super) running: usize,
    /// Of `running`, the jobs of each script with a `concurrency` limit (scripts without one
    /// are not counted). Raised with `running` when such a job takes its slot, lowered when
    /// its slot is freed; bounded by the configured scripts.
    pub(super) running_by_script: HashMap<String, usize>,
    /// Of `running`, the slots the cluster claimer took for a claim under way.
    pub(super) claiming: usize,
    /// Admitted requests whose insert is not yet committed.
    pub(super) reserved: usize,
    /// Idempotency key -> id of the job in flight started under it (ended jobs are found in
    /// the database, where their key was committed before they left memory).
    pub(super) keys: HashMap<String, String>,
    pub(super) stopping: bool,
    /// Sync jobs that had to wait in the queue, unwritten, in the order they were queued, with
    /// when: each is written once it has waited [`RECORD_WAITING_AFTER`] (see
    /// [`Shared::note_waiting`]). A job that started meanwhile is dropped from it unwritten.
    pub(super) unwritten_waiting: VecDeque<(Instant, Arc<Active>)>,
    /// A task is writing [`State::unwritten_waiting`] as its jobs come due.
    pub(super) writing_waiting: bool,
}

impl State {
    /// Whether one more job of `script` may run now under its `concurrency` (always, for a
    /// script without one). The global `maxConcurrent` is the caller's to check.
    pub(super) fn has_room(&self, script: &Script) -> bool {
        script.concurrency.map_or(true, |limit| self.running_of(&script.id) < limit)
    }

    /// Jobs of this script running here now (counted only for a script with a limit).
    pub(super) fn running_of(&self, script_id: &str) -> usize {
        self.running_by_script.get(script_id).copied().unwrap_or(0)
    }

    /// Counts a job of `script` that took a slot (`running` is the caller's).
    pub(super) fn script_started(&mut self, script: &Script) {
        if script.concurrency.is_some() {
            match self.running_by_script.get_mut(&script.id) {
                Some(n) => *n += 1,
                None => {
                    self.running_by_script.insert(script.id.clone(), 1);
                }
            }
        }
    }

    /// Uncounts a job of `script` whose slot was freed (`running` is the caller's).
    pub(super) fn script_ended(&mut self, script: &Script) {
        if let Some(n) = self.running_by_script.get_mut(&script.id) {
            *n = n.saturating_sub(1);
        }
    }

    /// Takes the queued jobs to start in the `free` slots, in first in, first out order,
    /// passing over the jobs of a script at its `concurrency` (they keep their places, and
    /// never hold back the jobs of other scripts behind them). Each taken job is counted as
    /// running. One pass over the queue at most: the front is taken at once while its script
    /// has room (always, without limits); otherwise the queue is scanned once and rebuilt only
    /// if a job further back can start.
    pub(super) fn take_startable(&mut self, mut free: usize) -> Vec<Arc<Active>> {
        let mut taken = Vec::new();
        while free > 0 {
            let Some(front) = self.queue.front() else { return taken };
            if !self.has_room(&front.script) {
                break;
            }
            let Some(next) = self.queue.pop_front() else { return taken };
            self.running += 1;
            self.script_started(&next.script);
            taken.push(next);
            free -= 1;
        }
        if free == 0 || !self.queue.iter().any(|a| self.has_room(&a.script)) {
            return taken;
        }
        let mut kept = VecDeque::with_capacity(self.queue.len());
        while let Some(next) = self.queue.pop_front() {
            if free > 0 && self.has_room(&next.script) {
                self.running += 1;
                self.script_started(&next.script);
                taken.push(next);
                free -= 1;
            } else {
                kept.push_back(next);
            }
        }
        self.queue = kept;
        taken
    }

    /// Whether a queued job here could start if a slot were free (a job of a script at its
    /// `concurrency` could not).
    pub(super) fn has_startable(&self) -> bool {
        self.queue.iter().any(|a| self.has_room(&a.script))
    }

    /// The place of a queued job (from 1), as [`super::JobManager::queue_position`] defines
    /// it; `None` if it is not in this server's queue. One pass over the queue.
    pub(super) fn queue_position(&self, target: &Arc<Active>) -> Option<u64> {
        // Jobs ahead that take a slot before it, as dispatch would take them.
        let mut taken: HashMap<&str, usize> = HashMap::new();
        let mut ahead = 0u64;
        for queued in &self.queue {
            if Arc::ptr_eq(queued, target) {
                return Some(ahead + 1);
            }
            let script = &queued.script;
            let room = match script.concurrency {
                None => true,
                Some(limit) => {
                    let n = taken.entry(script.id.as_str()).or_insert_with(|| self.running_of(&script.id));
                    let room = *n < limit;
                    if room {
                        *n += 1;
                    }
                    room
                }
            };
            if room || script.id == target.script.id {
                ahead += 1;
            }
        }
        None
    }
}

/// How long a sync job waits in the queue before it is written: as long as a running one runs
/// before it is (most waits under load are shorter, and the job is then written once, when it
/// ends, instead of twice).
pub(super) const RECORD_WAITING_AFTER: Duration = supervisor::RECORD_RUNNING_AFTER;

pub(super) struct Shared {
    pub(super) config: Arc<Config>,
    pub(super) store: Store,
    pub(super) state: Mutex<State>,
    pub(super) next_seq: AtomicU64,
    /// Rung whenever a job ends (shutdown waits on it).
    pub(super) ended: Notify,
    /// This deployment's marker, exported to every job (see [`supervisor::DEPLOYMENT_ENV`]).
    pub(super) deployment: Arc<str>,
    /// Held from the look-up of an idempotency key to the registration of its job, so two
    /// requests with one key start one job (requests without a key never take it).
    pub(super) keyed: tokio::sync::Mutex<()>,
    /// This server as a node of a cluster (PostgreSQL): async jobs then go to the cluster's
    /// shared queue, and any node with a free slot claims them.
    pub(super) node: Option<crate::cluster::Node>,
}

/// A place reserved for one job in running + queued (see [`super::JobManager::admit`]). It is given
/// back when the job is queued, or when it is dropped (a refused or abandoned submission,
/// e.g. a request whose client went away while its job was being recorded).
pub struct Admission {
    pub(super) shared: Option<Arc<Shared>>,
}

impl Admission {
    /// Gives the place back, under the state lock the caller holds.
    pub(super) fn release(mut self, st: &mut State) {
        if self.shared.take().is_some() {
            st.reserved -= 1;
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            lock(&shared.state).reserved -= 1;
        }
    }
}

impl Shared {
    pub(super) fn active(&self, id: &str) -> Option<Arc<Active>> {
        lock(&self.state).active.get(id).cloned()
    }

    /// Admits one more job into running + queued, or refuses.
    pub(super) fn reserve(self: &Arc<Self>) -> Result<Admission, JobError> {
        let runner = &self.config.runner;
        let mut st = lock(&self.state);
        if st.stopping {
            return Err(JobError::ShuttingDown);
        }
        // Slots the cluster claimer took for a claim under way are not jobs yet.
        let in_flight = st.running - st.claiming + st.queue.len() + st.reserved;
        if in_flight >= runner.max_concurrent + runner.max_queued {
            return Err(JobError::QueueFull {
                running: st.running - st.claiming,
                queued: st.queue.len(),
                max_queued: runner.max_queued,
            });
        }
        st.reserved += 1;
        Ok(Admission { shared: Some(Arc::clone(self)) })
    }

    /// Starts queued jobs while slots are free, each as a task on the calling thread's
    /// runtime (an HTTP worker, or the main runtime at start): the job is supervised where its
    /// request was handled, without handing it to another thread.
    pub(super) fn dispatch(shared: &Arc<Shared>) {
        if Shared::dispatch_local(shared) {
            // A free slot: the cluster's queue may have a job for it.
            if let Some(node) = &shared.node {
                node.wake_claimer_if_work();
            }
        }
    }

    /// [`Shared::dispatch`] of this server's own queue; whether a slot is still free.
    fn dispatch_local(shared: &Arc<Shared>) -> bool {
        let (taken, free_left) = {
            let mut st = lock(&shared.state);
            if st.stopping {
                return false;
            }
            let free = shared.config.runner.max_concurrent.saturating_sub(st.running);
            let taken = st.take_startable(free);
            (taken, st.running < shared.config.runner.max_concurrent)
        };
        for next in taken {
            tokio::task::spawn_local(Arc::clone(shared).run(next));
        }
        free_left
    }

    /// The claimer of a cluster node: whenever it is rung (a job queued anywhere, a slot freed
    /// here, the listener's poll), claims queued jobs from the cluster's queue for the slots
    /// free now and runs them on this (the calling thread's) runtime. The slots are taken
    /// before the claim and given back for the jobs it did not find, so sync jobs arriving
    /// meanwhile never find more running than `maxConcurrent`.
    pub(super) async fn claim_loop(shared: Arc<Shared>) {
        let Some(node) = shared.node.clone() else { return };
        loop {
            node.work().notified().await;
            loop {
                let (free, room) = {
                    let mut st = lock(&shared.state);
                    let free = shared.config.runner.max_concurrent.saturating_sub(st.running);
                    // Jobs queued here that wait only for their script's limit leave the free
                    // slots to the cluster's queue.
                    if st.stopping || free == 0 || st.has_startable() {
                        (0, Vec::new())
                    } else {
                        st.running += free;
                        st.claiming = free;
                        (free, shared.script_room(&st))
                    }
                };
                if free == 0 {
                    break;
                }
                // Cleared before the claim: a job queued during it rings again.
                node.take_work();
                let claiming = node.clone();
                let claimed = match crate::sync::blocking(move || claiming.claim_jobs(free, &room)).await {
                    Ok(Ok(jobs)) => jobs,
                    Ok(Err(e)) => {
                        log::warn!("cluster: cannot claim queued jobs: {e}");
                        Vec::new()
                    }
                    Err(e) => {
                        error!("cluster: claim task failed: {e}");
                        Vec::new()
                    }
                };
                let got = claimed.len();
                let mut runs = Vec::with_capacity(got);
                let at_limit = {
                    let mut st = lock(&shared.state);
                    st.running -= free - got;
                    st.claiming = 0;
                    for job in claimed {
                        let Some(script) = shared.config.script(&job.script_id).cloned() else {
                            st.running -= 1;
                            runs.push(Err(job));
                            continue;
                        };
                        st.script_started(&script);
                        let active = Active::new(job, script, true);
                        let job = lock(&active.job);
                        if let Some(key) = &job.idempotency_key {
                            st.keys.insert(key.clone(), job.id.clone());
                        }
                        st.active.insert(job.id.clone(), Arc::clone(&active));
                        drop(job);
                        runs.push(Ok(active));
                    }
                    shared.config.scripts.iter().any(|s| s.concurrency.is_some_and(|n| st.running_of(&s.id) >= n))
                };
                for run in runs {
                    match run {
                        Ok(active) => {
                            tokio::task::spawn_local(Arc::clone(&shared).run(active));
                        }
                        Err(mut job) => {
                            // Claimed but not runnable here (scripts differ between nodes).
                            let why = format!("script {} is not configured on node {}", job.script_id, node.id());
                            job.end(JobStatus::Failed, Some(why), now_ms());
                            if let Err(e) = shared.store.writer().enqueue(WriteOp::update_job(&job)) {
                                error!("job {}: state not saved: {e}", job.id);
                            }
                        }
                    }
                }
                if got < free {
                    // The queue is empty (for now): wait to be rung. Sync jobs queued here
                    // while the slots were taken start now. A script at its limit may have
                    // had jobs passed over: the slot its job frees rings the claimer.
                    if at_limit {
                        node.mark_work();
                    }
                    Shared::dispatch_local(&shared);
                    break;
                }
                node.note_work();
            }
        }
    }

    /// The room each script with a `concurrency` has on this server now (its limit less its
    /// jobs running here), for a claim from the cluster's queue: a node claims no more of a
    /// script's jobs than it may run, so the limit holds per node.
    fn script_room(&self, st: &State) -> Vec<(String, usize)> {
        let scripts = self.config.scripts.iter();
        scripts
            .filter_map(|s| s.concurrency.map(|limit| (s.id.clone(), limit.saturating_sub(st.running_of(&s.id)))))
            .collect()
    }

    /// Notes a sync job that has to wait in the queue without being written: it is written
    /// once it has waited [`RECORD_WAITING_AFTER`], if it is still queued then. One task (on the
    /// calling thread's runtime) writes every such job as it comes due and ends when none is
    /// left, so a wait costs no timer and no wake-up of its own, and a short one no write.
    pub(super) fn note_waiting(shared: &Arc<Shared>, active: &Arc<Active>) {
        let start_writer = {
            let mut st = lock(&shared.state);
            st.unwritten_waiting.push_back((Instant::now(), Arc::clone(active)));
            !std::mem::replace(&mut st.writing_waiting, true)
        };
        if start_writer {
            tokio::task::spawn_local(Arc::clone(shared).write_waiting());
        }
    }

    /// The task of [`Shared::note_waiting`].
    async fn write_waiting(self: Arc<Shared>) {
        /// Gives the role back if the task is dropped before it ends (its runtime stopped), so
        /// a later waiting job starts another instead of waiting for one that is gone.
        struct Role<'a>(&'a Shared, bool);
        impl Drop for Role<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    lock(&self.0.state).writing_waiting = false;
                }
            }
        }
        let mut role = Role(&self, false);
        loop {
            let (due, next) = {
                let mut st = lock(&self.state);
                let cutoff = Instant::now().checked_sub(RECORD_WAITING_AFTER);
                let mut due = Vec::new();
                while let Some((queued_at, _)) = st.unwritten_waiting.front() {
                    if cutoff.is_some_and(|c| *queued_at <= c) {
                        due.extend(st.unwritten_waiting.pop_front().map(|(_, a)| a));
                    } else {
                        break;
                    }
                }
                let next = st.unwritten_waiting.front().map(|(queued_at, _)| *queued_at + RECORD_WAITING_AFTER);
                if next.is_none() {
                    st.writing_waiting = false;
                    role.1 = true;
                }
                (due, next)
            };
            for active in due {
                let job = lock(&active.job);
                if job.status == JobStatus::Queued && !active.recorded.load(Ordering::Acquire) {
                    self.order(&active, &job);
                }
            }
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => return,
            }
        }
    }

    /// Runs one job from spawn to its committed final state.
    pub(super) async fn run(self: Arc<Shared>, active: Arc<Active>) {
        let launch = self.launch(&active);
        metrics::get().job_started(&active.script.id, active.waited());
        let mut events = RunEvents { shared: &self, active: &active };
        // The run time is measured here (spawn included) rather than taken from the job's
        // `durationMs`, whole milliseconds, which are 0 for most short jobs.
        let (outcome, ran) = match self.record_start(&active).await {
            Ok(()) => {
                let spawning = Instant::now();
                (supervisor::supervise(&launch, &active.control, &mut events).await, spawning.elapsed())
            }
            Err(message) => (supervisor::Outcome::not_started(message), Duration::ZERO),
        };
        // Final in memory first, so no reader sees it running beside the job that takes its
        // slot; then free the slot before the commit, so the next job starts during the write.
        let (job, pending) = active.update(self.store.writer(), |job| job.finish(outcome));
        *lock(&active.live) = None;
        {
            let mut st = lock(&self.state);
            st.running -= 1;
            st.script_ended(&active.script);
        }
        metrics::get().job_ended(&active.script.id, job.status.as_str(), Some(ran));
        Shared::dispatch(&self);
        let committed = match pending {
            Ok(pending) => pending.wait().await,
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            error!("job {}: final state not saved: {e}", job.id);
        }
        self.forget(&active, job);
    }

    /// Commits an async job's start before its process can exist, so a crash at any moment
    /// after the spawn leaves it `running` in the database, and the restart ends it `failed`
    /// instead of running it a second time: an acknowledged async job runs at most once, however
    /// short. A sync job needs no such write (nothing was acknowledged to its caller, and a
    /// restart fails every unfinished sync job): its fast path stays one write.
    pub(super) async fn record_start(&self, active: &Active) -> Result<(), String> {
        {
            let job = lock(&active.job);
            // A job claimed from the cluster's queue: its claim committed its start.
            if job.mode != Mode::Async || job.status == JobStatus::Running {
                return Ok(());
            }
        }
        let (job, pending) = active.update(self.store.writer(), |job| job.mark_starting(now_ms()));
        let committed = match pending {
            Ok(pending) => pending.wait().await,
            Err(e) => Err(e),
        };
        committed.map_err(|e| {
            error!("job {}: start not recorded, not started: {e}", job.id);
            format!("the job's start could not be recorded, so it was not started: {e}")
        })
    }

    /// Ends a job that never ran (decided outside a supervisor), commits it and releases it.
    pub(super) async fn settle(&self, active: &Arc<Active>, end: impl FnOnce(&mut Job)) -> Job {
        let (job, pending) = active.update(self.store.writer(), end);
        metrics::get().job_ended(&active.script.id, job.status.as_str(), None);
        let committed = match pending {
            Ok(pending) => pending.wait().await,
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            error!("job {}: final state not saved: {e}", job.id);
        }
        self.forget(active, job.clone());
        job
    }

    /// Orders the write of a job's current state without waiting for it; a failure is logged.
    pub(super) fn order(&self, active: &Active, job: &Job) {
        if let Err(e) = active.record(job, self.store.writer()) {
            error!("job {}: state not saved: {e}", job.id);
        }
    }

    pub(super) fn forget(&self, active: &Arc<Active>, job: Job) {
        {
            let mut st = lock(&self.state);
            st.active.remove(&job.id);
            if let Some(key) = &job.idempotency_key {
                st.keys.remove(key);
            }
        }
        self.publish(Phase::Ended, &job);
        active.done.send_replace(Some(job));
        self.ended.notify_waiters();
    }

    /// Tells the lifecycle feed.
    pub(super) fn publish(&self, phase: Phase, job: &Job) {
        crate::events::hub().publish(Kind::Job, phase, &job.id, &job.script_id, job.status.as_str());
    }

    pub(super) fn launch(&self, active: &Active) -> Launch {
        let runner = &self.config.runner;
        let job = lock(&active.job);
        let script = &active.script;
        Launch {
            owner_id: job.id.clone(),
            deployment: Arc::clone(&self.deployment),
            program: script.path.clone(),
            args: job.args.clone(),
            cwd: script.cwd.clone(),
            env: script
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(job.step_key.iter().map(|key| (STEP_KEY_ENV.to_string(), key.clone())))
                .collect(),
            stdin: None,
            timeout: (script.timeout_sec > 0).then(|| Duration::from_secs(script.timeout_sec)),
            kill_grace: runner.kill_grace(),
            stdout_log: runner.logs_dir.join(&job.stdout.log_ref),
            stderr_log: runner.logs_dir.join(&job.stderr.log_ref),
            log_cap: runner.max_log_bytes_per_stream,
            preview_max: runner.preview_max_bytes,
            inline_small_output: true,
        }
    }

    /// Waits until no job runs, at most `bound`; true if none runs.
    pub(super) async fn wait_idle(&self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let notified = self.ended.notified();
            if lock(&self.state).running == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return lock(&self.state).running == 0;
            }
        }
    }
}

/// A span of milliseconds (negative ones, from a clock step back, are none).
fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Keeps the in-flight job current while its supervisor runs it.
pub(super) struct RunEvents<'a> {
    pub(super) shared: &'a Shared,
    pub(super) active: &'a Active,
}

impl supervisor::Events for RunEvents<'_> {
    fn spawned(&mut self, spawned: supervisor::Spawned, live: LiveStreams) {
        let mut job = lock(&self.active.job);
        job.mark_running(&spawned);
        *lock(&self.active.live) = Some(live);
        self.shared.publish(Phase::Started, &job);
    }

    fn still_running(&mut self, start_ticks: Option<u64>) {
        // Ordered before the final write; not waited for (the job is in memory meanwhile).
        let mut job = lock(&self.active.job);
        job.proc_start_ticks = start_ticks;
        self.shared.order(self.active, &job);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    fn script(id: &str, concurrency: Option<usize>) -> Arc<Script> {
        Arc::new(Script {
            id: id.into(),
            path: "/bin/true".into(),
            mode: None,
            timeout_sec: 0,
            args: crate::config::ArgRules {
                max_items: 1,
                item_pattern: regex::Regex::new("").unwrap(),
                item_max_length: 1,
            },
            env: Default::default(),
            cwd: "/".into(),
            description: None,
            concurrency,
            interpreter: None,
        })
    }

    /// A queue of jobs named `<script><n>`, of these scripts, in this order.
    fn queued(st: &mut State, jobs: &[(&str, &Arc<Script>)]) -> Vec<Arc<Active>> {
        let actives: Vec<_> = jobs
            .iter()
            .map(|(id, s)| Active::new(Job::new((*id).into(), &s.id, Mode::Async, Vec::new(), 0), Arc::clone(s), true))
            .collect();
        st.queue.extend(actives.iter().cloned());
        actives
    }

    fn ids(actives: &[Arc<Active>]) -> Vec<String> {
        actives.iter().map(|a| lock(&a.job).id.clone()).collect()
    }

    #[test]
    fn dispatch_passes_over_a_script_at_its_limit_and_keeps_its_jobs_in_order() {
        let (slow, fast) = (script("slow", Some(1)), script("fast", None));
        let mut st = State::default();
        queued(&mut st, &[("s1", &slow), ("s2", &slow), ("s3", &slow), ("f1", &fast), ("f2", &fast)]);
        assert_eq!(ids(&st.take_startable(2)), ["s1", "f1"]);
        assert_eq!((st.running, st.running_of("slow")), (2, 1));
        assert_eq!(ids(&st.queue.iter().cloned().collect::<Vec<_>>()), ["s2", "s3", "f2"]);
        assert_eq!(ids(&st.take_startable(5)), ["f2"]);
        assert!(!st.has_startable());
        st.running -= 1;
        st.script_ended(&slow);
        assert_eq!(ids(&st.take_startable(5)), ["s2"], "the script's next job, first in first out");
    }

    #[test]
    fn a_queue_position_counts_its_own_scripts_jobs_and_those_with_room() {
        let (slow, pair, fast) = (script("slow", Some(1)), script("pair", Some(2)), script("fast", None));
        let mut st = State { running: 1, ..State::default() };
        st.script_started(&slow);
        let q = queued(
            &mut st,
            &[("s1", &slow), ("p1", &pair), ("p2", &pair), ("p3", &pair), ("s2", &slow), ("f1", &fast)],
        );
        let positions: Vec<_> = q.iter().map(|a| st.queue_position(a).unwrap()).collect();
        // s1 waits for slow's place; p1 and p2 have room; p3 waits behind them; s2 behind s1,
        // p1 and p2; f1 behind p1 and p2 only (s1, p3 and s2 wait for their scripts).
        assert_eq!(positions, [1, 1, 2, 3, 4, 3]);
    }
}
