//! The run engine's vocabulary: a run, a journal entry, their statuses and step types (typed
//! here; their spellings appear only at the edges: storage and the wire), and the requests the
//! HTTP layer hands the engine.

use serde_json::Value;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// A process executes it, or will as soon as the server resumes it.
    Running,
    /// Waiting for an approval decision (the process may have been parked).
    Awaiting,
    /// Stopped on request; `resume` re-executes it from the top with replay.
    Paused,
    /// The process exited 0.
    Completed,
    /// The process failed (non-zero exit, spawn failure, failed step it did not handle).
    Failed,
    /// Cancelled on request.
    Cancelled,
    /// A guardrail stopped it.
    AbortedLimit,
}

impl RunStatus {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Awaiting => "awaiting",
            RunStatus::Paused => "paused",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::AbortedLimit => "aborted_limit",
        }
    }

    /// Every status, in the order of a run's life.
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Running,
        RunStatus::Awaiting,
        RunStatus::Paused,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::AbortedLimit,
    ];

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Whether the run is over for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled | RunStatus::AbortedLimit)
    }
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepType {
    /// A local command the step client runs.
    Command,
    /// A configured script run as a server-side job.
    Script,
    /// A value recorded once.
    Value,
    /// A durable sleep.
    Sleep,
    /// A human decision.
    Approval,
    /// A flow node (durable flows).
    Node,
    /// A value someone outside the run supplies (`POST .../inputs/{label}`), checked against
    /// the step's JSON schema; the run awaits it as it awaits an approval.
    Input,
    /// Waits for a named event posted to the run (`POST .../events/{name}`), or fails when its
    /// time-out passes; the run awaits it as it awaits an approval.
    Event,
}

impl StepType {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StepType::Command => "command",
            StepType::Script => "script",
            StepType::Value => "value",
            StepType::Sleep => "sleep",
            StepType::Approval => "approval",
            StepType::Node => "node",
            StepType::Input => "input",
            StepType::Event => "event",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<StepType> {
        [
            StepType::Command,
            StepType::Script,
            StepType::Value,
            StepType::Sleep,
            StepType::Approval,
            StepType::Node,
            StepType::Input,
            StepType::Event,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// Where a journal entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Begun and not ended (a script step's job, a sleep, an approval).
    Started,
    /// Ended with a result.
    Completed,
    /// Ended with an error; replays fail the same way.
    Failed,
}

impl StepStatus {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Started => "started",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<StepStatus> {
        [StepStatus::Started, StepStatus::Completed, StepStatus::Failed].into_iter().find(|t| t.as_str() == s)
    }
}

/// A workflow run: the record the engine keeps current in memory while the run lives and
/// commits on every change (storage converts it to and from its row).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// `run_<ms>_<seq>`.
    pub id: String,
    /// Display name.
    pub script_name: String,
    /// The configured workflow it runs, if any.
    pub workflow_id: Option<String>,
    /// The interpreter of an inline source.
    pub interpreter: Option<String>,
    /// The flow it runs durably, if any.
    pub flow: Option<String>,
    /// Where it is in its life.
    pub status: RunStatus,
    /// Arguments (any JSON).
    pub args: Value,
    /// The source, pinned at launch.
    pub source: String,
    /// sha256 of `source`.
    pub source_sha256: String,
    /// What its last execution printed on stdout (JSON, or the text as a string).
    pub output: Option<Value>,
    /// Why it ended, for a run that did not complete.
    pub error: Option<String>,
    /// Things a user should know (a label requested twice, an execution restarted).
    pub warnings: Vec<String>,
    /// The key that makes its launch idempotent.
    pub idempotency_key: Option<String>,
    /// sha256 of what was launched (an idempotent launch must match it).
    pub request_sha256: String,
    /// sha256 of the current execution's token.
    pub token_sha256: String,
    /// The run it was forked from.
    pub forked_from: Option<String>,
    /// The pid of its running execution.
    pub pid: Option<i32>,
    /// Executions so far.
    pub attempt: i32,
    /// Progress reported by the workflow: current, total, message.
    pub progress: Option<Progress>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// First execution's start.
    pub started_at: Option<i64>,
    /// When it became terminal.
    pub finished_at: Option<i64>,
    /// Last sign of life of its execution.
    pub last_heartbeat_at: Option<i64>,
    /// The cluster node that holds the run (`None` on SQLite).
    pub node: Option<String>,
    /// What the run awaits (`{label, kind, ...}` of the started step someone outside the run
    /// ends), set with the `awaiting` status; shown only while the run is `awaiting`.
    pub waiting_for: Option<Value>,
    /// The launch's retry option: a failed execution is re-run (with replay) while attempts
    /// remain. Fixed at launch.
    pub retry: Option<RetryPolicy>,
    /// The failed executions a retry re-ran, oldest first: each the wire `RunAttempt` JSON
    /// (built by `view::attempt_view`), holding the journal entries moved out of the journal.
    pub attempts: Vec<Value>,
    /// When the next execution of a retried run starts (Unix ms); `None` when none waits.
    pub next_attempt_at: Option<i64>,
}

/// A run's retry option (`retry: {attempts, delayMs}` on launch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Executions the run may take in all, the first one included ([`RetryPolicy::MAX_ATTEMPTS`]
    /// at most): `3` re-runs a failed run at most twice.
    pub attempts: u32,
    /// Milliseconds between a failed execution's end and the next one's start.
    pub delay_ms: u64,
}

impl RetryPolicy {
    /// Most executions a retry option may allow: enough for any sane back-off, and a bound on
    /// the attempt history a run stores.
    pub const MAX_ATTEMPTS: u32 = 100;
    /// Longest delay between two executions: one day (`workflows.maxWallMs`' default).
    pub const MAX_DELAY_MS: u64 = 86_400_000;

    /// A checked option, or the message that says which value is out of range.
    pub fn new(attempts: u64, delay_ms: u64) -> Result<RetryPolicy, String> {
        let attempts = u32::try_from(attempts)
            .ok()
            .filter(|a| (1..=RetryPolicy::MAX_ATTEMPTS).contains(a))
            .ok_or_else(|| format!("retry.attempts must be 1 to {}", RetryPolicy::MAX_ATTEMPTS))?;
        if delay_ms > RetryPolicy::MAX_DELAY_MS {
            return Err(format!("retry.delayMs must be 0 to {}", RetryPolicy::MAX_DELAY_MS));
        }
        Ok(RetryPolicy { attempts, delay_ms })
    }
}

/// Progress a workflow reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Done so far.
    pub current: i64,
    /// Out of.
    pub total: i64,
    /// What it is doing.
    pub message: Option<String>,
}

impl Run {
    /// A run that has not executed yet; callers fill in what the run is.
    pub fn fresh(id: String, now: i64) -> Run {
        Run {
            id,
            script_name: String::new(),
            workflow_id: None,
            interpreter: None,
            flow: None,
            status: RunStatus::Running,
            args: Value::Object(Default::default()),
            source: String::new(),
            source_sha256: String::new(),
            output: None,
            error: None,
            warnings: Vec::new(),
            idempotency_key: None,
            request_sha256: String::new(),
            token_sha256: String::new(),
            forked_from: None,
            pid: None,
            attempt: 0,
            progress: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            last_heartbeat_at: None,
            node: None,
            waiting_for: None,
            retry: None,
            attempts: Vec::new(),
            next_attempt_at: None,
        }
    }
}

/// One journal entry: a step of a run, by label.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// The run.
    pub run_id: String,
    /// The step's label (unique in the run).
    pub label: String,
    /// Order in the journal.
    pub seq: i64,
    /// What the step does.
    pub step_type: StepType,
    /// What the step was asked to do (compared on replay).
    pub config: Value,
    /// Where it is.
    pub status: StepStatus,
    /// Its result.
    pub result: Option<Value>,
    /// The error of a failed step.
    pub error: Option<String>,
    /// The job a script step runs.
    pub job_id: Option<String>,
    /// Milliseconds since the epoch.
    pub started_at: i64,
    /// When it ended.
    pub completed_at: Option<i64>,
    /// How long it took.
    pub duration_ms: Option<i64>,
    /// A retried step's failed attempts, oldest first (empty for a step never retried). The
    /// step's own `result`/`error` are its last attempt's.
    pub attempts: Vec<Attempt>,
}

/// One failed try of a retried step (`--retry N`), journaled before the next try waits, so a
/// restarted run knows which attempt numbers have run and runs only the next one.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1 for the first try.
    pub attempt: u32,
    /// The exit code (a script step's job code; `None` when its job had none, e.g. cancelled).
    pub exit_code: Option<i64>,
    /// Why it failed (`exit code 3`, `timed out after 2s`, `job ... failed with exit code 1`).
    pub error: String,
    /// The last bytes of its stderr (at most [`ATTEMPT_STDERR_TAIL`]).
    pub stderr_tail: String,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms.
    pub ended_at: i64,
    /// The job of a script step's attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Most bytes of an attempt's stderr kept in the journal (its tail).
pub const ATTEMPT_STDERR_TAIL: usize = 4096;

/// The last at most `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
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
    /// POST the run to this callback when it ends (checked by [`crate::callbacks::check`]).
    pub callback: Option<crate::callbacks::Target>,
    /// Re-run a failed run with replay (checked by [`RetryPolicy::new`]).
    pub retry: Option<RetryPolicy>,
}

/// A launched run: the run, and whether it already existed under the idempotency key.
pub struct Launched {
    /// The run.
    pub run: Run,
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

/// What the step client should do after `RunManager::begin_step`.
#[derive(Debug)]
pub enum Begun {
    /// The step has ended (journaled before, or a script step the server just ran): use it.
    Done(JournalEntry),
    /// Not journaled: execute it and record the result.
    Execute,
    /// Journaled as started (a sleep or an approval): carry on waiting for it.
    Resume(JournalEntry),
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
    /// `completed` or `failed` (a record cannot start a step); `None` when the client sent
    /// a spelling that is no step status (refused as `started` is, in the engine's order of
    /// checks).
    pub status: Option<StepStatus>,
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

impl StepType {
    /// Whether a started entry of this type makes the run `awaiting` until someone outside
    /// the run ends it (a decision, an input), and may park its process meanwhile.
    pub fn awaits_outside(self) -> bool {
        matches!(self, StepType::Approval | StepType::Input | StepType::Event)
    }
}

/// A value submitted for an input step.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The value (checked against the step's schema before it is journaled).
    pub value: Value,
    /// Who submitted it.
    pub by: Option<String>,
}

#[cfg(test)]
impl JournalEntry {
    /// An entry of run `run_1_1` for the rules' unit tests (started at 0, no result yet).
    pub fn for_test(label: &str, step_type: StepType, config: Value, status: StepStatus) -> JournalEntry {
        JournalEntry {
            run_id: "run_1_1".into(),
            label: label.into(),
            seq: 0,
            step_type,
            config,
            status,
            result: None,
            error: None,
            job_id: None,
            started_at: 0,
            completed_at: None,
            duration_ms: None,
            attempts: Vec::new(),
        }
    }
}
