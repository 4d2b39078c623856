//! HTTP: routes, authentication and request parsing. Handlers are thin: they parse, call one
//! method of the job or run service, and shape the answer as a wire type
//! (`script_runner_wire`); the rules live in `crate::jobs` and `crate::runs`, and errors become
//! statuses in one place (`error.rs`).

mod cluster;
mod error;
mod events;
mod follow;
mod jobs;
mod metrics;
mod runs;
pub mod sse;
pub mod wire;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{Map, Value};

pub use error::ApiError;
pub use metrics::observe;

use crate::jobs::JobManager;
use crate::runs::RunManager;

/// Largest request body accepted (upstream's limit).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The job service.
    pub jobs: JobManager,
    /// The workflow-run service.
    pub runs: RunManager,
    /// Bearer token required on every route but `/healthz`, if configured.
    pub auth_token: Option<String>,
    /// The open event streams (`server.maxStreams`), ended at shutdown.
    pub streams: sse::Streams,
    /// `/metrics` is served without the token (`metrics.public`).
    pub metrics_public: bool,
}

/// Registers every route on an actix `App`.
pub fn routes(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let query = web::QueryConfig::default()
            .error_handler(|e, _| ApiError::InvalidArgs(format!("invalid query string: {e}")).into());
        cfg.app_data(web::Data::new(state))
            .app_data(query)
            .service(resource("/healthz").route(web::get().to(health)))
            .service(resource("/metrics").route(web::get().to(metrics::scrape)))
            .service(resource("/run").route(web::post().to(jobs::run)))
            .service(resource("/scripts").route(web::get().to(jobs::scripts)))
            .service(resource("/jobs").route(web::get().to(jobs::list)))
            .service(resource("/jobs/{id}").route(web::get().to(jobs::get)))
            .service(resource("/jobs/{id}/logs").route(web::get().to(jobs::logs)))
            .service(resource("/jobs/{id}/cancel").route(web::post().to(jobs::cancel)))
            .service(resource("/cluster").route(web::get().to(cluster::status)))
            .service(resource("/events").route(web::get().to(events::feed)))
            .service(resource("/api/internal/cluster/jobs/{id}/logs").route(web::get().to(cluster::job_logs)))
            // Before `{action}`, which would take `logs` and answer 405 to a GET.
            .service(resource("/api/internal/cluster/script-runs/{id}/logs").route(web::get().to(cluster::run_logs)))
            .service(
                resource("/api/internal/cluster/script-runs/{id}/{action}").route(web::post().to(cluster::run_action)),
            )
            .service(
                resource("/api/internal/cluster/script-runs/{id}/approvals/{label}")
                    .route(web::post().to(cluster::run_approval)),
            )
            .service(resource("/api/script-runs").route(web::post().to(runs::launch)).route(web::get().to(runs::list)))
            .service(
                resource("/api/script-runs/{id}").route(web::get().to(runs::get)).route(web::delete().to(runs::cancel)),
            )
            .service(resource("/api/script-runs/{id}/events").route(web::get().to(runs::events)))
            .service(resource("/api/script-runs/{id}/logs").route(web::get().to(runs::logs)))
            .service(resource("/api/script-runs/{id}/pause").route(web::post().to(runs::pause)))
            .service(resource("/api/script-runs/{id}/resume").route(web::post().to(runs::resume)))
            .service(resource("/api/script-runs/{id}/fork").route(web::post().to(runs::fork)))
            .service(resource("/api/script-runs/{id}/approvals/{label}").route(web::post().to(runs::approve)))
            .service(resource("/api/internal/script-runs/{id}/steps").route(web::post().to(runs::record_step)))
            .service(resource("/api/internal/script-runs/{id}/steps/{label}").route(web::get().to(runs::get_step)))
            .service(
                resource("/api/internal/script-runs/{id}/steps/{label}/begin").route(web::post().to(runs::begin_step)),
            )
            .service(
                resource("/api/internal/script-runs/{id}/steps/{label}/wait").route(web::get().to(runs::wait_step)),
            )
            .service(resource("/api/internal/script-runs/{id}/progress").route(web::post().to(runs::progress)))
            .default_service(web::to(not_found));
    }
}

/// A route whose other methods answer 405 with the error envelope. It is named by its
/// pattern: the metrics label a request with its route's name, which actix hands out without
/// building a string per request (see [`observe`]).
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).name(path).default_service(web::to(method_not_allowed))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "ok": true }))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound { method: req.method().to_string(), path: req.path().to_string() })
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { method: req.method().to_string(), path: req.path().to_string() })
}

/// Middleware: when a token is configured, every route but `/healthz` (and `/metrics` when
/// `metrics.public`) needs it as a bearer token (compared in constant time). The internal
/// routes of workflow steps are authorised by their run token instead (a workflow process
/// never holds the server's token).
///
/// A refusal is answered here as a response, not an error, so the metrics middleware around it
/// still sees the request it answers (and labels it with its route).
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    if let Some(expected) = &state.auth_token {
        let path = req.path();
        let open =
            path == "/healthz" || path.starts_with("/api/internal/") || (state.metrics_public && path == "/metrics");
        if !open {
            let given = bearer(req.headers()).unwrap_or("");
            if !constant_time_eq::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return Ok(req.error_response(ApiError::Unauthorized));
            }
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// The token of an `Authorization: Bearer <token>` header, trimmed (the scheme name is
/// case-insensitive, RFC 7235).
pub(super) fn bearer(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    headers
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// Reads a JSON object body of at most [`MAX_BODY_BYTES`], whatever its content type.
pub async fn json_object(mut payload: web::Payload, req: &HttpRequest) -> Result<Map<String, Value>, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::InvalidJson(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
        }
        body.extend_from_slice(&chunk);
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::InvalidJson("body must be a JSON object".into())),
        Err(e) => Err(ApiError::InvalidJson(format!("invalid json body: {e}"))),
    }
}
