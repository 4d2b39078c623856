//! TEMPORARY local stand-in for the lead's shared `http/sse.rs` (same API), so the run events
//! route can be built and tested before main has it; replaced by main's at the merge.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use futures_util::{Stream, StreamExt};

use super::ApiError;

/// One server-sent event.
pub struct Event {
    text: String,
}

impl Event {
    /// An event named `event` whose data is `body` as JSON.
    pub fn json<T: serde::Serialize>(event: &'static str, body: &T) -> Event {
        let data = serde_json::to_string(body).unwrap_or_else(|_| "null".into());
        Event { text: format!("event: {event}\ndata: {data}\n") }
    }

    /// The event with an `id:`.
    pub fn with_id(self, id: impl Into<String>) -> Event {
        Event { text: format!("id: {}\n{}", id.into(), self.text) }
    }
}

/// The open streams of a server.
#[derive(Clone, Default)]
pub struct Streams {
    open: Arc<AtomicUsize>,
}

/// A place among the open streams, given back when dropped.
pub struct Slot {
    open: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Streams {
    /// A slot, or 429 past the cap.
    pub fn open(&self) -> Result<Slot, ApiError> {
        if self.open.fetch_add(1, Ordering::SeqCst) >= 64 {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::QueueFull("too many streams".into()));
        }
        Ok(Slot { open: Arc::clone(&self.open) })
    }
}

/// The response streaming `events`, with heartbeats while idle.
pub fn respond(slot: Slot, events: impl Stream<Item = Event> + 'static) -> HttpResponse {
    let events = Box::pin(events);
    let body = futures_util::stream::unfold((events, slot), |(mut events, slot)| async move {
        tokio::select! {
            next = events.next() => next.map(|e| (Ok::<_, actix_web::Error>(Bytes::from(e.text + "\n")), (events, slot))),
            () = tokio::time::sleep(Duration::from_secs(15)) => Some((Ok(Bytes::from_static(b": heartbeat\n\n")), (events, slot))),
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(body)
}

/// `Last-Event-ID`, or `?lastEventId=`.
pub fn last_event_id(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let header = req.headers().get("Last-Event-ID").map(|v| v.to_str().unwrap_or("x").to_string());
    let query = || {
        req.query_string()
            .split('&')
            .find_map(|kv| kv.strip_prefix("lastEventId="))
            .map(ToString::to_string)
    };
    match header.or_else(query) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::InvalidArgs(format!("Last-Event-ID {v:?} must be a non-negative integer"))),
    }
}
