//! The `script-runner` command: `serve` (the default) and `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let path = cli.config.unwrap_or_else(config::default_config_path);
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("script-runner: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{}: ok", config.config_file.display());
            println!("scripts from {}:", config.scripts_file.display());
            for script in &config.scripts {
                let mode = script.effective_mode(config.runner.default_mode).as_str();
                println!("  {script} ({mode}, timeoutSec {})", script.timeout_sec);
            }
            ExitCode::SUCCESS
        }
        Command::Serve => match script_runner::server::serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("script-runner: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
