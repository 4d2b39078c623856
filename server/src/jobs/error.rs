//! What can go wrong with a job request: one enum, mapped to HTTP statuses in one place
//! (`http::error`).

use std::path::PathBuf;

use crate::db::StoreError;

/// What can go wrong with a job request. The HTTP layer maps each to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No whitelisted script has this id.
    #[error("script not found: {0}")]
    ScriptNotFound(String),
    /// The arguments (or another request field) break the rules.
    #[error("{0}")]
    InvalidArgs(String),
    /// No job has this id.
    #[error("job not found: {0}")]
    JobNotFound(String),
    /// The request's callback is refused (see [`crate::callbacks::check`]).
    #[error("{0}")]
    CallbackNotAllowed(String),
    /// Running slots and queue are full.
    #[error("queue full: {running} running and {queued} queued (runner.maxQueued is {max_queued})")]
    QueueFull {
        /// Jobs running.
        running: usize,
        /// Jobs waiting.
        queued: usize,
        /// The configured bound.
        max_queued: usize,
    },
    /// The server is stopping and takes no new runs.
    #[error("the server is shutting down and accepts no new runs")]
    ShuttingDown,
    /// The idempotency key was used for another script or other arguments.
    #[error("idempotency key {key:?} was already used for a different script or args (job {job_id})")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The job started under it.
        job_id: String,
    },
    /// Storage failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Reading a log failed.
    #[error("reading log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The job's logs are on a node of the cluster that is gone or does not answer, and nowhere
    /// else.
    #[error("the job's logs are on node {node}, which is {state}; they cannot be read until it is back")]
    LogOwnerDown {
        /// The node that ran the job.
        node: String,
        /// What it is (`dead`, `stopped`, `unreachable`...).
        state: String,
    },
    /// Another node of the cluster answered an error.
    #[error("{0}")]
    Peer(#[from] crate::cluster::peer::PeerError),
    /// A blocking task (storage, a log read) panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
