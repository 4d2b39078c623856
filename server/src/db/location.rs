//! Where the database is: the backend a `database.url` names, and what being the one server
//! on it takes. The rest of the service names no database engine: it holds a [`Location`],
//! opens a `Store` on it, whose `Store::deployment` marks its processes.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A database the service can run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An embedded SQLite file (`sqlite://<path>`, relative to the config's folder).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://user:pass@host:port/db`, the URL as given).
    Postgres(String),
}

/// Held while the server runs: no second server takes the same database.
pub enum DatabaseLock {
    /// An exclusive lock on `<file>.lock`.
    File(Flock<File>),
    /// A session-level advisory lock, held as long as this connection is open.
    Postgres(diesel::PgConnection),
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
    /// from `base`); the error says what is wrong with the URL (without its password), for the
    /// caller to say where the URL came from (`database.url`, `--from`).
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

    /// The location as logs and errors may show it: the SQLite file's path, or the PostgreSQL
    /// URL without its password. (The deployment's marker is [`crate::db::Store::deployment`].)
    pub fn deployment(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => without_password(url),
        }
    }

    /// `text` with every password of this location's URL replaced by `***`: for an error from
    /// the driver, which may quote the URL it could not parse. SQLite paths hold no password.
    pub fn redact(&self, text: &str) -> String {
        match self {
            Location::Sqlite(_) => text.to_string(),
            Location::Postgres(url) => redact(url, text),
        }
    }

    /// Takes the database for this server: an exclusive lock on `<file>.lock`, held while the
    /// returned guard lives. Two servers on one database would each mistake the other's jobs
    /// for orphans of a crash and kill them.
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

/// Takes the server's advisory lock on a PostgreSQL database, on a connection of its own.
fn lock_postgres(url: &str) -> Result<DatabaseLock, String> {
    use diesel::{Connection, RunQueryDsl};
    let shown = without_password(url);
    // The driver's errors may quote the URL it was given: never with its password.
    let mut conn =
        diesel::PgConnection::establish(url).map_err(|e| redact(url, &format!("cannot connect to {shown}: {e}")))?;
    let locked: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<diesel::sql_types::BigInt, _>(ADVISORY_LOCK_KEY)
        .get_result(&mut conn)
        .map_err(|e| redact(url, &format!("cannot take the advisory lock on {shown}: {e}")))?;
    if !locked.locked {
        return Err(format!("{shown} is locked: another script-runner is using this database"));
    }
    Ok(DatabaseLock::Postgres(conn))
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

/// The URL with its passwords (if any) left out, for logs and the deployment marker: the one in
/// its user info and a `password=` query parameter. The user info ends at the *last* `@`, so a
/// password holding an unencoded `@` is still left out whole.
fn without_password(url: &str) -> String {
    let (url, query) = url.split_once('?').map_or((url, None), |(url, query)| (url, Some(query)));
    let mut shown = match url.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?))) {
        Some((scheme, (userinfo, host))) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_string(),
    };
    if let Some(query) = query {
        let kept: Vec<&str> = query.split('&').filter(|param| !param.starts_with("password=")).collect();
        if !kept.is_empty() {
            shown = format!("{shown}?{}", kept.join("&"));
        }
    }
    shown
}

/// The passwords a URL holds, as written: in its user info and in `password=` parameters.
fn passwords(url: &str) -> Vec<String> {
    let (url, query) = url.split_once('?').map_or((url, None), |(url, query)| (url, Some(query)));
    let mut found = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        if let Some((userinfo, _)) = rest.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                found.push(password.to_string());
            }
        }
    }
    for param in query.unwrap_or_default().split('&') {
        if let Some(password) = param.strip_prefix("password=") {
            found.push(password.to_string());
        }
    }
    found
}

/// `text` with every password of `url` (as written and percent-decoded) replaced by `***`.
fn redact(url: &str, text: &str) -> String {
    let mut text = text.to_string();
    for password in passwords(url) {
        for form in [percent_decoded(&password), password] {
            if !form.is_empty() {
                text = text.replace(&form, "***");
            }
        }
    }
    text
}

/// `%XX` escapes decoded (as the driver decodes them), invalid ones left as they are.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
        let refused = Location::parse("mysql://u:secret@h/db", base).expect_err("unsupported");
        assert!(!refused.contains("secret"), "{refused}");
    }

    #[test]
    fn no_password_is_shown_or_left_in_a_redacted_message() {
        let shown = |url: &str| Location::Postgres(url.into()).to_string();
        assert_eq!(shown("postgres://u:secret@h:5/db"), "postgres://u@h:5/db");
        assert_eq!(shown("postgres://u:p@ss@h/db"), "postgres://u@h/db");
        assert_eq!(shown("postgres://h/db?user=u&password=secret&sslmode=off"), "postgres://h/db?user=u&sslmode=off");
        assert_eq!(shown("postgres://h/db?password=secret"), "postgres://h/db");
        assert_eq!(Location::Sqlite("/var/sr/a.db".into()).to_string(), "sqlite:///var/sr/a.db");
        let location = Location::Postgres("postgres://u:s%40cret@h/db?password=other".into());
        assert_eq!(location.redact("bad token \"s%40cret\", s@cret, other"), "bad token \"***\", ***, ***");
        assert_eq!(Location::Sqlite("/a".into()).redact("secret"), "secret");
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
