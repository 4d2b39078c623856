//! The one place where errors become HTTP statuses and the upstream error envelope
//! `{"ok": false, "error": {"code", "message"}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use script_runner_wire::ErrorBody;

use crate::db::StoreError;
use crate::jobs::JobError;
use crate::metrics::MetricsError;
use crate::runs::RunError;

/// Defines [`Code`] from one list: each variant with its spelling, and [`Code::ALL`] listing
/// them, so a code added here is in the OpenAPI document's `ErrorBody` at once.
macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// Every machine-readable code an error answer can carry (`error.code`). `ApiError::code`
        /// names one of these for every variant but [`ApiError::Remote`], which passes on the
        /// code another node (the same program) answered.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// Every code, in the order defined (the OpenAPI document enumerates them so).
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The spelling on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }
        }
    };
}

codes! {
    /// The body is not JSON, or not a JSON object.
    InvalidJson = "INVALID_JSON",
    /// The body is over the limit.
    PayloadTooLarge = "PAYLOAD_TOO_LARGE",
    /// Unknown script id.
    ScriptNotFound = "SCRIPT_NOT_FOUND",
    /// A field or query parameter of the job API breaks the rules.
    InvalidArgs = "INVALID_ARGS",
    /// Unknown job id.
    JobNotFound = "JOB_NOT_FOUND",
    /// No such route.
    NotFound = "NOT_FOUND",
    /// Known route, other method.
    MethodNotAllowed = "METHOD_NOT_ALLOWED",
    /// Missing or wrong token.
    Unauthorized = "UNAUTHORIZED",
    /// The job queue is full.
    QueueFull = "QUEUE_FULL",
    /// As many event streams are open as `server.maxStreams` allows.
    TooManyStreams = "TOO_MANY_STREAMS",
    /// The server is shutting down.
    ShuttingDown = "SHUTTING_DOWN",
    /// An idempotency key reused for another request.
    IdempotencyConflict = "IDEMPOTENCY_CONFLICT",
    /// A field of the run API is missing or malformed.
    InvalidRequest = "INVALID_REQUEST",
    /// A run's arguments are over the limit.
    ArgsTooLarge = "ARGS_TOO_LARGE",
    /// Unknown workflow id.
    WorkflowNotFound = "WORKFLOW_NOT_FOUND",
    /// Unknown flow.
    FlowNotFound = "FLOW_NOT_FOUND",
    /// Inline sources are not allowed.
    InlineSourceDisabled = "INLINE_SOURCE_DISABLED",
    /// An interpreter `workflows.interpreters` does not name.
    UnknownInterpreter = "UNKNOWN_INTERPRETER",
    /// A step label breaks the lint (upstream's lower-case spelling).
    LabelLintViolation = "label_lint_violation",
    /// Unknown run id.
    RunNotFound = "RUN_NOT_FOUND",
    /// The run's status does not allow the request.
    InvalidState = "INVALID_STATE",
    /// The run is held by another node that cannot be asked.
    RunOnOtherNode = "RUN_ON_OTHER_NODE",
    /// The node that holds the run is gone.
    RunOwnerDown = "RUN_OWNER_DOWN",
    /// No journal entry with that label.
    StepNotFound = "STEP_NOT_FOUND",
    /// A replayed step asks something else than its journal entry.
    StepDiverged = "STEP_DIVERGED",
    /// The approval is already decided.
    AlreadyDecided = "ALREADY_DECIDED",
    /// An input step's value does not match its JSON schema (the message names where).
    InputInvalid = "INPUT_INVALID",
    /// A resume URL this server did not issue, or whose step is not there (not saying which).
    ResumeUrlNotFound = "RESUME_URL_NOT_FOUND",
    /// A resume URL past its expiry (`resume.ttlSec` after its step began).
    ResumeUrlExpired = "RESUME_URL_EXPIRED",
    /// A run token of another run or execution, or a state change a browser marks as sent
    /// from another site (the cross-site guard).
    Forbidden = "FORBIDDEN",
    /// The run is not running (its execution may not record steps).
    RunNotActive = "RUN_NOT_ACTIVE",
    /// A guardrail (`workflows.maxSteps`, ...) stopped the run.
    LimitExceeded = "LIMIT_EXCEEDED",
    /// The database cannot be reached.
    StoreUnavailable = "STORE_UNAVAILABLE",
    /// The logs are on a cluster node that is gone.
    LogOwnerDown = "LOG_OWNER_DOWN",
    /// This node lost its lease and is stopping.
    NodeFenced = "NODE_FENCED",
    /// A callback URL that is malformed, names a host outside `callbacks.allowedHosts`, or
    /// asked for while no `callbacks.secret` is configured.
    CallbackNotAllowed = "CALLBACK_NOT_ALLOWED",
    /// Anything else (logged).
    InternalError = "INTERNAL_ERROR",
}

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
    /// A callback the server will not call.
    #[error("{0}")]
    CallbackNotAllowed(String),
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
        code: Code,
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
            ApiError::Remote { code, .. } => code,
            _ => self.own_code().map_or("INTERNAL_ERROR", Code::as_str),
        }
    }

    /// The code of every variant this server answers itself (all but [`ApiError::Remote`]).
    fn own_code(&self) -> Option<Code> {
        Some(match self {
            ApiError::LogOwnerDown(_) => Code::LogOwnerDown,
            ApiError::Fenced(_) => Code::NodeFenced,
            ApiError::Remote { .. } => return None,
            ApiError::InvalidJson(_) => Code::InvalidJson,
            ApiError::PayloadTooLarge(_) => Code::PayloadTooLarge,
            ApiError::ScriptNotFound(_) => Code::ScriptNotFound,
            ApiError::InvalidArgs(_) => Code::InvalidArgs,
            ApiError::JobNotFound(_) => Code::JobNotFound,
            ApiError::CallbackNotAllowed(_) => Code::CallbackNotAllowed,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::MethodNotAllowed { .. } => Code::MethodNotAllowed,
            ApiError::Unauthorized => Code::Unauthorized,
            ApiError::QueueFull(_) => Code::QueueFull,
            ApiError::TooManyStreams(_) => Code::TooManyStreams,
            ApiError::ShuttingDown(_) => Code::ShuttingDown,
            ApiError::IdempotencyConflict(_) => Code::IdempotencyConflict,
            ApiError::InvalidRequest(_) => Code::InvalidRequest,
            ApiError::Run { code, .. } => *code,
            ApiError::StoreUnavailable(_) => Code::StoreUnavailable,
            ApiError::Internal(_) => Code::InternalError,
        })
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> ApiError {
        let message = e.to_string();
        match e {
            JobError::ScriptNotFound(_) => ApiError::ScriptNotFound(message),
            JobError::InvalidArgs(_) => ApiError::InvalidArgs(message),
            JobError::JobNotFound(_) => ApiError::JobNotFound(message),
            JobError::CallbackNotAllowed(_) => ApiError::CallbackNotAllowed(message),
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
        let run = |status: StatusCode, code: Code| ApiError::Run { status, code, message: message.clone() };
        match e {
            RunError::InvalidRequest(_) => ApiError::InvalidRequest(message),
            RunError::ArgsTooLarge(_) => run(StatusCode::PAYLOAD_TOO_LARGE, Code::ArgsTooLarge),
            RunError::WorkflowNotFound(_) => run(StatusCode::NOT_FOUND, Code::WorkflowNotFound),
            RunError::FlowNotFound(_) => run(StatusCode::NOT_FOUND, Code::FlowNotFound),
            RunError::InlineDisabled => run(StatusCode::FORBIDDEN, Code::InlineSourceDisabled),
            RunError::UnknownInterpreter(..) => run(StatusCode::BAD_REQUEST, Code::UnknownInterpreter),
            RunError::LabelLint(_) => run(StatusCode::BAD_REQUEST, Code::LabelLintViolation),
            RunError::IdempotencyConflict(..) => run(StatusCode::CONFLICT, Code::IdempotencyConflict),
            RunError::RunNotFound(_) => run(StatusCode::NOT_FOUND, Code::RunNotFound),
            RunError::InvalidState(_) => run(StatusCode::CONFLICT, Code::InvalidState),
            RunError::OnOtherNode { .. } => run(StatusCode::CONFLICT, Code::RunOnOtherNode),
            RunError::OwnerDown { .. } => run(StatusCode::SERVICE_UNAVAILABLE, Code::RunOwnerDown),
            RunError::LogOwnerDown { .. } => ApiError::LogOwnerDown(message.clone()),
            RunError::Peer(crate::cluster::peer::PeerError::Answered { status, code, message, .. }) => {
                ApiError::Remote {
                    status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    code,
                    message,
                }
            }
            RunError::Peer(_) => run(StatusCode::SERVICE_UNAVAILABLE, Code::RunOwnerDown),
            RunError::StepNotFound(_) => run(StatusCode::NOT_FOUND, Code::StepNotFound),
            RunError::StepDiverged(_) => run(StatusCode::CONFLICT, Code::StepDiverged),
            RunError::AlreadyDecided(_) => run(StatusCode::CONFLICT, Code::AlreadyDecided),
            RunError::InputInvalid { .. } => run(StatusCode::BAD_REQUEST, Code::InputInvalid),
            RunError::ResumeUrlNotFound => run(StatusCode::NOT_FOUND, Code::ResumeUrlNotFound),
            RunError::ResumeUrlExpired(_) => run(StatusCode::GONE, Code::ResumeUrlExpired),
            RunError::Forbidden(_) => run(StatusCode::FORBIDDEN, Code::Forbidden),
            RunError::RunNotActive(..) => run(StatusCode::CONFLICT, Code::RunNotActive),
            RunError::LimitExceeded(_) => run(StatusCode::CONFLICT, Code::LimitExceeded),
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
            | ApiError::CallbackNotAllowed(_)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of every variant (a new variant fails to compile here until it is added).
    fn one_of_each() -> Vec<ApiError> {
        let every = |e: &ApiError| match e {
            ApiError::InvalidJson(_)
            | ApiError::PayloadTooLarge(_)
            | ApiError::ScriptNotFound(_)
            | ApiError::InvalidArgs(_)
            | ApiError::JobNotFound(_)
            | ApiError::CallbackNotAllowed(_)
            | ApiError::NotFound { .. }
            | ApiError::MethodNotAllowed { .. }
            | ApiError::Unauthorized
            | ApiError::QueueFull(_)
            | ApiError::TooManyStreams(_)
            | ApiError::ShuttingDown(_)
            | ApiError::IdempotencyConflict(_)
            | ApiError::InvalidRequest(_)
            | ApiError::Run { .. }
            | ApiError::StoreUnavailable(_)
            | ApiError::LogOwnerDown(_)
            | ApiError::Fenced(_)
            | ApiError::Remote { .. }
            | ApiError::Internal(_) => (),
        };
        let s = || String::from("x");
        let route = || (String::from("GET"), String::from("/x"));
        let all = vec![
            ApiError::InvalidJson(s()),
            ApiError::PayloadTooLarge(1),
            ApiError::ScriptNotFound(s()),
            ApiError::InvalidArgs(s()),
            ApiError::JobNotFound(s()),
            ApiError::CallbackNotAllowed(s()),
            ApiError::NotFound { method: route().0, path: route().1 },
            ApiError::MethodNotAllowed { method: route().0, path: route().1 },
            ApiError::Unauthorized,
            ApiError::QueueFull(s()),
            ApiError::TooManyStreams(1),
            ApiError::ShuttingDown(s()),
            ApiError::IdempotencyConflict(s()),
            ApiError::InvalidRequest(s()),
            ApiError::Run { status: StatusCode::CONFLICT, code: Code::StepDiverged, message: s() },
            ApiError::StoreUnavailable(s()),
            ApiError::LogOwnerDown(s()),
            ApiError::Fenced(s()),
            ApiError::Remote { status: StatusCode::NOT_FOUND, code: "RUN_NOT_FOUND".into(), message: s() },
            ApiError::Internal(s()),
        ];
        all.iter().for_each(every);
        all
    }

    #[test]
    fn every_error_answers_a_code_the_document_enumerates() {
        let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        for error in one_of_each() {
            assert!(codes.contains(&error.code()), "{error:?} answers {:?}, not in Code::ALL", error.code());
        }
    }

    #[test]
    fn codes_are_spelled_once() {
        let mut codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Code::ALL.len(), "a code is spelled twice");
    }
}
