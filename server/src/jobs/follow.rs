//! Following a job's output as it is written: what a reader waits on between two reads of
//! the log, so it wakes when the stream grows or the job ends instead of polling.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::model::Job;
use super::JobManager;
use crate::process::logs::{LiveStream, Stream};
use crate::sync::lock;

/// How often a follower looks again when nothing here can wake it: a job still queued (no
/// output yet) or one that another node of the cluster runs (its log is read from there).
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// What one follower of one stream of a job waits on. Made before the follower reads the log,
/// so a write between that read and the wait is never missed.
pub struct OutputWatch {
    live: Option<Arc<LiveStream>>,
    done: Option<watch::Receiver<Option<Job>>>,
    /// The stream's stored size when last looked at.
    seen: u64,
}

impl OutputWatch {
    /// Waits until the stream may have grown past what was seen, the job may have ended, or
    /// `bound` has passed; the caller then reads again.
    pub async fn changed(&mut self, bound: Duration) {
        let Some(live) = &self.live else {
            // Queued here, or running elsewhere: nothing here is told of its output.
            match &mut self.done {
                Some(done) => {
                    let _ = tokio::time::timeout(bound.min(POLL_EVERY), done.changed()).await;
                }
                None => tokio::time::sleep(bound.min(POLL_EVERY)).await,
            }
            return;
        };
        let notified = live.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let size = live.size.load(Ordering::Acquire);
        if size != self.seen || self.done.as_ref().is_some_and(|d| d.borrow().is_some()) {
            self.seen = size;
            return;
        }
        match &mut self.done {
            Some(done) => {
                tokio::select! {
                    () = &mut notified => {}
                    _ = done.changed() => {}
                    () = tokio::time::sleep(bound) => {}
                }
            }
            None => {
                let _ = tokio::time::timeout(bound, notified).await;
            }
        }
        self.seen = live.size.load(Ordering::Acquire);
    }
}

impl JobManager {
    /// A watch on one stream of a job, for a reader about to read its log: live if the job
    /// runs here, a short poll otherwise.
    pub fn watch_output(&self, id: &str, stream: Stream) -> OutputWatch {
        let Some(active) = self.shared.active(id) else {
            return OutputWatch { live: None, done: None, seen: 0 };
        };
        let live = lock(&active.live).as_ref().map(|[out, err]| match stream {
            Stream::Stdout => Arc::clone(out),
            Stream::Stderr => Arc::clone(err),
        });
        let seen = live.as_ref().map_or(0, |l| l.size.load(Ordering::Acquire));
        OutputWatch { live, done: Some(active.done.subscribe()), seen }
    }
}
