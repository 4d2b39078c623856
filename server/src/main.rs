//! The `script-runner` command: `serve` (the default), `check-config`, `step` (the step client a
//! workflow process calls), `migrate-db` (a history moved to another database), and `openapi`
//! (the API's OpenAPI document).

mod flow_cli;
mod step;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use script_runner::config;

/// Runs whitelisted scripts over HTTP.
#[derive(Parser)]
#[command(name = "script-runner", version, about)]
struct Cli {
    /// config.json to use (default: $CONFIG_FILE, then ./config.json).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (what running without a command does).
    Serve,
    /// Validate config.json and its scripts, print the scripts, exit non-zero on error.
    CheckConfig,
    /// Run one durable step of the workflow run this process belongs to (see `step --help`).
    Step(Box<StepArgs>),
    /// Run an OOMOL flow (`flow run <flow.oo.yaml>`).
    #[command(subcommand)]
    Flow(FlowCommand),
    /// Run one OOMOL block (`blocks/<name>/block.oo.yaml`): with `--inputs`, print its outputs
    /// as JSON; with `--address`, `--session-id` and `--job-id` (what OOMOL's engine appends),
    /// run as the engine's worker over MQTT.
    Block(BlockArgs),
    /// Copy the whole history (jobs, imports, workflow runs, their journal and events) into another,
    /// empty database, e.g. `--from sqlite:///var/lib/sr/script-runner.db --to
    /// postgres://user:pass@host:5432/sr`; no server may be running on either. Log files stay
    /// where they are (`runner.logsDir`).
    MigrateDb(MigrateDbArgs),
    /// Print the OpenAPI 3.1 document of the HTTP API (what `GET /openapi.json` serves) and
    /// exit; needs no configuration or database.
    Openapi,
}

/// `script-runner migrate-db --from <url> --to <url>`.
#[derive(Args, Debug)]
pub struct MigrateDbArgs {
    /// The database to copy from: sqlite://<path> (relative to the current folder) or
    /// postgres://user:pass@host:port/db.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The database to copy into (created or migrated as needed; it must hold no history).
    #[arg(long, value_name = "URL")]
    to: String,
}

/// `script-runner block ...`.
#[derive(Args, Debug)]
pub struct BlockArgs {
    /// The block's name (e.g. run-script-async); `--list` shows them all.
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// The inputs, a JSON object keyed by input handle.
    #[arg(long, default_value = "{}", conflicts_with = "address")]
    inputs: String,
    /// List the blocks.
    #[arg(long)]
    list: bool,
    /// The engine's MQTT broker, host:port: run as an OOMOL worker.
    #[arg(long, requires_all = ["session_id", "job_id"])]
    address: Option<String>,
    /// The engine's session id (with --address).
    #[arg(long, requires = "address")]
    session_id: Option<String>,
    /// The engine's job id (with --address).
    #[arg(long, requires = "address")]
    job_id: Option<String>,
}

/// `script-runner flow ...`.
#[derive(Subcommand)]
enum FlowCommand {
    /// Check and run a flow file: one JSON event per line, then the outputs; exit 0 on success.
    Run(flow_cli::FlowRun),
}

/// `script-runner step <label> ...`: one durable step, journaled by its label.
///
/// Kinds: `-- <cmd> [args]` (a local command), `--script <id> [args]` (a configured script as
/// a server-side job), `--value '<json>'`, `--value-from -- <cmd>`, `--sleep <duration>`,
/// `--approval "<message>"`, `--input "<prompt>" [--schema '<json schema>']` (prints the value
/// submitted, as JSON), `--wait-event <name> [--timeout <duration>]` (prints the event's payload,
/// as JSON; exits 1 when it timed out). Command and `--script` steps take `--retry N
/// [--backoff 1s[:1m]]` and `--timeout <duration>`. `--progress N/M ["message"]` reports progress (with or without a
/// step). Exit status: the command's (or job's) exit code; 0 approved / 1 denied; 2 for a usage
/// error; 3 when the step could not be run (server error, diverged replay, guardrail).
#[derive(Args, Debug)]
#[command(trailing_var_arg = false)]
pub struct StepArgs {
    /// The step's label: its durability key within the run.
    label: Option<String>,
    /// Arguments of a `--script` step.
    script_args: Vec<String>,
    /// Run this configured script as a server-side job.
    #[arg(long, value_name = "SCRIPT_ID")]
    script: Option<String>,
    /// Record this JSON value once.
    #[arg(long, value_name = "JSON")]
    value: Option<String>,
    /// Record the output of the command after `--` once (JSON if it parses, else the text).
    #[arg(long)]
    value_from: bool,
    /// Sleep durably (e.g. 500ms, 10s, 5m, 1h; a bare number is seconds).
    #[arg(long, value_name = "DURATION")]
    sleep: Option<String>,
    /// Wait for a human decision with this message.
    #[arg(long, value_name = "MESSAGE")]
    approval: Option<String>,
    /// Wait for a value from outside the run with this prompt; prints it as JSON.
    #[arg(long, value_name = "PROMPT")]
    input: Option<String>,
    /// Wait for the event with this name (`POST /api/script-runs/{id}/events/{name}`); prints its
    /// payload as JSON.
    #[arg(long, value_name = "NAME")]
    wait_event: Option<String>,
    /// How long a `--wait-event` step waits before it fails (e.g. 30s, 2h; none: for ever); on
    /// a command or `--script` step, how long each try may run before it is stopped and fails.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Try a failing command or `--script` step again, up to N more times (1 to 100).
    #[arg(long, value_name = "N")]
    retry: Option<String>,
    /// The wait before the first retry, doubled each retry, and optionally its cap:
    /// `1s` or `1s:1m` (default `1s:1m`).
    #[arg(long, value_name = "FIRST[:MAX]")]
    backoff: Option<String>,
    /// The JSON schema an `--input` value must match.
    #[arg(long, value_name = "JSON_SCHEMA")]
    schema: Option<String>,
    /// Report progress: current/total and an optional message.
    #[arg(long, num_args = 1..=2, value_names = ["N/M", "MESSAGE"])]
    progress: Option<Vec<String>>,
    /// The command of a command step (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Step(args) => step::run(*args),
        Command::Block(args) => block(args),
        Command::Flow(FlowCommand::Run(opts)) => flow_cli::run(opts),
        Command::CheckConfig => with_config(cli.config, check_config),
        Command::Serve => exit_at_once(with_config(cli.config, serve)),
        Command::MigrateDb(args) => exit_at_once(migrate_db(&args)),
        Command::Openapi => {
            println!("{}", script_runner::http::openapi::json());
            ExitCode::SUCCESS
        }
    }
}

/// Ends the process with `code` without running the C library's exit handlers. The commands
/// that use the database leave threads behind that may be inside libpq when `main` returns (the
/// pool opening a connection, the advisory lock's keeper, the writer's lanes): OpenSSL's exit
/// handler (libpq links it) frees what such a thread is using, and about 1 exit in 10 ended in
/// SIGSEGV instead of its exit code. Everything worth keeping is committed or written by then;
/// stdout and stderr are flushed here.
#[allow(unsafe_code, reason = "_exit: the one way to end a process without the C library's exit handlers")]
fn exit_at_once(code: u8) -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit only ends the process; nothing of this process runs after it.
    unsafe { libc::_exit(i32::from(code)) }
}

/// `script-runner migrate-db`: one summary line on stdout; on failure one line on stderr, exit 2
/// for a URL that names no database, 1 otherwise. No password is ever printed.
fn migrate_db(args: &MigrateDbArgs) -> u8 {
    use script_runner::db::{copy_history, Location};
    let base = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("script-runner migrate-db: cannot read the current folder: {e}");
            return 1;
        }
    };
    let parse = |flag: &str, url: &str| {
        Location::parse(url, &base).map_err(|e| eprintln!("script-runner migrate-db: {flag}: {e}"))
    };
    let Ok(from) = parse("--from", &args.from) else { return 2 };
    let Ok(to) = parse("--to", &args.to) else { return 2 };
    match copy_history(&from, &to) {
        Ok(copied) => {
            println!(
                "copied {} jobs, {} imports, {} runs, {} journal entries, {} run events, {} callbacks, {} used resume URLs \
                 from {from} to {to}",
                copied.jobs,
                copied.imports,
                copied.runs,
                copied.journal,
                copied.events,
                copied.callbacks,
                copied.resume_tokens
            );
            0
        }
        Err(e) => {
            eprintln!("script-runner migrate-db: {e}");
            1
        }
    }
}

/// Loads the configuration (`--config`, else the default path) and runs `command` on it; exit 2
/// when it is invalid.
fn with_config<T: From<u8>>(path: Option<PathBuf>, command: impl FnOnce(config::Config) -> T) -> T {
    let path = path.unwrap_or_else(config::default_config_path);
    match config::load(&path) {
        Ok(config) => command(config),
        Err(e) => {
            eprintln!("script-runner: invalid configuration: {e}");
            T::from(2)
        }
    }
}

/// `script-runner serve`: serves the HTTP API until it is stopped.
fn serve(config: config::Config) -> u8 {
    match script_runner::server::serve(config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("script-runner: {e:#}");
            1
        }
    }
}

/// `script-runner check-config`: prints what the configuration holds.
fn check_config(config: config::Config) -> ExitCode {
    println!("{}: ok", config.config_file.display());
    println!("scripts from {}:", config.scripts_file.display());
    for script in &config.scripts {
        let mode = script.effective_mode(config.runner.default_mode).as_str();
        let concurrency = script.concurrency.map(|n| format!(", concurrency {n}")).unwrap_or_default();
        println!("  {script} ({mode}, timeoutSec {}{concurrency})", script.timeout_sec);
    }
    if !config.workflows.catalog.is_empty() {
        println!("workflows:");
        for workflow in &config.workflows.catalog {
            println!("  {workflow}");
        }
    }
    let interpreters: Vec<_> = config.workflows.interpreters.keys().map(String::as_str).collect();
    match interpreters.is_empty() {
        true => println!("inline workflow sources: disabled"),
        false => println!("inline workflow sources: {}", interpreters.join(", ")),
    }
    ExitCode::SUCCESS
}

/// `script-runner block <name> --inputs '<json>'`: outputs as JSON on stdout; on failure the
/// error on stderr and exit 1 (2 for unusable inputs). As a worker (`--address`): exit 0 once
/// the engine has been told the block finished (with its outputs or its error), 1 when its
/// broker cannot be reached.
fn block(args: BlockArgs) -> ExitCode {
    let BlockArgs { name, inputs, list, address, session_id, job_id } = args;
    if let (Some(address), Some(session_id), Some(job_id)) = (address, session_id, job_id) {
        let name = name.unwrap_or_default();
        let engine = script_runner_blocks::worker::Engine { address, session_id, job_id };
        return match script_runner_blocks::worker::serve(&name, &engine) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("script-runner block {name}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let inputs = inputs.as_str();
    if list {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for (name, _) in script_runner_blocks::BLOCKS {
            let title = script_runner_blocks::manifest(name).ok().and_then(|m| m.title).unwrap_or_default();
            // A closed pipe (`| head`) ends the listing quietly.
            if writeln!(out, "{name:<20} {title}").is_err() {
                break;
            }
        }
        return ExitCode::SUCCESS;
    }
    let name = name.unwrap_or_default();
    let inputs = match serde_json::from_str::<serde_json::Value>(inputs) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(_) => {
            eprintln!("script-runner block {name}: --inputs must be a JSON object");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("script-runner block {name}: --inputs is not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    match script_runner_blocks::run_block(&name, &inputs) {
        Ok(outputs) => {
            println!("{}", serde_json::Value::Object(outputs));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("script-runner block {name}: {e}");
            let usage = matches!(
                e,
                script_runner_blocks::BlockError::Input { .. } | script_runner_blocks::BlockError::UnknownBlock(_)
            );
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
