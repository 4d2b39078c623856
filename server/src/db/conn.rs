//! The connection type every storage query runs on: one enum over the backends diesel's
//! `MultiConnection` derive can dispatch to, and the r2d2 manager that opens the variant a
//! [`Location`] names (never by trial: `DbConnection::establish` would try PostgreSQL's
//! connection-string parser on a SQLite path first).
#![allow(missing_docs, reason = "the MultiConnection derive generates public items")]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, R2D2Connection};

use super::Location;

/// A connection to whichever backend the service runs on.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    /// A PostgreSQL server.
    Pg(diesel::PgConnection),
    /// An embedded SQLite file.
    Sqlite(diesel::SqliteConnection),
}

impl DbConnection {
    /// Opens the connection the location names, with its per-connection settings applied (on
    /// PostgreSQL, the time-outs of [`super::postgres::connect_url`]). An error's text is
    /// libpq's: pass it through [`Location::redact`] before showing it.
    pub fn open(location: &Location) -> ConnectionResult<DbConnection> {
        match location {
            Location::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
                apply_pragmas(&mut conn).map_err(|e| ConnectionError::BadConnection(format!("pragmas: {e}")))?;
                Ok(DbConnection::Sqlite(conn))
            }
            Location::Postgres(url) => {
                Ok(DbConnection::Pg(PgConnection::establish(&super::postgres::connect_url(url))?))
            }
        }
    }
}

/// WAL lets readers run beside the writer; `synchronous = NORMAL` in WAL mode survives a crash
/// of this process (or kill -9) without losing a commit, and only fsyncs at checkpoints: a power
/// cut may lose the last commits but never corrupts the file.
///
/// `busy_timeout` comes first: `journal_mode` takes a lock, and set before it, a connection opened
/// while another holds the database (the writer committing, a checkpoint) failed at once with
/// "database is locked" instead of waiting.
pub(super) fn apply_pragmas(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute(
        "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA foreign_keys = ON;",
    )
}

/// Opens pooled connections on one location.
#[derive(Debug)]
pub struct Manager {
    location: Location,
}

impl Manager {
    pub fn new(location: Location) -> Manager {
        Manager { location }
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConnection, r2d2::Error> {
        DbConnection::open(&self.location).map_err(r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        conn.ping().map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

/// How often the pool's failures to open a connection are logged: r2d2 retries them several
/// times a second while a request waits, and an outage would fill the log.
const POOL_ERROR_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Logs the pool's failures to open a connection (r2d2 retries them until a request's
/// connection time-out) at warning level, on one line, without a password, and at most once
/// every [`POOL_ERROR_LOG_EVERY`] (with how many were not logged).
#[derive(Debug)]
pub struct PoolErrors {
    location: Location,
    /// When one was last logged, and how many since.
    last: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl PoolErrors {
    pub fn new(location: Location) -> PoolErrors {
        PoolErrors { location, last: std::sync::Mutex::new((None, 0)) }
    }
}

impl r2d2::HandleError<r2d2::Error> for PoolErrors {
    fn handle_error(&self, error: r2d2::Error) {
        let unreported = {
            let mut last = crate::sync::lock(&self.last);
            if last.0.is_some_and(|at| at.elapsed() < POOL_ERROR_LOG_EVERY) {
                last.1 += 1;
                return;
            }
            last.0 = Some(std::time::Instant::now());
            std::mem::take(&mut last.1)
        };
        let message = super::postgres::one_line(&self.location.redact(&error.to_string()));
        let since = match unreported {
            0 => String::new(),
            n => format!(" ({n} more since the last one logged)"),
        };
        log::warn!("database: cannot open a read connection: {message}{since}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection opened while another holds the database's write lock waits for it (the
    /// busy time-out is set before `journal_mode`, which takes a lock) instead of failing with
    /// "database is locked" (seen as a rare failure of migrate-db's copy test).
    #[test]
    fn a_sqlite_connection_opened_while_the_database_is_locked_waits_for_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let location = Location::Sqlite(dir.path().join("locked.db"));
        let DbConnection::Sqlite(mut holder) = DbConnection::open(&location).expect("open") else {
            unreachable!("a SQLite location opens a SQLite connection")
        };
        holder
            .batch_execute("PRAGMA locking_mode = EXCLUSIVE; CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
            .expect("lock");
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            holder.batch_execute("PRAGMA locking_mode = NORMAL; SELECT 1 FROM t;").expect("unlock");
            drop(holder);
        });
        let opened = DbConnection::open(&location);
        release.join().expect("holder thread");
        assert!(opened.is_ok(), "{:?}", opened.err());
    }
}
