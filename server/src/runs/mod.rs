//! Durable workflow runs: launch, the run supervisor, the step journal and its guardrails.
//!
//! A run is a workflow source executed as a child process. Its durable steps are journaled by
//! label in `script_run_journal`; every (re)execution starts from the top and each step whose
//! label is journaled returns the stored result instead of running again. Steps reach the
//! journal through the internal routes, authorised by a per-execution token (see [`client`]
//! for the step client).
//!
//! The database row is the record of a run; runs not yet terminal are also held in memory,
//! where their state is current, and each change is committed before it is acknowledged.
//!
//! [`client`]: crate::client

pub mod lint;
pub mod model;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use log::{error, info, warn};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use crate::config::{Config, Script};
use crate::db::models::{RunRow, StepRow};
use crate::db::{Pending, RunFilter, Store, StoreError, WriteOp};
use crate::jobs::{Admission, JobError, JobManager};
use crate::process::logs::{self, BytePage, LinePage, LineQuery, Stream};
use crate::process::supervisor::{self, Control, Ending, Launch, LiveStreams, Outcome, Spawned};
use crate::sync::lock;
use crate::time::now_ms;
use model::{step_status, RunStatus, StepType};

/// Largest `args` of a launch, as JSON (it is also exported in an environment variable).
pub const MAX_ARGS_BYTES: usize = 64 * 1024;
/// Largest inline or stored source.
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;
/// How a run warning about an execution's unstorable output ends.
pub const INCOMPLETE_LOG: &str = "; its log is incomplete";
/// Longest label, script name or idempotency key.
pub const MAX_NAME_CHARS: usize = 200;
/// Largest run output kept (bytes of stdout read).
pub const MAX_OUTPUT_BYTES: u64 = 64 * 1024;
/// How often a running execution's heartbeat is written.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// Executions killed by a signal nobody here sent are restarted (with replay) this many times.
pub const MAX_CRASH_RESTARTS: i32 = 3;
/// Longest a step-wait long poll holds a request.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// What can go wrong with a run request. The HTTP layer maps each to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A field of the request is missing or malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// `args` is over [`MAX_ARGS_BYTES`].
    #[error("args is {0} bytes of JSON; at most {MAX_ARGS_BYTES} are accepted")]
    ArgsTooLarge(usize),
    /// No configured workflow has this id.
    #[error("workflow not found: {0}")]
    WorkflowNotFound(String),
    /// No flow of `workflows.flowsDir` has this name.
    #[error("{0}")]
    FlowNotFound(String),
    /// Inline sources are off (no interpreter configured).
    #[error("inline sources are disabled: config.json workflows.interpreters lists no interpreter")]
    InlineDisabled,
    /// The interpreter is not configured.
    #[error("interpreter {0:?} is not in config.json workflows.interpreters (allowed: {1})")]
    UnknownInterpreter(String, String),
    /// The label lint rejected the source.
    #[error("{0}")]
    LabelLint(String),
    /// The idempotency key was used for another launch.
    #[error("idempotency key {0:?} was already used for a different workflow or args (run {1})")]
    IdempotencyConflict(String, String),
    /// No run has this id.
    #[error("script run not found: {0}")]
    RunNotFound(String),
    /// The run is not in a state that allows this.
    #[error("{0}")]
    InvalidState(String),
    /// No journal entry has this label.
    #[error("{0}")]
    StepNotFound(String),
    /// A replayed label was requested as a different step.
    #[error("{0}")]
    StepDiverged(String),
    /// The approval was already decided.
    #[error("approval {0:?} was already decided")]
    AlreadyDecided(String),
    /// The run token does not grant access to this run.
    #[error("the run token does not grant access to run {0}")]
    Forbidden(String),
    /// The run has no live execution (it is terminal, or the token is of an old execution).
    #[error("run {0} is {1}: its journal takes no more steps")]
    RunNotActive(String, String),
    /// A guardrail stopped the run.
    #[error("{0}")]
    LimitExceeded(String),
    /// The server is stopping.
    #[error("the server is shutting down and accepts no new runs")]
    ShuttingDown,
    /// A script step's job could not be submitted.
    #[error(transparent)]
    Job(#[from] JobError),
    /// Storage failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A file of the run could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// A launch request, as parsed by the HTTP layer.
#[derive(Debug, Clone, Default)]
pub struct LaunchRequest {
    /// A configured workflow id.
    pub workflow_id: Option<String>,
    /// Inline source.
    pub source: Option<String>,
    /// The interpreter for inline source.
    pub interpreter: Option<String>,
    /// A flow of `workflows.flowsDir`, run durably (each node a journaled step).
    pub flow: Option<String>,
    /// Display name.
    pub script_name: Option<String>,
    /// Arguments (any JSON).
    pub args: Value,
    /// Makes the launch idempotent.
    pub idempotency_key: Option<String>,
}

/// A launched run: the run, and whether it already existed under the idempotency key.
pub struct Launched {
    /// The run's row.
    pub run: RunRow,
    /// True when the idempotency key matched an earlier launch.
    pub deduplicated: bool,
}

/// What a step client asked to begin.
#[derive(Debug, Clone)]
pub struct StepRequest {
    /// The label.
    pub label: String,
    /// The step type.
    pub step_type: StepType,
    /// What the step does (compared on replay).
    pub config: Value,
}

/// What the step client should do after [`RunManager::begin_step`].
#[derive(Debug)]
pub enum Begun {
    /// The step has ended (journaled before, or a script step the server just ran): use it.
    Done(StepRow),
    /// Not journaled: execute it and record the result.
    Execute,
    /// Journaled as started (a sleep or an approval): carry on waiting for it.
    Resume(StepRow),
}

/// A step result reported by the step client.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// The label.
    pub label: String,
    /// The step type.
    pub step_type: StepType,
    /// What the step did.
    pub config: Value,
    /// `completed` or `failed`.
    pub status: String,
    /// The result (JSON).
    pub result: Option<Value>,
    /// The error of a failed step.
    pub error: Option<String>,
    /// How long the step took.
    pub duration_ms: Option<i64>,
}

/// An approval decision.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Approved or denied.
    pub approved: bool,
    /// Who decided.
    pub by: Option<String>,
    /// Why.
    pub comment: Option<String>,
}

/// A status a run with no process takes for a stop reason, and its ordered write.
type IdleEnd = (RunStatus, Result<Option<Pending>, RunError>);

/// Why an execution is being stopped by the server.
#[derive(Debug, Clone, PartialEq)]
enum Stop {
    Cancel,
    Pause,
    Park,
    Limit(String),
    Shutdown,
}

impl Stop {
    /// Which reason wins when several arrive while the process stops: a cancel or a limit
    /// (the first of them) over a pause, a pause over a shutdown, anything over a park.
    fn rank(&self) -> u8 {
        match self {
            Stop::Park => 0,
            Stop::Shutdown => 1,
            Stop::Pause => 2,
            Stop::Cancel | Stop::Limit(_) => 3,
        }
    }

    /// The status a run with no process takes for this reason (none for a park or a
    /// shutdown, which leave it as it is).
    fn ending(self) -> Option<(RunStatus, Option<String>)> {
        match self {
            Stop::Cancel => Some((RunStatus::Cancelled, Some("cancelled".to_string()))),
            Stop::Limit(message) => Some((RunStatus::AbortedLimit, Some(message))),
            Stop::Pause => Some((RunStatus::Paused, None)),
            Stop::Park | Stop::Shutdown => None,
        }
    }
}

impl LiveRun {
    /// Tells the running execution why it is being stopped, unless a weightier reason is
    /// already set; returns its control to cancel, or `None` if there is no process (or the
    /// reason lost). Call it with the execution's lock held (`exec`).
    fn request_stop(&self, exec: &Option<Arc<Control>>, why: Stop) -> Option<Arc<Control>> {
        let control = exec.clone()?;
        let mut stop = lock(&self.stop);
        if stop.as_ref().is_some_and(|current| current.rank() >= why.rank()) {
            return None;
        }
        *stop = Some(why);
        Some(control)
    }
}

/// Journal bookkeeping of the current execution.
#[derive(Debug, Default)]
struct Journal {
    /// Entries in the journal.
    total: u64,
    /// Script-step entries in the journal.
    scripts: u64,
    /// Next journal sequence number.
    next_seq: i64,
    /// New labels begun by this execution and not journaled yet (they count for the limits).
    reserved: HashSet<String>,
    /// The script steps among `reserved` (they count for `maxScriptSteps`).
    reserved_scripts: HashSet<String>,
    /// Labels requested by this execution (a second request gets a warning).
    requested: HashSet<String>,
}

impl Journal {
    /// Ends a label's reservation (journaled, or refused); whether it had one.
    fn release(&mut self, label: &str) -> bool {
        self.reserved_scripts.remove(label);
        self.reserved.remove(label)
    }
}

/// A run that is not terminal.
struct LiveRun {
    row: Mutex<RunRow>,
    journal: Mutex<Journal>,
    /// The current execution's control, while a process runs.
    exec: Mutex<Option<Arc<Control>>>,
    stop: Mutex<Option<Stop>>,
    /// Start another execution when the current one has ended (an approval landed while the
    /// process was being parked).
    restart: AtomicBool,
    /// Jobs started by script steps, canceled with the run.
    jobs: Mutex<HashSet<String>>,
    /// Bumped on every change (long polls and `background: false` launches wait on it).
    changed: watch::Sender<u64>,
    /// Consecutive executions killed by a foreign signal.
    crashes: Mutex<i32>,
}

impl LiveRun {
    fn new(row: RunRow) -> Arc<LiveRun> {
        Arc::new(LiveRun {
            row: Mutex::new(row),
            journal: Mutex::new(Journal::default()),
            exec: Mutex::new(None),
            stop: Mutex::new(None),
            restart: AtomicBool::new(false),
            jobs: Mutex::new(HashSet::new()),
            changed: watch::channel(0).0,
            crashes: Mutex::new(0),
        })
    }

    fn snapshot(&self) -> RunRow {
        lock(&self.row).clone()
    }

    fn status(&self) -> RunStatus {
        RunStatus::parse(&lock(&self.row).status).unwrap_or(RunStatus::Failed)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

struct Shared {
    config: Arc<Config>,
    store: Store,
    jobs: JobManager,
    live: Mutex<HashMap<String, Arc<LiveRun>>>,
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
}

/// The run service. Cheap to clone.
#[derive(Clone)]
pub struct RunManager {
    shared: Arc<Shared>,
}

/// sha256 as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn new_token() -> Result<String, RunError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| RunError::Io(format!("no randomness for the run token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn to_json(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

/// A stored JSON text as a value (`null` if it is not JSON).
pub(crate) fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// Runs blocking storage or file work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, RunError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| RunError::Io(format!("blocking task failed: {e}")))
}

impl RunManager {
    /// Creates the service and loads the runs left unfinished. Call [`RunManager::resume_all`]
    /// once the server is bound to start the ones that were running.
    pub fn new(config: Arc<Config>, store: Store, jobs: JobManager) -> Result<RunManager, RunError> {
        let next_seq = u64::try_from(store.max_run_seq()?).unwrap_or(0) + 1;
        std::fs::create_dir_all(runs_dir(&config))
            .map_err(|e| RunError::Io(format!("cannot create {}: {e}", runs_dir(&config).display())))?;
        let mut live = HashMap::new();
        for mut row in store.unfinished_runs()? {
            let journal = store.journal(&row.id)?;
            let started = |kind: StepType| {
                journal.iter().filter(move |e| e.step_type == kind.as_str() && e.status == step_status::STARTED)
            };
            // Crash recovery (which runs first) killed every process of the previous server:
            // a pid left on the row names a process that is gone.
            let mut changed = row.pid.take().is_some();
            // A decision journaled just before the crash, without the status change that
            // follows it: the run goes on (it is resumed with the running ones).
            if row.status == RunStatus::Awaiting.as_str() && started(StepType::Approval).next().is_none() {
                row.status = RunStatus::Running.as_str().to_string();
                changed = true;
            }
            if changed {
                store.writer().write_blocking(WriteOp::UpdateRun(Box::new(row.clone())))?;
            }
            // Jobs its script steps started and that may still run (queued ones run after
            // the restart): canceled with the run, even before a replay reaches their steps.
            // (Not a start-only step's job: that one outlives its run.)
            let jobs = started(StepType::Script)
                .filter(|e| waits_for_job(&parse_json(&e.config)))
                .filter_map(|e| e.job_id.clone());
            let run = LiveRun::new(row.clone());
            lock(&run.jobs).extend(jobs);
            live.insert(row.id, run);
        }
        Ok(RunManager {
            shared: Arc::new(Shared {
                config,
                store,
                jobs,
                live: Mutex::new(live),
                next_seq: AtomicU64::new(next_seq),
                url: OnceLock::new(),
                exe: std::env::current_exe().ok(),
                stopping: AtomicBool::new(false),
                ended: Notify::new(),
                executing: AtomicU64::new(0),
            }),
        })
    }

    /// Sets the address workflows reach the server at (`SCRIPT_RUNNER_URL`).
    pub fn set_url(&self, url: String) {
        let _ = self.shared.url.set(url);
    }

    /// Starts an execution (with replay) of every run left `running` by the previous server
    /// process; `awaiting` and `paused` runs stay as they are. Call it on the actix runtime.
    pub fn resume_all(&self) {
        let running: Vec<_> =
            lock(&self.shared.live).values().filter(|live| live.status() == RunStatus::Running).cloned().collect();
        if !running.is_empty() {
            info!("resuming {} workflow run(s) left running", running.len());
        }
        for live in running {
            Shared::start(&self.shared, live);
        }
    }

    /// Validates and records a run, and starts its first execution.
    pub async fn launch(&self, request: LaunchRequest) -> Result<Launched, RunError> {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::SeqCst) {
            return Err(RunError::ShuttingDown);
        }
        let args_json = to_json(&request.args);
        if args_json.len() > MAX_ARGS_BYTES {
            return Err(RunError::ArgsTooLarge(args_json.len()));
        }
        for (name, value) in [("scriptName", &request.script_name), ("idempotencyKey", &request.idempotency_key)] {
            if value.as_ref().is_some_and(|v| v.is_empty() || v.chars().count() > MAX_NAME_CHARS) {
                return Err(RunError::InvalidRequest(format!("{name} must be 1 to {MAX_NAME_CHARS} characters")));
            }
        }
        let given = [request.workflow_id.is_some(), request.source.is_some(), request.flow.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(RunError::InvalidRequest("give one of workflowId, source or flow".into()));
        }
        let mut flow = None;
        let (workflow_id, interpreter, source, default_name) = match (&request.workflow_id, &request.source) {
            (None, None) => match &request.flow {
                Some(name) => {
                    let (name, file) = find_flow(&shared.config.workflows.flows_dir, name).await?;
                    let source = blocking(move || std::fs::read_to_string(&file))
                        .await?
                        .map_err(|e| RunError::Io(format!("cannot read flow {name}: {e}")))?;
                    flow = Some(name.clone());
                    (None, None, source, name)
                }
                None => {
                    return Err(RunError::InvalidRequest(
                        "workflowId (or source with interpreter, or flow) is required".into(),
                    ))
                }
            },
            (Some(_), Some(_)) => unreachable_pair()?,
            (Some(id), None) => {
                let script =
                    shared.config.workflow(id).cloned().ok_or_else(|| RunError::WorkflowNotFound(id.clone()))?;
                let source = read_source(&script).await?;
                (Some(id.clone()), None, source, id.clone())
            }
            (None, Some(source)) => {
                let interpreter = self.check_interpreter(request.interpreter.as_deref())?;
                if source.len() > MAX_SOURCE_BYTES {
                    return Err(RunError::InvalidRequest(format!("source is over {MAX_SOURCE_BYTES} bytes")));
                }
                let name = format!("inline-{interpreter}");
                (None, Some(interpreter), source.clone(), name)
            }
        };
        if let Some(first) = lint::lint(&source).first() {
            return Err(RunError::LabelLint(first.to_string()));
        }
        let source_sha256 = sha256_hex(source.as_bytes());
        let request_sha256 = sha256_hex(
            to_json(&json!({
                "workflowId": workflow_id,
                "interpreter": interpreter,
                "flow": flow,
                "sourceSha256": source_sha256,
                "args": request.args,
            }))
            .as_bytes(),
        );
        if let Some(key) = &request.idempotency_key {
            if let Some(existing) = self.by_key(key).await? {
                if existing.request_sha256 != request_sha256 {
                    return Err(RunError::IdempotencyConflict(key.clone(), existing.id));
                }
                return Ok(Launched { run: existing, deduplicated: true });
            }
        }
        let now = now_ms();
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let row = RunRow {
            script_name: request.script_name.clone().unwrap_or(default_name),
            workflow_id,
            interpreter,
            flow,
            args: args_json,
            source,
            source_sha256,
            idempotency_key: request.idempotency_key.clone(),
            request_sha256,
            ..fresh_run(format!("run_{now}_{seq}"), now)
        };
        match shared.store.writer().write(WriteOp::InsertRun(Box::new(row.clone()))).await {
            Ok(()) => {}
            // Two launches with one key raced: the unique key let one in; answer with it.
            Err(e) => {
                if let Some(key) = &request.idempotency_key {
                    if let Some(existing) = self.by_key(key).await? {
                        if existing.request_sha256 != row.request_sha256 {
                            return Err(RunError::IdempotencyConflict(key.clone(), existing.id));
                        }
                        return Ok(Launched { run: existing, deduplicated: true });
                    }
                }
                return Err(e.into());
            }
        }
        let live = LiveRun::new(row);
        lock(&shared.live).insert(live.snapshot().id, Arc::clone(&live));
        Shared::start(shared, Arc::clone(&live));
        Ok(Launched { run: live.snapshot(), deduplicated: false })
    }

    fn check_interpreter(&self, name: Option<&str>) -> Result<String, RunError> {
        let interpreters = &self.shared.config.workflows.interpreters;
        if interpreters.is_empty() {
            return Err(RunError::InlineDisabled);
        }
        let Some(name) = name else {
            return Err(RunError::InvalidRequest("interpreter is required with source".into()));
        };
        if !interpreters.contains_key(name) {
            let allowed = interpreters.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(RunError::UnknownInterpreter(name.to_string(), allowed));
        }
        Ok(name.to_string())
    }

    async fn by_key(&self, key: &str) -> Result<Option<RunRow>, RunError> {
        let (store, key) = (self.shared.store.clone(), key.to_string());
        let row = blocking(move || store.run_by_idempotency_key(&key)).await??;
        Ok(row.map(|row| self.current(row)))
    }

    /// The in-memory state of a live run, else the stored row.
    fn current(&self, row: RunRow) -> RunRow {
        self.shared.live_run(&row.id).map_or(row, |live| live.snapshot())
    }

    /// The run with this id.
    pub async fn get(&self, id: &str) -> Result<RunRow, RunError> {
        if let Some(live) = self.shared.live_run(id) {
            return Ok(live.snapshot());
        }
        let (store, key) = (self.shared.store.clone(), id.to_string());
        let row = blocking(move || store.get_run(&key)).await??;
        row.ok_or_else(|| RunError::RunNotFound(id.to_string()))
    }

    /// The run and its journal.
    pub async fn get_with_journal(&self, id: &str) -> Result<(RunRow, Vec<StepRow>), RunError> {
        let run = self.get(id).await?;
        let (store, key) = (self.shared.store.clone(), id.to_string());
        let journal = blocking(move || store.journal(&key)).await??;
        Ok((run, journal))
    }

    /// A page of runs, newest first, and how many match.
    pub async fn list(&self, filter: RunFilter) -> Result<(Vec<RunRow>, i64), RunError> {
        let store = self.shared.store.clone();
        let (rows, total) = blocking(move || store.list_runs(&filter)).await??;
        Ok((rows.into_iter().map(|row| self.current(row)).collect(), total))
    }

    /// Waits until the run is terminal and returns it.
    pub async fn wait_terminal(&self, id: &str) -> Result<RunRow, RunError> {
        if let Some(live) = self.shared.live_run(id) {
            let mut rx = live.changed.subscribe();
            while !live.status().is_terminal() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
        self.get(id).await
    }

    /// Cancels a run: its process gets SIGTERM (SIGKILL after the grace) and the jobs its
    /// script steps started are canceled. A terminal run is returned unchanged.
    pub async fn cancel(&self, id: &str) -> Result<RunRow, RunError> {
        let Some(live) = self.shared.live_run(id) else { return self.get(id).await };
        self.shared.cancel_jobs(&live).await;
        self.shared.stop(&live, Stop::Cancel).await;
        self.get(id).await
    }

    /// Pauses a running or awaiting run: its process is stopped; `resume` re-executes it.
    pub async fn pause(&self, id: &str) -> Result<RunRow, RunError> {
        let live = self.require_live(id, "paused").await?;
        match live.status() {
            RunStatus::Paused => {}
            RunStatus::Running | RunStatus::Awaiting => self.shared.stop(&live, Stop::Pause).await,
            other => return Err(self.state_error(id, other, "paused")),
        }
        self.get(id).await
    }

    /// Resumes a paused run: a new execution starts from the top, completed steps replay.
    pub async fn resume(&self, id: &str) -> Result<RunRow, RunError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(RunError::ShuttingDown);
        }
        let live = self.require_live(id, "resumed").await?;
        match self.shared.go_on(&live, RunStatus::Paused)? {
            Some(pending) => Shared::committed(&live, pending).await?,
            None => return Err(self.state_error(id, live.status(), "resumed")),
        }
        self.get(id).await
    }

    async fn require_live(&self, id: &str, verb: &str) -> Result<Arc<LiveRun>, RunError> {
        match self.shared.live_run(id) {
            Some(live) => Ok(live),
            None => {
                let run = self.get(id).await?;
                let status = RunStatus::parse(&run.status).unwrap_or(RunStatus::Failed);
                Err(self.state_error(id, status, verb))
            }
        }
    }

    fn state_error(&self, id: &str, status: RunStatus, verb: &str) -> RunError {
        RunError::InvalidState(format!("run {id} is {} and cannot be {verb}", status.as_str()))
    }

    /// A new run from an existing one: its journal is a copy of the original's completed
    /// entries before `from_step` (all of them without it), and it runs `source` if given.
    pub async fn fork(&self, id: &str, from_step: Option<String>, source: Option<String>) -> Result<RunRow, RunError> {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::SeqCst) {
            return Err(RunError::ShuttingDown);
        }
        let (original, journal) = self.get_with_journal(id).await?;
        let cut = match &from_step {
            Some(label) => journal
                .iter()
                .position(|s| &s.step_key == label)
                .ok_or_else(|| RunError::StepNotFound(format!("run {id} has no journal entry labelled {label:?}")))?,
            None => journal.len(),
        };
        let source = match source {
            Some(source) => {
                if source.len() > MAX_SOURCE_BYTES {
                    return Err(RunError::InvalidRequest(format!("source is over {MAX_SOURCE_BYTES} bytes")));
                }
                if let Some(first) = lint::lint(&source).first() {
                    return Err(RunError::LabelLint(first.to_string()));
                }
                source
            }
            None => original.source.clone(),
        };
        let now = now_ms();
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let run_id = format!("run_{now}_{seq}");
        let source_sha256 = sha256_hex(source.as_bytes());
        let row = RunRow {
            script_name: original.script_name.clone(),
            workflow_id: original.workflow_id.clone(),
            interpreter: original.interpreter.clone(),
            flow: original.flow.clone(),
            args: original.args.clone(),
            request_sha256: sha256_hex(format!("fork:{run_id}").as_bytes()),
            source,
            source_sha256,
            forked_from: Some(original.id.clone()),
            ..fresh_run(run_id.clone(), now)
        };
        let copied: Vec<StepRow> = journal[..cut]
            .iter()
            .filter(|s| s.status == step_status::COMPLETED)
            .map(|s| StepRow { run_id: run_id.clone(), ..s.clone() })
            .collect();
        let writer = shared.store.writer();
        let insert = writer.enqueue(WriteOp::InsertRun(Box::new(row.clone())))?;
        let steps = writer.enqueue(WriteOp::InsertSteps(copied))?;
        insert.wait().await?;
        steps.wait().await?;
        let live = LiveRun::new(row);
        lock(&shared.live).insert(run_id, Arc::clone(&live));
        Shared::start(shared, Arc::clone(&live));
        Ok(live.snapshot())
    }

    /// Decides a pending approval. The run continues (its process restarted if it was
    /// parked), and the step client exits 0 (approved) or 1 (denied).
    pub async fn approve(&self, id: &str, label: &str, decision: Decision) -> Result<RunRow, RunError> {
        let live = self.require_live(id, "approved").await?;
        let entry = self.shared.step(id, label).await?;
        let Some(entry) = entry.filter(|e| e.step_type == StepType::Approval.as_str()) else {
            return Err(RunError::StepNotFound(format!("run {id} has no approval step labelled {label:?}")));
        };
        if entry.status != step_status::STARTED {
            return Err(RunError::AlreadyDecided(label.to_string()));
        }
        let result = json!({
            "approved": decision.approved,
            "by": decision.by,
            "comment": decision.comment,
            "decidedAt": crate::time::iso(now_ms()),
        });
        let decided = to_json(&result);
        let stored = self.shared.finish_step(&live, entry, step_status::COMPLETED, Some(result), None).await?;
        // Another decision stored first wins (the journal keeps the first end of an entry).
        if stored.result.as_deref() != Some(decided.as_str()) {
            return Err(RunError::AlreadyDecided(label.to_string()));
        }
        // The step client may read the decision at once, and its execution end and settle the
        // run, on another thread: `wake` decides on the run as it is under its locks.
        if let Some(pending) = self.shared.wake(&live)? {
            Shared::committed(&live, pending).await?;
        }
        live.bump();
        self.get(id).await
    }

    /// A byte page of an execution's log (the latest execution unless `attempt` is given).
    pub async fn read_bytes(
        &self,
        id: &str,
        attempt: Option<i32>,
        stream: Stream,
        offset: u64,
        limit: u64,
    ) -> Result<BytePage, RunError> {
        let path = self.log_path(&self.get(id).await?, attempt, stream)?;
        let limit = limit.min(crate::jobs::MAX_BYTE_LIMIT);
        blocking(move || logs::read_bytes(&path, offset, limit))
            .await?
            .map_err(|e| RunError::Io(format!("reading run log: {e}")))
    }

    /// A line page of an execution's log.
    pub async fn read_lines(
        &self,
        id: &str,
        attempt: Option<i32>,
        stream: Stream,
        offset: u64,
        limit: u64,
    ) -> Result<LinePage, RunError> {
        let run = self.get(id).await?;
        let running = lock(&self.shared.live).contains_key(id) && attempt.map_or(true, |a| a == run.attempt);
        let path = self.log_path(&run, attempt, stream)?;
        let query = LineQuery {
            offset,
            limit: limit.min(crate::jobs::MAX_LINE_LIMIT),
            max_bytes: crate::jobs::MAX_LINE_PAGE_BYTES,
            complete_only: running,
            known_total: None,
        };
        blocking(move || logs::read_lines(&path, query))
            .await?
            .map_err(|e| RunError::Io(format!("reading run log: {e}")))
    }

    /// The log of one execution of `run` (the latest unless `attempt` is given).
    fn log_path(&self, run: &RunRow, attempt: Option<i32>, stream: Stream) -> Result<PathBuf, RunError> {
        let attempt = attempt.unwrap_or(run.attempt).max(1);
        if attempt > run.attempt.max(1) {
            return Err(RunError::InvalidRequest(format!("run {} has {} execution(s)", run.id, run.attempt)));
        }
        // The run id comes from the database, not from the request, so it is a plain name.
        Ok(run_dir(&self.shared.config, &run.id).join(format!("a{attempt}.{}.log", stream.as_str())))
    }

    // ---- the step client's side (internal routes, authorised by the run token) ----

    /// Checks a run token: it must be the token of the run's current execution.
    fn authorize(&self, id: &str, token: &str) -> Result<Arc<LiveRun>, RunError> {
        let hashed = sha256_hex(token.as_bytes());
        match self.shared.live_run(id) {
            Some(live) => {
                let expected = lock(&live.row).token_sha256.clone();
                if constant_time_eq::constant_time_eq(hashed.as_bytes(), expected.as_bytes()) {
                    Ok(live)
                } else {
                    Err(RunError::Forbidden(id.to_string()))
                }
            }
            None => Err(RunError::Forbidden(id.to_string())),
        }
    }

    /// Checks a run token before anything else of a request is read: `Forbidden` unless it is
    /// the token of the run's current execution (the HTTP layer calls it before it reads a
    /// body, so a foreign token is refused whatever the body holds).
    pub fn check_token(&self, id: &str, token: &str) -> Result<(), RunError> {
        self.authorize(id, token).map(drop)
    }

    /// Authorises and returns the run's state for a step client call; a run that is not
    /// executing (paused, terminal) takes no steps.
    fn authorize_active(&self, id: &str, token: &str) -> Result<Arc<LiveRun>, RunError> {
        let live = self.authorize(id, token)?;
        match live.status() {
            RunStatus::Running | RunStatus::Awaiting => {
                lock(&live.row).last_heartbeat_at = Some(now_ms());
                Ok(live)
            }
            other => Err(RunError::RunNotActive(id.to_string(), other.as_str().to_string())),
        }
    }

    /// One journal entry, for the step client.
    pub async fn get_step(&self, id: &str, token: &str, label: &str) -> Result<Option<StepRow>, RunError> {
        self.authorize(id, token)?;
        self.shared.step(id, label).await
    }

    /// Begins a step: replays a journaled one, checks divergence and the guardrails, and for
    /// server-side kinds (script, sleep, approval) journals the start.
    pub async fn begin_step(&self, id: &str, token: &str, request: StepRequest) -> Result<Begun, RunError> {
        let live = self.authorize_active(id, token)?;
        let requester = sha256_hex(token.as_bytes());
        check_label(&request.label)?;
        let entry = self.shared.step(id, &request.label).await?;
        let repeated = !lock(&live.journal).requested.insert(request.label.clone());
        if let Some(entry) = entry {
            check_divergence(&entry, &request)?;
            if repeated {
                self.shared
                    .warn(
                        &live,
                        format!(
                            "step label {:?} was requested twice in one execution; the first result was returned",
                            request.label
                        ),
                    )
                    .await?;
            }
            return self.shared.continue_step(&live, entry, &requester).await;
        }
        self.shared.reserve(&live, &request).await?;
        let now = now_ms();
        let started = |result: Option<Value>, job_id: Option<String>| StepRow {
            run_id: id.to_string(),
            step_key: request.label.clone(),
            seq: 0,
            step_type: request.step_type.as_str().to_string(),
            config: to_json(&request.config),
            status: step_status::STARTED.to_string(),
            result: result.map(|r| to_json(&r)),
            error: None,
            job_id,
            started_at: now,
            completed_at: None,
            duration_ms: None,
        };
        match request.step_type {
            StepType::Command | StepType::Value | StepType::Node => Ok(Begun::Execute),
            StepType::Sleep => {
                let ms = request.config.get("durationMs").and_then(Value::as_i64).unwrap_or(0).max(0);
                let row = started(Some(json!({ "wakeAt": crate::time::iso(now + ms), "wakeAtMs": now + ms })), None);
                let entry = self.shared.insert_step(&live, row).await?;
                self.shared.continue_step(&live, entry, &requester).await
            }
            StepType::Approval => {
                let entry = self.shared.insert_step(&live, started(None, None)).await?;
                self.shared.continue_step(&live, entry, &requester).await
            }
            StepType::Script => {
                // The entry names the job before the job exists, so a crash can never leave a
                // job the journal does not know of (which a replay would start again).
                let script_id = request.config.get("scriptId").and_then(Value::as_str).unwrap_or_default();
                // A bad request or a full queue journals nothing.
                let admission = self
                    .shared
                    .jobs
                    .validate(script_id, request.config.get("args"))
                    .and_then(|()| self.shared.jobs.admit())
                    .inspect_err(|_| {
                        lock(&live.journal).release(&request.label);
                    })?;
                let job_id = self.shared.jobs.new_job_id();
                let entry = self.shared.insert_step(&live, started(None, Some(job_id))).await?;
                self.shared.continue_script_step(&live, entry, Some(admission)).await
            }
        }
    }

    /// Records a step the client executed (or a started one it finished, like a sleep).
    pub async fn record_step(&self, id: &str, token: &str, record: StepRecord) -> Result<StepRow, RunError> {
        let live = self.authorize_active(id, token)?;
        check_label(&record.label)?;
        if record.status != step_status::COMPLETED && record.status != step_status::FAILED {
            return Err(RunError::InvalidRequest("status must be completed or failed".into()));
        }
        let result = record.result.as_ref().map(to_json);
        let size = result.as_ref().map_or(0, String::len) + record.error.as_ref().map_or(0, String::len);
        let max = self.shared.config.workflows.max_result_bytes;
        if size as u64 > max {
            let message = format!("SCRIPT_RUN_MAX_RESULT_BYTES exceeded ({size}/{max})");
            self.shared.abort(&live, message.clone()).await;
            return Err(RunError::LimitExceeded(message));
        }
        match self.shared.step(id, &record.label).await? {
            Some(existing) => {
                let request =
                    StepRequest { label: record.label.clone(), step_type: record.step_type, config: record.config };
                check_divergence(&existing, &request)?;
                if existing.status != step_status::STARTED {
                    return Ok(existing);
                }
                // A started entry (a sleep) that the client has finished.
                self.shared.finish_step(&live, existing, &record.status, record.result, record.error).await
            }
            None => {
                self.shared
                    .reserve(
                        &live,
                        &StepRequest { label: record.label.clone(), step_type: record.step_type, config: Value::Null },
                    )
                    .await?;
                let now = now_ms();
                let row = StepRow {
                    run_id: id.to_string(),
                    step_key: record.label,
                    seq: 0,
                    step_type: record.step_type.as_str().to_string(),
                    config: to_json(&record.config),
                    status: record.status,
                    result,
                    error: record.error,
                    job_id: None,
                    started_at: now - record.duration_ms.unwrap_or(0),
                    completed_at: Some(now),
                    duration_ms: record.duration_ms,
                };
                self.shared.insert_step(&live, row).await
            }
        }
    }

    /// Waits (at most `timeout`, capped at [`MAX_WAIT`]) until a started entry has ended,
    /// and returns it as it is then.
    pub async fn wait_step(&self, id: &str, token: &str, label: &str, timeout: Duration) -> Result<StepRow, RunError> {
        let live = self.authorize(id, token)?;
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        let mut rx = live.changed.subscribe();
        loop {
            let entry =
                self.shared.step(id, label).await?.ok_or_else(|| {
                    RunError::StepNotFound(format!("run {id} has no journal entry labelled {label:?}"))
                })?;
            if entry.status != step_status::STARTED || live.status().is_terminal() {
                return Ok(entry);
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return Ok(entry);
            }
        }
    }

    /// Records the run's progress.
    pub async fn progress(
        &self,
        id: &str,
        token: &str,
        current: i64,
        total: i64,
        message: Option<String>,
    ) -> Result<RunRow, RunError> {
        let live = self.authorize_active(id, token)?;
        self.shared
            .commit(&live, |row| {
                row.progress_current = Some(current);
                row.progress_total = Some(total);
                row.progress_message = message;
            })
            .await?;
        Ok(live.snapshot())
    }

    /// Stops taking runs and stops every execution; the runs stay `running` in the database
    /// and resume at the next start. Waits at most `bound`.
    pub async fn shutdown(&self, bound: Duration) {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        let live: Vec<_> = lock(&shared.live).values().cloned().collect();
        for run in &live {
            let control = run.request_stop(&lock(&run.exec), Stop::Shutdown);
            if let Some(control) = control {
                control.cancel();
            }
        }
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let notified = shared.ended.notified();
            if shared.executing.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                warn!("shutdown: workflow executions still running after {bound:?}");
                return;
            }
        }
    }
}

fn unreachable_pair() -> Result<(Option<String>, Option<String>, String, String), RunError> {
    Err(RunError::InvalidRequest("give one of workflowId, source or flow".into()))
}

/// Finds a flow by name among the folders of `flows_dir` (`<name>/flow.oo.yaml`). The name
/// from the request is only compared with the folder names listed, never joined to a path.
async fn find_flow(flows_dir: &std::path::Path, name: &str) -> Result<(String, PathBuf), RunError> {
    let wanted = name.trim_end_matches("/flow.oo.yaml").trim_end_matches('/').to_string();
    let dir = flows_dir.to_path_buf();
    let found = blocking(move || -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let file = e.path().join("flow.oo.yaml");
                file.is_file().then(|| (e.file_name().to_string_lossy().to_string(), file))
            })
            .collect()
    })
    .await?;
    match found.iter().find(|(n, _)| *n == wanted) {
        Some(hit) => Ok(hit.clone()),
        None => {
            let known: Vec<_> = found.iter().map(|(n, _)| n.as_str()).collect();
            Err(RunError::FlowNotFound(format!(
                "flow not found: {wanted:?} (flows in {}: {})",
                flows_dir.display(),
                known.join(", ")
            )))
        }
    }
}

/// A run row that has not executed yet; callers fill in what the run is.
fn fresh_run(id: String, now: i64) -> RunRow {
    RunRow {
        id,
        script_name: String::new(),
        workflow_id: None,
        interpreter: None,
        flow: None,
        status: RunStatus::Running.as_str().to_string(),
        args: "{}".to_string(),
        source: String::new(),
        source_sha256: String::new(),
        output: None,
        error: None,
        warnings: "[]".to_string(),
        idempotency_key: None,
        request_sha256: String::new(),
        token_sha256: String::new(),
        forked_from: None,
        pid: None,
        attempt: 0,
        progress_current: None,
        progress_total: None,
        progress_message: None,
        created_at: now,
        started_at: None,
        finished_at: None,
        last_heartbeat_at: None,
    }
}

fn check_label(label: &str) -> Result<(), RunError> {
    if label.is_empty() || label.chars().count() > MAX_NAME_CHARS || label.chars().any(char::is_control) {
        return Err(RunError::InvalidRequest(format!(
            "a step label must be 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

/// A journaled label requested as a different step fails, and the journal is not changed.
fn check_divergence(entry: &StepRow, request: &StepRequest) -> Result<(), RunError> {
    let recorded_config = parse_json(&entry.config);
    // A value step's config is what computed it, not what it is: it never diverges on that.
    let same_config = request.step_type == StepType::Value || recorded_config == request.config;
    if entry.step_type != request.step_type.as_str() || !same_config {
        return Err(RunError::StepDiverged(format!(
            "STEP_DIVERGED: step {:?} was journaled as {} {} but is now requested as {} {}",
            entry.step_key,
            entry.step_type,
            entry.config,
            request.step_type.as_str(),
            to_json(&request.config)
        )));
    }
    Ok(())
}

/// The folder holding every run's files.
fn runs_dir(config: &Config) -> PathBuf {
    config.runner.logs_dir.join("runs")
}

/// One run's folder: `source`, `args.json`, `a<N>.stdout.log`, `a<N>.stderr.log`.
fn run_dir(config: &Config, run_id: &str) -> PathBuf {
    runs_dir(config).join(run_id)
}

async fn read_source(script: &Script) -> Result<String, RunError> {
    let path = script.path.clone();
    let bytes = blocking(move || std::fs::read(&path))
        .await?
        .map_err(|e| RunError::Io(format!("cannot read workflow {}: {e}", script.path.display())))?;
    if bytes.len() > MAX_SOURCE_BYTES {
        return Err(RunError::InvalidRequest(format!(
            "workflow {} is over {MAX_SOURCE_BYTES} bytes",
            script.path.display()
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        RunError::InvalidRequest(format!(
            "workflow {} is not text; a run stores and pins its source, so wrap a binary in a script",
            script.path.display()
        ))
    })
}

impl Shared {
    fn live_run(&self, id: &str) -> Option<Arc<LiveRun>> {
        lock(&self.live).get(id).cloned()
    }

    async fn step(&self, id: &str, label: &str) -> Result<Option<StepRow>, RunError> {
        let (store, id, label) = (self.store.clone(), id.to_string(), label.to_string());
        Ok(blocking(move || store.get_step(&id, &label)).await??)
    }

    /// Changes the in-memory row and commits it (ordered under the row's lock).
    async fn commit(&self, live: &LiveRun, change: impl FnOnce(&mut RunRow)) -> Result<(), RunError> {
        let pending = {
            let mut row = lock(&live.row);
            change(&mut row);
            self.store.writer().enqueue(WriteOp::UpdateRun(Box::new(row.clone())))?
        };
        pending.wait().await?;
        live.bump();
        Ok(())
    }

    /// Changes the in-memory row if its status passes `when`, deciding and changing under
    /// the row's lock, and orders the write; `None` (nothing changed) otherwise. Status
    /// transitions that race with others (a decision, a cancel, an execution's end) use it
    /// so that none is decided on a status another thread has changed meanwhile.
    fn commit_if(
        &self,
        live: &LiveRun,
        when: impl FnOnce(RunStatus, &RunRow) -> bool,
        change: impl FnOnce(&mut RunRow),
    ) -> Result<Option<Pending>, RunError> {
        let mut row = lock(&live.row);
        if !when(RunStatus::parse(&row.status).unwrap_or(RunStatus::Failed), &row) {
            return Ok(None);
        }
        change(&mut row);
        Ok(Some(self.store.writer().enqueue(WriteOp::UpdateRun(Box::new(row.clone())))?))
    }

    async fn set_status(&self, live: &LiveRun, status: RunStatus, error: Option<String>) -> Result<(), RunError> {
        self.commit(live, status_change(status, error)).await
    }

    /// Waits for a write ordered by [`Shared::commit_if`] and tells the waiters.
    async fn committed(live: &LiveRun, pending: Pending) -> Result<(), RunError> {
        pending.wait().await?;
        live.bump();
        Ok(())
    }

    /// An `awaiting` run whose approval has been decided goes on (see [`Shared::go_on`]).
    fn wake(self: &Arc<Self>, live: &Arc<LiveRun>) -> Result<Option<Pending>, RunError> {
        self.go_on(live, RunStatus::Awaiting)
    }

    /// A run that is `from` (paused, or awaiting a decision that has landed) becomes
    /// `running`, with a new execution unless one is running (one being parked restarts when
    /// it has ended). Decided under the execution's lock, so an execution cannot end unseen
    /// in between; `None` if the run was not `from`.
    fn go_on(self: &Arc<Self>, live: &Arc<LiveRun>, from: RunStatus) -> Result<Option<Pending>, RunError> {
        let mut exec = lock(&live.exec);
        let pending = self.commit_if(live, |s, _| s == from, |r| r.status = RunStatus::Running.as_str().into())?;
        if pending.is_some() {
            Shared::start_locked(self, live, &mut exec);
        }
        Ok(pending)
    }

    async fn warn(&self, live: &LiveRun, warning: String) -> Result<(), RunError> {
        self.commit(live, |row| {
            let mut list: Vec<String> = serde_json::from_str(&row.warnings).unwrap_or_default();
            if !list.contains(&warning) {
                list.push(warning);
            }
            row.warnings = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
        })
        .await
    }

    /// Counts a new label against the guardrails before it executes; over a limit, the run is
    /// aborted and the step never runs.
    async fn reserve(&self, live: &Arc<LiveRun>, request: &StepRequest) -> Result<(), RunError> {
        let limits = &self.config.workflows;
        let exceeded = {
            let mut journal = lock(&live.journal);
            if journal.reserved.contains(&request.label) {
                None
            } else {
                let steps = journal.total + journal.reserved.len() as u64 + 1;
                if steps > limits.max_steps {
                    Some(format!("SCRIPT_RUN_MAX_STEPS exceeded ({steps}/{})", limits.max_steps))
                } else if request.step_type == StepType::Script
                    && journal.scripts + journal.reserved_scripts.len() as u64 + 1 > limits.max_script_steps
                {
                    let scripts = journal.scripts + journal.reserved_scripts.len() as u64 + 1;
                    Some(format!("SCRIPT_RUN_MAX_SCRIPT_STEPS exceeded ({scripts}/{})", limits.max_script_steps))
                } else {
                    journal.reserved.insert(request.label.clone());
                    if request.step_type == StepType::Script {
                        journal.reserved_scripts.insert(request.label.clone());
                    }
                    None
                }
            }
        };
        match exceeded {
            None => Ok(()),
            Some(message) => {
                self.abort(live, message.clone()).await;
                Err(RunError::LimitExceeded(message))
            }
        }
    }

    /// Inserts a journal entry (the first writer of a label wins) and returns the stored one.
    async fn insert_step(&self, live: &LiveRun, mut row: StepRow) -> Result<StepRow, RunError> {
        {
            let mut journal = lock(&live.journal);
            row.seq = journal.next_seq;
            journal.next_seq += 1;
        }
        let (id, label) = (row.run_id.clone(), row.step_key.clone());
        let is_script = row.step_type == StepType::Script.as_str();
        self.store.writer().write(WriteOp::InsertSteps(vec![row])).await?;
        {
            let mut journal = lock(&live.journal);
            if journal.release(&label) {
                journal.total += 1;
                if is_script {
                    journal.scripts += 1;
                }
            }
        }
        live.bump();
        self.step(&id, &label).await?.ok_or_else(|| RunError::Io("the journal entry vanished".into()))
    }

    /// What a step client gets for an existing entry: ended entries as they are; a started
    /// script step once its job has ended; a started approval puts the run in `awaiting`.
    ///
    /// `requester` is the sha256 of the run token of the step client asking: a request of an
    /// execution that has been replaced meanwhile must not make the new one `awaiting`.
    async fn continue_step(
        self: &Arc<Self>,
        live: &Arc<LiveRun>,
        entry: StepRow,
        requester: &str,
    ) -> Result<Begun, RunError> {
        if entry.status != step_status::STARTED {
            return Ok(Begun::Done(entry));
        }
        match StepType::parse(&entry.step_type) {
            Some(StepType::Script) => self.continue_script_step(live, entry, None).await,
            Some(StepType::Approval) => {
                let awaiting = self.commit_if(
                    live,
                    |s, row| s == RunStatus::Running && row.token_sha256 == requester,
                    |r| r.status = RunStatus::Awaiting.as_str().into(),
                )?;
                if let Some(pending) = awaiting {
                    Shared::committed(live, pending).await?;
                    self.schedule_park(live);
                }
                // A decision may have landed since `entry` was read, before the run was
                // awaiting (the approval then left its status alone): go on with it.
                let (id, label) = (entry.run_id.clone(), entry.step_key.clone());
                let now = self.step(&id, &label).await?.unwrap_or(entry);
                if now.status == step_status::STARTED {
                    return Ok(Begun::Resume(now));
                }
                if let Some(pending) = self.wake(live)? {
                    Shared::committed(live, pending).await?;
                }
                Ok(Begun::Done(now))
            }
            _ => Ok(Begun::Resume(entry)),
        }
    }

    /// A started script step: submits its job if it does not exist yet (its id was journaled
    /// first; a job missing from the database has never run, and the id, unique there, lets
    /// it be submitted once), then either journals the start (`wait: false`) or waits for it.
    async fn continue_script_step(
        &self,
        live: &Arc<LiveRun>,
        entry: StepRow,
        admission: Option<Admission>,
    ) -> Result<Begun, RunError> {
        let Some(job_id) = entry.job_id.clone() else {
            return Err(RunError::Io(format!("script step {:?} has no job", entry.step_key)));
        };
        let config = parse_json(&entry.config);
        let waits = waits_for_job(&config);
        if waits {
            // Known to the run before it exists: a cancel from now on cancels it too.
            lock(&live.jobs).insert(job_id.clone());
        }
        let job = match self.jobs.get(&job_id).await {
            Err(JobError::JobNotFound(_)) => {
                let ended = |live: &LiveRun| live.status().is_terminal().then(|| live.status());
                if let Some(status) = ended(live) {
                    return Err(RunError::RunNotActive(entry.run_id, status.as_str().to_string()));
                }
                let script_id = config.get("scriptId").and_then(Value::as_str).unwrap_or_default();
                let args = config.get("args");
                let job =
                    match self.jobs.submit_as(admission, Some(job_id.clone()), script_id, args, Some("async")).await {
                        Ok(submission) => submission.job,
                        // Another request for this step submitted it meanwhile (the id is unique).
                        Err(e) => self.jobs.get(&job_id).await.map_err(|_| e)?,
                    };
                if waits && ended(live).is_some() {
                    // The run ended while its job was being recorded: nobody waits for it.
                    let _ = self.jobs.cancel(&job_id).await;
                }
                job
            }
            found => found?,
        };
        if waits {
            return self.finish_script_step(live, entry, job_id).await.map(Begun::Done);
        }
        // Start only: the job id is the result (a durable flow's async run node).
        let result = json!({ "jobId": job.id, "status": job.status.as_str() });
        self.finish_step(live, entry, step_status::COMPLETED, Some(result), None).await.map(Begun::Done)
    }

    /// Journals the end of a started entry and returns the entry as stored.
    async fn finish_step(
        &self,
        live: &LiveRun,
        entry: StepRow,
        status: &str,
        result: Option<Value>,
        error: Option<String>,
    ) -> Result<StepRow, RunError> {
        let now = now_ms();
        let finished = StepRow {
            status: status.to_string(),
            result: result.as_ref().map(to_json),
            error,
            completed_at: Some(now),
            duration_ms: Some(now - entry.started_at),
            ..entry
        };
        let (id, label) = (finished.run_id.clone(), finished.step_key.clone());
        self.store.writer().write(WriteOp::FinishStep(Box::new(finished))).await?;
        live.bump();
        self.step(&id, &label).await?.ok_or_else(|| RunError::Io("the journal entry vanished".into()))
    }

    /// Waits for a script step's job (the same job on every replay: never a second one) and
    /// journals its outcome.
    async fn finish_script_step(
        &self,
        live: &Arc<LiveRun>,
        entry: StepRow,
        job_id: String,
    ) -> Result<StepRow, RunError> {
        let job = self.jobs.wait(&job_id).await?;
        lock(&live.jobs).remove(&job_id);
        let stdout = self.jobs.stream_text(&job, Stream::Stdout).await?;
        let stderr = self.jobs.stream_text(&job, Stream::Stderr).await?;
        let succeeded = job.status == crate::jobs::model::JobStatus::Succeeded;
        let result = json!({
            "jobId": job.id,
            "status": job.status.as_str(),
            "exitCode": job.code,
            "stdout": stdout,
            "stderr": stderr,
        });
        let error = (!succeeded).then(|| match job.code {
            Some(code) if code >= 0 => format!("job {} {} with exit code {code}", job.id, job.status.as_str()),
            _ => format!("job {} {}", job.id, job.status.as_str()),
        });
        let status = if succeeded { step_status::COMPLETED } else { step_status::FAILED };
        self.finish_step(live, entry, status, Some(result), error).await
    }

    /// After `parkAfterSec` of waiting, stops the process of an awaiting run; the decision
    /// restarts it.
    fn schedule_park(&self, live: &Arc<LiveRun>) {
        let after = Duration::from_secs(self.config.workflows.park_after_sec);
        let attempt = lock(&live.row).attempt;
        let live = Arc::clone(live);
        tokio::task::spawn_local(async move {
            tokio::time::sleep(after).await;
            // Under the execution's lock: still awaiting in the execution that asked, and
            // nothing else stopping it.
            let control = {
                let exec = lock(&live.exec);
                let same = live.status() == RunStatus::Awaiting && lock(&live.row).attempt == attempt;
                if same {
                    live.request_stop(&exec, Stop::Park)
                } else {
                    None
                }
            };
            if let Some(control) = control {
                info!("run {}: parking its process while it awaits an approval", lock(&live.row).id);
                control.cancel();
            }
        });
    }

    /// Stops a run for a guardrail: `aborted_limit` with the message.
    async fn abort(&self, live: &Arc<LiveRun>, message: String) {
        warn!("run {}: {message}", lock(&live.row).id);
        self.cancel_jobs(live).await;
        self.stop(live, Stop::Limit(message)).await;
    }

    /// Cancels the jobs the run's script steps started (nobody is left to wait for them).
    async fn cancel_jobs(&self, live: &LiveRun) {
        let jobs: Vec<String> = lock(&live.jobs).iter().cloned().collect();
        for job in jobs {
            let _ = self.jobs.cancel(&job).await;
        }
    }

    /// Ends a run that has no process for a stop reason that ends it (a cancel, a limit, a
    /// pause), unless it has ended meanwhile: the change decided by [`Shared::end_idle_now`]
    /// is committed, and a run it made terminal is forgotten.
    async fn end_idle(&self, live: &LiveRun, decided: Option<IdleEnd>) {
        let Some((status, change)) = decided else { return };
        let committed = match change {
            Ok(Some(pending)) => Shared::committed(live, pending).await,
            Ok(None) => return,
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            error!("run {}: state not saved: {e}", lock(&live.row).id);
        }
        if status.is_terminal() {
            self.forget(live);
        }
    }

    /// The status change `why` makes to a run with no process, ordered under the execution's
    /// lock the caller holds; `None` for a reason that leaves the status alone (a park, a
    /// shutdown).
    fn end_idle_now(&self, live: &LiveRun, why: Stop) -> Option<IdleEnd> {
        why.ending().map(|(status, error)| {
            (status, self.commit_if(live, |s, _| !s.is_terminal(), status_change(status, error)))
        })
    }

    /// Stops the current execution for `why` and waits (bounded) until the run has settled;
    /// a run without a process settles at once.
    async fn stop(&self, live: &Arc<LiveRun>, why: Stop) {
        let mut rx = live.changed.subscribe();
        // Decided under the execution's lock: either the running execution is told why it
        // stops, or the run (with no process, and none starting) changes status here.
        let decided = {
            let exec = lock(&live.exec);
            match *exec {
                // (A weightier reason already set stops it all the same: wait for it.)
                Some(_) => Ok(live.request_stop(&exec, why)),
                None => Err(self.end_idle_now(live, why)),
            }
        };
        let control = match decided {
            Ok(control) => control,
            Err(idle) => return self.end_idle(live, idle).await,
        };
        if let Some(control) = control {
            control.cancel();
        }
        let bound = Duration::from_secs(self.config.runner.kill_grace_sec)
            + supervisor::DRAIN_AFTER_EXIT
            + Duration::from_secs(3);
        let _ = tokio::time::timeout(bound, async {
            while lock(&live.exec).is_some() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }

    fn forget(&self, live: &LiveRun) {
        let id = lock(&live.row).id.clone();
        lock(&self.live).remove(&id);
        live.bump();
    }

    /// Starts an execution of the run on this thread's runtime (an actix worker, or the main
    /// runtime at start), unless one is running or the run has ended meanwhile (a cancel or
    /// an execution that finished while the caller awaited its own commit).
    fn start(shared: &Arc<Shared>, live: Arc<LiveRun>) {
        let mut exec = lock(&live.exec);
        Shared::start_locked(shared, &live, &mut exec);
    }

    /// [`Shared::start`] with the execution's lock held by the caller, who decided on the
    /// run's status under it. While the server stops, nothing starts: a `running` run
    /// resumes at the next start.
    fn start_locked(shared: &Arc<Shared>, live: &Arc<LiveRun>, exec: &mut Option<Arc<Control>>) {
        if live.status().is_terminal() || shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if exec.is_some() {
            live.restart.store(true, Ordering::SeqCst);
            return;
        }
        *exec = Some(Control::new());
        *lock(&live.stop) = None;
        // Counted here, not when the execution has prepared its files, so that the answer
        // of the request that started it (a launch, a resume, a decision) shows it.
        lock(&live.row).attempt += 1;
        shared.executing.fetch_add(1, Ordering::SeqCst);
        tokio::task::spawn_local(Arc::clone(shared).execute(Arc::clone(live)));
    }

    /// One execution, from writing its files to its committed end.
    async fn execute(self: Arc<Shared>, live: Arc<LiveRun>) {
        let id = lock(&live.row).id.clone();
        let outcome = match self.prepare(&live).await {
            Ok(Some(launch)) => {
                let control = lock(&live.exec).clone().unwrap_or_default();
                Some(self.supervise(&live, &launch, &control).await)
            }
            Ok(None) => None,
            Err(e) => {
                error!("run {id}: cannot start an execution: {e}");
                let failed = self.set_status(&live, RunStatus::Failed, Some(format!("cannot start: {e}"))).await;
                if let Err(e) = failed {
                    error!("run {id}: state not saved: {e}");
                }
                None
            }
        };
        if let Some(outcome) = outcome {
            if let Err(e) = self.settle(&live, outcome).await {
                error!("run {id}: final state not saved: {e}");
            }
        }
        // The end and what follows it are decided under the execution's lock, against which
        // a decision, a resume or a cancel decide whether there is a process. A cancel, a
        // limit or a pause that came after `settle` had looked applies now (a run ended by one
        // is never restarted).
        let late = {
            let mut exec = lock(&live.exec);
            *exec = None;
            let late = lock(&live.stop).take().and_then(|why| self.end_idle_now(&live, why));
            if live.restart.swap(false, Ordering::SeqCst) && live.status() == RunStatus::Running {
                Shared::start_locked(&self, &live, &mut exec);
            }
            late
        };
        let ended = late.as_ref().is_some_and(|(status, _)| status.is_terminal());
        self.end_idle(&live, late).await;
        if ended {
            self.cancel_jobs(&live).await;
        }
        self.executing.fetch_sub(1, Ordering::SeqCst);
        self.ended.notify_waiters();
        if live.status().is_terminal() {
            self.forget(&live);
        } else {
            live.bump();
        }
    }

    /// Writes the run's files and its new execution state; `None` if the run must not run
    /// (its wall-clock limit is spent: it is aborted instead).
    async fn prepare(&self, live: &Arc<LiveRun>) -> Result<Option<Launch>, RunError> {
        let row = live.snapshot();
        let limits = &self.config.workflows;
        let now = now_ms();
        let first_start = row.started_at.unwrap_or(now);
        let spent = u64::try_from(now - first_start).unwrap_or(0);
        if spent >= limits.max_wall_ms {
            let message = format!("SCRIPT_RUN_MAX_WALL_MS exceeded ({spent}/{})", limits.max_wall_ms);
            self.set_status(live, RunStatus::AbortedLimit, Some(message)).await?;
            return Ok(None);
        }
        let dir = run_dir(&self.config, &row.id);
        let source_file = dir.join("source");
        let args_file = dir.join("args.json");
        let executable = row.workflow_id.is_some();
        let (source, args) = (row.source.clone(), row.args.clone());
        let (d, sf, af) = (dir.clone(), source_file.clone(), args_file.clone());
        blocking(move || -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(&d)?;
            std::fs::write(&sf, source)?;
            std::fs::set_permissions(&sf, std::fs::Permissions::from_mode(if executable { 0o700 } else { 0o600 }))?;
            std::fs::write(&af, args)
        })
        .await?
        .map_err(|e| RunError::Io(format!("cannot write the files of run {}: {e}", row.id)))?;
        let (total, scripts, max_seq) = {
            let (store, id) = (self.store.clone(), row.id.clone());
            blocking(move || store.journal_counts(&id, StepType::Script.as_str())).await??
        };
        *lock(&live.journal) = Journal {
            total: u64::try_from(total).unwrap_or(0),
            scripts: u64::try_from(scripts).unwrap_or(0),
            next_seq: max_seq + 1,
            ..Journal::default()
        };
        let token = new_token()?;
        let token_sha256 = sha256_hex(token.as_bytes());
        self.commit(live, |r| {
            r.token_sha256 = token_sha256;
            r.started_at.get_or_insert(now);
            r.last_heartbeat_at = Some(now);
            r.pid = None;
            r.status = RunStatus::Running.as_str().to_string();
        })
        .await?;
        let row = live.snapshot();
        let (program, mut program_args, cwd, mut env) = match &row.workflow_id {
            None if row.flow.is_some() => {
                let exe = self.exe.clone().ok_or_else(|| RunError::Io("cannot locate script-runner itself".into()))?;
                let root = self.config.workflows.flows_dir.parent().map_or_else(|| dir.clone(), PathBuf::from);
                let args = vec![
                    "flow".to_string(),
                    "run".to_string(),
                    source_file.display().to_string(),
                    "--journal".to_string(),
                    "--root".to_string(),
                    root.display().to_string(),
                ];
                (exe, args, dir.clone(), Vec::new())
            }
            Some(workflow_id) => {
                let script = self.config.workflow(workflow_id).cloned();
                let cwd = script.as_ref().map_or_else(|| dir.clone(), |s| s.cwd.clone());
                let env = script.map(|s| s.env.clone().into_iter().collect::<Vec<_>>()).unwrap_or_default();
                (source_file.clone(), Vec::new(), cwd, env)
            }
            None => {
                let name = row.interpreter.clone().unwrap_or_default();
                let argv =
                    self.config.workflows.interpreters.get(&name).cloned().ok_or_else(|| {
                        RunError::InvalidRequest(format!("interpreter {name:?} is no longer configured"))
                    })?;
                let mut argv = argv.into_iter();
                let program = PathBuf::from(argv.next().unwrap_or_default());
                (program, argv.collect(), dir.clone(), Vec::new())
            }
        };
        if row.workflow_id.is_none() && row.flow.is_none() {
            program_args.push(source_file.display().to_string());
        }
        env.push(("SCRIPT_RUNNER_URL".into(), self.url.get().cloned().unwrap_or_default()));
        env.push(("SCRIPT_RUN_ID".into(), row.id.clone()));
        env.push(("SCRIPT_RUN_TOKEN".into(), token));
        env.push(("SCRIPT_RUN_ARGS".into(), row.args.clone()));
        env.push(("SCRIPT_RUN_ATTEMPT".into(), row.attempt.to_string()));
        if let Some(exe) = &self.exe {
            env.push(("SCRIPT_RUNNER_BIN".into(), exe.display().to_string()));
            if let Some(bin_dir) = exe.parent() {
                let path = std::env::var("PATH").unwrap_or_default();
                env.push(("PATH".into(), format!("{}:{path}", bin_dir.display())));
            }
        }
        let remaining = limits.max_wall_ms - spent;
        Ok(Some(Launch {
            owner_id: row.id.clone(),
            deployment: self.jobs.deployment_marker(),
            program,
            args: program_args,
            cwd,
            env,
            stdin: Some(args_file),
            timeout: Some(Duration::from_millis(remaining)),
            kill_grace: Duration::from_secs(self.config.runner.kill_grace_sec),
            stdout_log: dir.join(format!("a{}.stdout.log", row.attempt)),
            stderr_log: dir.join(format!("a{}.stderr.log", row.attempt)),
            log_cap: self.config.runner.max_log_bytes_per_stream,
            preview_max: self.config.runner.preview_max_bytes,
        }))
    }

    /// Supervises the process, writing its pid and a heartbeat while it runs.
    async fn supervise(&self, live: &Arc<LiveRun>, launch: &Launch, control: &Control) -> Outcome {
        let mut events = Events { shared: self, live };
        let supervised = supervisor::supervise(launch, control, &mut events);
        tokio::pin!(supervised);
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                outcome = &mut supervised => return outcome,
                _ = tick.tick() => {
                    let pending = {
                        let mut row = lock(&live.row);
                        row.last_heartbeat_at = Some(now_ms());
                        self.store.writer().enqueue(WriteOp::UpdateRun(Box::new(row.clone())))
                    };
                    if let Err(e) = pending {
                        warn!("run {}: heartbeat not saved: {e}", launch.owner_id);
                    }
                }
            }
        }
    }

    /// Decides and commits what an ended execution means for the run.
    async fn settle(&self, live: &Arc<LiveRun>, outcome: Outcome) -> Result<(), RunError> {
        let stop = lock(&live.stop).take();
        let row = live.snapshot();
        // Output that could not be stored is said on the run (its output is read from the
        // stdout log), never lost without a word.
        for (name, summary) in [("stdout", &outcome.stdout), ("stderr", &outcome.stderr)] {
            if let Some(error) = &summary.error {
                self.warn(live, format!("execution {}: {name}: {error}{INCOMPLETE_LOG}", row.attempt)).await?;
            }
        }
        let stderr_tail = outcome.stderr.preview.trim_end().to_string();
        let (status, error): (RunStatus, Option<String>) = match (stop.map(Stop::ending), &outcome.ending) {
            (Some(Some(ending)), _) => ending,
            (Some(None), _) => {
                // A park (still awaiting: no process until the decision; if it already
                // landed, the approval set the run running and asked for a restart) or a
                // shutdown (stays running in the database: the next start resumes it).
                self.commit(live, |r| r.pid = None).await?;
                return Ok(());
            }
            (None, Ending::TimedOut) => {
                let spent = now_ms() - row.started_at.unwrap_or(row.created_at);
                let max = self.config.workflows.max_wall_ms;
                (RunStatus::AbortedLimit, Some(format!("SCRIPT_RUN_MAX_WALL_MS exceeded ({spent}/{max})")))
            }
            (None, Ending::Exited(0)) => {
                let output = to_json(&self.output(&row).await);
                *lock(&live.crashes) = 0;
                let complete = status_change(RunStatus::Completed, None);
                return self
                    .commit(live, |r| {
                        r.output = Some(output);
                        complete(r);
                    })
                    .await;
            }
            (None, Ending::Exited(code)) => {
                let tail = if stderr_tail.is_empty() { String::new() } else { format!(": {stderr_tail}") };
                (RunStatus::Failed, Some(format!("exit code {code}{tail}")))
            }
            (None, Ending::Signaled(signal)) => {
                let crashes = {
                    let mut crashes = lock(&live.crashes);
                    *crashes += 1;
                    *crashes
                };
                if crashes <= MAX_CRASH_RESTARTS && !self.stopping.load(Ordering::SeqCst) {
                    self.warn(
                        live,
                        format!(
                            "execution {} was killed by signal {signal}; restarted with replay ({crashes}/{MAX_CRASH_RESTARTS})",
                            row.attempt
                        ),
                    )
                    .await?;
                    self.commit(live, |r| r.pid = None).await?;
                    live.restart.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                (RunStatus::Failed, Some(format!("killed by signal {signal} {crashes} times in a row")))
            }
            (None, Ending::Canceled) => (RunStatus::Cancelled, Some("cancelled".into())),
            (None, Ending::SpawnFailed(message)) => (RunStatus::Failed, Some(message.clone())),
        };
        if status.is_terminal() && status != RunStatus::Completed {
            self.cancel_jobs(live).await;
        }
        self.set_status(live, status, error).await
    }

    /// The run's output: its stdout parsed as JSON when the whole trimmed stdout is JSON, else
    /// the trimmed text (at most [`MAX_OUTPUT_BYTES`]).
    async fn output(&self, row: &RunRow) -> Value {
        let path = run_dir(&self.config, &row.id).join(format!("a{}.stdout.log", row.attempt));
        let page = blocking(move || logs::read_bytes(&path, 0, MAX_OUTPUT_BYTES + 1)).await;
        let Ok(Ok(page)) = page else { return Value::Null };
        let cut = page.data.len() as u64 > MAX_OUTPUT_BYTES;
        let bytes = &page.data[..page.data.len().min(MAX_OUTPUT_BYTES as usize)];
        let text = logs::preview_text(bytes, false);
        let trimmed = text.trim();
        if !cut {
            if let Ok(value) = serde_json::from_str::<Value>(trimmed) {
                return value;
            }
        }
        Value::String(trimmed.to_string())
    }
}

/// Whether a script step's config waits for its job (all but a start-only `wait: false`).
fn waits_for_job(config: &Value) -> bool {
    config.get("wait") != Some(&Value::Bool(false))
}

/// The change of a row to `status` (with `error` when it is terminal).
fn status_change(status: RunStatus, error: Option<String>) -> impl FnOnce(&mut RunRow) {
    move |row| {
        row.status = status.as_str().to_string();
        if status.is_terminal() {
            row.finished_at = Some(now_ms());
            row.error = error;
        }
        // Only a running or awaiting run may have a process (a pause stops it).
        if status.is_terminal() || status == RunStatus::Paused {
            row.pid = None;
        }
    }
}

/// Keeps the run's pid current while its supervisor runs it.
struct Events<'a> {
    shared: &'a Shared,
    live: &'a LiveRun,
}

impl supervisor::Events for Events<'_> {
    fn spawned(&mut self, spawned: Spawned, _live: LiveStreams) {
        let mut row = lock(&self.live.row);
        row.pid = Some(spawned.pid);
        row.last_heartbeat_at = Some(spawned.started_at);
        if let Err(e) = self.shared.store.writer().enqueue(WriteOp::UpdateRun(Box::new(row.clone()))) {
            warn!("run {}: pid not saved: {e}", row.id);
        }
    }

    fn still_running(&mut self, _start_ticks: Option<u64>) {}
}
