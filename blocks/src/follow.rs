//! Following a job's logs while a block waits for it: new complete lines of both streams are
//! handed to the front end's [`Report`] as they arrive (the OOMOL worker prints them, and
//! Studio shows a block's own output lines as its log).
//!
//! Following is best effort: a page that cannot be read is tried again on the next call and
//! never fails the block, whose result comes from the job itself. What is shown is bounded:
//! past [`MAX_SHOWN_LINES`] lines of a stream, one line says where the rest is.

use script_runner_client::wire::jobs::{JobList, LinesPage};
use script_runner_client::{query, segment, Server};
use serde_json::Value;

use crate::Report;

/// Most lines of one stream shown by one block run (the job's log keeps them all).
pub const MAX_SHOWN_LINES: u64 = 10_000;
/// Lines asked for per page.
const PAGE_LINES: u64 = 1000;
/// Pages read per stream on a call while the job runs (the rest on the next call).
const PAGES_WHILE_RUNNING: usize = 4;

const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// Where the following of one job's two streams stands.
#[derive(Debug, Clone)]
pub struct Follower {
    job_id: String,
    /// Next line offset of each stream.
    next: [u64; 2],
    /// Lines shown of each stream.
    shown: [u64; 2],
}

impl Follower {
    /// Follows a job from its first line.
    pub fn new(job_id: &str) -> Follower {
        Follower { job_id: job_id.to_string(), next: [0; 2], shown: [0; 2] }
    }

    /// Shows the lines that arrived since the last call; `to_end` (for a job that has ended)
    /// reads every page there is.
    pub fn show(&mut self, server: &Server, report: &dyn Report, to_end: bool) {
        for (i, stream) in STREAMS.iter().enumerate() {
            let mut pages = 0;
            while to_end || pages < PAGES_WHILE_RUNNING {
                pages += 1;
                let path = format!(
                    "/jobs/{}/logs?unit=lines&stream={}&offset={}&limit={PAGE_LINES}",
                    segment(&self.job_id),
                    query(stream),
                    self.next[i]
                );
                let Ok(page) = server.call::<LinesPage>("GET", &path, None::<&Value>) else { break };
                for line in &page.lines {
                    self.line(i, stream, line, report);
                }
                let moved = page.next_offset > self.next[i];
                self.next[i] = page.next_offset;
                if page.lines.is_empty() || !moved || page.next_offset >= page.total_lines {
                    break;
                }
            }
        }
    }

    fn line(&mut self, i: usize, stream: &str, line: &str, report: &dyn Report) {
        self.shown[i] += 1;
        if self.shown[i] <= MAX_SHOWN_LINES {
            report.log(stream, line);
        } else if self.shown[i] == MAX_SHOWN_LINES + 1 {
            report.log(
                stream,
                &format!(
                    "[script-runner: {stream} shown up to line {MAX_SHOWN_LINES}; the rest is in the log of job {}]",
                    self.job_id
                ),
            );
        }
    }
}

/// The id of the job started under an idempotency key, once the server has it.
pub fn job_by_key(server: &Server, key: &str) -> Option<String> {
    let path = format!("/jobs?idempotencyKey={}&limit=1", query(key));
    let page = server.call::<JobList>("GET", &path, None::<&Value>).ok()?;
    page.jobs.into_iter().next().map(|job| job.job_id)
}
