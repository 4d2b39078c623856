//! Handlers of the workflow-run API (`/api/script-runs...`) and of the internal routes the
//! step client uses (`/api/internal/script-runs/...`, authorised by the run token).

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::jobs::{log_query, nonzero, number, Query, BYTES_DEFAULT, LINES_DEFAULT, LIST_DEFAULT, LIST_MAX};
use super::{json_object, ApiError, AppState};
use crate::db::RunFilter;
use crate::runs::model::{
    Begun, Decision, JournalEntry, LaunchRequest, Progress, Run, RunStatus, StepRecord, StepRequest, StepStatus,
    StepType,
};
use crate::time::iso;

/// A run on the wire.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    id: String,
    script_name: String,
    workflow_id: Option<String>,
    interpreter: Option<String>,
    flow: Option<String>,
    status: String,
    args: Value,
    output: Value,
    error: Option<String>,
    warnings: Vec<String>,
    source_sha256: String,
    pid: Option<i32>,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    last_heartbeat_at: Option<String>,
    idempotency_key: Option<String>,
    attempt: i32,
    progress: Option<Value>,
    forked_from: Option<String>,
}

impl RunView {
    /// The wire view of a run: statuses spelled, times as ISO text, progress as an object.
    pub fn new(run: Run) -> RunView {
        let progress = run.progress.map(|p| json!({ "current": p.current, "total": p.total, "message": p.message }));
        RunView {
            args: run.args,
            output: run.output.unwrap_or(Value::Null),
            warnings: run.warnings,
            created_at: iso(run.created_at),
            started_at: run.started_at.map(iso),
            finished_at: run.finished_at.map(iso),
            last_heartbeat_at: run.last_heartbeat_at.map(iso),
            progress,
            id: run.id,
            script_name: run.script_name,
            workflow_id: run.workflow_id,
            interpreter: run.interpreter,
            flow: run.flow,
            status: run.status.as_str().to_string(),
            error: run.error,
            source_sha256: run.source_sha256,
            pid: run.pid,
            idempotency_key: run.idempotency_key,
            attempt: run.attempt,
            forked_from: run.forked_from,
        }
    }
}

/// A journal entry on the wire.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    step_key: String,
    step_type: String,
    config: Value,
    status: String,
    result: Value,
    error: Option<String>,
    job_id: Option<String>,
    started_at: String,
    completed_at: Option<String>,
    duration_ms: Option<i64>,
}

impl StepView {
    /// The wire view of a journal entry: its label is the `stepKey`, types and statuses
    /// spelled, times as ISO text.
    pub fn new(entry: JournalEntry) -> StepView {
        StepView {
            config: entry.config,
            result: entry.result.unwrap_or(Value::Null),
            started_at: iso(entry.started_at),
            completed_at: entry.completed_at.map(iso),
            step_key: entry.label,
            step_type: entry.step_type.as_str().to_string(),
            status: entry.status.as_str().to_string(),
            error: entry.error,
            job_id: entry.job_id,
            duration_ms: entry.duration_ms,
        }
    }
}

fn optional_string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::InvalidRequest(format!("{key} must be a string"))),
    }
}

fn required_string(body: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    optional_string(body, key)?.ok_or_else(|| ApiError::InvalidRequest(format!("{key} is required")))
}

/// `POST /api/script-runs`: `201 {ok, run}`; `200 {ok, run, deduplicated: true}` when the
/// idempotency key matched an earlier launch.
pub async fn launch(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = json_object(payload, &req).await?;
    const KEYS: [&str; 8] =
        ["workflowId", "source", "interpreter", "flow", "scriptName", "args", "idempotencyKey", "background"];
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
    };
    let launched = state.runs.launch(request).await?;
    if launched.deduplicated {
        return Ok(
            HttpResponse::Ok().json(json!({ "ok": true, "run": RunView::new(launched.run), "deduplicated": true }))
        );
    }
    let run = if background { launched.run } else { state.runs.wait_terminal(&launched.run.id).await? };
    Ok(HttpResponse::Created().json(json!({ "ok": true, "run": RunView::new(run) })))
}

/// `GET /api/script-runs?status=&scriptName=&limit=&offset=`: newest first.
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
    let runs: Vec<_> = runs.into_iter().map(RunView::new).collect();
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "runs": runs, "total": total })))
}

/// `GET /api/script-runs/{id}`: the run and its journal.
pub async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (run, journal) = state.runs.get_with_journal(&id).await?;
    let journal: Vec<_> = journal.into_iter().map(StepView::new).collect();
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "run": RunView::new(run), "journal": journal })))
}

/// `DELETE /api/script-runs/{id}`: cancel; a terminal run is returned unchanged.
pub async fn cancel(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let run = state.runs.cancel(&id).await?;
    Ok(run_answer(run))
}

/// `POST /api/script-runs/{id}/pause`.
pub async fn pause(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let run = state.runs.pause(&id).await?;
    Ok(run_answer(run))
}

/// `POST /api/script-runs/{id}/resume`.
pub async fn resume(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let run = state.runs.resume(&id).await?;
    Ok(run_answer(run))
}

/// `POST /api/script-runs/{id}/fork` `{fromStep?, source?}`: `201 {ok, run}`.
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
    Ok(HttpResponse::Created().json(json!({ "ok": true, "run": RunView::new(run) })))
}

/// `POST /api/script-runs/{id}/approvals/{label}` `{approved, by?, comment?}`.
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
    Ok(run_answer(run))
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
pub async fn logs(state: web::Data<AppState>, id: web::Path<String>, query: Query) -> Result<HttpResponse, ApiError> {
    let (stream, lines, offset) = log_query(&query)?;
    let attempt = match query.get("attempt").filter(|s| !s.is_empty()) {
        None => None,
        Some(_) => Some(i32::try_from(number(&query, "attempt", 1)?).unwrap_or(i32::MAX)),
    };
    let output_error = execution_output_error(&state.runs.get(&id).await?, attempt);
    if lines {
        let limit = nonzero(number(&query, "limit", LINES_DEFAULT)?, LINES_DEFAULT);
        let page = state.runs.read_lines(&id, attempt, stream, offset, limit).await?;
        return Ok(HttpResponse::Ok().json(json!({
            "ok": true, "runId": id.into_inner(), "stream": stream.as_str(), "offset": page.offset,
            "nextOffset": page.next_offset, "totalLines": page.total_lines, "truncated": false,
            "outputError": output_error, "lines": page.lines,
        })));
    }
    let limit = nonzero(number(&query, "limit", BYTES_DEFAULT)?, BYTES_DEFAULT);
    let page = state.runs.read_bytes(&id, attempt, stream, offset, limit).await?;
    Ok(HttpResponse::Ok().json(json!({
        "ok": true, "runId": id.into_inner(), "stream": stream.as_str(), "offset": page.offset,
        "nextOffset": page.next_offset, "totalSize": page.total_size, "truncated": false,
        "outputError": output_error,
        "data": String::from_utf8_lossy(&page.data),
    })))
}

// ---- internal routes (the step client) ----

/// `200 {ok, run}`.
fn run_answer(run: Run) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "ok": true, "run": RunView::new(run) }))
}

/// The run token from `Authorization: Bearer <token>`.
fn run_token(req: &HttpRequest) -> Result<String, ApiError> {
    super::bearer(req.headers()).filter(|t| !t.is_empty()).map(str::to_string).ok_or(ApiError::Unauthorized)
}

fn step_type(body: &Map<String, Value>) -> Result<StepType, ApiError> {
    let name = required_string(body, "stepType")?;
    StepType::parse(&name).ok_or_else(|| {
        ApiError::InvalidRequest(format!("stepType {name:?} must be command, script, value, sleep, approval or node"))
    })
}

/// `GET /api/internal/script-runs/{runId}/steps/{stepKey}`: `200 {ok, step}` or `404`.
pub async fn get_step(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (id, label) = path.into_inner();
    let token = run_token(&req)?;
    match state.runs.get_step(&id, &token, &label).await? {
        Some(step) => Ok(HttpResponse::Ok().json(json!({ "ok": true, "step": StepView::new(step) }))),
        None => Err(ApiError::from(crate::runs::RunError::StepNotFound(format!(
            "run {id} has no journal entry labelled {label:?}"
        )))),
    }
}

/// `POST /api/internal/script-runs/{runId}/steps/{stepKey}/begin` `{stepType, config}`:
/// `{ok, action: done|execute|resume, step}`.
pub async fn begin_step(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (id, label) = path.into_inner();
    let token = run_token(&req)?;
    // Authorised before the body is read: a foreign token never gets a body judged.
    state.runs.check_token(&id, &token)?;
    let body = json_object(payload, &req).await?;
    let request =
        StepRequest { label, step_type: step_type(&body)?, config: body.get("config").cloned().unwrap_or(Value::Null) };
    let (action, step) = match state.runs.begin_step(&id, &token, request).await? {
        Begun::Done(step) => ("done", Some(StepView::new(step))),
        Begun::Execute => ("execute", None),
        Begun::Resume(step) => ("resume", Some(StepView::new(step))),
    };
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "action": action, "step": step })))
}

/// `POST /api/internal/script-runs/{runId}/steps` `{stepKey, stepType, config, status,
/// result?, error?, durationMs?}`: records a step; the stored entry is returned (a second
/// writer of a label gets the first one's entry back).
pub async fn record_step(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = run_token(&req)?;
    // Authorised before the body is read: a foreign token never gets a body judged.
    state.runs.check_token(&id, &token)?;
    let body = json_object(payload, &req).await?;
    let record = StepRecord {
        label: required_string(&body, "stepKey")?,
        step_type: step_type(&body)?,
        config: body.get("config").cloned().unwrap_or(Value::Null),
        status: StepStatus::parse(&required_string(&body, "status")?),
        result: body.get("result").cloned().filter(|v| !v.is_null()),
        error: optional_string(&body, "error")?,
        duration_ms: body.get("durationMs").and_then(Value::as_i64),
    };
    let step = state.runs.record_step(&id, &token, record).await?;
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "step": StepView::new(step) })))
}

/// `GET /api/internal/script-runs/{runId}/steps/{stepKey}/wait?timeoutMs=`: long poll until
/// a started step (an approval, a script's job) has ended.
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
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "step": StepView::new(step) })))
}

/// `POST /api/internal/script-runs/{runId}/progress` `{current, total, message?}`.
pub async fn progress(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = run_token(&req)?;
    // Authorised before the body is read: a foreign token never gets a body judged.
    state.runs.check_token(&id, &token)?;
    let body = json_object(payload, &req).await?;
    let int = |key: &str| body.get(key).and_then(Value::as_i64).filter(|n| *n >= 0);
    let (Some(current), Some(total)) = (int("current"), int("total")) else {
        return Err(ApiError::InvalidRequest("current and total (non-negative integers) are required".into()));
    };
    let progress = Progress { current, total, message: optional_string(&body, "message")? };
    let run = state.runs.progress(&id, &token, progress).await?;
    Ok(run_answer(run))
}
