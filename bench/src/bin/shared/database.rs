//! `--database`: which database a bench's server runs on, and the CPU a PostgreSQL server
//! spends for it.
//!
//! - No `--database`, or `--database sqlite`: the server's default, an embedded SQLite file in
//!   the bench's temporary folder (a new one each run).
//! - `--database sqlite://<path>`: that SQLite file (a relative path is taken from the bench's
//!   temporary folder, as the server takes it from its config's folder).
//! - `--database postgres://user:pass@host:port/db`: an *admin* URL. The bench connects to it,
//!   creates an empty database `bench_<pid>_<n>` next to `db` (`CREATE DATABASE`, so the user
//!   needs `CREATEDB`), runs the server on that one and drops it at the end (`--keep` leaves
//!   it). The URL's password is never printed.
//!
//! The server gets the URL through `DATABASE_URL`, which wins over its config; without
//! `--database` the bench removes `DATABASE_URL` from the server's environment, so a variable
//! set in the shell never moves the default measurement off SQLite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use diesel::{Connection, PgConnection, RunQueryDsl};

/// Which database the `--database` option names, before anything is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The server's default SQLite file in the bench's temporary folder.
    DefaultSqlite,
    /// A SQLite URL, passed to the server as it is.
    Sqlite(String),
    /// A PostgreSQL admin URL: a fresh database is made beside the one it names.
    Postgres(String),
}

impl Choice {
    /// Parses the value of `--database`; the error names the accepted forms.
    pub fn parse(value: &str) -> Result<Choice> {
        if value == "sqlite" {
            Ok(Choice::DefaultSqlite)
        } else if value.starts_with("sqlite:") {
            Ok(Choice::Sqlite(value.to_string()))
        } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Ok(Choice::Postgres(value.to_string()))
        } else {
            bail!(
                "--database {}: expected sqlite, sqlite://<path> or postgres://user:pass@host:port/db",
                without_password(value)
            )
        }
    }

    /// The backend's name, for tables: `SQLite` or `PostgreSQL`.
    pub fn engine(&self) -> &'static str {
        match self {
            Choice::DefaultSqlite | Choice::Sqlite(_) => "SQLite",
            Choice::Postgres(_) => "PostgreSQL",
        }
    }

    /// The value as it can be shown (a URL without its password), to pass on to another
    /// bench binary the user can read in `ps` as well as the original.
    pub fn shown(&self) -> String {
        match self {
            Choice::DefaultSqlite => "a new file in the temporary folder".into(),
            Choice::Sqlite(url) => url.clone(),
            Choice::Postgres(url) => without_password(url),
        }
    }

    /// The value to give another bench binary's `--database` (with the password).
    #[allow(dead_code, reason = "bench-workflow, which shares this file, starts no other bench binary")]
    pub fn arg(&self) -> &str {
        match self {
            Choice::DefaultSqlite => "sqlite",
            Choice::Sqlite(url) | Choice::Postgres(url) => url,
        }
    }
}

/// The database of one bench run: for PostgreSQL, a database made for it and dropped when
/// this is dropped (drop it after the server that uses it).
pub struct Database {
    choice: Choice,
    /// What the server is given as `DATABASE_URL` (`None`: its default).
    url: Option<String>,
    /// On PostgreSQL: the admin connection and the database made for this run.
    postgres: Option<Made>,
}

/// A database made for one run on a PostgreSQL cluster.
struct Made {
    admin: PgConnection,
    name: String,
    keep: bool,
}

/// Databases made by this process so far (the `<n>` of `bench_<pid>_<n>`).
static MADE: AtomicU32 = AtomicU32::new(0);

impl Database {
    /// Gets the database ready: nothing to do for SQLite; on PostgreSQL connects with the
    /// admin URL and creates an empty database of a name no other run uses.
    pub fn prepare(choice: &Choice) -> Result<Database> {
        let admin_url = match choice {
            Choice::DefaultSqlite => return Ok(Database { choice: choice.clone(), url: None, postgres: None }),
            Choice::Sqlite(url) => {
                return Ok(Database { choice: choice.clone(), url: Some(url.clone()), postgres: None })
            }
            Choice::Postgres(url) => url,
        };
        let shown = without_password(admin_url);
        let mut admin =
            PgConnection::establish(admin_url).with_context(|| format!("cannot connect to {shown} (--database)"))?;
        let mut attempts = 0;
        let name = loop {
            let name = format!("bench_{}_{}", std::process::id(), MADE.fetch_add(1, Ordering::Relaxed));
            // Names are made of digits and `bench_`: nothing to quote beyond the identifier.
            match diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut admin) {
                Ok(_) => break name,
                // Left over from an earlier process with the same pid: take the next number.
                Err(e) if e.to_string().contains("already exists") && attempts < 100 => attempts += 1,
                Err(e) => bail!("CREATE DATABASE {name} on {shown}: {e} (the --database user needs CREATEDB)"),
            }
        };
        let url = with_database(admin_url, &name)?;
        Ok(Database { choice: choice.clone(), url: Some(url), postgres: Some(Made { admin, name, keep: false }) })
    }

    /// What the server is to be given as `DATABASE_URL`; `None` for the default SQLite file.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// The backend's name, for tables: `SQLite` or `PostgreSQL`.
    pub fn engine(&self) -> &'static str {
        self.choice.engine()
    }

    /// Where the server's data is, as it can be printed (no password).
    pub fn shown(&self) -> String {
        match &self.url {
            None => self.choice.shown(),
            Some(url) => without_password(url),
        }
    }

    /// Leaves a PostgreSQL database in place when this is dropped (`--keep`), and says so.
    pub fn keep(&mut self) {
        if let Some(made) = &mut self.postgres {
            made.keep = true;
            println!("kept database {}", self.url.as_deref().map(without_password).unwrap_or_default());
        }
    }

    /// On PostgreSQL: CPU so far of the cluster's processes that work for this run's database
    /// (its backends, and the cluster's background processes: WAL writer, checkpointer, ...),
    /// by pid, and of the postmaster with its reaped children (an autovacuum worker, or a
    /// backend, that ended since the last snapshot counts there). `None` on SQLite (its work
    /// is in the server's own CPU), or when the cluster's processes are not on this machine
    /// (no `/proc/<pid>` for them).
    pub fn cluster_cpu(&mut self) -> Option<ClusterCpu> {
        let made = self.postgres.as_mut()?;
        #[derive(diesel::QueryableByName)]
        struct Pid {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            pid: i32,
        }
        let pids: Vec<Pid> = diesel::sql_query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 OR backend_type <> 'client backend'",
        )
        .bind::<diesel::sql_types::Text, _>(&made.name)
        .load(&mut made.admin)
        .ok()?;
        let mut ticks: HashMap<u32, u64> = pids
            .iter()
            .filter_map(|p| u32::try_from(p.pid).ok())
            .filter_map(|pid| Some((pid, own_ticks(pid)?)))
            .collect();
        // None of them on this machine: the cluster is elsewhere (or in a container).
        let postmaster = ticks.keys().find_map(|&pid| parent(pid))?;
        if let Some(with_reaped) = ticks_with_reaped(postmaster) {
            ticks.insert(postmaster, with_reaped);
        }
        Some(ClusterCpu { ticks })
    }

    /// On PostgreSQL with `pg_stat_statements` usable from the admin URL's database: how many
    /// statements the cluster has run on this run's database so far (every round trip the
    /// server makes, `BEGIN` and `COMMIT` included with the default `track_utility`).
    pub fn statements(&mut self) -> Option<i64> {
        let made = self.postgres.as_mut()?;
        #[derive(diesel::QueryableByName)]
        struct Calls {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            calls: i64,
        }
        let calls: Calls = diesel::sql_query(
            "SELECT coalesce(sum(s.calls), 0)::int8 AS calls FROM pg_stat_statements s \
             JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
        )
        .bind::<diesel::sql_types::Text, _>(&made.name)
        .get_result(&mut made.admin)
        .ok()?;
        Some(calls.calls)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let Some(made) = &mut self.postgres else { return };
        if made.keep {
            return;
        }
        // FORCE (PostgreSQL 13+) ends a connection left behind; plain DROP for older servers.
        let forced = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", made.name);
        let plain = format!("DROP DATABASE IF EXISTS \"{}\"", made.name);
        if diesel::sql_query(forced).execute(&mut made.admin).is_err() {
            if let Err(e) = diesel::sql_query(plain).execute(&mut made.admin) {
                eprintln!("warning: could not drop the bench database {}: {e}", made.name);
            }
        }
    }
}

/// A snapshot of [`Database::cluster_cpu`].
pub struct ClusterCpu {
    ticks: HashMap<u32, u64>,
}

impl ClusterCpu {
    /// Clock ticks spent since `before` by the processes of this snapshot (one that started
    /// in between counts from zero; one that ended in between is lost, which the bench's
    /// long-lived pooled connections make rare).
    pub fn since(&self, before: &ClusterCpu) -> u64 {
        self.ticks.iter().map(|(pid, t)| t.saturating_sub(before.ticks.get(pid).copied().unwrap_or(0))).sum()
    }
}

/// utime+stime of a process, its children excluded (fields 14 and 15 of `/proc/<pid>/stat`),
/// in clock ticks; `None` if there is no such process here.
pub fn own_ticks(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?).and_then(|p| p.stat()).ok()?;
    Some(stat.utime + stat.stime)
}

/// A process's parent.
fn parent(pid: u32) -> Option<u32> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?).and_then(|p| p.stat()).ok()?;
    u32::try_from(stat.ppid).ok()
}

/// utime+stime of a process and cutime+cstime, those of its children it has reaped.
fn ticks_with_reaped(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?).and_then(|p| p.stat()).ok()?;
    let reaped = [stat.cutime, stat.cstime].map(|t| u64::try_from(t).unwrap_or(0));
    Some(stat.utime + stat.stime + reaped[0] + reaped[1])
}

/// Clock ticks as microseconds.
pub fn ticks_to_us(ticks: u64) -> f64 {
    ticks as f64 * 1e6 / procfs::ticks_per_second() as f64
}

/// The URL with its password left out, for anything printed.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((userinfo, host)) = rest.rsplit_once('@') else { return url.to_string() };
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    format!("{scheme}://{user}@{host}")
}

/// The URL with its database (the path after the host) replaced by `name`; a query string
/// (`?sslmode=...`) is kept.
fn with_database(url: &str, name: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").context("a postgres URL has a scheme")?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    // The authority ends at the first `/` after the user info (a password may hold a `/`).
    let host_start = rest.rfind('@').map_or(0, |at| at + 1);
    let authority_end = rest[host_start..].find('/').map_or(rest.len(), |slash| host_start + slash);
    let mut out = format!("{scheme}://{}/{name}", &rest[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_and_change_database() {
        let url = "postgres://postgres:s3cr/t@127.0.0.1:39200/postgres?sslmode=disable";
        assert_eq!(without_password(url), "postgres://postgres@127.0.0.1:39200/postgres?sslmode=disable");
        assert_eq!(
            with_database(url, "bench_1_0").ok().as_deref(),
            Some("postgres://postgres:s3cr/t@127.0.0.1:39200/bench_1_0?sslmode=disable")
        );
        assert_eq!(with_database("postgres://h:5", "b").ok().as_deref(), Some("postgres://h:5/b"));
        assert_eq!(Choice::parse("sqlite").ok(), Some(Choice::DefaultSqlite));
        assert!(Choice::parse("mysql://u:pw@h/db").is_err_and(|e| !e.to_string().contains("pw")));
    }
}
