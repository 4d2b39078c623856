//! Jobs: admission, the FIFO queue, dispatch to supervisors, cancel, reads and shutdown.
//!
//! The database is the record of every job; jobs in flight (queued or running) are also held in
//! memory, where their state is current, and leave memory only once their final state is
//! committed, so a read never sees an older state than one it saw before.
//!
//! When a job is written is a trade between durability and cost (a short job is dominated by
//! what it costs to record it):
//! - an async job is committed before the `202` hands out its id, and its start (`running`)
//!   before its process is spawned, so a restart never runs it twice;
//! - a sync job is first written when it has waited in the queue or run for
//!   [`supervisor::RECORD_RUNNING_AFTER`], or when it ends, whichever comes first: nothing has
//!   been acknowledged to its caller before its answer, which waits for that commit;
//! - a running job's pid and start time are written once it has run that long, so most jobs
//!   are written once or twice, never three times.
//!
//! A crash in between loses nothing acknowledged, and leaves no process behind: recovery kills
//! every process that carries the deployment's marker (see [`recovery`]).

mod active;
mod args;
mod error;
pub mod follow;
pub mod import;
pub mod model;
pub mod recovery;

pub use active::Admission;
use active::{Active, Shared, State};
pub use args::validate_args;
pub use error::JobError;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{error, info, warn};
use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::callbacks::{Callback, Target};
use crate::cluster::{peer, Node};
use crate::config::{Config, Mode, Script};
use crate::db::{JobFilter, OnOutage, Store, WriteOp};
use crate::process::logs::{self, BytePage, LinePage, LineQuery, Stream};
use crate::process::supervisor;
use crate::sync::{blocking, lock};
use crate::time::now_ms;
use model::{Job, JobStatus};

/// How many times (5 ms apart) [`JobManager::wait`] looks again for a job recorded but not
/// registered yet.
const WAIT_REGISTERED_TRIES: u32 = 400;
/// How often [`JobManager::wait`] reads a job that runs on another node of the cluster.
const WAIT_ELSEWHERE_EVERY: Duration = Duration::from_millis(100);
/// Job numbers per node epoch in a cluster: a node numbers its jobs from `epoch * ID_BLOCK`, so
/// two nodes never make one id.
const ID_BLOCK: u64 = 1_000_000_000;
/// Largest line page, in lines.
pub const MAX_LINE_LIMIT: u64 = 10_000;
/// Largest byte page, in bytes (upstream's limit).
pub const MAX_BYTE_LIMIT: u64 = 1024 * 1024;
/// Most line text in one line page.
pub const MAX_LINE_PAGE_BYTES: usize = 1024 * 1024;

/// The job service. Cheap to clone.
#[derive(Clone)]
pub struct JobManager {
    shared: Arc<Shared>,
}

/// A job accepted by [`JobManager::submit`].
pub struct Submission {
    /// The job as admitted.
    pub job: Job,
    /// Resolves with the final job.
    done: watch::Receiver<Option<Job>>,
}

impl Submission {
    /// Waits until the job has ended and its final state is committed.
    pub async fn finished(mut self) -> Option<Job> {
        wait_done(&mut self.done).await
    }
}

async fn wait_done(rx: &mut watch::Receiver<Option<Job>>) -> Option<Job> {
    rx.wait_for(Option::is_some).await.ok().and_then(|j| j.clone())
}

/// What [`JobManager::submit_keyed`] gives.
pub enum Keyed {
    /// No job had the key: this one was started under it.
    New(Submission),
    /// The job started under the key before, as it is now, and how the request wants to be
    /// answered (its `mode`, or the script's).
    Existing(Job, Mode),
}

/// A byte page with the job's stream state.
pub struct BytesView {
    /// The page.
    pub page: BytePage,
    /// Whether the stream was truncated at the cap.
    pub truncated: bool,
    /// Why the job's output could not all be stored (see [`Job::output_error`]).
    pub output_error: Option<String>,
}

/// A line page with the job's stream state.
pub struct LinesView {
    /// The page.
    pub page: LinePage,
    /// Whether the stream was truncated at the cap.
    pub truncated: bool,
    /// Why the job's output could not all be stored (see [`Job::output_error`]).
    pub output_error: Option<String>,
}

/// A workflow step's job, named before it exists (see [`JobManager::submit_step`]).
#[derive(Debug, Clone)]
pub struct StepJob {
    /// The id the step journaled first.
    pub id: String,
    /// `<runId>:<label>`: the job's `SCRIPT_STEP_KEY`.
    pub step_key: String,
}

impl JobManager {
    /// Creates the service. Run [`recovery::recover`] on it before serving (not in a cluster,
    /// where joining did it: see [`crate::cluster`]).
    pub fn new(config: Arc<Config>, store: Store) -> Result<JobManager, JobError> {
        JobManager::on_node(config, store, None)
    }

    /// [`JobManager::new`] for a node of a cluster: async jobs go to the cluster's queue, ids
    /// are unique across the cluster (the node's epoch leads their number), and processes carry
    /// the node's marker.
    pub fn on_node(config: Arc<Config>, store: Store, node: Option<Node>) -> Result<JobManager, JobError> {
        let next_seq = match &node {
            Some(node) => u64::try_from(node.key().epoch).unwrap_or(0).saturating_mul(ID_BLOCK) + 1,
            None => u64::try_from(store.max_seq()?).unwrap_or(0) + 1,
        };
        std::fs::create_dir_all(&config.runner.logs_dir)
            .map_err(|e| JobError::Log { path: config.runner.logs_dir.clone(), source: e })?;
        let deployment = node.as_ref().map_or_else(|| store.deployment(), Node::marker);
        let manager = JobManager {
            shared: Arc::new(Shared {
                config,
                store,
                state: Mutex::new(State::default()),
                next_seq: AtomicU64::new(next_seq),
                ended: Notify::new(),
                deployment,
                keyed: tokio::sync::Mutex::new(()),
                node,
            }),
        };
        if let Some(node) = &manager.shared.node {
            let shared = Arc::downgrade(&manager.shared);
            node.on_cancel(move |id| {
                if let Some(active) = shared.upgrade().and_then(|shared| shared.active(id)) {
                    active.control.cancel();
                }
            });
        }
        Ok(manager)
    }

    /// This server as a node of a cluster, if it is one.
    pub fn node(&self) -> Option<&Node> {
        self.shared.node.as_ref()
    }

    /// Starts claiming jobs from the cluster's queue on this runtime (a node of a cluster; call
    /// it on the main runtime once serving).
    pub fn start_claiming(&self) {
        if self.shared.node.is_some() {
            tokio::task::spawn_local(Shared::claim_loop(Arc::clone(&self.shared)));
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Arc<Config> {
        &self.shared.config
    }

    /// Validates a run request, records the job and queues it.
    pub async fn submit(
        &self,
        script_id: &str,
        args: Option<&Value>,
        mode: Option<&str>,
        callback: Option<&Target>,
    ) -> Result<Submission, JobError> {
        let (script, args) = self.checked(script_id, args)?;
        let mode = self.mode_of(&script, mode)?;
        self.start(None, None, None, script, args, mode, callback).await
    }

    /// A place for one more job in running + queued, or `QUEUE_FULL` / shutting down, for a
    /// caller that must know before it records anything (a workflow's script step); pass it
    /// to [`JobManager::submit_step`]. Dropped unused, it frees the place.
    pub fn admit(&self) -> Result<Admission, JobError> {
        Shared::reserve(&self.shared)
    }

    /// A new job id, for a caller that must record it before the job exists (a workflow's
    /// script step journals the id first, so a crash can never leave a job it does not know
    /// of); pass it to [`JobManager::submit_step`].
    pub fn new_job_id(&self) -> String {
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        format!("job_{}_{seq}", now_ms())
    }

    /// Checks a run request as [`JobManager::submit`] would, without running anything.
    pub fn validate(&self, script_id: &str, args: Option<&Value>) -> Result<(), JobError> {
        self.checked(script_id, args).map(drop)
    }

    /// The script of a run request and its validated argv.
    fn checked(&self, script_id: &str, args: Option<&Value>) -> Result<(Arc<Script>, Vec<String>), JobError> {
        let script =
            self.shared.config.script(script_id).cloned().ok_or_else(|| JobError::ScriptNotFound(script_id.into()))?;
        let args = validate_args(&script.args, args)?;
        Ok((script, args))
    }

    /// A workflow step's job: [`JobManager::submit`] under the id the step journaled (from
    /// [`JobManager::new_job_id`]), in a place from [`JobManager::admit`] (taken now when
    /// `None`). An async job is committed before it can start, so a job with an id that is not
    /// in the database has never run.
    pub async fn submit_step(
        &self,
        admission: Option<Admission>,
        step: StepJob,
        script_id: &str,
        args: Option<&Value>,
        mode: Option<&str>,
    ) -> Result<Submission, JobError> {
        let (script, args) = self.checked(script_id, args)?;
        let mode = self.mode_of(&script, mode)?;
        self.start(admission, Some(step), None, script, args, mode, None).await
    }

    /// [`JobManager::submit`] under an idempotency key: the first request with the key starts
    /// the job; the same key again gives that job (in flight or ended, also after a restart),
    /// or `IdempotencyConflict` when it was for another script or other arguments. A request
    /// that is refused (bad args, full queue) leaves the key unused.
    pub async fn submit_keyed(
        &self,
        key: &str,
        script_id: &str,
        args: Option<&Value>,
        mode: Option<&str>,
        callback: Option<&Target>,
    ) -> Result<Keyed, JobError> {
        let (script, args) = self.checked(script_id, args)?;
        let mode = self.mode_of(&script, mode)?;
        let _one_at_a_time = self.shared.keyed.lock().await;
        if let Some(job) = self.by_key(key).await? {
            if job.script_id != script.id || job.args != args {
                return Err(JobError::IdempotencyConflict { key: key.to_string(), job_id: job.id });
            }
            return Ok(Keyed::Existing(job, mode));
        }
        let (script_id, job_args) = (script.id.clone(), args.clone());
        match self.start(None, None, Some(key.to_string()), script, args, mode, callback).await {
            Ok(submission) => Ok(Keyed::New(submission)),
            // Another node of a cluster started a job under this key meanwhile (the lock above
            // is this node's; the key's unique index refused the second insert): that job.
            Err(JobError::Store(e)) if self.shared.node.is_some() => match self.by_key(key).await? {
                Some(job) if job.script_id == script_id && job.args == job_args => Ok(Keyed::Existing(job, mode)),
                Some(job) => Err(JobError::IdempotencyConflict { key: key.to_string(), job_id: job.id }),
                None => Err(JobError::Store(e)),
            },
            Err(e) => Err(e),
        }
    }

    /// The job started under an idempotency key, if any.
    pub async fn by_key(&self, key: &str) -> Result<Option<Job>, JobError> {
        let in_flight = {
            let st = lock(&self.shared.state);
            st.keys.get(key).and_then(|id| st.active.get(id)).cloned()
        };
        if let Some(active) = in_flight {
            return Ok(Some(active.snapshot()));
        }
        let store = self.shared.store.clone();
        let key = key.to_string();
        Ok(blocking(move || store.job_by_idempotency_key(&key)).await??)
    }

    /// The mode a request runs in: its own, else the script's.
    fn mode_of(&self, script: &Script, mode: Option<&str>) -> Result<Mode, JobError> {
        match mode {
            None => Ok(script.effective_mode(self.shared.config.runner.default_mode)),
            Some(m) => Mode::parse(m).ok_or_else(|| JobError::InvalidArgs("mode must be sync or async".into())),
        }
    }

    /// Records and queues a checked job (see [`JobManager::submit_step`]).
    #[expect(clippy::too_many_arguments, reason = "each caller sets a different few; a struct would only rename them")]
    async fn start(
        &self,
        admission: Option<Admission>,
        step: Option<StepJob>,
        key: Option<String>,
        script: Arc<Script>,
        args: Vec<String>,
        mode: Mode,
        callback: Option<&Target>,
    ) -> Result<Submission, JobError> {
        let shared = &self.shared;
        // A callback is stored with the job's first row, which a sync job may never have
        // before it ends.
        if callback.is_some() && mode == Mode::Sync {
            return Err(JobError::InvalidArgs("callback needs an async job (mode: async)".into()));
        }
        // The database is asked first when nothing vouched for it within the last second: a
        // sync job is not written before it runs, and an async job's insert below is refused
        // on a writer lane without the database unless the database answered since (this
        // probe, on a server that came back). No job starts whose end could not be recorded.
        if !shared.store.recently_available() {
            let store = shared.store.clone();
            blocking(move || store.probe()).await??;
        }
        let admission = match admission {
            Some(admission) => admission,
            None => Shared::reserve(shared)?,
        };
        let (id, step_key) = match step {
            Some(StepJob { id, step_key }) => (id, Some(step_key)),
            None => (self.new_job_id(), None),
        };
        let mut job = Job::new(id, &script.id, mode, args, now_ms());
        job.idempotency_key.clone_from(&key);
        job.step_key = step_key;
        if let Some(node) = &shared.node {
            if mode == Mode::Async {
                let callback = callback.map(|target| target.for_job(&job.id));
                return self.queue_in_cluster(admission, job, script, node.clone(), callback).await;
            }
            job.node = Some(node.id().to_string());
        }
        let id = job.id.clone();
        let active = Active::new(job, script, false);
        if let Some(target) = callback {
            *lock(&active.callback) = Some(target.for_job(&id));
        }
        // The 202 hands the id out: an async job is on disk before that. A sync caller is told
        // nothing until the end, so its job is first written when it ends, has run for a
        // while, or has waited in the queue for a while (see below), whichever comes first.
        // In a cluster a keyed sync job is also written before it runs: the key's unique index
        // is what keeps two nodes given one key at once from both running it.
        let written_first = mode == Mode::Async || (key.is_some() && shared.node.is_some());
        let admitted = match written_first {
            true => {
                // Ordered under the job's lock, awaited after releasing it; refused at once
                // (503, nothing started) while the database is lost.
                let ordered = active.record_with(&lock(&active.job), shared.store.writer(), OnOutage::Refuse);
                match ordered {
                    Ok(pending) => pending.wait().await,
                    Err(e) => Err(e),
                }
            }
            false => Ok(()),
        };
        let waits = {
            let mut st = lock(&shared.state);
            admission.release(&mut st);
            admitted?;
            // Cheap and conservative (a job noted as waiting that starts at once is dropped
            // from the note unwritten): a queue behind a script at its limit counts as busy.
            let waits = st.stopping
                || !st.queue.is_empty()
                || st.running >= shared.config.runner.max_concurrent
                || !st.has_room(&active.script);
            if let Some(key) = key {
                st.keys.insert(key, id.clone());
            }
            st.active.insert(id, Arc::clone(&active));
            st.queue.push_back(Arc::clone(&active));
            waits
        };
        shared.publish(crate::events::Phase::Created, &lock(&active.job));
        if waits && !active.recorded.load(Ordering::Acquire) {
            Shared::note_waiting(shared, &active);
        }
        let done = active.done.subscribe();
        Shared::dispatch(shared);
        let job = active.snapshot();
        Ok(Submission { job, done })
    }

    /// An async job of a cluster node: committed to the cluster's queue (bounded by
    /// `runner.maxQueued` across the cluster), where any node with a free slot claims it. It
    /// is not held here; its answer is the `202`. Its callback, if any, is written with it
    /// (any node delivers it once the job has ended).
    async fn queue_in_cluster(
        &self,
        admission: Admission,
        job: Job,
        script: Arc<Script>,
        node: Node,
        callback: Option<Callback>,
    ) -> Result<Submission, JobError> {
        let shared = &self.shared;
        let max_queued = shared.config.runner.max_queued;
        let store = shared.store.clone();
        let queued = blocking(move || store.queued_jobs(max_queued)).await??;
        let (running, claiming) = {
            let st = lock(&shared.state);
            (st.running, st.claiming)
        };
        // A job that a free slot here takes at once does not wait (slots the claimer has taken
        // for a claim under way are free for it).
        let running = running - claiming;
        let free_here = shared.config.runner.max_concurrent.saturating_sub(running);
        if queued >= max_queued + free_here {
            return Err(JobError::QueueFull { running, queued, max_queued });
        }
        let active = Active::new(job, script, false);
        *lock(&active.callback) = callback;
        let ordered = active.record_with(&lock(&active.job), shared.store.writer(), OnOutage::Refuse);
        match ordered {
            Ok(pending) => pending.wait().await?,
            Err(e) => return Err(e.into()),
        }
        drop(admission);
        node.note_work();
        let job = active.snapshot();
        shared.publish(crate::events::Phase::Created, &job);
        Ok(Submission { job, done: watch::channel(None).1 })
    }

    /// Where the job's logs are, when they are on another node of the cluster: its row there.
    async fn log_owner(&self, job: &Job, here_only: bool) -> Result<Option<crate::db::cluster::NodeRow>, JobError> {
        let Some(node) = self.shared.node.as_ref().filter(|_| !here_only) else { return Ok(None) };
        let Some(owner) = job.node.as_deref().filter(|owner| *owner != node.id()) else { return Ok(None) };
        // Logs kept with the job, or a logs folder the nodes share, are read here.
        let local = [&job.stdout, &job.stderr].iter().all(|info| {
            inline_data(info).is_some() || info.size == 0 || self.log_path(&info.log_ref).is_some_and(|p| p.exists())
        });
        if local {
            return Ok(None);
        }
        let (node, owner) = (node.clone(), owner.to_string());
        let row = blocking(move || node.node(&owner).map(|row| (owner, row))).await??;
        match row {
            (_, Some(row)) if row.state == "up" || row.state == "draining" => Ok(Some(row)),
            (owner, Some(row)) => Err(JobError::LogOwnerDown { node: owner, state: row.state }),
            (owner, None) => Err(JobError::LogOwnerDown { node: owner, state: "unknown".into() }),
        }
    }

    /// A page of a job's log from the node that ran it.
    async fn remote_page<T: serde::de::DeserializeOwned + Send + 'static>(
        owner: crate::db::cluster::NodeRow,
        id: &str,
        stream: Stream,
        unit: &'static str,
        offset: u64,
        limit: u64,
    ) -> Result<T, JobError> {
        let path = format!("/jobs/{}/logs", crate::names::path_segment(id));
        let page = peer::LogPage { path, stream: stream.as_str(), unit, offset, limit, attempt: None };
        blocking(move || {
            peer::log_page::<T>(&owner, &page).map_err(|e| match e.unreachable_node() {
                Some(node) => JobError::LogOwnerDown { node: node.to_string(), state: "unreachable".into() },
                None => JobError::Peer(e),
            })
        })
        .await?
    }

    /// The job with this id.
    pub async fn get(&self, id: &str) -> Result<Job, JobError> {
        if let Some(active) = self.shared.active(id) {
            return Ok(active.snapshot());
        }
        let store = self.shared.store.clone();
        let key = id.to_string();
        let row = blocking(move || store.get_job(&key)).await??;
        row.ok_or_else(|| JobError::JobNotFound(id.to_string()))
    }

    /// The job with this id, and its place in this server's queue while it waits there (see
    /// [`JobManager::queue_position`]).
    pub async fn get_with_position(&self, id: &str) -> Result<(Job, Option<u64>), JobError> {
        let position = self.queue_position(id);
        let job = self.get(id).await?;
        // It may have started between the two reads: a place is shown only with `queued`.
        let position = if job.status == JobStatus::Queued { position } else { None };
        Ok((job, position))
    }

    /// A queued job's place in this server's queue, from 1: one more than the jobs queued
    /// ahead of it that start before it, which are those of its own script and those of
    /// other scripts with room under their `concurrency` (taken as dispatch would take them).
    /// A job of a script at its limit does not count for a job of another script behind it.
    /// `None` for a job not queued here (running, ended, or in a cluster's shared queue).
    /// One pass over the queue.
    pub fn queue_position(&self, id: &str) -> Option<u64> {
        let st = lock(&self.shared.state);
        let active = st.active.get(id)?;
        st.queue_position(active)
    }

    /// The completion callbacks of a job (none when it was started without one), with every
    /// attempt kept; `JobNotFound` for an unknown job.
    pub async fn callbacks(&self, id: &str) -> Result<Vec<Callback>, JobError> {
        self.get(id).await?;
        let store = self.shared.store.clone();
        let key = id.to_string();
        Ok(blocking(move || store.callbacks_of(&key)).await??)
    }

    /// Waits until the job has ended and returns its final state (at once if it has ended).
    pub async fn wait(&self, id: &str) -> Result<Job, JobError> {
        // A job read between its insert's commit and its registration is neither ended nor
        // active yet: look again shortly (bounded; recovery leaves no other such job). In a
        // cluster a job may be queued for any node or run on another: its row says when it
        // ended, read every [`WAIT_ELSEWHERE_EVERY`] after that.
        let clustered = self.shared.node.is_some();
        let mut tries = 0;
        loop {
            if let Some(active) = self.shared.active(id) {
                let mut done = active.done.subscribe();
                if let Some(job) = wait_done(&mut done).await {
                    return Ok(job);
                }
            }
            let job = self.get(id).await?;
            if job.status.is_terminal() {
                return Ok(job);
            }
            tries += 1;
            match (tries < WAIT_REGISTERED_TRIES, clustered) {
                (true, _) => tokio::time::sleep(Duration::from_millis(5)).await,
                (false, true) => tokio::time::sleep(WAIT_ELSEWHERE_EVERY).await,
                (false, false) => return self.get(id).await,
            }
        }
    }

    /// The deployment marker every process of this server carries (see
    /// [`supervisor::DEPLOYMENT_ENV`]).
    pub fn deployment_marker(&self) -> Arc<str> {
        Arc::clone(&self.shared.deployment)
    }

    /// A page of jobs, newest first, and how many match.
    pub async fn list(&self, filter: JobFilter) -> Result<(Vec<Job>, i64), JobError> {
        if let Some(key) = &filter.idempotency_key {
            // At most one job: the one in flight under the key, else the database's.
            let job = self.by_key(key).await?.filter(|job| {
                filter.status.as_deref().map_or(true, |s| s == job.status.as_str())
                    && filter.script_id.as_deref().map_or(true, |s| s == job.script_id)
            });
            let total = i64::from(job.is_some());
            let page = job.into_iter().skip(usize::try_from(filter.offset).unwrap_or(usize::MAX)).collect();
            return Ok((page, total));
        }
        let store = self.shared.store.clone();
        let (rows, total) = blocking(move || store.list_jobs(&filter)).await??;
        let mut jobs = Vec::with_capacity(rows.len());
        let mut stale = Vec::new();
        for stored in rows {
            match self.shared.active(&stored.id) {
                Some(active) => jobs.push(active.snapshot()),
                None => {
                    // Unfinished in the rows but no longer in flight: it ended after the rows
                    // were read, and its final state was committed before it left memory.
                    // In a cluster, only this node's jobs: another node's row is the truth, and
                    // a job in the cluster's queue is not in memory while it waits (read again,
                    // it could show a claim made after the rest of the page was read).
                    let mine = match (&self.shared.node, &stored.node) {
                        (Some(node), Some(owner)) => owner == node.id(),
                        (Some(_), None) => false,
                        (None, _) => true,
                    };
                    if !stored.status.is_terminal() && mine {
                        stale.push(jobs.len());
                    }
                    jobs.push(stored);
                }
            }
        }
        for index in stale {
            let (store, id) = (self.shared.store.clone(), jobs[index].id.clone());
            if let Some(job) = blocking(move || store.get_job(&id)).await?? {
                jobs[index] = job;
            }
        }

        Ok((jobs, total))
    }

    /// Cancels a job: a queued one ends at once and never starts; a running one gets SIGTERM
    /// to its group, SIGKILL after the grace, and the call waits (bounded) for it to end. A
    /// finished job is returned unchanged.
    pub async fn cancel(&self, id: &str) -> Result<Job, JobError> {
        let shared = &self.shared;
        let Some(active) = shared.active(id) else { return self.cancel_elsewhere(id).await };
        let dequeued = {
            let mut st = lock(&shared.state);
            let before = st.queue.len();
            st.queue.retain(|a| !Arc::ptr_eq(a, &active));
            st.queue.len() < before
        };
        if dequeued {
            return Ok(shared.settle(&active, |job| job.end(JobStatus::Canceled, None, now_ms())).await);
        }
        active.control.cancel();
        let mut done = active.done.subscribe();
        let bound = supervisor::stop_bound(shared.config.runner.kill_grace());
        match tokio::time::timeout(bound, wait_done(&mut done)).await {
            Ok(Some(job)) => Ok(job),
            _ => Ok(active.snapshot()),
        }
    }

    /// A cancel of a job this node does not hold: in a cluster, one queued in the cluster's
    /// queue ends `canceled` at once, and one running on another node is stopped by that node
    /// (told at once; the call waits, bounded, for its end). Otherwise the job as it is.
    async fn cancel_elsewhere(&self, id: &str) -> Result<Job, JobError> {
        let Some(node) = self.shared.node.clone() else { return self.get(id).await };
        let job = self.get(id).await?;
        if job.status.is_terminal() {
            return Ok(job);
        }
        let key = id.to_string();
        let asked = blocking(move || node.ask_cancel(&key)).await??;
        if let crate::db::cluster::CancelAsked::Told(_) = asked {
            // The owner stops it as a local cancel does: SIGTERM, SIGKILL after the grace.
            let bound = supervisor::stop_bound(self.shared.config.runner.kill_grace()) + Duration::from_secs(2);
            let deadline = tokio::time::Instant::now() + bound;
            while tokio::time::Instant::now() < deadline {
                let job = self.get(id).await?;
                if job.status.is_terminal() {
                    return Ok(job);
                }
                tokio::time::sleep(WAIT_ELSEWHERE_EVERY).await;
            }
        }
        self.get(id).await
    }

    /// A byte page of a job's log. In a cluster, a job another node ran is read from that node,
    /// unless `here_only` (that node's side of such a request).
    pub async fn read_bytes(
        &self,
        id: &str,
        stream: Stream,
        offset: u64,
        limit: u64,
        here_only: bool,
    ) -> Result<BytesView, JobError> {
        let job = self.get(id).await?;
        self.read_bytes_of(&job, stream, offset, limit, here_only).await
    }

    /// [`JobManager::read_bytes`] of a job the caller has just read (a log follower reads the
    /// job for its status anyway: it is not read twice).
    pub async fn read_bytes_of(
        &self,
        job: &Job,
        stream: Stream,
        offset: u64,
        limit: u64,
        here_only: bool,
    ) -> Result<BytesView, JobError> {
        let id = job.id.as_str();
        if let Some(owner) = self.log_owner(job, here_only).await? {
            let page: script_runner_wire::jobs::BytesPage =
                JobManager::remote_page(owner, id, stream, "bytes", offset, limit).await?;
            return Ok(BytesView {
                page: BytePage {
                    offset: page.offset,
                    next_offset: page.next_offset,
                    total_size: page.total_size,
                    data: page.data.into_bytes(),
                },
                truncated: page.truncated,
                output_error: page.output_error,
            });
        }
        let info = job.stream(stream).clone();
        let path = self.log_path(&info.log_ref);
        let limit = limit.min(MAX_BYTE_LIMIT);
        let inline = inline_data(&info);
        let page = match path {
            None => BytePage { offset, next_offset: offset, total_size: 0, data: Vec::new() },
            Some(path) => {
                read_log(path, move |p| match inline {
                    Some(data) if !p.exists() => Ok(logs::read_bytes_in(&data, offset, limit)),
                    _ => logs::read_bytes(p, offset, limit),
                })
                .await?
            }
        };
        Ok(BytesView { page, truncated: info.truncated, output_error: job.output_error() })
    }

    /// A line page of a job's log. While the job runs only complete lines are served. In a
    /// cluster, as [`JobManager::read_bytes`].
    pub async fn read_lines(
        &self,
        id: &str,
        stream: Stream,
        offset: u64,
        limit: u64,
        here_only: bool,
    ) -> Result<LinesView, JobError> {
        let job = self.get(id).await?;
        self.read_lines_of(&job, stream, offset, limit, here_only).await
    }

    /// [`JobManager::read_lines`] of a job the caller has just read (a log follower reads the
    /// job for its status anyway: it is not read twice).
    pub async fn read_lines_of(
        &self,
        job: &Job,
        stream: Stream,
        offset: u64,
        limit: u64,
        here_only: bool,
    ) -> Result<LinesView, JobError> {
        let id = job.id.as_str();
        if let Some(owner) = self.log_owner(job, here_only).await? {
            let page: script_runner_wire::jobs::LinesPage =
                JobManager::remote_page(owner, id, stream, "lines", offset, limit).await?;
            return Ok(LinesView {
                page: LinePage {
                    offset: page.offset,
                    next_offset: page.next_offset,
                    total_lines: page.total_lines,
                    lines: page.lines,
                },
                truncated: page.truncated,
                output_error: page.output_error,
            });
        }
        let info = job.stream(stream).clone();
        let complete_only = !job.status.is_terminal();
        let query = LineQuery {
            offset,
            limit: limit.min(MAX_LINE_LIMIT),
            max_bytes: MAX_LINE_PAGE_BYTES,
            complete_only,
            known_total: info.lines,
        };
        let inline = inline_data(&info);
        let page = match self.log_path(&info.log_ref) {
            None => LinePage { offset, next_offset: offset, total_lines: 0, lines: Vec::new() },
            Some(path) => {
                read_log(path, move |p| match inline {
                    Some(data) if !p.exists() => logs::read_lines_in(&data, query),
                    _ => logs::read_lines(p, query),
                })
                .await?
            }
        };
        Ok(LinesView { page, truncated: info.truncated, output_error: job.output_error() })
    }

    /// The whole stored stream as text, for the sync response; the preview when it holds all.
    pub async fn stream_text(&self, job: &Job, stream: Stream) -> Result<String, JobError> {
        let info = job.stream(stream);
        // The preview is the tail of all output: it is the whole stream when nothing was
        // dropped at the cap and the output fits in it (compared in bytes, before decoding).
        let preview_max = self.shared.config.runner.preview_max_bytes as u64;
        if !info.truncated && info.size <= preview_max {
            return Ok(info.preview.clone());
        }
        let cap = self.shared.config.runner.max_log_bytes_per_stream;
        if self.log_owner(job, false).await?.is_some() {
            let view = self.read_bytes(&job.id, stream, 0, cap, false).await?;
            return Ok(String::from_utf8_lossy(&view.page.data).into_owned());
        }
        let Some(path) = self.log_path(&info.log_ref) else { return Ok(String::new()) };
        let page = read_log(path, move |p| logs::read_bytes(p, 0, cap)).await?;
        Ok(String::from_utf8_lossy(&page.data).into_owned())
    }

    /// The log file for a stored reference, or `None` if the reference is not a plain file
    /// name (an imported record could hold anything; it never reaches the filesystem).
    fn log_path(&self, log_ref: &str) -> Option<PathBuf> {
        let plain = !log_ref.is_empty()
            && log_ref != "."
            && log_ref != ".."
            && !log_ref.contains('/')
            && !log_ref.contains('\0');
        plain.then(|| self.shared.config.runner.logs_dir.join(log_ref))
    }

    /// Stops taking runs, lets running jobs finish for up to `grace`, then cancels them.
    /// Queued async jobs stay queued in the database and run after the next start; queued
    /// sync jobs (whose callers are about to be disconnected) end `failed`.
    pub async fn shutdown(&self, grace: Duration) {
        let shared = &self.shared;
        lock(&shared.state).stopping = true;
        if !shared.wait_idle(grace).await {
            let running: Vec<_> = {
                let st = lock(&shared.state);
                st.active.values().filter(|a| !st.queue.iter().any(|q| Arc::ptr_eq(q, a))).cloned().collect()
            };
            warn!("shutdown: canceling {} running job(s) after {grace:?}", running.len());
            for active in &running {
                active.control.cancel();
            }
            let bound = supervisor::stop_bound(shared.config.runner.kill_grace());
            shared.wait_idle(bound).await;
        }
        let queued: Vec<_> = lock(&shared.state).queue.drain(..).collect();
        for active in queued.into_iter().filter(|a| lock(&a.job).mode == Mode::Sync) {
            let reason = "the server shut down before the job started";
            shared.settle(&active, |job| job.end(JobStatus::Failed, Some(reason.into()), now_ms())).await;
        }
        if let Err(e) = shared.store.writer().write(WriteOp::Flush).await {
            error!("shutdown: final database flush failed: {e}");
        }
    }

    /// Sets the metrics' gauges of the jobs in flight here (queued, running), as they are now;
    /// called when the metrics are scraped, so keeping them costs nothing in between.
    pub fn observe_in_flight(&self) {
        let (queued, running) = {
            let st = lock(&self.shared.state);
            (st.queue.len(), st.running - st.claiming)
        };
        crate::metrics::get().set_jobs(queued, running);
    }

    /// Puts an already recorded queued job back in the queue (recovery after a restart).
    fn requeue(&self, job: Job, script: Arc<Script>) {
        let id = job.id.clone();
        let key = job.idempotency_key.clone();
        let active = Active::new(job, script, true);
        let mut st = lock(&self.shared.state);
        if let Some(key) = key {
            st.keys.insert(key, id.clone());
        }
        st.active.insert(id, Arc::clone(&active));
        st.queue.push_back(active);
    }

    /// Starts queued jobs while slots are free (call it on a runtime with a `LocalSet`, such
    /// as actix's; jobs requeued by recovery wait for this call).
    pub fn dispatch(&self) {
        Shared::dispatch(&self.shared);
    }

    fn store(&self) -> &Store {
        &self.shared.store
    }

    fn logs_dir(&self) -> &Path {
        &self.shared.config.runner.logs_dir
    }
}

/// The whole stream, when it may be kept with the job rather than in a file: a short job's
/// output that fits in its preview ([`crate::process::logs::LogSink::keep_inline`]). Read only
/// where its file does not exist; the preview then holds all of it, exactly.
fn inline_data(info: &model::StreamInfo) -> Option<Vec<u8>> {
    let whole = !info.truncated && info.size > 0 && info.preview.len() as u64 == info.size;
    whole.then(|| info.preview.clone().into_bytes())
}

/// Reads a log file off the async workers; an error names the file.
async fn read_log<T: Send + 'static>(
    path: PathBuf,
    read: impl FnOnce(&Path) -> std::io::Result<T> + Send + 'static,
) -> Result<T, JobError> {
    blocking(move || read(&path).map_err(|source| JobError::Log { path, source })).await?
}

impl JobManager {
    /// Logs a one-line summary of the service at start.
    pub fn log_start(&self) {
        let runner = &self.shared.config.runner;
        info!(
            "jobs: {} scripts, maxConcurrent {}, maxQueued {}, logs in {}",
            self.shared.config.scripts.len(),
            runner.max_concurrent,
            runner.max_queued,
            self.logs_dir().display()
        );
    }
}
