//! `bench-cluster`: measures a cluster of `script-runner serve` nodes on one PostgreSQL
//! database and prints the figures.
//!
//! Every node is the `script-runner` binary built beside this one, started on `127.0.0.1:0` in
//! a temporary folder of its own (its own `logsDir`), with the same scripts, on a database
//! `bench_<pid>_<n>` made for the phase on the `--database` admin URL and dropped at the end
//! (see `shared/database.rs`). In one run:
//! 1. async throughput with 1, 2 and 3 nodes, each on a fresh database: client threads submit
//!    a trivial script round-robin over the nodes for `--seconds`, then the bench waits until
//!    every job has succeeded; jobs/s submitted and jobs/s completed (first submission to the
//!    last job done), each next to the 1-node figure (one node is a single server on
//!    PostgreSQL: the baseline);
//! 2. failover with 3 nodes (`cluster.leaseSec` = `--lease`): two 60 s async jobs and a
//!    workflow run on one node, that node `kill -9`ed, then, polled every 50 ms from another
//!    node: the time until its running jobs are `failed` ("node <id> was lost"), until it is
//!    `dead` in `GET /cluster`, and until its run is held by another node and running again.
//!
//! Usage: `cargo build --release -p script-runner -p script-runner-bench --bin script-runner
//! --bin bench-cluster && ./target/release/bench-cluster --database postgres://user:pass@host:port/db
//! [--seconds N] [--lease N] [--clients N]`.

#[allow(dead_code, reason = "shared with the other bench binaries, which use more of it")]
#[path = "shared/database.rs"]
mod database;
#[path = "shared/mod.rs"]
mod shared;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use database::{Choice, Database};
use serde_json::{json, Value};
use shared::{agent, write_script, Server};

/// The workflow run that is on the killed node: a first step, then one that lasts.
const WORKFLOW: &str = "script-runner step one -- true >&2\nscript-runner step wait -- sleep 30 >&2\necho done\n";

/// How often the failover phase looks.
const POLL: Duration = Duration::from_millis(50);

/// What `bench-cluster` is asked for.
struct Options {
    /// `--database`: a PostgreSQL admin URL.
    database: Choice,
    seconds: f64,
    lease: u64,
    clients: usize,
}

fn options() -> Result<Options> {
    let mut database = None;
    let mut opts = Options { database: Choice::DefaultSqlite, seconds: 5.0, lease: 2, clients: 4 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--database" => database = Some(Choice::parse(&value()?)?),
            "--seconds" => opts.seconds = value()?.parse()?,
            "--lease" => opts.lease = value()?.parse()?,
            "--clients" => opts.clients = value()?.parse()?,
            "-h" | "--help" => {
                println!("bench-cluster --database postgres://user:pass@host:port/db [--seconds N (default 5)]");
                println!("              [--lease N (cluster.leaseSec, default 2)] [--clients N (submitting threads, default 4)]");
                println!("  --database  an ADMIN URL: each phase creates an empty database bench_<pid>_<n> beside db");
                println!("              (the user needs CREATEDB), runs its nodes on it and drops it at the end");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    match database {
        Some(choice @ Choice::Postgres(_)) => opts.database = choice,
        _ => bail!("--database postgres://user:pass@host:port/db is required (a cluster needs PostgreSQL)"),
    }
    if !(1..=300).contains(&opts.lease) || opts.seconds <= 0.0 || opts.clients == 0 {
        bail!("--lease must be 1 to 300, --seconds and --clients above 0");
    }
    Ok(opts)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let opts = options()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // The scripts, at the same paths for every node.
    let scripts_dir = tempfile::Builder::new().prefix("sr-cluster-scripts-").tempdir()?;
    let trivial = write_script(scripts_dir.path(), "trivial.sh", "#!/bin/sh\necho ok\n")?;
    let long = write_script(scripts_dir.path(), "long.sh", "#!/bin/sh\nexec sleep 60\n")?;
    let scripts = json!({ "scripts": [
        { "id": "trivial", "path": trivial, "mode": "async" },
        { "id": "long", "path": long, "mode": "async" },
    ]});
    println!(
        "script-runner cluster bench: {cores} core(s), PostgreSQL {} (a fresh database per phase), lease {} s",
        opts.database.shown(),
        opts.lease
    );
    println!();

    let mut rows = Vec::new();
    for nodes in 1..=3 {
        let row = throughput(&opts, &scripts, nodes)?;
        println!(
            "  {nodes} node(s): {} jobs submitted in {:.1} s, all succeeded {:.1} s after the first submission",
            row.jobs, row.submit_secs, row.drain_secs
        );
        rows.push(row);
    }
    println!();
    println!(
        "async throughput, trivial script, {} client threads submitting round-robin over the nodes for {:.0} s, maxConcurrent 4 per node:",
        opts.clients, opts.seconds
    );
    println!();
    println!("| nodes | jobs | submitted jobs/s | vs single server | completed jobs/s | vs single server |");
    println!("|---|---|---|---|---|---|");
    let base = &rows[0];
    for (i, row) in rows.iter().enumerate() {
        let name = if i == 0 { "1 (single server)".to_string() } else { (i + 1).to_string() };
        println!(
            "| {name} | {} | {:.0} | {:.2}x | {:.0} | {:.2}x |",
            row.jobs,
            row.submitted_rate(),
            row.submitted_rate() / base.submitted_rate(),
            row.completed_rate(),
            row.completed_rate() / base.completed_rate()
        );
    }
    println!();

    failover(&opts, &scripts)?;
    Ok(())
}

/// One node: its server and its temporary folder (removed after the server has stopped).
struct Node {
    id: String,
    server: Server,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    /// SIGTERM first, so that a node stops its jobs' and runs' processes (a 60 s sleep left
    /// behind by SIGKILL would outlive the bench); a node killed already is reaped at once.
    fn drop(&mut self) {
        self.server.terminate(Duration::from_secs(10));
    }
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base)
    }
}

/// Starts nodes `n1`..`n<count>` on `database_url`, and waits until each is `up` in
/// `GET /cluster`.
fn start_nodes(count: usize, scripts: &Value, database_url: &str, lease: u64) -> Result<Vec<Node>> {
    let mut nodes = Vec::with_capacity(count);
    for i in 1..=count {
        let id = format!("n{i}");
        let dir = tempfile::Builder::new().prefix(&format!("sr-cluster-{id}-")).tempdir()?;
        let config = json!({
            "server": { "host": "127.0.0.1", "port": 0 },
            "runner": {
                "maxConcurrent": 4, "maxQueued": 1_000_000, "logsDir": "./logs",
                "killGraceSec": 1, "shutdownGraceSec": 1
            },
            "scriptsFile": "./scripts.json",
            "cluster": { "nodeId": id, "leaseSec": lease },
            "workflows": { "interpreters": { "bash": ["/bin/bash"] } }
        });
        let server = Server::start_on(dir.path(), &config, scripts, Some(database_url))
            .with_context(|| format!("starting node {id}"))?;
        nodes.push(Node { id, server, _dir: dir });
    }
    let agent = agent();
    until("every node up in GET /cluster", Duration::from_secs(30), Duration::from_millis(50), || {
        let v = get(&agent, &nodes[0].url("/cluster"))?;
        let up = v["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["state"] == "up").count());
        Ok((up == count).then_some(()))
    })?;
    Ok(nodes)
}

/// One row of the throughput table.
struct Row {
    jobs: u64,
    submit_secs: f64,
    drain_secs: f64,
}

impl Row {
    fn submitted_rate(&self) -> f64 {
        self.jobs as f64 / self.submit_secs
    }

    fn completed_rate(&self) -> f64 {
        self.jobs as f64 / self.drain_secs
    }
}

/// Async submissions round-robin over `count` nodes on a fresh database, then a wait until all
/// have succeeded.
fn throughput(opts: &Options, scripts: &Value, count: usize) -> Result<Row> {
    // Declared before the nodes: dropped after them.
    let database = Database::prepare(&opts.database)?;
    let nodes = start_nodes(count, scripts, database.url().context("no database URL")?, opts.lease)?;
    let agent = agent();
    // Warm-up: a few jobs through every node (connections, page cache), drained.
    for node in &nodes {
        for _ in 0..10 {
            submit(&agent, node, "trivial")?;
        }
    }
    let warm = count as u64 * 10;
    until("the warm-up jobs to succeed", Duration::from_secs(60), Duration::from_millis(20), || {
        Ok((jobs_with(&agent, &nodes[0], "succeeded")? >= warm).then_some(()))
    })?;

    let stop = AtomicBool::new(false);
    let submitted = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let bases: Vec<String> = nodes.iter().map(|n| n.url("/run")).collect();
    let body = json!({ "scriptId": "trivial", "mode": "async" });
    let start = Instant::now();
    let submit_secs = std::thread::scope(|s| {
        for t in 0..opts.clients {
            let (stop, submitted, errors, bases, body) = (&stop, &submitted, &errors, &bases, &body);
            s.spawn(move || {
                let agent = shared::agent();
                let mut k = t;
                while !stop.load(Ordering::Relaxed) {
                    let ok = agent
                        .post(&bases[k % bases.len()])
                        .send_json(body.clone())
                        .is_ok_and(|r| r.status() == 202 && r.into_string().is_ok());
                    if ok { submitted } else { errors }.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(opts.seconds));
        stop.store(true, Ordering::Relaxed);
        start.elapsed().as_secs_f64()
    });
    let jobs = submitted.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        bail!("{count} node(s): {errors} submissions were refused or failed");
    }
    let limit = Duration::from_secs_f64(120.0 + opts.seconds * 10.0);
    until("the submitted jobs to succeed", limit, Duration::from_millis(20), || {
        let failed = jobs_with(&agent, &nodes[0], "failed")?;
        if failed > 0 {
            bail!("{failed} job(s) failed");
        }
        Ok((jobs_with(&agent, &nodes[0], "succeeded")? >= warm + jobs).then_some(()))
    })?;
    let drain_secs = start.elapsed().as_secs_f64();
    drop(nodes);
    drop(database);
    Ok(Row { jobs, submit_secs, drain_secs })
}

/// The failover phase: 3 nodes, one killed with SIGKILL while it runs jobs and a workflow run.
fn failover(opts: &Options, scripts: &Value) -> Result<()> {
    let database = Database::prepare(&opts.database)?;
    let mut nodes = start_nodes(3, scripts, database.url().context("no database URL")?, opts.lease)?;
    let agent = agent();

    // Two long jobs; the victim is the node the first one runs on.
    let jobs: Vec<String> = (0..2).map(|i| submit(&agent, &nodes[i], "long")).collect::<Result<_>>()?;
    let mut placed = Vec::new();
    for id in &jobs {
        let node = until("the long jobs to run", Duration::from_secs(30), Duration::from_millis(20), || {
            let j = get(&agent, &nodes[0].url(&format!("/jobs/{id}")))?;
            Ok(if j["status"] == "running" { j["node"].as_str().map(String::from) } else { None })
        })?;
        placed.push((id.clone(), node));
    }
    let victim_id = placed[0].1.clone();
    let victim_at = nodes.iter().position(|n| n.id == victim_id).context("the victim is not one of ours")?;
    let victim_jobs: Vec<String> =
        placed.iter().filter(|(_, node)| *node == victim_id).map(|(id, _)| id.clone()).collect();
    let observer = (victim_at + 1) % nodes.len();

    // The workflow run, launched on the victim, killed in its second step.
    let launched: Value = agent
        .post(&nodes[victim_at].url("/api/script-runs"))
        .send_json(json!({ "interpreter": "bash", "source": WORKFLOW, "scriptName": "failover" }))
        .context("launching the workflow run")?
        .into_json()?;
    let run_id = launched["run"]["id"].as_str().context("no run id")?.to_string();
    let run_url = |node: &Node| node.url(&format!("/api/script-runs/{run_id}"));
    let attempt =
        until("the run's first step to complete", Duration::from_secs(30), Duration::from_millis(20), || {
            let v = get(&agent, &run_url(&nodes[victim_at]))?;
            if v["run"]["node"] != victim_id.as_str() || v["run"]["status"] != "running" {
                bail!("the run is not running on {victim_id}: {}", v["run"]);
            }
            // A command step is journaled when it ends: once `one` is, `wait` is starting.
            let first_done = v["journal"]
                .as_array()
                .is_some_and(|j| j.iter().any(|e| e["stepKey"] == "one" && e["status"] == "completed"));
            Ok(first_done.then(|| v["run"]["attempt"].as_i64().unwrap_or(0)))
        })?;
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "failover: 3 nodes, lease {} s; {victim_id} runs {} of the 2 long jobs and run {run_id} (attempt {attempt}), kill -9 it; polling node {} every {} ms",
        opts.lease,
        victim_jobs.len(),
        nodes[observer].id,
        POLL.as_millis()
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(nodes[victim_at].server.pid())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).context("kill -9 the victim")?;
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(opts.lease * 6 + 30);
    let (mut jobs_failed, mut dead, mut moved) = (None, None, None);
    let mut failed: Vec<String> = Vec::new();
    let lost = format!("node {victim_id} was lost");
    let obs = &nodes[observer];
    while jobs_failed.is_none() || dead.is_none() || moved.is_none() {
        if Instant::now() > deadline {
            bail!(
                "after {:.1} s: jobs failed {jobs_failed:?}, node dead {dead:?}, run moved {moved:?}",
                killed.elapsed().as_secs_f64()
            );
        }
        if jobs_failed.is_none() {
            for id in victim_jobs.iter().filter(|id| !failed.contains(id)).cloned().collect::<Vec<_>>() {
                let j = get(&agent, &obs.url(&format!("/jobs/{id}")))?;
                match j["status"].as_str() {
                    Some("running") => {}
                    Some("failed") => {
                        let error = j["error"].as_str().unwrap_or_default();
                        if !error.contains(&lost) {
                            bail!("job {id} failed with {error:?}, not \"{lost}\"");
                        }
                        failed.push(id);
                    }
                    other => bail!("job {id} of the killed node is {other:?}"),
                }
            }
            if failed.len() == victim_jobs.len() {
                jobs_failed = Some(killed.elapsed());
            }
        }
        if dead.is_none() {
            let v = get(&agent, &obs.url("/cluster"))?;
            let state = v["nodes"].as_array().and_then(|n| n.iter().find(|n| n["id"] == victim_id.as_str()));
            if state.is_some_and(|n| n["state"] == "dead") {
                dead = Some(killed.elapsed());
            }
        }
        if moved.is_none() {
            let run = get(&agent, &run_url(obs))?["run"].clone();
            let holder = run["node"].as_str().unwrap_or_default();
            if holder != victim_id && run["status"] == "running" && run["attempt"].as_i64() > Some(attempt) {
                moved = Some((killed.elapsed(), holder.to_string(), run["attempt"].as_i64().unwrap_or(0)));
            } else if !matches!(run["status"].as_str(), Some("running")) {
                bail!("run {run_id} is {} after the kill: {run}", run["status"]);
            }
        }
        std::thread::sleep(POLL);
    }
    let jobs_failed = jobs_failed.unwrap_or_default();
    let dead = dead.unwrap_or_default();
    let (moved_after, holder, new_attempt) = moved.unwrap_or_default();
    println!();
    println!("| after kill -9 of {victim_id} (lease {} s) | seconds | in leases |", opts.lease);
    println!("|---|---|---|");
    let lease = opts.lease as f64;
    let line =
        |what: &str, d: Duration| println!("| {what} | {:.2} | {:.2} |", d.as_secs_f64(), d.as_secs_f64() / lease);
    line(&format!("its {} running job(s) failed (\"{lost}\")", victim_jobs.len()), jobs_failed);
    line(&format!("{victim_id} dead in GET /cluster"), dead);
    line(&format!("run held by {holder} and running again (attempt {new_attempt})"), moved_after);

    // Clean up: the other long job and the run (their processes are the live nodes').
    let victim = nodes.remove(victim_at);
    drop(victim);
    for (id, _) in placed.iter().filter(|(_, node)| *node != victim_id) {
        let _ = agent.post(&nodes[0].url(&format!("/jobs/{id}/cancel"))).call();
    }
    let holder_node = nodes.iter().find(|n| n.id == holder).unwrap_or(&nodes[0]);
    let _ = agent.delete(&run_url(holder_node)).call();
    drop(nodes);
    drop(database);
    Ok(())
}

/// Submits an async job of `script` to `node`; its id.
fn submit(agent: &ureq::Agent, node: &Node, script: &str) -> Result<String> {
    let v: Value =
        agent.post(&node.url("/run")).send_json(json!({ "scriptId": script, "mode": "async" }))?.into_json()?;
    Ok(v["jobId"].as_str().context("no jobId")?.to_string())
}

/// How many jobs of `status` the cluster has (any node answers from the database).
fn jobs_with(agent: &ureq::Agent, node: &Node, status: &str) -> Result<u64> {
    get(agent, &node.url(&format!("/jobs?limit=1&status={status}")))?["total"].as_u64().context("no total")
}

fn get(agent: &ureq::Agent, url: &str) -> Result<Value> {
    agent.get(url).call().with_context(|| format!("GET {url}"))?.into_json().with_context(|| format!("GET {url}"))
}

/// Calls `check` every `every` until it gives a value; an error past `limit`.
fn until<T>(what: &str, limit: Duration, every: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {:.0} s waiting for {what}", limit.as_secs_f64());
        }
        std::thread::sleep(every);
    }
}
