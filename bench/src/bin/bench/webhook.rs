//! `bench --vs-webhook`: script-runner side by side with adnanh/webhook (Debian's `webhook`
//! package: a Go server that runs a hook per request and stores nothing, keeps no logs), the
//! runner the CPU-per-job target is set against. Both run the same trivial script, one server
//! loaded at a time, at concurrency 1, 4 and 16, in windows alternating with direct spawn
//! (the physical limit on this machine, 2 spawning threads). Server CPU per job is each
//! server's own (its threads, from `/proc/<pid>/stat`), its children excluded. Then the rate of
//! async submissions to script-runner at concurrency 4, with the jobs running behind them.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::shared::Server;
use super::{cpu_ticks, direct_spawn_counted, load_target, pct, submit_and_drain, Target, Ticks};

/// Where Debian installs it; `$PATH` is searched first.
const DEBIAN_WEBHOOK: &str = "/usr/bin/webhook";

/// A webhook server, killed when dropped.
struct Webhook {
    child: Child,
    base: String,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `webhook` binary, if installed.
fn find_webhook() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("webhook"));
    on_path.chain([PathBuf::from(DEBIAN_WEBHOOK)]).find(|p| p.is_file())
}

/// Starts webhook on a free loopback port with one hook, `trivial`, running `script`.
fn start_webhook(exe: &Path, dir: &Path, script: &Path) -> Result<Webhook> {
    let hooks = json!([{
        "id": "trivial",
        "execute-command": script,
        "command-working-directory": dir,
        "include-command-output-in-response": true,
        "http-methods": ["POST"]
    }]);
    let hooks_file = dir.join("hooks.json");
    std::fs::write(&hooks_file, serde_json::to_vec(&hooks)?)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(exe)
        .arg("-hooks")
        .arg(&hooks_file)
        .args(["-ip", "127.0.0.1", "-port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let webhook = Webhook { child, base: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("webhook did not listen on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(webhook)
}

/// One server's figures at one concurrency, summed over the rounds.
#[derive(Default)]
struct Side {
    runs: u64,
    errors: u64,
    seconds: f64,
    /// The server's own CPU over its windows, in clock ticks.
    ticks: u64,
    latencies: Vec<Duration>,
    /// Its rate over the direct-spawn rate of the window just before, per round.
    ratios: Vec<f64>,
}

impl Side {
    /// Runs one window of `seconds` on the server and adds it up; its rate compared with
    /// `direct`, the direct-spawn rate measured just before.
    fn window(&mut self, target: &Target, pid: u32, concurrency: usize, seconds: f64, direct: f64) -> Result<()> {
        let before = cpu_ticks(pid);
        let r = load_target(target, concurrency, seconds)?;
        let used: Ticks = cpu_ticks(pid) - before;
        self.runs += r.runs;
        self.errors += r.errors;
        self.seconds += r.runs as f64 / r.throughput.max(1e-9);
        self.ticks += used.own;
        self.latencies.extend(r.latencies);
        self.ratios.push(r.throughput / direct.max(1e-9));
        Ok(())
    }

    fn print(&mut self, concurrency: usize, name: &str) {
        self.latencies.sort();
        self.ratios.sort_by(f64::total_cmp);
        let us = self.ticks as f64 / procfs::ticks_per_second() as f64 * 1e6 / self.runs.max(1) as f64;
        let errors = if self.errors > 0 { format!("  ({} errors)", self.errors) } else { String::new() };
        println!(
            "{:<6} {:<14} {:>9.0} {:>9.2} {:>9.2} {:>11.0} us {:>10.1}%{errors}",
            format!("c={concurrency}"),
            name,
            self.runs as f64 / self.seconds.max(1e-9),
            pct(&self.latencies, 0.50),
            pct(&self.latencies, 0.99),
            us,
            100.0 * self.ratios.get(self.ratios.len() / 2).copied().unwrap_or(0.0),
        );
    }
}

/// The side-by-side run. `dir` holds `trivial.sh`; script-runner runs on the database
/// `database_url` names (`None`: its default, SQLite); without webhook installed it says so and
/// measures nothing.
///
/// At each concurrency the machine is measured in rounds of three 1-second windows: direct
/// spawn (2 threads), script-runner, webhook. A shared VM drifts by 10-20% within a minute;
/// alternating makes each server's ratio to direct spawn compare windows a second apart, and
/// the median of those ratios is printed. Rates, percentiles and CPU are over all the windows.
pub fn compare(dir: &Path, script: &Path, cores: usize, seconds: f64, database_url: Option<&str>) -> Result<()> {
    let Some(exe) = find_webhook() else {
        println!("skipped: webhook is not installed (apt-get install webhook), so there is nothing to compare with");
        return Ok(());
    };
    // The configuration of the measurement: 4 jobs at once, the rest queued.
    let scripts = json!({ "scripts": [{ "id": "trivial", "path": "./trivial.sh", "mode": "sync" }] });
    let config = json!({
        "server": { "host": "127.0.0.1", "port": 0 },
        "runner": { "maxConcurrent": 4, "maxQueued": 100000, "logsDir": "./logs" },
        "scriptsFile": "./scripts.json"
    });
    let ours_dir = dir.join("vs-webhook");
    std::fs::create_dir_all(&ours_dir)?;
    std::fs::copy(script, ours_dir.join("trivial.sh"))?;
    let ours = Server::start_on(&ours_dir, &config, &scripts, database_url)?;
    let webhook = start_webhook(&exe, dir, script)?;
    let targets = [
        ("script-runner", Target::run(&ours.base, "trivial"), ours.pid()),
        (
            "webhook",
            Target {
                base: webhook.base.clone(),
                path: "/hooks/trivial".into(),
                body: "{}".into(),
                status: "200",
                needle: b"ok",
            },
            webhook.child.id(),
        ),
    ];
    // Warm both up.
    for (_, target, _) in &targets {
        load_target(target, 4, 1.0)?;
    }
    let rounds = (seconds.round() as usize).max(3);
    println!(
        "script-runner (maxConcurrent 4) vs webhook ({}), one loaded at a time; {rounds} rounds of 1 s windows (direct spawn, script-runner, webhook) per concurrency",
        exe.display()
    );
    println!(
        "{:<6} {:<14} {:>9} {:>9} {:>9} {:>14} {:>11}",
        "", "server", "runs/s", "p50 ms", "p99 ms", "server CPU/run", "% of direct"
    );
    for concurrency in [1, 4, 16] {
        let mut sides: Vec<Side> = targets.iter().map(|_| Side::default()).collect();
        let mut direct = (0u64, 0.0f64);
        for _ in 0..rounds {
            let (rate, runs) = direct_spawn_counted(script, cores, 1.0);
            direct.0 += runs;
            direct.1 += runs as f64 / rate.max(1e-9);
            for ((_, target, pid), side) in targets.iter().zip(&mut sides) {
                side.window(target, *pid, concurrency, 1.0, rate)?;
            }
        }
        for ((name, _, _), side) in targets.iter().zip(&mut sides) {
            side.print(concurrency, name);
        }
        println!(
            "{:<6} {:<14} {:>9.0}   (direct spawn, {cores} threads; % of direct is the median of the rounds' ratios)",
            "",
            "limit",
            direct.0 as f64 / direct.1.max(1e-9)
        );
    }
    drop(webhook);
    async_submissions(&ours, seconds)
}

/// Async submissions to script-runner at concurrency 4: how fast `202`s come back while the
/// jobs run behind them (4 at a time), then how long the queue takes to drain. webhook has no
/// counterpart (a hook that answers before its command ends starts every command at once).
fn async_submissions(ours: &Server, seconds: f64) -> Result<()> {
    let (r, drained) = submit_and_drain(&ours.base, 4, seconds, Duration::from_millis(20))?;
    let errors = if r.errors > 0 { format!("  ({} errors)", r.errors) } else { String::new() };
    println!();
    println!(
        "async submit, c=4: {:.0} submissions/s (202), p50 {:.2} ms, p99 {:.2} ms{errors}; all {} ran in {drained:.1} s ({:.0} jobs/s)",
        r.throughput,
        r.p50_ms(),
        r.p99_ms(),
        r.runs,
        r.runs as f64 / drained
    );
    Ok(())
}
