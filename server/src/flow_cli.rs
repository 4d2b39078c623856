//! `script-runner flow run`: runs an OOMOL flow file, printing one JSON event per line and then
//! the flow's outputs; exit 0 only on success. With `--durable`, the flow runs as a workflow
//! run on a server (each node a journaled step); `--journal` is how that run's process calls
//! this command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use script_runner_blocks::flow::{self, Journal, Node, Task};
use script_runner_blocks::BlockError;
use script_runner_client::{ClientError, ScriptResult, Workflow};
use serde_json::{json, Map, Value};

/// Exit status when the flow file has problems or the options are wrong.
const INVALID: u8 = 2;

/// Options of `flow run` (the doc comments of the fields are its help).
#[derive(clap::Args)]
pub struct FlowRun {
    /// The flow file (`flows/<name>/flow.oo.yaml`).
    pub file: PathBuf,
    /// A flow input, `handle=<json>` (repeatable; a value that is not JSON is a string).
    #[arg(long = "input", value_name = "HANDLE=JSON")]
    pub inputs: Vec<String>,
    /// Run it as a durable workflow run on the server (the flow must be in its flows dir).
    #[arg(long)]
    pub durable: bool,
    /// Only check the flow (every problem, as before a run) and run nothing.
    #[arg(long, conflicts_with_all = ["durable", "journal"])]
    pub check: bool,
    /// Internal: journal each node as a step of the workflow run this process belongs to.
    #[arg(long, hide = true)]
    pub journal: bool,
    /// The package root `self::` resolves against (default: two folders above the file).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The server for --durable.
    #[arg(long, env = "SCRIPT_RUNNER_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token for --durable.
    #[arg(long, env = "SCRIPT_RUNNER_TOKEN")]
    pub token: Option<String>,
}

/// Runs the command.
pub fn run(opts: FlowRun) -> ExitCode {
    let given = if opts.journal {
        // Inside a run: the flow inputs are the run's args. They are read on their own: the
        // run's client is built only once the flow has loaded, and not for --durable.
        match Workflow::args_from_env() {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        }
    } else {
        match parse_inputs(&opts.inputs) {
            Ok(map) => map,
            Err(e) => {
                eprintln!("script-runner flow run: {e}");
                return ExitCode::from(INVALID);
            }
        }
    };
    if opts.durable {
        return durable(&opts, given);
    }
    let flow = match flow::load(&opts.file, opts.root.as_deref(), &given) {
        Ok(flow) => flow,
        Err(problems) => {
            eprintln!("script-runner flow run: {}: {problems}", opts.file.display());
            return ExitCode::from(INVALID);
        }
    };
    if opts.check {
        println!("{}: ok ({} nodes)", opts.file.display(), flow.nodes.len());
        return ExitCode::SUCCESS;
    }
    let journal: Arc<dyn Journal> = if opts.journal {
        match Workflow::from_env() {
            Ok(wf) => Arc::new(RunJournal { wf }),
            Err(e) => {
                eprintln!("script-runner flow run --journal: {e}");
                return ExitCode::from(INVALID);
            }
        }
    } else {
        Arc::new(flow::NoJournal)
    };
    // Inside a run, stdout is the run's output: events go to stderr, the outputs to stdout.
    let in_run = opts.journal;
    let finished = flow::run(&flow, &given, journal, &mut |event| {
        if in_run {
            eprintln!("{event}");
        } else {
            println!("{event}");
        }
    });
    println!("{}", Value::Object(finished.outputs));
    if finished.ok {
        ExitCode::SUCCESS
    } else {
        if let Some(e) = finished.error {
            eprintln!("script-runner flow run: {e}");
        }
        ExitCode::FAILURE
    }
}

fn parse_inputs(items: &[String]) -> Result<Map<String, Value>, String> {
    let mut map = Map::new();
    for item in items {
        let (handle, text) = item.split_once('=').ok_or_else(|| format!("--input {item:?}: expected handle=json"))?;
        // A value that is not JSON is taken as a string (`--input name=world`).
        let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()));
        map.insert(handle.to_string(), value);
    }
    Ok(map)
}

/// `--durable`: launch the flow (by its folder name) as a workflow run and wait for it.
fn durable(opts: &FlowRun, given: Map<String, Value>) -> ExitCode {
    let name = opts
        .file
        .canonicalize()
        .ok()
        .and_then(|f| f.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_default();
    // Through the blocks' HTTP client (same errors); a durable flow may run for days.
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    let server = script_runner_client::Server::new(&opts.url, opts.token.clone(), week);
    let body = json!({ "flow": name, "args": Value::Object(given), "background": false });
    match server.post("/api/script-runs", body) {
        Ok(answer) => {
            println!("{}", answer["run"]);
            if answer["run"]["status"] == "completed" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("script-runner flow run --durable: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Journals every node activation as a step of the run, keyed by node id (`id#2`... for later
/// activations). Script runs on this run's server become server-side script steps, so a
/// replay waits for (or returns) the job a node started instead of starting another.
struct RunJournal {
    wf: Workflow,
}

impl RunJournal {
    fn same_server(&self, inputs: &Map<String, Value>) -> bool {
        let url = inputs.get("script_runner_url").and_then(Value::as_str).unwrap_or_default();
        normalize(url) == normalize(self.wf.url())
    }
}

fn normalize(url: &str) -> String {
    url.trim_end_matches('/').replace("://localhost:", "://127.0.0.1:")
}

fn failed(e: impl std::fmt::Display) -> BlockError {
    BlockError::Failed(e.to_string())
}

impl Journal for RunJournal {
    fn activation(
        &self,
        key: &str,
        node: &Node,
        inputs: &Map<String, Value>,
        run: &dyn Fn() -> Result<Map<String, Value>, BlockError>,
    ) -> Result<Map<String, Value>, BlockError> {
        if let Task::Block { name, .. } = &node.task {
            if self.same_server(inputs) && (name == "run-script-sync" || name == "run-script-async") {
                let script = inputs.get("script_id").and_then(Value::as_str).unwrap_or_default();
                let args: Vec<String> = inputs
                    .get("args")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                if name == "run-script-async" {
                    let job_id = self.wf.script_start(key, script, &args).map_err(failed)?;
                    return Ok(json!({ "job_id": job_id }).as_object().cloned().unwrap_or_default());
                }
                let result = match self.wf.script(key, script, &args) {
                    Ok(r) => r,
                    Err(ClientError::StepFailed { result, .. }) => ScriptResult::from_result(&result),
                    Err(e) => return Err(failed(e)),
                };
                let out = json!({
                    "stdout": result.stdout,
                    "stderr": result.stderr,
                    "exit_code": result.exit_code.unwrap_or(-1),
                    "status": result.status,
                });
                return Ok(out.as_object().cloned().unwrap_or_default());
            }
        }
        let value: Value = self.wf.step(key, || run().map(Value::Object)).map_err(failed)?;
        Ok(value.as_object().cloned().unwrap_or_default())
    }
}
