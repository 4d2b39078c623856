//! `bench-follow`: how soon a line a script writes reaches a client following the job's log
//! live (`GET /jobs/:id/logs?follow=1&unit=lines`, server-sent events), and how that changes
//! with many followers of one job.
//!
//! It starts the `script-runner` binary built beside it on `127.0.0.1:0` in a temporary folder
//! and runs a script that prints its clock (`date +%s%N`, the moment before it writes) every
//! few milliseconds. Each follower reads the stream on its own connection and thread and takes
//! the difference to its own clock when the line's event arrives: the latency from the
//! script's write to the event at the client, through the pipe, the log file and the stream.
//!
//! Usage: `cargo build --release && ./target/release/bench-follow [--lines N] [--every-ms M]
//! [--followers 1,10,100]`.

#[path = "shared/mod.rs"]
mod shared;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use shared::{agent, write_script, Server};

fn main() -> ExitCode {
    match bench(&std::env::args().skip(1).collect::<Vec<_>>()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-follow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    lines: u32,
    every_ms: u32,
    followers: Vec<usize>,
}

fn options(args: &[String]) -> Result<Options> {
    let mut opts = Options { lines: 1000, every_ms: 5, followers: vec![1, 10, 100] };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--lines" => opts.lines = it.next().context("--lines needs a number")?.parse()?,
            "--every-ms" => opts.every_ms = it.next().context("--every-ms needs a number")?.parse()?,
            "--followers" => {
                opts.followers = it
                    .next()
                    .context("--followers needs a list")?
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<_, _>>()?;
            }
            "--help" | "-h" => {
                println!("bench-follow [--lines N (1000)] [--every-ms M (5)] [--followers 1,10,100]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(opts)
}

fn bench(args: &[String]) -> Result<()> {
    let opts = options(args)?;
    let dir = tempfile::Builder::new().prefix("sr-bench-follow-").tempdir()?;
    let sleep = f64::from(opts.every_ms) / 1000.0;
    let script = write_script(
        dir.path(),
        "clock.sh",
        &format!("#!/bin/bash\nfor ((i = 0; i < {}; i++)); do date +%s%N; sleep {sleep}; done\n", opts.lines),
    )?;
    let scripts = json!({ "scripts": [{ "id": "clock", "path": script, "mode": "async" }] });
    let config = json!({
        "server": { "port": 0, "maxStreams": 4096 },
        "runner": { "logsDir": dir.path().join("logs"), "maxConcurrent": 4 },
    });
    let server = Server::start_on(dir.path(), &config, &scripts, None)?;
    println!(
        "follow latency: a script's write to the line event at the client ({} lines, one every {} ms)",
        opts.lines, opts.every_ms
    );
    println!("{:>10} {:>10} {:>10} {:>10} {:>10} {:>10}", "followers", "events", "p50", "p90", "p99", "max");
    for &n in &opts.followers {
        let job: Value =
            agent().post(&format!("{}/run", server.base)).send_json(json!({ "scriptId": "clock" }))?.into_json()?;
        let id = job["jobId"].as_str().context("no jobId")?.to_string();
        let readers: Vec<_> = (0..n)
            .map(|_| {
                let (base, id) = (server.base.clone(), id.clone());
                std::thread::spawn(move || follow(&base, &id))
            })
            .collect();
        let mut all = Vec::new();
        for r in readers {
            all.extend(r.join().map_err(|_| anyhow::anyhow!("a follower panicked"))??);
        }
        all.sort();
        let pct = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
        println!(
            "{n:>10} {:>10} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms",
            all.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        );
    }
    drop(server);
    Ok(())
}

/// Follows the job from its first line to its end; each line event's latency.
fn follow(base: &str, id: &str) -> Result<Vec<Duration>> {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    // HTTP/1.0: the body is the event stream as it is, not chunked.
    write!(stream, "GET /jobs/{id}/logs?follow=1&unit=lines HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut latencies = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else { continue };
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let event: Value = serde_json::from_str(data)?;
        let Some(text) = event.get("line").and_then(Value::as_str) else {
            if event.get("status").is_some() {
                break; // the end event: the job
            }
            continue;
        };
        let written: u128 = text.trim().parse().context("a clock line")?;
        latencies.push(Duration::from_nanos(u64::try_from(now.saturating_sub(written))?));
    }
    if latencies.is_empty() {
        bail!("no line arrived");
    }
    Ok(latencies)
}
