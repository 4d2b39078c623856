//! `bench-callbacks`: how soon a job's completion callback reaches its receiver after the job
//! ended. (Whether callbacks slow other jobs: `bench --only-sync4`, against a build without
//! them.)
//!
//! It starts the `script-runner` binary built beside it on `127.0.0.1:0` in a temporary folder,
//! with a receiver of its own on loopback (answers `200` at once). It submits N async jobs of a
//! trivial script, each with `callback: {url}`, and takes, for each delivery, the receiver's
//! clock minus the job's `endedAt` (the server's clock: same machine).
//!
//! Usage: `cargo build --release && ./target/release/bench-callbacks [--jobs N]`.

#[path = "shared/mod.rs"]
mod shared;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use shared::{agent, write_script, Server};

fn main() -> ExitCode {
    match bench(&std::env::args().skip(1).collect::<Vec<_>>()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-callbacks: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &[String]) -> Result<()> {
    let mut jobs = 500_usize;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--jobs" => jobs = it.next().context("--jobs needs a number")?.parse()?,
            "--help" | "-h" => {
                println!("bench-callbacks [--jobs N (500)]");
                return Ok(());
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let dir = tempfile::Builder::new().prefix("sr-bench-cb-").tempdir()?;
    let script = write_script(dir.path(), "ok.sh", "#!/bin/sh\necho ok\n")?;
    let scripts = json!({ "scripts": [{ "id": "ok", "path": script, "mode": "sync" }] });
    let config = json!({
        "server": { "port": 0 },
        "runner": { "logsDir": dir.path().join("logs"), "maxConcurrent": 4, "maxQueued": 100000 },
        "callbacks": { "secret": "bench-secret" },
    });
    let server = Server::start_on(dir.path(), &config, &scripts, None)?;
    let (url, arrivals, stop) = receiver()?;

    // Delivery latency: jobs submitted one after another, each delivery timed at arrival.
    for _ in 0..jobs {
        agent()
            .post(&format!("{}/run", server.base))
            .send_json(json!({ "scriptId": "ok", "mode": "async", "callback": { "url": url } }))?;
    }
    let mut latencies = Vec::with_capacity(jobs);
    let deadline = Instant::now() + Duration::from_secs(120);
    while latencies.len() < jobs && Instant::now() < deadline {
        let Ok((arrived_ms, body)) = arrivals.recv_timeout(Duration::from_secs(10)) else { break };
        let Some(ended) = body.get("endedAt").and_then(Value::as_str) else { continue };
        latencies.push(arrived_ms - iso_ms(ended)?);
    }
    if latencies.is_empty() {
        bail!("no callback arrived");
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "callback delivery, job end to receiver: {} of {jobs} delivered; p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );

    stop.store(true, Ordering::Relaxed);
    Ok(())
}

/// What the receiver saw: (arrival ms since the epoch, body) per request.
type Arrivals = mpsc::Receiver<(i64, Value)>;

/// A loopback HTTP receiver answering 200: its URL, what arrives, and its stop flag.
fn receiver() -> Result<(String, Arrivals, Arc<AtomicBool>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stopped.load(Ordering::Relaxed) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || serve(stream, &tx));
        }
    });
    Ok((url, rx, stop))
}

/// Answers every request of one connection with 200, reporting each body.
fn serve(stream: std::net::TcpStream, tx: &mpsc::Sender<(i64, Value)>) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).map_or(true, |n| n == 0) {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).map_or(true, |n| n == 0) {
                return;
            }
            let l = line.trim();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        if let Ok(value) = serde_json::from_slice(&body) {
            let _ = tx.send((now, value));
        }
        if writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}

/// Milliseconds since the epoch of an ISO time as the server writes it (`2026-12-06T19:10:04.938Z`).
fn iso_ms(text: &str) -> Result<i64> {
    let t = text.trim_end_matches('Z');
    let (date, time) = t.split_once('T').context("an ISO time")?;
    let d: Vec<i64> = date.split('-').map(str::parse).collect::<Result<_, _>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<i64> = hms.split(':').map(str::parse).collect::<Result<_, _>>()?;
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms: i64 = format!("{frac:0<3}")[..3].parse()?;
    Ok(((days * 24 + h[0]) * 60 + h[1]) * 60_000 + h[2] * 1000 + ms)
}
