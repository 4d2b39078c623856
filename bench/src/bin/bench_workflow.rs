//! `bench-workflow`: measures durable workflow steps end to end and prints the figures.
//!
//! It starts the `script-runner` binary built beside it on `127.0.0.1:0` in a temporary folder
//! and runs a workflow of N trivial `step -- true` steps (default 1,000) two ways:
//! 1. through the CLI: a bash loop of `script-runner step "s-$i" -- true`;
//! 2. through the Rust client: this binary, started as the workflow (`--as-workflow N`), calls
//!    `Workflow::command` N times.
//!
//! Each is measured on its first execution (every step runs `true` and is committed to the
//! journal before the next begins) and on a full replay (a fork of the finished run: every step
//! comes back from the journal). The workflow times itself and reports through its output.
//!
//! Usage: `cargo build --release && ./target/release/bench-workflow [--steps N]`.

#[path = "shared/mod.rs"]
mod shared;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
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

fn bench(args: &[String]) -> Result<()> {
    let mut steps: u32 = 1000;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--steps" => steps = it.next().context("--steps needs a number")?.parse()?,
            "-h" | "--help" => {
                println!("bench-workflow [--steps N (default 1000)]");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
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
    let server = Bench::start(dir.path(), steps)?;
    println!("script-runner workflow bench: {steps} steps of `step -- true`, server pid {}", server.server.pid());
    println!("{:<28} {:>12} {:>14} {:>12}", "", "total ms", "per step ms", "steps/s");
    for (name, workflow) in [("CLI (script-runner step)", "cli"), ("Rust client", "client")] {
        let first = server.launch(workflow)?;
        let first_ms = elapsed_ms(&first)?;
        let replay = server.fork(first["id"].as_str().context("no run id")?)?;
        let replay_ms = elapsed_ms(&replay)?;
        for (what, ms) in [("first execution", first_ms), ("full replay", replay_ms)] {
            println!(
                "{:<28} {:>12.0} {:>14.3} {:>12.0}",
                format!("{name}: {what}"),
                ms,
                ms / f64::from(steps),
                f64::from(steps) / (ms / 1000.0)
            );
        }
        println!("{:<28} {:>12.1}x", format!("{name}: replay speed-up"), first_ms / replay_ms);
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
}

impl Bench {
    fn start(dir: &Path, steps: u32) -> Result<Bench> {
        let scripts = json!({ "scripts": [
            { "id": "cli", "path": "./cli.sh", "kind": "workflow" },
            { "id": "client", "path": "./client.sh", "kind": "workflow" }
        ]});
        let config = json!({
            "server": { "host": "127.0.0.1", "port": 0 },
            "runner": { "logsDir": "./logs" },
            "workflows": { "maxSteps": steps + 10 },
            "scriptsFile": "./scripts.json"
        });
        let server = Server::start(dir, &config, &scripts)?;
        Ok(Bench { server, agent: agent() })
    }

    /// Launches a configured workflow and waits for its end.
    fn launch(&self, workflow: &str) -> Result<Value> {
        let body = json!({ "workflowId": workflow, "background": false });
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
