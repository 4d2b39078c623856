//! What talking to a PostgreSQL server takes besides diesel: the URL as shown (never with its
//! password) and as connected to (with time-outs), one-line start-up errors that say what is
//! wrong, the oldest server version supported, and telling a lost connection from a statement
//! that failed.
//!
//! A password must never reach a log line or an error: every message that leaves this module
//! names the database by [`without_password`], and libpq's own text (which can quote a URL
//! token, e.g. `invalid percent-encoded token: "<password>"`) goes through [`redact`].

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};

/// The oldest PostgreSQL server the service runs on: 13. The schema needs identity columns (10);
/// 13 is the oldest release the tests have been run against and still in its maintenance
/// window when this was written. An older server is refused at start with both versions named.
pub const MIN_SERVER_VERSION: u32 = 13_00_00;

/// How long a connection attempt may take (`connect_timeout`, seconds) when the URL names none:
/// libpq's default is to wait for the operating system, minutes for a host that drops packets.
const CONNECT_TIMEOUT_SECS: u32 = 10;

/// How long sent data may stay unacknowledged before the kernel gives the connection up
/// (`tcp_user_timeout`, milliseconds) when the URL names none: without it a statement sent to
/// a server that vanished without closing the connection waits for TCP's retransmissions
/// (about 15 minutes) on the thread that sent it. A long query is not cut: its data is
/// acknowledged at once, whatever the server then takes to answer.
const TCP_USER_TIMEOUT_MS: u32 = 30_000;

/// The URL with its password left out, for logs, errors and the deployment marker: the
/// password of `user:password@`, a `password=` query parameter, and (for a key/value
/// connection string) a `password=` pair. Text that cannot be read as either is not shown.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Without `=`, it holds no `password=` pair (e.g. `sqlite:jobs.db`).
        return if url.contains('=') { conninfo_without_password(url) } else { url.to_string() };
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    // The last `@` before the query ends the user info: a password holding a raw `@` or `/`
    // (libpq would misread it anyway) is still left out whole.
    let authority_and_path = match before_query.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{user}@{host}")
        }
        None => before_query.to_string(),
    };
    let query = query.map(|q| q.split('&').filter(|p| !is_password_param(p)).collect::<Vec<_>>().join("&"));
    match query.filter(|q| !q.is_empty()) {
        Some(query) => format!("{scheme}://{authority_and_path}?{query}"),
        None => format!("{scheme}://{authority_and_path}"),
    }
}

fn is_password_param(param: &str) -> bool {
    param.split_once('=').map_or(param, |(key, _)| key).eq_ignore_ascii_case("password")
}

/// A key/value connection string (`host=h user=u password=secret`) without its password pair.
fn conninfo_without_password(conninfo: &str) -> String {
    match conninfo_pairs(conninfo) {
        Some(pairs) => pairs
            .iter()
            .filter(|(key, _)| !key.eq_ignore_ascii_case("password"))
            .map(|(_, pair)| *pair)
            .collect::<Vec<_>>()
            .join(" "),
        None => "(a connection string that could not be read)".to_string(),
    }
}

/// The `key=value` pairs of a key/value connection string, each as its key and its whole text
/// (values may be single-quoted, with backslash escapes, as libpq reads them); `None` when it
/// is not one.
fn conninfo_pairs(conninfo: &str) -> Option<Vec<(&str, &str)>> {
    let bytes = conninfo.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() {
            return Some(pairs);
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &conninfo[start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if key.is_empty() || bytes.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return None,
                    Some(b'\\') => i += 2,
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
        }
        let end = i.min(bytes.len());
        pairs.push((key, &conninfo[start..end]));
    }
}

/// Every spelling of the URL's password(s) that a message could quote: as written and
/// percent-decoded, from the user info, a `password=` query parameter or a `password=` pair.
fn passwords(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        let (before_query, query) = rest.split_once('?').map_or((rest, None), |(b, q)| (b, Some(q)));
        if let Some((userinfo, _)) = before_query.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                found.push(password.to_string());
            }
        }
        for param in query.unwrap_or_default().split('&').filter(|p| is_password_param(p)) {
            if let Some((_, value)) = param.split_once('=') {
                found.push(value.to_string());
            }
        }
    } else if let Some(pairs) = conninfo_pairs(url) {
        for (key, pair) in pairs.into_iter().filter(|(key, _)| key.eq_ignore_ascii_case("password")) {
            let value = pair[key.len()..].trim_start().trim_start_matches('=').trim_start();
            found.push(value.to_string());
            found.push(value.trim_matches('\'').to_string());
        }
    }
    let decoded: Vec<String> = found.iter().map(|p| percent_decode(p)).collect();
    found.extend(decoded);
    found.retain(|p| !p.is_empty());
    // Longest first: a password that contains another is replaced whole.
    found.sort_by_key(|p| std::cmp::Reverse(p.len()));
    found.dedup();
    found
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
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

/// `message` with every spelling of the URL's password replaced by `***`: for text that did not
/// come from this service (libpq's, a server's), which might quote a piece of the URL.
pub fn redact(message: &str, url: &str) -> String {
    passwords(url).iter().fold(message.to_string(), |text, password| text.replace(password.as_str(), "***"))
}

/// The URL libpq is given: the configured one, with [`CONNECT_TIMEOUT_SECS`] and
/// [`TCP_USER_TIMEOUT_MS`] added where it sets neither (never shown: see [`without_password`]).
pub fn connect_url(url: &str) -> String {
    let mut url = url.to_string();
    let names = |url: &str, key: &str| {
        url.split_once('?').is_some_and(|(_, query)| {
            query.split('&').any(|p| p.split_once('=').map_or(p, |(k, _)| k).eq_ignore_ascii_case(key))
        })
    };
    for (key, value) in [("connect_timeout", CONNECT_TIMEOUT_SECS), ("tcp_user_timeout", TCP_USER_TIMEOUT_MS)] {
        if !url.contains("://") {
            // A key/value string: a later pair wins over an earlier one, so only add one.
            if !conninfo_pairs(&url).is_some_and(|pairs| pairs.iter().any(|(k, _)| k.eq_ignore_ascii_case(key))) {
                url = format!("{url} {key}={value}");
            }
        } else if !names(&url, key) {
            let separator = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{separator}{key}={value}");
        }
    }
    url
}

/// One line that says why a connection to `url` failed and what to look at, from libpq's
/// message: `cannot connect to postgres://user@host:5432/db: connection refused (is PostgreSQL
/// running and listening there?)`. The URL is shown without its password, and the message is
/// [`redact`]ed.
pub fn connect_error(url: &str, libpq_message: &str) -> String {
    let reason = connect_reason(url, &redact(libpq_message, url));
    format!("cannot connect to {}: {}", without_password(url), one_line(&reason))
}

/// The reason part of [`connect_error`].
fn connect_reason(url: &str, message: &str) -> String {
    // libpq: `connection to server at "h" (addr), port 5 failed: FATAL:  <the server's words>`,
    // a line per address it tried, hints on tab-indented lines.
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let core = |line: &str| -> String {
        let line = line.split_once(" failed: ").map_or(line, |(_, rest)| rest);
        let line = line.trim_start_matches("FATAL:").trim_start_matches("ERROR:").trim();
        line.to_string()
    };
    let first = lines.first().map(|l| core(l)).unwrap_or_else(|| "no reason given".to_string());
    let lower = message.to_lowercase();
    let quoted_after = |marker: &str| -> Option<String> {
        let at = message.find(marker)? + marker.len();
        let rest = &message[at..];
        let end = rest.find('"')?;
        Some(rest[..end].to_string())
    };
    if lower.contains("password authentication failed") {
        let user = quoted_after("for user \"").unwrap_or_default();
        return format!("password authentication failed for user \"{user}\"");
    }
    if lower.contains("no password supplied") {
        return "the server asks for a password and the URL gives none".to_string();
    }
    if let Some(database) = quoted_after("database \"").filter(|_| lower.contains("does not exist")) {
        return format!("database \"{database}\" does not exist (create it: {})", createdb_command(url, &database));
    }
    if let Some(role) = quoted_after("role \"").filter(|_| lower.contains("does not exist")) {
        return format!("role \"{role}\" does not exist (the URL's user is not known to the server)");
    }
    if lower.contains("connection refused") {
        return "connection refused (is PostgreSQL running and listening there?)".to_string();
    }
    if lower.contains("could not translate host name") {
        return format!("{first} (is the host name right?)");
    }
    if lower.contains("timeout expired") || lower.contains("timed out") {
        return "no answer in time (is the host reachable, and the port PostgreSQL's?)".to_string();
    }
    if lower.contains("no route to host") || lower.contains("network is unreachable") {
        return format!("{first} (is the host reachable from here?)");
    }
    if lower.contains("no pg_hba.conf entry") {
        return format!("{first} (the server's pg_hba.conf does not let this user in from here)");
    }
    if lower.contains("server closed the connection unexpectedly") {
        return "the server closed the connection during start-up (is a PostgreSQL server on that port, and \
                accepting connections?)"
            .to_string();
    }
    first
}

/// The `createdb` command that makes `database` on the URL's server as the URL's user.
fn createdb_command(url: &str, database: &str) -> String {
    let mut command = "createdb".to_string();
    if let Some((_, rest)) = url.split_once("://") {
        // The host as in [`without_password`]: after the last `@` before the query, so no
        // piece of a password can be taken for it.
        let before_query = rest.split('?').next().unwrap_or_default();
        let (user, host_and_path) = match before_query.rsplit_once('@') {
            Some((userinfo, rest)) => (userinfo.split(':').next(), rest),
            None => (None, before_query),
        };
        let host = host_and_path.split('/').next().unwrap_or_default();
        let (host, port) = match host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())) {
            Some((host, port)) => (host, Some(port)),
            None => (host, None),
        };
        if !host.is_empty() {
            command.push_str(&format!(" -h {host}"));
        }
        if let Some(port) = port.filter(|p| !p.is_empty()) {
            command.push_str(&format!(" -p {port}"));
        }
        if let Some(user) = user.filter(|u| !u.is_empty()) {
            command.push_str(&format!(" -U {}", percent_decode(user)));
        }
    }
    format!("{command} {database}")
}

/// `server_version_num` (e.g. 150004) as people write it: `15.4`, or `9.6.24` before 10.
fn version_name(num: u32) -> String {
    if num >= 10_00_00 {
        format!("{}.{}", num / 1_00_00, num % 1_00_00)
    } else {
        format!("{}.{}.{}", num / 1_00_00, num / 100 % 100, num % 100)
    }
}

/// Refuses a server older than [`MIN_SERVER_VERSION`], naming both versions.
pub fn check_server_version(num: u32) -> Result<(), String> {
    if num >= MIN_SERVER_VERSION {
        return Ok(());
    }
    Err(format!(
        "the server runs PostgreSQL {}; script-runner needs PostgreSQL {} or newer",
        version_name(num),
        MIN_SERVER_VERSION / 1_00_00
    ))
}

#[derive(diesel::QueryableByName)]
struct ServerVersion {
    #[diesel(sql_type = diesel::sql_types::Text)]
    server_version_num: String,
}

/// The first connection of a start: connects (with the time-outs of [`connect_url`]) and
/// checks the server's version. The error is one line naming the URL without its password.
pub fn connect_checked(url: &str) -> Result<PgConnection, String> {
    let mut conn = PgConnection::establish(&connect_url(url)).map_err(|e| connect_error(url, &e.to_string()))?;
    let shown = without_password(url);
    let version: ServerVersion = diesel::sql_query("SHOW server_version_num").get_result(&mut conn).map_err(|e| {
        format!("cannot read the server version of {shown}: {}", one_line(&redact(&e.to_string(), url)))
    })?;
    let num = version
        .server_version_num
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{shown}: unreadable server_version_num {:?}", version.server_version_num))?;
    check_server_version(num).map_err(|e| format!("{shown}: {e}"))?;
    Ok(conn)
}

/// Text on one line: libpq's messages span several (hints on indented lines).
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether a failed statement failed because the connection is gone (the server restarted,
/// the network dropped it), rather than because of the statement: diesel's kinds for a closed
/// connection, and the words of libpq and the server for the cases it reports as `Unknown`
/// (e.g. `terminating connection due to administrator command`).
pub fn is_connection_error(e: &Error) -> bool {
    match e {
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, _) => true,
        // A transaction whose ROLLBACK could not be sent leaves the connection unusable.
        Error::BrokenTransactionManager => true,
        Error::DatabaseError(_, info) => {
            let message = info.message().to_lowercase();
            [
                "server closed the connection",
                "no connection to the server",
                "terminating connection",
                "could not receive data from server",
                "could not send data to server",
                "connection to server was lost",
                "ssl connection has been closed",
                "the database system is shutting down",
                "the database system is starting up",
                "the database system is in recovery mode",
            ]
            .iter()
            .any(|words| message.contains(words))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_url_has_no_password_in_any_spelling() {
        let cases = [
            ("postgres://u:secret@h:5/db", "postgres://u@h:5/db"),
            ("postgresql://u@h/db", "postgresql://u@h/db"),
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://u:p@ss/w@rd@h:5/db", "postgres://u@h:5/db"),
            ("postgres://u:secret@h/db?sslmode=require&password=secret2", "postgres://u@h/db?sslmode=require"),
            ("postgres://u@h/db?password=secret2", "postgres://u@h/db"),
            ("postgres://u@h/db?PASSWORD=secret2&application_name=x", "postgres://u@h/db?application_name=x"),
            ("host=h user=u password=secret dbname=d", "host=h user=u dbname=d"),
            ("host=h password = 'se cr\\'et' dbname=d", "host=h dbname=d"),
            ("host=h password='unterminated", "(a connection string that could not be read)"),
            ("sqlite:jobs.db", "sqlite:jobs.db"),
            ("sqlite:///var/lib/sr/jobs.db", "sqlite:///var/lib/sr/jobs.db"),
        ];
        for (url, shown) in cases {
            assert_eq!(without_password(url), shown, "{url}");
            for password in passwords(url) {
                assert!(!without_password(url).contains(&password), "{url}: {password}");
            }
        }
    }

    #[test]
    fn a_message_quoting_the_password_is_redacted_in_every_spelling() {
        let url = "postgres://u:p%zz%41b@h/db?password=other";
        assert_eq!(
            redact("invalid percent-encoded token: \"p%zz%41b\"", url),
            "invalid percent-encoded token: \"***\""
        );
        assert_eq!(redact("decoded: p%zzAb, other", url), "decoded: ***, ***");
        let conninfo = "host=h password='a b' user=u";
        assert_eq!(redact("saw 'a b' and a b", conninfo), "saw *** and ***");
        // No password: nothing to replace.
        assert_eq!(redact("text", "postgres://u@h/db"), "text");
    }

    #[test]
    fn the_connected_url_gets_time_outs_unless_it_sets_them() {
        assert_eq!(connect_url("postgres://u:p@h/db"), "postgres://u:p@h/db?connect_timeout=10&tcp_user_timeout=30000");
        assert_eq!(
            connect_url("postgres://h/db?sslmode=disable&connect_timeout=3"),
            "postgres://h/db?sslmode=disable&connect_timeout=3&tcp_user_timeout=30000"
        );
        assert_eq!(connect_url("host=h connect_timeout=2"), "host=h connect_timeout=2 tcp_user_timeout=30000");
    }

    #[test]
    fn connection_errors_become_one_line_that_names_the_problem() {
        let url = "postgres://app:s3cret@127.0.0.1:5433/jobs";
        let cases = [
            (
                "connection to server at \"127.0.0.1\", port 5433 failed: Connection refused\n\tIs the server \
                 running on that host and accepting TCP/IP connections?\n",
                "cannot connect to postgres://app@127.0.0.1:5433/jobs: connection refused (is PostgreSQL running \
                 and listening there?)",
            ),
            (
                "connection to server at \"127.0.0.1\", port 5433 failed: FATAL:  password authentication failed \
                 for user \"app\"\n",
                "cannot connect to postgres://app@127.0.0.1:5433/jobs: password authentication failed for user \
                 \"app\"",
            ),
            (
                "connection to server at \"127.0.0.1\", port 5433 failed: FATAL:  database \"jobs\" does not exist\n",
                "cannot connect to postgres://app@127.0.0.1:5433/jobs: database \"jobs\" does not exist (create \
                 it: createdb -h 127.0.0.1 -p 5433 -U app jobs)",
            ),
            (
                "could not translate host name \"db.invalid\" to address: Name or service not known\n",
                "cannot connect to postgres://app@127.0.0.1:5433/jobs: could not translate host name \
                 \"db.invalid\" to address: Name or service not known (is the host name right?)",
            ),
            (
                "invalid percent-encoded token: \"s3cret\"\n",
                "cannot connect to postgres://app@127.0.0.1:5433/jobs: invalid percent-encoded token: \"***\"",
            ),
            ("timeout expired\n", "cannot connect to postgres://app@127.0.0.1:5433/jobs: no answer in time (is the host reachable, and the port PostgreSQL's?)"),
        ];
        for (message, line) in cases {
            let got = connect_error(url, message);
            assert_eq!(got, line);
            assert!(!got.contains('\n') && !got.contains("s3cret"), "{got}");
        }
    }

    #[test]
    fn servers_older_than_the_oldest_supported_version_are_refused_naming_both() {
        assert_eq!(MIN_SERVER_VERSION, 13_00_00);
        assert!(check_server_version(13_00_00).is_ok());
        assert!(check_server_version(17_00_02).is_ok());
        assert_eq!(
            check_server_version(12_00_22).expect_err("12 is too old"),
            "the server runs PostgreSQL 12.22; script-runner needs PostgreSQL 13 or newer"
        );
        assert_eq!(
            check_server_version(90624).expect_err("9.6 is too old"),
            "the server runs PostgreSQL 9.6.24; script-runner needs PostgreSQL 13 or newer"
        );
    }

    #[test]
    fn lost_connections_are_told_from_failed_statements() {
        let lost = Error::DatabaseError(DatabaseErrorKind::ClosedConnection, Box::new("gone".to_string()));
        let admin = Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("terminating connection due to administrator command".to_string()),
        );
        let unique = Error::DatabaseError(DatabaseErrorKind::UniqueViolation, Box::new("duplicate key".to_string()));
        assert!(is_connection_error(&lost));
        assert!(is_connection_error(&admin));
        assert!(!is_connection_error(&unique));
        assert!(!is_connection_error(&Error::NotFound));
    }
}
