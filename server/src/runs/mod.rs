//! Durable workflow runs: launch, the run supervisor, the step journal and its guardrails.
//!
//! A run is a workflow source executed as a child process. Its durable steps are journaled by
//! label; every (re)execution starts from the top and each journaled step returns its stored
//! result instead of running again. Steps reach the journal through the internal routes,
//! authorised by a per-execution token. The database is the record of a run; runs not yet
//! terminal are also held in memory ([`live`]), where their state is current, and each change
//! is committed before it is acknowledged. The rooms:
//! - [`model`]: the typed run, journal entry and requests;
//! - [`lifecycle`]: the rules of a run's life, pure and unit-tested;
//! - [`live`]: the registry of live runs, one lock per run (its lock order is written there);
//! - [`launch`]: runs entering the engine (recovered, launched, forked) and their files;
//! - [`journal`]: recording and replaying steps for the step client ([`journal::rules`]: its
//!   pure rules and guardrails);
//! - [`execution`]: starting, supervising, stopping and settling executions: the one room
//!   that decides what runs next;
//! - [`events`]: what happened to a run, stored with each change, for its event stream;
//! - [`view`]: runs and journal entries as the API (and the events) show them;
//! - [`resume`]: the resume URLs of waiting steps: their tokens, and what using one does;
//! - [`sdk`]: sources written for a step SDK (`main(args, ctx)`), run through its loader;
//! - [`error`]: what can go wrong, typed.
//!
//! This file is the face the HTTP layer calls ([`RunManager`]), and the [`Engine`] the rooms
//! share.

pub mod error;
pub mod events;
pub mod execution;
pub mod journal;
pub mod launch;
pub mod lifecycle;
pub mod lint;
pub mod live;
pub mod model;
pub mod resume;
pub mod sdk;
pub mod view;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

pub use error::RunError;
use events::{Bells, EventPage, Subscription};
use live::Registry;
use model::{
    Begun, Decision, JournalEntry, LaunchRequest, Launched, Progress, Run, StepRecord, StepRequest, Submission,
};

use crate::config::Config;
use crate::db::{RunFilter, Store, Writer};
use crate::jobs::JobManager;
use crate::process::logs::{BytePage, LinePage, Stream};

/// Largest `args` of a launch, as JSON (it is also exported in an environment variable).
pub const MAX_ARGS_BYTES: usize = 64 * 1024;
/// Largest inline or stored source.
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;
/// How a run warning about an execution's unstorable output ends.
pub const INCOMPLETE_LOG: &str = "; its log is incomplete";
pub use crate::names::{fits_name, MAX_NAME_CHARS};
/// Largest run output kept (bytes of stdout read).
pub const MAX_OUTPUT_BYTES: u64 = 64 * 1024;
/// How often a running execution's heartbeat is written.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// Executions killed by a signal nobody here sent are restarted (with replay) this many times.
pub const MAX_CRASH_RESTARTS: i32 = 3;
/// Runs a node takes from the cluster at a time.
const TAKE_RUNS: usize = 16;
/// Run numbers per node epoch in a cluster (see [`crate::jobs`]'s job ids).
const RUN_ID_BLOCK: u64 = 1_000_000_000;
/// Longest a step-wait long poll holds a request.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a reader of a run's events that is caught up reads again without being woken,
/// in a cluster: another node may hold the run and write its events (no bell rings here).
pub const EVENTS_POLL_CLUSTER: Duration = Duration::from_millis(300);
/// The same on a lone server, where every event is written here and rings its bell: a safety
/// net only.
pub const EVENTS_POLL_ALONE: Duration = Duration::from_secs(5);

/// What every room of the engine shares: configuration, storage, the job service (script
/// steps run as jobs) and the live runs.
pub struct Engine {
    config: Arc<Config>,
    store: Store,
    jobs: JobManager,
    live: Registry,
    next_seq: AtomicU64,
    /// The server's own address, for `SCRIPT_RUNNER_URL`; set once bound.
    url: OnceLock<String>,
    /// This binary, so `script-runner step` is on every workflow's PATH.
    exe: Option<PathBuf>,
    stopping: AtomicBool,
    /// Rung when an execution ends (shutdown waits on it).
    ended: Notify,
    /// Executions running now.
    executing: AtomicU64,
    /// What readers of runs' events wait on; rung by the writer after each commit with events.
    bells: Arc<Bells>,
}

impl Engine {
    /// This node's id, for the runs it creates (`None` outside a cluster).
    fn node_id(&self) -> Option<String> {
        self.jobs.node().map(|node| node.id().to_string())
    }

    fn writer(&self) -> &Writer {
        self.store.writer()
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The in-memory state of a live run, else the stored one.
    fn current(&self, run: Run) -> Run {
        self.live.get(&run.id).map_or(run, |live| live.snapshot())
    }

    /// The run with this id.
    async fn get(&self, id: &str) -> Result<Run, RunError> {
        if let Some(live) = self.live.get(id) {
            return Ok(live.snapshot());
        }
        let (store, key) = (self.store.clone(), id.to_string());
        let run = crate::sync::blocking(move || store.get_run(&key)).await??;
        run.ok_or_else(|| RunError::RunNotFound(id.to_string()))
    }

    /// A run's whole journal, in journal order.
    async fn journal(&self, id: &str) -> Result<Vec<JournalEntry>, RunError> {
        let (store, id) = (self.store.clone(), id.to_string());
        Ok(crate::sync::blocking(move || store.journal(&id)).await??)
    }

    /// One journal entry.
    async fn step(&self, id: &str, label: &str) -> Result<Option<JournalEntry>, RunError> {
        let (store, id, label) = (self.store.clone(), id.to_string(), label.to_string());
        Ok(crate::sync::blocking(move || store.get_step(&id, &label)).await??)
    }
}

/// A decision about a run, which the node holding it makes (see [`RunManager::act`]).
#[derive(Debug, Clone)]
pub enum RunAction {
    /// Cancel it.
    Cancel,
    /// Pause it.
    Pause,
    /// Resume it.
    Resume,
    /// Decide its pending approval.
    Approve {
        /// The approval step's label.
        label: String,
        /// The decision.
        decision: Decision,
    },
    /// Give its pending input step a value.
    Input {
        /// The input step's label.
        label: String,
        /// The value and who gave it.
        submission: Submission,
    },
    /// Deliver an event to the step waiting for it.
    Event {
        /// The event's name.
        name: String,
        /// Its payload (any JSON).
        payload: serde_json::Value,
    },
    /// Do what a resume URL says to its step (see [`resume::act`]).
    ResumeUrl {
        /// The URL's token (it is its own credential; the node that holds the run checks it
        /// again).
        token: String,
        /// What the caller posted (`null` for nothing).
        body: serde_json::Value,
    },
}

impl RunAction {
    /// The internal route (under `/api/internal/cluster`) and body that ask another node for it.
    fn route(&self, id: &str) -> (String, serde_json::Value) {
        let id = crate::names::path_segment(id);
        match self {
            RunAction::Cancel => (format!("/script-runs/{id}/cancel"), serde_json::json!({})),
            RunAction::Pause => (format!("/script-runs/{id}/pause"), serde_json::json!({})),
            RunAction::Resume => (format!("/script-runs/{id}/resume"), serde_json::json!({})),
            RunAction::Approve { label, decision } => (
                format!("/script-runs/{id}/approvals/{}", crate::names::path_segment(label)),
                serde_json::json!({ "approved": decision.approved, "by": decision.by, "comment": decision.comment }),
            ),
            RunAction::Input { label, submission } => (
                format!("/script-runs/{id}/inputs/{}", crate::names::path_segment(label)),
                serde_json::json!({ "value": submission.value, "by": submission.by }),
            ),
            RunAction::Event { name, payload } => {
                (format!("/script-runs/{id}/events/{}", crate::names::path_segment(name)), payload.clone())
            }
            // The token in the body, not the path: a path may be logged on the way.
            RunAction::ResumeUrl { token, body } => {
                (format!("/script-runs/{id}/resume-url"), serde_json::json!({ "token": token, "body": body }))
            }
        }
    }
}

/// The run service. Cheap to clone.
#[derive(Clone)]
pub struct RunManager {
    engine: Arc<Engine>,
}

impl RunManager {
    /// Creates the service and loads the runs left unfinished. Call [`RunManager::resume_all`]
    /// once the server is bound to start the ones that were running.
    pub fn new(config: Arc<Config>, store: Store, jobs: JobManager) -> Result<RunManager, RunError> {
        let next_seq = match jobs.node() {
            // Unique across the cluster: the node's epoch leads the number.
            Some(node) => u64::try_from(node.key().epoch).unwrap_or(0).saturating_mul(RUN_ID_BLOCK) + 1,
            None => u64::try_from(store.max_run_seq()?).unwrap_or(0) + 1,
        };
        let dir = launch::runs_dir(&config);
        std::fs::create_dir_all(&dir).map_err(|e| RunError::file(format!("cannot create {}", dir.display()), e))?;
        let live = match jobs.node() {
            // A node holds only the runs it takes (free ones: left by a node that is gone, or by
            // a server before the cluster); the others are held by live nodes.
            Some(node) => {
                let mut runs = Vec::new();
                loop {
                    let taken = node.claim_runs(TAKE_RUNS)?;
                    let more = taken.len() == TAKE_RUNS;
                    runs.extend(taken);
                    if !more {
                        break;
                    }
                }
                launch::adopt(&store, runs)?
            }
            None => launch::recover(&store)?,
        };
        let bells = Arc::new(Bells::default());
        let ringer = Arc::clone(&bells);
        store.writer().on_events(Box::new(move |run_id| ringer.ring(run_id)));
        Ok(RunManager {
            engine: Arc::new(Engine {
                config,
                store,
                jobs,
                live: Registry::with(live),
                next_seq: AtomicU64::new(next_seq),
                url: OnceLock::new(),
                exe: std::env::current_exe().ok(),
                stopping: AtomicBool::new(false),
                ended: Notify::new(),
                executing: AtomicU64::new(0),
                bells,
            }),
        })
    }

    /// Takes the runs other nodes let go (a node that is gone, or stopped), as they become free,
    /// and resumes the running ones with replay (a node of a cluster; call it on the main
    /// runtime once serving).
    pub fn start_taking(&self) {
        let Some(node) = self.engine.jobs.node().cloned() else { return };
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_local(async move {
            loop {
                node.runs_free().notified().await;
                if engine.stopping() {
                    return;
                }
                let (taker, store) = (node.clone(), engine.store.clone());
                let taken = crate::sync::blocking(move || {
                    let runs = taker.claim_runs(TAKE_RUNS)?;
                    launch::adopt(&store, runs)
                })
                .await;
                let live = match taken {
                    Ok(Ok(live)) => live,
                    Ok(Err(e)) => {
                        log::warn!("cluster: cannot take free runs: {e}");
                        continue;
                    }
                    Err(e) => {
                        log::error!("cluster: run take-over task failed: {e}");
                        continue;
                    }
                };
                if live.len() == TAKE_RUNS {
                    node.runs_free().notify_one();
                }
                for run in live {
                    log::info!("cluster: took over run {} ({})", run.id, run.status().as_str());
                    engine.live.insert(Arc::clone(&run));
                    if run.status() == model::RunStatus::Running {
                        execution::start(&engine, &run);
                    }
                }
            }
        });
    }

    /// Sets the metrics' gauges of the live runs this server holds (by status, and those
    /// awaiting an approval), as they are now; called when the metrics are scraped.
    pub fn observe_live(&self) {
        let live = self.engine.live.all();
        crate::metrics::get().set_live_runs(live.iter().map(|run| run.status().as_str()));
    }

    /// Sets the address workflows reach the server at (`SCRIPT_RUNNER_URL`).
    pub fn set_url(&self, url: String) {
        let _ = self.engine.url.set(url);
    }

    /// Starts an execution (with replay) of every run left `running` by the previous server
    /// process; `awaiting` and `paused` runs stay as they are. Call it on the actix runtime.
    pub fn resume_all(&self) {
        execution::resume_all(&self.engine);
    }

    /// Validates and records a run, and starts its first execution.
    pub async fn launch(&self, request: LaunchRequest) -> Result<Launched, RunError> {
        launch::launch(&self.engine, request).await
    }

    /// A new run from an existing one: its journal is a copy of the original's completed
    /// entries before `from_step` (all of them without it), and it runs `source` if given.
    pub async fn fork(&self, id: &str, from_step: Option<String>, source: Option<String>) -> Result<Run, RunError> {
        launch::fork(&self.engine, id, from_step, source).await
    }

    /// The run with this id.
    pub async fn get(&self, id: &str) -> Result<Run, RunError> {
        self.engine.get(id).await
    }

    /// The completion callbacks of a run (none when it was launched without one), with every
    /// attempt kept; `RunNotFound` for an unknown run.
    pub async fn callbacks(&self, id: &str) -> Result<Vec<crate::callbacks::Callback>, RunError> {
        self.engine.get(id).await?;
        let store = self.engine.store.clone();
        let key = id.to_string();
        Ok(crate::sync::blocking(move || store.callbacks_of(&key)).await??)
    }

    /// The run and its journal.
    pub async fn get_with_journal(&self, id: &str) -> Result<(Run, Vec<JournalEntry>), RunError> {
        Ok((self.engine.get(id).await?, self.engine.journal(id).await?))
    }

    /// A page of runs, newest first, and how many match.
    pub async fn list(&self, filter: RunFilter) -> Result<(Vec<Run>, i64), RunError> {
        let store = self.engine.store.clone();
        let (runs, total) = crate::sync::blocking(move || store.list_runs(&filter)).await??;
        Ok((runs.into_iter().map(|run| self.engine.current(run)).collect(), total))
    }

    /// Up to `limit` of the run's events after number `after` (0: from the first), read from
    /// the database, and whether the run had ended before they were read. An unknown run is
    /// [`RunError::RunNotFound`].
    pub async fn events_after(&self, id: &str, after: u64, limit: i64) -> Result<EventPage, RunError> {
        let (store, key) = (self.engine.store.clone(), id.to_string());
        let page = crate::sync::blocking(move || store.events_after(&key, after, limit)).await??;
        page.ok_or_else(|| RunError::RunNotFound(id.to_string()))
    }

    /// A hold on the bell rung after each commit that stores events of the run (see
    /// [`events::Bells`]); released when dropped.
    pub fn subscribe(&self, id: &str) -> Subscription {
        self.engine.bells.subscribe(id)
    }

    /// How long a caught-up reader of events waits for a bell before it reads again:
    /// [`EVENTS_POLL_CLUSTER`] in a cluster, else [`EVENTS_POLL_ALONE`].
    pub fn events_poll(&self) -> Duration {
        if self.engine.jobs.node().is_some() {
            EVENTS_POLL_CLUSTER
        } else {
            EVENTS_POLL_ALONE
        }
    }

    /// Waits until the run is terminal and returns it.
    pub async fn wait_terminal(&self, id: &str) -> Result<Run, RunError> {
        if let Some(live) = self.engine.live.get(id) {
            let mut rx = live.watch();
            while !live.status().is_terminal() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
        self.engine.get(id).await
    }

    /// Cancels a run: its process gets SIGTERM (SIGKILL after the grace) and the jobs its
    /// script steps started are canceled. A terminal run is returned unchanged.
    pub async fn cancel(&self, id: &str) -> Result<Run, RunError> {
        self.act(id, RunAction::Cancel, true).await
    }

    /// Pauses a running or awaiting run: its process is stopped; `resume` re-executes it.
    pub async fn pause(&self, id: &str) -> Result<Run, RunError> {
        self.act(id, RunAction::Pause, true).await
    }

    /// Resumes a paused run: a new execution starts from the top, completed steps replay.
    pub async fn resume(&self, id: &str) -> Result<Run, RunError> {
        self.act(id, RunAction::Resume, true).await
    }

    /// Decides a pending approval. The run continues (its process restarted if it was
    /// parked), and the step client exits 0 (approved) or 1 (denied).
    pub async fn approve(&self, id: &str, label: &str, decision: Decision) -> Result<Run, RunError> {
        self.act(id, RunAction::Approve { label: label.to_string(), decision }, true).await
    }

    /// Gives a pending input step its value, checked against the step's schema first (a
    /// mismatch is [`RunError::InputInvalid`] and journals nothing). The run continues as
    /// after an approval, and the step client prints the value.
    pub async fn submit_input(&self, id: &str, label: &str, submission: Submission) -> Result<Run, RunError> {
        self.act(id, RunAction::Input { label: label.to_string(), submission }, true).await
    }

    /// Delivers an event (any JSON payload) to the run's earliest event step waiting for
    /// `name`; none waiting is [`RunError::StepNotFound`]. The run continues as after an
    /// approval, and the step client prints the payload.
    pub async fn deliver_event(&self, id: &str, name: &str, payload: serde_json::Value) -> Result<Run, RunError> {
        self.act(id, RunAction::Event { name: name.to_string(), payload }, true).await
    }

    /// What a resume URL would do (its run, step, action, expiry, and whether the step is
    /// decided), changing nothing. A token this server did not sign, or of no step there is,
    /// is [`RunError::ResumeUrlNotFound`]; one past its expiry [`RunError::ResumeUrlExpired`].
    pub async fn describe_resume_url(&self, token: &str) -> Result<resume::Described, RunError> {
        resume::describe(&self.engine, token).await
    }

    /// Does what a resume URL says (see [`resume::act`]) on the node that holds its run, and
    /// describes its step afterwards. Refused as [`RunManager::describe_resume_url`] is; a
    /// step already decided, or a URL already used, is [`RunError::AlreadyDecided`].
    pub async fn use_resume_url(&self, token: &str, body: serde_json::Value) -> Result<resume::Described, RunError> {
        let claims = resume::check(&self.engine, token)?;
        self.act(&claims.run_id, RunAction::ResumeUrl { token: token.to_string(), body }, true).await?;
        resume::describe(&self.engine, token).await
    }

    /// The resume URLs of the step a run waits for, when `resume.secret` is configured and the
    /// run is `awaiting` (computed on each read: never stored).
    pub fn resume_links(&self, run: &Run) -> Option<resume::Links> {
        resume::links_of(&self.engine, run)
    }

    /// Does `action` to the run. A run held by another node of the cluster is decided there:
    /// with `forward`, the request is sent to that node (its internal route), which answers
    /// once its decision is committed; the run is then read back. Without (the request came
    /// from another node), [`RunError::OnOtherNode`] is the answer: a request is forwarded once.
    pub async fn act(&self, id: &str, action: RunAction, forward: bool) -> Result<Run, RunError> {
        let engine = &self.engine;
        let done = match &action {
            RunAction::Cancel => execution::cancel(engine, id).await,
            RunAction::Pause => execution::pause(engine, id).await,
            RunAction::Resume => execution::resume(engine, id).await,
            RunAction::Approve { label, decision } => journal::approve(engine, id, label, decision.clone()).await,
            RunAction::Input { label, submission } => {
                journal::submit_input(engine, id, label, submission.clone()).await
            }
            RunAction::Event { name, payload } => journal::deliver_event(engine, id, name, payload.clone()).await,
            RunAction::ResumeUrl { token, body } => resume::act(engine, token, body.clone()).await,
        };
        match done {
            Err(RunError::OnOtherNode { node, .. }) if forward => self.forward(id, &node, &action).await?,
            other => other?,
        }
        engine.get(id).await
    }

    /// Sends `action` to the node that holds the run.
    async fn forward(&self, id: &str, node: &str, action: &RunAction) -> Result<(), RunError> {
        let Some(cluster) = self.engine.jobs.node().cloned() else { return Ok(()) };
        let (path, body) = action.route(id);
        let (owner, run) = (node.to_string(), id.to_string());
        crate::sync::blocking(move || match cluster.node(&owner)? {
            Some(row) if row.state == "up" || row.state == "draining" => {
                crate::cluster::peer::post::<serde_json::Value>(&row, &path, &body)?;
                Ok(())
            }
            row => Err(RunError::OwnerDown {
                id: run,
                node: owner,
                state: row.map_or_else(|| "unknown".to_string(), |r| r.state),
            }),
        })
        .await?
    }

    /// A byte page of an execution's log (the latest execution unless `attempt` is given), of
    /// `run` as the caller has just read it (its log page needs the run for its warnings too).
    /// In a cluster, a log this node does not have, of a run another node holds, is read from
    /// that node, unless `here_only` (that node's side of such a request).
    pub async fn read_bytes(
        &self,
        run: &Run,
        attempt: Option<i32>,
        stream: Stream,
        offset: u64,
        limit: u64,
        here_only: bool,
    ) -> Result<BytePage, RunError> {
        if let Some(holder) = self.log_holder(run, attempt, stream, here_only).await? {
            let asked = (stream, "bytes", offset, limit, attempt);
            let page: script_runner_wire::runs::RunBytesPage = RunManager::ask_holder(holder, &run.id, asked).await?;
            return Ok(BytePage {
                offset: page.offset,
                next_offset: page.next_offset,
                total_size: page.total_size,
                data: page.data.into_bytes(),
            });
        }
        launch::read_bytes(&self.engine, run, attempt, stream, offset, limit).await
    }

    /// A line page of an execution's log (only complete lines of the one that runs now).
    /// In a cluster, as [`RunManager::read_bytes`].
    pub async fn read_lines(
        &self,
        run: &Run,
        attempt: Option<i32>,
        stream: Stream,
        offset: u64,
        limit: u64,
        here_only: bool,
    ) -> Result<LinePage, RunError> {
        if let Some(holder) = self.log_holder(run, attempt, stream, here_only).await? {
            let asked = (stream, "lines", offset, limit, attempt);
            let page: script_runner_wire::runs::RunLinesPage = RunManager::ask_holder(holder, &run.id, asked).await?;
            return Ok(LinePage {
                offset: page.offset,
                next_offset: page.next_offset,
                total_lines: page.total_lines,
                lines: page.lines,
            });
        }
        launch::read_lines(&self.engine, run, attempt, stream, offset, limit).await
    }

    /// The node to ask for a run's execution log: in a cluster, when another node holds the run
    /// and the log is not here (the holder ran the execution). A holder that is gone is
    /// [`RunError::LogOwnerDown`].
    async fn log_holder(
        &self,
        run: &Run,
        attempt: Option<i32>,
        stream: Stream,
        here_only: bool,
    ) -> Result<Option<crate::db::cluster::NodeRow>, RunError> {
        let Some(cluster) = self.engine.jobs.node().cloned().filter(|_| !here_only) else { return Ok(None) };
        let Some(holder) = run.node.clone().filter(|holder| holder != cluster.id()) else { return Ok(None) };
        let path = launch::log_path(&self.engine.config, run, attempt, stream)?;
        crate::sync::blocking(move || {
            if path.exists() {
                return Ok(None);
            }
            match cluster.node(&holder)? {
                Some(row) if row.state == "up" || row.state == "draining" => Ok(Some(row)),
                row => Err(RunError::LogOwnerDown {
                    state: row.map_or_else(|| "unknown".to_string(), |r| r.state),
                    node: holder,
                }),
            }
        })
        .await?
    }

    /// A log page of a run, from the node that holds it.
    async fn ask_holder<T: serde::de::DeserializeOwned + Send + 'static>(
        holder: crate::db::cluster::NodeRow,
        id: &str,
        (stream, unit, offset, limit, attempt): (Stream, &'static str, u64, u64, Option<i32>),
    ) -> Result<T, RunError> {
        use crate::cluster::peer;
        let path = format!("/script-runs/{}/logs", crate::names::path_segment(id));
        let page = peer::LogPage { path, stream: stream.as_str(), unit, offset, limit, attempt };
        crate::sync::blocking(move || {
            peer::log_page::<T>(&holder, &page).map_err(|e| match e.unreachable_node() {
                Some(node) => RunError::LogOwnerDown { node: node.to_string(), state: "unreachable".into() },
                None => RunError::Peer(e),
            })
        })
        .await?
    }

    /// Checks a run token before anything else of a request is read: `Forbidden` unless it is
    /// the token of the run's current execution (the HTTP layer calls it before it reads a
    /// body, so a foreign token is refused whatever the body holds).
    pub fn check_token(&self, id: &str, token: &str) -> Result<(), RunError> {
        journal::authorize(&self.engine, id, token).map(drop)
    }

    /// One journal entry, for the step client.
    pub async fn get_step(&self, id: &str, token: &str, label: &str) -> Result<Option<JournalEntry>, RunError> {
        journal::authorize(&self.engine, id, token)?;
        self.engine.step(id, label).await
    }

    /// Begins a step: replays a journaled one, checks divergence and the guardrails, and for
    /// server-side kinds (script, sleep, approval) journals the start.
    pub async fn begin_step(&self, id: &str, token: &str, request: StepRequest) -> Result<Begun, RunError> {
        journal::begin_step(&self.engine, id, token, request).await
    }

    /// Records a step the client executed (or a started one it finished, like a sleep).
    pub async fn record_step(&self, id: &str, token: &str, record: StepRecord) -> Result<JournalEntry, RunError> {
        journal::record_step(&self.engine, id, token, record).await
    }

    /// Journals a failed try of a retried command step and when the next is due (see
    /// [`journal::record_attempt`]).
    pub async fn record_attempt(
        &self,
        id: &str,
        token: &str,
        request: StepRequest,
        attempt: model::Attempt,
    ) -> Result<JournalEntry, RunError> {
        journal::record_attempt(&self.engine, id, token, request, attempt).await
    }

    /// Waits (at most `timeout`, capped at [`MAX_WAIT`]) until a started entry has ended,
    /// and returns it as it is then.
    pub async fn wait_step(
        &self,
        id: &str,
        token: &str,
        label: &str,
        timeout: Duration,
    ) -> Result<JournalEntry, RunError> {
        journal::wait_step(&self.engine, id, token, label, timeout).await
    }

    /// Records the run's progress.
    pub async fn progress(&self, id: &str, token: &str, progress: Progress) -> Result<Run, RunError> {
        journal::progress(&self.engine, id, token, progress).await
    }

    /// Stops taking runs and stops every execution; the runs stay `running` in the database
    /// and resume at the next start. Waits at most `bound`.
    pub async fn shutdown(&self, bound: Duration) {
        execution::shutdown(&self.engine, bound).await;
    }
}
