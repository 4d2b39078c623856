//! The bodies of server-sent events: a job's log followed live (`GET /jobs/:id/logs` with
//! `follow=1` or `Accept: text/event-stream`) and the server's lifecycle feed (`GET /events`).
//! Each event's `data` is one of these as one line of JSON; the event's name says which.

use serde::{Deserialize, Serialize};

/// `output`: a chunk of a followed stream, in byte units. The event's id is `nextOffset`: sent
/// back as `Last-Event-ID`, the stream resumes right after this chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct OutputChunk {
    /// Byte offset of the chunk's first byte in the stored stream.
    pub offset: u64,
    /// Byte offset just past the chunk.
    pub next_offset: u64,
    /// The chunk as text (bytes that are not UTF-8 read as U+FFFD; a chunk never splits a
    /// character).
    pub data: String,
}

/// `line`: one line of a followed stream, in line units (without its newline). The event's
/// id is `nextOffset` (this line's index + 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct OutputLine {
    /// The line's index (0-based).
    pub offset: u64,
    /// The next line's index.
    pub next_offset: u64,
    /// The line's text.
    pub line: String,
}

/// `truncated`: the follower has all the stored output, and some of the stream was not stored
/// (past `runner.maxLogBytesPerStream`, or the disk failed): said once per stream, as the log
/// pages' `truncated` and `outputError` say it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct OutputNotStored {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Bytes stored (what the follower has).
    pub stored_bytes: u64,
    /// Whether output past the cap was dropped.
    pub truncated: bool,
    /// Why output could not be stored, if the disk failed.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub output_error: Option<String>,
}

/// An event of the server's lifecycle feed (`GET /events`): named `job.created`,
/// `job.started`, `job.ended`, `run.created`, `run.started` or `run.ended`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LifecycleEvent {
    /// The event's name, as in the SSE `event:` field.
    pub event: String,
    /// `job` or `run`.
    pub kind: String,
    /// The job's or run's id.
    pub id: String,
    /// Its script (a job's script id, a run's workflow name).
    pub script: String,
    /// Its status after the event.
    pub status: String,
    /// When it happened (ISO time).
    pub at: String,
}

/// `dropped`: the last event of a stream the server ends before its source does, because the
/// reader fell too far behind the feed or the server stops: how to catch up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StreamDropped {
    /// Why the stream ends.
    pub reason: String,
    /// What to do to catch up.
    pub resume: String,
}
