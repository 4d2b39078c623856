//! OOMOL blocks over the script-runner HTTP API, and the flow runner that wires them.
//!
//! Every public endpoint of script-runner is a block: its manifest is
//! `blocks/<name>/block.oo.yaml` (compiled in, so the binary needs no checkout), its
//! implementation a function here over the service's one client (`script-runner-client`). [`run_block`] fills the
//! manifest's defaults, checks every input against its `json_schema`, calls the block and checks
//! that every declared output came back. This crate never depends on the server crate: blocks
//! reach a script-runner only through its HTTP API.

pub mod error;
pub mod flow;
pub mod follow;
pub mod manifest;
pub mod worker;

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

pub use error::BlockError;
use follow::Follower;
use manifest::{did_you_mean, Manifest};
use script_runner_client::http::field;
use script_runner_client::{query, segment, Server};

/// Every block: name and manifest text.
pub const BLOCKS: [(&str, &str); 15] = [
    ("run-script-async", include_str!("../run-script-async/block.oo.yaml")),
    ("run-script-sync", include_str!("../run-script-sync/block.oo.yaml")),
    ("get-job-status", include_str!("../get-job-status/block.oo.yaml")),
    ("get-job-logs", include_str!("../get-job-logs/block.oo.yaml")),
    ("cancel-job", include_str!("../cancel-job/block.oo.yaml")),
    ("wait-job", include_str!("../wait-job/block.oo.yaml")),
    ("list-jobs", include_str!("../list-jobs/block.oo.yaml")),
    ("list-scripts", include_str!("../list-scripts/block.oo.yaml")),
    ("launch-script-run", include_str!("../launch-script-run/block.oo.yaml")),
    ("get-script-run", include_str!("../get-script-run/block.oo.yaml")),
    ("list-script-runs", include_str!("../list-script-runs/block.oo.yaml")),
    ("cancel-script-run", include_str!("../cancel-script-run/block.oo.yaml")),
    ("pause-script-run", include_str!("../pause-script-run/block.oo.yaml")),
    ("resume-script-run", include_str!("../resume-script-run/block.oo.yaml")),
    ("approve-step", include_str!("../approve-step/block.oo.yaml")),
];

/// Requests of every block but the long ones may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a block run gives: its outputs by handle.
pub type BlockResult = Result<Map<String, Value>, BlockError>;

/// How often a block that follows something (a job's logs, a run's progress) looks again.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How often `launch-script-run` with `wait` reads the run.
const RUN_POLL_EVERY: Duration = Duration::from_millis(500);

/// Where a running block's side output goes: the script's log lines and progress. The CLI
/// front end shows neither (its stdout is the outputs' JSON); the OOMOL worker prints lines,
/// which Studio shows as the block's log, and sends progress to the engine.
pub trait Report: Sync {
    /// Whether log lines are wanted (following a job's logs costs requests).
    fn follows_logs(&self) -> bool {
        false
    }

    /// One line of a job's `stream` (`stdout` or `stderr`), without its newline.
    fn log(&self, _stream: &str, _line: &str) {}

    /// Progress, 0 to 100.
    fn progress(&self, _percent: f64) {}
}

/// Shows nothing.
pub struct Quiet;

impl Report for Quiet {}

/// What a front end gives a block run besides its inputs.
pub struct Context<'a> {
    /// The idempotency key of the work a block starts when its `idempotency_key` input is
    /// null: the OOMOL worker derives one from the engine's session and job ids, so a block
    /// the engine starts twice for one job starts its script once.
    pub idempotency_key: Option<String>,
    /// Where log lines and progress go.
    pub report: &'a dyn Report,
}

impl Context<'static> {
    /// No key, nothing reported: the CLI's and the flow runner's context.
    pub fn quiet() -> Context<'static> {
        Context { idempotency_key: None, report: &Quiet }
    }
}

/// The compiled-in manifest of a block.
pub fn manifest(name: &str) -> Result<Manifest, BlockError> {
    builtin(name).cloned()
}

/// The compiled-in manifest of a block, parsed once per process (a manifest that does not
/// parse gives its error on every call).
fn builtin(name: &str) -> Result<&'static Manifest, BlockError> {
    static MANIFESTS: OnceLock<HashMap<&str, Result<Manifest, String>>> = OnceLock::new();
    let manifests = MANIFESTS.get_or_init(|| BLOCKS.iter().map(|(n, text)| (*n, Manifest::parse(text))).collect());
    match manifests.get(name) {
        None => Err(BlockError::UnknownBlock(name.to_string())),
        Some(Ok(manifest)) => Ok(manifest),
        Some(Err(e)) => Err(BlockError::Failed(format!("manifest of {name}: {e}"))),
    }
}

/// Whether a block of this name exists.
pub fn is_block(name: &str) -> bool {
    BLOCKS.iter().any(|(n, _)| *n == name)
}

/// Runs one block: defaults filled and inputs checked from its manifest, outputs checked
/// against it.
pub fn run_block(name: &str, given: &Map<String, Value>) -> BlockResult {
    run_block_in(name, given, &Context::quiet())
}

/// [`run_block`] with a front end's context: the one code path of every front end.
pub fn run_block_in(name: &str, given: &Map<String, Value>, context: &Context<'_>) -> BlockResult {
    let manifest = builtin(name)?;
    let inputs = resolve_inputs(manifest, given)?;
    let outputs = call(name, &Inputs(inputs), context)?;
    for def in &manifest.outputs {
        let value = outputs
            .get(&def.handle)
            .ok_or_else(|| BlockError::Failed(format!("block {name} produced no {:?} output", def.handle)))?;
        def.check(value).map_err(|message| BlockError::Failed(format!("output {}: {message}", def.handle)))?;
    }
    Ok(outputs)
}

/// The inputs a block runs with: the given ones, then defaults; unknown, missing and
/// mistyped inputs are errors naming the handle.
pub fn resolve_inputs(manifest: &Manifest, given: &Map<String, Value>) -> Result<Map<String, Value>, BlockError> {
    for key in given.keys() {
        if manifest.input(key).is_none() {
            let hint = did_you_mean(key, manifest.inputs.iter().map(|h| h.handle.as_str()))
                .map(|h| format!(" (did you mean {h:?}?)"))
                .unwrap_or_default();
            return Err(BlockError::Input { handle: key.clone(), message: format!("no such input{hint}") });
        }
    }
    let mut inputs = Map::new();
    for def in &manifest.inputs {
        let value = match (given.get(&def.handle), &def.value) {
            (Some(v), _) => v.clone(),
            (None, Some(default)) => default.clone(),
            (None, None) if def.nullable => Value::Null,
            (None, None) => {
                return Err(BlockError::Input { handle: def.handle.clone(), message: "required, and not given".into() })
            }
        };
        def.check(&value).map_err(|message| BlockError::Input { handle: def.handle.clone(), message })?;
        inputs.insert(def.handle.clone(), value);
    }
    Ok(inputs)
}

/// Resolved inputs, read by name.
struct Inputs(Map<String, Value>);

impl Inputs {
    fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    fn required(&self, key: &str) -> Result<&str, BlockError> {
        self.str(key).ok_or_else(|| BlockError::Input { handle: key.into(), message: "required".into() })
    }

    fn u64(&self, key: &str, default: u64) -> u64 {
        self.0.get(key).and_then(Value::as_u64).unwrap_or(default)
    }

    fn value(&self, key: &str) -> Value {
        self.0.get(key).cloned().unwrap_or(Value::Null)
    }

    /// The value, or `default` when it is missing or null.
    fn value_or(&self, key: &str, default: Value) -> Value {
        match self.value(key) {
            Value::Null => default,
            value => value,
        }
    }

    /// `{base}?limit=..&offset=..`, then each filter given (`(input, query parameter)`).
    fn list_path(&self, base: &str, filters: [(&str, &str); 2]) -> String {
        let mut path = format!("{base}?limit={}&offset={}", self.u64("limit", 50), self.u64("offset", 0));
        for (key, param) in filters {
            if let Some(v) = self.str(key) {
                path.push_str(&format!("&{param}={}", query(v)));
            }
        }
        path
    }

    /// The key of the work this block starts: the `idempotency_key` input, else the context's.
    fn idempotency_key(&self, context: &Context<'_>) -> Option<String> {
        self.str("idempotency_key").map(str::to_string).or_else(|| context.idempotency_key.clone())
    }

    fn server(&self, timeout: Duration) -> Server {
        let url = self.str("script_runner_url").unwrap_or(script_runner_client::DEFAULT_URL);
        Server::new(url, self.str("token").map(str::to_string), timeout)
    }
}

fn outputs(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn call(name: &str, inputs: &Inputs, context: &Context<'_>) -> BlockResult {
    let report = context.report;
    let server = inputs.server(REQUEST_TIMEOUT);
    let url = server.url().to_string();
    let out = match name {
        "run-script-async" => {
            let args = inputs.value_or("args", json!([]));
            let mut body = json!({ "scriptId": inputs.required("script_id")?, "args": args, "mode": "async" });
            if let Some(key) = inputs.idempotency_key(context) {
                body["idempotencyKey"] = json!(key);
            }
            let answer = server.post("/run", body)?;
            json!({ "job_id": field(&answer, "jobId", &url)? })
        }
        "run-script-sync" => {
            let server = inputs.server(Duration::from_secs(inputs.u64("timeout_sec", 300)));
            let args = inputs.value_or("args", json!([]));
            let mut body = json!({ "scriptId": inputs.required("script_id")?, "args": args, "mode": "sync" });
            let key = inputs.idempotency_key(context);
            if let Some(key) = &key {
                body["idempotencyKey"] = json!(key);
            }
            let job = match key {
                Some(key) if report.follows_logs() => run_following(&server, body, &key, report)?,
                _ => server.post("/run", body)?,
            };
            // Upstream's sync answer has only the previews; ours adds the whole streams.
            let text = |whole: &str, preview: &str| job.get(whole).or_else(|| job.get(preview)).cloned();
            json!({
                "stdout": text("stdout", "stdoutPreview").unwrap_or_else(|| json!("")),
                "stderr": text("stderr", "stderrPreview").unwrap_or_else(|| json!("")),
                "exit_code": job.get("code").cloned().filter(|c| !c.is_null()).unwrap_or(json!(-1)),
                "status": field(&job, "status", &url)?,
            })
        }
        "get-job-status" => {
            status_outputs(&server.get(&format!("/jobs/{}", segment(inputs.required("job_id")?)))?, &url)?
        }
        "get-job-logs" => {
            let path = format!(
                "/jobs/{}/logs?unit=lines&stream={}&offset={}&limit={}",
                segment(inputs.required("job_id")?),
                query(inputs.str("stream").unwrap_or("stdout")),
                inputs.u64("offset", 0),
                inputs.u64("limit", 100),
            );
            let page = server.get(&path)?;
            json!({ "logs": field(&page, "lines", &url)?, "total_lines": field(&page, "totalLines", &url)? })
        }
        "cancel-job" => {
            let id = inputs.required("job_id")?;
            let before = server.get(&format!("/jobs/{}", segment(id)))?;
            let before_status = field(&before, "status", &url)?.as_str().unwrap_or_default().to_string();
            if !matches!(before_status.as_str(), "queued" | "running") {
                json!({ "success": false, "message": format!("job {id} has already ended ({before_status})") })
            } else {
                let job = server.post(&format!("/jobs/{}/cancel", segment(id)), json!({}))?;
                let status = field(&job, "status", &url)?.as_str().unwrap_or_default().to_string();
                let success = status == "canceled";
                let message = if success {
                    format!("job {id} canceled (it was {before_status})")
                } else {
                    format!("job {id} ended {status} before the cancel took effect")
                };
                json!({ "success": success, "message": message })
            }
        }
        "wait-job" => {
            let id = inputs.required("job_id")?;
            let timeout = inputs.0.get("timeout_sec").and_then(Value::as_f64).unwrap_or(300.0);
            let interval = Duration::from_millis(inputs.u64("poll_interval_ms", 500));
            let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
            let mut follower = Follower::new(id);
            loop {
                let job = server.get(&format!("/jobs/{}", segment(id)))?;
                let status = field(&job, "status", &url)?.as_str().unwrap_or_default();
                let ended = !matches!(status, "queued" | "running");
                if report.follows_logs() {
                    follower.show(&server, report, ended);
                }
                if ended {
                    let mut out = status_outputs(&job, &url)?;
                    out["job_id"] = json!(id);
                    break out;
                }
                if Instant::now() >= deadline {
                    return Err(BlockError::Failed(format!("job {id} is still {status} after {timeout} s")));
                }
                std::thread::sleep(interval.min(deadline.saturating_duration_since(Instant::now())));
            }
        }
        "list-jobs" => {
            let path = inputs.list_path("/jobs", [("status", "status"), ("script_id", "scriptId")]);
            let page = server.get(&path)?;
            json!({ "jobs": field(&page, "jobs", &url)?, "total": field(&page, "total", &url)? })
        }
        "list-scripts" => json!({ "scripts": field(&server.get("/scripts")?, "scripts", &url)? }),
        "launch-script-run" => {
            let wait = inputs.0.get("wait").and_then(Value::as_bool).unwrap_or(false);
            let server = if wait { inputs.server(Duration::from_secs(7 * 24 * 3600)) } else { server };
            let mut body = Map::new();
            for (key, param) in [
                ("workflow_id", "workflowId"),
                ("source", "source"),
                ("interpreter", "interpreter"),
                ("idempotency_key", "idempotencyKey"),
                ("script_name", "scriptName"),
            ] {
                if let Some(v) = inputs.str(key) {
                    body.insert(param.into(), json!(v));
                }
            }
            if let Some(key) = inputs.idempotency_key(context) {
                body.insert("idempotencyKey".into(), json!(key));
            }
            body.insert("args".into(), inputs.value_or("args", json!({})));
            // Launched in the background and read until it has ended, so its progress can be
            // reported while it runs (the server's own wait would hold one request instead).
            body.insert("background".into(), json!(true));
            let answer = server.post("/api/script-runs", Value::Object(body))?;
            let mut run = field(&answer, "run", &url)?.clone();
            let mut shown = report_progress(&run, None, report);
            if wait {
                let id = field(&run, "id", &url)?.as_str().unwrap_or_default().to_string();
                let path = format!("/api/script-runs/{}", segment(&id));
                while !is_run_terminal(&run) {
                    std::thread::sleep(RUN_POLL_EVERY);
                    run = field(&server.get(&path)?, "run", &url)?.clone();
                    shown = report_progress(&run, shown, report);
                }
            }
            json!({ "run_id": field(&run, "id", &url)?, "status": field(&run, "status", &url)?, "run": run })
        }
        "get-script-run" => {
            let answer = server.get(&format!("/api/script-runs/{}", segment(inputs.required("run_id")?)))?;
            let run = field(&answer, "run", &url)?;
            report_progress(run, None, report);
            json!({
                "run": run,
                "status": field(run, "status", &url)?,
                "journal": field(&answer, "journal", &url)?,
                "output": run.get("output").cloned().unwrap_or(Value::Null),
            })
        }
        "list-script-runs" => {
            let path = inputs.list_path("/api/script-runs", [("status", "status"), ("script_name", "scriptName")]);
            let page = server.get(&path)?;
            json!({ "runs": field(&page, "runs", &url)?, "total": field(&page, "total", &url)? })
        }
        "cancel-script-run" | "pause-script-run" | "resume-script-run" | "approve-step" => {
            let id = segment(inputs.required("run_id")?);
            let answer = match name {
                "cancel-script-run" => server.delete(&format!("/api/script-runs/{id}"))?,
                "pause-script-run" => server.post(&format!("/api/script-runs/{id}/pause"), json!({}))?,
                "resume-script-run" => server.post(&format!("/api/script-runs/{id}/resume"), json!({}))?,
                _ => {
                    let label = segment(inputs.required("label")?);
                    let body = json!({
                        "approved": inputs.value("approved").as_bool().unwrap_or(false),
                        "by": inputs.value("by"),
                        "comment": inputs.value("comment"),
                    });
                    server.post(&format!("/api/script-runs/{id}/approvals/{label}"), body)?
                }
            };
            let run = field(&answer, "run", &url)?;
            json!({ "run": run, "status": field(run, "status", &url)? })
        }
        other => return Err(BlockError::UnknownBlock(other.to_string())),
    };
    Ok(outputs(out))
}

/// `POST /run` of a sync job while its log lines are shown: the request runs on its own thread
/// while this one finds the job by its idempotency key and follows its logs, then shows the
/// rest once the answer is in. Following is best effort: its errors never fail the block.
fn run_following(server: &Server, body: Value, key: &str, report: &dyn Report) -> Result<Value, BlockError> {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        scope.spawn(move || {
            let _ = tx.send(server.post("/run", body));
        });
        let mut follower: Option<Follower> = None;
        loop {
            match rx.recv_timeout(FOLLOW_EVERY) {
                Ok(answer) => {
                    if let Ok(job) = &answer {
                        let id = job.get("jobId").and_then(Value::as_str).unwrap_or_default();
                        follower.get_or_insert_with(|| Follower::new(id)).show(server, report, true);
                    }
                    return answer.map_err(BlockError::from);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if follower.is_none() {
                        follower = follow::job_by_key(server, key).map(|id| Follower::new(&id));
                    }
                    if let Some(follower) = &mut follower {
                        follower.show(server, report, false);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(BlockError::Failed("the run request ended without an answer".into()))
                }
            }
        }
    })
}

/// Whether a run (the wire object) has ended for good.
fn is_run_terminal(run: &Value) -> bool {
    matches!(run["status"].as_str(), Some("completed" | "failed" | "cancelled" | "aborted_limit"))
}

/// Reports a run's progress (`current` of `total`, as a percentage) when it differs from the
/// one `shown` before; returns the one shown now.
fn report_progress(run: &Value, shown: Option<f64>, report: &dyn Report) -> Option<f64> {
    let progress = &run["progress"];
    let (Some(current), Some(total)) = (progress["current"].as_f64(), progress["total"].as_f64()) else {
        return shown;
    };
    if total <= 0.0 {
        return shown;
    }
    let percent = (current / total * 100.0).clamp(0.0, 100.0);
    if shown != Some(percent) {
        report.progress(percent);
    }
    Some(percent)
}

fn status_outputs(job: &Value, url: &str) -> Result<Value, BlockError> {
    Ok(json!({
        "status": field(job, "status", url)?,
        "exit_code": job.get("code").cloned().unwrap_or(Value::Null),
        "stdout_preview": job.get("stdoutPreview").cloned().unwrap_or_else(|| json!("")),
        "stderr_preview": job.get("stderrPreview").cloned().unwrap_or_else(|| json!("")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_parses_and_declares_the_common_inputs() {
        for (name, _) in BLOCKS {
            let m = manifest(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(m.input("script_runner_url").is_some(), "{name}");
            assert!(m.input("token").is_some_and(|t| t.nullable), "{name}");
            assert_eq!(m.executor["options"]["args"], json!(["block", name]), "{name}");
            assert!(!m.outputs.is_empty(), "{name}");
        }
    }

    #[test]
    fn the_package_lists_every_block_once_for_studio() {
        let package: Value = serde_yaml_ng::from_str(include_str!("../../package.oo.yaml")).unwrap_or_default();
        for key in ["name", "version", "description", "icon"] {
            assert!(package[key].is_string(), "package.oo.yaml has no {key}");
        }
        let listed: Vec<&str> =
            package["ui"]["blocks"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        let mut all: Vec<&str> = BLOCKS.iter().map(|(n, _)| *n).collect();
        all.sort_unstable();
        assert_eq!(sorted, all, "ui.blocks of package.oo.yaml: {listed:?}");
    }

    #[test]
    fn inputs_are_checked_before_any_request() {
        let given = json!({ "script_id": 3 }).as_object().cloned().unwrap_or_default();
        let e = run_block("run-script-async", &given).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("input script_id"), "{e}");
        let given = json!({ "jobid": "x" }).as_object().cloned().unwrap_or_default();
        let e = run_block("get-job-status", &given).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("did you mean \"job_id\""), "{e}");
    }
}
