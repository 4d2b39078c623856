//! Handlers of the job API: `POST /run`, `GET /jobs`, `GET /jobs/:id`, `GET /jobs/:id/logs`,
//! `POST /jobs/:id/cancel`, `GET /scripts`.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use script_runner_wire::jobs::{
    Accepted, BytesPage, CallbackList, CallbackRequest, JobList, JobRequest, JobView, LinesPage, ScriptList,
};

use super::follow::{self, Follow};
use super::openapi::{ErrorBody, JobListQuery, JobLogPage, JobOrAccepted, LogQuery};
use super::sse;
use super::wire::{callback_view, job_item, job_view, script_view};
use super::{json_object, ApiError, AppState};
use crate::config::Mode;
use crate::db::JobFilter;
use crate::jobs::model::{Job, JobStatus};
use crate::jobs::Keyed;
use crate::process::logs::Stream;

pub(crate) type Query = web::Query<HashMap<String, String>>;

/// Default and largest page of `GET /jobs`.
pub(super) const LIST_DEFAULT: u64 = 50;
pub(super) const LIST_MAX: u64 = 500;
/// Default page sizes of the logs, in bytes (upstream's) and lines (the proxy block's).
pub(super) const BYTES_DEFAULT: u64 = 65536;
pub(super) const LINES_DEFAULT: u64 = 100;
/// Longest `idempotencyKey` (the run API's limit too).
const MAX_KEY_CHARS: usize = crate::names::MAX_NAME_CHARS;

/// `POST /run`: validates, records and queues a job; answers at once (async) or at its end (sync).
/// With an `idempotencyKey` already used: `200` with the job it started and `"deduplicated":
/// true` (a sync request waits for that job's end), or `409 IDEMPOTENCY_CONFLICT` when it was
/// used for another script or other arguments.
#[utoipa::path(
    post,
    path = "/run",
    operation_id = "runJob",
    tag = "jobs",
    request_body = JobRequest,
    responses(
        (status = 200, description = "A sync job's end with its whole output (`stdout`, `stderr`); or, for an \
            `idempotencyKey` used before, that job (`deduplicated: true`): a sync one at its end, an async one \
            as `202` answers it.", body = JobOrAccepted),
        (status = 202, description = "An async job, queued or started.", body = Accepted),
        (status = 400, description = "`INVALID_JSON`, `SCRIPT_NOT_FOUND` (no such script, or no `scriptId`), \
            `INVALID_ARGS` (also a `callback` on a sync job), `CALLBACK_NOT_ALLOWED` (a callback URL that \
            is not http, a host outside `callbacks.allowedHosts`, no `callbacks.secret` configured).",
            body = ErrorBody),
        (status = 409, description = "`IDEMPOTENCY_CONFLICT`: the key was used for another script or other \
            arguments.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
        (status = 429, description = "`QUEUE_FULL`.", body = ErrorBody),
    ),
)]
pub async fn run(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = json_object(payload, &req).await?;
    let script_id = match body.get("scriptId") {
        Some(Value::String(s)) => s.as_str(),
        None | Some(Value::Null) => {
            return Err(ApiError::ScriptNotFound("script not found: scriptId is required".into()))
        }
        Some(_) => return Err(ApiError::ScriptNotFound("script not found: scriptId must be a string".into())),
    };
    let mode = match body.get("mode") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.as_str()),
        Some(_) => return Err(ApiError::InvalidArgs("mode must be sync or async".into())),
    };
    let key = match body.get("idempotencyKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if crate::names::fits_name(k) => Some(k.as_str()),
        Some(_) => {
            return Err(ApiError::InvalidArgs(format!(
                "idempotencyKey must be a string of 1 to {MAX_KEY_CHARS} characters"
            )))
        }
    };
    let callback = match body.get("callback") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let request: CallbackRequest = serde_json::from_value(value.clone()).map_err(|e| {
                ApiError::InvalidArgs(format!("callback must be {{\"url\": string, \"events\"?: [string]}}: {e}"))
            })?;
            let target = crate::callbacks::check(&state.callbacks, &request.url, request.events)
                .map_err(ApiError::CallbackNotAllowed)?;
            Some(target)
        }
    };
    let args = body.get("args");
    let submission = match key {
        None => state.jobs.submit(script_id, args, mode, callback.as_ref()).await?,
        Some(key) => match state.jobs.submit_keyed(key, script_id, args, mode, callback.as_ref()).await? {
            Keyed::New(submission) => submission,
            // The same key again: the job it started, never a second one.
            Keyed::Existing(job, Mode::Async) => {
                return Ok(HttpResponse::Ok().json(Accepted {
                    ok: true,
                    job_id: job.id,
                    status: job.status.as_str().to_string(),
                    deduplicated: Some(true),
                }))
            }
            Keyed::Existing(job, Mode::Sync) => {
                let job = state.jobs.wait(&job.id).await?;
                return sync_answer(&state, job, Some(true)).await;
            }
        },
    };
    if submission.job.mode == Mode::Async {
        let job = &submission.job;
        return Ok(HttpResponse::Accepted().json(Accepted {
            ok: true,
            job_id: job.id.clone(),
            status: job.status.as_str().to_string(),
            deduplicated: None,
        }));
    }
    let job =
        submission.finished().await.ok_or_else(|| ApiError::Internal("the job ended without a final state".into()))?;
    sync_answer(&state, job, None).await
}

/// The answer of a sync run: the ended job with its whole streams.
async fn sync_answer(state: &AppState, job: Job, deduplicated: Option<bool>) -> Result<HttpResponse, ApiError> {
    let stdout = state.jobs.stream_text(&job, Stream::Stdout).await?;
    let stderr = state.jobs.stream_text(&job, Stream::Stderr).await?;
    let mut view = job_view(job);
    view.stdout = Some(stdout);
    view.stderr = Some(stderr);
    view.deduplicated = deduplicated;
    Ok(HttpResponse::Ok().json(view))
}

/// `GET /jobs/:id`.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    operation_id = "getJob",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 404, description = "`JOB_NOT_FOUND`.", body = ErrorBody),
    ),
)]
pub async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (job, queue_position) = state.jobs.get_with_position(&id).await?;
    Ok(HttpResponse::Ok().json(JobView { queue_position, ..job_view(job) }))
}

/// `GET /jobs/:id/callbacks`: the job's completion callbacks and each delivery attempt.
#[utoipa::path(
    get,
    path = "/jobs/{id}/callbacks",
    operation_id = "getJobCallbacks",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "The job's callbacks (none when it was started without one).", body = CallbackList),
        (status = 404, description = "`JOB_NOT_FOUND`.", body = ErrorBody),
    ),
)]
pub async fn callbacks(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let callbacks = state.jobs.callbacks(&id).await?;
    Ok(HttpResponse::Ok()
        .json(CallbackList { ok: true, callbacks: callbacks.into_iter().map(callback_view).collect() }))
}

/// `POST /jobs/:id/cancel`.
#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    operation_id = "cancelJob",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id.")),
    responses(
        (status = 200, description = "The job, cancelled (an ended job unchanged).", body = JobView),
        (status = 404, description = "`JOB_NOT_FOUND`.", body = ErrorBody),
    ),
)]
pub async fn cancel(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let job = state.jobs.cancel(&id).await?;
    Ok(HttpResponse::Ok().json(job_view(job)))
}

/// `GET /jobs?status=&scriptId=&idempotencyKey=&limit=&offset=`: newest first.
#[utoipa::path(
    get,
    path = "/jobs",
    operation_id = "listJobs",
    tag = "jobs",
    params(JobListQuery),
    responses(
        (status = 200, description = "A page of jobs, newest first.", body = JobList),
        (status = 400, description = "`INVALID_ARGS`: a bad filter or number.", body = ErrorBody),
    ),
)]
pub async fn list(state: web::Data<AppState>, query: Query) -> Result<HttpResponse, ApiError> {
    let status = match query.get("status").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            JobStatus::parse(s)
                .ok_or_else(|| {
                    let all: Vec<_> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
                    ApiError::InvalidArgs(format!("status must be one of {}", all.join(", ")))
                })?
                .as_str()
                .to_string(),
        ),
    };
    let filter = JobFilter {
        status,
        script_id: query.get("scriptId").filter(|s| !s.is_empty()).cloned(),
        idempotency_key: query.get("idempotencyKey").filter(|s| !s.is_empty()).cloned(),
        limit: number(&query, "limit", LIST_DEFAULT)?.clamp(1, LIST_MAX) as i64,
        offset: i64::try_from(number(&query, "offset", 0)?).unwrap_or(i64::MAX),
    };
    let (jobs, total) = state.jobs.list(filter).await?;
    Ok(HttpResponse::Ok().json(JobList { ok: true, jobs: jobs.into_iter().map(job_item).collect(), total }))
}

/// `GET /jobs/:id/logs?stream=&offset=&limit=&unit=bytes|lines`; with `follow=1` (or
/// `Accept: text/event-stream`) the stream as server-sent events from `offset` (or the
/// `Last-Event-ID`) until the job ends (see [`super::follow`]).
#[utoipa::path(
    get,
    path = "/jobs/{id}/logs",
    operation_id = "getJobLogs",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "Job id."),
        LogQuery,
        ("follow" = Option<String>, Query, description = "`1` (or `true`): follow the log as server-sent \
            events; `0`: a page even with an event-stream `Accept`.", pattern = "^(1|0|true|false)?$"),
        ("Last-Event-ID" = Option<String>, Header, description = "Following: resume after this event \
            (its id is the offset, in the unit, just past it)."),
    ),
    responses(
        (status = 200, description = "A page of the log (JSON): bytes or lines. Following (`follow=1` or \
            `Accept: text/event-stream`): server-sent events, each `data` one line of JSON: `output` \
            (`OutputChunk`, bytes; id: its `nextOffset`) or `line` (`OutputLine`, lines; id: the next \
            line's index), `truncated` once (`OutputNotStored`), then `end` with the final job \
            (`JobView`); `error` (`ErrorBody`) if the log cannot be read, `shutdown` (`StreamDropped`) \
            when the server stops; a `: keep-alive` comment while nothing happens.",
         content((JobLogPage = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "`INVALID_ARGS`: a bad `stream`, `unit`, `follow`, number or \
            `Last-Event-ID`.", body = ErrorBody),
        (status = 404, description = "`JOB_NOT_FOUND`.", body = ErrorBody),
        (status = 429, description = "`TOO_MANY_STREAMS`: `server.maxStreams` streams are open.", body = ErrorBody),
    ),
)]
pub async fn logs(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    query: Query,
) -> Result<HttpResponse, ApiError> {
    if !follows(&req, &query)? {
        return log_page(&state, id.into_inner(), &query, false).await;
    }
    let (stream, lines, offset) = log_query(&query)?;
    let offset = sse::last_event_id(&req)?.unwrap_or(offset);
    let id = id.into_inner();
    // An unknown job is a 404 answer, not a stream.
    state.jobs.get(&id).await?;
    let slot = state.streams.open()?;
    let follow = Follow { jobs: state.jobs.clone(), id, stream, lines, offset };
    Ok(sse::respond(slot, follow::events(follow)))
}

/// Whether a log request follows the log: `follow=1|true`, or an event-stream `Accept`.
fn follows(req: &HttpRequest, query: &Query) -> Result<bool, ApiError> {
    match query.get("follow").map(|s| s.trim()) {
        None | Some("") => Ok(sse::wants_events(req)),
        Some("1" | "true") => Ok(true),
        Some("0" | "false") => Ok(false),
        Some(_) => Err(ApiError::InvalidArgs("follow must be 1 or 0".into())),
    }
}

/// A log page; `local`: from this node's logs only (another node of the cluster asks).
pub(super) async fn log_page(
    state: &AppState,
    id: String,
    query: &Query,
    local: bool,
) -> Result<HttpResponse, ApiError> {
    let (stream, lines, offset) = log_query(query)?;
    if lines {
        let limit = nonzero(number(query, "limit", LINES_DEFAULT)?, LINES_DEFAULT);
        let view = state.jobs.read_lines(&id, stream, offset, limit, local).await?;
        let page = view.page;
        return Ok(HttpResponse::Ok().json(LinesPage {
            ok: true,
            job_id: id,
            stream: stream.as_str().to_string(),
            offset: page.offset,
            next_offset: page.next_offset,
            total_lines: page.total_lines,
            truncated: view.truncated,
            output_error: view.output_error,
            lines: page.lines,
        }));
    }
    let limit = nonzero(number(query, "limit", BYTES_DEFAULT)?, BYTES_DEFAULT);
    let view = state.jobs.read_bytes(&id, stream, offset, limit, local).await?;
    let page = view.page;
    Ok(HttpResponse::Ok().json(BytesPage {
        ok: true,
        job_id: id,
        stream: stream.as_str().to_string(),
        offset: page.offset,
        next_offset: page.next_offset,
        total_size: page.total_size,
        truncated: view.truncated,
        output_error: view.output_error,
        data: String::from_utf8_lossy(&page.data).into_owned(),
    }))
}

/// `GET /scripts`: the whitelist with each script's rules.
#[utoipa::path(
    get,
    path = "/scripts",
    operation_id = "listScripts",
    tag = "jobs",
    responses((status = 200, description = "The whitelist, each script with its rules.", body = ScriptList)),
)]
pub async fn scripts(state: web::Data<AppState>) -> HttpResponse {
    let config = state.jobs.config();
    let scripts = config.scripts.iter().map(|s| script_view(s, config.runner.default_mode)).collect();
    HttpResponse::Ok().json(ScriptList { ok: true, scripts })
}

/// The `stream`, `unit` (true for lines) and `offset` of a log page request.
pub(super) fn log_query(query: &Query) -> Result<(Stream, bool, u64), ApiError> {
    let stream = match query.get("stream").map(String::as_str) {
        None | Some("") => Stream::Stdout,
        Some(s) => Stream::parse(s).ok_or_else(|| ApiError::InvalidArgs("stream must be stdout or stderr".into()))?,
    };
    let lines = match query.get("unit").map(String::as_str) {
        None | Some("") | Some("bytes") => false,
        Some("lines") => true,
        Some(_) => return Err(ApiError::InvalidArgs("unit must be bytes or lines".into())),
    };
    Ok((stream, lines, number(query, "offset", 0)?))
}

/// A non-negative integer query parameter; huge values saturate (callers clamp them).
pub(super) fn number(query: &Query, key: &str, default: u64) -> Result<u64, ApiError> {
    match query.get(key).map(|s| s.trim()) {
        None | Some("") => Ok(default),
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Ok(s.parse::<u64>().unwrap_or(u64::MAX)),
        Some(_) => Err(ApiError::InvalidArgs(format!("{key} must be a non-negative integer"))),
    }
}

/// Upstream treats a zero limit as "the default".
pub(super) fn nonzero(value: u64, default: u64) -> u64 {
    if value == 0 {
        default
    } else {
        value
    }
}
