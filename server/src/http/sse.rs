//! Server-sent event streams: what every streaming route shares.
//!
//! A route builds its events as a pull-based [`futures_util::Stream`]: the next event is made
//! (read from a log file or the database) only when the client has taken the previous one, so
//! a stalled client holds at most one event and the socket's buffers, never a growing queue,
//! and picks up from storage where it stopped. [`respond`] wraps such a stream: heartbeat
//! comments while it is idle (so proxies keep an idle stream open), a final `shutdown` event
//! when the server stops, and the [`Slot`] that counts the stream against `server.maxStreams`
//! until the client goes.
//!
//! Every event's `data` is one line of JSON (log text included, escaped), so a client never
//! has to rejoin `data:` lines and no `\r` in a script's output can split an event.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::watch;

use super::ApiError;

/// Default of `server.maxStreams`.
pub const DEFAULT_MAX_STREAMS: usize = 1024;
/// Default of `server.streamHeartbeatSec`.
pub const DEFAULT_HEARTBEAT_SEC: u64 = 15;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    id: Option<String>,
    event: &'static str,
    data: String,
}

impl Event {
    /// An event named `event` whose data is `body` as one line of JSON.
    pub fn json<T: Serialize>(event: &'static str, body: &T) -> Event {
        // Serializing a wire type cannot fail (string keys, no foreign serializers); should it
        // ever, the client still gets a well-formed event that says so.
        let data = serde_json::to_string(body).unwrap_or_else(|e| {
            serde_json::json!({ "ok": false, "code": "INTERNAL_ERROR", "error": e.to_string() }).to_string()
        });
        Event { id: None, event, data }
    }

    /// The event with an `id:` field: what the client sends back as `Last-Event-ID`.
    pub fn with_id(mut self, id: impl Into<String>) -> Event {
        self.id = Some(id.into());
        self
    }

    /// The event's name.
    pub fn name(&self) -> &'static str {
        self.event
    }

    /// The event in the wire format: `id:`, `event:`, one `data:` line, a blank line.
    pub fn encode(&self) -> Bytes {
        let mut out = String::with_capacity(self.data.len() + self.event.len() + 32);
        if let Some(id) = &self.id {
            out.push_str("id: ");
            out.push_str(id);
            out.push('\n');
        }
        out.push_str("event: ");
        out.push_str(self.event);
        out.push_str("\ndata: ");
        // JSON text has no raw line breaks; a `data` built otherwise is kept on one line.
        if self.data.contains(['\n', '\r']) {
            out.push_str(&self.data.replace(['\n', '\r'], " "));
        } else {
            out.push_str(&self.data);
        }
        out.push_str("\n\n");
        Bytes::from(out)
    }
}

/// The kernel's send buffer of every connection (Linux doubles it for its bookkeeping).
///
/// Left to itself, Linux grows a connection's send buffer to megabytes (`tcp_wmem`), whatever
/// the peer reads: each stalled event-stream reader would make the server produce, and the
/// kernel hold, megabytes of events it may never take. Capped, a stalled reader costs this
/// much of kernel memory and no more work; 256 KiB still moves any answer at full speed over
/// loopback or a LAN.
pub const SEND_BUFFER_BYTES: usize = 128 * 1024;

/// Called for each new connection (`HttpServer::on_connect`): caps its send buffer.
pub fn on_connect(conn: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(SEND_BUFFER_BYTES) {
            log::debug!("cannot cap a connection's send buffer: {e}");
        }
    }
}

/// The open streams of this server: their cap (`server.maxStreams`), their heartbeat and the
/// signal that ends them all at shutdown. Cheap to clone (shared).
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

struct Inner {
    max: usize,
    open: AtomicUsize,
    heartbeat: Duration,
    shutdown: watch::Sender<bool>,
}

/// One open stream, counted against the cap until dropped (when the client has gone or the
/// stream ended).
pub struct Slot {
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Streams {
    /// At most `max` streams at once, a heartbeat comment after `heartbeat` of silence.
    pub fn new(max: usize, heartbeat: Duration) -> Streams {
        Streams {
            inner: Arc::new(Inner { max, open: AtomicUsize::new(0), heartbeat, shutdown: watch::channel(false).0 }),
        }
    }

    /// Takes a slot for a new stream, or `429 TOO_MANY_STREAMS` when `max` are open.
    pub fn open(&self) -> Result<Slot, ApiError> {
        let max = self.inner.max;
        self.inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| ApiError::TooManyStreams(max))?;
        if *self.inner.shutdown.borrow() {
            // Dropping the slot gives it back.
            drop(Slot { inner: Arc::clone(&self.inner) });
            return Err(ApiError::ShuttingDown("the server is shutting down".into()));
        }
        Ok(Slot { inner: Arc::clone(&self.inner) })
    }

    /// Streams open now.
    pub fn open_count(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Ends every open stream with a `shutdown` event, and refuses new ones (the server is
    /// stopping: a stream would otherwise hold its connection, and the stop, until its
    /// client left).
    pub fn shut_down(&self) {
        self.inner.shutdown.send_replace(true);
    }
}

/// The `Last-Event-ID` a client sends to resume (the header, or a `lastEventId` query
/// parameter for clients that cannot set headers), as a non-negative integer.
pub fn last_event_id(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let header = req.headers().get("last-event-id").map(|v| v.to_str().unwrap_or("\u{fffd}").trim().to_string());
    let query = || {
        actix_web::web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("lastEventId").map(|v| v.trim().to_string()))
    };
    match header.filter(|v| !v.is_empty()).or_else(query) {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse::<u64>().map(Some).map_err(|_| ApiError::InvalidArgs("Last-Event-ID is out of range".into()))
        }
        Some(_) => Err(ApiError::InvalidArgs("Last-Event-ID must be a non-negative integer (an event id)".into())),
    }
}

/// Whether the client asked for an event stream (`Accept: text/event-stream`).
pub fn wants_events(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(actix_web::http::header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/event-stream")))
}

/// The streaming response: `events` as server-sent events, heartbeats while it is idle, a
/// `shutdown` event when the server stops, then the end. `events` is polled only when the
/// client can take more.
pub fn respond(slot: Slot, events: impl Stream<Item = Event> + 'static) -> HttpResponse {
    let shutdown = slot.inner.shutdown.subscribe();
    let heartbeat = slot.inner.heartbeat;
    let state = Body { events: Box::pin(events), slot, shutdown, heartbeat, started: false, done: false };
    let body = futures_util::stream::unfold(state, next_chunk);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        // nginx buffers responses unless told not to.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

struct Body {
    events: Pin<Box<dyn Stream<Item = Event>>>,
    #[allow(dead_code, reason = "held: the stream counts against the cap until dropped")]
    slot: Slot,
    shutdown: watch::Receiver<bool>,
    heartbeat: Duration,
    started: bool,
    done: bool,
}

async fn next_chunk(mut st: Body) -> Option<(Result<Bytes, Infallible>, Body)> {
    if st.done {
        return None;
    }
    if !st.started {
        // A first comment sends the headers at once, and tells EventSource clients how soon
        // to reconnect.
        st.started = true;
        return Some((Ok(Bytes::from_static(b"retry: 1000\n: stream open\n\n")), st));
    }
    enum Next {
        Shutdown,
        Event(Option<Event>),
        Idle,
    }
    let next = tokio::select! {
        biased;
        _ = st.shutdown.wait_for(|stopping| *stopping) => Next::Shutdown,
        event = st.events.next() => Next::Event(event),
        () = tokio::time::sleep(st.heartbeat) => Next::Idle,
    };
    match next {
        Next::Shutdown => {
            st.done = true;
            let body = script_runner_wire::events::StreamDropped {
                reason: "the server is shutting down".into(),
                resume: "reconnect (to this or another server) with the Last-Event-ID of the last event received"
                    .into(),
            };
            Some((Ok(Event::json("shutdown", &body).encode()), st))
        }
        Next::Event(event) => event.map(|e| (Ok(e.encode()), st)),
        Next::Idle => Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_data_line() {
        let e = Event::json("output", &serde_json::json!({ "data": "a\nb\r\n" })).with_id("7");
        assert_eq!(&e.encode()[..], b"id: 7\nevent: output\ndata: {\"data\":\"a\\nb\\r\\n\"}\n\n");
    }

    #[test]
    fn the_cap_counts_open_streams() {
        let streams = Streams::new(2, Duration::from_secs(1));
        let a = streams.open().map_err(|e| e.to_string());
        let b = streams.open().map_err(|e| e.to_string());
        assert!(a.is_ok() && b.is_ok());
        assert!(matches!(streams.open(), Err(ApiError::TooManyStreams(2))));
        drop(a);
        assert_eq!(streams.open_count(), 1);
        assert!(streams.open().is_ok(), "a closed stream frees its slot");
    }
}
