//! `bench --db-figures` and `bench --compare-databases`: the figures that tell one database
//! from another, on the database `--database` names, or on SQLite and a PostgreSQL cluster in
//! alternation with the ratio PostgreSQL / SQLite per figure.
//!
//! One run is: a new temporary folder, a new database (see `shared/database.rs`), a server
//! with `maxConcurrent` 4 on the trivial script, a 1 s warm-up, then
//! 1. sync `/run` at concurrency 1, then 4: jobs/s, p50, p99;
//! 2. async submissions at concurrency 4: `202`s a second while the jobs run behind them, then
//!    the wait until the queue has drained (jobs/s from the first submission to the last end);
//! 3. for each phase the server's own CPU per job (its threads, from `/proc/<pid>/stat`; the
//!    scripts excluded) and, on a PostgreSQL cluster on this machine, the CPU of the cluster's
//!    processes for the database (its backends, WAL writer, checkpointer, ...) per job: the
//!    work SQLite does inside the server happens there; with `pg_stat_statements` usable from
//!    the admin URL's database, the statements per job too;
//! 4. once the server has stopped, `bench-workflow --json` on a database of the same kind: the
//!    workflow step rate (`step -- true` steps a second) and its CPU per step.
//!
//! Temporary folders are deleted only when the whole invocation ends: deleting a run's ~30k
//! log files makes ext4 slow to create files for minutes, which would penalise the next run.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::database::{ticks_to_us, Choice, ClusterCpu, Database};
use super::shared::Server;
use super::{cpu_ticks, load, submit_and_drain, write_script, LoadResult};

/// What a figures run needs from the command line.
pub struct Setup {
    /// Seconds per phase.
    pub seconds: f64,
    /// Steps of the workflow measurement (0: none).
    pub workflow_steps: u32,
    /// Leave the temporary folders and databases in place.
    pub keep: bool,
}

/// CPU and statements one phase cost, and the jobs it completed.
#[derive(Default, Clone, Copy)]
struct Cost {
    jobs: u64,
    /// The server's own threads, in clock ticks.
    server_ticks: u64,
    /// The PostgreSQL cluster's processes for the database, in clock ticks.
    db_ticks: Option<u64>,
    statements: Option<i64>,
}

impl Cost {
    fn per_job(&self, ticks: u64) -> f64 {
        ticks_to_us(ticks) / self.jobs.max(1) as f64
    }
}

/// Measures the server's and the database's CPU across `phase`, which returns the jobs it
/// completed and what else it measured.
fn costed<T>(server_pid: u32, database: &mut Database, phase: impl FnOnce() -> Result<(u64, T)>) -> Result<(T, Cost)> {
    let server_before = cpu_ticks(server_pid).own;
    let (db_before, statements_before): (Option<ClusterCpu>, _) = (database.cluster_cpu(), database.statements());
    let (jobs, value) = phase()?;
    let server_ticks = cpu_ticks(server_pid).own.saturating_sub(server_before);
    let db_ticks = database.cluster_cpu().zip(db_before).map(|(after, before)| after.since(&before));
    let statements = database.statements().zip(statements_before).map(|(after, before)| after - before);
    Ok((value, Cost { jobs, server_ticks, db_ticks, statements }))
}

/// One run's figures on one database.
pub struct Figures {
    engine: &'static str,
    /// Rows: a figure's name and its value (`None`: not measured on this database).
    rows: Vec<(String, Option<f64>, Unit)>,
    /// The temporary folder, deleted when the whole invocation ends (unless kept).
    _dir: Option<tempfile::TempDir>,
}

/// How a row's value is printed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Rate,
    Ms,
    Us,
    Count,
}

impl Unit {
    fn format(self, value: Option<f64>) -> String {
        match (self, value) {
            (_, None) => "-".into(),
            (Unit::Rate, Some(v)) => format!("{v:.0}/s"),
            (Unit::Ms, Some(v)) => format!("{v:.2} ms"),
            (Unit::Us, Some(v)) => format!("{v:.0} µs"),
            (Unit::Count, Some(v)) => format!("{v:.2}"),
        }
    }
}

impl Figures {
    fn push(&mut self, name: &str, value: Option<f64>, unit: Unit) {
        self.rows.push((name.to_string(), value, unit));
    }

    /// The rows a phase's cost gives: server, database and total CPU per job, statements per
    /// job.
    fn push_cost(&mut self, what: &str, cost: &Cost) {
        let server = cost.per_job(cost.server_ticks);
        let db = cost.db_ticks.map(|t| cost.per_job(t));
        self.push(&format!("{what}: server CPU/job"), Some(server), Unit::Us);
        self.push(&format!("{what}: PostgreSQL CPU/job"), db, Unit::Us);
        self.push(&format!("{what}: server + PostgreSQL CPU/job"), Some(server + db.unwrap_or(0.0)), Unit::Us);
        self.push(
            &format!("{what}: statements/job"),
            cost.statements.map(|n| n as f64 / cost.jobs.max(1) as f64),
            Unit::Count,
        );
    }
}

/// One run on the database `choice` names; prints its figures as it goes.
pub fn run(choice: &Choice, setup: &Setup) -> Result<Figures> {
    let mut database = Database::prepare(choice)?;
    let dir = tempfile::Builder::new().prefix("sr-bench-db-").tempdir()?;
    write_script(dir.path(), "trivial.sh", "#!/bin/sh\necho ok\n")?;
    // The configuration of the measurements: 4 jobs at once, the rest queued.
    let scripts = json!({ "scripts": [{ "id": "trivial", "path": "./trivial.sh", "mode": "sync" }] });
    let config = json!({
        "server": { "host": "127.0.0.1", "port": 0 },
        "runner": { "maxConcurrent": 4, "maxQueued": 100000, "logsDir": "./logs" },
        "scriptsFile": "./scripts.json"
    });
    let server = Server::start_on(dir.path(), &config, &scripts, database.url())?;
    let pid = server.pid();
    println!("== {} ({}), server pid {pid}, {:.0} s per phase", database.engine(), database.shown(), setup.seconds);
    let mut figures = Figures { engine: database.engine(), rows: Vec::new(), _dir: None };
    load(&server.base, "trivial", 4, 1.0)?;
    for concurrency in [1, 4] {
        let (r, cost) = costed(pid, &mut database, || {
            let r: LoadResult = load(&server.base, "trivial", concurrency, setup.seconds)?;
            Ok((r.runs, r))
        })?;
        let what = format!("sync c={concurrency}");
        if r.errors > 0 {
            println!("  {what}: {} errors", r.errors);
        }
        figures.push(&format!("{what}: jobs/s"), Some(r.throughput), Unit::Rate);
        figures.push(&format!("{what}: p50"), Some(r.p50_ms()), Unit::Ms);
        figures.push(&format!("{what}: p99"), Some(r.p99_ms()), Unit::Ms);
        figures.push_cost(&what, &cost);
    }
    let ((r, drained), cost) = costed(pid, &mut database, || {
        let (r, drained) = submit_and_drain(&server.base, 4, setup.seconds, Duration::from_millis(100))?;
        Ok((r.runs, (r, drained)))
    })?;
    if r.errors > 0 {
        println!("  async submit: {} errors", r.errors);
    }
    figures.push("async submit c=4: 202s/s", Some(r.throughput), Unit::Rate);
    figures.push("async submit c=4: p50", Some(r.p50_ms()), Unit::Ms);
    figures.push("async submit c=4: p99", Some(r.p99_ms()), Unit::Ms);
    figures.push("async c=4, submit to drained: jobs/s", Some(r.runs as f64 / drained), Unit::Rate);
    figures.push_cost("async c=4", &cost);
    drop(server);
    if setup.keep {
        println!("kept {}", dir.keep().display());
        database.keep();
    } else {
        figures._dir = Some(dir);
    }
    drop(database);
    if setup.workflow_steps > 0 {
        workflow(&mut figures, choice, setup)?;
    }
    print_table(&[&figures]);
    Ok(figures)
}

/// The workflow step rate: `bench-workflow --json` on a new database of the same kind.
fn workflow(figures: &mut Figures, choice: &Choice, setup: &Setup) -> Result<()> {
    let exe: PathBuf = std::env::current_exe()?.with_file_name("bench-workflow");
    let mut command = Command::new(&exe);
    command.args(["--json", "--steps", &setup.workflow_steps.to_string(), "--database", choice.arg()]);
    if setup.keep {
        command.arg("--keep");
    }
    let out = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {} (build it with --release first)", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("bench-workflow failed ({}): {text}", out.status);
    }
    // Its own table, then the JSON line.
    for line in text.lines().filter(|l| !l.starts_with('{')) {
        println!("  {line}");
    }
    let line = text.lines().rev().find(|l| l.starts_with('{')).context("bench-workflow printed no JSON line")?;
    let v: Value = serde_json::from_str(line).context("bench-workflow's JSON line")?;
    for (name, key) in [("Rust client", "client"), ("CLI", "cli")] {
        let first = &v[key]["first"];
        figures.push(&format!("workflow, {name}, first execution: steps/s"), first["steps_per_s"].as_f64(), Unit::Rate);
        figures.push(&format!("workflow, {name}: server CPU/step"), first["server_us_per_step"].as_f64(), Unit::Us);
        figures.push(&format!("workflow, {name}: PostgreSQL CPU/step"), first["db_us_per_step"].as_f64(), Unit::Us);
        figures.push(&format!("workflow, {name}: statements/step"), first["statements_per_step"].as_f64(), Unit::Count);
    }
    figures.push(
        "workflow, Rust client, full replay: steps/s",
        v["client"]["replay"]["steps_per_s"].as_f64(),
        Unit::Rate,
    );
    Ok(())
}

/// SQLite, then PostgreSQL on the cluster `admin_url` names, `rounds` times; a table per round
/// and, after more than one, all of them side by side.
pub fn compare(admin_url: &str, rounds: usize, setup: &Setup) -> Result<()> {
    let postgres = match Choice::parse(admin_url)? {
        choice @ Choice::Postgres(_) => choice,
        _ => bail!("--compare-databases takes a PostgreSQL admin URL (postgres://user:pass@host:port/db)"),
    };
    let mut all = Vec::new();
    for round in 1..=rounds.max(1) {
        let sqlite = run(&Choice::DefaultSqlite, setup)?;
        let pg = run(&postgres, setup)?;
        println!();
        println!("round {round}: SQLite vs PostgreSQL ({})", postgres.shown());
        print_table(&[&sqlite, &pg]);
        all.push(sqlite);
        all.push(pg);
    }
    if all.len() > 2 {
        println!();
        println!("all rounds (in the order they ran; PG/SQLite of each round)");
        print_table(&all.iter().collect::<Vec<_>>());
    }
    Ok(())
}

/// A Markdown table: a column per run and, after each SQLite/PostgreSQL pair, their ratio.
fn print_table(runs: &[&Figures]) {
    let Some(first) = runs.first() else { return };
    let mut header = vec!["figure".to_string()];
    let paired = |i: usize| i % 2 == 1 && runs[i - 1].engine == "SQLite" && runs[i].engine == "PostgreSQL";
    let several = runs.len() > 2;
    for (i, run) in runs.iter().enumerate() {
        let n = if several { format!(" #{}", i / 2 + 1) } else { String::new() };
        header.push(format!("{}{n}", run.engine));
        if paired(i) {
            header.push(format!("PG/SQLite{n}"));
        }
    }
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for (row, (name, _, unit)) in first.rows.iter().enumerate() {
        // A figure no run has (statements without pg_stat_statements, PostgreSQL's CPU on
        // SQLite alone) would only be a row of dashes.
        if runs.iter().all(|run| run.rows.get(row).and_then(|r| r.1).is_none()) {
            continue;
        }
        let mut cells = vec![name.clone()];
        for (i, run) in runs.iter().enumerate() {
            let value = run.rows.get(row).and_then(|r| r.1);
            cells.push(unit.format(value));
            if paired(i) {
                let ratio = runs[i - 1].rows.get(row).and_then(|r| r.1).zip(value);
                cells.push(match ratio {
                    Some((sqlite, pg)) if sqlite > 0.0 => format!("{:.2}", pg / sqlite),
                    _ => "-".into(),
                });
            }
        }
        println!("| {} |", cells.join(" | "));
    }
}
