//! The one place where errors become HTTP statuses and the upstream error envelope
//! `{"ok": false, "error": {"code", "message"}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use script_runner_wire::ErrorBody;

use crate::db::StoreError;
use crate::jobs::JobError;
use crate::metrics::MetricsError;
use crate::runs::RunError;

/// What a client waiting out a lost database is told to wait before trying again (seconds).
const STORE_RETRY_AFTER_SECS: u32 = 5;

/// Every error an endpoint can answer. Client mistakes are 4xx with a code the client can act
/// on; anything else is a logged 500 `INTERNAL_ERROR`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not a JSON object.
    #[error("{0}")]
    InvalidJson(String),
    /// The body is over the limit.
    #[error("request body over {0} bytes")]
    PayloadTooLarge(usize),
    /// Unknown script id.
    #[error("{0}")]
    ScriptNotFound(String),
    /// A request field breaks the rules.
    #[error("{0}")]
    InvalidArgs(String),
    /// Unknown job id.
    #[error("{0}")]
    JobNotFound(String),
    /// No such route.
    #[error("route not found: {method} {path}")]
    NotFound {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// Known route, other method.
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Queue full.
    #[error("{0}")]
    QueueFull(String),
    /// Shutting down.
    #[error("{0}")]
    ShuttingDown(String),
    /// `server.maxStreams` event streams are open (`429 TOO_MANY_STREAMS`).
    #[error("{0} event streams are open, the most this server keeps (server.maxStreams); try again later")]
    TooManyStreams(usize),
    /// A job idempotency key reused for another script or other arguments.
    #[error("{0}")]
    IdempotencyConflict(String),
    /// A request field is missing or malformed (the run API's name for it).
    #[error("{0}")]
    InvalidRequest(String),
    /// A workflow-run error other than the generic ones above, with its own status and code.
    #[error("{message}")]
    Run {
        /// HTTP status.
        status: StatusCode,
        /// Machine-readable code.
        code: &'static str,
        /// What happened.
        message: String,
    },
    /// The database cannot be reached (a PostgreSQL server down or restarting): the request
    /// may be tried again later. The detail (which server, libpq's words) is logged, not
    /// answered.
    #[error("the database is unreachable; try again later")]
    StoreUnavailable(String),
    /// A job's logs are on a cluster node that is gone (`503 LOG_OWNER_DOWN`, naming it).
    #[error("{0}")]
    LogOwnerDown(String),
    /// This node of a cluster lost its lease and is stopping (`503 NODE_FENCED`).
    #[error("{0}")]
    Fenced(String),
    /// Another node's error answer, passed on.
    #[error("{message}")]
    Remote {
        /// Its status.
        status: StatusCode,
        /// Its code.
        code: String,
        /// Its message.
        message: String,
    },
    /// Anything else (logged).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            ApiError::LogOwnerDown(_) => "LOG_OWNER_DOWN",
            ApiError::Fenced(_) => "NODE_FENCED",
            ApiError::Remote { code, .. } => code,
            ApiError::InvalidJson(_) => "INVALID_JSON",
            ApiError::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            ApiError::ScriptNotFound(_) => "SCRIPT_NOT_FOUND",
            ApiError::InvalidArgs(_) => "INVALID_ARGS",
            ApiError::JobNotFound(_) => "JOB_NOT_FOUND",
            ApiError::NotFound { .. } => "NOT_FOUND",
            ApiError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            ApiError::Unauthorized => "UNAUTHORIZED",
            ApiError::QueueFull(_) => "QUEUE_FULL",
            ApiError::TooManyStreams(_) => "TOO_MANY_STREAMS",
            ApiError::ShuttingDown(_) => "SHUTTING_DOWN",
            ApiError::IdempotencyConflict(_) => "IDEMPOTENCY_CONFLICT",
            ApiError::InvalidRequest(_) => "INVALID_REQUEST",
            ApiError::Run { code, .. } => code,
            ApiError::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> ApiError {
        let message = e.to_string();
        match e {
            JobError::ScriptNotFound(_) => ApiError::ScriptNotFound(message),
            JobError::InvalidArgs(_) => ApiError::InvalidArgs(message),
            JobError::JobNotFound(_) => ApiError::JobNotFound(message),
            JobError::QueueFull { .. } => ApiError::QueueFull(message),
            JobError::ShuttingDown => ApiError::ShuttingDown(message),
            JobError::IdempotencyConflict { .. } => ApiError::IdempotencyConflict(message),
            JobError::Store(StoreError::Unavailable(_)) => ApiError::StoreUnavailable(message),
            JobError::Store(StoreError::Fenced(_)) => ApiError::Fenced(message),
            JobError::LogOwnerDown { .. } => ApiError::LogOwnerDown(message),
            JobError::Peer(crate::cluster::peer::PeerError::Answered { status, code, message, .. }) => {
                ApiError::Remote {
                    status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    code,
                    message,
                }
            }
            JobError::Peer(_) => ApiError::LogOwnerDown(message),
            JobError::Store(_) | JobError::Log { .. } | JobError::Task(_) => ApiError::Internal(message),
        }
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> ApiError {
        let message = e.to_string();
        let run = |status: StatusCode, code: &'static str| ApiError::Run { status, code, message: message.clone() };
        match e {
            RunError::InvalidRequest(_) => ApiError::InvalidRequest(message),
            RunError::ArgsTooLarge(_) => run(StatusCode::PAYLOAD_TOO_LARGE, "ARGS_TOO_LARGE"),
            RunError::WorkflowNotFound(_) => run(StatusCode::NOT_FOUND, "WORKFLOW_NOT_FOUND"),
            RunError::FlowNotFound(_) => run(StatusCode::NOT_FOUND, "FLOW_NOT_FOUND"),
            RunError::InlineDisabled => run(StatusCode::FORBIDDEN, "INLINE_SOURCE_DISABLED"),
            RunError::UnknownInterpreter(..) => run(StatusCode::BAD_REQUEST, "UNKNOWN_INTERPRETER"),
            RunError::LabelLint(_) => run(StatusCode::BAD_REQUEST, "label_lint_violation"),
            RunError::IdempotencyConflict(..) => run(StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT"),
            RunError::RunNotFound(_) => run(StatusCode::NOT_FOUND, "RUN_NOT_FOUND"),
            RunError::InvalidState(_) => run(StatusCode::CONFLICT, "INVALID_STATE"),
            RunError::OnOtherNode { .. } => run(StatusCode::CONFLICT, "RUN_ON_OTHER_NODE"),
            RunError::OwnerDown { .. } => run(StatusCode::SERVICE_UNAVAILABLE, "RUN_OWNER_DOWN"),
            RunError::LogOwnerDown { .. } => ApiError::LogOwnerDown(message.clone()),
            RunError::Peer(crate::cluster::peer::PeerError::Answered { status, code, message, .. }) => {
                ApiError::Remote {
                    status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    code,
                    message,
                }
            }
            RunError::Peer(_) => run(StatusCode::SERVICE_UNAVAILABLE, "RUN_OWNER_DOWN"),
            RunError::StepNotFound(_) => run(StatusCode::NOT_FOUND, "STEP_NOT_FOUND"),
            RunError::StepDiverged(_) => run(StatusCode::CONFLICT, "STEP_DIVERGED"),
            RunError::AlreadyDecided(_) => run(StatusCode::CONFLICT, "ALREADY_DECIDED"),
            RunError::Forbidden(_) => run(StatusCode::FORBIDDEN, "FORBIDDEN"),
            RunError::RunNotActive(..) => run(StatusCode::CONFLICT, "RUN_NOT_ACTIVE"),
            RunError::LimitExceeded(_) => run(StatusCode::CONFLICT, "LIMIT_EXCEEDED"),
            RunError::ShuttingDown => ApiError::ShuttingDown(message),
            RunError::Job(job) => ApiError::from(job),
            RunError::Store(StoreError::Unavailable(_)) => ApiError::StoreUnavailable(message),
            RunError::Store(StoreError::Fenced(_)) => ApiError::Fenced(message),
            RunError::Store(_)
            | RunError::File { .. }
            | RunError::Randomness(_)
            | RunError::Task(_)
            | RunError::NoOwnExecutable
            | RunError::EntryVanished { .. }
            | RunError::StepWithoutJob(_) => ApiError::Internal(message),
        }
    }
}

/// The metrics could not be rendered: a bug, answered 500 and logged.
impl From<MetricsError> for ApiError {
    fn from(e: MetricsError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::ScriptNotFound(_)
            | ApiError::InvalidArgs(_)
            | ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::JobNotFound(_) | ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::QueueFull(_) | ApiError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ShuttingDown(_)
            | ApiError::StoreUnavailable(_)
            | ApiError::LogOwnerDown(_)
            | ApiError::Fenced(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Remote { status, .. } => *status,
            ApiError::IdempotencyConflict(_) => StatusCode::CONFLICT,
            ApiError::Run { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Internal(message) => log::error!("internal error: {message}"),
            ApiError::StoreUnavailable(detail) => log::warn!("answered 503 STORE_UNAVAILABLE: {detail}"),
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            ApiError::StoreUnavailable(_) => {
                response.insert_header(("Retry-After", STORE_RETRY_AFTER_SECS.to_string()));
            }
            _ => {}
        }
        response.json(ErrorBody::new(self.code(), self.to_string()))
    }
}
