//! `GET /cluster` and the internal routes other nodes of a cluster call.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use script_runner_wire::runs::{ApprovalRequest, InputRequest, RunAnswer};
use script_runner_wire::service::{ClusterView, NodeView};

use super::jobs::{log_page, Query};
use super::openapi::{ErrorBody, JobLogPage, LogQuery, RunLogPage, RunLogQuery};
use super::runs::run_view;
use super::{ApiError, AppState};
use crate::cluster::peer::TOKEN_HEADER;
use crate::runs::model::Decision;
use crate::runs::RunAction;
use crate::sync::blocking;
use crate::time::iso;

/// `GET /cluster`: every node (newest first), its state and load. Outside a cluster (SQLite),
/// `cluster: false` and no nodes.
#[utoipa::path(
    get,
    path = "/cluster",
    operation_id = "getCluster",
    tag = "service",
    responses((status = 200, description = "The cluster's nodes (none outside a cluster).", body = ClusterView)),
)]
pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Some(node) = state.jobs.node().cloned() else {
        return Ok(HttpResponse::Ok().json(ClusterView {
            cluster: false,
            lease_sec: None,
            node: None,
            nodes: Vec::new(),
            ok: true,
        }));
    };
    let (me, lease) = (node.id().to_string(), node.lease().as_secs());
    let rows = blocking(move || node.nodes()).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let rows = rows.map_err(crate::jobs::JobError::from)?;
    let nodes = rows
        .into_iter()
        .map(|n| NodeView {
            advertise: n.advertise,
            capacity: n.capacity,
            ended_at: n.ended_at.map(iso),
            epoch: n.epoch,
            heartbeat_at: iso(n.heartbeat_at),
            id: n.id,
            lease_until: iso(n.lease_until),
            reason: n.reason,
            running: n.running,
            runs: n.runs,
            started_at: iso(n.started_at),
            state: n.state,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ClusterView { cluster: true, lease_sec: Some(lease), node: Some(me), nodes, ok: true }))
}

/// `GET /api/internal/cluster/jobs/:id/logs`: a log page of a job this node ran, for another
/// node.
#[utoipa::path(
    get,
    path = "/api/internal/cluster/jobs/{id}/logs",
    operation_id = "nodeJobLogs",
    tag = "internal",
    params(("id" = String, Path, description = "Job id."), LogQuery),
    responses(
        (status = 200, description = "A page of the job's log on this node.", body = JobLogPage),
        (status = 400, description = "`INVALID_ARGS`.", body = ErrorBody),
        (status = 404, description = "`JOB_NOT_FOUND`.", body = ErrorBody),
    ),
)]
pub async fn job_logs(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    query: Query,
) -> Result<HttpResponse, ApiError> {
    from_a_node(&state, &req)?;
    log_page(&state, id.into_inner(), &query, true).await
}

/// `GET /api/internal/cluster/script-runs/:id/logs`: a log page of a run this node holds, for
/// another node.
#[utoipa::path(
    get,
    path = "/api/internal/cluster/script-runs/{id}/logs",
    operation_id = "nodeRunLogs",
    tag = "internal",
    params(("id" = String, Path, description = "Run id."), RunLogQuery),
    responses(
        (status = 200, description = "A page of the execution's log on this node.", body = RunLogPage),
        (status = 400, description = "`INVALID_ARGS`.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`.", body = ErrorBody),
    ),
)]
pub async fn run_logs(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    query: Query,
) -> Result<HttpResponse, ApiError> {
    from_a_node(&state, &req)?;
    super::runs::run_log_page(&state, id.into_inner(), &query, true).await
}

/// `POST /api/internal/cluster/script-runs/:id/{cancel,pause,resume}`: a decision about a run
/// this node holds, asked on another node.
#[utoipa::path(
    post,
    path = "/api/internal/cluster/script-runs/{id}/{action}",
    operation_id = "nodeRunAction",
    tag = "internal",
    params(
        ("id" = String, Path, description = "Run id."),
        ("action" = String, Path, description = "`cancel`, `pause` or `resume`.", pattern = "^(cancel|pause|resume)$"),
    ),
    responses(
        (status = 200, description = "The run after the decision.", body = RunAnswer),
        (status = 404, description = "`RUN_NOT_FOUND`; `NOT_FOUND` for another action.", body = ErrorBody),
        (status = 409, description = "`INVALID_STATE`, `RUN_ON_OTHER_NODE`.", body = ErrorBody),
    ),
)]
pub async fn run_action(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    from_a_node(&state, &req)?;
    let (id, action) = path.into_inner();
    let action = match action.as_str() {
        "cancel" => RunAction::Cancel,
        "pause" => RunAction::Pause,
        "resume" => RunAction::Resume,
        other => return Err(ApiError::NotFound { method: "POST".into(), path: format!("{}: {other}", req.path()) }),
    };
    let run = state.runs.act(&id, action, false).await?;
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "run": run_view(run) })))
}

/// `POST /api/internal/cluster/script-runs/:id/approvals/:label` `{approved, by, comment}`: an
/// approval of a run this node holds, decided on another node.
#[utoipa::path(
    post,
    path = "/api/internal/cluster/script-runs/{id}/approvals/{label}",
    operation_id = "nodeRunApproval",
    tag = "internal",
    params(
        ("id" = String, Path, description = "Run id."),
        ("label" = String, Path, description = "The approval step's label."),
    ),
    request_body = ApprovalRequest,
    responses(
        (status = 200, description = "The run after the decision.", body = RunAnswer),
        (status = 400, description = "`INVALID_JSON`.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`ALREADY_DECIDED`, `INVALID_STATE`, `RUN_ON_OTHER_NODE`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
    ),
)]
pub async fn run_approval(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    from_a_node(&state, &req)?;
    let (id, label) = path.into_inner();
    let body = super::json_object(payload, &req).await?;
    let text = |key: &str| body.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let decision = Decision {
        approved: body.get("approved").and_then(serde_json::Value::as_bool).unwrap_or(false),
        by: text("by"),
        comment: text("comment"),
    };
    let run = state.runs.act(&id, RunAction::Approve { label, decision }, false).await?;
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "run": run_view(run) })))
}

/// `POST /api/internal/cluster/script-runs/:id/inputs/:label` `{value, by}`: an input of a run
/// this node holds, submitted on another node.
#[utoipa::path(
    post,
    path = "/api/internal/cluster/script-runs/{id}/inputs/{label}",
    operation_id = "nodeRunInput",
    tag = "internal",
    params(
        ("id" = String, Path, description = "Run id."),
        ("label" = String, Path, description = "The input step's label."),
    ),
    request_body = InputRequest,
    responses(
        (status = 200, description = "The run after the input.", body = RunAnswer),
        (status = 400, description = "`INVALID_JSON`, `INVALID_REQUEST`, `INPUT_INVALID`.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`ALREADY_DECIDED`, `INVALID_STATE`, `RUN_ON_OTHER_NODE`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
    ),
)]
pub async fn run_input(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    from_a_node(&state, &req)?;
    let (id, label) = path.into_inner();
    let body = super::json_object(payload, &req).await?;
    let submission = super::runs::submission(&body)?;
    let run = state.runs.act(&id, RunAction::Input { label, submission }, false).await?;
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "run": run_view(run) })))
}

/// `POST /api/internal/cluster/script-runs/:id/events/:name` (any JSON): an event for a run this
/// node holds, posted on another node.
#[utoipa::path(
    post,
    path = "/api/internal/cluster/script-runs/{id}/events/{name}",
    operation_id = "nodeRunEvent",
    tag = "internal",
    params(
        ("id" = String, Path, description = "Run id."),
        ("name" = String, Path, description = "The event's name."),
    ),
    request_body(content = serde_json::Value, description = "The event's payload: any JSON."),
    responses(
        (status = 200, description = "The run after the event.", body = RunAnswer),
        (status = 400, description = "`INVALID_JSON`.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `STEP_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`ALREADY_DECIDED`, `INVALID_STATE`, `RUN_ON_OTHER_NODE`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
    ),
)]
pub async fn run_event(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    from_a_node(&state, &req)?;
    let (id, name) = path.into_inner();
    let payload = super::json_value(payload, &req).await?;
    let run = state.runs.act(&id, RunAction::Event { name, payload }, false).await?;
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "run": run_view(run) })))
}

/// `POST /api/internal/cluster/script-runs/:id/resume-url` `{token, body}`: a resume URL of a
/// run this node holds, used on another node (which checked the token first; this node checks
/// it again).
#[utoipa::path(
    post,
    path = "/api/internal/cluster/script-runs/{id}/resume-url",
    operation_id = "nodeRunResumeUrl",
    tag = "internal",
    params(("id" = String, Path, description = "Run id.")),
    request_body(content = serde_json::Value, description = "`{token, body}`: the URL's token and what its caller posted."),
    responses(
        (status = 200, description = "The run after the decision.", body = RunAnswer),
        (status = 400, description = "`INVALID_JSON`, `INVALID_REQUEST`, `INPUT_INVALID`.", body = ErrorBody),
        (status = 404, description = "`RUN_NOT_FOUND`, `RESUME_URL_NOT_FOUND`.", body = ErrorBody),
        (status = 409, description = "`ALREADY_DECIDED`, `INVALID_STATE`, `RUN_ON_OTHER_NODE`.", body = ErrorBody),
        (status = 410, description = "`RESUME_URL_EXPIRED`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
    ),
)]
pub async fn run_resume_url(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    from_a_node(&state, &req)?;
    let mut body = super::json_object(payload, &req).await?;
    let Some(serde_json::Value::String(token)) = body.remove("token") else {
        return Err(ApiError::InvalidRequest("token (a string) is required".into()));
    };
    let posted = body.remove("body").unwrap_or(serde_json::Value::Null);
    let run = state.runs.act(&id, RunAction::ResumeUrl { token, body: posted }, false).await?;
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "run": run_view(run) })))
}

/// Checks that a request on an internal cluster route comes from a node: it carries this node's
/// secret, which only the cluster's database holds (compared in constant time).
fn from_a_node(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(node) = state.jobs.node() else { return Err(ApiError::Unauthorized) };
    let given = req.headers().get(TOKEN_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !constant_time_eq::constant_time_eq(given.as_bytes(), node.token().as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    Ok(())
}
