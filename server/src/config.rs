//! `config.json` and `scripts.json`: loading, defaults and validation.
//!
//! The files are upstream's (the Node.js script-runner) key for key, so an existing deployment
//! keeps its configuration. Everything is validated at load time: an unknown key, a duplicate
//! script id, a script that does not exist or is not executable, an invalid regex or a bad number
//! fails with a [`ConfigError`] naming the file, the key and the script id. Nothing here panics.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Whether `POST /run` answers when the job ends (`sync`) or at once with a job id (`async`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer with the finished job.
    Sync,
    /// Answer `202` with the job id as soon as the job is queued.
    Async,
}

impl Mode {
    /// The wire spelling, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }

    /// Parses the wire spelling; anything else is `None`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "sync" => Some(Mode::Sync),
            "async" => Some(Mode::Async),
            _ => None,
        }
    }
}

/// A configuration problem, with enough context to fix it without reading code.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}{message}", script.as_ref().map(|s| format!("script \"{s}\": ")).unwrap_or_default())]
pub struct ConfigError {
    /// The file at fault.
    pub file: PathBuf,
    /// The script id, when the problem is inside one script entry.
    pub script: Option<String>,
    /// What is wrong, starting with the key path.
    pub message: String,
}

impl ConfigError {
    fn new(file: &Path, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_path_buf(), script: None, message: message.into() }
    }

    fn in_script(file: &Path, script: &str, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_path_buf(), script: Some(script.to_string()), message: message.into() }
    }
}

/// The whole validated configuration, shared read-only by every layer.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of the `config.json` this was loaded from.
    pub config_file: PathBuf,
    /// Where the scripts came from (`scripts.json`, or `config.json` for an inline array).
    pub scripts_file: PathBuf,
    /// HTTP listener settings.
    pub server: ServerConfig,
    /// Job execution settings.
    pub runner: RunnerConfig,
    /// Database settings.
    pub database: DatabaseConfig,
    /// Cluster settings (used on PostgreSQL, where every server is a node of a cluster).
    pub cluster: ClusterConfig,
    /// The whitelist, in file order.
    pub scripts: Vec<Arc<Script>>,
    /// Durable workflow runs: the configured workflows, interpreters and guardrails.
    pub workflows: WorkflowConfig,
    /// `GET /metrics` settings.
    pub metrics: MetricsConfig,
    /// Completion callbacks (`callbacks` in config.json).
    pub callbacks: CallbacksConfig,
    /// Resume URLs of approval, input and event steps (`resume` in config.json).
    pub resume: ResumeConfig,
}

/// Resume URLs (`resume` in config.json): the links an `awaiting` run shows for its step, which
/// an outside system calls without the server's token (the token in the URL is the credential).
#[derive(Debug, Clone)]
pub struct ResumeConfig {
    /// The HMAC-SHA256 key the URLs' tokens are signed with. Without one no URL is issued and
    /// `/api/resume/...` answers `404` to everything: a token signed with a guessable or empty
    /// key could be forged. Every node of a cluster needs the same one.
    pub secret: Option<String>,
    /// How long a step's URLs work, counted from the step's start (`resume.ttlSec`).
    pub ttl_sec: u64,
    /// The address the URLs start with (`resume.baseUrl`, no trailing `/`); `None`: the server's
    /// own address (what workflows get as `SCRIPT_RUNNER_URL`), which suits callers on this
    /// machine only.
    pub base_url: Option<String>,
}

/// The default `resume.ttlSec`: seven days.
pub const DEFAULT_RESUME_TTL_SEC: u64 = 7 * 24 * 3600;
/// The largest `resume.ttlSec`: a year.
pub const MAX_RESUME_TTL_SEC: u64 = 365 * 24 * 3600;

/// Completion callbacks (`callbacks` in config.json): what signs them, where they may go, how
/// long a failing one is retried.
#[derive(Debug, Clone)]
pub struct CallbacksConfig {
    /// The HMAC-SHA256 key of `X-Script-Runner-Signature`. Without one, a request that asks for
    /// a callback is refused (an unsigned or empty-key callback could be forged by anyone).
    pub secret: Option<String>,
    /// The host names and addresses a callback may call (default: loopback only). Compared with
    /// the URL's host at the request, and every address the host resolves to at delivery must
    /// be loopback or one of these written as an address.
    pub allowed_hosts: Vec<String>,
    /// How long a failing callback is retried after its job ended before it is `failed`.
    pub max_age_sec: u64,
}

/// `GET /metrics` settings (`metrics` in config.json).
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// Whether `/metrics` is served without the bearer token (`metrics.public`, default
    /// false). A scraper inside a trusted network then needs no secret; the counts say nothing
    /// of a job's arguments or output, but they do show which scripts run and how often.
    pub public: bool,
}

/// Settings of durable workflow runs (`config.json` `workflows`, guardrails also from the
/// environment).
#[derive(Debug, Clone)]
pub struct WorkflowConfig {
    /// Entries of `scripts.json` with `"kind": "workflow"`, in file order.
    pub catalog: Vec<Arc<Script>>,
    /// Interpreters inline sources may use: name -> argv prefix (the source file is appended).
    /// Empty (the default) disables inline sources.
    pub interpreters: BTreeMap<String, Vec<String>>,
    /// Seconds a run waiting for an approval keeps its process before it is stopped (parked).
    pub park_after_sec: u64,
    /// Most journal entries one run may have (`SCRIPT_RUN_MAX_STEPS`).
    pub max_steps: u64,
    /// Most server-side script steps one run may have (`SCRIPT_RUN_MAX_SCRIPT_STEPS`).
    pub max_script_steps: u64,
    /// Most wall-clock milliseconds from a run's first start (`SCRIPT_RUN_MAX_WALL_MS`).
    pub max_wall_ms: u64,
    /// Largest stored step result, in bytes of JSON (`SCRIPT_RUN_MAX_RESULT_BYTES`).
    pub max_result_bytes: u64,
    /// Folder of the flows a run may execute (`<name>/flow.oo.yaml`); `self::` blocks resolve
    /// against its parent (the package root).
    pub flows_dir: PathBuf,
}

/// HTTP listener settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Bind address; `127.0.0.1` unless configured (upstream binds every interface).
    pub host: String,
    /// Port; `0` picks a free one (the chosen address is printed at start).
    pub port: u16,
    /// When set, every route but `/healthz`, `/openapi.json`, the resume URLs and the dashboard's
    /// files (`/`, `/ui/...`) needs `Authorization: Bearer <token>`.
    pub auth_token: Option<String>,
    /// Most event streams open at once (`server.maxStreams`); past it `429`.
    pub max_streams: usize,
    /// Silence after which an event stream sends a heartbeat comment
    /// (`server.streamHeartbeatSec`).
    pub stream_heartbeat: std::time::Duration,
    /// The path prefix every route is served under (`server.basePath`, e.g. `/sr`): starts with
    /// `/`, has no trailing `/`; empty (the default) serves at the root. For a reverse proxy
    /// that forwards one path of its site to this server without stripping it.
    pub base_path: String,
}

/// Job execution settings (upstream's `runner` block plus ours).
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Jobs running at once; the rest wait in a FIFO queue.
    pub max_concurrent: usize,
    /// Jobs allowed to wait behind the running ones before `429 QUEUE_FULL`.
    pub max_queued: usize,
    /// Mode for requests and scripts that name none.
    pub default_mode: Mode,
    /// Bytes stored per stream; output past it is drained and dropped.
    pub max_log_bytes_per_stream: u64,
    /// Tail of each stream kept on the job record.
    pub preview_max_bytes: usize,
    /// Upstream's job history file, imported once if it exists.
    pub job_store_file: PathBuf,
    /// Folder for `<jobId>.stdout.log` / `.stderr.log`.
    pub logs_dir: PathBuf,
    /// Seconds between SIGTERM and SIGKILL when a job is canceled or times out.
    pub kill_grace_sec: u64,
    /// Seconds a shutdown waits for running jobs before canceling them.
    pub shutdown_grace_sec: u64,
}

impl RunnerConfig {
    /// The time between SIGTERM and SIGKILL, for a job's or a workflow execution's process.
    pub fn kill_grace(&self) -> Duration {
        Duration::from_secs(self.kill_grace_sec)
    }
}

/// A node's settings in a cluster (`cluster` in config.json). Every server on a PostgreSQL
/// database is a node; on SQLite these are not used.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's name (`cluster.nodeId`): letters, digits, `.`, `_`, `-`, `:`. Default:
    /// `<hostname>:<port>`. A node that restarts under the same name takes over what its previous
    /// run left at once, instead of after its lease.
    pub node_id: Option<String>,
    /// Where the other nodes reach this one (`cluster.advertise`, `http://host:port` or
    /// `host:port`). Default: the address the server listens on (loopback when it listens on
    /// every interface, which only suits nodes on one machine).
    pub advertise: Option<String>,
    /// How long a node is trusted without a heartbeat (`cluster.leaseSec`, 1 to 300, default
    /// 10): past it, another node declares it dead, fails its running jobs and resumes its runs.
    pub lease_sec: u64,
}

/// The default `cluster.leaseSec`.
pub const DEFAULT_LEASE_SEC: u64 = 10;

/// Database settings.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// The database URL as configured (or the default beside `config.json`).
    pub url: String,
    /// Where the URL points (the backend and its address).
    pub location: crate::db::Location,
    /// Most connections the read pool opens (`database.poolSize`).
    pub pool_size: u32,
}

/// Shows the URL without its password: a configuration printed for debugging must not leak it.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &crate::db::postgres::without_password(&self.url))
            .field("location", &self.location)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// One whitelisted script.
#[derive(Debug, Clone)]
pub struct Script {
    /// The id clients name in `POST /run`.
    pub id: String,
    /// Absolute path of the executable; it is executed directly, never through a shell.
    pub path: PathBuf,
    /// Mode when the request names none; `None` falls back to `runner.defaultMode`.
    pub mode: Option<Mode>,
    /// Seconds before the job is stopped as `timed_out`; `0` means no limit.
    pub timeout_sec: u64,
    /// Argument rules.
    pub args: ArgRules,
    /// Variables added to the inherited environment.
    pub env: BTreeMap<String, String>,
    /// Working directory; the script's folder unless configured.
    pub cwd: PathBuf,
    /// Free text shown by `GET /scripts`.
    pub description: Option<String>,
    /// Most jobs of this script running at once on this server (`concurrency`), within
    /// `runner.maxConcurrent`; `None` is no limit of its own. A job of a script at its limit
    /// waits in the queue without holding back the jobs of other scripts behind it.
    pub concurrency: Option<usize>,
    /// A workflow's interpreter (`interpreter` in scripts.json: an argv whose program is an
    /// absolute path; the workflow's file is appended). `None`: the file is executed itself
    /// (its `#!` line). With `node`, `tsx`, `deno` or `python3`, a source that defines
    /// `main(args, ctx)` is run by its step SDK's loader (see [`crate::runs::sdk`]).
    pub interpreter: Option<Vec<String>>,
}

/// Rules every argument of a run request must satisfy.
#[derive(Debug, Clone)]
pub struct ArgRules {
    /// Most arguments accepted.
    pub max_items: usize,
    /// Each argument must match this (unanchored, like JavaScript's `RegExp.test`).
    pub item_pattern: Regex,
    /// Longest argument, in characters.
    pub item_max_length: usize,
}

impl Config {
    /// The script with this id, if whitelisted.
    pub fn script(&self, id: &str) -> Option<&Arc<Script>> {
        self.scripts.iter().find(|s| s.id == id)
    }

    /// The configured workflow with this id.
    pub fn workflow(&self, id: &str) -> Option<&Arc<Script>> {
        self.workflows.catalog.iter().find(|s| s.id == id)
    }
}

impl Script {
    /// The mode a run of this script uses when the request names none.
    pub fn effective_mode(&self, default: Mode) -> Mode {
        self.mode.unwrap_or(default)
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.id, self.path.display())
    }
}

// ---- raw file shapes (exactly upstream's keys plus ours; anything else is an error) ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    runner: RawRunner,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    workflows: RawWorkflows,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    callbacks: RawCallbacks,
    #[serde(default)]
    resume: RawResume,
    #[serde(rename = "scriptsFile")]
    scripts_file: Option<String>,
    scripts: Option<Vec<Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServer {
    host: Option<String>,
    port: Option<u16>,
    auth_token: Option<String>,
    max_streams: Option<usize>,
    stream_heartbeat_sec: Option<u64>,
    base_path: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRunner {
    max_concurrent: Option<usize>,
    max_queued: Option<usize>,
    default_mode: Option<Mode>,
    max_log_bytes_per_stream: Option<u64>,
    preview_max_bytes: Option<usize>,
    job_store_file: Option<String>,
    logs_dir: Option<String>,
    kill_grace_sec: Option<u64>,
    shutdown_grace_sec: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawWorkflows {
    #[serde(default)]
    interpreters: BTreeMap<String, Vec<String>>,
    park_after_sec: Option<u64>,
    max_steps: Option<u64>,
    max_script_steps: Option<u64>,
    max_wall_ms: Option<u64>,
    max_result_bytes: Option<u64>,
    flows_dir: Option<String>,
}

/// What a `scripts.json` entry is.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Script,
    Workflow,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCluster {
    node_id: Option<String>,
    advertise: Option<String>,
    lease_sec: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMetrics {
    public: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCallbacks {
    secret: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    max_age_sec: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawResume {
    secret: Option<String>,
    ttl_sec: Option<u64>,
    base_url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDatabase {
    url: Option<String>,
    pool_size: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScriptsFile {
    scripts: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawScript {
    id: String,
    kind: Option<Kind>,
    path: String,
    mode: Option<Mode>,
    timeout_sec: Option<u64>,
    #[serde(default)]
    args: RawArgs,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    description: Option<String>,
    concurrency: Option<usize>,
    interpreter: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawArgs {
    max_items: Option<usize>,
    item_pattern: Option<String>,
    item_max_length: Option<usize>,
}

/// Upper bound on `maxConcurrent`: a running job holds no thread (it is supervised on the async
/// runtime), but each holds a process, two pipes and two log files: the bound keeps a typo from
/// exhausting the machine.
const MAX_CONCURRENT_LIMIT: usize = 1024;
/// Largest `server.maxStreams`: each open stream holds a connection and a file descriptor.
const MAX_STREAMS_LIMIT: usize = 65536;

/// Loads and validates `config.json` and the scripts it names.
///
/// Relative paths in `config.json` resolve against its folder, script paths against the
/// scripts file's folder, as upstream does.
pub fn load(config_file: &Path) -> Result<Config, ConfigError> {
    let config_file = absolute(config_file);
    let raw: RawConfig = parse_file(&config_file)?;
    let base = parent_dir(&config_file);

    let max_streams = raw.server.max_streams.unwrap_or(crate::http::sse::DEFAULT_MAX_STREAMS);
    if !(1..=MAX_STREAMS_LIMIT).contains(&max_streams) {
        return Err(ConfigError::new(
            &config_file,
            format!("server.maxStreams: must be between 1 and {MAX_STREAMS_LIMIT}"),
        ));
    }
    let heartbeat_sec = raw.server.stream_heartbeat_sec.unwrap_or(crate::http::sse::DEFAULT_HEARTBEAT_SEC);
    if !(1..=300).contains(&heartbeat_sec) {
        return Err(ConfigError::new(&config_file, "server.streamHeartbeatSec: must be between 1 and 300"));
    }
    let base_path = raw.server.base_path.unwrap_or_default();
    if !valid_base_path(&base_path) {
        return Err(ConfigError::new(
            &config_file,
            "server.basePath: must start with '/', not end with '/', and hold only letters, digits, \
             '-', '_', '.', '~' and '/' between non-empty segments (e.g. \"/sr\")",
        ));
    }
    let server = ServerConfig {
        host: raw.server.host.unwrap_or_else(|| "127.0.0.1".to_string()),
        port: raw.server.port.unwrap_or(8080),
        auth_token: raw.server.auth_token.filter(|t| !t.is_empty()),
        max_streams,
        stream_heartbeat: std::time::Duration::from_secs(heartbeat_sec),
        base_path,
    };

    let r = raw.runner;
    let max_concurrent = r.max_concurrent.unwrap_or(4);
    if max_concurrent == 0 || max_concurrent > MAX_CONCURRENT_LIMIT {
        return Err(ConfigError::new(
            &config_file,
            format!("runner.maxConcurrent: must be between 1 and {MAX_CONCURRENT_LIMIT}, got {max_concurrent}"),
        ));
    }
    let job_store_file = base.join(r.job_store_file.as_deref().unwrap_or("./jobs.json"));
    let logs_dir = match r.logs_dir {
        Some(dir) => base.join(dir),
        None => parent_dir(&job_store_file).join("logs"),
    };
    let runner = RunnerConfig {
        max_concurrent,
        max_queued: r.max_queued.unwrap_or(1000),
        default_mode: r.default_mode.unwrap_or(Mode::Sync),
        max_log_bytes_per_stream: r.max_log_bytes_per_stream.unwrap_or(1024 * 1024),
        preview_max_bytes: r.preview_max_bytes.unwrap_or(4096),
        job_store_file: normalize(&job_store_file),
        logs_dir: normalize(&logs_dir),
        kill_grace_sec: r.kill_grace_sec.unwrap_or(5),
        shutdown_grace_sec: r.shutdown_grace_sec.unwrap_or(10),
    };

    let database = database_config(&config_file, &base, raw.database)?;
    let cluster = cluster_config(&config_file, raw.cluster)?;
    let metrics = MetricsConfig { public: raw.metrics.public.unwrap_or(false) };
    let callbacks = CallbacksConfig {
        secret: raw.callbacks.secret.filter(|s| !s.is_empty()),
        allowed_hosts: raw
            .callbacks
            .allowed_hosts
            .unwrap_or_else(|| ["127.0.0.1", "::1", "localhost"].into_iter().map(String::from).collect()),
        max_age_sec: raw.callbacks.max_age_sec.unwrap_or(3600),
    };

    let resume = resume_config(&config_file, raw.resume)?;

    let (scripts_file, raw_scripts) = match (raw.scripts_file, raw.scripts) {
        (Some(file), _) => {
            let path = normalize(&base.join(file));
            let parsed: RawScriptsFile = parse_file(&path)?;
            (path, parsed.scripts)
        }
        (None, Some(inline)) => (config_file.clone(), inline),
        (None, None) => {
            let path = base.join("scripts.json");
            if !path.exists() {
                return Err(ConfigError::new(&config_file, "no scripts: set \"scriptsFile\" or a \"scripts\" array"));
            }
            let parsed: RawScriptsFile = parse_file(&path)?;
            (path, parsed.scripts)
        }
    };
    let (scripts, catalog) = validate_scripts(&scripts_file, raw_scripts, runner.max_concurrent)?;
    let workflows = workflow_config(&config_file, &base, raw.workflows, catalog)?;

    Ok(Config {
        config_file,
        scripts_file,
        server,
        runner,
        database,
        cluster,
        scripts,
        workflows,
        metrics,
        callbacks,
        resume,
    })
}

/// The `resume` section, checked: `ttlSec` from 1 s (short ones are for tests) to a year,
/// `baseUrl` an `http://` or `https://` address without a query or fragment.
fn resume_config(config_file: &Path, raw: RawResume) -> Result<ResumeConfig, ConfigError> {
    let ttl_sec = raw.ttl_sec.unwrap_or(DEFAULT_RESUME_TTL_SEC);
    if !(1..=MAX_RESUME_TTL_SEC).contains(&ttl_sec) {
        return Err(ConfigError::new(config_file, format!("resume.ttlSec: must be 1 to {MAX_RESUME_TTL_SEC}")));
    }
    let base_url = match raw.base_url.filter(|u| !u.is_empty()) {
        None => None,
        Some(url) => {
            let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
            if rest.map_or(true, |r| r.is_empty() || r.contains(['?', '#', ' '])) || url.len() > 2048 {
                return Err(ConfigError::new(
                    config_file,
                    "resume.baseUrl: must be an http:// or https:// address (at most 2048 bytes, no query)",
                ));
            }
            Some(url.trim_end_matches('/').to_string())
        }
    };
    Ok(ResumeConfig { secret: raw.secret.filter(|s| !s.is_empty()), ttl_sec, base_url })
}

/// The `cluster` section, checked.
fn cluster_config(config_file: &Path, raw: RawCluster) -> Result<ClusterConfig, ConfigError> {
    let lease_sec = raw.lease_sec.unwrap_or(DEFAULT_LEASE_SEC);
    if !(1..=300).contains(&lease_sec) {
        return Err(ConfigError::new(config_file, "cluster.leaseSec: must be 1 to 300"));
    }
    if let Some(id) = &raw.node_id {
        let fits = !id.is_empty()
            && id.len() <= 100
            && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
        if !fits {
            return Err(ConfigError::new(
                config_file,
                "cluster.nodeId: 1 to 100 letters, digits, '.', '_', '-' or ':'",
            ));
        }
    }
    if let Some(address) = &raw.advertise {
        let bare = address.strip_prefix("http://").unwrap_or(address).trim_end_matches('/');
        let valid = bare
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !valid || bare.contains('/') {
            return Err(ConfigError::new(config_file, "cluster.advertise: must be host:port or http://host:port"));
        }
    }
    Ok(ClusterConfig { node_id: raw.node_id, advertise: raw.advertise, lease_sec })
}

/// Whether `path` can be `server.basePath`: empty, or `/segment(/segment)*` of URL-safe
/// characters (nothing a URL would escape, so the prefix compares byte for byte with a request's
/// path).
fn valid_base_path(path: &str) -> bool {
    path.is_empty()
        || path.strip_prefix('/').is_some_and(|rest| {
            rest.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
            })
        })
}

/// The database: `DATABASE_URL` wins over `database.url`, which wins over the default file.
fn database_config(config_file: &Path, base: &Path, raw: RawDatabase) -> Result<DatabaseConfig, ConfigError> {
    let from_env = std::env::var("DATABASE_URL").ok().filter(|url| !url.trim().is_empty());
    let url = from_env.or(raw.url).unwrap_or_else(|| crate::db::Location::default_url(base));
    let location = crate::db::Location::parse(&url, base)
        .map_err(|e| ConfigError::new(config_file, format!("database.url: {e}")))?;
    let location = location.map_file(normalize);
    let pool_size = raw.pool_size.unwrap_or(crate::db::DEFAULT_POOL_SIZE);
    if !(1..=crate::db::MAX_POOL_SIZE).contains(&pool_size) {
        let max = crate::db::MAX_POOL_SIZE;
        return Err(ConfigError::new(config_file, format!("database.poolSize: must be 1 to {max}")));
    }
    Ok(DatabaseConfig { location, url, pool_size })
}

/// Guardrails come from `config.json`, else from their environment variable, else the default.
fn workflow_config(
    file: &Path,
    base: &Path,
    raw: RawWorkflows,
    catalog: Vec<Arc<Script>>,
) -> Result<WorkflowConfig, ConfigError> {
    for (name, argv) in &raw.interpreters {
        let key = format!("workflows.interpreters.{name}");
        check_interpreter_argv(argv).map_err(|m| ConfigError::new(file, format!("{key}: {m}")))?;
    }
    let limit = |value: Option<u64>, var: &str, key: &str, default: u64| -> Result<u64, ConfigError> {
        let n = match value {
            Some(n) => n,
            None => match std::env::var(var) {
                Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                    ConfigError::new(file, format!("{key}: environment variable {var}={text:?} is not a number"))
                })?,
                Err(_) => default,
            },
        };
        if n == 0 {
            return Err(ConfigError::new(file, format!("{key} ({var}): must be at least 1")));
        }
        Ok(n)
    };
    Ok(WorkflowConfig {
        flows_dir: normalize(&base.join(raw.flows_dir.as_deref().unwrap_or("./flows"))),
        catalog,
        interpreters: raw.interpreters,
        park_after_sec: raw.park_after_sec.unwrap_or(60),
        max_steps: limit(raw.max_steps, "SCRIPT_RUN_MAX_STEPS", "workflows.maxSteps", 1000)?,
        max_script_steps: limit(raw.max_script_steps, "SCRIPT_RUN_MAX_SCRIPT_STEPS", "workflows.maxScriptSteps", 50)?,
        max_wall_ms: limit(raw.max_wall_ms, "SCRIPT_RUN_MAX_WALL_MS", "workflows.maxWallMs", 86_400_000)?,
        max_result_bytes: limit(
            raw.max_result_bytes,
            "SCRIPT_RUN_MAX_RESULT_BYTES",
            "workflows.maxResultBytes",
            1024 * 1024,
        )?,
    })
}

/// Scripts and workflows (`"kind": "workflow"`), each in file order; ids are unique across both.
type Catalogs = (Vec<Arc<Script>>, Vec<Arc<Script>>);

/// A script's `concurrency` must be 1 to `runner.maxConcurrent` (`max_concurrent`): 0 would
/// never run it, and a limit above the server's own could never be reached (a typo, then).
fn validate_scripts(file: &Path, raw: Vec<Value>, max_concurrent: usize) -> Result<Catalogs, ConfigError> {
    let base = parent_dir(file);
    let mut seen = HashSet::new();
    let mut scripts = Vec::with_capacity(raw.len());
    let mut workflows = Vec::new();
    for (index, value) in raw.into_iter().enumerate() {
        // Name the script by id when it has one, by position otherwise.
        let label = value.get("id").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| format!("#{index}"));
        let rs: RawScript = serde_path_to_error::deserialize(value)
            .map_err(|e| ConfigError::in_script(file, &label, describe_serde(&e)))?;
        if rs.id.is_empty() {
            return Err(ConfigError::in_script(file, &label, "id: must not be empty"));
        }
        if !seen.insert(rs.id.clone()) {
            return Err(ConfigError::in_script(file, &rs.id, "id: duplicate id"));
        }
        let path = normalize(&base.join(&rs.path));
        match &rs.interpreter {
            // A file an interpreter reads need not be executable.
            Some(argv) => {
                if rs.kind != Some(Kind::Workflow) {
                    return Err(ConfigError::in_script(
                        file,
                        &rs.id,
                        "interpreter: only a workflow has one (a script is executed itself)",
                    ));
                }
                check_interpreter_argv(argv)
                    .map_err(|m| ConfigError::in_script(file, &rs.id, format!("interpreter: {m}")))?;
                check_readable(&path).map_err(|m| ConfigError::in_script(file, &rs.id, format!("path: {m}")))?;
            }
            None => check_executable(&path).map_err(|m| ConfigError::in_script(file, &rs.id, format!("path: {m}")))?,
        }
        let pattern = rs.args.item_pattern.as_deref().unwrap_or(r"^[\s\S]*$");
        let item_pattern = Regex::new(pattern)
            .map_err(|e| ConfigError::in_script(file, &rs.id, format!("args.itemPattern: invalid regex: {e}")))?;
        let cwd = match &rs.cwd {
            Some(dir) => {
                let dir = normalize(&base.join(dir));
                if !dir.is_dir() {
                    return Err(ConfigError::in_script(
                        file,
                        &rs.id,
                        format!("cwd: {} is not a directory", dir.display()),
                    ));
                }
                dir
            }
            None => parent_dir(&path),
        };
        if let Some(key) = rs.env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
            return Err(ConfigError::in_script(file, &rs.id, format!("env: invalid variable name {key:?}")));
        }
        if let Some(key) = rs.env.iter().find_map(|(k, v)| v.contains('\0').then_some(k)) {
            return Err(ConfigError::in_script(
                file,
                &rs.id,
                format!("env: the value of {key:?} contains a NUL character"),
            ));
        }
        if let Some(n) = rs.concurrency {
            if rs.kind == Some(Kind::Workflow) {
                return Err(ConfigError::in_script(
                    file,
                    &rs.id,
                    "concurrency: only a script has one (a workflow's script steps follow their scripts' limits)",
                ));
            }
            if !(1..=max_concurrent).contains(&n) {
                return Err(ConfigError::in_script(
                    file,
                    &rs.id,
                    format!("concurrency: must be between 1 and runner.maxConcurrent ({max_concurrent}), got {n}"),
                ));
            }
        }
        let catalog = if rs.kind == Some(Kind::Workflow) { &mut workflows } else { &mut scripts };
        catalog.push(Arc::new(Script {
            id: rs.id,
            path,
            mode: rs.mode,
            timeout_sec: rs.timeout_sec.unwrap_or(0),
            args: ArgRules {
                max_items: rs.args.max_items.unwrap_or(10),
                item_pattern,
                item_max_length: rs.args.item_max_length.unwrap_or(1024),
            },
            env: rs.env,
            cwd,
            description: rs.description,
            concurrency: rs.concurrency,
            interpreter: rs.interpreter,
        }));
    }
    Ok((scripts, workflows))
}

/// An interpreter argv (`workflows.interpreters.*`, a workflow's `interpreter`): a program
/// given by absolute path (it is executed directly, never looked up), then its arguments.
fn check_interpreter_argv(argv: &[String]) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Err("must name a program, e.g. [\"/bin/bash\"]".into());
    };
    if !Path::new(program).is_absolute() {
        return Err(format!("{program} must be an absolute path"));
    }
    check_executable(Path::new(program))
}

/// A file the workflow's interpreter reads.
fn check_readable(path: &Path) -> Result<(), String> {
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not executable (chmod +x it)", path.display()));
    }
    Ok(())
}

fn parse_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError::new(path, describe_serde(&e)))
}

fn describe_serde(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.inner().to_string();
    if path == "." || path.is_empty() {
        inner
    } else {
        format!("{path}: {inner}")
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn parent_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Removes `.` components and resolves `..` lexically, so paths read well in messages.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in absolute(path).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Where the config file is when none is named: `CONFIG_FILE`, then `./config.json`.
pub fn default_config_path() -> PathBuf {
    std::env::var_os("CONFIG_FILE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("config.json"))
}
