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
    /// Opens the connection the location names, with its per-connection settings applied.
    pub fn open(location: &Location) -> ConnectionResult<DbConnection> {
        match location {
            Location::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
                apply_pragmas(&mut conn).map_err(|e| ConnectionError::BadConnection(format!("pragmas: {e}")))?;
                Ok(DbConnection::Sqlite(conn))
            }
            Location::Postgres(url) => Ok(DbConnection::Pg(PgConnection::establish(url)?)),
        }
    }
}

/// WAL lets readers run beside the writer; `synchronous = NORMAL` in WAL mode survives a crash
/// of this process (or kill -9) without losing a commit, and only fsyncs at checkpoints: a power
/// cut may lose the last commits but never corrupts the file.
pub(super) fn apply_pragmas(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; \
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
