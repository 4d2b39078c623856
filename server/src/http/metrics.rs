//! `GET /metrics` (the Prometheus text format) and the middleware that counts every request.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::{ApiError, AppState};
use crate::metrics::{self, UNMATCHED_ROUTE};

/// `GET /metrics`: the gauges of what is in flight are read now, then every metric is
/// rendered. Open without the token only when `metrics.public` (see [`super::authenticate`]).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "service",
    responses(
        (status = 200, description = "Every metric in the Prometheus text format (0.0.4): jobs, runs, \
            steps, HTTP requests by route and status, commit latency. (Without the token when \
            `metrics.public`.)",
         content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
    ),
)]
pub async fn scrape(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.jobs.observe_in_flight();
    state.runs.observe_live();
    metrics::get().set_streams_open(state.streams.open_count());
    let text = metrics::get().render()?;
    Ok(HttpResponse::Ok().content_type(metrics::CONTENT_TYPE).body(text))
}

/// Middleware: counts every request by method, route and status, and observes its latency.
/// The route is the matched resource's name, which is its pattern (`/jobs/{id}`; see
/// [`super::resource`]), never the request's path, so the labels stay bounded; a request that
/// matched no route is [`UNMATCHED_ROUTE`].
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let method = metrics::method_label(req.method().as_str());
    let answered = next.call(req).await;
    let (route, status) = match &answered {
        Ok(res) => (res.request().match_name().unwrap_or(UNMATCHED_ROUTE), res.status()),
        // An error out of the app's own middleware (a handler's error is a response by now):
        // the request went with it.
        Err(e) => (UNMATCHED_ROUTE, e.as_response_error().status_code()),
    };
    metrics::get().http_request(method, route, status.as_str(), started.elapsed());
    Ok(answered?.map_into_boxed_body())
}
