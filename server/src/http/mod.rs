//! HTTP: routes, authentication and request parsing. Handlers are thin: they parse, call one
//! method of the job or run service, and shape the answer as a wire type
//! (`script_runner_wire`); the rules live in `crate::jobs` and `crate::runs`, and errors become
//! statuses in one place (`error.rs`).

mod cluster;
mod error;
mod events;
mod flows;
mod follow;
mod jobs;
mod metrics;
pub mod openapi;
mod resume;
mod runs;
pub mod sse;
mod ui;
pub mod wire;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, Handler, HttpRequest, HttpResponse, Responder};
use futures_util::StreamExt;
use serde_json::{Map, Value};

pub use error::{ApiError, Code};
pub use metrics::observe;

use crate::jobs::JobManager;
use crate::runs::RunManager;

/// Largest request body accepted (upstream's limit).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The routes that need no token (the OpenAPI document marks them so). A resume URL's
/// token is its own credential (see [`resume`]). The dashboard's files (`/ui/...`) and the
/// redirect to them hold no data: every API call the page makes carries the token.
pub const PUBLIC: [&str; 7] = ["/healthz", "/openapi.json", "/api/resume/{token}", "/", "/ui", "/ui/", "/ui/{path}"];

/// Where the resume URLs are (`/api/resume/<token>`): open without the server's token.
pub const RESUME_PREFIX: &str = "/api/resume/";

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The job service.
    pub jobs: JobManager,
    /// The workflow-run service.
    pub runs: RunManager,
    /// Bearer token required on every route but [`PUBLIC`] ones, if configured.
    pub auth_token: Option<String>,
    /// The open event streams (`server.maxStreams`), ended at shutdown.
    pub streams: sse::Streams,
    /// `/metrics` is served without the token (`metrics.public`).
    pub metrics_public: bool,
    /// Where a request's `callback` may point (`callbacks` in config.json).
    pub callbacks: crate::config::CallbacksConfig,
    /// `workflows.flowsDir`: the flows `GET /api/flows` lists.
    pub flows_dir: std::path::PathBuf,
    /// `server.basePath`: the prefix of every route (empty: none), see [`strip_base_path`].
    pub base_path: String,
}

/// Registers every route of [`table`] on an actix `App`, in its order, each path as one
/// resource whose other methods answer `405`; anything else answers `404 NOT_FOUND`.
pub fn routes(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let query = web::QueryConfig::default()
            .error_handler(|e, _| ApiError::InvalidArgs(format!("invalid query string: {e}")).into());
        cfg.app_data(web::Data::new(state)).app_data(query);
        for (path, endpoints) in table() {
            let resource = endpoints.into_iter().fold(resource(path), |r, e| r.route(e.route));
            cfg.service(resource);
        }
        cfg.default_service(web::to(not_found));
    }
}

/// One method of a route: the method (kept for [`registered`]) and its actix route.
pub(crate) struct Endpoint {
    method: Method,
    route: actix_web::Route,
}

/// The one list of routes the server answers, in the order actix tries them: [`routes`]
/// registers it and [`registered`] reads it, so the OpenAPI document's coverage test
/// (`openapi.rs`) sees every route a change adds. A route added here without its
/// `#[utoipa::path]` in the document fails that test.
fn table() -> Vec<(&'static str, Vec<Endpoint>)> {
    vec![
        ("/", vec![get(ui::root)]),
        ("/ui", vec![get(ui::redirect)]),
        ("/ui/", vec![get(ui::index)]),
        ("/ui/{path:.*}", vec![get(ui::file)]),
        ("/healthz", vec![get(health)]),
        ("/metrics", vec![get(metrics::scrape)]),
        ("/openapi.json", vec![get(openapi::serve)]),
        ("/run", vec![post(jobs::run)]),
        ("/scripts", vec![get(jobs::scripts)]),
        ("/jobs", vec![get(jobs::list)]),
        ("/jobs/{id}", vec![get(jobs::get)]),
        ("/jobs/{id}/logs", vec![get(jobs::logs)]),
        ("/jobs/{id}/cancel", vec![post(jobs::cancel)]),
        ("/jobs/{id}/callbacks", vec![get(jobs::callbacks)]),
        ("/cluster", vec![get(cluster::status)]),
        ("/events", vec![get(events::feed)]),
        ("/api/internal/cluster/jobs/{id}/logs", vec![get(cluster::job_logs)]),
        // Before `{action}`, which would take `logs` and answer 405 to a GET (and
        // `resume-url`, answering it 404).
        ("/api/internal/cluster/script-runs/{id}/logs", vec![get(cluster::run_logs)]),
        ("/api/internal/cluster/script-runs/{id}/resume-url", vec![post(cluster::run_resume_url)]),
        ("/api/internal/cluster/script-runs/{id}/{action}", vec![post(cluster::run_action)]),
        ("/api/internal/cluster/script-runs/{id}/approvals/{label}", vec![post(cluster::run_approval)]),
        ("/api/internal/cluster/script-runs/{id}/inputs/{label}", vec![post(cluster::run_input)]),
        ("/api/internal/cluster/script-runs/{id}/events/{name}", vec![post(cluster::run_event)]),
        ("/api/flows", vec![get(flows::list)]),
        ("/api/script-runs", vec![post(runs::launch), get(runs::list)]),
        ("/api/script-runs/{id}", vec![get(runs::get), delete(runs::cancel)]),
        ("/api/script-runs/{id}/events", vec![get(runs::events)]),
        ("/api/script-runs/{id}/callbacks", vec![get(runs::callbacks)]),
        ("/api/script-runs/{id}/logs", vec![get(runs::logs)]),
        ("/api/script-runs/{id}/pause", vec![post(runs::pause)]),
        ("/api/script-runs/{id}/resume", vec![post(runs::resume)]),
        ("/api/script-runs/{id}/fork", vec![post(runs::fork)]),
        ("/api/script-runs/{id}/approvals/{label}", vec![post(runs::approve)]),
        ("/api/script-runs/{id}/inputs/{label}", vec![post(runs::submit_input)]),
        ("/api/script-runs/{id}/events/{name}", vec![post(runs::deliver_event)]),
        ("/api/resume/{token}", vec![get(resume::describe), post(resume::act)]),
        ("/api/internal/script-runs/{id}/steps", vec![post(runs::record_step)]),
        ("/api/internal/script-runs/{id}/steps/{label}", vec![get(runs::get_step)]),
        ("/api/internal/script-runs/{id}/steps/{label}/begin", vec![post(runs::begin_step)]),
        ("/api/internal/script-runs/{id}/steps/{label}/wait", vec![get(runs::wait_step)]),
        ("/api/internal/script-runs/{id}/steps/{label}/attempts", vec![post(runs::record_attempt)]),
        ("/api/internal/script-runs/{id}/progress", vec![post(runs::progress)]),
    ]
}

/// Every `(method, path)` the server answers, as [`table`] registers them (paths in actix's
/// and OpenAPI's common `{name}` syntax, an actix pattern's regex dropped: `{path:.*}` is
/// `{path}`; methods upper-case).
pub fn registered() -> Vec<(String, String)> {
    table()
        .into_iter()
        .flat_map(|(path, endpoints)| {
            let path = without_regex(path);
            endpoints.into_iter().map(move |e| (e.method.to_string(), path.clone()))
        })
        .collect()
}

/// An actix pattern with each `{name:regex}` written `{name}`.
fn without_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut skipping = false;
    for c in pattern.chars() {
        match c {
            ':' if !skipping && out.rfind('{') > out.rfind('}') => skipping = true,
            '}' => {
                skipping = false;
                out.push(c);
            }
            _ if skipping => {}
            _ => out.push(c),
        }
    }
    out
}

fn endpoint<F, Args>(method: Method, handler: F) -> Endpoint
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    Endpoint { route: web::method(method.clone()).to(handler), method }
}

fn get<F, Args>(handler: F) -> Endpoint
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    endpoint(Method::GET, handler)
}

fn post<F, Args>(handler: F) -> Endpoint
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    endpoint(Method::POST, handler)
}

fn delete<F, Args>(handler: F) -> Endpoint
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    endpoint(Method::DELETE, handler)
}

/// A route whose other methods answer 405 with the error envelope. It is named by its
/// pattern: the metrics label a request with its route's name, which actix hands out without
/// building a string per request (see [`observe`]).
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).name(path).default_service(web::to(method_not_allowed))
}

/// `GET /healthz`: the server answers (no token needed).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    tag = "service",
    responses((status = 200, description = "The server answers.", body = script_runner_wire::service::Health)),
)]
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(script_runner_wire::service::Health { ok: true })
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound { method: req.method().to_string(), path: shown_path(req.path()) })
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { method: req.method().to_string(), path: shown_path(req.path()) })
}

/// A request's path as an error message may show it: a resume URL's token (a credential)
/// replaced by `<token>`, so it is in no message a proxy or a client's log may keep.
fn shown_path(path: &str) -> String {
    match path.strip_prefix(RESUME_PREFIX) {
        Some(rest) => {
            let after = rest.find('/').map_or("", |i| &rest[i..]);
            format!("{RESUME_PREFIX}<token>{after}")
        }
        None => path.to_string(),
    }
}

/// Middleware: when a token is configured, every route but [`PUBLIC`] ones (and `/metrics`
/// when `metrics.public`) needs it as a bearer token (compared in constant time). The OpenAPI
/// document is public: it is the same for every deployment (`script-runner openapi` prints it
/// without any configuration) and says nothing of this one, and a client generator can fetch
/// it without the token. The internal routes of workflow steps are authorised by their run
/// token instead (a workflow process never holds the server's token), and the resume URLs
/// (`/api/resume/<token>`) by the signed token in their path (an outside system never holds
/// it either).
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
        let open = PUBLIC.contains(&path)
            || path.starts_with("/ui/")
            || path.starts_with(RESUME_PREFIX)
            || path.starts_with("/api/internal/")
            || (state.metrics_public && path == "/metrics");
        if !open {
            let given = bearer(req.headers()).unwrap_or("");
            if !constant_time_eq::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return Ok(req.error_response(ApiError::Unauthorized));
            }
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Middleware (outside every other but the metrics): serves the routes under `server.basePath`.
/// A request whose path starts with the prefix (as a whole segment) is routed as if it had
/// been sent without it, so every route, check and message inside sees the path of [`table`];
/// any other request answers `404 NOT_FOUND`. (A rewrite rather than an actix `web::scope`:
/// the authentication, the cross-site guard and the metrics labels then need no knowledge of
/// the prefix.) Without a prefix the request passes unchanged.
pub async fn strip_base_path(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // No prefix (the usual case): nothing to copy or rewrite on this path of every request.
    let base = match req.app_data::<web::Data<AppState>>() {
        Some(state) if !state.base_path.is_empty() => state.base_path.clone(),
        _ => return Ok(next.call(req).await?.map_into_boxed_body()),
    };
    let rest = match req.path().strip_prefix(base.as_str()) {
        Some("") => "/".to_string(),
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => {
            let error = ApiError::NotFound { method: req.method().to_string(), path: shown_path(req.path()) };
            return Ok(req.error_response(error));
        }
    };
    let path_and_query = match req.query_string() {
        "" => rest,
        query => format!("{rest}?{query}"),
    };
    let mut parts = req.head().uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    let uri = actix_web::http::Uri::from_parts(parts).map_err(actix_web::error::ErrorBadRequest)?;
    req.match_info_mut().get_mut().update(&uri);
    req.head_mut().uri = uri;
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Middleware: refuses a request that may change something (any method but GET, HEAD and
/// OPTIONS) when a browser says another site sent it: `Sec-Fetch-Site: cross-site`, or an
/// `Origin` whose host (and port) is not the one the request was sent to. `403 FORBIDDEN`,
/// saying why. So a page of another site cannot make a visitor's browser start a job or decide
/// an approval (the dashboard's token is in `sessionStorage`, which no other site reads, but
/// this also covers a deployment without a token on loopback). A request without `Origin` (curl,
/// the SDKs, a workflow's step calls) is not a browser's cross-site one and passes.
pub async fn refuse_cross_site(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        if let Some(why) = cross_site(&req) {
            let error =
                ApiError::Run { status: actix_web::http::StatusCode::FORBIDDEN, code: Code::Forbidden, message: why };
            return Ok(req.error_response(error));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Why a request is another site's (see [`refuse_cross_site`]), or `None`.
fn cross_site(req: &ServiceRequest) -> Option<String> {
    let headers = req.headers();
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).unwrap_or("");
    if fetch_site.eq_ignore_ascii_case("cross-site") {
        return Some(format!(
            "cross-site request refused: the browser sent it from another site (Sec-Fetch-Site: \
             cross-site); {} {} may only be sent from this server's own pages or without a browser",
            req.method(),
            shown_path(req.path())
        ));
    }
    let origin = headers.get(actix_web::http::header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("(not text)");
    let own = req.connection_info().host().to_string();
    // The host and port of `scheme://host[:port]`: a proxy in front may change the scheme.
    let host = origin.split_once("://").map(|(_, host)| host.trim_end_matches('/'));
    if host.is_some_and(|host| host.eq_ignore_ascii_case(&own)) {
        return None;
    }
    Some(format!(
        "cross-site request refused: Origin {origin:?} is not this server ({own}); {} {} may only be sent \
         from this server's own pages or without a browser",
        req.method(),
        shown_path(req.path())
    ))
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
pub async fn json_object(payload: web::Payload, req: &HttpRequest) -> Result<Map<String, Value>, ApiError> {
    match json_value(payload, req).await? {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::InvalidJson("body must be a JSON object".into())),
    }
}

/// A request body as any JSON value (an event's payload), bounded as [`json_object`]'s.
pub async fn json_value(payload: web::Payload, req: &HttpRequest) -> Result<Value, ApiError> {
    let body = read_body(payload, req).await?;
    serde_json::from_slice::<Value>(&body).map_err(|e| ApiError::InvalidJson(format!("invalid json body: {e}")))
}

/// [`json_value`], with an empty body (nothing, or only white space) read as `null`: for
/// routes whose body is optional.
pub async fn optional_json(payload: web::Payload, req: &HttpRequest) -> Result<Value, ApiError> {
    let body = read_body(payload, req).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice::<Value>(&body).map_err(|e| ApiError::InvalidJson(format!("invalid json body: {e}")))
}

/// A request body of at most [`MAX_BODY_BYTES`]: refused at once when its declared length is
/// over, and as soon as what arrives is.
async fn read_body(mut payload: web::Payload, req: &HttpRequest) -> Result<web::BytesMut, ApiError> {
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
    Ok(body)
}
