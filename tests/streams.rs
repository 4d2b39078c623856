//! Event streams as a client sees them: a job's log followed live (bytes and lines, resumed by
//! `Last-Event-ID` after a cut), the server's lifecycle feed, and what bounds them (the stream
//! cap, heartbeats, shutdown, auth, stalled readers).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::sse::{SseClient, SseEvent};
use crate::common::{Builder, TestServer};

const WAIT: Duration = Duration::from_secs(30);

/// Prints 120 numbered lines with a multi-byte character, a few milliseconds apart.
const CHATTY: &str = r#"i=1
while [ $i -le 120 ]; do
  echo "line $i: ünïcödé €"
  i=$((i+1))
  sleep 0.005
done
echo "stderr end" >&2"#;

fn follow(server: &TestServer, id: &str, query: &str, last: Option<&str>) -> SseClient {
    let mut headers = vec![("Accept", "text/event-stream")];
    if let Some(last) = last {
        headers.push(("Last-Event-ID", last));
    }
    let client = SseClient::open(&server.base, &format!("/jobs/{id}/logs?{query}"), &headers);
    assert_eq!(client.status, 200, "follow /jobs/{id}/logs?{query}");
    assert_eq!(client.header("content-type"), Some("text/event-stream"));
    client
}

/// The whole stored stream, read by byte pages.
fn stored(server: &TestServer, id: &str, stream: &str) -> String {
    let r = server.get(&format!("/jobs/{id}/logs?stream={stream}&limit=10000000"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["data"].as_str().unwrap().to_string()
}

/// Output events' data joined, asserting each chunk starts where the previous one ended and
/// carries its end offset as its id.
fn joined(events: &[SseEvent], from: u64) -> (String, u64) {
    let mut text = String::new();
    let mut at = from;
    for e in events.iter().filter(|e| e.event == "output") {
        let body = e.json();
        assert_eq!(body["offset"], json!(at), "chunks are contiguous: {e:?}");
        let next = body["nextOffset"].as_u64().unwrap();
        assert_eq!(e.id.as_deref(), Some(next.to_string().as_str()), "the id is the resume point");
        assert_eq!(next - at, body["data"].as_str().unwrap().len() as u64, "UTF-8 text, whole characters");
        text.push_str(body["data"].as_str().unwrap());
        at = next;
    }
    (text, at)
}

#[test]
fn a_followed_log_arrives_whole_and_in_order_then_ends_with_the_job() {
    let server = Builder::new().script_entry("chatty", CHATTY, json!({ "mode": "async" })).start();
    let id = server.run_async("chatty", &[]);
    let mut client = follow(&server, &id, "follow=1", None);
    let events = client.rest();
    let end = events.last().unwrap();
    assert_eq!(end.event, "end", "the last event is the end: {events:?}");
    let (text, at) = joined(&events, 0);
    assert_eq!(text, stored(&server, &id, "stdout"));
    assert_eq!(text.lines().count(), 120);
    assert!(events.iter().filter(|e| e.event == "output").count() > 1, "streamed while it ran, not once at the end");
    assert_eq!(end.id.as_deref(), Some(at.to_string().as_str()));
    let job = server.job(&id);
    assert_eq!(end.json(), job, "the end event is the job as GET /jobs/:id shows it");
    assert_eq!(job["status"], "succeeded");

    // The other stream, in lines, with `follow=1` alone (no Accept header).
    let mut client = SseClient::open(&server.base, &format!("/jobs/{id}/logs?follow=1&stream=stderr&unit=lines"), &[]);
    let events = client.rest();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((events[0].event.as_str(), events[0].id.as_deref()), ("line", Some("1")));
    assert_eq!(events[0].json(), json!({ "offset": 0, "nextOffset": 1, "line": "stderr end" }));
    assert_eq!(events[1].event, "end");
}

#[test]
fn a_cut_stream_resumes_at_its_last_event_id_without_loss_or_repeat() {
    let server = Builder::new().script_entry("chatty", CHATTY, json!({ "mode": "async" })).start();

    // Bytes: cut after a few chunks, resume from the last id.
    let id = server.run_async("chatty", &[]);
    let mut client = follow(&server, &id, "", None);
    let first: Vec<SseEvent> = (0..3).map(|_| client.next().unwrap()).collect();
    assert!(first.iter().all(|e| e.event == "output"), "{first:?}");
    drop(client); // the connection is cut mid-stream
    std::thread::sleep(Duration::from_millis(100));
    let (head, at) = joined(&first, 0);
    let last = first.last().unwrap().id.clone().unwrap();
    let mut client = follow(&server, &id, "follow=1", Some(&last));
    let rest = client.rest();
    let (tail, _) = joined(&rest, at);
    assert_eq!(format!("{head}{tail}"), stored(&server, &id, "stdout"), "no byte lost, none repeated");
    assert_eq!(rest.last().unwrap().event, "end");

    // Lines: the same, with the `lastEventId` query parameter instead of the header.
    let id = server.run_async("chatty", &[]);
    let mut client = follow(&server, &id, "unit=lines", None);
    let mut lines: Vec<(u64, String)> = Vec::new();
    let mut last = String::new();
    for _ in 0..10 {
        let e = client.next().unwrap();
        assert_eq!(e.event, "line");
        lines.push((e.json()["offset"].as_u64().unwrap(), e.json()["line"].as_str().unwrap().to_string()));
        last = e.id.unwrap();
    }
    drop(client);
    let mut client = follow(&server, &id, &format!("unit=lines&lastEventId={last}"), None);
    for e in client.rest() {
        if e.event == "line" {
            lines.push((e.json()["offset"].as_u64().unwrap(), e.json()["line"].as_str().unwrap().to_string()));
        }
    }
    let indexes: Vec<u64> = lines.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, (0..120).collect::<Vec<u64>>(), "every line once, in order");
    let texts: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    let expected: Vec<String> = (1..=120).map(|i| format!("line {i}: ünïcödé €")).collect();
    assert_eq!(texts, expected);

    // An explicit offset starts there; Last-Event-ID wins over it.
    let mut client = follow(&server, &id, "offset=5&unit=lines", Some("118"));
    let events = client.rest();
    assert_eq!(events.iter().filter(|e| e.event == "line").count(), 2, "{events:?}");
}

#[test]
fn a_finished_job_streams_what_is_stored_and_ends_at_once() {
    let server = Builder::new().script("hello", "printf 'one\\ntwo\\nthree'").start();
    let r = server.run("hello", &[], Some("sync"));
    let id = r.body["jobId"].as_str().unwrap().to_string();
    let started = Instant::now();
    let mut client = follow(&server, &id, "unit=lines", None);
    let events = client.rest();
    assert!(started.elapsed() < Duration::from_secs(5), "ends at once");
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["line", "line", "line", "end"], "{events:?}");
    assert_eq!(events[2].json()["line"], "three", "the last line without newline, once the job ended");
    // From the end: only `end`.
    let mut client = follow(&server, &id, "", Some("13"));
    let events = client.rest();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event, "end");
}

#[test]
fn output_past_the_stored_cap_says_so_in_an_event() {
    let server = Builder::new()
        .runner("maxLogBytesPerStream", json!(1000))
        .script("big", "head -c 5000 /dev/zero | tr '\\0' 'x'; echo")
        .start();
    let r = server.run("big", &[], Some("sync"));
    let id = r.body["jobId"].as_str().unwrap().to_string();
    let mut client = follow(&server, &id, "", None);
    let events = client.rest();
    let (text, at) = joined(&events, 0);
    assert_eq!((text.len(), at), (1000, 1000));
    let notice = events.iter().find(|e| e.event == "truncated").expect("a truncated event");
    assert_eq!(
        notice.json(),
        json!({ "stream": "stdout", "storedBytes": 1000, "truncated": true, "outputError": null })
    );
    assert_eq!(events.last().unwrap().event, "end");
}

#[test]
fn a_bad_follow_request_is_an_error_answer_not_a_stream() {
    let server = Builder::new().script("hello", "echo hi").start();
    let r = server.run("hello", &[], Some("sync"));
    let id = r.body["jobId"].as_str().unwrap().to_string();
    for (path, headers, status, code) in [
        ("/jobs/job_nope/logs?follow=1".to_string(), vec![], 404, "JOB_NOT_FOUND"),
        (format!("/jobs/{id}/logs?follow=maybe"), vec![], 400, "INVALID_ARGS"),
        (format!("/jobs/{id}/logs?follow=1&stream=both"), vec![], 400, "INVALID_ARGS"),
        (format!("/jobs/{id}/logs?follow=1"), vec![("Last-Event-ID", "abc")], 400, "INVALID_ARGS"),
        ("/events?kind=thing".to_string(), vec![], 400, "INVALID_ARGS"),
    ] {
        let mut client = SseClient::open(&server.base, &path, &headers);
        assert_eq!(client.status, status, "{path}");
        let body = client.body_json();
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
}

#[test]
fn the_lifecycle_feed_tells_jobs_created_started_and_ended_with_filters() {
    let server = Builder::new().script("a", "echo a").script("b", "echo b").start();
    let mut all = SseClient::open(&server.base, "/events", &[]);
    let mut only_a = SseClient::open(&server.base, "/events?script=a", &[]);
    let mut runs = SseClient::open(&server.base, "/events?kind=run", &[]);
    for c in [&all, &only_a, &runs] {
        assert_eq!(c.status, 200);
    }
    let a = server.run("a", &[], Some("sync")).body["jobId"].as_str().unwrap().to_string();
    let b = server.run("b", &[], Some("sync")).body["jobId"].as_str().unwrap().to_string();
    let seen: Vec<Value> = (0..6).map(|_| all.next().unwrap().json()).collect();
    let of = |id: &str| -> Vec<(String, String)> {
        seen.iter()
            .filter(|e| e["id"] == id)
            .map(|e| (e["event"].as_str().unwrap().to_string(), e["status"].as_str().unwrap().to_string()))
            .collect()
    };
    let expected = |s: &str| {
        vec![
            ("job.created".to_string(), "queued".to_string()),
            ("job.started".to_string(), "running".to_string()),
            ("job.ended".to_string(), s.to_string()),
        ]
    };
    assert_eq!(of(&a), expected("succeeded"), "{seen:?}");
    assert_eq!(of(&b), expected("succeeded"), "{seen:?}");
    assert!(seen.iter().all(|e| e["kind"] == "job" && e["at"].is_string()));
    let a_events: Vec<SseEvent> = (0..3).map(|_| only_a.next().unwrap()).collect();
    assert!(a_events.iter().all(|e| e.json()["script"] == "a"), "{a_events:?}");
    assert_eq!(a_events[0].event, "job.created");
    // Nothing about jobs in a run-only feed: its next event is a heartbeat-free silence.
    runs.set_timeout(Duration::from_millis(700));
    assert_eq!(runs.next(), None, "no job event in the kind=run feed");
}

#[test]
fn streams_past_the_cap_are_refused_and_idle_streams_get_heartbeats() {
    let server = Builder::new()
        .server("maxStreams", json!(2))
        .server("streamHeartbeatSec", json!(1))
        .script_entry("slow", "echo start; sleep 30", json!({ "mode": "async" }))
        .start();
    let id = server.run_async("slow", &[]);
    let mut one = follow(&server, &id, "", None);
    assert_eq!(one.next().unwrap().event, "output");
    let two = SseClient::open(&server.base, "/events", &[]);
    assert_eq!(two.status, 200);
    let mut third = SseClient::open(&server.base, "/events", &[]);
    assert_eq!(third.status, 429, "past server.maxStreams");
    assert_eq!(third.body_json()["error"]["code"], "TOO_MANY_STREAMS");
    // Heartbeat comments while nothing happens.
    let before = one.comments;
    std::thread::sleep(Duration::from_millis(2500));
    // What arrived meanwhile, then a read that times out.
    one.set_timeout(Duration::from_millis(300));
    assert_eq!(one.next(), None, "no event while the job sleeps");
    assert!(one.comments >= before + 2, "heartbeats every second: {} then {}", before, one.comments);
    // A client that leaves frees its slot.
    drop(two);
    let opened = crate::common::wait_until(
        || "a slot freed by a closed stream".into(),
        Duration::from_secs(10),
        || {
            let c = SseClient::open(&server.base, "/events", &[]);
            (c.status == 200).then_some(c)
        },
    );
    drop(opened);
    server.post(&format!("/jobs/{id}/cancel"), json!({}));
}

#[test]
fn streams_end_with_a_shutdown_event_when_the_server_stops() {
    let mut server = Builder::new()
        .runner("shutdownGraceSec", json!(1))
        .script_entry("slow", "echo start; sleep 30", json!({ "mode": "async" }))
        .start();
    let id = server.run_async("slow", &[]);
    let mut log = follow(&server, &id, "", None);
    assert_eq!(log.next().unwrap().event, "output");
    let mut feed = SseClient::open(&server.base, "/events", &[]);
    assert_eq!(feed.status, 200);
    server.signal(libc::SIGTERM);
    for client in [&mut log, &mut feed] {
        let events = client.rest();
        let last = events.last().unwrap_or_else(|| panic!("no shutdown event"));
        assert_eq!(last.event, "shutdown", "{events:?}");
        assert!(last.json()["resume"].as_str().unwrap().contains("Last-Event-ID"));
    }
    let status = server.wait_exit(WAIT);
    assert!(status.success(), "{status:?}");
}

#[test]
fn streams_need_the_token_like_every_other_route() {
    let server = Builder::new().server("authToken", json!("s3cret")).script("hello", "echo hi").start();
    for path in ["/events", "/jobs/job_x/logs?follow=1"] {
        let mut c = SseClient::open(&server.base, path, &[]);
        assert_eq!(c.status, 401, "{path}");
        assert_eq!(c.body_json()["error"]["code"], "UNAUTHORIZED");
    }
    let c = SseClient::open(&server.base, "/events", &[("Authorization", "Bearer s3cret")]);
    assert_eq!(c.status, 200);
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// How long `n` small sync jobs take one after another.
fn sync_jobs(server: &TestServer, n: usize) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        let r = server.run("small", &[], Some("sync"));
        assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    }
    started.elapsed()
}

/// A follower of the log that reads its first event and then nothing more: a receive buffer
/// of a few KiB, so the server's writes stop as soon as the socket's buffers are full.
fn stalled_reader(server: &TestServer, id: &str) -> SseClient {
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut client = SseClient::open_on(socket.into(), &addr.to_string(), &format!("/jobs/{id}/logs?follow=1"), &[]);
    assert_eq!(client.status, 200);
    assert_eq!(client.next().unwrap().event, "output");
    client
}

/// The issue's bound: 200 readers that stop reading a 100 MB log hold the server's memory to
/// their sockets' buffers and one event each, and other jobs run as fast as before.
#[test]
fn two_hundred_stalled_readers_of_a_100_mb_log_hold_bounded_memory_and_slow_no_job() {
    const READERS: usize = 200;
    /// What the readers may add to the server's resident memory (stated in the README).
    const BOUND_MIB: u64 = 64;
    let server = Builder::new()
        .runner("maxLogBytesPerStream", json!(128 * 1024 * 1024))
        .script("big", "yes 'a line of a big log, 0123456789 abcdefghijklmnopqrstuvwxyz' | head -c 100000000")
        .script("small", "echo ok")
        .start();
    let before = sync_jobs(&server, 20);
    // Async: a sync answer would carry the 100 MB.
    let id = server.run_async("big", &[]);
    assert_eq!(server.wait_terminal(&id, WAIT)["stdoutSize"], 100_000_000);
    let rss_before = rss_kib(server.pid());

    let mut readers: Vec<SseClient> = (0..READERS).map(|_| stalled_reader(&server, &id)).collect();
    std::thread::sleep(Duration::from_secs(2));
    let rss_stalled = rss_kib(server.pid());
    let during = sync_jobs(&server, 20);
    let grown_mib = rss_stalled.saturating_sub(rss_before) / 1024;
    println!(
        "{READERS} stalled readers: RSS {} MiB -> {} MiB (+{grown_mib} MiB); 20 sync jobs {before:?} before, {during:?} during",
        rss_before / 1024,
        rss_stalled / 1024
    );
    assert!(grown_mib < BOUND_MIB, "RSS grew {grown_mib} MiB with {READERS} stalled readers (bound {BOUND_MIB} MiB)");
    // Generous: the point is that jobs do not wait on readers (they would take seconds each).
    assert!(during < before * 3 + Duration::from_secs(2), "jobs slowed: {before:?} before, {during:?} during");

    // A stalled reader that reads again picks up where it stopped, from the file.
    let reader = &mut readers[0];
    reader.set_timeout(Duration::from_secs(30));
    let mut at = None;
    for _ in 0..50 {
        let e = reader.next().unwrap();
        assert_eq!(e.event, "output");
        let body = e.json();
        if let Some(at) = at {
            assert_eq!(body["offset"], json!(at), "contiguous after the stall");
        }
        at = body["nextOffset"].as_u64();
    }
    drop(readers);
    assert_eq!(server.run("small", &[], Some("sync")).body["status"], "succeeded");
}
