//! Executions: starting one, preparing its files, supervising its process, settling its end,
//! and stopping it (cancel, pause, park, a guardrail, shutdown).
//!
//! This room decides what runs next. Every such decision is made under the run's one lock
//! ([`LiveRun::lock`]) by the rules of [`lifecycle`], and its write is ordered there and
//! awaited after the lock is released: a decision, a resume or a cancel and an execution's
//! end can never each decide on a state the other is changing. In particular:
//! - a new execution starts only under the lock, where `exec` says whether one runs (one that
//!   is ending is asked to restart the run instead, `restart`);
//! - a stop reason is set under the lock, ranked (a park or a shutdown never overrides a
//!   cancel or a pause); one that arrives while an execution settles applies at its end;
//! - a run with no process changes status for a stop reason under the lock, or not at all.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};
use serde_json::Value;

use super::error::RunError;
use super::journal::rules::Budget;
use super::launch::{run_dir, runs_dir, sha256_hex, to_json};
use super::lifecycle::{self, ExecutionEnd, PauseAction, Settlement, Stop};
use super::live::{LiveRun, State};
use super::model::{Run, RunStatus};
use super::sdk;
use super::{Engine, HEARTBEAT_EVERY, MAX_OUTPUT_BYTES};
use crate::db::Pending;
use crate::process::supervisor::{self, Control, Launch, LiveStreams, Outcome, Spawned};
use crate::process::{logs, sweep};
use crate::sync::blocking;
use crate::time::now_ms;

/// A status a run with no process takes for a stop reason, and its ordered write.
type IdleEnd = (RunStatus, Result<Pending, RunError>);

impl Engine {
    /// The node of the cluster that holds this unfinished run, when it is not this one.
    pub(super) fn held_elsewhere(&self, run: &Run) -> Option<String> {
        let node = run.node.as_ref()?;
        (!run.status.is_terminal() && Some(node) != self.node_id().as_ref()).then(|| node.clone())
    }

    /// The live run with this id; a run that is not live (ended, or unknown) cannot be
    /// `verb`ed: [`RunError::InvalidState`] (or [`RunError::RunNotFound`]).
    pub(super) async fn require_live(&self, id: &str, verb: &str) -> Result<Arc<LiveRun>, RunError> {
        match self.live.get(id) {
            // A run that has just ended is still held until its settlement forgets it: it is
            // as ended as one read from the database.
            Some(live) if live.status().is_terminal() => Err(state_error(id, live.status(), verb)),
            Some(live) => Ok(live),
            None => {
                let run = self.get(id).await?;
                match self.held_elsewhere(&run) {
                    // Held by another node of the cluster: that node decides about it.
                    Some(node) => Err(RunError::OnOtherNode { id: id.to_string(), node }),
                    None => Err(state_error(id, run.status, verb)),
                }
            }
        }
    }
}

/// A run in `status` cannot be `verb`ed.
fn state_error(id: &str, status: RunStatus, verb: &str) -> RunError {
    RunError::InvalidState(format!("run {id} is {} and cannot be {verb}", status.as_str()))
}

/// Starts an execution (with replay) of every run left `running` by the previous server
/// process; `awaiting` and `paused` runs stay as they are.
pub fn resume_all(engine: &Arc<Engine>) {
    let running: Vec<_> = engine.live.all().into_iter().filter(|live| live.status() == RunStatus::Running).collect();
    if !running.is_empty() {
        info!("resuming {} workflow run(s) left running", running.len());
    }
    for live in running {
        start(engine, &live);
    }
    // An awaiting run has no process to replay its event step and arm its time-out again.
    for live in engine.live.all().into_iter().filter(|live| live.status() == RunStatus::Awaiting) {
        super::journal::rearm_deadlines(engine, &live);
    }
}

/// Starts an execution of the run on this thread's runtime (an actix worker, or the main
/// runtime at start), unless one is running or the run has ended meanwhile.
pub fn start(engine: &Arc<Engine>, live: &Arc<LiveRun>) {
    let mut state = live.lock();
    start_locked(engine, live, &mut state);
}

/// Starts the first execution of a run just recorded with its first attempt counted (so the
/// event of its creation shows the run as the launch answers it). A run recorded while the
/// server stops keeps that count and starts at the next start, as the attempt after it.
pub fn start_first(engine: &Arc<Engine>, live: &Arc<LiveRun>) {
    let mut state = live.lock();
    start_counted_locked(engine, live, &mut state, true);
}

/// [`start`] under the run's lock, held by the caller who decided on the run's status under
/// it. While the server stops, nothing starts: a `running` run resumes at the next start.
fn start_locked(engine: &Arc<Engine>, live: &Arc<LiveRun>, state: &mut State) {
    start_counted_locked(engine, live, state, false);
}

/// Whether [`start_locked`] would start an execution now (rather than ask the one ending to
/// restart the run, or start nothing).
fn starts_now(engine: &Engine, state: &State) -> bool {
    !state.run.status.is_terminal() && !engine.stopping() && state.exec.is_none()
}

/// [`start_locked`]; `counted`: the caller has counted the new attempt already (in the change
/// whose event must show it, see [`go_on`]).
fn start_counted_locked(engine: &Arc<Engine>, live: &Arc<LiveRun>, state: &mut State, counted: bool) {
    if state.run.status.is_terminal() || engine.stopping() {
        return;
    }
    if state.exec.is_some() {
        state.restart = true;
        return;
    }
    state.exec = Some(Control::new());
    state.stop = None;
    // Counted here, not when the execution has prepared its files, so that the answer of the
    // request that started it (a launch, a resume, a decision) shows it.
    if !counted {
        state.run.attempt += 1;
    }
    engine.executing.fetch_add(1, Ordering::SeqCst);
    tokio::task::spawn_local(execute(Arc::clone(engine), Arc::clone(live)));
}

/// A run that is `from` (paused, or awaiting a decision that has landed) becomes `running`,
/// with a new execution unless one is running (one being parked restarts when it has ended).
/// Decided under the run's lock, so an execution cannot end unseen in between; `None` if the
/// run was not `from`. The caller awaits the returned write.
pub fn go_on(engine: &Arc<Engine>, live: &Arc<LiveRun>, from: RunStatus) -> Result<Option<Pending>, RunError> {
    let mut state = live.lock();
    if !lifecycle::goes_on(state.run.status, from) {
        return Ok(None);
    }
    // The new attempt is counted in the change, so that its event (`resumed`, `status`) shows
    // the run as the answer to the request does.
    let counted = starts_now(engine, &state);
    let pending = state.change(engine.writer(), |run| {
        run.status = RunStatus::Running;
        if counted {
            run.attempt += 1;
        }
    })?;
    start_counted_locked(engine, live, &mut state, counted);
    Ok(Some(pending))
}

/// An `awaiting` run whose approval has been decided goes on (see [`go_on`]).
pub fn wake(engine: &Arc<Engine>, live: &Arc<LiveRun>) -> Result<Option<Pending>, RunError> {
    go_on(engine, live, RunStatus::Awaiting)
}

/// Cancels a live run (a run that is not live is left as it is): its jobs, then its process.
pub async fn cancel(engine: &Arc<Engine>, id: &str) -> Result<(), RunError> {
    match engine.live.get(id) {
        Some(live) => {
            cancel_jobs(engine, &live).await;
            stop(engine, &live, Stop::Cancel).await;
        }
        None => {
            // Held by another node of the cluster: that node cancels it.
            let run = engine.get(id).await?;
            if let Some(node) = engine.held_elsewhere(&run) {
                return Err(RunError::OnOtherNode { id: id.to_string(), node });
            }
        }
    }
    Ok(())
}

/// Pauses a running or awaiting run (a paused one stays as it is).
pub async fn pause(engine: &Arc<Engine>, id: &str) -> Result<(), RunError> {
    let live = engine.require_live(id, "paused").await?;
    let status = live.status();
    match lifecycle::pause(status) {
        Some(PauseAction::Nothing) => Ok(()),
        Some(PauseAction::Stop) => {
            stop(engine, &live, Stop::Pause).await;
            Ok(())
        }
        None => Err(state_error(id, status, "paused")),
    }
}

/// Resumes a paused run with a new execution.
pub async fn resume(engine: &Arc<Engine>, id: &str) -> Result<(), RunError> {
    if engine.stopping() {
        return Err(RunError::ShuttingDown);
    }
    let live = engine.require_live(id, "resumed").await?;
    match go_on(engine, &live, RunStatus::Paused)? {
        Some(pending) => live.committed(pending).await,
        None => Err(state_error(id, live.status(), "resumed")),
    }
}

/// Stops taking runs and stops every execution; the runs stay `running` in the database and
/// resume at the next start. Waits at most `bound`.
pub async fn shutdown(engine: &Arc<Engine>, bound: Duration) {
    engine.stopping.store(true, Ordering::SeqCst);
    for live in engine.live.all() {
        let control = live.lock().request_stop(Stop::Shutdown);
        if let Some(control) = control {
            control.cancel();
        }
    }
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let notified = engine.ended.notified();
        if engine.executing.load(Ordering::SeqCst) == 0 {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            warn!("shutdown: workflow executions still running after {bound:?}");
            return;
        }
    }
}

/// Stops a run for a guardrail: `aborted_limit` with the message.
pub async fn abort(engine: &Arc<Engine>, live: &Arc<LiveRun>, message: String) {
    warn!("run {}: {message}", live.id);
    cancel_jobs(engine, live).await;
    stop(engine, live, Stop::Limit(message)).await;
}

/// Cancels the jobs the run's script steps started and waits for (nobody is left to wait).
async fn cancel_jobs(engine: &Engine, live: &LiveRun) {
    let jobs: Vec<String> = live.lock().jobs.iter().cloned().collect();
    for job in jobs {
        let _ = engine.jobs.cancel(&job).await;
    }
}

/// After `parkAfterSec` of waiting, stops the process of an awaiting run; the decision
/// restarts it.
pub fn schedule_park(engine: &Engine, live: &Arc<LiveRun>) {
    let after = Duration::from_secs(engine.config.workflows.park_after_sec);
    let attempt = live.lock().run.attempt;
    let live = Arc::clone(live);
    tokio::task::spawn_local(async move {
        tokio::time::sleep(after).await;
        // Under the run's lock: still awaiting in the execution that asked, and nothing
        // weightier stopping it.
        let control = {
            let mut state = live.lock();
            if state.run.status == RunStatus::Awaiting && state.run.attempt == attempt {
                state.request_stop(Stop::Park)
            } else {
                None
            }
        };
        if let Some(control) = control {
            info!("run {}: parking its process while it awaits an approval", live.id);
            control.cancel();
        }
    });
}

/// The status change `why` makes to a run with no process, ordered under the run's lock the
/// caller holds; `None` for a reason that leaves the status alone (a park, a shutdown) or a
/// run that has ended.
fn end_idle_locked(engine: &Engine, state: &mut State, why: Stop) -> Option<IdleEnd> {
    let (status, error) = lifecycle::idle_end(state.run.status, why)?;
    Some((status, state.change(engine.writer(), |run| lifecycle::change_status(run, status, error, now_ms()))))
}

/// Commits a change decided by [`end_idle_locked`]; a run it made terminal is forgotten.
async fn end_idle(engine: &Engine, live: &LiveRun, decided: Option<IdleEnd>) {
    let Some((status, change)) = decided else { return };
    let committed = match change {
        Ok(pending) => live.committed(pending).await,
        Err(e) => Err(e),
    };
    if let Err(e) = committed {
        error!("run {}: state not saved: {e}", live.id);
    }
    if status.is_terminal() {
        engine.live.forget(live);
    }
}

/// Stops the current execution for `why` and waits (bounded) until the run has settled; a
/// run without a process settles at once.
async fn stop(engine: &Arc<Engine>, live: &Arc<LiveRun>, why: Stop) {
    let mut rx = live.watch();
    // Decided under the run's lock: either the running execution is told why it stops, or
    // the run (with no process, and none starting) changes status here.
    let decided = {
        let mut state = live.lock();
        match state.exec {
            // (A weightier reason already set stops it all the same: wait for it.)
            Some(_) => Ok(state.request_stop(why)),
            None => Err(end_idle_locked(engine, &mut state, why)),
        }
    };
    let control = match decided {
        Ok(control) => control,
        Err(idle) => return end_idle(engine, live, idle).await,
    };
    if let Some(control) = control {
        control.cancel();
    }
    let bound = supervisor::stop_bound(engine.config.runner.kill_grace());
    let _ = tokio::time::timeout(bound, async {
        while live.lock().exec.is_some() {
            if rx.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
}

/// One execution, from writing its files to its committed end.
async fn execute(engine: Arc<Engine>, live: Arc<LiveRun>) {
    let id = live.id.clone();
    // A retried run waits out what is left of its delay first (no process meanwhile; a stop
    // asked for then ends the wait and applies below as for a run without a process).
    let (wait, control) = {
        let state = live.lock();
        (lifecycle::retry_wait(state.run.next_attempt_at, now_ms()), state.exec.clone().unwrap_or_default())
    };
    let mut stopped_waiting = false;
    if let Some(wait) = wait {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            () = control.canceled() => stopped_waiting = true,
        }
    }
    let prepared = if stopped_waiting { Ok(None) } else { prepare(&engine, &live).await };
    let outcome = match prepared {
        Ok(Some(launch)) => {
            let control = live.lock().exec.clone().unwrap_or_default();
            let outcome = supervise(&engine, &live, &launch, &control).await;
            stop_leftovers(&launch).await;
            Some(outcome)
        }
        Ok(None) => None,
        Err(e) => {
            error!("run {id}: cannot start an execution: {e}");
            let failed = set_status(&engine, &live, RunStatus::Failed, Some(format!("cannot start: {e}"))).await;
            if let Err(e) = failed {
                error!("run {id}: state not saved: {e}");
            }
            None
        }
    };
    if let Some(outcome) = outcome {
        if let Err(e) = settle(&engine, &live, outcome).await {
            error!("run {id}: final state not saved: {e}");
        }
    }
    // The end and what follows it are decided under the run's lock, against which a
    // decision, a resume or a cancel decide whether there is a process. A cancel, a limit or
    // a pause that came after `settle` had looked applies now (a run ended by one is never
    // restarted).
    let (late, ended) = {
        let mut state = live.lock();
        state.exec = None;
        let why = state.stop.take();
        let ended = why.as_ref().is_some_and(|why| matches!(why, Stop::Cancel | Stop::Limit(_)));
        let late = why.and_then(|why| end_idle_locked(&engine, &mut state, why));
        if std::mem::take(&mut state.restart) && state.run.status == RunStatus::Running {
            start_locked(&engine, &live, &mut state);
        }
        (late, ended)
    };
    end_idle(&engine, &live, late).await;
    if ended {
        cancel_jobs(&engine, &live).await;
    }
    engine.executing.fetch_sub(1, Ordering::SeqCst);
    engine.ended.notify_waiters();
    if live.status().is_terminal() {
        engine.live.forget(&live);
    } else {
        live.bump();
    }
}

/// Changes the run's status (with `error` when it is terminal) and commits it.
async fn set_status(engine: &Engine, live: &LiveRun, status: RunStatus, error: Option<String>) -> Result<(), RunError> {
    live.commit(engine.writer(), |run| lifecycle::change_status(run, status, error, now_ms())).await
}

/// A fresh run token (hex of 32 random bytes); its sha256 is what the run keeps.
fn new_token() -> Result<String, RunError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(RunError::Randomness)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the run's files and its new execution state; `None` if the run must not run (its
/// wall-clock limit is spent: it is aborted instead).
async fn prepare(engine: &Engine, live: &Arc<LiveRun>) -> Result<Option<Launch>, RunError> {
    let run = live.snapshot();
    let limits = &engine.config.workflows;
    let now = now_ms();
    let remaining = match lifecycle::wall_time_left(run.started_at.unwrap_or(now), now, limits.max_wall_ms) {
        Ok(remaining) => remaining,
        Err(message) => {
            set_status(engine, live, RunStatus::AbortedLimit, Some(message)).await?;
            return Ok(None);
        }
    };
    let dir = run_dir(&engine.config, &run.id);
    let interpreter = interpreter_of(engine, &run)?;
    // A source written for a step SDK (`main(args, ctx)`) runs through its loader, from a
    // copy named with its language's extension.
    let sdk_language = interpreter.as_deref().and_then(|argv| sdk::language(argv, &run.source));
    let source_file = match sdk_language {
        Some(language) => dir.join(format!("source.{}", language.extension())),
        None => dir.join("source"),
    };
    let args_file = dir.join("args.json");
    let output_file = dir.join(format!("a{}.output.json", run.attempt));
    let executable = run.workflow_id.is_some() && interpreter.is_none();
    let (source, args) = (run.source.clone(), to_json(&run.args));
    let (d, sf, af, of) = (dir.clone(), source_file.clone(), args_file.clone(), output_file.clone());
    let sdk_root = runs_dir(&engine.config);
    let sdk_dir = blocking(move || -> std::io::Result<Option<PathBuf>> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&d)?;
        std::fs::write(&sf, source)?;
        std::fs::set_permissions(&sf, std::fs::Permissions::from_mode(if executable { 0o700 } else { 0o600 }))?;
        std::fs::write(&af, args)?;
        // An output file of an earlier try of this execution number is not this one's.
        match std::fs::remove_file(&of) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        sdk_language.map(|_| sdk::install(&sdk_root)).transpose()
    })
    .await?
    .map_err(|e| RunError::file(format!("cannot write the files of run {}", run.id), e))?;
    let (total, scripts, max_seq) = {
        let (store, id) = (engine.store.clone(), run.id.clone());
        blocking(move || store.journal_counts(&id, super::model::StepType::Script.as_str())).await??
    };
    live.lock().budget = Budget {
        total: u64::try_from(total).unwrap_or(0),
        scripts: u64::try_from(scripts).unwrap_or(0),
        next_seq: max_seq + 1,
        ..Budget::default()
    };
    let token = new_token()?;
    let token_sha256 = sha256_hex(token.as_bytes());
    live.lock().execution_started_at = Some(now);
    live.commit(engine.writer(), |run| {
        run.token_sha256 = token_sha256;
        run.next_attempt_at = None;
        run.started_at.get_or_insert(now);
        run.last_heartbeat_at = Some(now);
        run.pid = None;
        run.status = RunStatus::Running;
    })
    .await?;
    let run = live.snapshot();
    let (program, program_args, cwd, mut env) = match (&run.workflow_id, &interpreter) {
        (None, _) if run.flow.is_some() => {
            let exe = engine.exe.clone().ok_or(RunError::NoOwnExecutable)?;
            let root = engine.config.workflows.flows_dir.parent().map_or_else(|| dir.clone(), PathBuf::from);
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
        (Some(_), None) => {
            let (cwd, env) = workflow_place(engine, &run, &dir);
            (source_file.clone(), Vec::new(), cwd, env)
        }
        (_, Some(interpreter)) => {
            let argv = match (sdk_language, &sdk_dir) {
                (Some(language), Some(sdk_dir)) => sdk::loader_argv(sdk_dir, language, interpreter, &source_file),
                _ => {
                    let mut argv = interpreter.clone();
                    argv.push(source_file.display().to_string());
                    argv
                }
            };
            let (cwd, env) = match run.workflow_id {
                Some(_) => workflow_place(engine, &run, &dir),
                None => (dir.clone(), Vec::new()),
            };
            let mut argv = argv.into_iter();
            (PathBuf::from(argv.next().unwrap_or_default()), argv.collect(), cwd, env)
        }
        (None, None) => return Err(RunError::InvalidRequest(format!("run {} names no workflow", run.id))),
    };
    env.push(("SCRIPT_RUN_OUTPUT".into(), output_file.display().to_string()));
    env.push(("SCRIPT_RUNNER_URL".into(), engine.url.get().cloned().unwrap_or_default()));
    env.push(("SCRIPT_RUN_ID".into(), run.id.clone()));
    env.push(("SCRIPT_RUN_TOKEN".into(), token));
    env.push(("SCRIPT_RUN_ARGS".into(), to_json(&run.args)));
    env.push(("SCRIPT_RUN_ATTEMPT".into(), run.attempt.to_string()));
    if let Some(exe) = &engine.exe {
        env.push(("SCRIPT_RUNNER_BIN".into(), exe.display().to_string()));
        if let Some(bin_dir) = exe.parent() {
            let path = std::env::var("PATH").unwrap_or_default();
            env.push(("PATH".into(), format!("{}:{path}", bin_dir.display())));
        }
    }
    Ok(Some(Launch {
        owner_id: run.id.clone(),
        deployment: engine.jobs.deployment_marker(),
        program,
        args: program_args,
        cwd,
        env,
        stdin: Some(args_file),
        timeout: Some(Duration::from_millis(remaining)),
        kill_grace: engine.config.runner.kill_grace(),
        stdout_log: dir.join(format!("a{}.stdout.log", run.attempt)),
        stderr_log: dir.join(format!("a{}.stderr.log", run.attempt)),
        log_cap: engine.config.runner.max_log_bytes_per_stream,
        preview_max: engine.config.runner.preview_max_bytes,
        // A run's log pages read its execution logs from files: they are always written.
        inline_small_output: false,
    }))
}

/// The interpreter argv a run's source is given to: an inline source's (from
/// `workflows.interpreters`), or a configured workflow's `interpreter`; `None` for a workflow
/// file executed itself, and for a flow.
fn interpreter_of(engine: &Engine, run: &Run) -> Result<Option<Vec<String>>, RunError> {
    match (&run.workflow_id, &run.interpreter) {
        (Some(id), _) => Ok(engine.config.workflow(id).and_then(|s| s.interpreter.clone())),
        (None, Some(name)) => engine
            .config
            .workflows
            .interpreters
            .get(name)
            .cloned()
            .map(Some)
            .ok_or_else(|| RunError::InvalidRequest(format!("interpreter {name:?} is no longer configured"))),
        (None, None) => Ok(None),
    }
}

/// A configured workflow's working directory and environment (its folder and its `env`).
fn workflow_place(engine: &Engine, run: &Run, dir: &Path) -> (PathBuf, Vec<(String, String)>) {
    let script = run.workflow_id.as_deref().and_then(|id| engine.config.workflow(id)).cloned();
    let cwd = script.as_ref().map_or_else(|| dir.to_path_buf(), |s| s.cwd.clone());
    let env = script.map(|s| s.env.clone().into_iter().collect::<Vec<_>>()).unwrap_or_default();
    (cwd, env)
}

/// Stops what the ended execution left in process groups of its own (its command steps'
/// commands: see [`crate::process::sweep`]) before the run goes on, so nothing of it outlives
/// it and a next execution never runs beside it.
async fn stop_leftovers(launch: &Launch) {
    let token = launch.env.iter().find(|(k, _)| k == sweep::EXECUTION_ENV).map(|(_, v)| v.clone());
    let Some(token) = token else { return };
    let (deployment, grace, run) = (launch.deployment.clone(), launch.kill_grace, launch.owner_id.clone());
    let stopped =
        tokio::task::spawn_blocking(move || sweep::stop_execution_leftovers(&deployment, &token, grace)).await;
    match stopped {
        Ok(0) => {}
        Ok(n) => info!("run {run}: stopped {n} process group(s) its execution left"),
        Err(e) => warn!("run {run}: cannot look for what its execution left: {e}"),
    }
}

/// Supervises the process, writing its pid and a heartbeat while it runs.
async fn supervise(engine: &Engine, live: &LiveRun, launch: &Launch, control: &Control) -> Outcome {
    let mut events = Events { engine, live };
    let supervised = supervisor::supervise(launch, control, &mut events);
    tokio::pin!(supervised);
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            outcome = &mut supervised => return outcome,
            _ = tick.tick() => {
                let pending = live.lock().change(engine.writer(), |run| run.last_heartbeat_at = Some(now_ms()));
                if let Err(e) = pending {
                    warn!("run {}: heartbeat not saved: {e}", launch.owner_id);
                }
            }
        }
    }
}

/// Decides (by [`lifecycle::settle`]) and commits what an ended execution means for the run.
async fn settle(engine: &Engine, live: &LiveRun, outcome: Outcome) -> Result<(), RunError> {
    let writer = engine.writer();
    let (stop, run) = {
        let mut state = live.lock();
        (state.stop.take(), state.run.clone())
    };
    // Output that could not be stored is said on the run (its output is read from the
    // stdout log), never lost without a word.
    for (name, summary) in [("stdout", &outcome.stdout), ("stderr", &outcome.stderr)] {
        if let Some(error) = &summary.error {
            let warning = format!("execution {}: {name}: {error}{}", run.attempt, super::INCOMPLETE_LOG);
            live.warn(writer, warning).await?;
        }
    }
    let crashes = {
        let mut state = live.lock();
        if stop.is_none() && matches!(outcome.ending, supervisor::Ending::Signaled(_)) {
            state.crashes += 1;
        }
        state.crashes
    };
    let end = ExecutionEnd {
        attempt: run.attempt,
        crashes,
        stopping: engine.stopping(),
        spent_ms: now_ms() - run.started_at.unwrap_or(run.created_at),
        max_wall_ms: engine.config.workflows.max_wall_ms,
        stderr_tail: outcome.stderr.preview.trim_end(),
    };
    let settlement = lifecycle::settle(stop, &outcome.ending, end);
    let now = now_ms();
    if let Some(next) = lifecycle::retry_at(run.retry, run.attempts.len(), &settlement, now) {
        let Settlement::End(_, error) = settlement else { return Ok(()) };
        return retry(engine, live, &run, Retried { error, ending: &outcome.ending, ended_at: now, next }).await;
    }
    match settlement {
        // A park (still awaiting: no process until the decision; if it already landed, the
        // approval set the run running and asked for a restart) or a shutdown (stays running
        // in the database: the next start resumes it).
        Settlement::Keep => live.commit(writer, |run| run.pid = None).await,
        Settlement::Complete => {
            let output = output(engine, &run).await;
            live.lock().crashes = 0;
            live.commit(writer, |run| {
                run.output = Some(output);
                lifecycle::change_status(run, RunStatus::Completed, None, now_ms());
            })
            .await
        }
        Settlement::Restart(warning) => {
            live.warn(writer, warning).await?;
            live.commit(writer, |run| run.pid = None).await?;
            live.lock().restart = true;
            Ok(())
        }
        Settlement::End(status, error) => {
            if status.is_terminal() && status != RunStatus::Completed {
                cancel_jobs(engine, live).await;
            }
            set_status(engine, live, status, error).await
        }
    }
}

/// A failed execution a retry re-runs: how it ended, and when the next one starts.
struct Retried<'a> {
    /// The error the run would have ended with.
    error: Option<String>,
    /// How its process ended.
    ending: &'a supervisor::Ending,
    /// When its end was settled (Unix ms): the delay counts from here.
    ended_at: i64,
    /// When the next execution starts (Unix ms).
    next: i64,
}

/// Re-executes a run whose execution failed (its retry option allows another): its failed
/// journal entries move into its attempts with the execution's end, in one transaction with
/// the `retrying` event; the run stays `running` and the next execution starts at `next`
/// (replaying the completed steps, running the failed ones again).
async fn retry(engine: &Engine, live: &LiveRun, run: &Run, retried: Retried<'_>) -> Result<(), RunError> {
    let Retried { error, ending, ended_at, next } = retried;
    let journal = {
        let (store, id) = (engine.store.clone(), run.id.clone());
        blocking(move || store.journal(&id)).await??
    };
    let failed: Vec<_> = journal.into_iter().filter(|e| e.status == super::model::StepStatus::Failed).collect();
    let dropped = failed.iter().map(|e| e.label.clone()).collect();
    info!(
        "run {}: execution {} failed; retrying at {} ({})",
        run.id,
        run.attempt,
        crate::time::iso(next),
        error.as_deref().unwrap_or("")
    );
    let pending = {
        let mut state = live.lock();
        let started = state.execution_started_at.take().unwrap_or(ended_at);
        state.crashes = 0;
        let attempt = super::view::attempt_view(run.attempt, started, ended_at, error, ending, failed);
        let pending = state.retry(engine.writer(), dropped, |run| {
            run.attempts.push(attempt);
            run.next_attempt_at = Some(next);
            run.pid = None;
        })?;
        // The execution's end (in `execute`) starts the next one, which waits until `next`.
        state.restart = true;
        pending
    };
    live.committed(pending).await
}

/// The run's output: what the execution wrote to its `$SCRIPT_RUN_OUTPUT` file (a step SDK's
/// loader writes `main`'s return value there), else its stdout; parsed as JSON when the whole
/// trimmed text is JSON, else the trimmed text (at most [`MAX_OUTPUT_BYTES`]).
async fn output(engine: &Engine, run: &Run) -> Value {
    let dir = run_dir(&engine.config, &run.id);
    let written = dir.join(format!("a{}.output.json", run.attempt));
    let stdout = dir.join(format!("a{}.stdout.log", run.attempt));
    let page = blocking(move || {
        let from = if written.is_file() { written } else { stdout };
        logs::read_bytes(&from, 0, MAX_OUTPUT_BYTES + 1)
    })
    .await;
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

/// Keeps the run's pid current while its supervisor runs it.
struct Events<'a> {
    engine: &'a Engine,
    live: &'a LiveRun,
}

impl supervisor::Events for Events<'_> {
    fn spawned(&mut self, spawned: Spawned, _live: LiveStreams) {
        let mut state = self.live.lock();
        let pending = state.change(self.engine.writer(), |run| {
            run.pid = Some(spawned.pid);
            run.last_heartbeat_at = Some(spawned.started_at);
        });
        crate::events::hub().run(crate::events::Phase::Started, &state.run);
        drop(state);
        if let Err(e) = pending {
            warn!("run {}: pid not saved: {e}", self.live.id);
        }
    }

    fn still_running(&mut self, _start_ticks: Option<u64>) {}
}
