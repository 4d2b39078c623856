//! A run's event stream (`GET /api/script-runs/{id}/events`, issue 16): the events of a run
//! with steps, an approval, a pause and a resume, in order, with bodies equal to the API's
//! reads; resuming by `Last-Event-ID` with nothing lost or repeated, also across a restart of
//! the server (the events come from the database); an ended run streams and closes; the errors.
//! The stream is read with a plain HTTP client and parsed here.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, assert_error, entry, open_gate, wait_for_gate, Builder, Cluster, TestServer};

/// Upper bound for anything a test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// One server-sent event as a client parses it.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: u64,
    event: String,
    data: Value,
}

/// An open event stream.
struct Stream {
    lines: BufReader<Box<dyn Read + Send + Sync>>,
}

impl Stream {
    /// Opens the run's stream; `last` goes in `Last-Event-ID`. Panics unless it is a 200
    /// `text/event-stream`.
    fn open(server: &TestServer, id: &str, last: Option<u64>) -> Stream {
        let response = request(server, &format!("/api/script-runs/{id}/events"), last);
        assert_eq!(response.content_type(), "text/event-stream");
        Stream { lines: BufReader::new(Box::new(response.into_reader())) }
    }

    /// The next event; `None` once the server closed the stream. Comments (heartbeats) are
    /// skipped.
    fn next(&mut self) -> Option<Sse> {
        let (mut id, mut event, mut data) = (None, None, String::new());
        loop {
            let mut line = String::new();
            if self.lines.read_line(&mut line).unwrap_or(0) == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if event.is_none() && data.is_empty() {
                    continue;
                }
                let event: String = event.take().unwrap_or_else(|| "message".into());
                let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event {event} data {data:?}: {e}"));
                return Some(Sse { id: id.take().unwrap_or_else(|| panic!("event {event} has no id")), event, data });
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.parse().unwrap_or_else(|_| panic!("id {value:?}"))),
                "event" => event = Some(value.to_string()),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
    }

    /// `n` events (panics if the stream closes first).
    fn take(&mut self, n: usize) -> Vec<Sse> {
        (0..n).map(|i| self.next().unwrap_or_else(|| panic!("the stream closed after {i} of {n} events"))).collect()
    }

    /// Every event until the server closes the stream.
    fn rest(mut self) -> Vec<Sse> {
        let deadline = Instant::now() + WAIT;
        let mut events = Vec::new();
        while let Some(event) = self.next() {
            events.push(event);
            assert!(Instant::now() < deadline, "the stream did not close: {events:?}");
        }
        events
    }
}

/// A GET of the stream with its own agent (reads may wait long, the whole response longer);
/// panics unless it is answered 200.
fn request(server: &TestServer, path: &str, last: Option<u64>) -> ureq::Response {
    let agent = ureq::AgentBuilder::new().timeout_connect(WAIT).timeout_read(WAIT).build();
    let mut req = agent.get(&format!("{}{path}", server.base)).set("Accept", "text/event-stream");
    if let Some(last) = last {
        req = req.set("Last-Event-ID", &last.to_string());
    }
    req.call().unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Every event of an ended run, read fresh.
fn all_events(server: &TestServer, id: &str) -> Vec<Sse> {
    Stream::open(server, id, None).rest()
}

fn kinds(events: &[Sse]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

fn ids(events: &[Sse]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

/// A workflow: `before` steps, then waits for the gate file `go`, then `after` steps.
fn gated_steps(server: &TestServer, before: usize, after: usize) -> String {
    let gate = wait_for_gate(&server.dir().join("go"));
    let step = |n: usize| format!("script-runner step s{n} -- echo {n} >&2\n");
    let mut source: String = (1..=before).map(step).collect();
    source.push_str(&gate);
    source.push('\n');
    source.extend((before + 1..=before + after).map(step));
    source.push_str("echo '{\"done\": true}'\n");
    server.launch_bash(&source, json!({}))
}

#[test]
fn a_run_streams_its_steps_approval_pause_resume_and_end_in_order_with_bodies_equal_to_the_api() {
    let server = Builder::new().workflows(json!({})).start();
    let gate = wait_for_gate(&server.dir().join("go"));
    let source = format!(
        "script-runner step one -- echo one >&2\nscript-runner step gate --approval 'go?' >&2 || exit 4\n{gate}\n\
         script-runner step two -- echo two >&2\necho '{{\"done\": true}}'\n"
    );
    let id = server.launch_bash(&source, json!({"n": 1}));
    let mut stream = Stream::open(&server, &id, None);

    let first = stream.take(4);
    assert_eq!(kinds(&first), ["status", "step.record", "approval.asked", "status"], "{first:?}");
    assert_eq!(first[0].data["status"], json!("running"));
    assert_eq!(first[0].data["args"], json!({"n": 1}));
    assert_eq!(first[0].data["attempt"], json!(1), "the first execution is counted in the launch's event");
    assert_eq!(first[1].data["stepKey"], json!("one"));
    assert_eq!((&first[2].data["stepKey"], &first[2].data["status"]), (&json!("gate"), &json!("started")));
    assert_eq!(first[3].data["status"], json!("awaiting"));
    // While awaiting: the API shows what the last event showed.
    assert_eq!(server.script_run(&id)["run"], first[3].data);

    let r = server.post(&format!("/api/script-runs/{id}/approvals/gate"), json!({"approved": true, "by": "ann"}));
    assert_eq!(r.status, 200, "{}", r.text);
    let decided = stream.take(2);
    assert_eq!(kinds(&decided), ["approval.decided", "status"], "{decided:?}");
    assert_eq!(decided[0].data["result"]["by"], json!("ann"));
    assert_eq!(decided[1].data["status"], json!("running"));

    let r = server.post(&format!("/api/script-runs/{id}/pause"), json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    let paused = stream.take(1);
    assert_eq!(kinds(&paused), ["paused"]);
    assert_eq!(paused[0].data, server.script_run(&id)["run"], "the paused event is the paused run");
    let r = server.post(&format!("/api/script-runs/{id}/resume"), json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    let resumed = stream.take(1);
    assert_eq!(kinds(&resumed), ["resumed"]);
    // The new execution is counted in the resume's event, as in its answer.
    assert_eq!(resumed[0].data["attempt"], r.body["run"]["attempt"]);
    assert_eq!(resumed[0].data["attempt"], json!(2));
    open_gate(&server.dir().join("go"));

    let rest = stream.rest();
    assert_eq!(kinds(&rest), ["step.record", "end"], "{rest:?}");
    let body = server.script_run(&id);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(rest[1].data, body["run"], "the end event is the run as GET shows it");
    assert_eq!(rest[0].data, *entry(&body, "two"));
    assert_eq!(first[1].data, *entry(&body, "one"));
    assert_eq!(decided[0].data, *entry(&body, "gate"));

    // Numbered 1, 2, ... with no gap, and a fresh read is the same stream.
    let streamed: Vec<Sse> = [first, decided, paused, resumed].into_iter().flatten().collect();
    let fresh = all_events(&server, &id);
    assert_eq!(ids(&fresh), (1..=fresh.len() as u64).collect::<Vec<_>>());
    assert_eq!(fresh[..streamed.len()], streamed[..]);
    assert_eq!(fresh[fresh.len() - 2..], rest[..]);
}

#[test]
fn a_reader_cut_mid_run_resumes_by_last_event_id_with_every_event_once_in_order() {
    let server = Builder::new().workflows(json!({})).start();
    let id = gated_steps(&server, 6, 6);
    let mut first = Stream::open(&server, &id, None);
    let seen = first.take(4);
    // The connection is cut mid-run, while more events are being written.
    drop(first);
    open_gate(&server.dir().join("go"));
    let mut again = Stream::open(&server, &id, Some(seen.last().unwrap().id));
    let mut all = seen.clone();
    all.extend(again.take(2));
    drop(again);
    // And once more, with the query parameter a client without headers uses.
    let last = all.last().unwrap().id;
    let response = request(&server, &format!("/api/script-runs/{id}/events?lastEventId={last}"), None);
    all.extend(Stream { lines: BufReader::new(Box::new(response.into_reader())) }.rest());

    let fresh = all_events(&server, &id);
    assert_eq!(ids(&all), (1..=all.len() as u64).collect::<Vec<_>>(), "{all:?}");
    assert_eq!(all, fresh, "the pieces are the whole stream");
    assert_eq!(kinds(&all).iter().filter(|k| **k == "step.record").count(), 12);
    assert_eq!(kinds(&all).last(), Some(&"end"));
}

#[test]
fn a_reader_away_across_a_restart_gets_what_it_missed_from_the_database() {
    let mut server = Builder::new().workflows(json!({})).start();
    let id = gated_steps(&server, 2, 3);
    let seen = Stream::open(&server, &id, None).take(2);
    server.wait_step(&id, "s2", "completed");
    // Stopped mid-run (the run stays `running` and resumes at the next start, replaying its
    // steps): events are written before and after the restart while the reader is away.
    server.terminate(WAIT);
    server.restart();
    open_gate(&server.dir().join("go"));
    server.wait_run_terminal(&id, WAIT);

    let missed = Stream::open(&server, &id, Some(seen.last().unwrap().id)).rest();
    let mut all = seen;
    all.extend(missed);
    assert_eq!(all, all_events(&server, &id));
    assert_eq!(ids(&all), (1..=all.len() as u64).collect::<Vec<_>>());
    let records = ["step.record"; 5];
    assert_eq!(kinds(&all), [&["status"][..], &records, &["end"]].concat());
    assert_eq!(all.last().unwrap().data, server.script_run(&id)["run"]);
}

#[test]
fn an_ended_run_streams_what_is_stored_then_end_then_closes() {
    let server = Builder::new().workflows(json!({})).start();
    let id = server.launch_bash("script-runner step a -- true\nexit 3\n", json!({}));
    server.wait_run_terminal(&id, WAIT);
    let events = all_events(&server, &id);
    assert_eq!(kinds(&events), ["status", "step.record", "end"], "{events:?}");
    assert_eq!(events[2].data["status"], json!("failed"));
    // Resumed after its end: nothing more, closed at once.
    assert_eq!(Stream::open(&server, &id, Some(events[2].id)).rest(), Vec::new());
    // A fork is told on the run it came from, even after its end.
    let r = server.post(&format!("/api/script-runs/{id}/fork"), json!({}));
    assert_eq!(r.status, 201, "{}", r.text);
    let forked = Stream::open(&server, &id, Some(events[2].id)).rest();
    assert_eq!(kinds(&forked), ["forked"], "{forked:?}");
    assert_eq!(forked[0].data["forkedFrom"], json!(id));
    assert_eq!(forked[0].data["id"], r.body["run"]["id"]);
}

#[test]
fn an_unknown_run_is_404_and_a_malformed_last_event_id_is_400() {
    let server = Builder::new().workflows(json!({})).start();
    assert_error(&server.get("/api/script-runs/run_1_999/events"), 404, "RUN_NOT_FOUND");
    let id = server.launch_bash("true\n", json!({}));
    let path = format!("/api/script-runs/{id}/events");
    assert_error(&server.request("GET", &path, None, &[("Last-Event-ID", "abc")]), 400, "INVALID_ARGS");
    assert_error(&server.get(&format!("{path}?lastEventId=-1")), 400, "INVALID_ARGS");
}

#[test]
fn a_stalled_reader_does_not_hold_up_the_run_and_gets_every_event_when_it_reads_again() {
    let server = Builder::new().workflows(json!({})).start();
    let gate = server.dir().join("go");
    // Steps whose labels are the loop's variable (a literal label in a loop is refused).
    let source = format!(
        "{}\nfor i in $(seq 1 150); do script-runner step \"s$i\" --value \"$i\" >/dev/null || exit 5; done\n",
        wait_for_gate(&gate)
    );
    let id = server.launch_bash(&source, json!({}));
    let mut stalled = Stream::open(&server, &id, None);
    let first = stalled.take(1);
    // The reader takes nothing more while 150 steps are journaled and the run ends.
    open_gate(&gate);
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    let mut all = first;
    all.extend(stalled.rest());
    assert_eq!(all.len(), 152, "{:?}", kinds(&all));
    assert_eq!(ids(&all), (1..=152).collect::<Vec<_>>());
    assert_eq!(all, all_events(&server, &id));
}

#[test]
fn the_stream_needs_the_token_and_counts_against_max_streams() {
    let server =
        Builder::new().server("authToken", json!("s3cret")).server("maxStreams", json!(1)).workflows(json!({}));
    let server = server.start();
    let auth = [("Authorization", "Bearer s3cret")];
    let gate = server.dir().join("go");
    let launch = json!({ "source": wait_for_gate(&gate), "interpreter": "bash" }).to_string();
    let r = server.request("POST", "/api/script-runs", Some(launch.as_bytes()), &auth);
    assert_eq!(r.status, 201, "{}", r.text);
    let path = format!("/api/script-runs/{}/events", r.body["run"]["id"].as_str().unwrap());
    assert_error(&server.get(&path), 401, "UNAUTHORIZED");
    let agent = ureq::AgentBuilder::new().timeout_read(WAIT).build();
    let open = || agent.get(&format!("{}{path}", server.base)).set("Authorization", "Bearer s3cret");
    // Held open: the run waits for its gate.
    let first = open().call().unwrap();
    match open().call() {
        Err(ureq::Error::Status(429, response)) => {
            let body: Value = serde_json::from_str(&response.into_string().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], json!("TOO_MANY_STREAMS"), "{body}");
        }
        other => panic!("a second stream past maxStreams 1: {other:?}"),
    }
    open_gate(&gate);
    let events = Stream { lines: BufReader::new(Box::new(first.into_reader())) }.rest();
    assert_eq!(kinds(&events).last(), Some(&"end"));
}

#[test]
fn progress_is_an_event_and_only_the_latest_is_kept() {
    let server = Builder::new().workflows(json!({})).start();
    let gate = server.dir().join("go");
    let source = format!(
        "script-runner step --progress 1/3 one\nscript-runner step --progress 2/3 two\n{}\n         script-runner step --progress 3/3 three\n",
        wait_for_gate(&gate)
    );
    let id = server.launch_bash(&source, json!({}));
    let mut live = Stream::open(&server, &id, None);
    let seen = live.take(3);
    assert_eq!(kinds(&seen), ["status", "progress", "progress"], "{seen:?}");
    assert_eq!(seen[2].data["progress"], json!({"current": 2, "total": 3, "message": "two"}));
    assert_eq!(seen[2].data, server.script_run(&id)["run"], "the run as it is while it waits");
    open_gate(&gate);
    let rest = live.rest();
    assert_eq!(kinds(&rest), ["progress", "end"], "{rest:?}");
    // Stored: only the latest progress (a resumed reader misses none it needs: the end shows
    // it too); the numbers of those superseded are never given again.
    let fresh = all_events(&server, &id);
    assert_eq!(kinds(&fresh), ["status", "progress", "end"]);
    assert_eq!(ids(&fresh), [1, rest[0].id, rest[1].id]);
    assert_eq!(fresh[1..], rest[..]);
}

/// In a cluster, a node that does not hold the run streams its events as they are written by
/// the node that does (no bell rings there: it reads them on its poll).
#[test]
fn a_run_held_by_another_node_streams_live_from_any_node_of_a_cluster() {
    if !common::on_postgres() {
        println!("skipped: a cluster needs the PostgreSQL pass (tests/run)");
        return;
    }
    let cluster = Cluster::builder().workflows(json!({})).start(2);
    let (holder, other) = (&cluster.nodes[0], &cluster.nodes[1]);
    let gate = cluster.dir().join("go");
    let source = format!(
        "script-runner step a -- true\n{}\nscript-runner step b -- true\necho '{{\"done\": true}}'\n",
        wait_for_gate(&gate)
    );
    let id = holder.launch_bash(&source, json!({}));
    let mut stream = Stream::open(other, &id, None);
    let mut all = stream.take(2);
    open_gate(&gate);
    all.extend(stream.rest());
    assert_eq!(kinds(&all), ["status", "step.record", "step.record", "end"], "{all:?}");
    assert_eq!(all, all_events(holder, &id));
    let body = other.script_run(&id);
    assert_eq!((&all[3].data, &body["run"]["node"]), (&body["run"], &json!("n1")));
}
