//! `script-runner step`: the step client as a command, for workflows in any language.

use std::process::ExitCode;
use std::time::Duration;

use script_runner_client::{ClientError, ScriptResult, StepOptions, Workflow};
use script_runner_wire::steps::{step_key, STEP_KEY_ENV};
use serde_json::Value;

use crate::StepArgs;

/// Exit status for a usage error.
const USAGE: u8 = 2;
/// Exit status when the step could not be run (server error, divergence, guardrail).
const NOT_RUN: u8 = 3;

enum Kind {
    Command(Vec<String>, StepOptions),
    Script(String, Vec<String>, StepOptions),
    Value(Value),
    ValueFrom(Vec<String>),
    Sleep(Duration),
    Approval(String),
    Input(String, Option<Value>),
    Event(String, Option<Duration>),
    ProgressOnly,
}

/// Runs the step described by the arguments and exits as documented on [`StepArgs`].
pub fn run(args: StepArgs) -> ExitCode {
    match execute(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("script-runner step: {e}");
            ExitCode::from(NOT_RUN)
        }
    }
}

fn usage(message: impl std::fmt::Display) -> Result<ExitCode, ClientError> {
    eprintln!("script-runner step: {message}");
    Ok(ExitCode::from(USAGE))
}

fn execute(args: StepArgs) -> Result<ExitCode, ClientError> {
    let kind = match kind(&args) {
        Ok(kind) => kind,
        Err(message) => return usage(message),
    };
    let wf = Workflow::from_env()?;
    if let Some(progress) = &args.progress {
        let (current, total) = match parse_progress(&progress[0]) {
            Some(p) => p,
            None => return usage(format!("--progress {:?}: expected N/M, e.g. 3/10", progress[0])),
        };
        wf.progress(current, total, progress.get(1).map(String::as_str))?;
    }
    let label = args.label.as_deref().unwrap_or_default();
    match kind {
        Kind::ProgressOnly => Ok(ExitCode::SUCCESS),
        Kind::Command(argv, options) => {
            let result = wf.command_with(label, &argv, &options)?;
            print!("{}", result.stdout);
            eprint!("{}", result.stderr);
            Ok(exit_code(i64::from(result.exit_code)))
        }
        Kind::Script(id, script_args, options) => match wf.script_with(label, &id, &script_args, &options) {
            Ok(result) => {
                print!("{}", result.stdout);
                eprint!("{}", result.stderr);
                Ok(exit_code(result.exit_code.unwrap_or(0)))
            }
            Err(ClientError::StepFailed { message, result, .. }) => {
                let result = ScriptResult::from_result(&result);
                print!("{}", result.stdout);
                eprint!("{}", result.stderr);
                eprintln!("script-runner step: {label}: {message}");
                // A failed step never exits 0: its job's code if positive, else 1.
                Ok(exit_code(result.exit_code.filter(|c| *c > 0).unwrap_or(1)))
            }
            Err(e) => Err(e),
        },
        Kind::Value(value) => {
            let stored = wf.value(label, value)?;
            println!("{stored}");
            Ok(ExitCode::SUCCESS)
        }
        Kind::ValueFrom(argv) => {
            let key = step_key(wf.run_id(), label);
            let stored: Value = wf.step(label, || value_from(&argv, &key))?;
            println!("{}", stored.as_str().map_or_else(|| stored.to_string(), str::to_string));
            Ok(ExitCode::SUCCESS)
        }
        Kind::Sleep(duration) => {
            wf.sleep(label, duration)?;
            Ok(ExitCode::SUCCESS)
        }
        Kind::Approval(message) => {
            let decision = wf.approval(label, &message)?;
            let shown = serde_json::json!({
                "approved": decision.approved, "by": decision.by, "comment": decision.comment,
            });
            println!("{shown}");
            Ok(if decision.approved { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Kind::Event(name, timeout) => match wf.wait_event(label, &name, timeout) {
            Ok(payload) => {
                println!("{payload}");
                Ok(ExitCode::SUCCESS)
            }
            Err(ClientError::StepFailed { message, .. }) => {
                eprintln!("script-runner step: {label}: {message}");
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e),
        },
        Kind::Input(prompt, schema) => match wf.input(label, &prompt, schema.as_ref()) {
            Ok(value) => {
                println!("{value}");
                Ok(ExitCode::SUCCESS)
            }
            // Denied through its resume URL.
            Err(ClientError::StepFailed { message, .. }) => {
                eprintln!("script-runner step: {label}: {message}");
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e),
        },
    }
}

fn kind(args: &StepArgs) -> Result<Kind, String> {
    let mut kinds = Vec::new();
    if args.script.is_some() {
        kinds.push("--script");
    }
    if args.value.is_some() {
        kinds.push("--value");
    }
    if args.value_from {
        kinds.push("--value-from");
    }
    if args.sleep.is_some() {
        kinds.push("--sleep");
    }
    if args.approval.is_some() {
        kinds.push("--approval");
    }
    if args.input.is_some() {
        kinds.push("--input");
    }
    if args.wait_event.is_some() {
        kinds.push("--wait-event");
    }
    let runs_something = args.script.is_some() || (kinds.is_empty() && !args.command.is_empty());
    if args.timeout.is_some() && args.wait_event.is_none() && !runs_something {
        return Err("--timeout goes with a command step, --script or --wait-event".into());
    }
    if (args.retry.is_some() || args.backoff.is_some()) && !runs_something {
        return Err("--retry and --backoff go with a command step or --script".into());
    }
    if args.backoff.is_some() && args.retry.is_none() {
        return Err("--backoff goes with --retry".into());
    }
    if args.schema.is_some() && args.input.is_none() {
        return Err("--schema goes with --input".into());
    }
    if kinds.len() > 1 {
        return Err(format!("one step kind at a time, got {}", kinds.join(" and ")));
    }
    if args.script.is_none() && !args.script_args.is_empty() {
        return Err(format!("unexpected argument {:?}; put a command after --", args.script_args[0]));
    }
    let label = args.label.as_deref().unwrap_or_default();
    if label.is_empty() {
        if args.progress.is_some() && kinds.is_empty() && args.command.is_empty() {
            return Ok(Kind::ProgressOnly);
        }
        return Err("a step needs a label: script-runner step <label> -- <cmd> [args]".into());
    }
    let kind = match (kinds.first().copied(), args.command.is_empty()) {
        (Some("--script"), true) => {
            Kind::Script(args.script.clone().unwrap_or_default(), args.script_args.clone(), step_options(args)?)
        }
        (Some("--value"), true) => {
            let text = args.value.as_deref().unwrap_or_default();
            Kind::Value(serde_json::from_str(text).map_err(|e| format!("--value is not JSON: {e}"))?)
        }
        (Some("--value-from"), false) => Kind::ValueFrom(args.command.clone()),
        (Some("--value-from"), true) => return Err("--value-from needs a command after --".into()),
        (Some("--sleep"), true) => Kind::Sleep(parse_duration(args.sleep.as_deref().unwrap_or_default())?),
        (Some("--approval"), true) => Kind::Approval(args.approval.clone().unwrap_or_default()),
        (Some("--wait-event"), true) => {
            let timeout = match args.timeout.as_deref() {
                Some(text) => Some(parse_duration(text)?),
                None => None,
            };
            Kind::Event(args.wait_event.clone().unwrap_or_default(), timeout)
        }
        (Some("--input"), true) => {
            let schema = match args.schema.as_deref() {
                Some(text) => Some(serde_json::from_str(text).map_err(|e| format!("--schema is not JSON: {e}"))?),
                None => None,
            };
            Kind::Input(args.input.clone().unwrap_or_default(), schema)
        }
        (Some(other), false) => return Err(format!("{other} takes no command after --")),
        (None, false) => Kind::Command(args.command.clone(), step_options(args)?),
        (None, true) if args.progress.is_some() => Kind::ProgressOnly,
        (None, true) | (Some(_), true) => return Err(
            "what should the step do? give -- <cmd>, --script, --value, --sleep, --approval, --input or --wait-event"
                .into(),
        ),
    };
    Ok(kind)
}

/// Most retries of a step (the server's bound too).
const MAX_RETRIES: u32 = 100;
/// Longest backoff, backoff cap or time-out of a step (the server's bound too): a day.
const MAX_STEP_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `--retry N`, `--backoff FIRST[:MAX]` and `--timeout` of a command or script step.
fn step_options(args: &StepArgs) -> Result<StepOptions, String> {
    let bounded = |flag: &str, text: &str| -> Result<Duration, String> {
        let d = parse_duration(text).map_err(|e| format!("{flag}: {e}"))?;
        if d < Duration::from_millis(1) || d > MAX_STEP_DURATION {
            return Err(format!("{flag} {text:?}: must be from 1ms to 24h"));
        }
        Ok(d)
    };
    let mut options = StepOptions::default();
    if let Some(text) = &args.retry {
        options.retry = text
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_RETRIES).contains(n))
            .ok_or_else(|| format!("--retry {text:?}: expected a whole number from 1 to {MAX_RETRIES}"))?;
    }
    if let Some(text) = &args.backoff {
        let (first, max) = match text.split_once(':') {
            Some((first, max)) => (first, Some(max.trim_start_matches("max").trim())),
            None => (text.as_str(), None),
        };
        options.backoff = Some(bounded("--backoff", first)?);
        if let Some(max) = max {
            let max = bounded("--backoff max", max)?;
            if Some(max) < options.backoff {
                return Err(format!("--backoff {text:?}: the cap is below the first wait"));
            }
            options.backoff_max = Some(max);
        }
    }
    if let Some(text) = &args.timeout {
        options.timeout = Some(bounded("--timeout", text)?);
    }
    Ok(options)
}

fn parse_progress(text: &str) -> Option<(u64, u64)> {
    let (current, total) = text.split_once('/')?;
    Some((current.trim().parse().ok()?, total.trim().parse().ok()?))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is no duration: {e} (e.g. 500ms, 10s, 5m, 1h)"))
}

/// A value from a command's stdout: JSON if the trimmed output parses, else the trimmed text.
/// A failing command records nothing.
/// Runs a `--value-from` command (with its step's `SCRIPT_STEP_KEY`) and reads its stdout as
/// JSON, else as text.
fn value_from(argv: &[String], key: &str) -> Result<Value, String> {
    let output = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env(STEP_KEY_ENV, key)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    if !output.status.success() {
        return Err(format!("{} exited with {}", argv[0], output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let trimmed = text.trim();
    Ok(serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_string())))
}

fn exit_code(code: i64) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}
