//! Whether the database answers, as the last reads and writes saw it: what lets a new job be
//! refused at once with `STORE_UNAVAILABLE` rather than started while its state could not be
//! recorded. Only a PostgreSQL server can go away under a running service; an embedded SQLite
//! file is always there (its errors are the statements', see [`Health::tracked`]).

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::time::now_ms;

/// How long a success vouches for the database: a submission within this time of the last
/// successful read or commit trusts it; later, it checks first (one round trip). A database
/// lost within this window is found by the first write that fails instead.
const VOUCHES_FOR: Duration = Duration::from_secs(1);

/// What the store's reads and the writer's lanes last saw of the database.
#[derive(Debug)]
pub struct Health {
    /// Whether the database can be lost (PostgreSQL) and so is tracked at all.
    tracked: bool,
    /// When a read or a commit last succeeded (Unix ms).
    last_ok_ms: AtomicI64,
    /// When a read last found the database unreachable (Unix ms): a success before that no
    /// longer vouches for it.
    last_lost_ms: AtomicI64,
    /// Writer lanes that lost their connection and have not got it back.
    lanes_down: AtomicUsize,
}

impl Health {
    /// Health of a database that can be lost (`tracked`: PostgreSQL) or not (SQLite).
    pub fn new(tracked: bool) -> Health {
        Health {
            tracked,
            last_ok_ms: AtomicI64::new(now_ms()),
            last_lost_ms: AtomicI64::new(i64::MIN),
            lanes_down: AtomicUsize::new(0),
        }
    }

    /// Whether the database can be lost while serving (a server, not a file).
    pub fn tracked(&self) -> bool {
        self.tracked
    }

    /// A read or a commit succeeded.
    pub fn saw_ok(&self) {
        if self.tracked {
            self.last_ok_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// A read found the database unreachable: until a read or a commit succeeds again, a
    /// submission asks the database first (without this, a commit made just before the
    /// database was lost vouched for it for up to [`VOUCHES_FOR`], and a sync job started
    /// whose end could not be recorded).
    pub fn saw_lost(&self) {
        if self.tracked {
            self.last_lost_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// When a read or a commit last succeeded (Unix ms): a writer lane that lost the database
    /// before that is worth reconnecting at once.
    pub fn last_ok_ms(&self) -> i64 {
        self.last_ok_ms.load(Ordering::Relaxed)
    }

    /// A writer lane lost its connection.
    pub fn lane_down(&self) {
        self.lanes_down.fetch_add(1, Ordering::Relaxed);
    }

    /// A writer lane has its connection back.
    pub fn lane_up(&self) {
        self.lanes_down.fetch_sub(1, Ordering::Relaxed);
        self.saw_ok();
    }

    /// Whether the database answered recently, nothing found it unreachable since, and no
    /// writer lane is without it: then it is taken as available without asking it.
    pub fn vouched(&self) -> bool {
        if !self.tracked {
            return true;
        }
        let last_ok = self.last_ok_ms.load(Ordering::Relaxed);
        let fresh = now_ms().saturating_sub(last_ok) < i64::try_from(VOUCHES_FOR.as_millis()).unwrap_or(i64::MAX);
        // Within one millisecond the order is unknown: the loss wins.
        let since_lost = last_ok > self.last_lost_ms.load(Ordering::Relaxed);
        fresh && since_lost && self.lanes_down.load(Ordering::Relaxed) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that found the database gone takes back a success that came before it: the next
    /// submission asks the database instead of trusting it.
    #[test]
    fn a_loss_after_the_last_success_stops_vouching_until_the_next_success() {
        let health = Health::new(true);
        health.saw_ok();
        assert!(health.vouched());
        std::thread::sleep(Duration::from_millis(2));
        health.saw_lost();
        assert!(!health.vouched());
        std::thread::sleep(Duration::from_millis(2));
        health.saw_ok();
        assert!(health.vouched());
    }

    /// SQLite (untracked) is always vouched for.
    #[test]
    fn an_untracked_database_is_always_vouched_for() {
        let health = Health::new(false);
        health.saw_lost();
        assert!(health.vouched());
    }
}
