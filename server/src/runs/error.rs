//! What can go wrong with a run request, typed, with the cause kept as the error's source.

use crate::db::StoreError;
use crate::jobs::JobError;

use super::MAX_ARGS_BYTES;

/// What can go wrong with a run request. The HTTP layer maps each to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run is held by another node of the cluster: send the request there (its address
    /// is in `GET /cluster`).
    #[error("run {id} is held by node {node} of the cluster; send this request to that node (GET /cluster lists its address)")]
    OnOtherNode {
        /// The run.
        id: String,
        /// The node that holds it.
        node: String,
    },
    /// The run is held by a node of the cluster that is gone; another node takes it within the
    /// lease, and the request can be sent again then.
    #[error("run {id} is held by node {node}, which is {state}; another node takes it over within the cluster's lease: try again shortly")]
    OwnerDown {
        /// The run.
        id: String,
        /// The node that held it.
        node: String,
        /// What that node is.
        state: String,
    },
    /// The log of an execution is on a node of the cluster that is gone or does not answer.
    #[error("this execution's log is on node {node}, which is {state}; it cannot be read until that node is back")]
    LogOwnerDown {
        /// The node.
        node: String,
        /// What it is.
        state: String,
    },
    /// The node holding the run answered an error (passed on).
    #[error("{0}")]
    Peer(#[from] crate::cluster::peer::PeerError),
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
    /// The approval was already decided (or the input already given, the event delivered).
    #[error("step {0:?} was already decided")]
    AlreadyDecided(String),
    /// A resume URL whose token this server did not sign (malformed, altered, of another
    /// secret, or no `resume.secret` configured), or whose step is not there: deliberately
    /// one answer, which does not say what was wrong.
    #[error("no such resume URL")]
    ResumeUrlNotFound,
    /// A resume URL past its expiry (the ISO time it expired at).
    #[error("this resume URL expired at {0}")]
    ResumeUrlExpired(String),
    /// An input step's value does not match the step's JSON schema (nothing is journaled).
    #[error("input {label:?}: the value does not match its schema at {path}: {reason}")]
    InputInvalid {
        /// The step's label.
        label: String,
        /// Where in the value (a JSON pointer, `/` for the value itself).
        path: String,
        /// What the schema wanted.
        reason: String,
    },
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
    /// A file of the run (its source, args, logs, the flows folder) could not be read or
    /// written; `what` says which and what was being done.
    #[error("{what}: {source}")]
    File {
        /// E.g. `cannot write the files of run run_1_2`.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The system gave no randomness for a run token. (Kept as it is: without its `std`
    /// feature, `getrandom::Error` is no `std::error::Error` to chain as a source.)
    #[error("no randomness for the run token: {0}")]
    Randomness(getrandom::Error),
    /// A blocking storage or file task panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The server cannot find its own executable (`script-runner flow run` runs flows).
    #[error("cannot locate script-runner itself")]
    NoOwnExecutable,
    /// A journal entry just written could not be read back (storage lost it).
    #[error("the journal entry {label:?} of run {run_id} vanished")]
    EntryVanished {
        /// The run.
        run_id: String,
        /// The label.
        label: String,
    },
    /// A started script step names no job (the journal is damaged).
    #[error("script step {0:?} has no job")]
    StepWithoutJob(String),
}

impl RunError {
    /// A file error: `what` was being done when `source` happened.
    pub fn file(what: impl Into<String>, source: std::io::Error) -> RunError {
        RunError::File { what: what.into(), source }
    }
}
