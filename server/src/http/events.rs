//! `GET /events`: the server's lifecycle feed (see [`crate::events`]) as server-sent events,
//! optionally filtered by `script=` and `kind=` (comma-separated lists).

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use futures_util::Stream;
use script_runner_wire::events::{LifecycleEvent, StreamDropped};
use tokio::sync::broadcast::error::RecvError;

use super::jobs::Query;
use super::openapi::ErrorBody;
use super::sse::{self, Event};
use super::{ApiError, AppState};
use crate::events::{Kind, Lifecycle, CAPACITY};
use crate::time::iso;

/// Most values in one filter.
const MAX_FILTER_VALUES: usize = 64;

/// `GET /events?script=&kind=job|run`.
#[utoipa::path(
    get,
    path = "/events",
    operation_id = "events",
    tag = "service",
    params(
        ("script" = Option<String>, Query, description = "Only events of these scripts (comma-separated)."),
        ("kind" = Option<String>, Query, description = "Only `job` or `run` events (comma-separated)."),
    ),
    responses(
        (status = 200, description = "The lifecycle feed as server-sent events, each `data` one line of \
            JSON: `job.created`, `job.started`, `job.ended`, `run.created`, `run.started`, `run.ended` \
            (`LifecycleEvent`); `dropped` (`StreamDropped`) as the last event when the reader fell too far \
            behind, `shutdown` (`StreamDropped`) when the server stops; a `: keep-alive` comment while \
            nothing happens.", content_type = "text/event-stream", body = String),
        (status = 400, description = "`INVALID_ARGS`: a bad `kind` or too many values.", body = ErrorBody),
        (status = 429, description = "`TOO_MANY_STREAMS`: `server.maxStreams` streams are open.", body = ErrorBody),
    ),
)]
pub async fn feed(state: web::Data<AppState>, query: Query) -> Result<HttpResponse, ApiError> {
    let kinds = match list(&query, "kind")? {
        None => None,
        Some(values) => Some(
            values
                .iter()
                .map(|v| Kind::parse(v).ok_or_else(|| ApiError::InvalidArgs("kind must be job or run".into())))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let filter = Filter { kinds, scripts: list(&query, "script")? };
    let slot = state.streams.open()?;
    let rx = crate::events::hub().subscribe();
    Ok(sse::respond(slot, events(rx, filter)))
}

struct Filter {
    kinds: Option<Vec<Kind>>,
    scripts: Option<Vec<String>>,
}

impl Filter {
    fn admits(&self, e: &Lifecycle) -> bool {
        self.kinds.as_ref().map_or(true, |k| k.contains(&e.kind))
            && self.scripts.as_ref().map_or(true, |s| s.contains(&e.script))
    }
}

/// A comma-separated filter; absent or empty: no filter.
fn list(query: &Query, key: &str) -> Result<Option<Vec<String>>, ApiError> {
    let Some(raw) = query.get(key).filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    let values: Vec<String> = raw.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_string).collect();
    if values.len() > MAX_FILTER_VALUES {
        return Err(ApiError::InvalidArgs(format!("{key}: at most {MAX_FILTER_VALUES} values")));
    }
    Ok(Some(values))
}

fn events(rx: tokio::sync::broadcast::Receiver<Arc<Lifecycle>>, filter: Filter) -> impl Stream<Item = Event> {
    futures_util::stream::unfold(Some((rx, filter)), |state| async move {
        let (mut rx, filter) = state?;
        loop {
            match rx.recv().await {
                Ok(e) if filter.admits(&e) => {
                    let body = LifecycleEvent {
                        event: e.name().to_string(),
                        kind: e.kind.as_str().to_string(),
                        id: e.id.clone(),
                        script: e.script.clone(),
                        status: e.status.to_string(),
                        at: iso(e.at_ms),
                    };
                    return Some((Event::json(e.name(), &body), Some((rx, filter))));
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    let body = StreamDropped {
                        reason: format!(
                            "this reader fell more than {CAPACITY} events behind the feed ({missed} missed)"
                        ),
                        resume: "read GET /jobs and GET /api/script-runs for the current state, then reconnect".into(),
                    };
                    return Some((Event::json("dropped", &body), None));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}
