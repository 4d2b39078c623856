//! Moving a deployment's history to another database (`script-runner migrate-db`): every row of
//! jobs, imports, workflow runs, their journal and their events, copied as it is into an empty database, so a
//! server started on the copy answers the API as the old one did. Sequence numbers are copied
//! too: listings are "newest first" by them and new ids continue after them.
//!
//! What is not copied: PostgreSQL's `deployment` row (the name of the deployment whose
//! processes a server may kill at start; the target's first server makes its own) and the log
//! files, which are not in the database (`runner.logsDir`).

use diesel::connection::SimpleConnection;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::conn::{DbConnection, MultiBackend};
use super::models::{CallbackRow, EventRow, JobRow, ResumeTokenRow, RunRow, StepRow};
use super::schema::{callbacks, imports, jobs, resume_tokens, script_run_events, script_run_journal, script_runs};
use super::{open_migrated, DatabaseLock, Location, StoreError};

/// Most rows read, and written, at a time.
const BATCH_ROWS: i64 = 1000;
/// Most text read at a time, in characters as the database counts them (a run's source may be a
/// megabyte, a step's result and a job's previews as large as the config lets them be): with
/// [`BATCH_ROWS`], what bounds the copy's memory, whatever the history holds.
const BATCH_CHARS: i64 = 16 * 1024 * 1024;

/// How many rows of each table [`copy_history`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Rows of `jobs`.
    pub jobs: u64,
    /// Rows of `imports` (upstream job stores already imported).
    pub imports: u64,
    /// Rows of `script_runs`.
    pub runs: u64,
    /// Rows of `script_run_journal`.
    pub journal: u64,
    /// Rows of `script_run_events` (numbered per run: copied with their numbers, so a client
    /// resumes on the copy with the `Last-Event-ID` it had).
    pub events: u64,
    /// Rows of `callbacks` (the outbox: pending deliveries resume on the copy).
    pub callbacks: u64,
    /// Rows of `resume_tokens` (the resume URLs used stay used on the copy).
    pub resume_tokens: u64,
}

/// Why a history was not copied. When the copy itself fails, its transaction is rolled back:
/// the target holds no row of it. No message holds a password.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target already holds rows: a history is only ever copied into an empty database,
    /// never merged into another (ids and sequence numbers would collide). Nothing was written.
    #[error("{target}: table {table} is not empty ({rows} rows); migrate-db will not overwrite it")]
    NotEmpty {
        /// The target, without its password.
        target: String,
        /// The first table found holding rows.
        table: &'static str,
        /// How many it holds.
        rows: i64,
    },
    /// The source and the target are one database.
    #[error("the source and the target are the same database ({0})")]
    SameDatabase(String),
    /// The source SQLite file does not exist (it is not created: a typo would copy nothing).
    #[error("{0}: no such database file")]
    NoSource(String),
    /// The source has no script-runner tables.
    #[error("{0} is not a script-runner database: {1}")]
    NotAHistory(String, String),
    /// A database is in use by a server (its lock is held), cannot be reached, opened or
    /// migrated, or a query failed; the message says which database and what happened.
    #[error("{0}")]
    Failed(String),
}

/// Copies the whole history in `from` into `to`, which must be empty, and returns how many rows
/// of each table it copied.
///
/// Guarantees:
/// - Both databases are taken for the duration with the lock a server takes
///   ([`Location::lock`]): it refuses to run while a server uses either, and no server starts on
///   either meanwhile.
/// - Both are brought to the current schema first (as a server starting on them would), the
///   target created if it is a SQLite file that does not exist. A SQLite source must exist.
/// - A target with any row in `jobs`, `imports`, `script_runs`, `script_run_journal` or
///   `script_run_events` is
///   refused ([`CopyError::NotEmpty`]) and left as it was.
/// - Every row is copied with its sequence number, in batches (bounded memory), in one
///   transaction on the target: a failure leaves it empty. On PostgreSQL the identity
///   sequences of `jobs` and `script_runs` are then set past the copied numbers.
/// - The source is only read, in one read transaction (one snapshot).
/// - Errors name the database without its password.
pub fn copy_history(from: &Location, to: &Location) -> Result<Copied, CopyError> {
    // One line, without a password (the driver's errors may quote the URL, and span lines).
    let failed = |e: String| CopyError::Failed(to.redact(&from.redact(&one_line(&e))));
    let setup_failed = |e: StoreError| match e {
        StoreError::Setup(message) => failed(message),
        other => failed(other.to_string()),
    };
    if same_database(from, to) {
        return Err(CopyError::SameDatabase(from.to_string()));
    }
    if let Location::Sqlite(path) = from {
        if !path.is_file() {
            return Err(CopyError::NoSource(from.to_string()));
        }
    }
    let _source_lock: DatabaseLock = from.lock().map_err(failed)?;
    let mut source = DbConnection::open(from).map_err(|e| failed(format!("cannot open {from}: {e}")))?;
    // Before its migrations: a database without the jobs table is not one a server made.
    jobs::table
        .count()
        .get_result::<i64>(&mut source)
        .map_err(|e| CopyError::NotAHistory(from.to_string(), from.redact(&one_line(&e.to_string()))))?;
    drop(source);
    let _target_lock: DatabaseLock = to.lock().map_err(failed)?;
    let to_copy_error = |e: InnerError| match e {
        InnerError::NotEmpty { table, rows } => CopyError::NotEmpty { target: to.to_string(), table, rows },
        InnerError::Copy(table, e) => failed(format!("copying {table} from {from} to {to}: {e}")),
        InnerError::Query(e) => failed(format!("copying from {from} to {to}: {e}")),
    };
    let mut target = open_migrated(to).map_err(setup_failed)?;
    // Before the source is migrated: a refused copy changes neither database.
    refuse_non_empty(&mut target).map_err(to_copy_error)?;
    let mut source = open_migrated(from).map_err(setup_failed)?;
    source
        .transaction(|source| {
            if let DbConnection::Pg(_) = source {
                source.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
            }
            target.transaction(|target| {
                // Again in the transaction that writes: what it saw empty is what it fills.
                refuse_non_empty(target)?;
                let copied = Copied {
                    jobs: copy_table::<JobCopy>(source, target)?,
                    imports: copy_table::<ImportCopy>(source, target)?,
                    runs: copy_table::<RunCopy>(source, target)?,
                    journal: copy_table::<StepRow>(source, target)?,
                    events: copy_table::<EventRow>(source, target)?,
                    callbacks: copy_table::<CallbackRow>(source, target)?,
                    resume_tokens: copy_table::<ResumeTokenRow>(source, target)?,
                };
                if let DbConnection::Pg(_) = target {
                    // The copied rows carry their own numbers; the next insert must not reuse
                    // one. An empty table's sequence starts at 1 again.
                    for table in ["jobs", "script_runs"] {
                        target.batch_execute(&format!(
                            "SELECT setval(pg_get_serial_sequence('{table}', 'seq'), \
                             COALESCE((SELECT max(seq) FROM {table}), 1), \
                             (SELECT max(seq) FROM {table}) IS NOT NULL)"
                        ))?;
                    }
                }
                Ok(copied)
            })
        })
        .map_err(to_copy_error)
}

/// A driver's message on one line: libpq's span several ("...failed: Connection refused\n\tIs
/// the server running...").
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(" ")
}

/// An error inside the copy's transactions (which roll back on any of them).
#[derive(Debug)]
enum InnerError {
    NotEmpty { table: &'static str, rows: i64 },
    Copy(&'static str, diesel::result::Error),
    Query(diesel::result::Error),
}

impl From<diesel::result::Error> for InnerError {
    fn from(e: diesel::result::Error) -> InnerError {
        InnerError::Query(e)
    }
}

/// Whether both name one database: the same SQLite file (however its path is spelled), or the
/// same PostgreSQL URL. (Another spelling of one PostgreSQL database is caught by its lock.)
fn same_database(a: &Location, b: &Location) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a, b) {
        (Location::Sqlite(a), Location::Sqlite(b)) => match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => a == b,
        },
        (Location::Postgres(a), Location::Postgres(b)) => a == b,
        _ => false,
    }
}

/// Fails with the first of the copied tables that holds a row.
fn refuse_non_empty(target: &mut DbConnection) -> Result<(), InnerError> {
    let counts = [
        ("jobs", jobs::table.count().get_result::<i64>(target)?),
        ("imports", imports::table.count().get_result::<i64>(target)?),
        ("script_runs", script_runs::table.count().get_result::<i64>(target)?),
        ("script_run_journal", script_run_journal::table.count().get_result::<i64>(target)?),
        ("script_run_events", script_run_events::table.count().get_result::<i64>(target)?),
        ("callbacks", callbacks::table.count().get_result::<i64>(target)?),
        ("resume_tokens", resume_tokens::table.count().get_result::<i64>(target)?),
    ];
    match counts.into_iter().find(|(_, rows)| *rows > 0) {
        Some((table, rows)) => Err(InnerError::NotEmpty { table, rows }),
        None => Ok(()),
    }
}

/// Copies one table in key order, a batch at a time: each batch as many of the next rows as
/// [`BATCH_ROWS`] and [`BATCH_CHARS`] allow (at least one). Returns the rows copied.
fn copy_table<T: Table>(source: &mut DbConnection, target: &mut DbConnection) -> Result<u64, InnerError> {
    let in_table = |e| InnerError::Copy(T::NAME, e);
    let mut last: Option<T> = None;
    let mut copied = 0u64;
    loop {
        let sizes = T::sizes(source, last.as_ref()).map_err(in_table)?;
        if sizes.is_empty() {
            return Ok(copied);
        }
        let rows = T::next(source, last.as_ref(), batch_len(&sizes)).map_err(in_table)?;
        T::insert(target, &rows).map_err(in_table)?;
        copied += rows.len() as u64;
        match rows.into_iter().last() {
            Some(row) => last = Some(row),
            None => return Ok(copied),
        }
    }
}

/// How many of the next rows, whose sizes these are (in order), one batch takes.
fn batch_len(sizes: &[i64]) -> i64 {
    let mut total = 0;
    let mut taken = 0;
    for size in sizes {
        total += size;
        if taken > 0 && total > BATCH_CHARS {
            break;
        }
        taken += 1;
    }
    taken
}

/// `INSERT INTO $table VALUES <rows>` in one statement, on either backend: diesel's
/// `MultiConnection` has no multi-row insert, each backend's own connection has.
macro_rules! insert_rows {
    ($conn:expr, $table:expr, $rows:expr) => {
        match $conn {
            DbConnection::Sqlite(conn) => diesel::insert_into($table).values($rows).execute(conn),
            DbConnection::Pg(conn) => diesel::insert_into($table).values($rows).execute(conn),
        }
    };
}

/// A copied table's rows: read in key order after a row, written as they are.
trait Table: Sized {
    /// The table's name, for errors.
    const NAME: &'static str;
    /// The sizes (in characters) of at most [`BATCH_ROWS`] rows after `last` in key order (from
    /// the first when `None`): its text columns, and a little for the rest.
    fn sizes(conn: &mut DbConnection, last: Option<&Self>) -> QueryResult<Vec<i64>>;
    /// The next `limit` rows after `last` in key order.
    fn next(conn: &mut DbConnection, last: Option<&Self>, limit: i64) -> QueryResult<Vec<Self>>;
    /// Inserts rows as they are.
    fn insert(conn: &mut DbConnection, rows: &[Self]) -> QueryResult<usize>;
}

/// A row's size as SQL both backends read as BIGINT: the lengths of its text columns (nullable
/// ones as 0 when NULL) and 100 characters for the others.
fn size_of(columns: &[&str], nullable: &[&str]) -> diesel::expression::SqlLiteral<BigInt> {
    let mut terms: Vec<String> = columns.iter().map(|c| format!("length({c})")).collect();
    terms.extend(nullable.iter().map(|c| format!("COALESCE(length({c}), 0)")));
    sql::<BigInt>(&format!("CAST(100 + {} AS BIGINT)", terms.join(" + ")))
}

/// A `jobs` row with its sequence number.
#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = jobs, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
struct JobCopy {
    seq: i64,
    #[diesel(embed)]
    row: JobRow,
}

impl JobCopy {
    fn after(last: Option<&JobCopy>) -> jobs::BoxedQuery<'static, MultiBackend> {
        let query = jobs::table.order(jobs::seq.asc()).into_boxed();
        match last {
            Some(last) => query.filter(jobs::seq.gt(last.seq)),
            None => query,
        }
    }
}

impl Table for JobCopy {
    const NAME: &'static str = "jobs";

    fn sizes(conn: &mut DbConnection, last: Option<&Self>) -> QueryResult<Vec<i64>> {
        let text = ["args", "stdout_preview", "stderr_preview"];
        let nullable = ["error", "idempotency_key", "stdout_error", "stderr_error", "step_key"];
        Self::after(last).select(size_of(&text, &nullable)).limit(BATCH_ROWS).load(conn)
    }

    fn next(conn: &mut DbConnection, last: Option<&Self>, limit: i64) -> QueryResult<Vec<Self>> {
        Self::after(last).select(Self::as_select()).limit(limit).load(conn)
    }

    fn insert(conn: &mut DbConnection, rows: &[Self]) -> QueryResult<usize> {
        insert_rows!(conn, jobs::table, rows)
    }
}

/// An `imports` row.
#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = imports, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
struct ImportCopy {
    source: String,
    imported_at: i64,
    jobs: i32,
}

impl ImportCopy {
    fn after(last: Option<&ImportCopy>) -> imports::BoxedQuery<'static, MultiBackend> {
        let query = imports::table.order(imports::source.asc()).into_boxed();
        match last {
            Some(last) => query.filter(imports::source.gt(last.source.clone())),
            None => query,
        }
    }
}

impl Table for ImportCopy {
    const NAME: &'static str = "imports";

    fn sizes(conn: &mut DbConnection, last: Option<&Self>) -> QueryResult<Vec<i64>> {
        Self::after(last).select(size_of(&["source"], &[])).limit(BATCH_ROWS).load(conn)
    }

    fn next(conn: &mut DbConnection, last: Option<&Self>, limit: i64) -> QueryResult<Vec<Self>> {
        Self::after(last).select(Self::as_select()).limit(limit).load(conn)
    }

    fn insert(conn: &mut DbConnection, rows: &[Self]) -> QueryResult<usize> {
        insert_rows!(conn, imports::table, rows)
    }
}

/// A `script_runs` row with its sequence number.
#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = script_runs, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
struct RunCopy {
    seq: i64,
    #[diesel(embed)]
    row: RunRow,
}

impl RunCopy {
    fn after(last: Option<&RunCopy>) -> script_runs::BoxedQuery<'static, MultiBackend> {
        let query = script_runs::table.order(script_runs::seq.asc()).into_boxed();
        match last {
            Some(last) => query.filter(script_runs::seq.gt(last.seq)),
            None => query,
        }
    }
}

impl Table for RunCopy {
    const NAME: &'static str = "script_runs";

    fn sizes(conn: &mut DbConnection, last: Option<&Self>) -> QueryResult<Vec<i64>> {
        let text = ["id", "script_name", "args", "source", "warnings", "attempts"];
        let nullable = ["output", "error", "idempotency_key", "progress_message", "waiting_for", "retry"];
        Self::after(last).select(size_of(&text, &nullable)).limit(BATCH_ROWS).load(conn)
    }

    fn next(conn: &mut DbConnection, last: Option<&Self>, limit: i64) -> QueryResult<Vec<Self>> {
        Self::after(last).select(Self::as_select()).limit(limit).load(conn)
    }

    fn insert(conn: &mut DbConnection, rows: &[Self]) -> QueryResult<usize> {
        insert_rows!(conn, script_runs::table, rows)
    }
}

/// The journal in its primary key's order, (run, label).
fn journal_after(last: Option<&StepRow>) -> script_run_journal::BoxedQuery<'static, MultiBackend> {
    use script_run_journal::dsl as j;
    let query = j::script_run_journal.order((j::run_id.asc(), j::step_key.asc())).into_boxed();
    match last {
        Some(last) => query.filter(
            j::run_id
                .gt(last.run_id.clone())
                .or(j::run_id.eq(last.run_id.clone()).and(j::step_key.gt(last.step_key.clone()))),
        ),
        None => query,
    }
}

impl Table for StepRow {
    const NAME: &'static str = "script_run_journal";

    fn sizes(conn: &mut DbConnection, last: Option<&Self>) -> QueryResult<Vec<i64>> {
        let text = ["run_id", "step_key", "config"];
        let nullable = ["result", "error", "job_id"];
        journal_after(last).select(size_of(&text, &nullable)).limit(BATCH_ROWS).load(conn)
    }

    fn next(conn: &mut DbConnection, last: Option<&Self>, limit: i64) -> QueryResult<Vec<Self>> {
        journal_after(last).select(Self::as_select()).limit(limit).load(conn)
    }

    fn insert(conn: &mut DbConnection, rows: &[Self]) -> QueryResult<usize> {
        insert_rows!(conn, script_run_journal::table, rows)
    }
}

/// The events in their primary key's order, (run, seq).
fn events_after(last: Option<&EventRow>) -> script_run_events::BoxedQuery<'static, MultiBackend> {
    use script_run_events::dsl as e;
    let query = e::script_run_events.order((e::run_id.asc(), e::seq.asc())).into_boxed();
    match last {
        Some(last) => query
            .filter(e::run_id.gt(last.run_id.clone()).or(e::run_id.eq(last.run_id.clone()).and(e::seq.gt(last.seq)))),
        None => query,
    }
}

impl Table for EventRow {
    const NAME: &'static str = "script_run_events";

    fn sizes(conn: &mut DbConnection, last: Option<&Self>) -> QueryResult<Vec<i64>> {
        events_after(last).select(size_of(&["run_id", "kind", "body"], &[])).limit(BATCH_ROWS).load(conn)
    }

    fn next(conn: &mut DbConnection, last: Option<&Self>, limit: i64) -> QueryResult<Vec<Self>> {
        events_after(last).select(Self::as_select()).limit(limit).load(conn)
    }

    fn insert(conn: &mut DbConnection, rows: &[Self]) -> QueryResult<usize> {
        insert_rows!(conn, script_run_events::table, rows)
    }
}

/// The callbacks in id order.
fn callbacks_after(last: Option<&CallbackRow>) -> callbacks::BoxedQuery<'static, MultiBackend> {
    let query = callbacks::table.order(callbacks::id.asc()).into_boxed();
    match last {
        Some(last) => query.filter(callbacks::id.gt(last.id.clone())),
        None => query,
    }
}

impl Table for CallbackRow {
    const NAME: &'static str = "callbacks";

    fn sizes(conn: &mut DbConnection, last: Option<&Self>) -> QueryResult<Vec<i64>> {
        let text = ["id", "owner_id", "url", "events", "attempt_log"];
        callbacks_after(last).select(size_of(&text, &["last_error"])).limit(BATCH_ROWS).load(conn)
    }

    fn next(conn: &mut DbConnection, last: Option<&Self>, limit: i64) -> QueryResult<Vec<Self>> {
        callbacks_after(last).select(Self::as_select()).limit(limit).load(conn)
    }

    fn insert(conn: &mut DbConnection, rows: &[Self]) -> QueryResult<usize> {
        insert_rows!(conn, callbacks::table, rows)
    }
}

/// The used resume tokens in key order.
fn resume_tokens_after(last: Option<&ResumeTokenRow>) -> resume_tokens::BoxedQuery<'static, MultiBackend> {
    let query = resume_tokens::table.order(resume_tokens::token_hash.asc()).into_boxed();
    match last {
        Some(last) => query.filter(resume_tokens::token_hash.gt(last.token_hash.clone())),
        None => query,
    }
}

impl Table for ResumeTokenRow {
    const NAME: &'static str = "resume_tokens";

    fn sizes(conn: &mut DbConnection, last: Option<&Self>) -> QueryResult<Vec<i64>> {
        let text = ["token_hash", "run_id", "step_key", "action", "use_id"];
        resume_tokens_after(last).select(size_of(&text, &[])).limit(BATCH_ROWS).load(conn)
    }

    fn next(conn: &mut DbConnection, last: Option<&Self>, limit: i64) -> QueryResult<Vec<Self>> {
        resume_tokens_after(last).select(Self::as_select()).limit(limit).load(conn)
    }

    fn insert(conn: &mut DbConnection, rows: &[Self]) -> QueryResult<usize> {
        insert_rows!(conn, resume_tokens::table, rows)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Mode;
    use crate::db::tests::pg_location;
    use crate::db::{JobFilter, RunFilter, Store, WriteOp};
    use crate::jobs::model::{Job, JobStatus};
    use crate::runs::model::{JournalEntry, Run, RunStatus, StepStatus, StepType};

    /// More jobs than one batch holds, twice over.
    const JOBS: i64 = 2 * BATCH_ROWS + 5;

    /// A history: jobs (some imported), three runs (one forked), their journals and events.
    fn fill(store: &Store) {
        let writer = store.writer();
        for n in 1..=JOBS {
            let mut job =
                Job::new(format!("job_1_{n}"), ["a", "b"][n as usize % 2], Mode::Async, vec![n.to_string()], n);
            job.idempotency_key = (n % 100 == 0).then(|| format!("key{n}"));
            writer.enqueue(WriteOp::insert_job(&job)).expect("enqueue");
            job.status = [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Running][n as usize % 3];
            job.stdout.preview = format!("out {n}\n");
            writer.enqueue(WriteOp::update_job(&job)).expect("enqueue");
        }
        // A job with a callback: its outbox row is copied too.
        let job = Job::new("job_3_1".into(), "a", Mode::Async, vec![], 1);
        let target = crate::callbacks::Target { url: "http://127.0.0.1:9/cb".into(), events: vec!["failed".into()] };
        let mut callback = target.for_job(&job.id);
        callback.attempt_log.push(crate::callbacks::Attempt {
            at: 2,
            status: Some(500),
            error: None,
            duration_ms: 3,
            event: Some("failed".into()),
        });
        writer.enqueue(WriteOp::with_callback(WriteOp::insert_job(&job), &callback)).expect("enqueue");
        let imported = vec![Job::new("job_0_1".into(), "old", Mode::Sync, vec![], 0)];
        writer.enqueue(WriteOp::import(&imported, "/u/jobs.json".into(), 7)).expect("enqueue");
        for n in 1..=3i64 {
            let run = Run {
                status: [RunStatus::Completed, RunStatus::Failed, RunStatus::Awaiting][n as usize - 1],
                args: json!({"n": n, "z": [1, 2.5]}),
                source: format!("echo {n}\n"),
                output: Some(json!({"done": n})),
                forked_from: (n == 3).then(|| "run_1_1".to_string()),
                ..Run::fresh(format!("run_1_{n}"), 100 + n)
            };
            // With its events: `status`, and `forked` on run 1 for run 3.
            writer.enqueue(crate::runs::events::insert_run(&run)).expect("enqueue");
            let steps: Vec<JournalEntry> = (1..=n)
                .map(|s| JournalEntry {
                    run_id: run.id.clone(),
                    label: format!("step{s}"),
                    seq: s,
                    step_type: StepType::Script,
                    config: json!({"scriptId": "a"}),
                    status: StepStatus::Completed,
                    result: Some(json!({"jobId": format!("job_1_{s}")})),
                    error: None,
                    job_id: Some(format!("job_1_{s}")),
                    started_at: 200 + s,
                    completed_at: Some(300 + s),
                    duration_ms: Some(100),
                    attempts: Vec::new(),
                })
                .collect();
            let insert = WriteOp::insert_steps(&steps);
            // Run 3's last step decided through a resume URL: its use is copied too.
            let insert = if n == 3 {
                let used = crate::runs::resume::Used {
                    token_sha256: "ab".repeat(32),
                    run_id: run.id.clone(),
                    label: "step3".into(),
                    action: crate::runs::resume::Action::Deny,
                    use_id: "u1".into(),
                    used_at: 303,
                };
                WriteOp::with_resume_token(insert, &used)
            } else {
                insert
            };
            writer.enqueue(insert).expect("enqueue");
        }
        writer.write_blocking(WriteOp::Flush).expect("flush");
    }

    /// What a server would read from the store: pages of jobs and runs, single rows, journals.
    fn reads(store: &Store) -> Vec<String> {
        let mut answers = vec![format!("{:?}", store.max_seq()), format!("{:?}", store.max_run_seq())];
        for offset in [0, 999, 1000, JOBS - 3] {
            let filter = JobFilter { limit: 500, offset, ..JobFilter::default() };
            answers.push(format!("{:?}", store.list_jobs(&filter)));
        }
        answers.push(format!("{:?}", store.job_by_idempotency_key("key1900")));
        answers.push(format!("{:?}", store.get_job("job_0_1")));
        answers.push(format!("{:?}", store.is_imported("/u/jobs.json")));
        answers.push(format!("{:?}", store.callbacks_of("job_3_1")));
        answers.push(format!("{:?}", store.resume_token_use(&"ab".repeat(32))));
        answers.push(format!("{:?}", store.list_runs(&RunFilter { limit: 10, ..RunFilter::default() })));
        for n in 1..=3 {
            answers.push(format!("{:?}", store.journal(&format!("run_1_{n}"))));
            answers.push(format!("{:?}", store.events_after(&format!("run_1_{n}"), 0, 100)));
        }
        answers
    }

    #[test]
    fn a_history_is_copied_whole_in_batches_either_way_and_numbering_continues_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let from = Location::Sqlite(dir.path().join("from.db"));
        let source = Store::open(&from).expect("open the source");
        fill(&source);
        let expected = reads(&source);
        drop(source);

        let mut targets = vec![Location::Sqlite(dir.path().join("new/to.db"))];
        targets.extend(pg_location("copy_whole"));
        for (n, to) in targets.into_iter().enumerate() {
            let copied = copy_history(&from, &to).expect("copy");
            assert_eq!(
                copied,
                Copied {
                    jobs: JOBS as u64 + 2,
                    imports: 1,
                    runs: 3,
                    journal: 6,
                    events: 4,
                    callbacks: 1,
                    resume_tokens: 1
                },
                "{to}"
            );
            let target = Store::open(&to).expect("open the target");
            assert_eq!(reads(&target), expected, "{to}");
            // And back (from PostgreSQL in the PostgreSQL pass).
            let back = Location::Sqlite(dir.path().join(format!("back{n}.db")));
            assert_eq!(copy_history(&to, &back).expect("copy back"), copied);
            assert_eq!(reads(&Store::open(&back).expect("open the copy's copy")), expected, "{to}");
            let next = Job::new("job_2_1".into(), "a", Mode::Sync, vec![], 1);
            target.writer().write_blocking(WriteOp::insert_job(&next)).expect("a new job");
            assert_eq!(target.max_seq().expect("max seq"), JOBS + 3, "{to}");
            let run = Run::fresh("run_2_1".into(), 1);
            target.writer().write_blocking(WriteOp::insert_run(&run)).expect("a new run");
            assert_eq!(target.max_run_seq().expect("max run seq"), 4, "{to}");
        }
    }

    #[test]
    fn a_copy_that_fails_midway_leaves_the_target_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        let from = Location::Sqlite(dir.path().join("from.db"));
        fill(&Store::open(&from).expect("open the source"));
        // A journal entry of no run: the target's foreign key refuses it, after every job and
        // run went in.
        let mut conn = SqliteConnection::establish(&dir.path().join("from.db").to_string_lossy()).expect("open");
        // The store's writer thread may still be checkpointing as it closes.
        conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = OFF").expect("pragmas");
        diesel::sql_query(
            "INSERT INTO script_run_journal (run_id, step_key, seq, step_type, config, status, started_at) \
             VALUES ('run_9_9', 'x', 1, 'value', '{}', 'started', 1)",
        )
        .execute(&mut conn)
        .expect("an orphan journal entry");
        drop(conn);

        let mut targets = vec![Location::Sqlite(dir.path().join("to.db"))];
        targets.extend(pg_location("copy_fails"));
        for to in targets {
            let error = copy_history(&from, &to).expect_err("the orphan entry fails the copy").to_string();
            assert!(error.contains("copying script_run_journal") && !error.contains('\n'), "{error}");
            let target = Store::open(&to).expect("open the target");
            assert_eq!(target.list_jobs(&JobFilter { limit: 1, ..JobFilter::default() }).expect("jobs").1, 0);
            assert_eq!(target.list_runs(&RunFilter { limit: 1, ..RunFilter::default() }).expect("runs").1, 0);
            assert!(!target.is_imported("/u/jobs.json").expect("imports"));
        }
    }

    #[test]
    fn a_database_is_not_copied_into_itself() {
        let dir = tempfile::tempdir().expect("temp dir");
        Store::open(&Location::Sqlite(dir.path().join("a.db"))).expect("open");
        let a = Location::Sqlite(dir.path().join("a.db"));
        let same = Location::Sqlite(dir.path().join("x/../a.db"));
        std::fs::create_dir(dir.path().join("x")).expect("mkdir");
        assert!(matches!(copy_history(&a, &same), Err(CopyError::SameDatabase(_))));
        let missing = Location::Sqlite(dir.path().join("missing.db"));
        assert!(matches!(copy_history(&missing, &a), Err(CopyError::NoSource(_))));
        assert!(!dir.path().join("missing.db").exists());
    }

    #[test]
    fn a_batch_takes_rows_up_to_its_size_and_at_least_one() {
        assert_eq!(batch_len(&[10, 20, 30]), 3);
        assert_eq!(batch_len(&[BATCH_CHARS + 1, 1]), 1);
        assert_eq!(batch_len(&[BATCH_CHARS / 2, BATCH_CHARS / 2, 1]), 2);
    }
}
