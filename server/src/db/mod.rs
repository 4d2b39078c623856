//! Storage: the database behind diesel (the embedded SQLite file by default, or a PostgreSQL
//! server), knowing nothing of HTTP or processes. Queries run on [`DbConnection`], diesel's
//! `MultiConnection` over both, so one query serves both backends; the few places where they
//! differ (SQLite's WAL and `BEGIN IMMEDIATE`, PostgreSQL's `ON CONFLICT` and snapshots) match
//! on the variant.
//!
//! Reads go through an r2d2 pool. Every write goes through the [`Writer`], which commits
//! whatever has queued up in a single transaction (group commit): SQLite has one writer at a
//! time, and one thread batching writes is much faster than many threads contending for the
//! lock with busy-waits. On PostgreSQL the writer has several lanes committing in parallel,
//! each on its own connection (see `writer`).

mod callbacks;
pub mod cluster;
mod conn;
mod copy;
mod health;
mod job_rows;
mod location;
mod models;
pub mod postgres;
mod resume_tokens;
mod runs;
mod schema;
mod writer;

pub use copy::{copy_history, Copied, CopyError};
pub use location::{DatabaseLock, Location, PgLock};

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::Pool;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::jobs::model::Job;
use crate::runs::events::{EventPage, StoredEvent};
use crate::runs::model::{JournalEntry, Run};
use models::{EventRow, JobRow, RunRow, StepRow};
use schema::{imports, jobs, script_run_events, script_run_journal, script_runs};
pub use writer::{EventBell, Fence, NewEvent, OnOutage, Pending, WriteOp, Writer, RETRY_BOUND};

pub use conn::DbConnection;

/// SQLite's migrations, compiled into the binary and applied at startup.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
/// PostgreSQL's migrations (the same final schema in its own types), applied at startup.
pub const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// A storage failure. None of these is the client's fault: the HTTP layer answers 500, but
/// `503 STORE_UNAVAILABLE` for [`StoreError::Unavailable`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (PostgreSQL only: the server is down or restarting, the
    /// network is cut): no connection could be had, or it was lost during the statement. The
    /// request may be tried again later; a SQLite error is never this.
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    /// No connection could be had from the pool.
    #[error("database pool: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    /// A query failed.
    #[error("database query: {0}")]
    Query(#[from] diesel::result::Error),
    /// Opening the database or applying migrations failed (the text names the database and
    /// what is wrong, on one line: it is what the server prints when it cannot start).
    #[error("{0}")]
    Setup(String),
    /// A write failed in the writer thread.
    #[error("database write: {0}")]
    Write(String),
    /// This cluster node lost its lease (another node declared it dead): it may record nothing
    /// more, and stops (see [`writer::Fence`]).
    #[error("this node was fenced: {0}")]
    Fenced(String),
    /// The writer thread has stopped (only during shutdown).
    #[error("database writer has stopped")]
    WriterGone,
    /// A stored value is not one the code knows (a run status, a step type): the row was
    /// not written by this server.
    #[error("database decode: {0}")]
    Decode(String),
}

type DbPool = Pool<conn::Manager>;

/// Read connections when the config names no `database.poolSize`.
pub const DEFAULT_POOL_SIZE: u32 = 8;
/// Writer lanes on PostgreSQL: half as many as readers, at least one.
fn writer_lanes(pool_size: u32) -> u32 {
    (pool_size / 2).max(1)
}

/// The most `database.poolSize` may be.
pub const MAX_POOL_SIZE: u32 = 64;

/// How long a read waits for a PostgreSQL connection from the pool before the request is
/// answered `503 STORE_UNAVAILABLE`: a few seconds, so a lost database is told promptly, not
/// after a client's own time-out.
const PG_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3);
/// The same for SQLite, where a connection is only ever waited for while all are busy.
const SQLITE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Read access (a pool) and write access (the group-commit writer) to the database.
#[derive(Clone)]
pub struct Store {
    pool: DbPool,
    writer: Writer,
    /// This deployment's marker (see [`Store::deployment`]).
    deployment: std::sync::Arc<str>,
    /// What the last reads and commits saw of the database.
    health: std::sync::Arc<health::Health>,
    /// Where the database is (errors are redacted with it).
    location: std::sync::Arc<Location>,
}

/// Filters for [`Store::list_jobs`].
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    /// Only jobs in this status.
    pub status: Option<String>,
    /// Only jobs of this script.
    pub script_id: Option<String>,
    /// Only the job started under this idempotency key (the job manager answers this one
    /// itself, from memory or [`Store::job_by_idempotency_key`]).
    pub idempotency_key: Option<String>,
    /// Page size.
    pub limit: i64,
    /// Rows to skip.
    pub offset: i64,
}

/// Filters for [`Store::list_runs`].
#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    /// Only runs in this status.
    pub status: Option<String>,
    /// Only runs with this script name.
    pub script_name: Option<String>,
    /// Page size.
    pub limit: i64,
    /// Rows to skip.
    pub offset: i64,
}

impl Store {
    /// Opens (creating if needed) the database, applies pending migrations and starts the
    /// writer thread.
    pub fn open(location: &Location) -> Result<Store, StoreError> {
        Store::open_sized(location, DEFAULT_POOL_SIZE)
    }

    /// [`Store::open`] with a read pool of at most `pool_size` connections.
    pub fn open_sized(location: &Location, pool_size: u32) -> Result<Store, StoreError> {
        match location {
            Location::Sqlite(path) => Store::open_sqlite(path, pool_size),
            Location::Postgres(_) => Store::open_postgres(location, pool_size),
        }
    }

    /// Connects to a PostgreSQL database (checking its version) and applies its migrations.
    fn open_postgres(location: &Location, pool_size: u32) -> Result<Store, StoreError> {
        let Location::Postgres(url) = location else {
            return Err(StoreError::Setup("not a PostgreSQL location".into()));
        };
        let shown = location.deployment();
        let setup = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Setup(format!("{what} on {shown}: {}", postgres::one_line(&location.redact(&e.to_string()))))
        };
        let mut conn = open_migrated(location)?;
        let deployment = deployment_id(&mut conn).map_err(|e| setup("deployment id", &e))?;
        let pool = Pool::builder()
            .max_size(pool_size)
            .min_idle(Some(1))
            .idle_timeout(Some(Duration::from_secs(60)))
            .connection_timeout(PG_CONNECTION_TIMEOUT)
            // No ping per check-out: a lost connection is found by the read that uses it (see
            // `Store::read`).
            .test_on_check_out(false)
            .error_handler(Box::new(conn::PoolErrors::new(location.clone())))
            .build(conn::Manager::new(location.clone()))
            .map_err(|e| setup("read pool", &e))?;
        // Writers in parallel, one connection per lane (see db::writer), besides the readers.
        let mut conns = vec![conn];
        for _ in 1..writer_lanes(pool_size) {
            conns.push(
                DbConnection::open(location)
                    .map_err(|e| StoreError::Setup(postgres::connect_error(url, &e.to_string())))?,
            );
        }
        let health = std::sync::Arc::new(health::Health::new(true));
        let writer = Writer::start(conns, Some(location.clone()), std::sync::Arc::clone(&health))
            .map_err(|e| StoreError::Setup(format!("cannot start the writer threads: {e}")))?;
        Ok(Store {
            pool,
            writer,
            deployment: format!("postgres:{deployment}").into(),
            health,
            location: std::sync::Arc::new(location.clone()),
        })
    }

    /// Opens (creating if needed) a SQLite file.
    fn open_sqlite(path: &Path, pool_size: u32) -> Result<Store, StoreError> {
        let location = Location::Sqlite(path.to_path_buf());
        let conn = open_migrated(&location)?;
        // Few idle connections: every child process inherits (and closes at exec) the
        // server's descriptors, three per SQLite connection.
        let pool = Pool::builder()
            .max_size(pool_size)
            .min_idle(Some(1))
            .idle_timeout(Some(Duration::from_secs(60)))
            .connection_timeout(SQLITE_CONNECTION_TIMEOUT)
            .build(conn::Manager::new(location.clone()))
            .map_err(|e| StoreError::Setup(format!("pool: {e}")))?;
        // A file cannot be lost like a server: no reconnection, health not tracked.
        let health = std::sync::Arc::new(health::Health::new(false));
        let writer = Writer::start(vec![conn], None, std::sync::Arc::clone(&health))
            .map_err(|e| StoreError::Setup(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            pool,
            writer,
            deployment: path.display().to_string().into(),
            health,
            location: std::sync::Arc::new(location),
        })
    }

    /// A name for the deployment that uses this database, stable across restarts: every
    /// process the server starts carries it (`SCRIPT_RUNNER_DB`), so crash recovery finds its
    /// own orphans and never another deployment's. SQLite: the database file's path.
    /// PostgreSQL: `postgres:<id>`, an id the first server made and stored in the database
    /// (however a URL spells the host, one database is one deployment).
    pub fn deployment(&self) -> std::sync::Arc<str> {
        std::sync::Arc::clone(&self.deployment)
    }

    /// The single writer; every insert and update goes through it.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Whether the database answered within the last second (a read or a commit) and no writer
    /// lane is without it: then [`Store::probe`] is not needed before starting work. Always
    /// true on SQLite.
    pub fn recently_available(&self) -> bool {
        self.health.vouched()
    }

    /// Asks the database whether it answers (a pooled connection, pinged):
    /// [`StoreError::Unavailable`] within the pool's connection time-out if not. Blocking.
    pub fn probe(&self) -> Result<(), StoreError> {
        use diesel::r2d2::R2D2Connection;
        self.read(|conn| Ok(conn.ping()?))
    }

    /// A pooled connection; on PostgreSQL, none within the time-out is
    /// [`StoreError::Unavailable`].
    fn conn(&self) -> Result<diesel::r2d2::PooledConnection<conn::Manager>, StoreError> {
        match self.pool.get() {
            Ok(conn) => Ok(conn),
            Err(e) if self.health.tracked() => {
                self.health.saw_lost();
                Err(StoreError::Unavailable(postgres::one_line(&self.location.redact(&e.to_string()))))
            }
            Err(e) => Err(StoreError::Pool(e)),
        }
    }

    /// Runs one read on a pooled connection. On PostgreSQL the pool does not ping a connection
    /// before handing it out (a round trip per read: 3 of a workflow step's 7 statements); a
    /// statement that failed because its connection was lost (the server restarted since it
    /// was pooled, or is away) is tried once more on a new connection, which replaces the lost
    /// one in the pool, and is [`StoreError::Unavailable`] if none can be had.
    fn read<T>(&self, f: impl Fn(&mut DbConnection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let mut result = f(&mut conn);
        if let Err(StoreError::Query(e)) = &result {
            if self.health.tracked() && self.lost(&mut conn, e) {
                let unavailable = |e: &dyn std::fmt::Display| {
                    StoreError::Unavailable(postgres::one_line(&self.location.redact(&e.to_string())))
                };
                result = match DbConnection::open(&self.location) {
                    Ok(fresh) => {
                        *conn = fresh;
                        match f(&mut conn) {
                            Err(StoreError::Query(e)) if self.lost(&mut conn, &e) => Err(unavailable(&e)),
                            other => other,
                        }
                    }
                    Err(e) => Err(unavailable(&e)),
                };
            }
        }
        // Every way out goes past this: a read that found the database gone takes back the
        // vouching of earlier successes (see `Health::saw_lost`).
        match &result {
            Ok(_) => self.health.saw_ok(),
            Err(StoreError::Unavailable(_)) => self.health.saw_lost(),
            Err(_) => {}
        }
        result
    }

    /// Whether a statement failed because the connection is gone, not because of the statement.
    fn lost(&self, conn: &mut DbConnection, e: &diesel::result::Error) -> bool {
        use diesel::r2d2::R2D2Connection;
        postgres::is_connection_error(e) || conn.ping().is_err()
    }

    /// One job by id.
    pub fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.read(|conn| {
            let row = jobs::table.filter(jobs::id.eq(id)).select(JobRow::as_select()).first(conn).optional()?;
            Ok(row.map(Job::from))
        })
    }

    /// The job started under this idempotency key, if any.
    pub fn job_by_idempotency_key(&self, key: &str) -> Result<Option<Job>, StoreError> {
        self.read(|conn| {
            let row =
                jobs::table.filter(jobs::idempotency_key.eq(key)).select(JobRow::as_select()).first(conn).optional()?;
            Ok(row.map(Job::from))
        })
    }

    /// A page of jobs, newest first, and how many match in all.
    pub fn list_jobs(&self, filter: &JobFilter) -> Result<(Vec<Job>, i64), StoreError> {
        self.read(|conn| {
            let succeeded = filter.status.as_deref() == Some(SUCCEEDED);
            // One filter for the page and its count. `status` leaves out succeeded jobs when
            // `not_succeeded` is set: the terms that let SQLite read the partial status index.
            let filtered = |status: Option<&str>, not_succeeded: bool| {
                let mut query = jobs::table.into_boxed();
                if let Some(status) = status {
                    query = query.filter(jobs::status.eq(status.to_string()));
                }
                if not_succeeded {
                    query = query.filter(not_succeeded_sql());
                }
                if let Some(script_id) = &filter.script_id {
                    query = query.filter(jobs::script_id.eq(script_id.clone()));
                }
                query
            };
            let status = filter.status.as_deref();
            snapshot(conn, |conn| {
                let rows: Vec<JobRow> = filtered(status, status.is_some() && !succeeded)
                    .order(jobs::seq.desc())
                    .limit(filter.limit)
                    .offset(filter.offset)
                    .select(JobRow::as_select())
                    .load(conn)?;
                let total: i64 = if succeeded {
                    // Succeeded jobs are not in the status index: all jobs less the others.
                    let all: i64 = filtered(None, false).count().get_result(conn)?;
                    let others: i64 = filtered(None, true).count().get_result(conn)?;
                    all - others
                } else {
                    filtered(status, status.is_some()).count().get_result(conn)?
                };
                Ok((rows.into_iter().map(Job::from).collect(), total))
            })
        })
    }

    /// Jobs not in a terminal status, oldest first: what recovery looks at after a restart.
    pub fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.read(|conn| {
            let rows: Vec<JobRow> = jobs::table
                .filter(jobs::status.eq_any(["queued", "running"]))
                .filter(not_succeeded_sql())
                .order(jobs::seq.asc())
                .select(JobRow::as_select())
                .load(conn)?;
            Ok(rows.into_iter().map(Job::from).collect())
        })
    }

    /// The highest row sequence number, so job ids keep increasing across restarts.
    pub fn max_seq(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            let max: Option<i64> = jobs::table.select(diesel::dsl::max(jobs::seq)).first(conn)?;
            Ok(max.unwrap_or(0))
        })
    }

    /// Whether an upstream job store at this path was already imported.
    pub fn is_imported(&self, source: &str) -> Result<bool, StoreError> {
        self.read(|conn| {
            let n: i64 = imports::table.filter(imports::source.eq(source)).count().get_result(conn)?;
            Ok(n > 0)
        })
    }

    /// One workflow run by id.
    pub fn get_run(&self, id: &str) -> Result<Option<Run>, StoreError> {
        self.read(|conn| {
            let row =
                script_runs::table.filter(script_runs::id.eq(id)).select(RunRow::as_select()).first(conn).optional()?;
            row.map(Run::try_from).transpose()
        })
    }

    /// The run launched with this idempotency key, if any.
    pub fn run_by_idempotency_key(&self, key: &str) -> Result<Option<Run>, StoreError> {
        self.read(|conn| {
            let row = script_runs::table
                .filter(script_runs::idempotency_key.eq(key))
                .select(RunRow::as_select())
                .first(conn)
                .optional()?;
            row.map(Run::try_from).transpose()
        })
    }

    /// A page of runs, newest first, and how many match in all.
    pub fn list_runs(&self, filter: &RunFilter) -> Result<(Vec<Run>, i64), StoreError> {
        self.read(|conn| {
            // One filter for the page and its count.
            let filtered = || {
                let mut query = script_runs::table.into_boxed();
                if let Some(status) = &filter.status {
                    query = query.filter(script_runs::status.eq(status.clone()));
                }
                if let Some(name) = &filter.script_name {
                    query = query.filter(script_runs::script_name.eq(name.clone()));
                }
                query
            };
            let (rows, total) = snapshot(conn, |conn| {
                let rows = filtered()
                    .order(script_runs::seq.desc())
                    .limit(filter.limit)
                    .offset(filter.offset)
                    .select(RunRow::as_select())
                    .load(conn)?;
                let total: i64 = filtered().count().get_result(conn)?;
                Ok((rows, total))
            })?;
            Ok((runs::runs(rows)?, total))
        })
    }

    /// Runs not in a terminal status, oldest first (what the server resumes at start).
    pub fn unfinished_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.read(|conn| {
            runs::runs(
                script_runs::table
                    .filter(script_runs::status.eq_any(["running", "awaiting", "paused"]))
                    .order(script_runs::seq.asc())
                    .select(RunRow::as_select())
                    .load(conn)?,
            )
        })
    }

    /// The highest run sequence number, so run ids keep increasing across restarts.
    pub fn max_run_seq(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            let max: Option<i64> = script_runs::table.select(diesel::dsl::max(script_runs::seq)).first(conn)?;
            Ok(max.unwrap_or(0))
        })
    }

    /// One journal entry.
    pub fn get_step(&self, run_id: &str, step_key: &str) -> Result<Option<JournalEntry>, StoreError> {
        self.read(|conn| {
            let row = script_run_journal::table
                .filter(script_run_journal::run_id.eq(run_id))
                .filter(script_run_journal::step_key.eq(step_key))
                .select(StepRow::as_select())
                .first(conn)
                .optional()?;
            row.map(JournalEntry::try_from).transpose()
        })
    }

    /// A run's whole journal, in journal order.
    pub fn journal(&self, run_id: &str) -> Result<Vec<JournalEntry>, StoreError> {
        self.read(|conn| {
            runs::entries(
                script_run_journal::table
                    .filter(script_run_journal::run_id.eq(run_id))
                    .order(script_run_journal::seq.asc())
                    .select(StepRow::as_select())
                    .load(conn)?,
            )
        })
    }

    /// Up to `limit` events of a run after number `after`, in order, and whether the run had
    /// ended before they were read (its status is read first: a page read after the end holds
    /// the `end` event); `None` if there is no such run.
    pub fn events_after(&self, run_id: &str, after: u64, limit: i64) -> Result<Option<EventPage>, StoreError> {
        use script_run_events::dsl as e;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.read(|conn| {
            let status: Option<String> = script_runs::table
                .filter(script_runs::id.eq(run_id))
                .select(script_runs::status)
                .first(conn)
                .optional()?;
            let Some(status) = status else { return Ok(None) };
            let ended = crate::runs::model::RunStatus::parse(&status).is_some_and(|s| s.is_terminal());
            let rows = e::script_run_events
                .filter(e::run_id.eq(run_id))
                .filter(e::seq.gt(after))
                .order(e::seq.asc())
                .limit(limit)
                .select(EventRow::as_select())
                .load(conn)?;
            let events = rows.into_iter().map(StoredEvent::try_from).collect::<Result<_, _>>()?;
            Ok(Some(EventPage { events, ended }))
        })
    }

    /// How many entries a run's journal holds, in all and of one step type, and the highest
    /// journal sequence number (guardrails and ordering start from these).
    pub fn journal_counts(&self, run_id: &str, step_type: &str) -> Result<(i64, i64, i64), StoreError> {
        use script_run_journal::dsl as j;
        self.read(|conn| {
            let total: i64 = j::script_run_journal.filter(j::run_id.eq(run_id)).count().get_result(conn)?;
            let of_type: i64 = j::script_run_journal
                .filter(j::run_id.eq(run_id))
                .filter(j::step_type.eq(step_type))
                .count()
                .get_result(conn)?;
            let max: Option<i64> =
                j::script_run_journal.filter(j::run_id.eq(run_id)).select(diesel::dsl::max(j::seq)).first(conn)?;
            Ok((total, of_type, max.unwrap_or(0)))
        })
    }
}

/// One connection to the database with every migration applied: what a server opens first, and
/// what `migrate-db` copies from and into. A SQLite file (and its folder) is created if missing;
/// a PostgreSQL server is checked first (reachable, password, database, version: one line each).
fn open_migrated(location: &Location) -> Result<DbConnection, StoreError> {
    match location {
        Location::Sqlite(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Setup(format!("cannot create {}: {e}", dir.display())))?;
            }
            let mut conn = DbConnection::open(location)
                .map_err(|e| StoreError::Setup(format!("cannot open {}: {e}", path.display())))?;
            conn.run_pending_migrations(MIGRATIONS)
                .map_err(|e| StoreError::Setup(format!("migrations on {}: {e}", path.display())))?;
            Ok(conn)
        }
        Location::Postgres(url) => {
            let mut conn = DbConnection::Pg(postgres::connect_checked(url).map_err(StoreError::Setup)?);
            // Nodes of a cluster starting together migrate one at a time (the others then find
            // nothing pending); the lock is the session's, released just after.
            let serialized = diesel::sql_query("SELECT pg_advisory_lock(7234170613925331969)").execute(&mut conn);
            let migrated = conn.run_pending_migrations(PG_MIGRATIONS).map(drop);
            if serialized.is_ok() {
                let _ = diesel::sql_query("SELECT pg_advisory_unlock(7234170613925331969)").execute(&mut conn);
            }
            migrated.map_err(|e| {
                StoreError::Setup(format!(
                    "migrations on {}: {}",
                    location.deployment(),
                    postgres::one_line(&location.redact(&e.to_string()))
                ))
            })?;
            Ok(conn)
        }
    }
}

#[derive(QueryableByName)]
struct DeploymentRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
}

/// The id stored in the `deployment` table, made (random) by the first server that asks.
fn deployment_id(conn: &mut DbConnection) -> Result<String, String> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| format!("randomness: {e}"))?;
    let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Two first servers racing: the primary key keeps one row, and both read it back.
    diesel::sql_query("INSERT INTO deployment (id, created_at) SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM deployment) ON CONFLICT DO NOTHING")
        .bind::<diesel::sql_types::Text, _>(&fresh)
        .bind::<diesel::sql_types::BigInt, _>(crate::time::now_ms())
        .execute(conn)
        .map_err(|e| e.to_string())?;
    let row: DeploymentRow = diesel::sql_query("SELECT id FROM deployment ORDER BY created_at, id LIMIT 1")
        .get_result(conn)
        .map_err(|e| e.to_string())?;
    Ok(row.id)
}

/// Runs `f`'s reads in one snapshot, so a page and its count agree: a transaction (a WAL reader
/// sees one commit throughout it) that on PostgreSQL is REPEATABLE READ (READ COMMITTED takes a
/// snapshot per statement), read-only on both.
fn snapshot<T>(conn: &mut DbConnection, f: impl FnOnce(&mut DbConnection) -> QueryResult<T>) -> Result<T, StoreError> {
    Ok(conn.transaction(|conn| {
        if let DbConnection::Pg(_) = conn {
            conn.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        }
        f(conn)
    })?)
}

/// The status the jobs' status index leaves out (see the migration `jobs_status_index_partial`).
const SUCCEEDED: &str = "succeeded";

/// The partial status index's own predicate, verbatim: SQLite reads a partial index only for a
/// query that repeats it (a term implied by `status = 'failed'` is not enough).
fn not_succeeded_sql() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql(&format!("status <> '{SUCCEEDED}'"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use diesel::sql_types::BigInt;

    /// In the PostgreSQL test pass (`SCRIPT_RUNNER_TEST_PG_ADMIN_URL`, set by `tests/run`), a new
    /// empty database in the test cluster for this test; `None` otherwise.
    pub(crate) fn pg_location(test: &str) -> Option<Location> {
        let admin = std::env::var("SCRIPT_RUNNER_TEST_PG_ADMIN_URL").ok().filter(|url| !url.is_empty())?;
        let name = format!("unit_{test}_{}", std::process::id());
        let mut conn = PgConnection::establish(&admin).expect("connect to the test cluster");
        diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\"")).execute(&mut conn).expect("drop");
        diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).expect("create");
        let (base, _) = admin.rsplit_once('/').expect("a database URL ends with /<database>");
        Some(Location::Postgres(format!("{base}/{name}")))
    }

    #[derive(QueryableByName)]
    struct Seq {
        #[diesel(sql_type = BigInt)]
        seq: i64,
    }

    /// SQLite only (its migration history): a database made before the jobs table lost
    /// AUTOINCREMENT keeps its jobs, and new jobs continue its numbering.
    #[test]
    fn jobs_survive_the_seq_migration_and_numbering_continues() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("old.db");
        let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("open");
        for _ in 0..2 {
            conn.run_next_migration(MIGRATIONS).expect("older migration");
        }
        let insert = |conn: &mut SqliteConnection, id: &str| {
            diesel::sql_query(format!(
                "INSERT INTO jobs (id, script_id, mode, status, args, created_at, stdout_ref, stderr_ref) \
                 VALUES ('{id}', 's', 'sync', 'succeeded', '[]', 1, '{id}.stdout.log', '{id}.stderr.log')"
            ))
            .execute(conn)
            .expect("insert");
        };
        for id in ["job_1_1", "job_1_2", "job_1_3"] {
            insert(&mut conn, id);
        }
        drop(conn);

        let store = Store::open_sqlite(&path, DEFAULT_POOL_SIZE).expect("reopen with every migration");
        assert_eq!(store.max_seq().expect("max seq"), 3);
        let job = store.get_job("job_1_2").expect("read").expect("kept");
        assert_eq!(job.stdout.log_ref, "job_1_2.stdout.log");
        let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("open");
        insert(&mut conn, "job_2_4");
        let seqs: Vec<Seq> = diesel::sql_query("SELECT seq FROM jobs ORDER BY seq").load(&mut conn).expect("seqs");
        assert_eq!(seqs.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        let autoincrement: Vec<Seq> = diesel::sql_query(
            "SELECT count(*) AS seq FROM sqlite_master WHERE name = 'jobs' AND sql LIKE '%AUTOINCREMENT%'",
        )
        .load(&mut conn)
        .expect("schema");
        assert_eq!(autoincrement[0].seq, 0);
    }

    #[derive(QueryableByName)]
    struct PlanRow {
        #[diesel(sql_type = diesel::sql_types::Text)]
        detail: String,
    }

    /// SQLite (its partial index needs the predicate repeated; the plan is SQLite's): listing by
    /// status pages and counts exactly as a full status index would, whichever status (succeeded
    /// ones are not in the index), with or without a script; and a status other than succeeded is
    /// still read from the index in order, not by scanning the table.
    #[test]
    fn job_lists_by_status_page_and_count_every_status_and_read_the_status_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("list.db");
        let store = Store::open_sqlite(&path, DEFAULT_POOL_SIZE).expect("open");
        let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("open");
        let statuses = ["succeeded", "succeeded", "failed", "canceled", "succeeded", "running", "queued", "timeout"];
        let mut jobs = Vec::new();
        for n in 0..40 {
            let (id, status, script) = (format!("job_1_{n}"), statuses[n % statuses.len()], ["a", "b", "c"][n % 3]);
            diesel::sql_query(format!(
                "INSERT INTO jobs (id, script_id, mode, status, args, created_at, stdout_ref, stderr_ref) \
                 VALUES ('{id}', '{script}', 'sync', '{status}', '[]', 1, '{id}.stdout.log', '{id}.stderr.log')"
            ))
            .execute(&mut conn)
            .expect("insert");
            jobs.push((id, status, script));
        }
        jobs.reverse(); // newest first, as listed
        for status in [None, Some("succeeded"), Some("failed"), Some("running"), Some("queued"), Some("nothing")] {
            for script in [None, Some("a"), Some("c")] {
                let wanted: Vec<&str> = jobs
                    .iter()
                    .filter(|(_, s, c)| status.map_or(true, |x| x == *s) && script.map_or(true, |x| x == *c))
                    .map(|(id, _, _)| id.as_str())
                    .collect();
                for (limit, offset) in [(5, 0), (3, 4), (100, 0)] {
                    let filter = JobFilter {
                        status: status.map(String::from),
                        script_id: script.map(String::from),
                        limit,
                        offset,
                        ..JobFilter::default()
                    };
                    let (page, total) = store.list_jobs(&filter).expect("list");
                    let ids: Vec<&str> = page.iter().map(|j| j.id.as_str()).collect();
                    let expected: Vec<&str> =
                        wanted.iter().skip(offset as usize).take(limit as usize).copied().collect();
                    assert_eq!(ids, expected, "{filter:?}");
                    assert_eq!(total, wanted.len() as i64, "{filter:?}");
                }
            }
        }
        let plan: Vec<PlanRow> = diesel::sql_query(format!(
            "EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE status = 'failed' AND {} ORDER BY seq DESC LIMIT 5",
            debug_sql(not_succeeded_sql())
        ))
        .load(&mut conn)
        .expect("plan");
        let plan: Vec<&str> = plan.iter().map(|p| p.detail.as_str()).collect();
        assert!(plan.iter().any(|d| d.contains("USING INDEX jobs_status_seq")), "{plan:?}");
        assert!(!plan.iter().any(|d| d.contains("TEMP B-TREE")), "{plan:?}");
    }

    /// The same writes give the same reads on SQLite and on PostgreSQL (in the PostgreSQL test
    /// pass; otherwise the test only checks SQLite against itself).
    #[test]
    fn sqlite_and_postgres_answer_the_same_job_reads() {
        use crate::config::Mode;
        use crate::jobs::model::JobStatus;
        let scenario = |store: &Store| {
            let statuses =
                [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Running, JobStatus::Queued, JobStatus::Succeeded];
            for n in 0..15i64 {
                let mut job = Job::new(format!("job_1_{n}"), ["a", "b"][n as usize % 2], Mode::Async, vec![], n);
                job.idempotency_key = (n % 4 == 0).then(|| format!("key{n}"));
                store.writer().write_blocking(WriteOp::insert_job(&job)).expect("insert");
                job.status = statuses[n as usize % statuses.len()];
                job.stdout.truncated = n % 3 == 0;
                job.pid = Some(100 + n as i32);
                store.writer().write_blocking(WriteOp::update_job(&job)).expect("update");
            }
            let imported: Vec<Job> = ["job_1_3", "job_0_1"]
                .iter()
                .map(|id| Job::new(id.to_string(), "old", Mode::Sync, vec!["x".into()], 0))
                .collect();
            for _ in 0..2 {
                store.writer().write_blocking(WriteOp::import(&imported, "/u/jobs.json".into(), 7)).expect("import");
            }
            let mut answers = vec![
                format!("{:?}", store.get_job("job_1_3")),
                format!("{:?}", store.job_by_idempotency_key("key8")),
                format!("{:?}", store.unfinished_jobs()),
                // PostgreSQL's identity burns a number on every insert that conflicts (the import's
                // skipped ids) or rolls back: seq has gaps there, so only its bound is the same.
                format!("{:?}", store.max_seq().map(|max| max >= 16)),
                format!("{:?}", store.is_imported("/u/jobs.json")),
            ];
            for status in [None, Some("succeeded"), Some("failed"), Some("running")] {
                for script in [None, Some("a")] {
                    let filter = JobFilter {
                        status: status.map(String::from),
                        script_id: script.map(String::from),
                        limit: 4,
                        offset: 1,
                        ..JobFilter::default()
                    };
                    answers.push(format!("{:?}", store.list_jobs(&filter)));
                }
            }
            answers
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite =
            scenario(&Store::open_sqlite(&dir.path().join("same.db"), DEFAULT_POOL_SIZE).expect("open sqlite"));
        let Some(location) = pg_location("same_reads") else { return };
        let store = Store::open(&location).expect("open postgres");
        assert_eq!(scenario(&store), sqlite);
    }

    /// The SQL text of an expression.
    fn debug_sql(expr: impl diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite>) -> String {
        diesel::debug_query::<diesel::sqlite::Sqlite, _>(&expr)
            .to_string()
            .split(" -- ")
            .next()
            .unwrap_or_default()
            .to_string()
    }
}
