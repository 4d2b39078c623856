//! The callbacks outbox (`callbacks`): its row, the conversions to and from
//! [`crate::callbacks::Callback`], and its reads. Its writes are [`WriteOp::WithCallback`] (with
//! the job's or run's insert) and [`WriteOp::UpdateCallback`] (each attempt).

use diesel::prelude::*;

use super::models::CallbackRow;
use super::schema::{callbacks, jobs, script_run_events, script_runs};
use super::{Store, StoreError, WriteOp};
use crate::callbacks::{Attempt, Callback, Owner};

/// The statuses after which a job's callback is due.
const ENDED: [&str; 4] = ["succeeded", "failed", "timed_out", "canceled"];
/// The statuses after which a run's callback is due.
const RUN_ENDED: [&str; 4] = ["completed", "failed", "cancelled", "aborted_limit"];
/// The run events that are a change of status short of the end (`GET .../events` names):
/// what a `status` callback delivers (the end is its `completed` or `failed` delivery).
const STATUS_KINDS: [&str; 3] = ["status", "paused", "resumed"];
/// Runs with a pending `status` callback looked at per pass of the deliverer.
const MAX_WATCHED_RUNS: i64 = 10_000;

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
            status_seq: c.status_seq,
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
            status_seq: r.status_seq,
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
        let mut due = self.with_owners(rows)?;
        due.extend(self.due_status_callbacks(now, limit)?);
        Ok(due)
    }

    /// Pending `status` callbacks of jobs and runs that have not ended, due at `now`, with a
    /// status change not yet delivered: a job that has started (its start not delivered yet),
    /// a run with a status event past the callback's `status_seq`. Two reads for the runs
    /// however many wait (no query per callback), so a thousand awaiting runs cost no more.
    fn due_status_callbacks(&self, now: i64, limit: i64) -> Result<Vec<(Callback, Owner)>, StoreError> {
        let rows = self.read(|conn| {
            let pending = callbacks::table
                .filter(callbacks::state.eq("pending"))
                .filter(callbacks::next_attempt_at.le(now))
                .filter(callbacks::events.like("%\"status\"%"));
            let started = jobs::table.filter(jobs::status.eq("running")).select(jobs::id);
            let mut rows: Vec<CallbackRow> = pending
                .filter(callbacks::owner_kind.eq("job"))
                .filter(callbacks::status_seq.eq(0))
                .filter(callbacks::owner_id.eq_any(started))
                .order(callbacks::next_attempt_at)
                .limit(limit)
                .select(CallbackRow::as_select())
                .load(conn)?;
            let live = script_runs::table.filter(script_runs::status.ne_all(RUN_ENDED)).select(script_runs::id);
            let waiting: Vec<CallbackRow> = pending
                .filter(callbacks::owner_kind.eq("run"))
                .filter(callbacks::owner_id.eq_any(live))
                .order(callbacks::next_attempt_at)
                .limit(MAX_WATCHED_RUNS)
                .select(CallbackRow::as_select())
                .load(conn)?;
            if waiting.is_empty() {
                return Ok(rows);
            }
            let ids: Vec<&str> = waiting.iter().map(|r| r.owner_id.as_str()).collect();
            let latest: Vec<(String, Option<i64>)> = script_run_events::table
                .filter(script_run_events::run_id.eq_any(&ids))
                .filter(script_run_events::kind.eq_any(STATUS_KINDS))
                .group_by(script_run_events::run_id)
                .select((script_run_events::run_id, diesel::dsl::max(script_run_events::seq)))
                .load(conn)?;
            let latest: std::collections::HashMap<String, i64> =
                latest.into_iter().filter_map(|(id, seq)| seq.map(|seq| (id, seq))).collect();
            let behind = waiting.into_iter().filter(|r| latest.get(&r.owner_id).is_some_and(|seq| *seq > r.status_seq));
            rows.extend(behind.take(usize::try_from(limit).unwrap_or(0)));
            Ok(rows)
        })?;
        self.with_owners(rows)
    }

    /// Each callback with its job or run, as stored now (one whose owner is gone is dropped).
    fn with_owners(&self, rows: Vec<CallbackRow>) -> Result<Vec<(Callback, Owner)>, StoreError> {
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

    /// A run's first status change after event `after` (its number and the run as it was, as
    /// stored with the event), for a `status` callback.
    pub fn next_status_event(&self, run_id: &str, after: i64) -> Result<Option<(i64, String, i64)>, StoreError> {
        self.read(|conn| {
            Ok(script_run_events::table
                .filter(script_run_events::run_id.eq(run_id))
                .filter(script_run_events::seq.gt(after))
                .filter(script_run_events::kind.eq_any(STATUS_KINDS))
                .order(script_run_events::seq)
                .select((script_run_events::seq, script_run_events::body, script_run_events::at))
                .first(conn)
                .optional()?)
        })
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
