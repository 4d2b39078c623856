//! Shared harness for the integration tests: starts the real `script-runner` binary on
//! `127.0.0.1:0` with its own temporary folder (config.json, scripts.json, scripts, database,
//! logs), and talks to it over HTTP like any client.
#![allow(dead_code, missing_docs, clippy::unwrap_used, reason = "test harness; each test module uses a part of it")]

pub mod sse;

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

/// The fields of upstream's job object, in its order (ours adds `args` and `error`).
pub const UPSTREAM_JOB_FIELDS: [&str; 17] = [
    "jobId",
    "scriptId",
    "status",
    "code",
    "startedAt",
    "endedAt",
    "durationMs",
    "createdAt",
    "mode",
    "stdoutRef",
    "stderrRef",
    "stdoutSize",
    "stderrSize",
    "stdoutTruncated",
    "stderrTruncated",
    "stdoutPreview",
    "stderrPreview",
];

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_script-runner");

/// Builds a temporary deployment: config, scripts, and the scripts' files.
pub struct Builder {
    dir: tempfile::TempDir,
    /// The deployment's own database in the PostgreSQL pass (dropped with the deployment).
    database: Option<PgDatabase>,
    server: Map<String, Value>,
    runner: Map<String, Value>,
    top: Map<String, Value>,
    scripts: Vec<Value>,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

/// Which backend the test servers run on: `SCRIPT_RUNNER_TEST_DATABASE=postgres` (with
/// `SCRIPT_RUNNER_TEST_PG_ADMIN_URL`, as `tests/run` sets them) or SQLite (the default).
pub fn on_postgres() -> bool {
    std::env::var("SCRIPT_RUNNER_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

/// An executable file `program` in a folder of PATH (interpreters are configured, and helper
/// programs found, by absolute path).
pub fn on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The admin URL of the test pass's PostgreSQL cluster (a superuser's, on its `postgres`
/// database); `None` outside the PostgreSQL pass.
pub fn pg_admin_url() -> Option<String> {
    if !on_postgres() {
        return None;
    }
    Some(
        std::env::var("SCRIPT_RUNNER_TEST_PG_ADMIN_URL")
            .expect("SCRIPT_RUNNER_TEST_DATABASE=postgres needs SCRIPT_RUNNER_TEST_PG_ADMIN_URL (tests/run sets both)"),
    )
}

/// Creates an empty database in the test cluster and returns its URL (with the password).
pub fn new_pg_database(admin: &str, name: &str) -> String {
    use diesel::{Connection, RunQueryDsl};
    let mut conn = diesel::PgConnection::establish(admin).expect("connect to SCRIPT_RUNNER_TEST_PG_ADMIN_URL");
    diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).expect("create the test database");
    let (base, _) = admin.rsplit_once('/').expect("a database URL ends with /<database>");
    format!("{base}/{name}")
}

/// `sqlite://db.sqlite` in the deployment's folder, or, in the PostgreSQL pass, a new empty
/// database in the test cluster named after that folder.
fn test_database(dir: &Path) -> (String, Option<PgDatabase>) {
    let Some(admin) = pg_admin_url() else { return ("sqlite://db.sqlite".into(), None) };
    let name =
        dir.file_name().unwrap().to_string_lossy().to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    (new_pg_database(&admin, &name), Some(PgDatabase { admin, name }))
}

/// A test database in the PostgreSQL pass's cluster, dropped (with any session still on it) when
/// the deployment is: a pass creates about 300, each a copy of the template (7-8 MB), and a full
/// disk fails every test after it.
pub struct PgDatabase {
    admin: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        use diesel::{Connection, RunQueryDsl};
        if let Ok(mut conn) = diesel::PgConnection::establish(&self.admin) {
            let _ =
                diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)).execute(&mut conn);
        }
    }
}

impl Builder {
    /// A deployment with test-friendly defaults: port 0, `killGraceSec` 1, `shutdownGraceSec` 2,
    /// logs in `<dir>/logs`, database `<dir>/db.sqlite` (a database of its own in the
    /// PostgreSQL pass; [`Builder::sqlite`] for a test about SQLite's files).
    pub fn new() -> Builder {
        let dir = tempfile::Builder::new().prefix("sr-test-").tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        let mut server = Map::new();
        server.insert("host".into(), json!("127.0.0.1"));
        server.insert("port".into(), json!(0));
        let mut runner = Map::new();
        runner.insert("maxConcurrent".into(), json!(4));
        runner.insert("killGraceSec".into(), json!(1));
        runner.insert("shutdownGraceSec".into(), json!(2));
        runner.insert("logsDir".into(), json!("./logs"));
        runner.insert("jobStoreFile".into(), json!("./jobs.json"));
        let mut top = Map::new();
        let (url, database) = test_database(dir.path());
        top.insert("database".into(), json!({ "url": url }));
        Builder { dir, database, server, runner, top, scripts: Vec::new() }
    }

    /// Runs this deployment on SQLite (`<dir>/db.sqlite`) in either pass: for a test about what
    /// only SQLite has (its files, its lock file, a path as the deployment's name).
    pub fn sqlite(self) -> Builder {
        self.top("database", json!({ "url": "sqlite://db.sqlite" }))
    }

    /// The deployment folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a `/bin/sh` script `scripts/<id>.sh` with this body, and its scripts.json entry
    /// (`mode` sync, no timeout, permissive args). Use `script_entry` for other settings.
    pub fn script(self, id: &str, body: &str) -> Builder {
        self.script_entry(id, body, json!({}))
    }

    /// Like [`Builder::script`], with extra scripts.json keys merged into the entry
    /// (e.g. `{"mode": "async", "timeoutSec": 1, "args": {"maxItems": 2}}`).
    pub fn script_entry(mut self, id: &str, body: &str, extra: Value) -> Builder {
        let path = self.write_executable(&format!("scripts/{id}.sh"), &format!("#!/bin/sh\n{body}\n"));
        let mut entry = json!({ "id": id, "path": path.to_str().unwrap(), "mode": "sync" });
        if let (Some(e), Value::Object(x)) = (entry.as_object_mut(), extra) {
            e.extend(x);
        }
        self.scripts.push(entry);
        self
    }

    /// Adds a configured workflow: `workflows/<id>.sh`, a `#!/bin/bash` script with this body,
    /// as a scripts.json entry with `"kind": "workflow"`.
    pub fn workflow(mut self, id: &str, body: &str) -> Builder {
        let path = self.write_executable(&format!("workflows/{id}.sh"), &format!("#!/bin/bash\n{body}\n"));
        self.scripts.push(json!({ "id": id, "path": path.to_str().unwrap(), "kind": "workflow" }));
        self
    }

    /// Allows inline bash sources (`workflows.interpreters.bash`) and sets other
    /// `workflows.*` keys from `extra` (e.g. `{"parkAfterSec": 1, "maxSteps": 5}`).
    pub fn workflows(mut self, extra: Value) -> Builder {
        let mut section = json!({ "interpreters": { "bash": ["/bin/bash"] } });
        if let (Some(s), Value::Object(x)) = (section.as_object_mut(), extra) {
            s.extend(x);
        }
        self.top.insert("workflows".into(), section);
        self
    }

    /// Adds a raw scripts.json entry as is.
    pub fn raw_script(mut self, entry: Value) -> Builder {
        self.scripts.push(entry);
        self
    }

    /// Writes an executable file relative to the deployment folder; returns its path.
    pub fn write_executable(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Sets `server.<key>`.
    pub fn server(mut self, key: &str, value: Value) -> Builder {
        self.server.insert(key.into(), value);
        self
    }

    /// Sets `runner.<key>`.
    pub fn runner(mut self, key: &str, value: Value) -> Builder {
        self.runner.insert(key.into(), value);
        self
    }

    /// Sets a top-level config.json key (e.g. `database`).
    pub fn top(mut self, key: &str, value: Value) -> Builder {
        self.top.insert(key.into(), value);
        self
    }

    /// Writes config.json and scripts.json; returns the config path and keeps the folder.
    pub fn write(self) -> Deployment {
        let mut config = self.top.clone();
        config.insert("server".into(), Value::Object(self.server.clone()));
        config.insert("runner".into(), Value::Object(self.runner.clone()));
        config.insert("scriptsFile".into(), json!("./scripts.json"));
        if self.database.is_some() && !config.contains_key("cluster") {
            // On PostgreSQL a server is a node of a cluster: a fixed id, so a restart on another
            // port (0) takes over what the previous run left at once, as a single server does.
            config.insert("cluster".into(), json!({ "nodeId": "test-node" }));
        }
        let config_path = self.dir.path().join("config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&Value::Object(config)).unwrap()).unwrap();
        std::fs::write(
            self.dir.path().join("scripts.json"),
            serde_json::to_vec_pretty(&json!({ "scripts": self.scripts })).unwrap(),
        )
        .unwrap();
        Deployment { dir: self.dir, config: config_path, database: self.database }
    }

    /// Writes the files and starts the server.
    pub fn start(self) -> TestServer {
        self.write().start()
    }
}

/// A written deployment folder (kept until dropped).
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Its database in the PostgreSQL pass, dropped with it (after its server is stopped).
    pub database: Option<PgDatabase>,
}

impl Deployment {
    /// Starts a server on this deployment.
    pub fn start(self) -> TestServer {
        self.start_with_env(&[])
    }

    /// Starts a server on this deployment with these variables added to its environment (also
    /// at every restart).
    pub fn start_with_env(self, env: &[(&str, &str)]) -> TestServer {
        let mut server = TestServer::new(self);
        server.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        server.launch();
        server
    }

    /// Starts a server on a fixed port (for a test whose server must come back on the same
    /// address after a restart), picked by [`unused_port`] and written into config.json. The
    /// port is free when picked but may be taken before the server binds it: a start that
    /// fails to listen is retried on another port.
    pub fn start_on_fixed_port(self) -> TestServer {
        let mut server = TestServer::new(self);
        for _ in 0..10 {
            let port = unused_port();
            let path = &server.deployment.config;
            let mut config: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            config["server"]["port"] = json!(port);
            std::fs::write(path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
            match server.try_launch() {
                Ok(()) => return server,
                Err(log) if log.contains("cannot listen on") => continue,
                Err(log) => panic!("server did not start; its log:\n{log}"),
            }
        }
        panic!("server did not start on any of 10 ports; its log:\n{}", server.server_log());
    }

    /// The `database.url` of config.json (relative SQLite paths resolved from its folder).
    pub fn database_url(&self) -> String {
        let config: Value = serde_json::from_slice(&std::fs::read(&self.config).unwrap()).unwrap();
        let url = config["database"]["url"].as_str().unwrap_or("sqlite://script-runner.db").to_string();
        match url.strip_prefix("sqlite://") {
            Some(path) => format!("sqlite://{}", self.dir.path().join(path).display()),
            None => url,
        }
    }

    /// Runs one statement on the deployment's database (either backend), with `bind` bound to
    /// its one placeholder, written `$1`; returns how many rows it changed.
    pub fn execute_sql(&self, sql: &str, bind: &str) -> usize {
        use diesel::{Connection, RunQueryDsl};
        let url = self.database_url();
        match url.strip_prefix("sqlite://") {
            Some(path) => {
                let mut conn = diesel::SqliteConnection::establish(path).unwrap();
                let sql = sql.replace("$1", "?");
                diesel::sql_query(sql).bind::<diesel::sql_types::Text, _>(bind).execute(&mut conn).unwrap()
            }
            None => {
                let mut conn = diesel::PgConnection::establish(&url).unwrap();
                diesel::sql_query(sql).bind::<diesel::sql_types::Text, _>(bind).execute(&mut conn).unwrap()
            }
        }
    }

    /// The deployment marker its server's processes carry (`SCRIPT_RUNNER_DB`): the SQLite
    /// file's path, or `postgres:<id>` with the id stored in the database (once a server ran).
    pub fn marker(&self) -> String {
        use diesel::{Connection, RunQueryDsl};
        let url = self.database_url();
        match url.strip_prefix("sqlite://") {
            Some(path) => path.to_string(),
            None => {
                #[derive(diesel::QueryableByName)]
                struct Id {
                    #[diesel(sql_type = diesel::sql_types::Text)]
                    id: String,
                }
                let mut conn = diesel::PgConnection::establish(&url).unwrap();
                let row: Id = diesel::sql_query("SELECT id FROM deployment").get_result(&mut conn).unwrap();
                // A server on PostgreSQL is a node: its processes carry its node id too.
                format!("postgres:{}#test-node", row.id)
            }
        }
    }

    /// Runs `script-runner check-config --config <config.json>`.
    pub fn check_config(&self) -> std::process::Output {
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&self.config)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    }
}

/// A response: status, parsed JSON body (Null when not JSON) and raw text.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

// ---------------------------------------------------------------- the OpenAPI contract

/// The OpenAPI document of the binary under test (`script-runner openapi`), read once per test
/// binary, and the validators compiled from it: [`TestServer::request`] checks every answer of
/// the suite against it.
pub struct Contract {
    /// The document.
    pub doc: Value,
    /// The document's components, closed (see [`close`]), the root every `$ref` resolves in.
    components: Value,
    /// A validator per schema, keyed by the schema's text.
    validators: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
}

/// The contract of [`BIN`], built at its first use.
pub fn contract() -> &'static Contract {
    static CONTRACT: std::sync::OnceLock<Contract> = std::sync::OnceLock::new();
    CONTRACT.get_or_init(|| {
        let out = Command::new(BIN).arg("openapi").env_remove("DATABASE_URL").output().unwrap();
        assert!(out.status.success(), "script-runner openapi failed: {}", String::from_utf8_lossy(&out.stderr));
        let doc: Value = serde_json::from_slice(&out.stdout).expect("script-runner openapi prints JSON");
        let mut components = doc["components"].clone();
        close(&mut components);
        Contract { doc, components, validators: Default::default() }
    })
}

/// Makes every object schema with `properties` and no `additionalProperties` closed
/// (`additionalProperties: false`), for the tests only: the document stays open to additions
/// for clients, but a field the server sends and the document does not name fails the suite.
fn close(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("properties").is_some_and(Value::is_object) && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), json!(false));
            }
            for (key, value) in map.iter_mut() {
                // A field named like a keyword is not a schema; `properties` holds schemas by name.
                if key != "enum" && key != "example" && key != "examples" && key != "default" {
                    close(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close),
        _ => {}
    }
}

impl Contract {
    /// The path template of the document that answers `method path` as actix routes it: of the
    /// templates whose segments match, the one with the most literal segments (the server
    /// registers the more specific first), if it has the method; `None` when no documented
    /// operation answers it (the fallback `404`, a `405`).
    pub fn operation(&self, method: &str, path: &str) -> Option<(String, &Value)> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let segments: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, &String, &Value)> = None;
        for (template, item) in self.doc["paths"].as_object()? {
            let parts: Vec<&str> = template.split('/').collect();
            let matches = parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(p, s)| {
                    if p.starts_with('{') && p.ends_with('}') {
                        !s.is_empty()
                    } else {
                        p == s
                    }
                });
            if !matches {
                continue;
            }
            let literal = parts.iter().filter(|p| !p.starts_with('{')).count();
            if best.as_ref().map_or(true, |(l, _, _)| literal > *l) {
                best = Some((literal, template, item));
            }
        }
        let (_, template, item) = best?;
        item.get(method.to_lowercase()).map(|operation| (template.clone(), operation))
    }

    /// Panics unless the answer is one the document allows for `method path` and `status`: its
    /// content type listed, a JSON body valid against the schema. An answer of a route the
    /// document does not have (the fallback `404`, a `405`) must be an `ErrorBody`.
    pub fn check(&self, method: &str, path: &str, status: u16, content_type: &str, text: &str, body: &Value) {
        let (route, schema) = match self.operation(method, path) {
            None => ("(no documented operation)".to_string(), json!({ "$ref": "#/components/schemas/ErrorBody" })),
            Some((template, operation)) => {
                let Some(response) = operation["responses"].get(status.to_string()) else {
                    panic!(
                        "OpenAPI: {method} {path} answered {status}, a status the document does not list for \
                         {method} {template}; body: {}",
                        clip(text)
                    )
                };
                let media = if content_type.is_empty() { "application/json" } else { content_type };
                // Media types compare without their parameters (`text/plain; version=0.0.4`).
                let bare = |t: &str| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                let content = response["content"]
                    .as_object()
                    .and_then(|c| c.iter().find(|(listed, _)| bare(listed) == bare(media)).map(|(_, content)| content));
                let Some(content) = content else {
                    panic!(
                        "OpenAPI: {method} {path} answered {status} as {media:?}, which the document does not list \
                         for {method} {template} ({}); body: {}",
                        response["content"]
                            .as_object()
                            .map(|c| c.keys().cloned().collect::<Vec<_>>().join(", "))
                            .unwrap_or_default(),
                        clip(text)
                    )
                };
                if bare(media) != "application/json" {
                    return;
                }
                (format!("{method} {template}"), content["schema"].clone())
            }
        };
        if body.is_null() && text.trim() != "null" {
            panic!("OpenAPI: {method} {path} answered {status} with a body that is not JSON: {}", clip(text));
        }
        let validator = self.validator(&schema);
        let errors: Vec<String> =
            validator.iter_errors(body).map(|e| format!("at {}: {e}", e.instance_path)).take(5).collect();
        if !errors.is_empty() {
            panic!(
                "OpenAPI: the answer of {method} {path} ({route}) with status {status} does not match the \
                 document's schema {schema}:\n  {}\nbody: {}",
                errors.join("\n  "),
                clip(text)
            );
        }
    }

    /// The validator of `schema`, whose `$ref`s resolve in the document's components.
    fn validator(&self, schema: &Value) -> std::sync::Arc<jsonschema::Validator> {
        let key = schema.to_string();
        let mut cache = self.validators.lock().unwrap();
        if let Some(v) = cache.get(&key) {
            return v.clone();
        }
        let mut root = schema.clone();
        close(&mut root);
        let root = json!({ "$schema": "https://json-schema.org/draft/2020-12/schema", "components": self.components,
                           "allOf": [root] });
        let validator = std::sync::Arc::new(
            jsonschema::draft202012::new(&root)
                .unwrap_or_else(|e| panic!("OpenAPI: schema {schema} does not compile: {e}")),
        );
        cache.insert(key, validator.clone());
        validator
    }
}

/// At most 2000 characters of an answer, for failure messages.
fn clip(text: &str) -> String {
    match text.char_indices().nth(2000) {
        Some((at, _)) => format!("{}... ({} bytes)", &text[..at], text.len()),
        None => text.to_string(),
    }
}

/// The running server.
pub struct TestServer {
    pub deployment: Deployment,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, followed by `server.basePath` when the deployment has one
    pub base: String,
    /// One HTTP client (and connection pool) per server start, for every request of the test.
    agent: ureq::Agent,
    /// Variables added to the server's environment at every start.
    env: Vec<(String, String)>,
    /// Sent as `Authorization: Bearer <token>` on every request that names no `Authorization`
    /// itself (for a deployment with `server.authToken`).
    pub token: Option<String>,
}

impl TestServer {
    fn new(deployment: Deployment) -> TestServer {
        TestServer { deployment, child: None, base: String::new(), agent: new_agent(), env: Vec::new(), token: None }
    }

    fn launch(&mut self) {
        if let Err(log) = self.try_launch() {
            panic!("server did not start; its log:\n{log}");
        }
    }

    /// Starts the server; on failure returns what it logged in this attempt.
    fn try_launch(&mut self) -> Result<(), String> {
        let log_path = self.deployment.dir.path().join("server.log");
        let logged_before = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.deployment.config)
            .env("RUST_LOG", "info")
            // The database is the config's unless the test names one.
            .env_remove("DATABASE_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("script-runner listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(base) => self.base = base,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read(&log_path).unwrap_or_default();
                let this_attempt = log.get(usize::try_from(logged_before).unwrap_or(0)..).unwrap_or_default();
                return Err(String::from_utf8_lossy(this_attempt).into_owned());
            }
        }
        self.child = Some(child);
        // Pooled connections of a previous start lead nowhere.
        self.agent = new_agent();
        Ok(())
    }

    /// The deployment folder.
    pub fn dir(&self) -> &Path {
        self.deployment.dir.path()
    }

    /// What the server wrote to stderr (its log) so far, across restarts.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("server.log")).unwrap_or_default()
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Any request. `headers` are `(name, value)` pairs.
    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Resp {
        let mut req = self.agent.request(method, &format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
                req = req.set("Authorization", &format!("Bearer {token}"));
            }
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.send_bytes(b),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let content_type = response.content_type().to_string();
        let text = response.into_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        contract().check(method, path, status, &content_type, &text, &body);
        Resp { status, body, text }
    }

    /// GET.
    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, None, &[])
    }

    /// POST a JSON value.
    pub fn post(&self, path: &str, body: Value) -> Resp {
        let bytes = serde_json::to_vec(&body).unwrap();
        self.request("POST", path, Some(&bytes), &[("Content-Type", "application/json")])
    }

    /// `POST /run` with `{scriptId, args, mode}` (mode omitted when None).
    pub fn run(&self, script_id: &str, args: &[&str], mode: Option<&str>) -> Resp {
        let mut body = json!({ "scriptId": script_id, "args": args });
        if let Some(m) = mode {
            body["mode"] = json!(m);
        }
        self.post("/run", body)
    }

    /// Starts an async job and returns its id.
    pub fn run_async(&self, script_id: &str, args: &[&str]) -> String {
        let r = self.run(script_id, args, Some("async"));
        assert_eq!(r.status, 202, "{}", r.text);
        r.body["jobId"].as_str().unwrap().to_string()
    }

    /// `GET /jobs/:id` body.
    pub fn job(&self, id: &str) -> Value {
        let r = self.get(&format!("/jobs/{id}"));
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
    }

    /// Polls until the job's status satisfies `pred`, at most `timeout`; returns the job. A job
    /// not found yet is waited for (a journal entry names its job before the job is submitted).
    pub fn wait_job(&self, id: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> Value {
        let last = RefCell::new(Value::Null);
        let what = || {
            let job = last.borrow();
            format!("job {id} still {} after {timeout:?}: {job}", job["status"])
        };
        wait_until(what, timeout, || {
            let r = self.get(&format!("/jobs/{id}"));
            if r.status == 404 {
                *last.borrow_mut() = r.body;
                return None;
            }
            assert_eq!(r.status, 200, "{}", r.text);
            let job = r.body;
            if pred(job["status"].as_str().unwrap_or("")) {
                return Some(job);
            }
            *last.borrow_mut() = job;
            None
        })
    }

    /// `POST /api/script-runs` with this body.
    pub fn launch_run(&self, body: Value) -> Resp {
        self.post("/api/script-runs", body)
    }

    /// Launches an inline bash run (needs [`Builder::workflows`]); returns its id.
    pub fn launch_bash(&self, source: &str, args: Value) -> String {
        let r = self.launch_run(json!({ "source": source, "interpreter": "bash", "args": args }));
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["run"]["id"].as_str().unwrap().to_string()
    }

    /// `GET /api/script-runs/{id}` body (`{ok, run, journal}`).
    pub fn script_run(&self, id: &str) -> Value {
        let r = self.get(&format!("/api/script-runs/{id}"));
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
    }

    /// Polls until the run's status satisfies `pred`, at most `timeout`; returns `{ok, run, journal}`.
    pub fn wait_run(&self, id: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> Value {
        let last = RefCell::new(Value::Null);
        let what = || {
            let body = last.borrow();
            format!("run {id} still {} after {timeout:?}: {body}", body["run"]["status"])
        };
        wait_until(what, timeout, || {
            let body = self.script_run(id);
            if pred(body["run"]["status"].as_str().unwrap_or("")) {
                return Some(body);
            }
            *last.borrow_mut() = body;
            None
        })
    }

    /// Polls the run until `pred` holds on its `{ok, run, journal}`, at most `timeout`; returns
    /// it. `what` names the awaited state in the failure message.
    pub fn wait_run_body(&self, id: &str, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let last = RefCell::new(Value::Null);
        let message = || format!("run {id}: {what} not seen within {timeout:?}: {}", last.borrow());
        wait_until(message, timeout, || {
            let body = self.script_run(id);
            if pred(&body) {
                return Some(body);
            }
            *last.borrow_mut() = body;
            None
        })
    }

    /// Waits (at most [`STEP_WAIT`]) until the run's journal has an entry `label` with this
    /// status (e.g. `started`, `completed`); returns the run's `{ok, run, journal}`.
    pub fn wait_step(&self, id: &str, label: &str, status: &str) -> Value {
        self.wait_run_body(id, &format!("step {label} {status}"), STEP_WAIT, |b| {
            b["journal"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["stepKey"] == json!(label) && e["status"] == json!(status))
        })
    }

    /// Polls until the run is terminal (`completed`, `failed`, `cancelled`, `aborted_limit`).
    pub fn wait_run_terminal(&self, id: &str, timeout: Duration) -> Value {
        self.wait_run(id, timeout, |s| matches!(s, "completed" | "failed" | "cancelled" | "aborted_limit"))
    }

    /// Polls until the job is terminal.
    pub fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        self.wait_job(id, timeout, |s| !matches!(s, "queued" | "running"))
    }

    /// Kills the server with SIGKILL (its jobs' process groups survive it) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the server to exit, at most `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Sends a signal to the server (e.g. SIGTERM, to look at the drain before
    /// [`TestServer::wait_exit`]).
    pub fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("server not running");
        signal(i32::try_from(child.id()).unwrap(), sig);
    }

    /// Waits for the server to exit, at most `timeout` (then kills it and panics).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("server not running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within {timeout:?}; its log:\n{}", self.server_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's exit status if it exited (without waiting); `None` while it runs (or after
    /// the harness already collected its exit, e.g. by [`TestServer::kill9`]).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Starts the server again on the same folder (after `kill9` or `terminate`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.launch();
    }
}

impl Drop for TestServer {
    /// Kills the server, then every process of its deployment that outlived it (job groups and
    /// workflow processes survive a SIGKILL of the server): a failing test leaves none behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        reap(self.dir());
    }
}

fn new_agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build()
}

/// How long [`TestServer::wait_step`] waits for a journal entry.
pub const STEP_WAIT: Duration = Duration::from_secs(20);

/// Waits for a child to exit, at most `timeout`; a child still running then is killed and
/// `None` returned (the caller panics with what it knows, e.g. the child's log).
pub fn exit_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls `probe` every 20 ms until it returns a value, at most `timeout` (the first call is at
/// once); returns that value. On timeout it panics with `what()`, which callers build from what
/// their probe saw last.
pub fn wait_until<T>(what: impl FnOnce() -> String, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("{}", what());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port outside the kernel's ephemeral range (which `bind(0)` and outgoing connections draw
/// from, so they cannot take it meanwhile) that nothing listens on now.
pub fn unused_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low = range.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(32768);
    // Between 10000 and the ephemeral range (a few thousand ports in any sane setting).
    let (from, to) = if low > 12000 { (10000, low) } else { (low.saturating_sub(2000).max(1024), low) };
    for _ in 0..100 {
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let port = from + u16::try_from(random % u64::from(to - from)).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

/// A shell snippet that waits until the file `gate` exists (the test creates it when the
/// script may go on), polling every 50 ms; after about 60 s without it, the script exits 97.
/// A gate holds a job in a state for exactly as long as the test needs, however slow the
/// machine, where a `sleep` would guess.
pub fn wait_for_gate(gate: &Path) -> String {
    wait_for_gate_word(&format!("'{}'", gate.display()))
}

/// [`wait_for_gate`] with the gate's path as a shell word (quoted by the caller), e.g. `"$f.go"`.
pub fn wait_for_gate_word(gate: &str) -> String {
    format!("i=0; while [ ! -e {gate} ]; do [ $i -ge 1200 ] && exit 97; sleep 0.05; i=$((i+1)); done")
}

/// Creates a gate file (see [`wait_for_gate`]).
pub fn open_gate(gate: &Path) {
    std::fs::write(gate, "").unwrap();
}

/// Sends a signal to a pid.
pub fn signal(pid: i32, sig: i32) {
    #[allow(unsafe_code, reason = "plain kill(2) for tests")]
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the command name in parentheses, which may itself hold spaces.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            state != Some('Z')
        }
        Err(_) => false,
    }
}

/// Waits until every pid is gone, at most `timeout`; returns the ones still alive.
pub fn wait_gone(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a file exists and holds a non-empty trimmed text; returns it.
pub fn wait_file(path: &Path, timeout: Duration) -> String {
    wait_until(
        || format!("{} not written within {timeout:?}", path.display()),
        timeout,
        || std::fs::read_to_string(path).ok().map(|text| text.trim().to_string()).filter(|text| !text.is_empty()),
    )
}

/// Reads the pids a script wrote, one per line, to a file.
pub fn read_pids(path: &Path, count: usize, timeout: Duration) -> Vec<i32> {
    wait_until(
        || format!("{} did not list {count} pids within {timeout:?}", path.display()),
        timeout,
        || {
            let pids: Vec<i32> = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            (pids.len() >= count).then_some(pids)
        },
    )
}

/// The lines of a file (none when it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// SIGKILLs every process that carries this deployment's marker, `SCRIPT_RUNNER_DB=<dir>/db.sqlite`
/// (the server exports it to every job and workflow process, and recovery finds them by it):
/// processes of other deployments (other tests running meanwhile) are never hit, nor is a pid
/// reused by an unrelated process.
pub fn reap(dir: &Path) {
    let marker = format!("SCRIPT_RUNNER_DB={}", dir.join("db.sqlite").display());
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ.split(|&b| b == 0).any(|v| v == marker.as_bytes()) {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// SIGKILLs every process whose `SCRIPT_RUNNER_DB` is `marker` or `marker#<anything>` (a
/// PostgreSQL deployment's marker is `postgres:<id>`; a node of a cluster adds `#<node id>`).
pub fn reap_marker(marker: &str) {
    let (exact, node) = (format!("SCRIPT_RUNNER_DB={marker}"), format!("SCRIPT_RUNNER_DB={marker}#"));
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ.split(|&b| b == 0).any(|v| v == exact.as_bytes() || v.starts_with(node.as_bytes())) {
            signal(pid, libc::SIGKILL);
        }
    }
}

// ---------------------------------------------------------------- cluster

/// The `cluster.leaseSec` of a test cluster's nodes.
pub const CLUSTER_LEASE_SEC: u64 = 2;

/// Builds a cluster on PostgreSQL (the PostgreSQL pass only): one throw-away database, one
/// shared folder with the scripts (and whatever files the test's scripts write), and per node
/// a folder of its own (config.json, scripts.json, `logs/`, `server.log`).
pub struct ClusterBuilder {
    /// The shared folder, the config every node starts from and the cluster's database.
    template: Builder,
    /// `database.url` of the nodes, when not the database's own URL (e.g. through a proxy).
    node_url: Option<String>,
    lease_sec: u64,
}

impl ClusterBuilder {
    /// The shared folder (scripts; files the scripts write for the test).
    pub fn dir(&self) -> &Path {
        self.template.dir()
    }

    /// The cluster database's URL (direct, with the password).
    pub fn database_url(&self) -> String {
        self.template.top["database"]["url"].as_str().unwrap().to_string()
    }

    /// The `database.url` the nodes use instead of [`ClusterBuilder::database_url`] (the same
    /// database, e.g. through a TCP proxy the test can cut).
    pub fn node_database_url(mut self, url: &str) -> ClusterBuilder {
        self.node_url = Some(url.to_string());
        self
    }

    /// `cluster.leaseSec` of every node ([`CLUSTER_LEASE_SEC`] unless set).
    pub fn lease_sec(mut self, sec: u64) -> ClusterBuilder {
        self.lease_sec = sec;
        self
    }

    /// See [`Builder::script`].
    pub fn script(self, id: &str, body: &str) -> ClusterBuilder {
        self.script_entry(id, body, json!({}))
    }

    /// See [`Builder::script_entry`].
    pub fn script_entry(mut self, id: &str, body: &str, extra: Value) -> ClusterBuilder {
        self.template = self.template.script_entry(id, body, extra);
        self
    }

    /// See [`Builder::workflow`].
    pub fn workflow(mut self, id: &str, body: &str) -> ClusterBuilder {
        self.template = self.template.workflow(id, body);
        self
    }

    /// See [`Builder::workflows`].
    pub fn workflows(mut self, extra: Value) -> ClusterBuilder {
        self.template = self.template.workflows(extra);
        self
    }

    /// Sets `runner.<key>` on every node.
    pub fn runner(mut self, key: &str, value: Value) -> ClusterBuilder {
        self.template = self.template.runner(key, value);
        self
    }

    /// Sets a top-level config.json key on every node.
    pub fn top(mut self, key: &str, value: Value) -> ClusterBuilder {
        self.template = self.template.top(key, value);
        self
    }

    /// Starts `n` nodes, `n1` to `n<n>`, one after the other, each on `127.0.0.1:0`.
    pub fn start(self, n: usize) -> Cluster {
        let ClusterBuilder { template, node_url, lease_sec } = self;
        let url = node_url.unwrap_or_else(|| template.top["database"]["url"].as_str().unwrap().to_string());
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let dir = tempfile::Builder::new().prefix("sr-node-").tempdir().unwrap();
            let mut node = Builder {
                dir,
                database: None,
                server: template.server.clone(),
                runner: template.runner.clone(),
                top: template.top.clone(),
                scripts: template.scripts.clone(),
            };
            node.top.insert("database".into(), json!({ "url": url }));
            node.top.insert("cluster".into(), json!({ "nodeId": Cluster::node_id(i), "leaseSec": lease_sec }));
            nodes.push(node.start());
        }
        // The deployment's part of the marker (`postgres:<id>`; a node's processes add `#<node>`).
        let marker = nodes.first().map(|node| node.deployment.marker().split('#').next().unwrap().to_string());
        let Builder { dir, database, .. } = template;
        Cluster { nodes, marker, dir, _database: database }
    }
}

/// Nodes of one cluster on one PostgreSQL database (see [`ClusterBuilder`]). Dropping it kills
/// every node and every process of the cluster's deployment, then drops the database.
pub struct Cluster {
    /// The nodes, `nodes[i]` is `n<i+1>`; each a [`TestServer`] (kill -9, signals, its log).
    pub nodes: Vec<TestServer>,
    /// The deployment marker its processes carry (`postgres:<id>`, then `#<node>`).
    marker: Option<String>,
    dir: tempfile::TempDir,
    /// Dropped after the nodes (fields drop after [`Cluster`]'s `drop`).
    _database: Option<PgDatabase>,
}

impl Cluster {
    /// A builder with the test defaults of [`Builder::new`] (a new database of its own).
    /// Panics outside the PostgreSQL pass: a cluster test returns early there.
    pub fn builder() -> ClusterBuilder {
        assert!(on_postgres(), "a cluster needs the PostgreSQL pass (tests/run)");
        ClusterBuilder { template: Builder::new(), node_url: None, lease_sec: CLUSTER_LEASE_SEC }
    }

    /// `n` nodes with the test defaults and no scripts.
    pub fn start(n: usize) -> Cluster {
        Cluster::builder().start(n)
    }

    /// The id of `nodes[i]`: `n<i+1>`.
    pub fn node_id(i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// The index of the node with this id.
    pub fn index_of(&self, id: &str) -> usize {
        (0..self.nodes.len()).find(|&i| Cluster::node_id(i) == id).unwrap_or_else(|| panic!("no node {id:?}"))
    }

    /// The shared folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every node's log, headed by its id, for assertion messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            all.push_str(&format!("---- node {} log:\n{}\n", Cluster::node_id(i), node.server_log()));
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A SIGSTOPped node still dies of the SIGKILL its handle sends.
        self.nodes.clear();
        if let Some(marker) = &self.marker {
            reap_marker(marker);
        }
    }
}

/// The journal entry with this label in a `GET /api/script-runs/:id` body.
pub fn entry<'a>(body: &'a Value, label: &str) -> &'a Value {
    body["journal"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stepKey"] == json!(label))
        .unwrap_or_else(|| panic!("no journal entry {label:?} in {body}"))
}

/// The labels of the journal in a `GET /api/script-runs/:id` body (or any value with a
/// `journal` array), in order.
pub fn labels(body: &Value) -> Vec<String> {
    body["journal"].as_array().unwrap().iter().map(|e| e["stepKey"].as_str().unwrap().to_string()).collect()
}

/// Asserts the error envelope `{"ok": false, "error": {"code", "message"}}`.
pub fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["ok"], json!(false), "{}", r.text);
    assert_eq!(r.body["error"]["code"], json!(code), "{}", r.text);
    assert!(r.body["error"]["message"].is_string(), "{}", r.text);
}

/// `GET /jobs/:id/logs?<query>`, asserting 200; returns the body.
pub fn page(server: &TestServer, id: &str, query: &str) -> Value {
    let r = server.get(&format!("/jobs/{id}/logs?{query}"));
    assert_eq!(r.status, 200, "GET logs?{query}: {}", r.text);
    assert_eq!(r.body["ok"], json!(true), "{}", r.text);
    r.body
}

/// A JSON string's text (panics on any other value).
pub fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}
