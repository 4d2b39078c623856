//! `bench`: measures the job runner end to end and prints the figures.
//!
//! It starts the `script-runner` binary built beside it on `127.0.0.1:0` in a temporary folder
//! and measures, in one run:
//! 1. the physical limit: the same trivial script spawned directly (fork/exec + wait in a loop,
//!    one spawning thread per core, no HTTP, no database);
//! 2. sync-run throughput and p50/p99 latency at concurrency 1, 4 and 16;
//! 3. the same at concurrency 4 after at least 10,000 jobs are in the history;
//! 4. a 200 MB stdout job: wall time and the server's peak RSS while it runs;
//! 5. the latency of a 64 KiB page at the end of that log, by bytes and by lines;
//! 6. cancel-to-terminal latency of a running job.
//!
//! 7. with `--vs-webhook`, only script-runner against adnanh/webhook at c=1, 4 and 16 (see
//!    `bench/webhook.rs`).
//!
//! 8. with `--db-figures`, only what tells one database from another: sync c=1 and c=4, async
//!    submissions, the workflow step rate, and the CPU per job of the server and of PostgreSQL;
//!    with `--compare-databases <admin URL>`, those on SQLite then PostgreSQL, in alternation,
//!    side by side with their ratio (see `bench/databases.rs`).
//!
//! `--database <url>` runs the server on another database than its default SQLite file in the
//! temporary folder; a PostgreSQL URL is an admin URL, on which each run creates (and then
//! drops) an empty database of its own (see `shared/database.rs`).
//!
//! Usage: `cargo run --release --bin bench -- [--seconds N] [--big-mb N] [--keep] [--only-sync4]
//! [--vs-webhook] [--database URL] [--db-figures] [--compare-databases URL [--rounds N]]`.

#[path = "shared/database.rs"]
mod database;
#[path = "bench/databases.rs"]
mod databases;
#[path = "shared/mod.rs"]
mod shared;
#[path = "bench/webhook.rs"]
mod webhook;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use database::{Choice, Database};
use serde_json::{json, Value};
use shared::{agent, write_script, Server};

/// What `bench` is asked for.
struct Options {
    seconds: f64,
    big_mb: u64,
    keep: bool,
    only_sync4: bool,
    vs_webhook: bool,
    /// `--database`: what the server runs on.
    database: Choice,
    db_figures: bool,
    /// `--compare-databases`: a PostgreSQL admin URL.
    compare_databases: Option<String>,
    rounds: usize,
    workflow_steps: u32,
}

fn options() -> Result<Options> {
    let mut opts = Options {
        seconds: 5.0,
        big_mb: 200,
        keep: false,
        only_sync4: false,
        vs_webhook: false,
        database: Choice::DefaultSqlite,
        db_figures: false,
        compare_databases: None,
        rounds: 2,
        workflow_steps: 1000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => opts.seconds = value()?.parse()?,
            "--big-mb" => opts.big_mb = value()?.parse()?,
            "--keep" => opts.keep = true,
            "--only-sync4" => opts.only_sync4 = true,
            "--vs-webhook" => opts.vs_webhook = true,
            "--database" => opts.database = Choice::parse(&value()?)?,
            "--db-figures" => opts.db_figures = true,
            "--compare-databases" => opts.compare_databases = Some(value()?),
            "--rounds" => opts.rounds = value()?.parse()?,
            "--workflow-steps" => opts.workflow_steps = value()?.parse()?,
            "-h" | "--help" => {
                print_help();
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(opts)
}

fn print_help() {
    println!("bench [--seconds N (per phase, default 5)] [--big-mb N (default 200)] [--keep] [--database URL]");
    println!("      [--only-sync4 | --vs-webhook | --db-figures | --compare-databases URL [--rounds N]]");
    println!("  --keep  leave the temporary folder (and its ~30k log files) in place: deleting");
    println!("          many files makes ext4 create new ones slowly for minutes after, which");
    println!("          skews a run that follows soon; delete the folder later");
    println!("  --only-sync4  only sync c=4 paired with direct spawn (quick A/B comparisons)");
    println!("  --vs-webhook  only script-runner against adnanh/webhook (apt-get install webhook) at");
    println!("                c=1, 4 and 16: runs/s, p50, p99 and each server's own CPU per run");
    println!("  --database URL  the database the server runs on, in every mode (default: sqlite, a new");
    println!("                SQLite file in the temporary folder). sqlite://<path>: that file (relative");
    println!("                to the temporary folder). postgres://user:pass@host:port/db: an ADMIN URL;");
    println!("                each run connects to it, creates an empty database bench_<pid>_<n> beside db");
    println!("                (CREATE DATABASE: the user needs CREATEDB), runs the server on that one and");
    println!("                drops it at the end (--keep leaves it). The server is given the URL as");
    println!("                DATABASE_URL; without --database, DATABASE_URL is removed from its");
    println!("                environment. Passwords are never printed.");
    println!("  --db-figures  only the figures that tell databases apart, on --database, with maxConcurrent 4:");
    println!("                sync c=1 and c=4 (jobs/s, p50, p99), async submissions at c=4 (202s/s, and");
    println!("                jobs/s until the queue has drained), each with the server's own CPU per job");
    println!("                (/proc/<pid>/stat, scripts excluded) and, on a PostgreSQL cluster on this");
    println!("                machine, its processes' CPU per job (and statements per job if");
    println!("                pg_stat_statements is usable from the admin URL's database); then the");
    println!("                workflow step rate (bench-workflow --json, --workflow-steps N, default 1000,");
    println!("                0 for none)");
    println!("  --compare-databases URL  --db-figures on SQLite then on PostgreSQL (URL: an admin URL as");
    println!("                for --database), --rounds N times (default 2) in alternation; prints Markdown");
    println!("                tables with PG/SQLite per figure (above 1: PostgreSQL is faster for a rate,");
    println!("                costlier for a latency or a CPU figure)");
}

fn main() -> Result<()> {
    let opts = options()?;
    let setup = databases::Setup { seconds: opts.seconds, workflow_steps: opts.workflow_steps, keep: opts.keep };
    if let Some(admin) = &opts.compare_databases {
        return databases::compare(admin, opts.rounds, &setup);
    }
    if opts.db_figures {
        return databases::run(&opts.database, &setup).map(drop);
    }
    // Declared before the server: dropped after it (a PostgreSQL database is dropped once the
    // server has let go of it).
    let mut database = Database::prepare(&opts.database)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dir = tempfile::Builder::new().prefix("sr-bench-").tempdir()?;
    let trivial = write_script(dir.path(), "trivial.sh", "#!/bin/sh\necho ok\n")?;
    let big_bytes = opts.big_mb * 1_000_000;
    write_script(
        dir.path(),
        "big.sh",
        &format!("#!/bin/sh\nyes 'the quick brown fox jumps over the lazy dog 0123456789 abcdefghij' | head -c {big_bytes}\n"),
    )?;
    write_script(dir.path(), "sleeper.sh", "#!/bin/sh\nexec sleep 300\n")?;
    let server = start_server(dir.path(), big_bytes, database.url())?;
    println!(
        "script-runner bench: {cores} core(s), {:.0} s per phase, server pid {}, database {} ({})",
        opts.seconds,
        server.pid(),
        database.engine(),
        database.shown()
    );
    println!();

    // Warm up (thread pools, page cache, the database file) so the first phase is not penalised.
    load(&server.base, "trivial", 4, 1.0)?;
    if opts.vs_webhook {
        drop(server);
        // A database of its own for the server it starts (the warm-up's jobs stay in this one).
        let mut ours = Database::prepare(&opts.database)?;
        webhook::compare(dir.path(), &trivial, cores, opts.seconds, ours.url())?;
        if opts.keep {
            println!("kept {}", dir.keep().display());
            database.keep();
            ours.keep();
        }
        return Ok(());
    }
    if opts.only_sync4 {
        paired(&server, &trivial, cores, opts.seconds)?;
        drop(server);
        if opts.keep {
            println!("kept {}", dir.keep().display());
            database.keep();
        }
        return Ok(());
    }
    let direct = direct_spawn(&trivial, cores, opts.seconds);
    println!(
        "{:<44} {:>10.0} runs/s  ({cores} spawning thread(s), fork/exec + wait)",
        "direct spawn (physical limit)", direct
    );
    let lean = direct_spawn_lean(&trivial, cores, opts.seconds);
    println!(
        "{:<44} {:>10.0} runs/s  (the server's own spawn code, pipes read to the end; for reference)",
        "direct spawn, lean", lean
    );
    paired(&server, &trivial, cores, opts.seconds)?;

    // Each phase against direct spawn measured just before it (the machine drifts over a run).
    let direct_before = || direct_spawn(&trivial, cores, (opts.seconds / 2.0).max(2.0));
    let mut at4 = 0.0;
    for conc in [1, 4, 16] {
        let limit = direct_before();
        let r = load(&server.base, "trivial", conc, opts.seconds)?;
        report(&format!("sync /run, concurrency {conc}"), &r, Some(limit));
        if conc == 4 {
            at4 = r.throughput;
        }
    }

    let total = fill_history(&server.base, 10_000)?;
    let limit = direct_before();
    let r = load(&server.base, "trivial", 4, opts.seconds)?;
    report(&format!("sync /run, concurrency 4, {total} jobs in history"), &r, Some(limit));
    println!("{:<44} {:>9.1}% of the rate before", "  history effect", 100.0 * r.throughput / at4.max(1e-9));

    let big = big_job(&server, big_bytes)?;
    println!(
        "{:<44} {:>10.2} s wall, {:.0} MB/s; server peak RSS {:.1} MB during the job (before: {:.1} MB)",
        format!("{} MB stdout job (sync)", opts.big_mb),
        big.wall.as_secs_f64(),
        big_bytes as f64 / 1e6 / big.wall.as_secs_f64(),
        big.peak_rss_kb as f64 / 1024.0,
        big.rss_before_kb as f64 / 1024.0
    );
    let (bytes_p50, bytes_p99) = page_latency(&server.base, &big.job_id, false)?;
    let (lines_p50, lines_p99) = page_latency(&server.base, &big.job_id, true)?;
    println!("{:<44} p50 {:>7.2} ms  p99 {:>7.2} ms", "64 KiB page at the end, by bytes", bytes_p50, bytes_p99);
    println!("{:<44} p50 {:>7.2} ms  p99 {:>7.2} ms", "64 KiB page at the end, by lines", lines_p50, lines_p99);

    let (c50, c99) = cancel_latency(&server.base, 20)?;
    println!("{:<44} p50 {:>7.2} ms  p99 {:>7.2} ms", "cancel to terminal (running sleep)", c50, c99);
    println!();
    println!("targets: sync c=4 >= 70% of direct spawn; no drop with 10,000 jobs; RSS < 64 MB during the big job; deep page < 5 ms");
    println!("reference (from the issue): Node script-runner ~95 runs/s; a Go webhook server without storage ~75% of the limit");
    drop(server);
    if opts.keep {
        println!("kept {}", dir.keep().display());
        database.keep();
    }
    Ok(())
}

/// Sync runs at concurrency 4 against direct spawn, in alternating 1-second windows, so that
/// drift in the machine's speed (a VM's neighbours) weighs on both sides of each ratio.
fn paired(server: &Server, script: &Path, cores: usize, seconds: f64) -> Result<()> {
    // At least 10 rounds: one round can be off by 10% on a shared VM, the median of 10 much less.
    let rounds = (seconds.round() as usize).max(10);
    let mut ratios = Vec::with_capacity(rounds);
    let (mut direct_sum, mut sync_sum) = (0.0, 0.0);
    let (mut direct_cpu, mut sync_cpu) = (CpuPerRun::default(), CpuPerRun::default());
    let mut sync_idle = (0u64, 0u64);
    let me = std::process::id();
    for _ in 0..rounds {
        let before = cpu_ticks(me);
        let (direct, direct_runs) = direct_spawn_counted(script, cores, 1.0);
        direct_cpu.add(direct_runs, cpu_ticks(me) - before, Ticks::default());
        let (server_before, client_before, idle_before) = (cpu_ticks(server.pid()), cpu_ticks(me), idle_ticks());
        let sync = load(&server.base, "trivial", 4, 1.0)?;
        sync_cpu.add(sync.runs, cpu_ticks(server.pid()) - server_before, cpu_ticks(me) - client_before);
        let idle = idle_ticks();
        sync_idle.0 += idle.0.saturating_sub(idle_before.0);
        sync_idle.1 += idle.1.saturating_sub(idle_before.1);
        direct_sum += direct;
        sync_sum += sync.throughput;
        ratios.push(sync.throughput / direct);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "{:<44} {:>10.0} runs/s  vs {:.0} direct: median {:.1}% of direct over {rounds} alternating 1 s rounds (min {:.1}%, max {:.1}%)",
        "sync c=4 paired with direct spawn",
        sync_sum / rounds as f64,
        direct_sum / rounds as f64,
        100.0 * ratios[rounds / 2],
        100.0 * ratios[0],
        100.0 * ratios[rounds - 1]
    );
    println!(
        "{:<44} direct: spawner {:.0} us + script {:.0} us; sync: server {:.0} us + script {:.0} us + load client {:.0} us; idle during sync {:.1}%",
        "  CPU per run (from /proc, 10 ms ticks)",
        direct_cpu.own_us(),
        direct_cpu.children_us(),
        sync_cpu.own_us(),
        sync_cpu.children_us(),
        sync_cpu.client_us(),
        100.0 * sync_idle.0 as f64 / sync_idle.1.max(1) as f64
    );
    Ok(())
}

/// Idle (idle + iowait) and total clock ticks of all cores so far (`/proc/stat`).
fn idle_ticks() -> (u64, u64) {
    use procfs::CurrentSI;
    let Ok(stats) = procfs::KernelStats::current() else { return (0, 0) };
    let t = stats.total;
    let optional = [t.iowait, t.irq, t.softirq, t.steal, t.guest, t.guest_nice].map(|f| f.unwrap_or(0));
    (t.idle + t.iowait.unwrap_or(0), t.user + t.nice + t.system + t.idle + optional.iter().sum::<u64>())
}

/// CPU time of a process, in clock ticks: its own threads, and its waited-for children.
#[derive(Debug, Default, Clone, Copy)]
struct Ticks {
    own: u64,
    children: u64,
}

impl std::ops::Sub for Ticks {
    type Output = Ticks;
    fn sub(self, rhs: Ticks) -> Ticks {
        Ticks { own: self.own.saturating_sub(rhs.own), children: self.children.saturating_sub(rhs.children) }
    }
}

/// utime+stime and cutime+cstime of a process (fields 14-17 of `/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> Ticks {
    let stat = i32::try_from(pid).ok().and_then(|pid| procfs::process::Process::new(pid).and_then(|p| p.stat()).ok());
    let Some(stat) = stat else { return Ticks::default() };
    // The children's times are signed in the kernel's format; a negative one counts as 0.
    let children = [stat.cutime, stat.cstime].map(|t| u64::try_from(t).unwrap_or(0));
    Ticks { own: stat.utime + stat.stime, children: children[0] + children[1] }
}

/// CPU per run accumulated over rounds.
#[derive(Default)]
struct CpuPerRun {
    runs: u64,
    own: u64,
    children: u64,
    client: u64,
}

impl CpuPerRun {
    fn add(&mut self, runs: u64, ticks: Ticks, client: Ticks) {
        self.runs += runs;
        self.own += ticks.own;
        self.children += ticks.children;
        self.client += client.own;
    }

    fn us(&self, ticks: u64) -> f64 {
        let per_second = procfs::ticks_per_second() as f64;
        ticks as f64 / per_second * 1e6 / self.runs.max(1) as f64
    }

    fn own_us(&self) -> f64 {
        self.us(self.own)
    }

    fn children_us(&self) -> f64 {
        self.us(self.children)
    }

    fn client_us(&self) -> f64 {
        self.us(self.client)
    }
}

/// The server of the default run, on the database `database_url` names (`None`: its default).
fn start_server(dir: &Path, big_bytes: u64, database_url: Option<&str>) -> Result<Server> {
    let scripts = json!({ "scripts": [
        { "id": "trivial", "path": "./trivial.sh", "mode": "sync" },
        { "id": "big", "path": "./big.sh", "mode": "sync" },
        { "id": "sleeper", "path": "./sleeper.sh", "mode": "async" }
    ]});
    let config = json!({
        "server": { "host": "127.0.0.1", "port": 0 },
        "runner": {
            "maxConcurrent": 16,
            "maxQueued": 10000,
            "maxLogBytesPerStream": big_bytes + 1_000_000,
            "logsDir": "./logs",
            "killGraceSec": 5
        },
        "scriptsFile": "./scripts.json"
    });
    Server::start_on(dir, &config, &scripts, database_url)
}

fn direct_spawn(script: &Path, threads: usize, seconds: f64) -> f64 {
    direct_spawn_counted(script, threads, seconds).0
}

/// Runs per second, and runs, spawning with std (glibc's posix_spawn).
fn direct_spawn_counted(script: &Path, threads: usize, seconds: f64) -> (f64, u64) {
    spawn_loop(threads, seconds, move || {
        Command::new(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Runs per second, spawning with the server's own spawn code (stdout and stderr into pipes
/// read to their end, as the server does), for comparison with [`direct_spawn`].
fn direct_spawn_lean(script: &Path, threads: usize, seconds: f64) -> f64 {
    use script_runner::process::spawn::{spawn, Spec};
    let cwd = script.parent().unwrap_or(Path::new("/")).to_path_buf();
    spawn_loop(threads, seconds, move || {
        let spec = Spec { program: script, args: &[], cwd: &cwd, env: &[], stdin: None };
        let Ok(child) = spawn(&spec) else { return false };
        let mut sink = Vec::new();
        let read = std::fs::File::from(child.stdout).read_to_end(&mut sink).is_ok()
            && std::fs::File::from(child.stderr).read_to_end(&mut sink).is_ok();
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child.pid), None);
        read && matches!(status, Ok(nix::sys::wait::WaitStatus::Exited(_, 0)))
    })
    .0
}

/// Calls `run_once` in a loop on `threads` threads for `seconds`; runs per second, and runs.
fn spawn_loop(threads: usize, seconds: f64, run_once: impl Fn() -> bool + Sync) -> (f64, u64) {
    let count = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if run_once() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let runs = count.load(Ordering::Relaxed);
    (runs as f64 / start.elapsed().as_secs_f64(), runs)
}

struct LoadResult {
    throughput: f64,
    runs: u64,
    errors: u64,
    /// Every run's latency, sorted (to merge several phases' percentiles).
    latencies: Vec<Duration>,
}

impl LoadResult {
    fn p50_ms(&self) -> f64 {
        pct(&self.latencies, 0.50)
    }

    fn p99_ms(&self) -> f64 {
        pct(&self.latencies, 0.99)
    }
}

/// A minimal keep-alive HTTP/1.1 client for the load phases: the load generator shares the
/// machine's cores with the server, so it should spend as little CPU as it can (no JSON
/// parsing; success is the `"status":"succeeded"` field in a 200 answer).
struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    request: Vec<u8>,
    status: &'static str,
    needle: &'static [u8],
}

/// What a load phase sends: a POST of `body` to `path` at `base`; an answer with `status`
/// whose body holds `needle` counts as a run.
#[derive(Clone)]
struct Target {
    base: String,
    path: String,
    body: String,
    status: &'static str,
    needle: &'static [u8],
}

impl Target {
    /// A sync run of `script` on a script-runner.
    fn run(base: &str, script: &str) -> Target {
        Target {
            base: base.to_string(),
            path: "/run".into(),
            body: json!({ "scriptId": script }).to_string(),
            status: "200",
            needle: b"\"status\":\"succeeded\"",
        }
    }

    /// An async submission of `script` on a script-runner: a run is a `202` with the job's id.
    fn submit(base: &str, script: &str) -> Target {
        Target {
            base: base.to_string(),
            path: "/run".into(),
            body: json!({ "scriptId": script, "mode": "async" }).to_string(),
            status: "202",
            needle: b"\"jobId\"",
        }
    }
}

impl RawClient {
    fn connect(target: &Target) -> Result<RawClient> {
        let (base, path, body) = (&target.base, &target.path, &target.body);
        let host = base.trim_start_matches("http://");
        let writer = TcpStream::connect(host)?;
        writer.set_nodelay(true)?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Ok(RawClient {
            reader: BufReader::new(writer.try_clone()?),
            writer,
            request,
            status: target.status,
            needle: target.needle,
        })
    }

    /// Sends the request; true for an answer with the target's status whose body holds its
    /// needle (for a sync run on a script-runner: a 200 for a job that succeeded).
    fn send(&mut self) -> Result<bool> {
        self.writer.write_all(&self.request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let ok_status = line.split(' ').nth(1) == Some(self.status);
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok(ok_status && memchr::memmem::find(&body, self.needle).is_some())
    }
}

fn load(base: &str, script: &str, concurrency: usize, seconds: f64) -> Result<LoadResult> {
    load_target(&Target::run(base, script), concurrency, seconds)
}

/// `concurrency` keep-alive clients sending the target's request in a loop for `seconds`.
fn load_target(target: &Target, concurrency: usize, seconds: f64) -> Result<LoadResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let client = RawClient::connect(target);
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let Ok(mut client) = client else { return (latencies, 1) };
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = client.send().unwrap_or(false);
                    if ok {
                        latencies.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    Ok(LoadResult { throughput: all.len() as f64 / elapsed, runs: all.len() as u64, errors, latencies: all })
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(name: &str, r: &LoadResult, limit: Option<f64>) {
    let share = limit
        .map(|l| format!("  {:>5.1}% of direct ({l:.0}/s just before)", 100.0 * r.throughput / l))
        .unwrap_or_default();
    let errors = if r.errors > 0 { format!("  ({} errors)", r.errors) } else { String::new() };
    println!(
        "{name:<44} {:>10.0} runs/s  p50 {:>6.2} ms  p99 {:>6.2} ms{share}{errors}",
        r.throughput,
        r.p50_ms(),
        r.p99_ms()
    );
}

/// Async submissions at `concurrency` for `seconds` (a run is a `202`), then a wait until no
/// job is queued or running, polled every `poll`; the submissions, and the seconds from the
/// first submission until the queue had drained.
fn submit_and_drain(base: &str, concurrency: usize, seconds: f64, poll: Duration) -> Result<(LoadResult, f64)> {
    let target = Target::submit(base, "trivial");
    let start = Instant::now();
    let r = load_target(&target, concurrency, seconds)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while total_jobs(base, "&status=queued")? + total_jobs(base, "&status=running")? > 0 {
        if Instant::now() > deadline {
            bail!("the async jobs did not all end within 120 s of their submission");
        }
        std::thread::sleep(poll);
    }
    Ok((r, start.elapsed().as_secs_f64()))
}

/// How many jobs the server has, of those `filter` (a query string, `""` for all) selects.
fn total_jobs(base: &str, filter: &str) -> Result<u64> {
    let v: Value = agent().get(&format!("{base}/jobs?limit=1{filter}")).call()?.into_json()?;
    v["total"].as_u64().context("no total")
}

/// Runs trivial jobs at concurrency 16 until the history holds at least `target` jobs.
fn fill_history(base: &str, target: u64) -> Result<u64> {
    loop {
        let total = total_jobs(base, "")?;
        if total >= target {
            return Ok(total);
        }
        let missing = target - total;
        let per_thread = missing.div_ceil(16);
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let url = format!("{base}/run");
                std::thread::spawn(move || {
                    let agent = agent();
                    for _ in 0..per_thread {
                        let _ = agent.post(&url).send_json(json!({ "scriptId": "trivial" }));
                    }
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

struct BigJob {
    job_id: String,
    wall: Duration,
    peak_rss_kb: u64,
    rss_before_kb: u64,
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn big_job(server: &Server, big_bytes: u64) -> Result<BigJob> {
    let pid = server.pid();
    let rss_before_kb = rss_kb(pid);
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (Arc::clone(&done), Arc::clone(&peak));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let t = Instant::now();
    let v: Value = agent()
        .post(&format!("{}/run", server.base))
        .send_json(json!({ "scriptId": "big", "mode": "async" }))?
        .into_json()?;
    let job_id = v["jobId"].as_str().context("no jobId")?.to_string();
    loop {
        let j: Value = agent().get(&format!("{}/jobs/{job_id}", server.base)).call()?.into_json()?;
        match j["status"].as_str() {
            Some("succeeded") => {
                if j["stdoutSize"].as_u64() != Some(big_bytes) {
                    bail!("big job stored {} bytes, expected {big_bytes}", j["stdoutSize"]);
                }
                break;
            }
            Some("queued" | "running") => std::thread::sleep(Duration::from_millis(2)),
            other => bail!("big job ended {other:?}: {j}"),
        }
    }
    let wall = t.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    Ok(BigJob { job_id, wall, peak_rss_kb: peak.load(Ordering::Relaxed), rss_before_kb })
}

/// p50/p99 of 100 requests for the last 64 KiB of the big log (bytes), or its last ~64 KiB
/// worth of lines (the lines are 70 bytes: 936 lines).
fn page_latency(base: &str, job_id: &str, lines: bool) -> Result<(f64, f64)> {
    let agent = agent();
    let url = if lines {
        let probe: Value =
            agent.get(&format!("{base}/jobs/{job_id}/logs?unit=lines&offset=0&limit=1")).call()?.into_json()?;
        let total = probe["totalLines"].as_u64().context("no totalLines")?;
        format!("{base}/jobs/{job_id}/logs?unit=lines&offset={}&limit=936", total.saturating_sub(936))
    } else {
        let probe: Value = agent.get(&format!("{base}/jobs/{job_id}/logs?offset=0&limit=1")).call()?.into_json()?;
        let total = probe["totalSize"].as_u64().context("no totalSize")?;
        format!("{base}/jobs/{job_id}/logs?offset={}&limit=65536", total.saturating_sub(65536))
    };
    let mut samples = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let v: Value = agent.get(&url).call()?.into_json()?;
        samples.push(t.elapsed());
        let n = if lines { v["lines"].as_array().map_or(0, Vec::len) } else { v["data"].as_str().map_or(0, str::len) };
        if n == 0 {
            bail!("empty page at {url}");
        }
    }
    samples.sort();
    Ok((pct(&samples, 0.5), pct(&samples, 0.99)))
}

fn cancel_latency(base: &str, rounds: usize) -> Result<(f64, f64)> {
    let agent = agent();
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let v: Value = agent.post(&format!("{base}/run")).send_json(json!({ "scriptId": "sleeper" }))?.into_json()?;
        let id = v["jobId"].as_str().context("no jobId")?.to_string();
        loop {
            let j: Value = agent.get(&format!("{base}/jobs/{id}")).call()?.into_json()?;
            if j["status"] == "running" {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        let j: Value = agent.post(&format!("{base}/jobs/{id}/cancel")).call()?.into_json()?;
        samples.push(t.elapsed());
        if j["status"] != "canceled" {
            bail!("cancel answered {j}");
        }
    }
    samples.sort();
    Ok((pct(&samples, 0.5), pct(&samples, 0.99)))
}
