//! The cluster's statements (PostgreSQL only): node leases, the shared queue of async jobs,
//! cancel requests, and which node holds which workflow run. The rules they serve are in
//! `crate::cluster`; here is only how they are kept in the database.
//!
//! Every time compared with a lease is the database's (`now()`), never a node's clock. Every
//! statement a node makes about its own work runs in a transaction that first takes its node's
//! advisory lock shared and checks its epoch ([`guard`]), as the writer's commits do (see
//! [`super::writer::Fence`]): a node declared dead changes nothing, and the reaper, which takes
//! that lock exclusively before it declares the node dead, waits for any such transaction.

use std::collections::HashMap;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel::PgConnection;

use super::models::{JobRow, RunRow};
use super::schema::{jobs, script_runs};
use super::{postgres, DbConnection, Location, Store, StoreError};
use crate::jobs::model::Job;
use crate::runs::model::Run;

/// The channel a node is told on that a job was queued (any node may claim it): the insert's
/// trigger (migration `cluster`) notifies it.
pub const JOB_QUEUED: &str = "script_runner_job_queued";
/// The channel a job's owner is told on that a cancel was asked for it (payload: its id).
pub const JOB_CANCEL: &str = "script_runner_job_cancel";
/// The channel nodes are told on that runs were let go (any node may take them).
pub const RUNS_FREE: &str = "script_runner_runs_free";
/// The advisory lock one reaper at a time holds (its transaction's).
const REAPER_LOCK: i64 = 0x7363_7269_7074_0001;
/// Run statuses a node holds in memory (not terminal).
const LIVE_RUN_STATUSES: &str = "('running', 'awaiting', 'paused')";

/// A node as registered: who it is in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKey {
    /// The node's id.
    pub id: String,
    /// Its epoch, new at every start.
    pub epoch: i64,
}

/// A node's row, for `GET /cluster` and for reaching it.
#[derive(Debug, Clone, QueryableByName)]
pub struct NodeRow {
    /// Its id.
    #[diesel(sql_type = Text)]
    pub id: String,
    /// Its epoch.
    #[diesel(sql_type = BigInt)]
    pub epoch: i64,
    /// Where other nodes reach it.
    #[diesel(sql_type = Text)]
    pub advertise: String,
    /// The secret its internal routes expect.
    #[diesel(sql_type = Text)]
    pub token: String,
    /// `up`, `draining`, `stopped` or `dead`.
    #[diesel(sql_type = Text)]
    pub state: String,
    /// `runner.maxConcurrent`.
    #[diesel(sql_type = Integer)]
    pub capacity: i32,
    /// Unix ms.
    #[diesel(sql_type = BigInt)]
    pub started_at: i64,
    /// Unix ms of its last heartbeat.
    #[diesel(sql_type = BigInt)]
    pub heartbeat_at: i64,
    /// Unix ms its lease ends at.
    #[diesel(sql_type = BigInt)]
    pub lease_until: i64,
    /// Unix ms it stopped or was declared dead.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub ended_at: Option<i64>,
    /// Why it ended.
    #[diesel(sql_type = Nullable<Text>)]
    pub reason: Option<String>,
    /// Jobs it runs now.
    #[diesel(sql_type = BigInt)]
    pub running: i64,
    /// Runs it holds now.
    #[diesel(sql_type = BigInt)]
    pub runs: i64,
}

/// What one sweep of the reaper did.
#[derive(Debug, Default, Clone)]
pub struct Reaped {
    /// Nodes it declared dead now.
    pub dead: Vec<String>,
    /// Jobs it ended `failed` (running on a node that is gone).
    pub failed_jobs: Vec<String>,
    /// Runs it let go (held by a node that is gone).
    pub freed_runs: usize,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = Text)]
    id: String,
}

#[derive(QueryableByName)]
struct State {
    #[diesel(sql_type = Text)]
    state: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Why a node's statement was refused: it is not `up` (or `draining`, where `allow_draining`)
/// under its epoch. `Ok(None)` when it may go on.
fn guard(conn: &mut PgConnection, me: &NodeKey, allow_draining: bool) -> QueryResult<Option<String>> {
    // The node's advisory lock, shared (as the fence trigger takes it: see `writer::Fence`).
    let row: Option<State> = diesel::sql_query(
        "WITH held AS (SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 7))) \
         SELECT state FROM nodes, held WHERE id = $1 AND epoch = $2",
    )
    .bind::<Text, _>(&me.id)
    .bind::<BigInt, _>(me.epoch)
    .get_result(conn)
    .optional()?;
    Ok(match row {
        Some(row) if row.state == "up" || (allow_draining && row.state == "draining") => None,
        Some(row) => Some(row.state),
        None => Some("replaced".to_string()),
    })
}

/// What a guarded statement gives when the node may not act: `Fenced` when it lost its lease,
/// nothing to do (`Ok(default)`) when it is only draining.
fn refused<T: Default>(me: &NodeKey, state: &str) -> Result<T, StoreError> {
    match state {
        "draining" | "stopped" => Ok(T::default()),
        other => Err(StoreError::Fenced(format!("node {} is {other} in the cluster: it lost its lease", me.id))),
    }
}

/// Opens a connection of its own (outside the pool) on a PostgreSQL location: the listener's
/// and the heartbeat's, which must not wait behind busy readers.
pub fn own_connection(location: &Location) -> Result<PgConnection, StoreError> {
    match DbConnection::open(location) {
        Ok(DbConnection::Pg(conn)) => Ok(conn),
        Ok(DbConnection::Sqlite(_)) => Err(StoreError::Setup("a cluster needs PostgreSQL".into())),
        Err(e) => Err(StoreError::Unavailable(postgres::one_line(&location.redact(&e.to_string())))),
    }
}

/// Registers this node (a new epoch), and takes over at once what a previous run under the same
/// id left, in the same transaction: its running jobs end `failed` (the rule of a restarted
/// single server), its written queued sync jobs too, and its runs are let go (this node takes
/// them back and resumes them).
pub fn register(
    conn: &mut PgConnection,
    me: &Registration,
    lease: Duration,
    now_ms: i64,
) -> QueryResult<(NodeKey, Vec<String>)> {
    let Registration { id, advertise, token, capacity, host, pid, start_ticks } = me;
    let (id, capacity) = (id.as_str(), *capacity);
    #[derive(QueryableByName)]
    struct Epoch {
        #[diesel(sql_type = BigInt)]
        epoch: i64,
    }
    conn.transaction(|conn| {
        // A previous run under this id may still be committing (see `reap`).
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))").bind::<Text, _>(id).execute(conn)?;
        diesel::sql_query(
            "UPDATE nodes SET state = 'dead', ended_at = now(), \
             reason = 'restarted under the same id before its lease expired' \
             WHERE id = $1 AND state IN ('up', 'draining')",
        )
        .bind::<Text, _>(id)
        .execute(conn)?;
        let row: Epoch = diesel::sql_query(
            "INSERT INTO nodes (id, epoch, advertise, token, state, capacity, started_at, heartbeat_at, lease_until, host, pid, proc_start_ticks) \
             VALUES ($1, nextval('node_epochs'), $2, $3, 'up', $4, now(), now(), now() + make_interval(secs => $5), $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET epoch = EXCLUDED.epoch, advertise = EXCLUDED.advertise, \
             token = EXCLUDED.token, state = 'up', capacity = EXCLUDED.capacity, started_at = now(), \
             heartbeat_at = now(), lease_until = EXCLUDED.lease_until, ended_at = NULL, reason = NULL, \
             host = EXCLUDED.host, pid = EXCLUDED.pid, proc_start_ticks = EXCLUDED.proc_start_ticks \
             RETURNING epoch",
        )
        .bind::<Text, _>(id)
        .bind::<Text, _>(advertise)
        .bind::<Text, _>(token)
        .bind::<Integer, _>(capacity)
        .bind::<BigInt, _>(i64::try_from(lease.as_secs()).unwrap_or(i64::MAX))
        .bind::<Text, _>(host)
        .bind::<Integer, _>(*pid)
        .bind::<BigInt, _>(*start_ticks)
        .get_result(conn)?;
        let interrupted: Vec<Id> = diesel::sql_query(
            "UPDATE jobs SET status = 'failed', code = -1, \
             error = CASE WHEN status = 'running' \
               THEN 'the server restarted while the job was running; its processes were stopped' \
               ELSE 'the server restarted before this sync job started; its caller is gone' END, \
             ended_at = $2, duration_ms = GREATEST($2 - COALESCE(started_at, $2), 0), pid = NULL, proc_start_ticks = NULL \
             WHERE node = $1 AND (status = 'running' OR (status = 'queued' AND mode = 'sync')) RETURNING id",
        )
        .bind::<Text, _>(id)
        .bind::<BigInt, _>(now_ms)
        .load(conn)?;
        diesel::sql_query(format!("UPDATE script_runs SET node = NULL WHERE node = $1 AND status IN {LIVE_RUN_STATUSES}"))
            .bind::<Text, _>(id)
            .execute(conn)?;
        Ok((NodeKey { id: id.to_string(), epoch: row.epoch }, interrupted.into_iter().map(|r| r.id).collect()))
    })
}

/// Who registers: this node's id, address, secret and process.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Its id.
    pub id: String,
    /// Where other nodes reach it.
    pub advertise: String,
    /// The secret of its internal routes.
    pub token: String,
    /// `runner.maxConcurrent`.
    pub capacity: i32,
    /// This machine's name.
    pub host: String,
    /// This process.
    pub pid: i32,
    /// This process's start time (clock ticks since boot).
    pub start_ticks: i64,
}

/// A registered node that holds its lease under an id, as a starting node with that id finds
/// it: a crashed predecessor, or a live namesake.
#[derive(Debug, Clone, QueryableByName)]
pub struct Holder {
    /// Where it is reached.
    #[diesel(sql_type = Text)]
    pub advertise: String,
    /// Its machine.
    #[diesel(sql_type = Text)]
    pub host: String,
    /// Its process.
    #[diesel(sql_type = Integer)]
    pub pid: i32,
    /// Its process's start time.
    #[diesel(sql_type = BigInt)]
    pub proc_start_ticks: i64,
    /// Its last heartbeat, Unix ms on the database's clock.
    #[diesel(sql_type = BigInt)]
    pub heartbeat_at: i64,
}

/// The node that holds a running lease under `id`, if any.
pub fn holder(conn: &mut PgConnection, id: &str) -> QueryResult<Option<Holder>> {
    diesel::sql_query(
        "SELECT advertise, host, pid, proc_start_ticks, (extract(epoch FROM heartbeat_at) * 1000)::bigint AS heartbeat_at \
         FROM nodes WHERE id = $1 AND state IN ('up', 'draining') AND lease_until > now()",
    )
    .bind::<Text, _>(id)
    .get_result(conn)
    .optional()
}

/// Renews the node's lease. `Ok(false)` when it no longer holds one (declared dead, replaced).
pub fn heartbeat(conn: &mut PgConnection, me: &NodeKey, lease: Duration) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "UPDATE nodes SET heartbeat_at = now(), lease_until = now() + make_interval(secs => $3) \
         WHERE id = $1 AND epoch = $2 AND state IN ('up', 'draining')",
    )
    .bind::<Text, _>(&me.id)
    .bind::<BigInt, _>(me.epoch)
    .bind::<BigInt, _>(i64::try_from(lease.as_secs()).unwrap_or(i64::MAX))
    .execute(conn)?;
    Ok(n == 1)
}

/// Changes the node's own state (`draining` at SIGTERM, `stopped` at its clean end).
pub fn set_state(conn: &mut PgConnection, me: &NodeKey, state: &str) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "UPDATE nodes SET state = $3, ended_at = CASE WHEN $3 = 'stopped' THEN now() END \
         WHERE id = $1 AND epoch = $2 AND state IN ('up', 'draining')",
    )
    .bind::<Text, _>(&me.id)
    .bind::<BigInt, _>(me.epoch)
    .bind::<Text, _>(state)
    .execute(conn)?;
    Ok(n == 1)
}

/// One sweep of the reaper, by `me`: declares dead every node whose lease expired, ends
/// `failed` every job still `running` on a node that is not `up` or `draining` (a job is
/// never started twice: the same rule as a restart of a single server), fails the written
/// queued sync jobs of such a node (their caller is gone), and lets go of such a node's runs
/// (a live node takes them and resumes them with replay). Skipped (`Ok(None)`) while another
/// node sweeps. Tells the other nodes when runs were let go. Without `declare_dead`, only what
/// nodes already dead or stopped left is swept.
pub fn reap(conn: &mut PgConnection, me: &str, now_ms: i64, declare_dead: bool) -> QueryResult<Option<Reaped>> {
    conn.transaction(|conn| {
        #[derive(QueryableByName)]
        struct Locked {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            locked: bool,
        }
        let lock: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
            .bind::<BigInt, _>(REAPER_LOCK)
            .get_result(conn)?;
        if !lock.locked {
            return Ok(None);
        }
        let dead: Vec<Id> = if declare_dead {
            // Each expired node's advisory lock, exclusively: its commits under way end first
            // (they hold it shared), later ones see it dead. Its lease is checked again after.
            let expired: Vec<Id> =
                diesel::sql_query("SELECT id FROM nodes WHERE state IN ('up', 'draining') AND lease_until < now()")
                    .load(conn)?;
            for node in &expired {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
                    .bind::<Text, _>(&node.id)
                    .execute(conn)?;
            }
            diesel::sql_query(
                "UPDATE nodes SET state = 'dead', ended_at = now(), \
                 reason = 'its lease expired at ' || to_char(lease_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') || '; declared dead by ' || $1 \
                 WHERE id = ANY($2) AND state IN ('up', 'draining') AND lease_until < now() RETURNING id",
            )
            .bind::<Text, _>(me)
            .bind::<diesel::sql_types::Array<Text>, _>(expired.iter().map(|n| n.id.as_str()).collect::<Vec<_>>())
            .load(conn)?
        } else {
            Vec::new()
        };
        let gone = "node IS NOT NULL AND node NOT IN (SELECT id FROM nodes WHERE state IN ('up', 'draining'))";
        let failed: Vec<Id> = diesel::sql_query(format!(
            "UPDATE jobs SET status = 'failed', code = -1, \
             error = 'node ' || node || ' was lost while the job was running (its lease expired or it stopped); the job was not started again', \
             ended_at = $1, duration_ms = GREATEST($1 - COALESCE(started_at, $1), 0), pid = NULL, proc_start_ticks = NULL \
             WHERE status = 'running' AND {gone} RETURNING id"
        ))
        .bind::<BigInt, _>(now_ms)
        .load(conn)?;
        diesel::sql_query(format!(
            "UPDATE jobs SET status = 'failed', code = -1, \
             error = 'node ' || node || ' was lost before this sync job started; its caller is gone', \
             ended_at = $1, duration_ms = 0 WHERE status = 'queued' AND mode = 'sync' AND {gone}"
        ))
        .bind::<BigInt, _>(now_ms)
        .execute(conn)?;
        // An async job is queued with no node; none should have one, but if so it goes back.
        diesel::sql_query(format!("UPDATE jobs SET node = NULL WHERE status = 'queued' AND mode = 'async' AND {gone}"))
            .execute(conn)?;
        let freed = diesel::sql_query(format!(
            "UPDATE script_runs SET node = NULL WHERE status IN {LIVE_RUN_STATUSES} AND {gone}"
        ))
        .execute(conn)?;
        if freed > 0 {
            notify(conn, RUNS_FREE, "")?;
        }
        Ok(Some(Reaped { dead: dead.into_iter().map(|r| r.id).collect(), failed_jobs: failed.into_iter().map(|r| r.id).collect(), freed_runs: freed }))
    })
}

/// Fails what a server before the cluster left unfinished (rows without a node), when no other
/// node is up: its `running` jobs and its queued sync jobs. Queued async jobs stay queued (any
/// node claims them). What `jobs::recovery` did for a single server.
pub fn fail_legacy(conn: &mut PgConnection, me: &NodeKey, now_ms: i64) -> QueryResult<usize> {
    conn.transaction(|conn| {
        let others: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM nodes WHERE state IN ('up', 'draining') AND NOT (id = $1 AND epoch = $2)",
        )
        .bind::<Text, _>(&me.id)
        .bind::<BigInt, _>(me.epoch)
        .get_result(conn)?;
        if others.n > 0 {
            return Ok(0);
        }
        diesel::sql_query(
            "UPDATE jobs SET status = 'failed', code = -1, \
             error = CASE WHEN status = 'running' \
               THEN 'the server restarted while the job was running; its processes were stopped' \
               ELSE 'the server restarted before this sync job started; its caller is gone' END, \
             ended_at = $1, duration_ms = GREATEST($1 - COALESCE(started_at, $1), 0), pid = NULL, proc_start_ticks = NULL \
             WHERE node IS NULL AND (status = 'running' OR (status = 'queued' AND mode = 'sync'))",
        )
        .bind::<BigInt, _>(now_ms)
        .execute(conn)
    })
}

/// `SELECT pg_notify(channel, payload)`: delivered when the transaction commits.
fn notify(conn: &mut PgConnection, channel: &str, payload: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_notify($1, $2)").bind::<Text, _>(channel).bind::<Text, _>(payload).execute(conn)?;
    Ok(())
}

/// The ids of live nodes (`up` or `draining`).
pub fn live_nodes(conn: &mut PgConnection) -> QueryResult<Vec<String>> {
    let rows: Vec<Id> = diesel::sql_query("SELECT id FROM nodes WHERE state IN ('up', 'draining')").load(conn)?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// What a cancel from a node that does not run the job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelAsked {
    /// It was waiting in the shared queue: it ended `canceled` and will never start.
    Dequeued,
    /// It runs on that node, which was told.
    Told(String),
    /// Nothing to do: it ended, or no node runs it (a sync job still unwritten).
    Nothing,
}

/// One node's view of a connection for its own statements (see [`guard`]).
impl Store {
    /// Runs `f` in one transaction on a pooled PostgreSQL connection. A lost connection is
    /// [`StoreError::Unavailable`].
    fn pg_transaction<T>(&self, f: impl FnOnce(&mut PgConnection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let DbConnection::Pg(pg) = &mut *conn else {
            return Err(StoreError::Setup("a cluster needs PostgreSQL".into()));
        };
        let result = pg.transaction::<T, TxError, _>(|pg| f(pg).map_err(TxError::Store)).map_err(|e| match e {
            TxError::Store(e) => e,
            TxError::Query(e) => StoreError::Query(e),
        });
        match result {
            Err(StoreError::Query(e)) if postgres::is_connection_error(&e) => {
                self.health.saw_lost();
                Err(StoreError::Unavailable(postgres::one_line(&self.location.redact(&e.to_string()))))
            }
            other => {
                if other.is_ok() {
                    self.health.saw_ok();
                }
                other
            }
        }
    }

    /// Claims up to `n` queued async jobs for `me`, oldest first, skipping rows another node is
    /// claiming: each becomes `running` on this node (its start is committed before its process
    /// can exist, as on a single server). Nothing while the node is draining.
    ///
    /// `room` holds each script with a `concurrency` and how many more of its jobs may run on
    /// this node: no more are claimed, and the jobs of a script without room are passed over,
    /// so they never hold back the jobs of other scripts behind them. A job passed over stays
    /// queued. The rows are selected again only when a script ran out of room in a batch, so at
    /// most once per script in `room`, plus one.
    pub fn claim_jobs(
        &self,
        me: &NodeKey,
        n: usize,
        room: &[(String, usize)],
        now_ms: i64,
    ) -> Result<Vec<Job>, StoreError> {
        self.pg_transaction(|conn| {
            if let Some(state) = guard(conn, me, false)? {
                return refused(me, &state);
            }
            let mut full: Vec<String> = room.iter().filter(|(_, r)| *r == 0).map(|(id, _)| id.clone()).collect();
            let mut left: HashMap<&str, usize> =
                room.iter().filter(|(_, r)| *r > 0).map(|(id, r)| (id.as_str(), *r)).collect();
            let mut picked: Vec<(i64, String)> = Vec::new();
            let mut seen: Vec<String> = Vec::new();
            while picked.len() < n {
                let want = n - picked.len();
                let batch: Vec<(i64, String, String)> = jobs::table
                    .select((jobs::seq, jobs::id, jobs::script_id))
                    .filter(jobs::status.eq("queued").and(jobs::mode.eq("async")).and(jobs::node.is_null()))
                    .filter(jobs::script_id.ne_all(&full))
                    .filter(jobs::id.ne_all(&seen))
                    .order(jobs::seq)
                    .limit(i64::try_from(want).unwrap_or(1))
                    .for_update()
                    .skip_locked()
                    .load(conn)?;
                let got = batch.len();
                let mut passed_over = false;
                for (seq, id, script) in batch {
                    seen.push(id.clone());
                    match left.get_mut(script.as_str()) {
                        None => picked.push((seq, id)),
                        Some(0) => passed_over = true,
                        Some(r) => {
                            *r -= 1;
                            picked.push((seq, id));
                            if *r == 0 {
                                full.push(script);
                            }
                        }
                    }
                }
                // Fewer rows than asked: the queue has no more for now. None passed over: the
                // batch was all taken.
                if got < want || !passed_over {
                    break;
                }
            }
            picked.sort_by_key(|(seq, _)| *seq);
            let ids: Vec<&str> = picked.iter().map(|(_, id)| id.as_str()).collect();
            let rows: Vec<JobRow> = diesel::update(jobs::table.filter(jobs::id.eq_any(&ids)))
                .set((jobs::status.eq("running"), jobs::node.eq(&me.id), jobs::started_at.eq(now_ms)))
                .returning(JobRow::as_returning())
                .get_results(conn)?;
            let mut claimed: Vec<Job> = rows.into_iter().map(Job::from).collect();
            claimed.sort_by_key(|job| ids.iter().position(|id| *id == job.id));
            Ok(claimed)
        })
    }

    /// How many async jobs wait in the shared queue, counted up to `limit`.
    pub fn queued_jobs(&self, limit: usize) -> Result<usize, StoreError> {
        // One statement: no transaction of its own (BEGIN and COMMIT would triple its trips).
        self.read(|conn| {
            let count: Count = diesel::sql_query(
                "SELECT count(*) AS n FROM (SELECT 1 FROM jobs WHERE status = 'queued' AND mode = 'async' AND node IS NULL LIMIT $1) q",
            )
            .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
            .get_result(conn)?;
            Ok(usize::try_from(count.n).unwrap_or(0))
        })
    }

    /// A cancel of a job this node does not hold: a job in the shared queue ends `canceled`
    /// here (it never starts: the claim skips or waits for this row); a running one gets its
    /// cancel flag set and its node is told (`NOTIFY`); the flag is the truth, which the owner
    /// also polls.
    pub fn ask_cancel(&self, me: &NodeKey, id: &str, now_ms: i64) -> Result<CancelAsked, StoreError> {
        self.pg_transaction(|conn| {
            if let Some(state) = guard(conn, me, true)? {
                return refused(me, &state).map(|()| CancelAsked::Nothing);
            }
            let row: Option<JobRow> =
                jobs::table.filter(jobs::id.eq(id)).select(JobRow::as_select()).for_update().first(conn).optional()?;
            let Some(row) = row else { return Ok(CancelAsked::Nothing) };
            match (row.status.as_str(), row.node.clone()) {
                ("queued", None) => {
                    let mut job = Job::from(row);
                    job.end(crate::jobs::model::JobStatus::Canceled, None, now_ms);
                    diesel::update(jobs::table.filter(jobs::id.eq(id))).set(&JobRow::from(&job)).execute(conn)?;
                    Ok(CancelAsked::Dequeued)
                }
                ("running", Some(node)) | ("queued", Some(node)) => {
                    diesel::sql_query("UPDATE jobs SET cancel_requested = TRUE WHERE id = $1")
                        .bind::<Text, _>(id)
                        .execute(conn)?;
                    notify(conn, JOB_CANCEL, id)?;
                    Ok(CancelAsked::Told(node))
                }
                _ => Ok(CancelAsked::Nothing),
            }
        })
    }

    /// The jobs running on `me` whose cancel was asked (the poll behind the notification).
    pub fn cancels_asked(&self, me: &NodeKey) -> Result<Vec<String>, StoreError> {
        self.pg_transaction(|conn| {
            let rows: Vec<Id> =
                diesel::sql_query("SELECT id FROM jobs WHERE status = 'running' AND node = $1 AND cancel_requested")
                    .bind::<Text, _>(&me.id)
                    .load(conn)?;
            Ok(rows.into_iter().map(|r| r.id).collect())
        })
    }

    /// Takes up to `n` runs no node holds, for `me`, oldest first.
    pub fn claim_runs(&self, me: &NodeKey, n: usize) -> Result<Vec<Run>, StoreError> {
        self.pg_transaction(|conn| {
            if let Some(state) = guard(conn, me, false)? {
                return refused(me, &state);
            }
            let picked: Vec<String> = script_runs::table
                .select(script_runs::id)
                .filter(script_runs::node.is_null())
                .filter(script_runs::status.eq_any(["running", "awaiting", "paused"]))
                .order(script_runs::seq)
                .limit(i64::try_from(n).unwrap_or(1))
                .for_update()
                .skip_locked()
                .load(conn)?;
            if picked.is_empty() {
                return Ok(Vec::new());
            }
            let rows: Vec<RunRow> = diesel::update(script_runs::table.filter(script_runs::id.eq_any(&picked)))
                .set(script_runs::node.eq(&me.id))
                .returning(RunRow::as_returning())
                .get_results(conn)?;
            let mut runs = rows.into_iter().map(Run::try_from).collect::<Result<Vec<_>, _>>()?;
            runs.sort_by_key(|run| picked.iter().position(|id| *id == run.id));
            Ok(runs)
        })
    }

    /// Lets go of every unfinished run `me` holds (a clean stop, once its executions stopped):
    /// another node takes them at once.
    pub fn release_runs(&self, me: &NodeKey) -> Result<usize, StoreError> {
        self.pg_transaction(|conn| {
            if let Some(state) = guard(conn, me, true)? {
                return refused(me, &state);
            }
            let n = diesel::sql_query(format!(
                "UPDATE script_runs SET node = NULL WHERE node = $1 AND status IN {LIVE_RUN_STATUSES}"
            ))
            .bind::<Text, _>(&me.id)
            .execute(conn)?;
            if n > 0 {
                notify(conn, RUNS_FREE, "")?;
            }
            Ok(n)
        })
    }

    /// Every node, newest first, with what it runs and holds now.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        self.pg_transaction(|conn| Ok(diesel::sql_query(NODES_SQL).load(conn)?))
    }

    /// One node.
    pub fn node(&self, id: &str) -> Result<Option<NodeRow>, StoreError> {
        self.pg_transaction(|conn| {
            Ok(diesel::sql_query(format!("SELECT * FROM ({NODES_SQL}) n WHERE id = $1"))
                .bind::<Text, _>(id)
                .get_result(conn)
                .optional()?)
        })
    }
}

/// Every node with its load, as [`NodeRow`].
const NODES_SQL: &str = "SELECT n.id, n.epoch, n.advertise, n.token, n.state, n.capacity, \
    (extract(epoch FROM n.started_at) * 1000)::bigint AS started_at, \
    (extract(epoch FROM n.heartbeat_at) * 1000)::bigint AS heartbeat_at, \
    (extract(epoch FROM n.lease_until) * 1000)::bigint AS lease_until, \
    (extract(epoch FROM n.ended_at) * 1000)::bigint AS ended_at, n.reason, \
    (SELECT count(*) FROM jobs j WHERE j.status = 'running' AND j.node = n.id) AS running, \
    (SELECT count(*) FROM script_runs r WHERE r.node = n.id AND r.status IN ('running', 'awaiting', 'paused')) AS runs \
    FROM nodes n ORDER BY n.started_at DESC, n.id";

/// An error inside [`Store::pg_transaction`]: diesel's transaction needs `From<diesel::Error>`.
enum TxError {
    Store(StoreError),
    Query(diesel::result::Error),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> TxError {
        TxError::Query(e)
    }
}
