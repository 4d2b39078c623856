//! `GET /jobs/:id/logs` followed live (`follow=1`, or `Accept: text/event-stream`): the job's
//! stream as server-sent events from an offset, then `end` with the final job.
//!
//! The stream is pull-based (see [`super::sse`]): each event is read from the log when the
//! client has taken the previous one, so a slow reader costs one page of memory and resumes
//! from the file where it stopped; between reads a caught-up reader sleeps on the job's
//! [`crate::jobs::follow::OutputWatch`] and wakes at the next write.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::Stream;
use script_runner_wire::events::{OutputChunk, OutputLine, OutputNotStored};
use script_runner_wire::ErrorBody;

use super::jobs::{BYTES_DEFAULT, LINES_DEFAULT};
use super::sse::Event;
use super::wire::job_view;
use super::ApiError;
use crate::jobs::JobManager;
use crate::process::logs::Stream as LogStream;

/// Longest wait between two reads of a running job's log, should a wake-up be missed.
const WAIT_BOUND: Duration = Duration::from_millis(500);

/// What is followed: one stream of one job, in bytes or lines, from `offset`.
pub struct Follow {
    /// The job service.
    pub jobs: JobManager,
    /// The job.
    pub id: String,
    /// Its stream.
    pub stream: LogStream,
    /// Line events instead of byte chunks.
    pub lines: bool,
    /// Where to start: a byte offset, or a line index.
    pub offset: u64,
}

struct State {
    follow: Follow,
    ready: VecDeque<Event>,
    /// Said whether output went unstored (once).
    noticed: bool,
    ended: bool,
}

/// The events of a followed stream.
pub fn events(follow: Follow) -> impl Stream<Item = Event> {
    let state = State { follow, ready: VecDeque::new(), noticed: false, ended: false };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.ready.pop_front() {
                return Some((event, st));
            }
            if st.ended {
                return None;
            }
            if let Err(e) = st.fill().await {
                // The job is gone, or its log unreadable: the stream says so and ends.
                st.ended = true;
                let e = ApiError::from(e);
                return Some((Event::json("error", &ErrorBody::new(e.code(), e.to_string())), st));
            }
        }
    })
}

impl State {
    /// Reads what comes next into `ready`, waiting for output while the job runs.
    async fn fill(&mut self) -> Result<(), crate::jobs::JobError> {
        let (jobs, id, stream) = (self.follow.jobs.clone(), self.follow.id.clone(), self.follow.stream);
        loop {
            // Made before the read, so a write after it wakes the wait below.
            let mut watch = jobs.watch_output(&id, stream);
            // Whether the job had ended before this read: then the read saw all its output.
            let job = jobs.get(&id).await?;
            let size_before = job.stream(stream).size;
            let ended = job.status.is_terminal().then(|| job.clone());
            let (truncated, output_error, stored) = if self.follow.lines {
                let view = jobs.read_lines_of(&job, stream, self.follow.offset, LINES_DEFAULT, false).await?;
                let page = view.page;
                for (i, line) in page.lines.into_iter().enumerate() {
                    let offset = page.offset + i as u64;
                    let body = OutputLine { offset, next_offset: offset + 1, line };
                    self.ready.push_back(Event::json("line", &body).with_id((offset + 1).to_string()));
                }
                self.follow.offset = page.next_offset.max(self.follow.offset);
                (view.truncated, view.output_error, None)
            } else {
                let view = jobs.read_bytes_of(&job, stream, self.follow.offset, BYTES_DEFAULT, false).await?;
                let page = view.page;
                let (text, used) = whole_chars(&page.data, ended.is_some() && page.next_offset >= page.total_size);
                if used > 0 {
                    let next_offset = page.offset + used as u64;
                    let body = OutputChunk { offset: page.offset, next_offset, data: text };
                    self.ready.push_back(Event::json("output", &body).with_id(next_offset.to_string()));
                    self.follow.offset = next_offset;
                }
                (view.truncated, view.output_error, Some(page.total_size))
            };
            if !self.ready.is_empty() {
                return Ok(());
            }
            // Caught up with what is stored.
            if !self.noticed && (truncated || output_error.is_some()) {
                self.noticed = true;
                let stored_bytes = stored.unwrap_or(size_before);
                let body =
                    OutputNotStored { stream: stream.as_str().to_string(), stored_bytes, truncated, output_error };
                self.ready.push_back(Event::json("truncated", &body));
            }
            if let Some(job) = ended {
                self.ended = true;
                let last = self.follow.offset.to_string();
                self.ready.push_back(Event::json("end", &job_view(job)).with_id(last));
                return Ok(());
            }
            if !self.ready.is_empty() {
                return Ok(());
            }
            watch.changed(WAIT_BOUND).await;
        }
    }
}

/// The longest prefix of `data` that does not end inside a UTF-8 character (all of it when
/// `last`: nothing more will come), as text, and its length in bytes. Bytes that are not
/// UTF-8 read as U+FFFD.
fn whole_chars(data: &[u8], last: bool) -> (String, usize) {
    let used = if last { data.len() } else { data.len() - incomplete_tail(data) };
    (String::from_utf8_lossy(&data[..used]).into_owned(), used)
}

/// How many bytes at the end of `data` start a UTF-8 character that is not complete yet.
fn incomplete_tail(data: &[u8]) -> usize {
    // A character is at most 4 bytes: its lead byte is within the last 3 of an incomplete one.
    for back in 1..=data.len().min(3) {
        let b = data[data.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte
        }
        let needs = match b {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if needs > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_never_splits_a_character() {
        let euro = "€".as_bytes(); // 3 bytes
        let data = [b"ab".as_slice(), &euro[..2]].concat();
        assert_eq!(whole_chars(&data, false), ("ab".to_string(), 2));
        assert_eq!(whole_chars(&data, true).1, 4, "the last chunk is all of it");
        let invalid = [b"a\xffb".as_slice(), &euro[..1]].concat();
        assert_eq!(whole_chars(&invalid, false), ("a\u{fffd}b".to_string(), 3));
        assert_eq!(whole_chars("a€".as_bytes(), false).1, 4);
    }
}
