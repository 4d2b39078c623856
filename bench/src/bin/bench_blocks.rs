//! `bench-blocks`: what a block costs under OOMOL's engine protocol, beside the `--inputs` CLI.
//!
//! It starts a mosquitto broker on a free loopback port (Debian's `mosquitto` must be
//! installed) and the `script-runner` binary built beside it in a temporary folder, then runs
//! each measured block N times (default 50) both ways, alternating:
//! 1. `script-runner block <name> --inputs '<json>'`: spawn to exit;
//! 2. `script-runner block <name> --address ... --session-id S --job-id J` with this binary
//!    playing the engine (subscribed to `session/S` first): spawn to `BlockReady`, then
//!    `BlockInputs` to `BlockFinished`, and spawn to `BlockFinished` in all.
//!
//! The added cost of a block run under OOMOL is (2) spawn to `BlockFinished` minus (1). The
//! engine's own scheduling is not part of it (see the README for a run under oocana itself).
//!
//! Usage: `cargo build --release && ./target/release/bench-blocks [--runs N]`.

#[path = "shared/mod.rs"]
mod shared;

use std::net::TcpListener;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{Client, Connection, Event, Incoming, MqttOptions, QoS};
use serde_json::{json, Value};
use shared::{write_script, Server};

fn main() -> ExitCode {
    match bench(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-blocks: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: Vec<String>) -> Result<()> {
    let mut runs: usize = 50;
    let mut nodelay = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => runs = it.next().context("--runs needs a number")?.parse()?,
            "--broker-nodelay" => nodelay = true,
            "-h" | "--help" => {
                println!("bench-blocks [--runs N (default 50)] [--broker-nodelay (mosquitto's set_tcp_nodelay)]");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let dir = tempfile::Builder::new().prefix("sr-bench-blocks-").tempdir()?;
    write_script(dir.path(), "quick.sh", "#!/bin/sh\necho hello\n")?;
    let scripts = json!({ "scripts": [{ "id": "quick", "path": "./quick.sh", "mode": "sync" }] });
    let config = json!({
        "server": { "host": "127.0.0.1", "port": 0 },
        "runner": { "logsDir": "./logs" },
        "scriptsFile": "./scripts.json"
    });
    let server = Server::start_on(dir.path(), &config, &scripts, None)?;
    let broker = Broker::start(nodelay)?;
    let mut engine = Engine::connect(broker.port)?;
    let exe = std::env::current_exe()?.with_file_name("script-runner");
    let job = shared::agent()
        .post(&format!("{}/run", server.base))
        .send_json(json!({ "scriptId": "quick", "mode": "sync" }))?
        .into_json::<Value>()?;
    let job_id = job["jobId"].as_str().context("no job id")?.to_string();
    let url = server.base.clone();
    let cases = [
        ("get-job-status", json!({ "job_id": job_id, "script_runner_url": url, "token": null })),
        (
            "run-script-sync",
            json!({ "script_id": "quick", "args": [], "timeout_sec": 60, "idempotency_key": null,
                    "script_runner_url": url, "token": null }),
        ),
    ];
    println!(
        "script-runner blocks bench: {runs} runs of each block each way; server pid {}, broker port {} (set_tcp_nodelay {nodelay})",
        server.pid(),
        broker.port
    );
    println!(
        "{:<18} {:>16} {:>16} {:>18} {:>18} {:>14}",
        "block", "--inputs ms", "spawn->ready ms", "inputs->finish ms", "spawn->finish ms", "added ms"
    );
    for (name, inputs) in cases {
        let (mut cli, mut ready, mut work, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            cli.push(run_cli(&exe, name, &inputs)?);
            let t = engine.run_worker(&exe, name, &inputs, &format!("J{i}-{name}"))?;
            ready.push(t.ready);
            work.push(t.finished - t.ready);
            total.push(t.finished);
        }
        let (c, r, w, t) = (median(&mut cli), median(&mut ready), median(&mut work), median(&mut total));
        println!("{name:<18} {c:>16.2} {r:>16.2} {w:>18.2} {t:>18.2} {:>14.2}", t - c);
        println!(
            "{:<18} {:>16.2} {:>16.2} {:>18.2} {:>18.2}   (p90)",
            "",
            p90(&mut cli),
            p90(&mut ready),
            p90(&mut work),
            p90(&mut total)
        );
    }
    Ok(())
}

/// Spawn to exit of the CLI front end, in ms.
fn run_cli(exe: &std::path::Path, name: &str, inputs: &Value) -> Result<f64> {
    let started = Instant::now();
    let out = Command::new(exe).args(["block", name, "--inputs", &inputs.to_string()]).output()?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!("block {name} --inputs failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(ms)
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

fn p90(v: &mut [f64]) -> f64 {
    percentile(v, 0.9)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(f64::NAN)
}

/// A mosquitto broker on a free loopback port, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    /// `nodelay`: mosquitto's `set_tcp_nodelay` (off by default, as in Studio's broker).
    fn start(nodelay: bool) -> Result<Broker> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("mosquitto");
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = std::env::temp_dir().join(format!("bench-blocks-mosquitto-{port}.conf"));
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay {nodelay}\n"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {bin} (apt-get install mosquitto)"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not listen on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Broker { child, port })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This binary playing OOMOL's engine: one connection, subscribed to its session's topic.
struct Engine {
    client: Client,
    connection: Connection,
    port: u16,
}

/// One worker run's times from its spawn, in ms.
struct WorkerTimes {
    ready: f64,
    finished: f64,
}

const SESSION: &str = "bench-session";

impl Engine {
    fn connect(port: u16) -> Result<Engine> {
        let mut options = MqttOptions::new(format!("oocana-scheduler-{SESSION}"), "127.0.0.1", port);
        options.set_max_packet_size(256 << 20, 256 << 20);
        let (client, mut connection) = Client::new(options, 64);
        let mut network = connection.eventloop.network_options();
        network.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(network);
        client.subscribe(format!("session/{SESSION}"), QoS::AtLeastOnce)?;
        loop {
            match connection.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("engine connection: {e}"),
                Err(e) => bail!("engine connection: {e:?}"),
            }
        }
        Ok(Engine { client, connection, port })
    }

    /// Spawns a worker for `job`, answers its `BlockReady` with the inputs, and times it.
    fn run_worker(&mut self, exe: &std::path::Path, name: &str, inputs: &Value, job: &str) -> Result<WorkerTimes> {
        let started = Instant::now();
        let mut child = Command::new(exe)
            .args(["block", name, "--address", &format!("127.0.0.1:{}", self.port), "--session-id", SESSION])
            .args(["--job-id", job])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut ready = None;
        let deadline = started + Duration::from_secs(30);
        let finished = loop {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("worker {job} did not finish in 30 s");
            }
            let Ok(Ok(Event::Incoming(Incoming::Publish(publish)))) =
                self.connection.recv_timeout(Duration::from_millis(100))
            else {
                continue;
            };
            let message: Value = serde_json::from_slice(&publish.payload)?;
            if message["job_id"] != job {
                continue;
            }
            match message["type"].as_str() {
                Some("BlockReady") => {
                    ready = Some(started.elapsed().as_secs_f64() * 1000.0);
                    let inputs = json!({ "type": "BlockInputs", "session_id": SESSION, "job_id": job,
                                         "stacks": [], "inputs": inputs, "inputs_def": null });
                    self.client.publish(
                        format!("inputs/{SESSION}/{job}"),
                        QoS::AtLeastOnce,
                        false,
                        inputs.to_string(),
                    )?;
                }
                Some("BlockFinished") => {
                    if !message["error"].is_null() {
                        bail!("worker {job}: {}", message["error"]);
                    }
                    break started.elapsed().as_secs_f64() * 1000.0;
                }
                _ => {}
            }
        };
        let _ = child.wait();
        Ok(WorkerTimes { ready: ready.context("BlockFinished before BlockReady")?, finished })
    }
}
