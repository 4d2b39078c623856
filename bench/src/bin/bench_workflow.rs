//! `bench-workflow`: measures durable workflow steps end to end and prints the figures.
//!
//! It starts the `script-runner` binary built beside it on `127.0.0.1:0` in a temporary folder
//! and runs a workflow of N trivial `step -- true` steps (default 1,000) two ways:
//! 1. through the CLI: a bash loop of `script-runner step "s-$i" -- true`;
//! 2. through the Rust client: this binary, started as the workflow (`--as-workflow N`), calls
//!    `Workflow::command` N times;
//! 3. through the TypeScript / JavaScript SDK: `ctx.step.command` N times in a `main(args, ctx)`
//!    run by `node` (skipped, with a notice, without `node` on PATH);
//! 4. through the Python SDK: the same under `python3`.
//!
//! Each is measured on its first execution (every step runs `true` and is committed to the
//! journal before the next begins) and on a full replay (a fork of the finished run: every step
//! comes back from the journal). The workflow times itself and reports through its output.
//!
//! Each phase also shows the server's own CPU per step (its threads, from `/proc`; the
//! workflow's and the steps' processes excluded) and, on a PostgreSQL cluster on this machine,
//! its processes' CPU per step and (with `pg_stat_statements`) the statements per step.
//!
//! Usage: `cargo build --release && ./target/release/bench-workflow [--steps N] [--database URL]
//! [--keep] [--json]` (`--help` says what `--database` takes).

#[path = "shared/database.rs"]
mod database;
#[path = "shared/mod.rs"]
mod shared;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use database::{own_ticks, ticks_to_us, Choice, Database};
use script_runner_client::Workflow;
use serde_json::{json, Value};
use shared::{agent, write_script, Server};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--as-workflow") => as_workflow(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1000)),
        _ => bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-workflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The Rust-client workflow: N command steps, then `{"steps": N, "ms": elapsed}` on stdout.
fn as_workflow(steps: u32) -> Result<()> {
    let wf = Workflow::from_env()?;
    let started = Instant::now();
    for i in 1..=steps {
        let done = wf.command(&format!("s-{i}"), &["true"])?;
        if done.exit_code != 0 {
            bail!("step s-{i} exited {}", done.exit_code);
        }
    }
    println!("{}", json!({ "steps": steps, "ms": started.elapsed().as_secs_f64() * 1000.0 }));
    Ok(())
}

/// What `bench-workflow` is asked for.
struct Options {
    steps: u32,
    database: Choice,
    keep: bool,
    json: bool,
}

fn options(args: &[String]) -> Result<Option<Options>> {
    let mut opts = Options { steps: 1000, database: Choice::DefaultSqlite, keep: false, json: false };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--steps" => opts.steps = it.next().context("--steps needs a number")?.parse()?,
            "--database" => opts.database = Choice::parse(it.next().context("--database needs a URL")?)?,
            "--keep" => opts.keep = true,
            "--json" => opts.json = true,
            "-h" | "--help" => {
                println!("bench-workflow [--steps N (default 1000)] [--database URL] [--keep] [--json]");
                println!("  --database URL  the database the server runs on (default: sqlite, a new SQLite file");
                println!("                  in the temporary folder); sqlite://<path> for a given file, or a");
                println!("                  PostgreSQL admin URL postgres://user:pass@host:port/db: a new empty");
                println!("                  database bench_<pid>_<n> is created beside db (the user needs");
                println!("                  CREATEDB) and dropped at the end. The password is never printed.");
                println!("  --keep          leave the temporary folder (and a PostgreSQL database) in place");
                println!("  --json          also print the figures as one JSON line at the end (bench");
                println!("                  --compare-databases reads it)");
                return Ok(None);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(Some(opts))
}

/// One phase's figures.
struct Phase {
    ms: f64,
    /// The server's own CPU (its threads; the workflow and the steps' processes excluded).
    server_ticks: u64,
    /// On a local PostgreSQL cluster: its processes' CPU for the database.
    db_ticks: Option<u64>,
    /// With `pg_stat_statements`: statements run on the database.
    statements: Option<i64>,
}

impl Phase {
    fn json(&self, steps: u32) -> Value {
        let per_step = |x: f64| x / f64::from(steps);
        json!({
            "steps_per_s": f64::from(steps) / (self.ms / 1000.0),
            "server_us_per_step": per_step(ticks_to_us(self.server_ticks)),
            "db_us_per_step": self.db_ticks.map(|t| per_step(ticks_to_us(t))),
            "statements_per_step": self.statements.map(|n| per_step(n as f64)),
        })
    }
}

fn bench(args: &[String]) -> Result<()> {
    let Some(opts) = options(args)? else { return Ok(()) };
    let steps = opts.steps;
    let mut database = Database::prepare(&opts.database)?;
    let dir = tempfile::Builder::new().prefix("sr-bench-wf-").tempdir()?;
    let me = std::env::current_exe()?;
    write_script(
        dir.path(),
        "cli.sh",
        &format!(
            "#!/bin/bash\nset -e\nstart=$(date +%s%N)\nfor i in $(seq 1 {steps}); do\n  script-runner step \"s-$i\" -- true\ndone\n\
             end=$(date +%s%N)\necho \"{{\\\"steps\\\": {steps}, \\\"ms\\\": $(( (end - start) / 1000000 ))}}\"\n"
        ),
    )?;
    write_script(dir.path(), "client.sh", &format!("#!/bin/bash\nexec '{}' --as-workflow {steps}\n", me.display()))?;
    std::fs::write(dir.path().join("steps.mjs"), SDK_JS)?;
    std::fs::write(dir.path().join("steps.py"), SDK_PY)?;
    let (node, python) = (on_path("node"), on_path("python3"));
    for (program, missing) in [(&node, "node"), (&python, "python3")] {
        if program.is_none() {
            println!("NOTICE: {missing} is not on PATH: its SDK is not measured");
        }
    }
    let server = Bench::start(dir.path(), steps, database.url(), node.as_deref(), python.as_deref())?;
    println!(
        "script-runner workflow bench: {steps} steps of `step -- true`, server pid {}, database {} ({})",
        server.server.pid(),
        database.engine(),
        database.shown()
    );
    println!(
        "{:<42} {:>10} {:>12} {:>9} {:>15} {:>12} {:>10}",
        "", "total ms", "per step ms", "steps/s", "server CPU/step", "DB CPU/step", "stmts/step"
    );
    let mut summary = serde_json::Map::new();
    let mut workflows = vec![("CLI (script-runner step)", "cli"), ("Rust client", "client")];
    if node.is_some() {
        workflows.push(("TypeScript SDK (node)", "typescript"));
    }
    if python.is_some() {
        workflows.push(("Python SDK (python3)", "python"));
    }
    for (name, workflow) in workflows {
        let (first, first_phase) = server.measure(&mut database, |s| s.launch(workflow))?;
        let first_id = first["id"].as_str().context("no run id")?.to_string();
        let (_, replay_phase) = server.measure(&mut database, |s| s.fork(&first_id))?;
        for (what, phase) in [("first execution", &first_phase), ("full replay", &replay_phase)] {
            let per_step = |x: f64| x / f64::from(steps);
            println!(
                "{:<42} {:>10.0} {:>12.3} {:>9.0} {:>12.0} us {:>12} {:>10}",
                format!("{name}: {what}"),
                phase.ms,
                per_step(phase.ms),
                f64::from(steps) / (phase.ms / 1000.0),
                per_step(ticks_to_us(phase.server_ticks)),
                phase.db_ticks.map_or("-".into(), |t| format!("{:.0} us", per_step(ticks_to_us(t)))),
                phase.statements.map_or("-".into(), |n| format!("{:.1}", per_step(n as f64))),
            );
        }
        println!("{:<42} {:>10.1}x", format!("{name}: replay speed-up"), first_phase.ms / replay_phase.ms);
        summary.insert(
            workflow.to_string(),
            json!({ "first": first_phase.json(steps), "replay": replay_phase.json(steps) }),
        );
    }
    drop(server);
    if opts.keep {
        println!("kept {}", dir.keep().display());
        database.keep();
    }
    if opts.json {
        println!("{}", Value::Object(summary));
    }
    Ok(())
}

fn elapsed_ms(run: &Value) -> Result<f64> {
    if run["status"] != "completed" {
        bail!("run {} ended {}: {}", run["id"], run["status"], run["error"]);
    }
    run["output"]["ms"].as_f64().with_context(|| format!("no timing in the output: {}", run["output"]))
}

struct Bench {
    server: Server,
    agent: ureq::Agent,
    /// Steps of each workflow (the SDK workflows read it from their args).
    steps: u32,
}

/// The TypeScript SDK's workflow: `args.steps` command steps, then `{steps, ms}`.
const SDK_JS: &str = include_str!("../../../sdk/typescript/bench/steps.mjs");

/// The Python SDK's workflow: the same.
const SDK_PY: &str = include_str!("../../../sdk/python/bench/steps.py");

/// The absolute path of `program` on PATH (interpreters are configured by absolute path).
fn on_path(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file()).map(|p| p.display().to_string())
}

impl Bench {
    /// Starts the server on the database `database_url` names (`None`: its default).
    fn start(
        dir: &Path,
        steps: u32,
        database_url: Option<&str>,
        node: Option<&str>,
        python: Option<&str>,
    ) -> Result<Bench> {
        let mut workflows = vec![
            json!({ "id": "cli", "path": "./cli.sh", "kind": "workflow" }),
            json!({ "id": "client", "path": "./client.sh", "kind": "workflow" }),
        ];
        if let Some(node) = node {
            workflows
                .push(json!({ "id": "typescript", "path": "./steps.mjs", "kind": "workflow", "interpreter": [node] }));
        }
        if let Some(python) = python {
            workflows
                .push(json!({ "id": "python", "path": "./steps.py", "kind": "workflow", "interpreter": [python] }));
        }
        let scripts = json!({ "scripts": workflows });
        let config = json!({
            "server": { "host": "127.0.0.1", "port": 0 },
            "runner": { "logsDir": "./logs" },
            "workflows": { "maxSteps": steps + 10 },
            "scriptsFile": "./scripts.json"
        });
        let server = Server::start_on(dir, &config, &scripts, database_url)?;
        Ok(Bench { server, agent: agent(), steps })
    }

    /// Runs `run` (a launch or a fork, which returns the ended run) and measures it: the
    /// workflow's own timing, and the CPU and statements it cost.
    fn measure(&self, database: &mut Database, run: impl FnOnce(&Bench) -> Result<Value>) -> Result<(Value, Phase)> {
        let pid = self.server.pid();
        let (server_before, db_before, statements_before) =
            (own_ticks(pid).unwrap_or(0), database.cluster_cpu(), database.statements());
        let ended = run(self)?;
        let server_ticks = own_ticks(pid).unwrap_or(0).saturating_sub(server_before);
        let db_ticks = database.cluster_cpu().zip(db_before).map(|(after, before)| after.since(&before));
        let statements = database.statements().zip(statements_before).map(|(after, before)| after - before);
        let ms = elapsed_ms(&ended)?;
        Ok((ended, Phase { ms, server_ticks, db_ticks, statements }))
    }

    /// Launches a configured workflow and waits for its end.
    fn launch(&self, workflow: &str) -> Result<Value> {
        let body = json!({ "workflowId": workflow, "background": false, "args": { "steps": self.steps } });
        let answer: Value =
            self.agent.post(&format!("{}/api/script-runs", self.server.base)).send_json(body)?.into_json()?;
        Ok(answer["run"].clone())
    }

    /// Forks a finished run (its whole journal) and waits for the fork's end.
    fn fork(&self, id: &str) -> Result<Value> {
        let answer: Value = self
            .agent
            .post(&format!("{}/api/script-runs/{id}/fork", self.server.base))
            .send_json(json!({}))?
            .into_json()?;
        let fork = answer["run"]["id"].as_str().context("no fork id")?.to_string();
        loop {
            let run: Value =
                self.agent.get(&format!("{}/api/script-runs/{fork}", self.server.base)).call()?.into_json()?;
            let status = run["run"]["status"].as_str().unwrap_or_default().to_string();
            if !matches!(status.as_str(), "running" | "awaiting" | "paused") {
                return Ok(run["run"].clone());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
