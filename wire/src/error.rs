//! The error envelope every route answers with on failure.

use serde::{Deserialize, Serialize};

/// `{"ok": false, "error": {"code": "...", "message": "..."}}`. (Its OpenAPI schema is the
/// server's, `http/openapi.rs`: the list of codes is the server's.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always false.
    pub ok: bool,
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code (stable, for programs) and the message (for people) of an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// `SCRIPT_NOT_FOUND`, `STEP_DIVERGED`, ...
    pub code: String,
    /// What happened, in words.
    pub message: String,
}

impl ErrorBody {
    /// The envelope for `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody { ok: false, error: ErrorDetail { code: code.into(), message: message.into() } }
    }
}
