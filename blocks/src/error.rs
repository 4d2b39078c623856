//! What can go wrong in a block: a request to the server (the client's error, said as it
//! says it), a bad input, work that did not succeed, or a block that does not exist.

use script_runner_client::HttpError;

/// What can go wrong in a block.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// A request to script-runner failed (unreachable, HTTP error, time-out, malformed answer).
    #[error(transparent)]
    Client(#[from] HttpError),
    /// An input is missing or of the wrong type.
    #[error("input {handle}: {message}")]
    Input {
        /// The input handle.
        handle: String,
        /// What is wrong.
        message: String,
    },
    /// The block ran but its work did not succeed (e.g. a wait that timed out).
    #[error("{0}")]
    Failed(String),
    /// No block has this name.
    #[error("unknown block {0:?}")]
    UnknownBlock(String),
}
