//! `GET /cluster` and the internal routes other nodes of a cluster call.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::jobs::{log_page, Query};
use super::runs::run_view;
use super::{ApiError, AppState};
use crate::cluster::peer::TOKEN_HEADER;
use crate::runs::model::Decision;
use crate::runs::RunAction;
use crate::sync::blocking;
use crate::time::iso;

/// `GET /cluster`: every node (newest first), its state and load. Outside a cluster (SQLite),
/// `cluster: false` and no nodes.
pub async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Some(node) = state.jobs.node().cloned() else {
        return Ok(HttpResponse::Ok().json(json!({ "ok": true, "cluster": false, "nodes": [] })));
    };
    let (me, lease) = (node.id().to_string(), node.lease().as_secs());
    let rows = blocking(move || node.nodes()).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let rows = rows.map_err(crate::jobs::JobError::from)?;
    let nodes: Vec<_> = rows
        .into_iter()
        .map(|n| {
            json!({
                "id": n.id,
                "epoch": n.epoch,
                "advertise": n.advertise,
                "state": n.state,
                "capacity": n.capacity,
                "running": n.running,
                "runs": n.runs,
                "startedAt": iso(n.started_at),
                "heartbeatAt": iso(n.heartbeat_at),
                "leaseUntil": iso(n.lease_until),
                "endedAt": n.ended_at.map(iso),
                "reason": n.reason,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "cluster": true, "node": me, "leaseSec": lease, "nodes": nodes })))
}

/// `GET /api/internal/cluster/jobs/:id/logs`: a log page of a job this node ran, for another
/// node.
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
