//! Handlers of the workflow-run API (`/api/script-runs...`) and of the internal routes the
//! step client uses (`/api/internal/script-runs/...`, authorised by the run token).

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use script_runner_wire::events::StreamDropped;
use script_runner_wire::jobs::{CallbackList, CallbackRequest};
use script_runner_wire::runs::{
    ApprovalRequest, ForkRequest, InputRequest, LaunchRequest as WireLaunchRequest, RunAnswer, RunBytesPage, RunDetail,
    RunLinesPage, RunList, RunView,
};
use script_runner_wire::steps::{
    Action, AttemptRequest, BeginAnswer, BeginRequest, ProgressRequest, RecordRequest, StepAnswer,
};
use serde_json::{json, Map, Value};

use super::jobs::{log_query, nonzero, number, Query, BYTES_DEFAULT, LINES_DEFAULT, LIST_DEFAULT, LIST_MAX};
use super::openapi::{ErrorBody, RunListQuery, RunLogPage, RunLogQuery, WaitQuery};
use super::wire::callback_view;
use super::{json_object, sse, ApiError, AppState};
use crate::db::RunFilter;
use crate::runs::events::{StoredEvent, Subscription};
use crate::runs::model::{
    Attempt, Begun, Decision, LaunchRequest, Progress, RetryPolicy, Run, RunStatus, StepRecord, StepRequest,
    StepStatus, StepType, Submission,
};
pub use crate::runs::view::{run_view, step_view};

/// A step protocol request body as its wire type; a body of another shape is `400` with what
/// is wrong and where.
fn step_body<T: serde::de::DeserializeOwned>(body: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(body)).map_err(|e| {
        let path = e.path().to_string();
        let what = if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) };
        ApiError::InvalidRequest(what)
    })
}

/// A step type's spelling as the engine's type.
fn step_type(name: &str) -> Result<StepType, ApiError> {
    StepType::parse(name).ok_or_else(|| {
        ApiError::InvalidRequest(format!(
            "stepType {name:?} must be command, script, value, sleep, approval, node, input or event"
        ))
    })
}

fn optional_string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::InvalidRequest(format!("{key} must be a string"))),
    }
}

/// The launch's `retry` option, checked: `{"attempts": 1..=100, "delayMs"?: 0..=86400000}`
/// (absent or `null`: none).
fn retry_option(value: Option<&Value>) -> Result<Option<RetryPolicy>, ApiError> {
    let shape = || {
        ApiError::InvalidRequest(
            "retry must be {\"attempts\": integer 1 to 100, \"delayMs\"?: integer 0 to 86400000}".into(),
        )
    };
    let object = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(object)) => object,
        Some(_) => return Err(shape()),
    };
    if let Some(key) = object.keys().find(|k| !["attempts", "delayMs"].contains(&k.as_str())) {
        return Err(ApiError::InvalidRequest(format!("unknown field retry.{key} (accepted: attempts, delayMs)")));
    }
    let integer = |key: &str, default: Option<u64>| match object.get(key) {
        None | Some(Value::Null) => default.ok_or_else(shape),
        Some(value) => value.as_u64().ok_or_else(shape),
    };
    let attempts = integer("attempts", None)?;
    let delay_ms = integer("delayMs", Some(0))?;
    RetryPolicy::new(attempts, delay_ms).map(Some).map_err(ApiError::InvalidRequest)
}

/// `POST /api/script-runs`: `201 {ok, run}`; `200 {ok, run, deduplicated: true}` when the
/// idempotency key matched an earlier launch.
#[utoipa::path(
    post,
    path = "/api/script-runs",
    operation_id = "launchRun",
    tag = "runs",
    request_body = WireLaunchRequest,
    responses(
        (status = 200, description = "The run an earlier launch with this `idempotencyKey` started \
            (`deduplicated: true`).", body = RunAnswer),
        (status = 201, description = "The run, launched (`background: false`: ended).", body = RunAnswer),
        (status = 400, description = "`INVALID_JSON`, `INVALID_REQUEST`, `UNKNOWN_INTERPRETER`, \
            `label_lint_violation`, `CALLBACK_NOT_ALLOWED` (see `POST /run`).", body = ErrorBody),
        (status = 403, description = "`INLINE_SOURCE_DISABLED`.", body = ErrorBody),
        (status = 404, description = "`WORKFLOW_NOT_FOUND`, `FLOW_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`IDEMPOTENCY_CONFLICT`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`, `ARGS_TOO_LARGE`.", body = ErrorBody),
    ),
)]
pub async fn launch(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = json_object(payload, &req).await?;
    const KEYS: [&str; 10] = [
        "workflowId",
        "source",
        "interpreter",
        "flow",
        "scriptName",
        "args",
        "idempotencyKey",
        "background",
        "callback",
        "retry",
    ];
    if let Some(key) = body.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(ApiError::InvalidRequest(format!("unknown field {key:?} (accepted: {})", KEYS.join(", "))));
    }
    let background = match body.get("background") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::InvalidRequest("background must be a boolean".into())),
    };
    let request = LaunchRequest {
        workflow_id: optional_string(&body, "workflowId")?,
        source: optional_string(&body, "source")?,
        interpreter: optional_string(&body, "interpreter")?,
        flow: optional_string(&body, "flow")?,
        script_name: optional_string(&body, "scriptName")?,
        args: body.get("args").cloned().unwrap_or_else(|| json!({})),
        idempotency_key: optional_string(&body, "idempotencyKey")?,
        retry: retry_option(body.get("retry"))?,
        callback: match body.get("callback") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let request: CallbackRequest = serde_json::from_value(value.clone()).map_err(|e| {
                    ApiError::InvalidRequest(format!(
                        "callback must be {{\"url\": string, \"events\"?: [string]}}: {e}"
                    ))
                })?;
                let target = crate::callbacks::check(&state.callbacks, &request.url, request.events)
                    .map_err(ApiError::CallbackNotAllowed)?;
                Some(target)
            }
        },
    };
    let launched = state.runs.launch(request).await?;
    if launched.deduplicated {
        return Ok(HttpResponse::Ok().json(RunAnswer {
            deduplicated: Some(true),
            ok: true,
            run: shown(&state, launched.run),
        }));
    }
    let run = if background { launched.run } else { state.runs.wait_terminal(&launched.run.id).await? };
    Ok(HttpResponse::Created().json(RunAnswer { deduplicated: None, ok: true, run: shown(&state, run) }))
}

/// `GET /api/script-runs?status=&scriptName=&limit=&offset=`: newest first.
#[utoipa::path(
    get,
    path = "/api/script-runs",
    operation_id = "listRuns",
    tag = "runs",
    params(RunListQuery),
    responses(
        (status = 200, description = "A page of runs, newest first.", body = RunList),
        (status = 400, description = "`INVALID_ARGS`: a bad filter or number.", body = ErrorBody),
    ),
)]
pub async fn list(state: web::Data<AppState>, query: Query) -> Result<HttpResponse, ApiError> {
    let status = match query.get("status").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(RunStatus::parse(s).map(|s| s.as_str().to_string()).ok_or_else(|| {
            ApiError::InvalidArgs(
                "status must be one of running, awaiting, paused, completed, failed, cancelled, aborted_limit".into(),
            )
        })?),
    };
    let filter = RunFilter {
        status,
        script_name: query.get("scriptName").filter(|s| !s.is_empty()).cloned(),
        limit: number(&query, "limit", LIST_DEFAULT)?.clamp(1, LIST_MAX) as i64,
        offset: i64::try_from(number(&query, "offset", 0)?).unwrap_or(i64::MAX),
    };
    let (runs, total) = state.runs.list(filter).await?;
    Ok(HttpResponse::Ok().json(RunList {
        ok: true,
        runs: runs.into_iter().map(|run| shown(&state, run)).collect(),
        total,
    }))
}

/// `GET /api/script-runs/{id}`: the run and its journal.
#[utoipa::path(
    get,
    path = "/api/script-runs/{id}",
    operation_id = "getRun",
    tag = "runs",
    params(("id" = String, Path, description = "Run id.")),
    responses(
        (status = 200, description = "The run and its journal.", body = RunDetail),
        (status = 404, description = "`RUN_NOT_FOUND`.", body = ErrorBody),
    ),
)]
pub async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (run, journal) = state.runs.get_with_journal(&id).await?;
    let journal = journal.into_iter().map(step_view).collect();
    Ok(HttpResponse::Ok().json(RunDetail { journal, ok: true, run: shown(&state, run) }))
}

/// Events a run's event stream reads from the database at a time: what a stalled reader holds
/// in memory at most (a body is a run or a journal entry, each bounded by the config's limits).
const EVENTS_PAGE: i64 = 16;

/// `GET /api/script-runs/{id}/events`: the run's events as server-sent events (`id:` the
/// event's number in the run, `event:` its kind, `data:` its JSON body; see
/// [`crate::runs::events::EventKind`]), from the database, resumed after `Last-Event-ID` (or
/// `?lastEventId=`). A run that has ended streams what is stored and closes; a live one goes
/// on as events are committed. Unknown run: `404`; a malformed `Last-Event-ID`: `400`; past
/// `server.maxStreams` open streams: `429`.
///
/// If the database fails mid-stream, a last `dropped` event (why, and the `Last-Event-ID` to
/// reconnect with) ends the stream; at shutdown, `shutdown` does (see [`sse::respond`]).
#[utoipa::path(
    get,
    path = "/api/script-runs/{id}/events",
    operation_id = "runEvents",
    tag = "runs",
    params(
        ("id" = String, Path, description = "Run id."),
        ("lastEventId" = Option<u64>, Query, description = "Resume after this event number (for clients \
            that cannot send the `Last-Event-ID` header, which wins)."),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event number."),
    ),
    responses(
        (status = 200, description = "The run's events as server-sent events: `id:` the event's number in \
            the run, `data:` one line of JSON. `status`, `progress`, `paused`, `resumed`, `retrying` (a failed \
            execution the `retry` option re-runs: its `attempts` and `nextAttemptAt`), `end`: the run \
            (`RunView`); `forked`: the new run (`RunView`); `step.begin`, `step.record`, `approval.asked`, \
            `approval.decided`: the journal entry (`StepView`). After `end` the stream closes. `dropped` \
            (`StreamDropped`) ends a stream whose database failed, `shutdown` (`StreamDropped`) one the \
            server stopped; a `: keep-alive` comment while nothing happens.",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "`INVALID_ARGS`: a malformed `Last-Event-ID`.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`.", body = ErrorBody),
        (status = 429, description = "`TOO_MANY_STREAMS`: `server.maxStreams` streams are open.", body = ErrorBody),
    ),
)]
pub async fn events(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let after = sse::last_event_id(&req)?.unwrap_or(0);
    // The first page before a slot is taken: an unknown run is a 404, not a stream.
    let first = state.runs.events_after(&id, after, EVENTS_PAGE).await?;
    let slot = state.streams.open()?;
    let reader = EventReader {
        bell: state.runs.subscribe(&id),
        runs: state.runs.clone(),
        id: id.into_inner(),
        after,
        // Done once a read after the end finds nothing more (an ended run's first page may be
        // one of many).
        ended: first.ended && first.events.is_empty(),
        page: first.events.into(),
        failed: false,
    };
    Ok(sse::respond(slot, futures_util::stream::unfold(reader, EventReader::next)))
}

/// A reader of a run's events: pulls a page from the database only once the client has taken
/// the previous one (the response polls it only then), so a stalled client holds one page and
/// a slow one never makes the run or other readers wait.
struct EventReader {
    runs: crate::runs::RunManager,
    id: String,
    /// The number of the last event handed out.
    after: u64,
    /// Read and not yet handed out.
    page: std::collections::VecDeque<StoredEvent>,
    /// A read found nothing more and the run had ended: the stream ends with `page`.
    ended: bool,
    bell: Subscription,
    /// A read failed: its `dropped` event was the last.
    failed: bool,
}

impl EventReader {
    /// The next event: from the page read, else from the database; when caught up, waits for
    /// the run's bell or the poll interval; `None` once the run has ended and all is read.
    async fn next(mut self) -> Option<(sse::Event, EventReader)> {
        loop {
            if let Some(event) = self.page.pop_front() {
                self.after = event.seq;
                return Some((stored_event(event), self));
            }
            if self.failed || self.ended {
                return None;
            }
            // Heard before the read: a commit after it rings again.
            self.bell.heard();
            match self.runs.events_after(&self.id, self.after, EVENTS_PAGE).await {
                Ok(page) if page.events.is_empty() && !page.ended => self.bell.rung(self.runs.events_poll()).await,
                Ok(page) => {
                    // An ended run's page holds its end: the next read, if empty, closes.
                    self.ended = page.ended && page.events.is_empty();
                    self.page = page.events.into();
                }
                Err(e) => {
                    let e = ApiError::from(e);
                    log::warn!("run {}: event stream ends after event {}: {e}", self.id, self.after);
                    self.failed = true;
                    let body = StreamDropped {
                        reason: format!("the run's events cannot be read: {e}"),
                        resume: format!("reconnect with Last-Event-ID {} (the last event received)", self.after),
                    };
                    return Some((sse::Event::json("dropped", &body), self));
                }
            }
        }
    }
}

/// A stored event as a server-sent event; its body goes out as stored, byte for byte.
fn stored_event(event: StoredEvent) -> sse::Event {
    let kind = event.kind.as_str();
    match serde_json::value::RawValue::from_string(event.body) {
        Ok(body) => sse::Event::json(kind, &body).with_id(event.seq.to_string()),
        // Only a hand-edited database: still numbered, so a resume goes past it.
        Err(_) => sse::Event::json(kind, &Value::Null).with_id(event.seq.to_string()),
    }
}

/// `GET /api/script-runs/{id}/callbacks`: the run's completion callbacks and each attempt.
#[utoipa::path(
    get,
    path = "/api/script-runs/{id}/callbacks",
    operation_id = "getRunCallbacks",
    tag = "runs",
    params(("id" = String, Path, description = "Run id.")),
    responses(
        (status = 200, description = "The run's callbacks (none when it was launched without one).", body = CallbackList),
        (status = 404, description = "`RUN_NOT_FOUND`.", body = ErrorBody),
    ),
)]
pub async fn callbacks(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let callbacks = state.runs.callbacks(&id).await?;
    Ok(HttpResponse::Ok()
        .json(CallbackList { ok: true, callbacks: callbacks.into_iter().map(callback_view).collect() }))
}

/// `DELETE /api/script-runs/{id}`: cancel; a terminal run is returned unchanged.
#[utoipa::path(
    delete,
    path = "/api/script-runs/{id}",
    operation_id = "cancelRun",
    tag = "runs",
    params(("id" = String, Path, description = "Run id.")),
    responses(
        (status = 200, description = "The run, cancelled (a terminal run unchanged).", body = RunAnswer),
        (status = 404, description = "`RUN_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`INVALID_STATE` (the run's status does not allow it), `RUN_ON_OTHER_NODE`.", body = ErrorBody),
    ),
)]
pub async fn cancel(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let run = state.runs.cancel(&id).await?;
    Ok(run_answer(&state, run))
}

/// `POST /api/script-runs/{id}/pause`.
#[utoipa::path(
    post,
    path = "/api/script-runs/{id}/pause",
    operation_id = "pauseRun",
    tag = "runs",
    params(("id" = String, Path, description = "Run id.")),
    responses(
        (status = 200, description = "The run, paused.", body = RunAnswer),
        (status = 404, description = "`RUN_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`INVALID_STATE` (the run's status does not allow it), `RUN_ON_OTHER_NODE`.", body = ErrorBody),
    ),
)]
pub async fn pause(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let run = state.runs.pause(&id).await?;
    Ok(run_answer(&state, run))
}

/// `POST /api/script-runs/{id}/resume`.
#[utoipa::path(
    post,
    path = "/api/script-runs/{id}/resume",
    operation_id = "resumeRun",
    tag = "runs",
    params(("id" = String, Path, description = "Run id.")),
    responses(
        (status = 200, description = "The run, running again.", body = RunAnswer),
        (status = 404, description = "`RUN_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`INVALID_STATE` (the run's status does not allow it), `RUN_ON_OTHER_NODE`.", body = ErrorBody),
    ),
)]
pub async fn resume(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let run = state.runs.resume(&id).await?;
    Ok(run_answer(&state, run))
}

/// `POST /api/script-runs/{id}/fork` `{fromStep?, source?}`: `201 {ok, run}`.
#[utoipa::path(
    post,
    path = "/api/script-runs/{id}/fork",
    operation_id = "forkRun",
    tag = "runs",
    params(("id" = String, Path, description = "Run id.")),
    request_body(content = ForkRequest, description = "Optional: an empty body forks from the start."),
    responses(
        (status = 201, description = "The new run, forked.", body = RunAnswer),
        (status = 400, description = "`INVALID_JSON`, `INVALID_REQUEST`, `STEP_NOT_FOUND`... a bad body.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`INVALID_STATE` (the run's status does not allow it), `RUN_ON_OTHER_NODE`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
    ),
)]
pub async fn fork(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = if req.headers().get(actix_web::http::header::CONTENT_LENGTH).is_some_and(|v| v == "0") {
        Map::new()
    } else {
        json_object(payload, &req).await?
    };
    let run = state.runs.fork(&id, optional_string(&body, "fromStep")?, optional_string(&body, "source")?).await?;
    Ok(HttpResponse::Created().json(RunAnswer { deduplicated: None, ok: true, run: shown(&state, run) }))
}

/// `POST /api/script-runs/{id}/approvals/{label}` `{approved, by?, comment?}`.
#[utoipa::path(
    post,
    path = "/api/script-runs/{id}/approvals/{label}",
    operation_id = "approveStep",
    tag = "runs",
    params(("id" = String, Path, description = "Run id."), ("label" = String, Path, description = "The step's label (`stepKey`).")),
    request_body = ApprovalRequest,
    responses(
        (status = 200, description = "The run, with the decision recorded.", body = RunAnswer),
        (status = 400, description = "`INVALID_JSON`, `INVALID_REQUEST`.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`ALREADY_DECIDED`, `INVALID_STATE`, `RUN_ON_OTHER_NODE`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
    ),
)]
pub async fn approve(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (id, label) = path.into_inner();
    let body = json_object(payload, &req).await?;
    let approved = match body.get("approved") {
        Some(Value::Bool(b)) => *b,
        _ => return Err(ApiError::InvalidRequest("approved (a boolean) is required".into())),
    };
    let decision =
        Decision { approved, by: optional_string(&body, "by")?, comment: optional_string(&body, "comment")? };
    let run = state.runs.approve(&id, &label, decision).await?;
    Ok(run_answer(&state, run))
}

/// `POST /api/script-runs/{id}/inputs/{label}` `{value, by?}`: the value a pending input step
/// waits for. A value its schema refuses is `400 INPUT_INVALID` naming where, and nothing is
/// journaled (a corrected value may follow).
#[utoipa::path(
    post,
    path = "/api/script-runs/{id}/inputs/{label}",
    operation_id = "submitInput",
    tag = "runs",
    params(("id" = String, Path, description = "Run id."), ("label" = String, Path, description = "The step's label (`stepKey`).")),
    request_body = InputRequest,
    responses(
        (status = 200, description = "The run, with the value journaled.", body = RunAnswer),
        (status = 400, description = "`INVALID_JSON`, `INVALID_REQUEST`, `INPUT_INVALID` (the message names the \
            JSON pointer of the first mismatch).", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`ALREADY_DECIDED`, `INVALID_STATE`, `RUN_ON_OTHER_NODE`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
    ),
)]
pub async fn submit_input(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (id, label) = path.into_inner();
    let body = json_object(payload, &req).await?;
    let submission = submission(&body)?;
    let run = state.runs.submit_input(&id, &label, submission).await?;
    Ok(run_answer(&state, run))
}

/// `POST /api/script-runs/{id}/events/{name}` with any JSON body: the event the run's earliest
/// event step waiting for `name` receives (journaled as its `payload`).
#[utoipa::path(
    post,
    path = "/api/script-runs/{id}/events/{name}",
    operation_id = "deliverEvent",
    tag = "runs",
    params(("id" = String, Path, description = "Run id."), ("name" = String, Path, description = "The event's name.")),
    request_body(content = serde_json::Value, description = "The event's payload: any JSON."),
    responses(
        (status = 200, description = "The run, with the event journaled.", body = RunAnswer),
        (status = 400, description = "`INVALID_JSON`.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND` (no step waits for this event).", body = ErrorBody),
        (status = 409, description = "`ALREADY_DECIDED`, `INVALID_STATE`, `RUN_ON_OTHER_NODE`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
    ),
)]
pub async fn deliver_event(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    let body = super::json_value(payload, &req).await?;
    let run = state.runs.deliver_event(&id, &name, body).await?;
    Ok(run_answer(&state, run))
}

/// An input's body `{value, by?}` as the engine's submission (`value` is required: `null` is a
/// value, a missing one a mistake).
pub fn submission(body: &Map<String, Value>) -> Result<Submission, ApiError> {
    let Some(value) = body.get("value") else {
        return Err(ApiError::InvalidRequest("value is required".into()));
    };
    Ok(Submission { value: value.clone(), by: optional_string(body, "by")? })
}

/// Why an execution's log could not all be stored (`stdout: cannot write ...`), from the run's
/// warnings (an execution's storage errors are recorded when it ends), or `None`.
fn execution_output_error(run: &Run, attempt: Option<i32>) -> Option<String> {
    let prefix = format!("execution {}: ", attempt.unwrap_or(run.attempt));
    let errors: Vec<&str> = run
        .warnings
        .iter()
        .filter_map(|w| w.strip_prefix(&prefix))
        .filter(|w| w.contains(": cannot write "))
        .map(|w| w.trim_end_matches(crate::runs::INCOMPLETE_LOG))
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// `GET /api/script-runs/{id}/logs?stream=&offset=&limit=&unit=bytes|lines&attempt=`: the
/// latest execution's log unless `attempt` names another.
#[utoipa::path(
    get,
    path = "/api/script-runs/{id}/logs",
    operation_id = "getRunLogs",
    tag = "runs",
    params(("id" = String, Path, description = "Run id."), RunLogQuery),
    responses(
        (status = 200, description = "A page of the execution's log: bytes or lines.", body = RunLogPage),
        (status = 400, description = "`INVALID_ARGS`: a bad `stream`, `unit` or number.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`.", body = ErrorBody),
    ),
)]
pub async fn logs(state: web::Data<AppState>, id: web::Path<String>, query: Query) -> Result<HttpResponse, ApiError> {
    run_log_page(&state, id.into_inner(), &query, false).await
}

/// A run's log page; `local`: from this node's files only (another node of the cluster asks).
pub(super) async fn run_log_page(
    state: &AppState,
    id: String,
    query: &Query,
    local: bool,
) -> Result<HttpResponse, ApiError> {
    let (stream, lines, offset) = log_query(query)?;
    let attempt = match query.get("attempt").filter(|s| !s.is_empty()) {
        None => None,
        Some(_) => Some(i32::try_from(number(query, "attempt", 1)?).unwrap_or(i32::MAX)),
    };
    // The run is read once: for its warnings and for which log to read.
    let run = state.runs.get(&id).await?;
    let output_error = execution_output_error(&run, attempt);
    if lines {
        let limit = nonzero(number(query, "limit", LINES_DEFAULT)?, LINES_DEFAULT);
        let page = state.runs.read_lines(&run, attempt, stream, offset, limit, local).await?;
        return Ok(HttpResponse::Ok().json(RunLinesPage {
            lines: page.lines,
            next_offset: page.next_offset,
            offset: page.offset,
            ok: true,
            output_error,
            run_id: id.clone(),
            stream: stream.as_str().to_string(),
            total_lines: page.total_lines,
            truncated: false,
        }));
    }
    let limit = nonzero(number(query, "limit", BYTES_DEFAULT)?, BYTES_DEFAULT);
    let page = state.runs.read_bytes(&run, attempt, stream, offset, limit, local).await?;
    Ok(HttpResponse::Ok().json(RunBytesPage {
        data: String::from_utf8_lossy(&page.data).into_owned(),
        next_offset: page.next_offset,
        offset: page.offset,
        ok: true,
        output_error,
        run_id: id.clone(),
        stream: stream.as_str().to_string(),
        total_size: page.total_size,
        truncated: false,
    }))
}

// ---- internal routes (the step client) ----

/// `200 {ok, run}`.
fn run_answer(state: &AppState, run: Run) -> HttpResponse {
    HttpResponse::Ok().json(RunAnswer { deduplicated: None, ok: true, run: shown(state, run) })
}

/// A run as the run API shows it: its view, with the resume URLs of the step it waits for
/// (`waitingFor.resumeUrl`, `denyUrl`, `expiresAt`) when they are configured. They are
/// computed here, on each read, and not in the run's stored events: a working token is never
/// stored.
pub(super) fn shown(state: &AppState, run: Run) -> RunView {
    let links = state.runs.resume_links(&run);
    let mut view = run_view(run);
    if let (Some(links), Some(waiting)) = (links, view.waiting_for.as_mut()) {
        waiting.resume_url = Some(links.resume_url);
        waiting.deny_url = Some(links.deny_url);
        waiting.expires_at = Some(crate::time::iso(links.expires_at));
    }
    view
}

/// The run token from `Authorization: Bearer <token>`.
fn run_token(req: &HttpRequest) -> Result<String, ApiError> {
    super::bearer(req.headers()).filter(|t| !t.is_empty()).map(str::to_string).ok_or(ApiError::Unauthorized)
}

/// The run token of a step request and its body as the wire type `T`, in that order: the
/// token is checked before the body is read, so a missing, wrong or foreign token is
/// `401`/`403` whatever the body holds, and nothing is written.
async fn authorized_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    id: &str,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(String, T), ApiError> {
    let token = run_token(req)?;
    state.runs.check_token(id, &token)?;
    let body = step_body(json_object(payload, req).await?)?;
    Ok((token, body))
}

/// `GET /api/internal/script-runs/{runId}/steps/{stepKey}`: `200 {ok, step}` or `404`.
#[utoipa::path(
    get,
    path = "/api/internal/script-runs/{id}/steps/{label}",
    operation_id = "getStep",
    tag = "steps",
    params(("id" = String, Path, description = "Run id."), ("label" = String, Path, description = "The step's label (`stepKey`).")),
    responses(
        (status = 200, description = "The journal entry.", body = StepAnswer),
        (status = 403, description = "`FORBIDDEN`: the token of another run or execution.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`RUN_NOT_ACTIVE`, `STEP_DIVERGED`, `LIMIT_EXCEEDED`, `INVALID_STATE`.", body = ErrorBody),
    ),
)]
pub async fn get_step(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (id, label) = path.into_inner();
    let token = run_token(&req)?;
    match state.runs.get_step(&id, &token, &label).await? {
        Some(step) => Ok(HttpResponse::Ok().json(StepAnswer { ok: true, step: step_view(step) })),
        None => Err(ApiError::from(crate::runs::RunError::StepNotFound(format!(
            "run {id} has no journal entry labelled {label:?}"
        )))),
    }
}

/// `POST /api/internal/script-runs/{runId}/steps/{stepKey}/begin` `{stepType, config}`:
/// `{ok, action: done|execute|resume, step}`.
#[utoipa::path(
    post,
    path = "/api/internal/script-runs/{id}/steps/{label}/begin",
    operation_id = "beginStep",
    tag = "steps",
    params(("id" = String, Path, description = "Run id."), ("label" = String, Path, description = "The step's label (`stepKey`).")),
    request_body = BeginRequest,
    responses(
        (status = 200, description = "What to do: `done` (replayed), `execute` or `resume`.", body = BeginAnswer),
        (status = 400, description = "`INVALID_JSON`, `INVALID_REQUEST`, `label_lint_violation`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the token of another run or execution.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`RUN_NOT_ACTIVE`, `STEP_DIVERGED`, `LIMIT_EXCEEDED`, `INVALID_STATE`.", body = ErrorBody),
        (status = 429, description = "`QUEUE_FULL` (a script step's job).", body = ErrorBody),
    ),
)]
pub async fn begin_step(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (id, label) = path.into_inner();
    let (token, body): (String, BeginRequest) = authorized_body(&state, &id, &req, payload).await?;
    let request = StepRequest { label, step_type: step_type(&body.step_type)?, config: body.config };
    let (action, step) = match state.runs.begin_step(&id, &token, request).await? {
        Begun::Done(step) => (Action::Done, Some(step_view(step))),
        Begun::Execute => (Action::Execute, None),
        Begun::Resume(step) => (Action::Resume, Some(step_view(step))),
    };
    Ok(HttpResponse::Ok().json(BeginAnswer { action, ok: true, step }))
}

/// `POST /api/internal/script-runs/{runId}/steps` `{stepKey, stepType, config, status,
/// result?, error?, durationMs?}`: records a step; the stored entry is returned (a second
/// writer of a label gets the first one's entry back).
#[utoipa::path(
    post,
    path = "/api/internal/script-runs/{id}/steps",
    operation_id = "recordStep",
    tag = "steps",
    params(("id" = String, Path, description = "Run id.")),
    request_body = RecordRequest,
    responses(
        (status = 200, description = "The entry as stored (a second writer of a label gets the first one's).", body = StepAnswer),
        (status = 400, description = "`INVALID_JSON`, `INVALID_REQUEST`, `label_lint_violation`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the token of another run or execution.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`RUN_NOT_ACTIVE`, `STEP_DIVERGED`, `LIMIT_EXCEEDED`, `INVALID_STATE`.", body = ErrorBody),
    ),
)]
pub async fn record_step(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (token, body): (String, RecordRequest) = authorized_body(&state, &id, &req, payload).await?;
    let record = StepRecord {
        step_type: step_type(&body.step_type)?,
        label: body.step_key,
        config: body.config,
        status: StepStatus::parse(&body.status),
        result: body.result.filter(|v| !v.is_null()),
        error: body.error,
        duration_ms: body.duration_ms,
    };
    let step = state.runs.record_step(&id, &token, record).await?;
    Ok(HttpResponse::Ok().json(StepAnswer { ok: true, step: step_view(step) }))
}

/// `POST /api/internal/script-runs/{runId}/steps/{stepKey}/attempts` `{stepType, config,
/// attempt, exitCode, error, stderrTail, startedAtMs, endedAtMs}`: a try of a retried command
/// step failed; the entry is answered with the attempt journaled and `nextAttemptAt`.
#[utoipa::path(
    post,
    path = "/api/internal/script-runs/{id}/steps/{label}/attempts",
    operation_id = "recordAttempt",
    tag = "steps",
    params(("id" = String, Path, description = "Run id."), ("label" = String, Path, description = "The step's label (`stepKey`).")),
    request_body = AttemptRequest,
    responses(
        (status = 200, description = "The entry as stored, with the attempt and `nextAttemptAt` (an attempt already journaled: the entry as it is).", body = StepAnswer),
        (status = 400, description = "`INVALID_JSON`, `INVALID_REQUEST` (not a retried command step, not the next attempt, the last attempt).", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the token of another run or execution.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND` (the step was not begun).", body = ErrorBody),
        (status = 409, description = "`RUN_NOT_ACTIVE`, `STEP_DIVERGED`.", body = ErrorBody),
    ),
)]
pub async fn record_attempt(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (id, label) = path.into_inner();
    let (token, body): (String, AttemptRequest) = authorized_body(&state, &id, &req, payload).await?;
    let request = StepRequest { label, step_type: step_type(&body.step_type)?, config: body.config };
    let attempt = Attempt {
        attempt: body.attempt,
        exit_code: body.exit_code,
        error: body.error,
        stderr_tail: body.stderr_tail,
        started_at: body.started_at_ms,
        ended_at: body.ended_at_ms,
        job_id: None,
    };
    let step = state.runs.record_attempt(&id, &token, request, attempt).await?;
    Ok(HttpResponse::Ok().json(StepAnswer { ok: true, step: step_view(step) }))
}

/// `GET /api/internal/script-runs/{runId}/steps/{stepKey}/wait?timeoutMs=`: long poll until
/// a started step (an approval, a script's job) has ended.
#[utoipa::path(
    get,
    path = "/api/internal/script-runs/{id}/steps/{label}/wait",
    operation_id = "waitStep",
    tag = "steps",
    params(("id" = String, Path, description = "Run id."), ("label" = String, Path, description = "The step's label (`stepKey`)."), WaitQuery),
    responses(
        (status = 200, description = "The entry: ended, or still started when the time ran out.", body = StepAnswer),
        (status = 400, description = "`INVALID_ARGS`: a bad `timeoutMs`.", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the token of another run or execution.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`RUN_NOT_ACTIVE`, `STEP_DIVERGED`, `LIMIT_EXCEEDED`, `INVALID_STATE`.", body = ErrorBody),
    ),
)]
pub async fn wait_step(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    query: Query,
) -> Result<HttpResponse, ApiError> {
    let (id, label) = path.into_inner();
    let token = run_token(&req)?;
    let timeout = Duration::from_millis(number(&query, "timeoutMs", 25_000)?);
    let step = state.runs.wait_step(&id, &token, &label, timeout).await?;
    Ok(HttpResponse::Ok().json(StepAnswer { ok: true, step: step_view(step) }))
}

/// `POST /api/internal/script-runs/{runId}/progress` `{current, total, message?}`.
#[utoipa::path(
    post,
    path = "/api/internal/script-runs/{id}/progress",
    operation_id = "reportProgress",
    tag = "steps",
    params(("id" = String, Path, description = "Run id.")),
    request_body = ProgressRequest,
    responses(
        (status = 200, description = "The run with its progress.", body = RunAnswer),
        (status = 400, description = "`INVALID_JSON`, `INVALID_REQUEST`, `label_lint_violation`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the token of another run or execution.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`RUN_NOT_ACTIVE`, `STEP_DIVERGED`, `LIMIT_EXCEEDED`, `INVALID_STATE`.", body = ErrorBody),
    ),
)]
pub async fn progress(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (token, body): (String, ProgressRequest) = authorized_body(&state, &id, &req, payload).await?;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let progress = Progress { current: count(body.current), total: count(body.total), message: body.message };
    let run = state.runs.progress(&id, &token, progress).await?;
    Ok(run_answer(&state, run))
}
