//! Runs entering the engine: those a previous server left unfinished (recovered at start),
//! new ones (a launch of a workflow, an inline source or a flow, idempotent by key) and forks
//! of another run's journal. Also where a run's files live, and reading its logs.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::RunError;
use super::journal::rules;
use super::live::LiveRun;
use super::model::{LaunchRequest, Launched, Run};
use super::{execution, lifecycle, lint, Engine, MAX_ARGS_BYTES, MAX_NAME_CHARS, MAX_SOURCE_BYTES};
use crate::config::{Config, Script};
use crate::db::{OnOutage, Store, WriteOp};
use crate::process::logs::{self, BytePage, LinePage, LineQuery, Stream};
use crate::sync::blocking;
use crate::time::now_ms;

/// sha256 as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// A value as compact JSON text.
pub fn to_json(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

/// The folder holding every run's files.
pub fn runs_dir(config: &Config) -> PathBuf {
    config.runner.logs_dir.join("runs")
}

/// One run's folder: `source`, `args.json`, `a<N>.stdout.log`, `a<N>.stderr.log`.
pub fn run_dir(config: &Config, run_id: &str) -> PathBuf {
    runs_dir(config).join(run_id)
}

/// The log of one execution of `run` (the latest unless `attempt` is given).
pub fn log_path(config: &Config, run: &Run, attempt: Option<i32>, stream: Stream) -> Result<PathBuf, RunError> {
    let attempt = attempt.unwrap_or(run.attempt).max(1);
    if attempt > run.attempt.max(1) {
        return Err(RunError::InvalidRequest(format!("run {} has {} execution(s)", run.id, run.attempt)));
    }
    // The run id comes from the database, not from the request, so it is a plain name.
    Ok(run_dir(config, &run.id).join(format!("a{attempt}.{}.log", stream.as_str())))
}

impl Engine {
    /// A new run id, `run_<ms>_<seq>` (unique: the sequence continues the stored ones).
    fn new_run_id(&self, now: i64) -> String {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        format!("run_{now}_{seq}")
    }

    /// Registers a recorded run (recorded with its first attempt counted) and starts its first
    /// execution.
    fn go_live(self: &Arc<Self>, run: Run) -> Arc<LiveRun> {
        let live = LiveRun::new(run);
        self.live.insert(Arc::clone(&live));
        execution::start_first(self, &live);
        live
    }
}

/// The runs the previous server left unfinished, made live again (by
/// [`lifecycle::recover`]; a run it changed is written first). None is started here.
pub fn recover(store: &Store) -> Result<Vec<Arc<LiveRun>>, RunError> {
    adopt(store, store.unfinished_runs()?)
}

/// Unfinished runs this server now holds (left by its previous run, or taken over in a
/// cluster from a node that is gone), made live again as [`recover`] does. Blocking.
pub fn adopt(store: &Store, runs: Vec<Run>) -> Result<Vec<Arc<LiveRun>>, RunError> {
    let mut live = Vec::new();
    for mut run in runs {
        let journal = store.journal(&run.id)?;
        let before = super::events::Before::of(&run);
        let recovered = lifecycle::recover(&mut run, &journal);
        if recovered.changed {
            store.writer().write_blocking(super::events::update_run(&before, &run))?;
        }
        let entry = LiveRun::new(run);
        entry.lock().jobs.extend(recovered.jobs);
        live.push(entry);
    }
    Ok(live)
}

/// Validates and records a run, and starts its first execution.
pub async fn launch(engine: &Arc<Engine>, request: LaunchRequest) -> Result<Launched, RunError> {
    if engine.stopping() {
        return Err(RunError::ShuttingDown);
    }
    let args_json = to_json(&request.args);
    if args_json.len() > MAX_ARGS_BYTES {
        return Err(RunError::ArgsTooLarge(args_json.len()));
    }
    for (name, value) in [("scriptName", &request.script_name), ("idempotencyKey", &request.idempotency_key)] {
        if value.as_deref().is_some_and(|v| !super::fits_name(v)) {
            return Err(RunError::InvalidRequest(format!("{name} must be 1 to {MAX_NAME_CHARS} characters")));
        }
    }
    let one_of = || RunError::InvalidRequest("give one of workflowId, source or flow".into());
    let given = [request.workflow_id.is_some(), request.source.is_some(), request.flow.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(one_of());
    }
    let mut flow = None;
    let (workflow_id, interpreter, source, default_name) = match (&request.workflow_id, &request.source) {
        (None, None) => match &request.flow {
            Some(name) => {
                let (name, file) = find_flow(&engine.config.workflows.flows_dir, name).await?;
                let source = blocking(move || std::fs::read_to_string(&file))
                    .await?
                    .map_err(|e| RunError::file(format!("cannot read flow {name}"), e))?;
                flow = Some(name.clone());
                (None, None, source, name)
            }
            None => {
                return Err(RunError::InvalidRequest(
                    "workflowId (or source with interpreter, or flow) is required".into(),
                ))
            }
        },
        (Some(_), Some(_)) => return Err(one_of()),
        (Some(id), None) => {
            let script = engine.config.workflow(id).cloned().ok_or_else(|| RunError::WorkflowNotFound(id.clone()))?;
            let source = read_source(&script).await?;
            (Some(id.clone()), None, source, id.clone())
        }
        (None, Some(source)) => {
            let interpreter = check_interpreter(&engine.config, request.interpreter.as_deref())?;
            (None, Some(interpreter.clone()), check_source(source.clone())?, format!("inline-{interpreter}"))
        }
    };
    if let Some(first) = lint::lint(&source).first() {
        return Err(RunError::LabelLint(first.to_string()));
    }
    let source_sha256 = sha256_hex(source.as_bytes());
    let mut launched = json!({
        "workflowId": workflow_id,
        "interpreter": interpreter,
        "flow": flow,
        "sourceSha256": source_sha256,
        "args": request.args,
    });
    // A launch with another retry option is another launch; without one the hash is what it
    // always was (a key used before the option existed still matches).
    if let (Some(retry), Some(fields)) = (request.retry, launched.as_object_mut()) {
        fields.insert("retry".into(), json!({"attempts": retry.attempts, "delayMs": retry.delay_ms}));
    }
    let request_sha256 = sha256_hex(to_json(&launched).as_bytes());
    if let Some(launched) = by_key(engine, request.idempotency_key.as_deref(), &request_sha256).await? {
        return Ok(launched);
    }
    // As for a job (see `JobManager::submit`): the database is asked first unless it answered
    // within the last second, so a run is neither refused by a writer lane that has not yet
    // reconnected to a database that is back, nor launched while it is away.
    if !engine.store.recently_available() {
        let store = engine.store.clone();
        blocking(move || store.probe()).await??;
    }
    let now = now_ms();
    let run = Run {
        script_name: request.script_name.clone().unwrap_or(default_name),
        workflow_id,
        interpreter,
        flow,
        args: request.args,
        source,
        source_sha256,
        idempotency_key: request.idempotency_key.clone(),
        request_sha256,
        node: engine.node_id(),
        // Its first execution, counted now so that its first event shows it (see `go_live`).
        attempt: 1,
        retry: request.retry,
        ..Run::fresh(engine.new_run_id(now), now)
    };
    // Refused at once while the database is lost (503): the run has not started.
    let insert = match &request.callback {
        Some(target) => super::events::insert_run_with_callback(&run, &target.for_run(&run.id)),
        None => super::events::insert_run(&run),
    };
    if let Err(e) = engine.writer().write_or_refuse(insert).await {
        // Two launches with one key raced: the unique key let one in; answer with it.
        return match by_key(engine, request.idempotency_key.as_deref(), &run.request_sha256).await? {
            Some(launched) => Ok(launched),
            None => Err(e.into()),
        };
    }
    crate::events::hub().run(crate::events::Phase::Created, &run);
    let live = engine.go_live(run);
    Ok(Launched { run: live.snapshot(), deduplicated: false })
}

/// The run launched earlier under `key`, if any: the same launch answers it (deduplicated),
/// another launch under the same key is a conflict.
async fn by_key(engine: &Engine, key: Option<&str>, request_sha256: &str) -> Result<Option<Launched>, RunError> {
    let Some(key) = key else { return Ok(None) };
    let (store, owned) = (engine.store.clone(), key.to_string());
    let Some(existing) = blocking(move || store.run_by_idempotency_key(&owned)).await?? else { return Ok(None) };
    if existing.request_sha256 != request_sha256 {
        return Err(RunError::IdempotencyConflict(key.to_string(), existing.id));
    }
    Ok(Some(Launched { run: engine.current(existing), deduplicated: true }))
}

/// A new run from an existing one: its journal is a copy of the original's completed entries
/// before `from_step` (all of them without it), and it runs `source` if given.
pub async fn fork(
    engine: &Arc<Engine>,
    id: &str,
    from_step: Option<String>,
    source: Option<String>,
) -> Result<Run, RunError> {
    if engine.stopping() {
        return Err(RunError::ShuttingDown);
    }
    let original = engine.get(id).await?;
    let journal = engine.journal(id).await?;
    let cut = rules::fork_cut(&journal, from_step.as_deref(), id).map_err(RunError::StepNotFound)?;
    let source = match source {
        Some(source) => {
            let source = check_source(source)?;
            if let Some(first) = lint::lint(&source).first() {
                return Err(RunError::LabelLint(first.to_string()));
            }
            source
        }
        None => original.source.clone(),
    };
    let now = now_ms();
    let run_id = engine.new_run_id(now);
    let copied = rules::fork_journal(&journal, cut, &run_id);
    let run = Run {
        script_name: original.script_name.clone(),
        workflow_id: original.workflow_id.clone(),
        interpreter: original.interpreter.clone(),
        flow: original.flow.clone(),
        args: original.args.clone(),
        request_sha256: sha256_hex(format!("fork:{run_id}").as_bytes()),
        source_sha256: sha256_hex(source.as_bytes()),
        source,
        forked_from: Some(original.id.clone()),
        node: engine.node_id(),
        attempt: 1,
        ..Run::fresh(run_id, now)
    };
    let writer = engine.writer();
    // With its `status` event, and `forked` on the original, in the insert's transaction.
    let insert = writer.enqueue_with(super::events::insert_run(&run), OnOutage::Refuse)?;
    let steps = writer.enqueue_with(WriteOp::insert_steps(&copied), OnOutage::Refuse)?;
    insert.wait().await?;
    steps.wait().await?;
    crate::events::hub().run(crate::events::Phase::Created, &run);
    Ok(engine.go_live(run).snapshot())
}

/// An inline source within [`MAX_SOURCE_BYTES`].
fn check_source(source: String) -> Result<String, RunError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(RunError::InvalidRequest(format!("source is over {MAX_SOURCE_BYTES} bytes")));
    }
    Ok(source)
}

/// The interpreter named for an inline source: one of `workflows.interpreters`.
fn check_interpreter(config: &Config, name: Option<&str>) -> Result<String, RunError> {
    let interpreters = &config.workflows.interpreters;
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

/// Finds a flow by name among the folders of `flows_dir` (`<name>/flow.oo.yaml`). The name
/// from the request is only compared with the folder names listed, never joined to a path.
async fn find_flow(flows_dir: &Path, name: &str) -> Result<(String, PathBuf), RunError> {
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

/// A configured workflow's source: text, at most [`MAX_SOURCE_BYTES`] (a run pins it).
async fn read_source(script: &Script) -> Result<String, RunError> {
    let path = script.path.clone();
    let bytes = blocking(move || std::fs::read(&path))
        .await?
        .map_err(|e| RunError::file(format!("cannot read workflow {}", script.path.display()), e))?;
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

/// A byte page of an execution's log (the latest execution unless `attempt` is given).
pub async fn read_bytes(
    engine: &Engine,
    run: &Run,
    attempt: Option<i32>,
    stream: Stream,
    offset: u64,
    limit: u64,
) -> Result<BytePage, RunError> {
    let path = log_path(&engine.config, run, attempt, stream)?;
    let limit = limit.min(crate::jobs::MAX_BYTE_LIMIT);
    blocking(move || logs::read_bytes(&path, offset, limit)).await?.map_err(|e| RunError::file("reading run log", e))
}

/// A line page of an execution's log; while that execution runs, only its complete lines.
pub async fn read_lines(
    engine: &Engine,
    run: &Run,
    attempt: Option<i32>,
    stream: Stream,
    offset: u64,
    limit: u64,
) -> Result<LinePage, RunError> {
    let running = engine.live.contains(&run.id) && attempt.map_or(true, |a| a == run.attempt);
    let path = log_path(&engine.config, run, attempt, stream)?;
    let query = LineQuery {
        offset,
        limit: limit.min(crate::jobs::MAX_LINE_LIMIT),
        max_bytes: crate::jobs::MAX_LINE_PAGE_BYTES,
        complete_only: running,
        known_total: None,
    };
    blocking(move || logs::read_lines(&path, query)).await?.map_err(|e| RunError::file("reading run log", e))
}
