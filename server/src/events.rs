//! The server's lifecycle feed: every job and workflow run created, started and ended here,
//! as it happens, for `GET /events` (a dashboard, an external tool).
//!
//! A broadcast channel of fixed capacity: publishing never waits for a reader, and a reader
//! that falls more than [`CAPACITY`] events behind loses its place (its stream ends with an
//! event that says how to catch up) instead of holding events in memory. With no reader,
//! publishing costs one atomic load.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::time::now_ms;

/// Events a reader may fall behind before it is dropped.
pub const CAPACITY: usize = 1024;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A job (`POST /run`, or a workflow's script step).
    Job,
    /// A workflow run.
    Run,
}

impl Kind {
    /// The wire name (`job`, `run`), also the `kind=` filter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Job => "job",
            Kind::Run => "run",
        }
    }

    /// Parses a `kind=` value.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "job" => Some(Kind::Job),
            "run" => Some(Kind::Run),
            _ => None,
        }
    }
}

/// Where in its life the job or run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted (queued, or about to run).
    Created,
    /// Its process started.
    Started,
    /// It reached a final status.
    Ended,
}

/// One event of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    /// Job or run.
    pub kind: Kind,
    /// Created, started or ended.
    pub phase: Phase,
    /// The job's or run's id.
    pub id: String,
    /// A job's script id; a run's workflow.
    pub script: String,
    /// Its status after the event.
    pub status: &'static str,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

impl Lifecycle {
    /// The event's name: `job.created`, `run.ended`, …
    pub fn name(&self) -> &'static str {
        match (self.kind, self.phase) {
            (Kind::Job, Phase::Created) => "job.created",
            (Kind::Job, Phase::Started) => "job.started",
            (Kind::Job, Phase::Ended) => "job.ended",
            (Kind::Run, Phase::Created) => "run.created",
            (Kind::Run, Phase::Started) => "run.started",
            (Kind::Run, Phase::Ended) => "run.ended",
        }
    }
}

/// The feed. Cheap to clone (shared).
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Lifecycle>>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub { tx: broadcast::channel(CAPACITY).0 }
    }
}

impl Hub {
    /// Publishes an event, if anyone listens (the event is only built then).
    pub fn publish(&self, kind: Kind, phase: Phase, id: &str, script: &str, status: &'static str) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let event = Lifecycle { kind, phase, id: id.to_string(), script: script.to_string(), status, at_ms: now_ms() };
        // No receiver left since the count: nobody to tell.
        let _ = self.tx.send(Arc::new(event));
    }

    /// A reader from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Lifecycle>> {
        self.tx.subscribe()
    }
}
