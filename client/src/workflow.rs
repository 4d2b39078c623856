//! The step client: durable steps for a workflow process, in Rust. The `script-runner step`
//! command is built on it, so a workflow in any language gets the same semantics.
//!
//! A workflow process finds its run in the environment the server gives it
//! (`SCRIPT_RUNNER_URL`, `SCRIPT_RUN_ID`, `SCRIPT_RUN_TOKEN`, `SCRIPT_RUN_ARGS`). Every step is
//! keyed by its label: the first execution runs it and journals the result; every later
//! execution of the run gets the journaled result back without running it again.
//!
//! ```no_run
//! use script_runner_client::Workflow;
//! # fn main() -> Result<(), script_runner_client::ClientError> {
//! let wf = Workflow::from_env()?;
//! let id: String = wf.step("pick-id", || Ok::<_, std::io::Error>(format!("{}", std::process::id())))?;
//! let built = wf.command("build", &["make", "all"])?;
//! if built.exit_code != 0 {
//!     std::process::exit(built.exit_code);
//! }
//! println!("{{\"id\": {id:?}}}");
//! # Ok(())
//! # }
//! ```

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use script_runner_wire::runs::StepView;
use script_runner_wire::steps::{
    step_key, Action, AttemptRequest, BeginAnswer, BeginRequest, ProgressRequest, RecordRequest, StepAnswer,
    STEP_KEY_ENV,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::http::{segment as encode, HttpError, Server};

/// Most bytes of a command step's stdout or stderr kept (the rest is read and dropped); the
/// server's `maxResultBytes` guardrail applies to what is kept.
pub const MAX_CAPTURE_BYTES: usize = 16 * 1024 * 1024;

/// What can go wrong in a step.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The process is not a workflow run (a variable is missing).
    #[error("not inside a script-runner workflow run: {0} is not set")]
    NotInRun(&'static str),
    /// The server answered with an error.
    #[error("{code}: {message} (HTTP {status})")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's error code (`STEP_DIVERGED`, `LIMIT_EXCEEDED`, ...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached.
    #[error("cannot reach script-runner at {url}: {message}")]
    Unreachable {
        /// The server address.
        url: String,
        /// Why.
        message: String,
    },
    /// The server's answer is not what the protocol says.
    #[error("unexpected answer from script-runner: {0}")]
    Protocol(String),
    /// A value step's closure failed (nothing was journaled).
    #[error("step {label:?} failed: {message}")]
    Closure {
        /// The label.
        label: String,
        /// The closure's error.
        message: String,
    },
    /// A journaled step failed (now, or on the execution that journaled it).
    #[error("step {label:?} failed: {message}")]
    StepFailed {
        /// The label.
        label: String,
        /// The journaled error.
        message: String,
        /// The journaled result (for a command step: exitCode, stdout, stderr).
        result: Value,
    },
}

/// What a command step did (now, or when it was journaled).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    /// Exit code (128 + signal for a command killed by a signal, 127 if it could not start).
    pub exit_code: i32,
    /// Its stdout, as text.
    pub stdout: String,
    /// Its stderr, as text.
    pub stderr: String,
    /// True when this came from the journal.
    pub replayed: bool,
}

/// A script step's job, as journaled.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptResult {
    /// The job id (the same on every replay).
    pub job_id: String,
    /// The job's final status.
    pub status: String,
    /// Its exit code, if it exited.
    pub exit_code: Option<i64>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl ScriptResult {
    /// Reads a script step's journaled result (`jobId`, `status`, `exitCode`, `stdout`,
    /// `stderr`); a missing or mistyped field is empty (`None` for the exit code).
    pub fn from_result(result: &Value) -> ScriptResult {
        let text = |key: &str| result.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
        ScriptResult {
            job_id: text("jobId"),
            status: text("status"),
            exit_code: result.get("exitCode").and_then(Value::as_i64),
            stdout: text("stdout"),
            stderr: text("stderr"),
        }
    }
}

/// How a command or script step is tried again and timed out (`--retry`, `--backoff`,
/// `--timeout`). Part of the step's journaled config: a replay with other options diverges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepOptions {
    /// Tries after the first when a try fails (0: none; the server takes 1 to 100).
    pub retry: u32,
    /// The wait before the first retry, doubled each retry (`None`: the server's 1 s).
    pub backoff: Option<Duration>,
    /// The longest wait between tries (`None`: the server's 1 min, or the backoff if longer).
    pub backoff_max: Option<Duration>,
    /// A try still running this long is stopped (its process group: SIGTERM, SIGKILL after
    /// [`KILL_GRACE`]) and fails as timed out.
    pub timeout: Option<Duration>,
}

impl StepOptions {
    /// Adds the options to a step's config (nothing for the defaults, so a step without
    /// options keeps the config it always had).
    fn add_to(&self, config: &mut Value) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if self.retry > 0 {
            config["retry"] = json!(self.retry);
            if let Some(backoff) = self.backoff {
                config["backoffMs"] = json!(ms(backoff));
            }
            if let Some(max) = self.backoff_max {
                config["backoffMaxMs"] = json!(ms(max));
            }
        }
        if let Some(timeout) = self.timeout {
            config["timeoutMs"] = json!(ms(timeout));
        }
    }
}

/// Time between SIGTERM and SIGKILL to a timed-out command step's process group.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// The exit code of a command step try stopped by its time-out (as coreutils' `timeout`).
pub const TIMED_OUT_EXIT_CODE: i32 = 124;

/// A duration as a step's error shows it: `2s`, `1500ms`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// An approval decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    /// Approved or denied.
    pub approved: bool,
    /// Who decided.
    pub by: Option<String>,
    /// Their comment.
    pub comment: Option<String>,
}

/// A workflow run's step client.
pub struct Workflow {
    server: Server,
    run_id: String,
    args: Value,
}

/// What [`Workflow::begin`] found: what to do with the step.
enum Next {
    Done(StepView),
    Execute,
    Resume(StepView),
}

/// A step's begin answers when its work is done (a script step when its job has ended): no
/// read time limit of its own.
const NO_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);
/// The other step routes answer at once (a wait answers within its 25 s long poll).
const STEP_ROUTE_LIMIT: Duration = Duration::from_secs(60);
/// How long a step waits out `503 STORE_UNAVAILABLE` (the server's database away): as long as
/// the server keeps writes it could not make (its writer's retry bound).
const STORE_RETRY_BOUND: Duration = Duration::from_secs(600);

impl Workflow {
    /// The client of the run this process belongs to, from the environment.
    pub fn from_env() -> Result<Workflow, ClientError> {
        let var = |name: &'static str| std::env::var(name).map_err(|_| ClientError::NotInRun(name));
        let args = Workflow::args_from_env();
        Ok(Workflow::new(&var("SCRIPT_RUNNER_URL")?, &var("SCRIPT_RUN_ID")?, &var("SCRIPT_RUN_TOKEN")?, args))
    }

    /// The run's launch arguments from the environment (`SCRIPT_RUN_ARGS`); `None` when it is
    /// not set or not JSON. [`Workflow::from_env`] reads them so; this is for a process that
    /// needs them without the rest of the client.
    pub fn args_from_env() -> Option<Value> {
        std::env::var("SCRIPT_RUN_ARGS").ok().and_then(|a| serde_json::from_str(&a).ok())
    }

    /// A client for an explicit run (tests, tools).
    pub fn new(url: &str, run_id: &str, token: &str, args: Option<Value>) -> Workflow {
        Workflow {
            server: Server::new(url, Some(token.to_string()), STEP_ROUTE_LIMIT),
            run_id: run_id.to_string(),
            args: args.unwrap_or(Value::Null),
        }
    }

    /// The run's launch arguments.
    pub fn args(&self) -> &Value {
        &self.args
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Runs `compute` once and journals its value; every replay returns the first value.
    /// A failing closure journals nothing (the next execution tries again).
    pub fn step<T, E>(&self, label: &str, compute: impl FnOnce() -> Result<T, E>) -> Result<T, ClientError>
    where
        T: Serialize + DeserializeOwned,
        E: std::fmt::Display,
    {
        let value = match self.begin(label, "value", Value::Null)? {
            Next::Done(step) => step.result,
            Next::Resume(step) => step.result,
            Next::Execute => {
                let started = Instant::now();
                let value =
                    compute().map_err(|e| ClientError::Closure { label: label.into(), message: e.to_string() })?;
                let value = serde_json::to_value(value).map_err(|e| ClientError::Closure {
                    label: label.into(),
                    message: format!("the value is not JSON: {e}"),
                })?;
                self.record(label, "value", Value::Null, "completed", Some(value), None, started)?.result
            }
        };
        serde_json::from_value(value).map_err(|e| ClientError::Protocol(format!("step {label:?}: {e}")))
    }

    /// Records `value` once; every replay returns the first value recorded.
    pub fn value(&self, label: &str, value: Value) -> Result<Value, ClientError> {
        self.step(label, || Ok::<_, std::convert::Infallible>(value))
    }

    /// Runs a local command once (argv, no shell, `SCRIPT_STEP_KEY=<runId>:<label>` in its
    /// environment) and journals `{exitCode, stdout, stderr}`.
    /// A non-zero exit is journaled as a failed step and replays as the same failure: the
    /// result is returned either way, so the caller decides what a failure means.
    pub fn command<S: AsRef<str>>(&self, label: &str, argv: &[S]) -> Result<CommandResult, ClientError> {
        self.command_with(label, argv, &StepOptions::default())
    }

    /// [`Workflow::command`] with retries and a time-out. Each command runs as the leader of
    /// its own process group. A try that fails (non-zero exit, or stopped by the time-out:
    /// exit code 124, error `timed out after <d>`) with tries left is journaled as an attempt
    /// (exit code, error, stderr tail, times) together with when the next try is due; this
    /// process then waits until then. A restarted run resumes here: it waits only what is left
    /// and runs the next attempt number, never one journaled as failed (an attempt that was
    /// running when the run stopped was not journaled, and is the one run again). The last
    /// try's result is the step's.
    pub fn command_with<S: AsRef<str>>(
        &self,
        label: &str,
        argv: &[S],
        options: &StepOptions,
    ) -> Result<CommandResult, ClientError> {
        let argv: Vec<String> = argv.iter().map(|a| a.as_ref().to_string()).collect();
        if argv.is_empty() {
            return Err(ClientError::Protocol("a command step needs a command".into()));
        }
        let mut config = json!({ "command": argv });
        options.add_to(&mut config);
        let mut attempt = match self.begin(label, "command", config.clone())? {
            Next::Done(step) => return Ok(command_result(&step.result, true)),
            Next::Resume(step) if step.status != "started" => return Ok(command_result(&step.result, true)),
            Next::Resume(step) => next_attempt(&step),
            Next::Execute => 1,
        };
        let started = Instant::now();
        loop {
            let began = now_ms();
            let ran = run_captured(&argv, &step_key(&self.run_id, label), options.timeout);
            let error = match (ran.timed_out, options.timeout) {
                (true, Some(t)) => Some(format!("timed out after {}", show_duration(t))),
                _ if ran.exit_code != 0 => Some(format!("exit code {}", ran.exit_code)),
                _ => None,
            };
            let last = options.retry == 0 || attempt > options.retry;
            let Some(message) = error.clone().filter(|_| !last) else {
                let result = json!({ "exitCode": ran.exit_code, "stdout": ran.stdout, "stderr": ran.stderr });
                let status = if error.is_none() { "completed" } else { "failed" };
                let step = self.record(label, "command", config, status, Some(result), error, started)?;
                // Another writer may have won the label: its result is the journaled one.
                return Ok(command_result(&step.result, false));
            };
            let body = AttemptRequest {
                step_type: "command".into(),
                config: config.clone(),
                attempt,
                exit_code: Some(i64::from(ran.exit_code)),
                error: message,
                stderr_tail: tail(&ran.stderr, 4096),
                started_at_ms: began,
                ended_at_ms: now_ms(),
            };
            let path = format!("steps/{}/attempts", encode(label));
            let step = self.call::<StepAnswer>("POST", &path, Some(&body), STEP_ROUTE_LIMIT)?.step;
            if step.status != "started" {
                return Ok(command_result(&step.result, true));
            }
            attempt = next_attempt(&step);
            // Before the next try, the entry again, with this execution's token: a server
            // that restarted meanwhile has replaced this execution (its token is refused, and
            // this process is stopped) and another execution runs the next try, once.
            let path = format!("steps/{}", encode(label));
            let now = self.call::<StepAnswer>("GET", &path, None::<&Value>, STEP_ROUTE_LIMIT)?.step;
            if now.status != "started" {
                return Ok(command_result(&now.result, true));
            }
            if u32::try_from(now.attempts.len()).ok().map(|n| n + 1) != Some(attempt) {
                return Err(ClientError::Protocol(format!(
                    "step {label:?}: attempt {attempt} is no longer the next one ({} journaled)",
                    now.attempts.len()
                )));
            }
        }
    }

    /// Runs a configured script as a server-side job (same queue, limits and logs as
    /// `POST /run`; its process gets `SCRIPT_STEP_KEY=<runId>:<label>`). A replay waits for
    /// the same job; it never starts a second one.
    pub fn script<S: AsRef<str>>(&self, label: &str, script_id: &str, args: &[S]) -> Result<ScriptResult, ClientError> {
        self.script_with(label, script_id, args, &StepOptions::default())
    }

    /// [`Workflow::script`] with retries and a time-out, both run by the server: each try is
    /// a new job (its id journaled in the attempt), a try whose job is still running at the
    /// time-out (counted from its submission) is cancelled, and the wait between tries is
    /// journaled, so a restart of the server waits only what is left of it.
    pub fn script_with<S: AsRef<str>>(
        &self,
        label: &str,
        script_id: &str,
        args: &[S],
        options: &StepOptions,
    ) -> Result<ScriptResult, ClientError> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let mut config = json!({ "scriptId": script_id, "args": args });
        options.add_to(&mut config);
        let step = match self.begin(label, "script", config)? {
            Next::Done(step) | Next::Resume(step) => step,
            Next::Execute => return Err(ClientError::Protocol("the server did not run the script step".into())),
        };
        Ok(ScriptResult::from_result(&step.result))
    }

    /// Starts a configured script as a server-side job without waiting for it, once: the job
    /// id is journaled with the start, so a replay returns the same job id and never starts a
    /// second job.
    pub fn script_start<S: AsRef<str>>(&self, label: &str, script_id: &str, args: &[S]) -> Result<String, ClientError> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let config = json!({ "scriptId": script_id, "args": args, "wait": false });
        let step = match self.begin(label, "script", config)? {
            Next::Done(step) | Next::Resume(step) => step,
            Next::Execute => return Err(ClientError::Protocol("the server did not start the script".into())),
        };
        step.result
            .get("jobId")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ClientError::Protocol(format!("step {label:?} has no jobId")))
    }

    /// The server this client talks to.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// A durable sleep: the wake-up time is journaled, so a restarted run sleeps only what is
    /// left of it.
    pub fn sleep(&self, label: &str, duration: Duration) -> Result<(), ClientError> {
        let config = json!({ "durationMs": u64::try_from(duration.as_millis()).unwrap_or(u64::MAX) });
        let step = match self.begin(label, "sleep", config.clone())? {
            Next::Done(_) => return Ok(()),
            Next::Resume(step) => step,
            Next::Execute => return Err(ClientError::Protocol("the server did not journal the sleep".into())),
        };
        let wake_at = step.result.get("wakeAtMs").and_then(Value::as_i64).unwrap_or(0);
        let started = Instant::now();
        let left = wake_at - now_ms();
        if left > 0 {
            std::thread::sleep(Duration::from_millis(left.unsigned_abs()));
        }
        self.record(label, "sleep", config, "completed", Some(step.result), None, started)?;
        Ok(())
    }

    /// Waits for a human decision (`POST /api/script-runs/{id}/approvals/{label}`). The run is
    /// `awaiting` meanwhile; the server may stop this process and restart the run when the
    /// decision lands, which then replays to here and returns the decision.
    pub fn approval(&self, label: &str, message: &str) -> Result<Approval, ClientError> {
        let config = json!({ "message": message });
        let mut step = match self.begin(label, "approval", config)? {
            Next::Done(step) | Next::Resume(step) => step,
            Next::Execute => return Err(ClientError::Protocol("the server did not journal the approval".into())),
        };
        while step.status == "started" {
            step = self.wait(label)?;
        }
        let r = &step.result;
        let text = |key: &str| r.get(key).and_then(Value::as_str).map(str::to_string);
        Ok(Approval {
            approved: r.get("approved").and_then(Value::as_bool).unwrap_or(false),
            by: text("by"),
            comment: text("comment"),
        })
    }

    /// Waits for a value from outside the run (`POST /api/script-runs/{id}/inputs/{label}`),
    /// which the server checks against `schema` (a JSON schema; `None` takes any value)
    /// before it journals it. The run is `awaiting` meanwhile, and may be parked and
    /// restarted as for an approval; a replay returns the journaled value. An input denied
    /// through its resume URL is [`ClientError::StepFailed`] (and so is every replay).
    pub fn input(&self, label: &str, prompt: &str, schema: Option<&Value>) -> Result<Value, ClientError> {
        let config = match schema {
            Some(schema) => json!({ "prompt": prompt, "schema": schema }),
            None => json!({ "prompt": prompt }),
        };
        let mut step = match self.begin(label, "input", config)? {
            Next::Done(step) | Next::Resume(step) => step,
            Next::Execute => return Err(ClientError::Protocol("the server did not journal the input".into())),
        };
        while step.status == "started" {
            step = self.wait(label)?;
        }
        // Denied through its resume URL: failed, and so is every replay.
        if step.status == "failed" {
            return Err(ClientError::StepFailed {
                label: label.into(),
                message: step.error.clone().unwrap_or_default(),
                result: step.result,
            });
        }
        Ok(step.result.get("value").cloned().unwrap_or(Value::Null))
    }

    /// Waits for the event `name` (`POST /api/script-runs/{id}/events/{name}`, any JSON) and
    /// returns its payload. With a `timeout`, the server fails the step when it passes
    /// ([`ClientError::StepFailed`], and so does every replay). The run is `awaiting`
    /// meanwhile, and may be parked and restarted as for an approval.
    pub fn wait_event(&self, label: &str, name: &str, timeout: Option<Duration>) -> Result<Value, ClientError> {
        let config = match timeout {
            Some(t) => json!({ "event": name, "timeoutMs": u64::try_from(t.as_millis()).unwrap_or(u64::MAX) }),
            None => json!({ "event": name }),
        };
        let mut step = match self.begin(label, "event", config)? {
            Next::Done(step) | Next::Resume(step) => step,
            Next::Execute => return Err(ClientError::Protocol("the server did not journal the event step".into())),
        };
        while step.status == "started" {
            step = self.wait(label)?;
        }
        if step.status == "failed" {
            return Err(ClientError::StepFailed {
                label: label.into(),
                message: step.error.clone().unwrap_or_default(),
                result: step.result,
            });
        }
        Ok(step.result.get("payload").cloned().unwrap_or(Value::Null))
    }

    /// Reports progress (`current` of `total`, 0 when unknown) on the run.
    pub fn progress(&self, current: u64, total: u64, message: Option<&str>) -> Result<(), ClientError> {
        let body = ProgressRequest { current, total, message: message.map(str::to_string) };
        self.call::<Value>("POST", "progress", Some(&body), STEP_ROUTE_LIMIT)?;
        Ok(())
    }

    fn begin(&self, label: &str, step_type: &str, config: Value) -> Result<Next, ClientError> {
        let path = format!("steps/{}/begin", encode(label));
        let body = BeginRequest { step_type: step_type.to_string(), config };
        let answer: BeginAnswer = self.call("POST", &path, Some(&body), NO_LIMIT)?;
        match (answer.action, answer.step) {
            (Action::Execute, _) => Ok(Next::Execute),
            (Action::Done, Some(step)) => {
                if step.status == "failed" && step.step_type != "command" {
                    return Err(ClientError::StepFailed {
                        label: label.into(),
                        message: step.error.clone().unwrap_or_default(),
                        result: step.result,
                    });
                }
                Ok(Next::Done(step))
            }
            (Action::Resume, Some(step)) => Ok(Next::Resume(step)),
            (action, None) => Err(ClientError::Protocol(format!("begin answered {action:?} without a step"))),
        }
    }

    #[allow(clippy::too_many_arguments, reason = "one call site per step kind, each field named")]
    fn record(
        &self,
        label: &str,
        step_type: &str,
        config: Value,
        status: &str,
        result: Option<Value>,
        error: Option<String>,
        started: Instant,
    ) -> Result<StepView, ClientError> {
        let body = RecordRequest {
            step_key: label.to_string(),
            step_type: step_type.to_string(),
            config,
            status: status.to_string(),
            result,
            error,
            duration_ms: Some(i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)),
        };
        Ok(self.call::<StepAnswer>("POST", "steps", Some(&body), STEP_ROUTE_LIMIT)?.step)
    }

    fn wait(&self, label: &str) -> Result<StepView, ClientError> {
        let path = format!("steps/{}/wait?timeoutMs=25000", encode(label));
        Ok(self.call::<StepAnswer>("GET", &path, None::<&Value>, STEP_ROUTE_LIMIT)?.step)
    }

    /// One call to the run's internal routes, authorised by the run token.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        limit: Duration,
    ) -> Result<T, ClientError> {
        let path = format!("/api/internal/script-runs/{}/{path}", encode(&self.run_id));
        let server = self.server.with_timeout(limit);
        // The server's database is away for a while (PostgreSQL restarting): every call here is
        // keyed by the step's label (a second begin or record of one label is answered from the
        // journal), so it is retried until the database is back, as long as the server keeps
        // its own writes ([`STORE_RETRY_BOUND`]), instead of failing the run.
        let deadline = Instant::now() + STORE_RETRY_BOUND;
        let mut pause = Duration::from_millis(250);
        loop {
            match server.call(method, &path, body) {
                Err(HttpError::Http { status: 503, code, .. })
                    if code == "STORE_UNAVAILABLE" && Instant::now() + pause < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                answer => return answer.map_err(ClientError::from),
            }
        }
    }
}

impl From<HttpError> for ClientError {
    /// The step client's words for a failed request (the CLI prints them).
    fn from(e: HttpError) -> ClientError {
        match e {
            HttpError::Http { status, code, message } => ClientError::Server { status, code, message },
            HttpError::Unreachable { url, message } => ClientError::Unreachable { url, message },
            HttpError::Timeout { url, seconds } => {
                ClientError::Unreachable { url, message: format!("no answer within {seconds} s") }
            }
            HttpError::Malformed { url, message } => ClientError::Protocol(format!("{url}: {message}")),
        }
    }
}

/// Milliseconds since the Unix epoch (a sleep's wake-up time is journaled in them).
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The attempt a resumed, retried command step runs: the one after those journaled, once
/// the journaled time for it has come (a restart waits only what is left).
fn next_attempt(step: &StepView) -> u32 {
    if let Some(at) = step.result.get("nextAttemptAtMs").and_then(Value::as_i64) {
        let left = at - now_ms();
        if left > 0 {
            std::thread::sleep(Duration::from_millis(left.unsigned_abs()));
        }
    }
    u32::try_from(step.attempts.len()).unwrap_or(u32::MAX).saturating_add(1)
}

/// The last at most `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

fn command_result(result: &Value, replayed: bool) -> CommandResult {
    let text = |key: &str| result.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    CommandResult {
        exit_code: result.get("exitCode").and_then(Value::as_i64).and_then(|c| i32::try_from(c).ok()).unwrap_or(1),
        stdout: text("stdout"),
        stderr: text("stderr"),
        replayed,
    }
}

/// What a command printed and how it ended.
struct Captured {
    exit_code: i32,
    stdout: String,
    stderr: String,
    /// Stopped by its time-out.
    timed_out: bool,
}

/// Runs argv as the leader of a new process group, with stdin from /dev/null and its step's
/// idempotency key in [`STEP_KEY_ENV`], keeping at most [`MAX_CAPTURE_BYTES`] of each stream. With a `timeout`, a command still running then
/// is stopped: SIGTERM to its group, SIGKILL to the group after [`KILL_GRACE`] (exit code
/// [`TIMED_OUT_EXIT_CODE`]). SIGTERM, SIGINT or SIGHUP sent to this process meanwhile (a
/// cancelled run) stops the group the same way, then this process ends by that signal: the
/// command's group is not the run's, so it would not get the run's signal itself.
fn run_captured(argv: &[String], key: &str, timeout: Option<Duration>) -> Captured {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let guard = SignalGuard::block();
    let mut child = match Command::new(&argv[0])
        .args(&argv[1..])
        .env(STEP_KEY_ENV, key)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return Captured {
                exit_code: 127,
                stdout: String::new(),
                stderr: format!("cannot start {}: {e}\n", argv[0]),
                timed_out: false,
            }
        }
    };
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let err_pipe = child.stderr.take();
    let err_reader = std::thread::spawn(move || err_pipe.map(read_capped).unwrap_or_default());
    let out_pipe = child.stdout.take();
    let out_reader = std::thread::spawn(move || out_pipe.map(read_capped).unwrap_or_default());
    // The leader is waited for on a thread of its own, so its exit ends the wait at once;
    // meanwhile this thread looks for a stop signal and the deadline every WATCH_EVERY.
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut timed_out = false;
    let mut stopped_by = None;
    let status = loop {
        let watch = deadline.map_or(WATCH_EVERY, |d| d.saturating_duration_since(Instant::now()).min(WATCH_EVERY));
        match exit.recv_timeout(watch) {
            Ok(status) => break status,
            Err(RecvTimeoutError::Disconnected) => break Err(std::io::Error::other("the command's waiter is gone")),
            Err(RecvTimeoutError::Timeout) => {}
        }
        stopped_by = guard.as_ref().and_then(SignalGuard::received);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            timed_out = true;
        }
        if timed_out || stopped_by.is_some() {
            break stop_group(&exit, group);
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if let Some(signal) = stopped_by {
        drop(guard);
        let _ = nix::sys::signal::raise(signal);
    }
    let exit_code = match status {
        _ if timed_out => TIMED_OUT_EXIT_CODE,
        Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(_) => 1,
    };
    Captured { exit_code, stdout, stderr, timed_out }
}

/// How often a running command step looks for a stop signal and its deadline (its exit is
/// seen at once).
const WATCH_EVERY: Duration = Duration::from_millis(20);

/// Stops a command's process group: SIGTERM, then SIGKILL once the group is gone or
/// [`KILL_GRACE`] has passed; `exit` gives the leader's status (its waiter reaps it). The
/// leader exiting does not mean the group has: its children are waited for too.
fn stop_group(
    exit: &Receiver<std::io::Result<std::process::ExitStatus>>,
    group: nix::unistd::Pid,
) -> std::io::Result<std::process::ExitStatus> {
    use nix::sys::signal::{killpg, Signal};
    let _ = killpg(group, Signal::SIGTERM);
    let grace = Instant::now() + KILL_GRACE;
    let mut status = None;
    while Instant::now() < grace {
        if status.is_none() {
            status = exit.recv_timeout(WATCH_EVERY).ok();
        } else if killpg(group, None).is_err() {
            // Signal 0: no process of the group remains.
            break;
        } else {
            std::thread::sleep(WATCH_EVERY);
        }
    }
    let _ = killpg(group, Signal::SIGKILL);
    match status {
        Some(status) => status,
        None => exit.recv().unwrap_or_else(|_| Err(std::io::Error::other("the command's waiter is gone"))),
    }
}

/// SIGTERM, SIGINT and SIGHUP held back from this thread while a command step runs (and read
/// through a signalfd), so that a stop of the run stops the command's group before this
/// process ends. Dropping it lets them through again.
struct SignalGuard {
    fd: nix::sys::signalfd::SignalFd,
    old: nix::sys::signal::SigSet,
}

impl SignalGuard {
    /// Holds the signals back; `None` if that is not possible (they then act as before).
    fn block() -> Option<SignalGuard> {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut mask = SigSet::empty();
        for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(signal);
        }
        let mut old = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old)).ok()?;
        match SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => Some(SignalGuard { fd, old }),
            Err(_) => {
                let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
                None
            }
        }
    }

    /// A signal received since, if any.
    fn received(&self) -> Option<nix::sys::signal::Signal> {
        let info = self.fd.read_signal().ok().flatten()?;
        nix::sys::signal::Signal::try_from(i32::try_from(info.ssi_signo).ok()?).ok()
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        use nix::sys::signal::SigmaskHow;
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

fn read_capped(mut pipe: impl Read) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = MAX_CAPTURE_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}
