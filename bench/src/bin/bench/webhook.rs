//! `bench --vs-webhook`: script-runner side by side with adnanh/webhook (Debian's `webhook`
//! package: a Go server that runs a hook per request and stores nothing, keeps no logs), the
//! runner the CPU-per-job target is set against. Both run the same trivial script, one server
//! loaded at a time, at concurrency 1, 4 and 16, each phase after a direct-spawn measurement
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
use super::{cpu_ticks, direct_spawn, load_target, LoadResult, Target, Ticks};

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

/// One phase on one server: the load result and the server's own CPU per run, in us.
fn measure(target: &Target, pid: u32, concurrency: usize, seconds: f64) -> Result<(LoadResult, f64)> {
    let before = cpu_ticks(pid);
    let r = load_target(target, concurrency, seconds)?;
    let used: Ticks = cpu_ticks(pid) - before;
    let us = used.own as f64 / procfs::ticks_per_second() as f64 * 1e6 / r.runs.max(1) as f64;
    Ok((r, us))
}

/// The side-by-side run. `dir` holds `trivial.sh`; without webhook installed it says so and
/// measures nothing.
pub fn compare(dir: &Path, script: &Path, cores: usize, seconds: f64) -> Result<()> {
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
    let ours = Server::start(&ours_dir, &config, &scripts)?;
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
    println!("script-runner (maxConcurrent 4) vs webhook ({}), one loaded at a time", exe.display());
    println!(
        "{:<6} {:<14} {:>9} {:>9} {:>9} {:>14} {:>11}",
        "", "server", "runs/s", "p50 ms", "p99 ms", "server CPU/run", "% of direct"
    );
    for concurrency in [1, 4, 16] {
        let limit = direct_spawn(script, cores, (seconds / 2.0).max(2.0));
        for (name, target, pid) in &targets {
            let (r, us) = measure(target, *pid, concurrency, seconds)?;
            let errors = if r.errors > 0 { format!("  ({} errors)", r.errors) } else { String::new() };
            println!(
                "{:<6} {:<14} {:>9.0} {:>9.2} {:>9.2} {:>11.0} us {:>10.1}%{errors}",
                format!("c={concurrency}"),
                name,
                r.throughput,
                r.p50_ms,
                r.p99_ms,
                us,
                100.0 * r.throughput / limit
            );
        }
        println!("{:<6} {:<14} {:>9.0}   (direct spawn, {cores} threads, just before)", "", "limit", limit);
    }
    drop(webhook);
    async_submissions(&ours, seconds)
}

/// Async submissions to script-runner at concurrency 4: how fast `202`s come back while the
/// jobs run behind them (4 at a time), then how long the queue takes to drain. webhook has no
/// counterpart (a hook that answers before its command ends starts every command at once).
fn async_submissions(ours: &Server, seconds: f64) -> Result<()> {
    let target = Target::submit(&ours.base, "trivial");
    let start = Instant::now();
    let r = load_target(&target, 4, seconds)?;
    let agent = super::shared::agent();
    let unfinished = |status: &str| -> Result<u64> {
        let url = format!("{}/jobs?status={status}&limit=1", ours.base);
        let page: serde_json::Value = agent.get(&url).call()?.into_json()?;
        page["total"].as_u64().context("no total in the job list")
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while unfinished("queued")? + unfinished("running")? > 0 {
        if Instant::now() > deadline {
            bail!("the async jobs did not all end within 120 s of their submission");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let drained = start.elapsed().as_secs_f64();
    let errors = if r.errors > 0 { format!("  ({} errors)", r.errors) } else { String::new() };
    println!();
    println!(
        "async submit, c=4: {:.0} submissions/s (202), p50 {:.2} ms, p99 {:.2} ms{errors}; all {} ran in {drained:.1} s ({:.0} jobs/s)",
        r.throughput,
        r.p50_ms,
        r.p99_ms,
        r.runs,
        r.runs as f64 / drained
    );
    Ok(())
}
