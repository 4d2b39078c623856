//! Where the database is: the backend a `database.url` names, and what being the one server
//! on it takes. The rest of the service names no database engine: it holds a [`Location`],
//! opens a `Store` on it, and takes its [`Location::deployment`] as the mark of its processes.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use diesel::{PgConnection, RunQueryDsl};
use nix::fcntl::{Flock, FlockArg};

use super::postgres::{self, without_password};

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

/// Held while a server runs on a SQLite file, or `migrate-db` on any database: nobody else
/// takes the same database meanwhile.
pub enum DatabaseLock {
    /// An exclusive lock on `<file>.lock`.
    File(Flock<File>),
    /// A session-level advisory lock, held on a connection of its own (see [`PgLock`]).
    Postgres(PgLock),
}

/// The advisory lock key a server takes on its PostgreSQL database ("scrrunnr" in ASCII).
const ADVISORY_LOCK_KEY: i64 = 0x7363_7272_756e_6e72;

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

/// The advisory lock of a PostgreSQL database, held by a connection of its own: `migrate-db`
/// holds it while it copies (servers on PostgreSQL are nodes of a cluster and hold leases
/// instead, which `migrate-db` also checks). Dropped, the connection closes and PostgreSQL
/// releases the lock.
pub struct PgLock {
    _conn: PgConnection,
}

/// Takes the advisory lock on a PostgreSQL database (see [`PgLock`]); refused while another
/// session holds it or a node of a cluster is up on the database.
fn lock_postgres(url: &str) -> Result<DatabaseLock, String> {
    let shown = without_password(url);
    let mut conn = postgres::connect_checked(url)?;
    let locked: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<diesel::sql_types::BigInt, _>(ADVISORY_LOCK_KEY)
        .get_result(&mut conn)
        .map_err(|e| format!("cannot take the advisory lock on {shown}: {}", postgres::one_line(&e.to_string())))?;
    if !locked.locked {
        return Err(format!("{shown} is locked: another script-runner is using this database"));
    }
    if let Some(node) = live_node(&mut conn) {
        return Err(format!("{shown} is locked: another script-runner is using this database (node {node} is up)"));
    }
    Ok(DatabaseLock::Postgres(PgLock { _conn: conn }))
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
