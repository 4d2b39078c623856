//! The listener thread: `LISTEN` on a connection of its own, and the poll behind it.
//!
//! Notifications only make a node look sooner; the rows are the truth. So the thread also polls
//! the cancel flags of the jobs this node runs every [`POLL_EVERY`], and rings the claimer and
//! the run take-over then too: a notification lost with a connection delays a claim or a cancel
//! by that much at most.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use log::{info, warn};

use super::Node;
use crate::db::cluster::{self as store, JOB_CANCEL, JOB_QUEUED, RUNS_FREE};
use crate::sync::lock;

/// How often notifications are read (libpq reads them without blocking).
const READ_EVERY: Duration = Duration::from_millis(25);
/// How often the rows are polled.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Runs until the node stops.
pub(super) fn run(node: &Node) {
    let inner = &node.inner;
    let mut conn: Option<diesel::PgConnection> = None;
    let mut last_poll = Instant::now();
    let mut failing_since: Option<Instant> = None;
    while !inner.stopping.load(Ordering::Acquire) {
        if conn.is_none() {
            match store::own_connection(&inner.location).and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {JOB_QUEUED}; LISTEN {JOB_CANCEL}; LISTEN {RUNS_FREE}"))?;
                Ok(c)
            }) {
                Ok(c) => {
                    if failing_since.take().is_some() {
                        info!("cluster: listening again");
                    }
                    conn = Some(c);
                    // Whatever was told meanwhile was missed: look now.
                    node.note_work();
                    inner.runs_free.notify_one();
                }
                Err(e) => {
                    if failing_since.is_none() {
                        warn!("cluster: cannot listen for notifications (retrying): {e}");
                        failing_since = Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let Some(connection) = conn.as_mut() else { continue };
        let mut lost = false;
        for notification in connection.notifications_iter() {
            match notification {
                Ok(n) if n.channel == JOB_QUEUED => node.note_work(),
                Ok(n) if n.channel == RUNS_FREE => inner.runs_free.notify_one(),
                Ok(n) if n.channel == JOB_CANCEL => cancel(node, &n.payload),
                Ok(_) => {}
                Err(e) => {
                    warn!("cluster: notifications lost ({e}); reconnecting");
                    lost = true;
                    break;
                }
            }
        }
        if lost {
            conn = None;
            continue;
        }
        if last_poll.elapsed() >= POLL_EVERY {
            last_poll = Instant::now();
            match inner.store.cancels_asked(&inner.key) {
                Ok(ids) => ids.iter().for_each(|id| cancel(node, id)),
                Err(e) => warn!("cluster: cannot poll cancel requests: {e}"),
            }
            node.note_work();
            inner.runs_free.notify_one();
        }
        std::thread::sleep(READ_EVERY);
    }
}

fn cancel(node: &Node, id: &str) {
    if let Some(hook) = lock(&node.inner.cancel).as_ref() {
        hook(id);
    }
}
