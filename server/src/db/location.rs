//! Where the database is: the backend a `database.url` names, and what being the one server
//! on it takes. The rest of the service names no database engine: it holds a [`Location`],
//! opens a `Store` on it, and takes its [`Location::deployment`] as the mark of its processes.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use diesel::{Connection, OptionalExtension, PgConnection, RunQueryDsl};
use log::{error, info, warn};
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::watch;

use super::postgres::{self, without_password};
use crate::sync::lock;

/// A database the service can run on.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// An embedded SQLite file (`sqlite://<path>`, relative to the config's folder).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://user:pass@host:port/db`, the URL as given).
    Postgres(String),
}

/// Shows a PostgreSQL URL without its password: a location printed for debugging must not
/// leak it either.
impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Location::Postgres(url) => f.debug_tuple("Postgres").field(&without_password(url)).finish(),
        }
    }
}

impl std::fmt::Display for Location {
    /// The location as a URL without its password: what output and errors may show.
    /// SQLite: `sqlite://<path>`; PostgreSQL: the URL as given, less its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Location::Postgres(url) => f.write_str(&without_password(url)),
        }
    }
}

/// Held while the server runs: no second server takes the same database.
pub enum DatabaseLock {
    /// An exclusive lock on `<file>.lock`.
    File(Flock<File>),
    /// A session-level advisory lock, held on a connection of its own that a thread watches
    /// (see [`PgLock`]).
    Postgres(PgLock),
}

/// The advisory lock key a server takes on its PostgreSQL database ("scrrunnr" in ASCII).
const ADVISORY_LOCK_KEY: i64 = 0x7363_7272_756e_6e72;

/// How often the connection that holds the advisory lock is checked.
const LOCK_CHECK_EVERY: Duration = Duration::from_secs(5);

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

impl Location {
    /// The database `url` names (`sqlite://<path>` or `sqlite:<path>`; a relative path is taken
    /// from `base`); the error says what is wrong with the URL, for the config error.
    pub fn parse(url: &str, base: &Path) -> Result<Location, String> {
        let path = if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Location::Postgres(url.to_string()));
        } else {
            return Err(format!(
                "unsupported URL {:?}; expected sqlite://<path> or postgres://user:pass@host:port/db",
                without_password(url)
            ));
        };
        if path.is_empty() {
            return Err("the sqlite:// URL names no file".into());
        }
        Ok(Location::Sqlite(base.join(path)))
    }

    /// The same location with its file path (for a file-backed database) passed through `f`
    /// (the config normalises `..` and `.` in paths it reports).
    pub fn map_file(self, f: impl FnOnce(&Path) -> PathBuf) -> Location {
        match self {
            Location::Sqlite(path) => Location::Sqlite(f(&path)),
            other => other,
        }
    }

    /// The default: `script-runner.db` in `base` (the config's folder).
    pub fn default_url(base: &Path) -> String {
        format!("sqlite://{}", base.join("script-runner.db").display())
    }

    /// A name for the deployment that uses this database, stable across restarts: every
    /// process the server starts carries it (`SCRIPT_RUNNER_DB`), so crash recovery finds
    /// its own orphans and never another deployment's.
    pub fn deployment(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => without_password(url),
        }
    }

    /// `message` (from libpq or a server) without the password of this location's URL.
    pub fn redact(&self, message: &str) -> String {
        match self {
            Location::Sqlite(_) => message.to_string(),
            Location::Postgres(url) => postgres::redact(message, url),
        }
    }

    /// Takes the database for this server: an exclusive lock on `<file>.lock`, or on
    /// PostgreSQL a session advisory lock, held while the returned guard lives. Two servers on
    /// one database would each mistake the other's jobs for orphans of a crash and kill them.
    /// On PostgreSQL this is the first connection of a start: its error is the one line that
    /// says what is wrong (see [`postgres::connect_checked`]).
    pub fn lock(&self) -> Result<DatabaseLock, String> {
        let database = match self {
            Location::Sqlite(path) => path,
            Location::Postgres(url) => return lock_postgres(url),
        };
        let path = PathBuf::from(format!("{}.lock", database.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let flock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            format!("{} is locked: another script-runner is using this database ({e})", path.display())
        })?;
        Ok(DatabaseLock::File(flock))
    }
}

/// The advisory lock of a PostgreSQL database, on a connection of its own. A restart of the
/// server (or a network cut) closes that connection, and PostgreSQL then releases the lock; a
/// thread checks the connection every [`LOCK_CHECK_EVERY`] and, once it is lost, reconnects
/// (every few seconds, as long as it takes) and takes the lock again. If another server took
/// it meanwhile, two servers would share the database: the thread logs an error and reports
/// it through [`PgLock::lost`], and the server stops (see `server::serve`).
pub struct PgLock {
    keeper: Arc<LockKeeper>,
    lost: watch::Receiver<Option<String>>,
}

struct LockKeeper {
    url: String,
    /// The connection holding the lock and its session; `None` while the lock is being taken
    /// again, or once the guard is dropped.
    conn: Mutex<Option<(PgConnection, Session)>>,
    /// Set when the guard is dropped: the thread stops.
    stopped: AtomicBool,
    wake: Condvar,
    lost: watch::Sender<Option<String>>,
}

impl PgLock {
    /// Resolves to why the lock was lost to another server (it never resolves otherwise).
    pub fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }
}

impl Drop for PgLock {
    /// Releases the lock at once (closing its connection) and stops the thread.
    fn drop(&mut self) {
        self.keeper.stopped.store(true, Ordering::Release);
        drop(lock(&self.keeper.conn).take());
        self.keeper.wake.notify_all();
    }
}

impl DatabaseLock {
    /// Resolves when the lock was lost to another server, with why; a file lock is never lost.
    pub fn lost(&self) -> Option<watch::Receiver<Option<String>>> {
        match self {
            DatabaseLock::File(_) => None,
            DatabaseLock::Postgres(lock) => Some(lock.lost()),
        }
    }
}

/// Takes the server's advisory lock on a PostgreSQL database, on a connection of its own, and
/// starts the thread that keeps it (see [`PgLock`]).
fn lock_postgres(url: &str) -> Result<DatabaseLock, String> {
    let shown = without_password(url);
    let mut conn = postgres::connect_checked(url)?;
    let session = match try_advisory_lock(&mut conn) {
        Ok(Some(session)) => session,
        Ok(None) => return Err(format!("{shown} is locked: another script-runner is using this database")),
        Err(e) => return Err(format!("cannot take the advisory lock on {shown}: {e}")),
    };
    // Servers on PostgreSQL are nodes of a cluster, which hold leases, not this lock.
    if let Some(node) = live_node(&mut conn) {
        return Err(format!("{shown} is locked: another script-runner is using this database (node {node} is up)"));
    }
    let (lost_tx, lost) = watch::channel(None);
    let keeper = Arc::new(LockKeeper {
        url: url.to_string(),
        conn: Mutex::new(Some((conn, session))),
        stopped: AtomicBool::new(false),
        wake: Condvar::new(),
        lost: lost_tx,
    });
    let thread_keeper = Arc::clone(&keeper);
    std::thread::Builder::new()
        .name("db-lock".into())
        .spawn(move || keep_lock(&thread_keeper))
        .map_err(|e| format!("cannot start the thread that keeps the database lock: {e}"))?;
    Ok(DatabaseLock::Postgres(PgLock { keeper, lost }))
}

/// A node of a cluster whose lease runs (its id), if the database has nodes at all.
fn live_node(conn: &mut PgConnection) -> Option<String> {
    #[derive(diesel::QueryableByName)]
    struct Node {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        id: Option<String>,
    }
    // Two steps: a query naming a missing table cannot be planned.
    let exists: Node = diesel::sql_query("SELECT to_regclass('nodes')::text AS id").get_result(conn).ok()?;
    exists.id?;
    let node: Node =
        diesel::sql_query("SELECT id FROM nodes WHERE state IN ('up', 'draining') AND lease_until > now() LIMIT 1")
            .get_result(conn)
            .ok()?;
    node.id
}

/// A server process of PostgreSQL (one per connection): its pid and start time, which tell
/// it from a later process with the same pid.
#[derive(diesel::QueryableByName, Debug, Clone, PartialEq, Eq)]
struct Session {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
    #[diesel(sql_type = diesel::sql_types::Text)]
    started: String,
}

/// `pg_try_advisory_lock` on the service's key: the session of this connection if it now holds
/// the lock, `None` if another does. The error is on one line, without a password.
fn try_advisory_lock(conn: &mut PgConnection) -> Result<Option<Session>, String> {
    let locked: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<diesel::sql_types::BigInt, _>(ADVISORY_LOCK_KEY)
        .get_result(conn)
        .map_err(|e| postgres::one_line(&e.to_string()))?;
    if !locked.locked {
        return Ok(None);
    }
    let session: Session = diesel::sql_query(
        "SELECT pid, coalesce(backend_start::text, '') AS started FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .get_result(conn)
    .map_err(|e| postgres::one_line(&e.to_string()))?;
    Ok(Some(session))
}

/// The session that holds the service's advisory lock, if any (its start time is empty when
/// it is another role's, which this role may not see).
fn lock_holder(conn: &mut PgConnection) -> Result<Option<Session>, String> {
    let high = ADVISORY_LOCK_KEY >> 32;
    let low = ADVISORY_LOCK_KEY & 0xffff_ffff;
    diesel::sql_query(
        "SELECT l.pid, coalesce(a.backend_start::text, '') AS started FROM pg_locks l \
         LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.classid::bigint = $1 AND l.objid::bigint = $2 \
         AND l.objsubid = 1 AND l.granted",
    )
    .bind::<diesel::sql_types::BigInt, _>(high)
    .bind::<diesel::sql_types::BigInt, _>(low)
    .get_result(conn)
    .optional()
    .map_err(|e| postgres::one_line(&e.to_string()))
}

/// What an attempt to take the lock again found.
enum Retake {
    /// The lock is ours again, on this connection.
    Taken(PgConnection, Session),
    /// Our own lost session still holds it (the server has not noticed the connection is
    /// gone): it was told to end; try again shortly.
    Stale,
    /// Another session holds it.
    TakenByOther,
}

/// One attempt to take the lock again after its connection was lost, `old` being the session
/// that held it.
fn retake(url: &str, old: &Session) -> Result<Retake, String> {
    let mut conn = PgConnection::establish(&postgres::connect_url(url))
        .map_err(|e| postgres::one_line(&postgres::redact(&e.to_string(), url)))?;
    if let Some(session) = try_advisory_lock(&mut conn)? {
        return Ok(Retake::Taken(conn, session));
    }
    match lock_holder(&mut conn)? {
        Some(holder) if holder == *old => {
            diesel::sql_query("SELECT pg_terminate_backend($1)")
                .bind::<diesel::sql_types::Integer, _>(old.pid)
                .execute(&mut conn)
                .map_err(|e| postgres::one_line(&e.to_string()))?;
            Ok(Retake::Stale)
        }
        // Released between the two queries: the next attempt takes it.
        None => Ok(Retake::Stale),
        Some(_) => Ok(Retake::TakenByOther),
    }
}

/// The thread of [`PgLock`].
fn keep_lock(keeper: &LockKeeper) {
    let shown = without_password(&keeper.url);
    loop {
        // Check the connection every LOCK_CHECK_EVERY (the guard's drop wakes it early).
        let lost_session = {
            let held = lock(&keeper.conn);
            let mut held = keeper.wake.wait_timeout(held, LOCK_CHECK_EVERY).unwrap_or_else(|e| e.into_inner()).0;
            if keeper.stopped.load(Ordering::Acquire) {
                return;
            }
            let Some((conn, _)) = held.as_mut() else { return };
            if diesel::sql_query("SELECT 1").execute(conn).is_ok() {
                continue;
            }
            held.take().map(|(_, session)| session)
        };
        let Some(old) = lost_session else { return };
        warn!("the connection holding the advisory lock on {shown} is lost; taking the lock again once it is back");
        let mut wait = Duration::from_millis(250);
        loop {
            if keeper.stopped.load(Ordering::Acquire) {
                return;
            }
            match retake(&keeper.url, &old) {
                Ok(Retake::Taken(conn, session)) => {
                    let mut held = lock(&keeper.conn);
                    if keeper.stopped.load(Ordering::Acquire) {
                        return;
                    }
                    *held = Some((conn, session));
                    info!("took the advisory lock on {shown} again");
                    break;
                }
                Ok(Retake::TakenByOther) => {
                    let why = format!(
                        "another session took the advisory lock on {shown} while this server's connection was \
                         lost (another script-runner?): two servers must not share a database; this one stops"
                    );
                    error!("{why}");
                    keeper.lost.send_replace(Some(why));
                    return;
                }
                Ok(Retake::Stale) => {
                    warn!("the advisory lock on {shown} is still held by this server's lost session; ended it");
                    wait = Duration::from_millis(250);
                }
                Err(e) => log::debug!("taking the advisory lock on {shown} again: {e}"),
            }
            let guard = lock(&keeper.conn);
            drop(keeper.wake.wait_timeout(guard, wait).unwrap_or_else(|e| e.into_inner()));
            wait = (wait * 2).min(LOCK_CHECK_EVERY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_resolve_against_the_config_folder_and_others_are_refused() {
        let base = Path::new("/etc/sr");
        assert_eq!(Location::parse("sqlite://jobs.db", base), Ok(Location::Sqlite("/etc/sr/jobs.db".into())));
        assert_eq!(Location::parse("sqlite:/var/x.db", base), Ok(Location::Sqlite("/var/x.db".into())));
        assert_eq!(Location::parse("postgres://u@h/db", base), Ok(Location::Postgres("postgres://u@h/db".into())));
        assert_eq!(Location::Postgres("postgres://u:secret@h:5/db".into()).deployment(), "postgres://u@h:5/db");
        assert!(Location::parse("mysql://h/db", base).is_err_and(|e| e.contains("unsupported")));
        assert!(Location::parse("sqlite://", base).is_err_and(|e| e.contains("names no file")));
    }

    #[test]
    fn no_password_is_shown_or_left_in_a_redacted_message() {
        let shown = |url: &str| Location::Postgres(url.into()).to_string();
        assert_eq!(shown("postgres://u:secret@h:5/db"), "postgres://u@h:5/db");
        assert_eq!(shown("postgres://u:p@ss@h/db"), "postgres://u@h/db");
        assert_eq!(shown("postgres://h/db?user=u&password=secret&sslmode=off"), "postgres://h/db?user=u&sslmode=off");
        assert_eq!(shown("postgres://h/db?password=secret"), "postgres://h/db");
        assert_eq!(Location::Sqlite("/var/sr/a.db".into()).to_string(), "sqlite:///var/sr/a.db");
        let refused = Location::parse("mysql://u:secret@h/db", Path::new("/")).expect_err("unsupported");
        assert!(!refused.contains("secret"), "{refused}");
        let location = Location::Postgres("postgres://u:s3cret@h/db".into());
        assert!(!location.redact("bad token \"s3cret\"").contains("s3cret"));
    }

    #[test]
    fn a_second_lock_on_one_database_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let location = Location::Sqlite(dir.path().join("a.db"));
        let first = location.lock().expect("first lock");
        assert!(location.lock().is_err_and(|e| e.contains("another script-runner")));
        drop(first);
        assert!(location.lock().is_ok());
    }
}
