//! `GET /cluster` and the internal routes other nodes of a cluster call.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::jobs::{log_page, Query};
use super::{ApiError, AppState};
use crate::cluster::peer::TOKEN_HEADER;
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
/// node (authorised by this node's secret, which only the cluster's database holds).
pub async fn job_logs(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    query: Query,
) -> Result<HttpResponse, ApiError> {
    let Some(node) = state.jobs.node() else { return Err(ApiError::Unauthorized) };
    let given = req.headers().get(TOKEN_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !constant_time_eq::constant_time_eq(given.as_bytes(), node.token().as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    log_page(&state, id.into_inner(), &query, true).await
}
