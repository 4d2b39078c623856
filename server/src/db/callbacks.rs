//! The callbacks outbox (`callbacks`): its row, the conversions to and from
//! [`crate::callbacks::Callback`], and its reads. Its writes are [`WriteOp::WithCallback`] (with
//! the job's or run's insert) and [`WriteOp::UpdateCallback`] (each attempt).

use diesel::prelude::*;

use super::models::CallbackRow;
use super::schema::{callbacks, jobs, script_runs};
use super::{Store, StoreError, WriteOp};
use crate::callbacks::{Attempt, Callback, Owner};

/// The statuses after which a job's callback is due.
const ENDED: [&str; 4] = ["succeeded", "failed", "timed_out", "canceled"];
/// The statuses after which a run's callback is due.
const RUN_ENDED: [&str; 4] = ["completed", "failed", "cancelled", "aborted_limit"];

impl From<&Callback> for CallbackRow {
    fn from(c: &Callback) -> CallbackRow {
        CallbackRow {
            id: c.id.clone(),
            owner_kind: c.owner_kind.clone(),
            owner_id: c.owner_id.clone(),
            url: c.url.clone(),
            events: serde_json::to_string(&c.events).unwrap_or_else(|_| "[]".into()),
            state: c.state.clone(),
            attempts: i32::try_from(c.attempts).unwrap_or(i32::MAX),
            next_attempt_at: c.next_attempt_at,
            last_status: c.last_status.map(i32::from),
            last_error: c.last_error.clone(),
            attempt_log: serde_json::to_string(&c.attempt_log).unwrap_or_else(|_| "[]".into()),
            created_at: c.created_at,
            delivered_at: c.delivered_at,
        }
    }
}

impl From<CallbackRow> for Callback {
    fn from(r: CallbackRow) -> Callback {
        Callback {
            events: serde_json::from_str(&r.events).unwrap_or_default(),
            attempt_log: serde_json::from_str::<Vec<Attempt>>(&r.attempt_log).unwrap_or_default(),
            attempts: u32::try_from(r.attempts).unwrap_or(0),
            last_status: r.last_status.and_then(|s| u16::try_from(s).ok()),
            id: r.id,
            owner_kind: r.owner_kind,
            owner_id: r.owner_id,
            url: r.url,
            state: r.state,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            created_at: r.created_at,
            delivered_at: r.delivered_at,
        }
    }
}

impl WriteOp {
    /// `op` (a job's insert) and the job's callback in one transaction: a job that exists
    /// always has the callback it was asked with.
    pub fn with_callback(op: WriteOp, callback: &Callback) -> WriteOp {
        WriteOp::WithCallback { op: Box::new(op), callback: Box::new(CallbackRow::from(callback)) }
    }

    /// Rewrites a callback's delivery state.
    pub fn update_callback(callback: &Callback) -> WriteOp {
        WriteOp::UpdateCallback(Box::new(CallbackRow::from(callback)))
    }
}

impl Store {
    /// Up to `limit` pending callbacks due at `now` whose job or run has ended, most overdue
    /// first (jobs', then runs'), each with its owner.
    pub fn due_callbacks(&self, now: i64, limit: i64) -> Result<Vec<(Callback, Owner)>, StoreError> {
        let rows = self.read(|conn| {
            let ended = jobs::table.filter(jobs::status.eq_any(ENDED)).select(jobs::id);
            let mut rows: Vec<CallbackRow> = callbacks::table
                .filter(callbacks::state.eq("pending"))
                .filter(callbacks::next_attempt_at.le(now))
                .filter(callbacks::owner_kind.eq("job"))
                .filter(callbacks::owner_id.eq_any(ended))
                .order(callbacks::next_attempt_at)
                .limit(limit)
                .select(CallbackRow::as_select())
                .load(conn)?;
            let ended = script_runs::table.filter(script_runs::status.eq_any(RUN_ENDED)).select(script_runs::id);
            rows.extend(
                callbacks::table
                    .filter(callbacks::state.eq("pending"))
                    .filter(callbacks::next_attempt_at.le(now))
                    .filter(callbacks::owner_kind.eq("run"))
                    .filter(callbacks::owner_id.eq_any(ended))
                    .order(callbacks::next_attempt_at)
                    .limit(limit)
                    .select(CallbackRow::as_select())
                    .load::<CallbackRow>(conn)?,
            );
            Ok(rows)
        })?;
        let mut due = Vec::with_capacity(rows.len());
        for row in rows {
            let owner = match row.owner_kind.as_str() {
                "run" => self.get_run(&row.owner_id)?.map(Owner::Run),
                _ => self.get_job(&row.owner_id)?.map(Owner::Job),
            };
            if let Some(owner) = owner {
                due.push((Callback::from(row), owner));
            }
        }
        Ok(due)
    }

    /// One callback by id.
    pub fn get_callback(&self, id: &str) -> Result<Option<Callback>, StoreError> {
        self.read(|conn| {
            let row = callbacks::table
                .filter(callbacks::id.eq(id))
                .select(CallbackRow::as_select())
                .first(conn)
                .optional()?;
            Ok(row.map(Callback::from))
        })
    }

    /// Takes a due callback for one attempt, on PostgreSQL, where every node of a cluster
    /// delivers from the one outbox: moves its `next_attempt_at` from `seen` (as this node read
    /// it) to `lease_until`, so the other nodes skip it while this one tries; true if this
    /// node got it. If the node dies mid-attempt the lease runs out and another node tries
    /// (at least once). On SQLite (one server, whose deliverer never tries one callback twice
    /// at once) it is always true and writes nothing.
    pub fn claim_callback(&self, id: &str, seen: i64, lease_until: i64) -> Result<bool, StoreError> {
        if !self.health.tracked() {
            return Ok(true);
        }
        self.read(|conn| {
            let claimed = diesel::update(
                callbacks::table
                    .filter(callbacks::id.eq(id))
                    .filter(callbacks::state.eq("pending"))
                    .filter(callbacks::next_attempt_at.eq(seen)),
            )
            .set(callbacks::next_attempt_at.eq(lease_until))
            .execute(conn)?;
            Ok(claimed == 1)
        })
    }

    /// The callbacks of a job or run, oldest first.
    pub fn callbacks_of(&self, owner_id: &str) -> Result<Vec<Callback>, StoreError> {
        self.read(|conn| {
            let rows: Vec<CallbackRow> = callbacks::table
                .filter(callbacks::owner_id.eq(owner_id))
                .order(callbacks::created_at)
                .select(CallbackRow::as_select())
                .load(conn)?;
            Ok(rows.into_iter().map(Callback::from).collect())
        })
    }
}
