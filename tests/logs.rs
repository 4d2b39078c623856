//! Job logs as a client reads them: byte paging, line paging (also deep in large logs and while
//! the job runs), the log cap, previews and non-UTF-8 output.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{page, Builder, TestServer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// `GET /jobs/:id/logs?<query>`, asserting a 4xx error with this status and code; returns the message.
fn page_error(server: &TestServer, id: &str, query: &str, status: u16, code: &str) -> String {
    let r = server.get(&format!("/jobs/{id}/logs?{query}"));
    assert_eq!(r.status, status, "GET logs?{query}: {}", r.text);
    assert_eq!(r.body["ok"], json!(false), "{}", r.text);
    assert_eq!(r.body["error"]["code"], json!(code), "GET logs?{query}: {}", r.text);
    r.body["error"]["message"].as_str().unwrap().to_string()
}

/// The `data` of a byte page.
fn data(body: &Value) -> &str {
    body["data"].as_str().unwrap_or_else(|| panic!("no data in {body}"))
}

/// The `lines` of a line page.
fn lines(body: &Value) -> Vec<String> {
    body["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines in {body}"))
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

fn num(body: &Value, key: &str) -> u64 {
    body[key].as_u64().unwrap_or_else(|| panic!("{key} is not a number in {body}"))
}

/// Runs a sync job, asserting it succeeded; returns the response body (job + stdout/stderr).
fn run_sync(server: &TestServer, script: &str) -> Value {
    let r = server.run(script, &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    r.body
}

/// Runs an async job to its end, asserting it succeeded; returns its id.
fn run_to_end(server: &TestServer, script: &str) -> String {
    let id = server.run_async(script, &[]);
    let job = server.wait_terminal(&id, WAIT);
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    id
}

/// Polls a log page until `pred` holds, at most `WAIT`; returns the page.
fn wait_page(server: &TestServer, id: &str, query: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = page(server, id, query);
        if pred(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "logs?{query} never matched; last page: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `seq 1 n` as the script prints it.
fn seq_text(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

// ---------------------------------------------------------------- byte paging

#[test]
fn byte_pages_reassemble_exactly_the_stored_stdout() {
    let server = Builder::new().script("count", "seq 1 3000").start();
    let job = run_sync(&server, "count");
    let id = job["jobId"].as_str().unwrap();
    let expected = seq_text(3000);
    let mut offset = 0u64;
    let mut got = String::new();
    let mut pages = 0;
    loop {
        let body = page(&server, id, &format!("offset={offset}&limit=1000"));
        assert_eq!(num(&body, "offset"), offset, "{body}");
        assert_eq!(num(&body, "totalSize"), expected.len() as u64, "{body}");
        assert_eq!(body["jobId"], json!(id));
        assert_eq!(body["stream"], json!("stdout"));
        assert_eq!(body["truncated"], json!(false));
        let chunk = data(&body);
        assert!(chunk.len() <= 1000, "page longer than its limit: {}", chunk.len());
        assert_eq!(num(&body, "nextOffset"), offset + chunk.len() as u64, "{body}");
        if chunk.is_empty() {
            break;
        }
        got.push_str(chunk);
        offset = num(&body, "nextOffset");
        pages += 1;
        assert!(pages < 100, "paging does not end");
    }
    assert_eq!(got, expected);
    assert_eq!(pages, expected.len().div_ceil(1000));
    assert_eq!(job["stdout"], json!(expected));
    assert_eq!(job["stdoutSize"], json!(expected.len()));
}

#[test]
fn byte_page_at_or_past_the_end_is_empty_and_keeps_the_offset() {
    let server = Builder::new().script("hello", "echo hello world").start();
    let id = run_sync(&server, "hello")["jobId"].as_str().unwrap().to_string();
    for offset in [12u64, 13, 1000, 99_999_999_999] {
        let body = page(&server, &id, &format!("offset={offset}"));
        assert_eq!(data(&body), "", "offset {offset}: {body}");
        assert_eq!(num(&body, "offset"), offset, "{body}");
        assert_eq!(num(&body, "nextOffset"), offset, "{body}");
        assert_eq!(num(&body, "totalSize"), 12, "{body}");
    }
    let body = page(&server, &id, "offset=6");
    assert_eq!(data(&body), "world\n");
    assert_eq!(num(&body, "nextOffset"), 12);
}

#[test]
fn byte_limit_above_the_maximum_is_clamped_to_one_mebibyte() {
    // About 2 MB stored (cap raised so the log itself is not what limits the page).
    let server =
        Builder::new().runner("maxLogBytesPerStream", json!(8 * 1024 * 1024)).script("big", "seq 1 300000").start();
    let id = run_to_end(&server, "big");
    let expected = seq_text(300_000);
    assert!(expected.len() > 1_048_576 + 5);
    let body = page(&server, &id, "limit=99999999999");
    assert_eq!(data(&body).len(), 1_048_576);
    assert_eq!(data(&body), &expected[..1_048_576]);
    assert_eq!(num(&body, "nextOffset"), 1_048_576);
    assert_eq!(num(&body, "totalSize"), expected.len() as u64);
    // A limit just above the maximum is clamped too, from any offset.
    let body = page(&server, &id, "offset=5&limit=1048577");
    assert_eq!(data(&body), &expected[5..5 + 1_048_576]);
    assert_eq!(num(&body, "nextOffset"), 5 + 1_048_576);
}

#[test]
fn byte_limit_zero_or_missing_means_the_default_of_65536() {
    let server = Builder::new().script("count", "seq 1 30000").start();
    let id = run_to_end(&server, "count");
    let expected = seq_text(30_000);
    assert!(expected.len() > 65536);
    for query in ["limit=0", "", "offset=0&limit="] {
        let body = page(&server, &id, query);
        assert_eq!(data(&body), &expected[..65536], "{query}");
        assert_eq!(num(&body, "nextOffset"), 65536, "{query}");
    }
}

#[test]
fn byte_paging_reads_stderr_when_asked() {
    let server = Builder::new().script("both", "echo out; echo err1 >&2; echo err2 >&2").start();
    let id = run_sync(&server, "both")["jobId"].as_str().unwrap().to_string();
    let body = page(&server, &id, "stream=stderr");
    assert_eq!(body["stream"], json!("stderr"));
    assert_eq!(data(&body), "err1\nerr2\n");
    assert_eq!(num(&body, "totalSize"), 10);
    let body = page(&server, &id, "stream=stderr&offset=5&limit=3");
    assert_eq!(data(&body), "err");
    assert_eq!(num(&body, "nextOffset"), 8);
    let body = page(&server, &id, "stream=stdout");
    assert_eq!(data(&body), "out\n");
}

#[test]
fn unknown_stream_is_rejected_with_invalid_args() {
    let server = Builder::new().script("hello", "echo hi").start();
    let id = run_sync(&server, "hello")["jobId"].as_str().unwrap().to_string();
    for query in ["stream=both", "stream=STDOUT", "stream=stdin&unit=lines"] {
        let message = page_error(&server, &id, query, 400, "INVALID_ARGS");
        assert_eq!(message, "stream must be stdout or stderr", "{query}");
    }
}

#[test]
fn negative_or_non_integer_offset_and_limit_are_rejected() {
    let server = Builder::new().script("hello", "echo hi").start();
    let id = run_sync(&server, "hello")["jobId"].as_str().unwrap().to_string();
    for query in [
        "offset=-1",
        "offset=abc",
        "offset=1.5",
        "limit=-1",
        "limit=ten",
        "unit=lines&offset=-1",
        "unit=lines&offset=abc",
        "unit=lines&limit=-3",
    ] {
        page_error(&server, &id, query, 400, "INVALID_ARGS");
    }
}

#[test]
fn logs_of_an_unknown_job_are_not_found() {
    let server = Builder::new().script("hello", "echo hi").start();
    for query in ["", "unit=lines", "stream=stderr&offset=5"] {
        let message = page_error(&server, "job_nope", query, 404, "JOB_NOT_FOUND");
        assert_eq!(message, "job not found: job_nope", "{query}");
    }
}

// ---------------------------------------------------------------- line paging

#[test]
fn line_pages_serve_lines_without_newlines_and_count_them() {
    let server = Builder::new().script("count", "seq 1 250").start();
    let id = run_sync(&server, "count")["jobId"].as_str().unwrap().to_string();
    let body = page(&server, &id, "unit=lines&offset=0&limit=3");
    assert_eq!(lines(&body), ["1", "2", "3"]);
    assert_eq!(num(&body, "offset"), 0);
    assert_eq!(num(&body, "nextOffset"), 3);
    assert_eq!(num(&body, "totalLines"), 250);
    assert_eq!(body["jobId"], json!(id));
    assert_eq!(body["stream"], json!("stdout"));
    assert_eq!(body["truncated"], json!(false));
    assert!(body.get("data").is_none(), "a line page has no data: {body}");
    // Following nextOffset with the default limit (100) walks every line once.
    let mut offset = 0;
    let mut all = Vec::new();
    loop {
        let body = page(&server, &id, &format!("unit=lines&offset={offset}"));
        let got = lines(&body);
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 100);
        assert_eq!(num(&body, "nextOffset"), offset + got.len() as u64);
        offset = num(&body, "nextOffset");
        all.extend(got);
    }
    let expected: Vec<String> = (1..=250).map(|i| i.to_string()).collect();
    assert_eq!(all, expected);
}

#[test]
fn line_page_past_the_end_is_empty_and_keeps_the_offset() {
    let server = Builder::new().script("count", "seq 1 5").start();
    let id = run_sync(&server, "count")["jobId"].as_str().unwrap().to_string();
    for offset in [5u64, 6, 1000, 99_999_999_999] {
        let body = page(&server, &id, &format!("unit=lines&offset={offset}"));
        assert!(lines(&body).is_empty(), "offset {offset}: {body}");
        assert_eq!(num(&body, "offset"), offset);
        assert_eq!(num(&body, "nextOffset"), offset);
        assert_eq!(num(&body, "totalLines"), 5);
    }
    let body = page(&server, &id, "unit=lines&offset=3&limit=10");
    assert_eq!(lines(&body), ["4", "5"]);
    assert_eq!(num(&body, "nextOffset"), 5);
}

#[test]
fn line_limit_above_the_maximum_is_clamped_to_10000() {
    let server = Builder::new().script("count", "seq 1 25000").start();
    let id = run_to_end(&server, "count");
    let body = page(&server, &id, "unit=lines&limit=99999999999");
    let got = lines(&body);
    assert_eq!(got.len(), 10_000);
    assert_eq!(got.first().map(String::as_str), Some("1"));
    assert_eq!(got.last().map(String::as_str), Some("10000"));
    assert_eq!(num(&body, "nextOffset"), 10_000);
    assert_eq!(num(&body, "totalLines"), 25_000);
}

#[test]
fn line_limit_zero_or_missing_means_the_default_of_100() {
    let server = Builder::new().script("count", "seq 1 500").start();
    let id = run_sync(&server, "count")["jobId"].as_str().unwrap().to_string();
    for query in ["unit=lines&limit=0", "unit=lines", "unit=lines&offset=10&limit=0"] {
        let body = page(&server, &id, query);
        let got = lines(&body);
        assert_eq!(got.len(), 100, "{query}");
        let start = num(&body, "offset");
        assert_eq!(got[0], (start + 1).to_string(), "{query}");
        assert_eq!(num(&body, "nextOffset"), start + 100, "{query}");
    }
}

#[test]
fn crlf_line_endings_are_stripped_in_line_mode() {
    let server = Builder::new().script("crlf", r"printf 'one\r\ntwo\r\nthree\n\r\nlast\r\n'").start();
    let id = run_sync(&server, "crlf")["jobId"].as_str().unwrap().to_string();
    let body = page(&server, &id, "unit=lines");
    assert_eq!(lines(&body), ["one", "two", "three", "", "last"]);
    assert_eq!(num(&body, "totalLines"), 5);
    // Byte mode gives the bytes as stored.
    assert_eq!(data(&page(&server, &id, "")), "one\r\ntwo\r\nthree\n\r\nlast\r\n");
}

#[test]
fn final_line_without_newline_counts_once_the_job_has_ended() {
    let server = Builder::new().script("tail", r"printf 'a\nb\nno newline'").start();
    let id = run_sync(&server, "tail")["jobId"].as_str().unwrap().to_string();
    let body = page(&server, &id, "unit=lines");
    assert_eq!(lines(&body), ["a", "b", "no newline"]);
    assert_eq!(num(&body, "totalLines"), 3);
    assert_eq!(num(&body, "nextOffset"), 3);
    let body = page(&server, &id, "unit=lines&offset=2");
    assert_eq!(lines(&body), ["no newline"]);
    assert_eq!(num(&body, "nextOffset"), 3);
}

#[test]
fn empty_lines_are_preserved_in_line_mode() {
    let server = Builder::new().script("gaps", r"printf 'a\n\n\nb\n\n'").start();
    let id = run_sync(&server, "gaps")["jobId"].as_str().unwrap().to_string();
    let body = page(&server, &id, "unit=lines");
    assert_eq!(lines(&body), ["a", "", "", "b", ""]);
    assert_eq!(num(&body, "totalLines"), 5);
    let body = page(&server, &id, "unit=lines&offset=1&limit=2");
    assert_eq!(lines(&body), ["", ""]);
    assert_eq!(num(&body, "nextOffset"), 3);
}

#[test]
fn unknown_unit_is_rejected_with_invalid_args() {
    let server = Builder::new().script("hello", "echo hi").start();
    let id = run_sync(&server, "hello")["jobId"].as_str().unwrap().to_string();
    for query in ["unit=bogus", "unit=LINES", "unit=line"] {
        page_error(&server, &id, query, 400, "INVALID_ARGS");
    }
    // The two known units work.
    assert_eq!(data(&page(&server, &id, "unit=bytes")), "hi\n");
    assert_eq!(lines(&page(&server, &id, "unit=lines")), ["hi"]);
}

// ---------------------------------------------------------------- large logs

const BIG_LINES: u32 = 300_000;

fn numbered_lines_server() -> (TestServer, String) {
    let server = Builder::new()
        .runner("maxLogBytesPerStream", json!(8 * 1024 * 1024))
        .script("numbered", &format!(r#"awk 'BEGIN {{ for (i = 1; i <= {BIG_LINES}; i++) print "line " i }}'"#))
        .start();
    let id = run_to_end(&server, "numbered");
    (server, id)
}

#[test]
fn line_pages_deep_in_a_large_log_return_the_right_lines() {
    let (server, id) = numbered_lines_server();
    for offset in [0u64, 1, 1023, 1024, 1025, 2047, 2048, 65535, 65536, 150_000, 299_990] {
        let body = page(&server, &id, &format!("unit=lines&offset={offset}&limit=10"));
        let expected: Vec<String> = (offset + 1..=offset + 10).map(|n| format!("line {n}")).collect();
        assert_eq!(lines(&body), expected, "offset {offset}");
        assert_eq!(num(&body, "totalLines"), u64::from(BIG_LINES));
        assert_eq!(num(&body, "nextOffset"), offset + 10);
    }
    let body = page(&server, &id, "unit=lines&offset=299995&limit=100");
    assert_eq!(lines(&body), ["line 299996", "line 299997", "line 299998", "line 299999", "line 300000"]);
    assert_eq!(num(&body, "nextOffset"), 300_000);
    let body = page(&server, &id, "unit=lines&offset=300000");
    assert!(lines(&body).is_empty());
    assert_eq!(num(&body, "nextOffset"), 300_000);
}

#[test]
fn byte_pages_deep_in_a_large_log_return_the_right_bytes() {
    let (server, id) = numbered_lines_server();
    let expected: String = (1..=BIG_LINES).map(|i| format!("line {i}\n")).collect();
    let total = expected.len();
    for offset in [0usize, 1023, 1024, 65535, 65536, 1_000_000, 2_000_000, total - 10] {
        let body = page(&server, &id, &format!("offset={offset}&limit=4096"));
        let end = (offset + 4096).min(total);
        assert_eq!(data(&body), &expected[offset..end], "offset {offset}");
        assert_eq!(num(&body, "nextOffset"), end as u64);
        assert_eq!(num(&body, "totalSize"), total as u64);
    }
}

/// 3000 short lines, 30 lines of 100,000 bytes, 3000 short lines: index entries come from both
/// the line count and the byte distance.
fn long_lines_expected() -> Vec<String> {
    let mut out: Vec<String> = (1..=3000).map(|i| format!("s{i}")).collect();
    let fill = "x".repeat(100_000 - 12);
    out.extend((1..=30).map(|i| format!("{i:05}:{fill}:{i:05}")));
    out.extend((1..=3000).map(|i| format!("t{i}")));
    out
}

fn long_lines_server() -> (TestServer, String) {
    let script = r#"awk 'BEGIN {
  for (i = 1; i <= 3000; i++) print "s" i
  f = "x"; while (length(f) < 99988) f = f f; f = substr(f, 1, 99988)
  for (i = 1; i <= 30; i++) printf "%05d:%s:%05d\n", i, f, i
  for (i = 1; i <= 3000; i++) print "t" i
}'"#;
    let server = Builder::new().runner("maxLogBytesPerStream", json!(8 * 1024 * 1024)).script("long", script).start();
    let id = run_to_end(&server, "long");
    (server, id)
}

#[test]
fn line_pages_of_a_log_with_very_long_lines_return_the_right_lines() {
    let (server, id) = long_lines_server();
    let expected = long_lines_expected();
    for offset in [0usize, 2998, 2999, 3000, 3001, 3013, 3027, 3029, 3030, 4000, 6025] {
        let body = page(&server, &id, &format!("unit=lines&offset={offset}&limit=5"));
        let end = (offset + 5).min(expected.len());
        let got = lines(&body);
        assert_eq!(got.len(), end - offset, "offset {offset}");
        for (k, line) in got.iter().enumerate() {
            assert!(*line == expected[offset + k], "offset {offset}: line {} differs (len {})", offset + k, line.len());
        }
        assert_eq!(num(&body, "nextOffset"), end as u64);
        assert_eq!(num(&body, "totalLines"), expected.len() as u64);
    }
}

#[test]
fn a_line_page_of_long_lines_never_serves_a_cut_line() {
    // 20 lines of 100,000 bytes exceed the 1 MiB page budget: the page may hold fewer lines,
    // but each line it serves must be whole, and following nextOffset must give every line.
    let (server, id) = long_lines_server();
    let expected = long_lines_expected();
    let mut offset = 3000usize;
    while offset < 3030 {
        let body = page(&server, &id, &format!("unit=lines&offset={offset}&limit=20"));
        let got = lines(&body);
        assert!(!got.is_empty(), "offset {offset}: empty page");
        let text: usize = got.iter().map(String::len).sum();
        assert!(text <= 1024 * 1024, "page holds {text} bytes of line text");
        for (k, line) in got.iter().enumerate() {
            assert!(
                *line == expected[offset + k],
                "offset {offset}: line {} is {} bytes, expected {} bytes (a cut line was served)",
                offset + k,
                line.len(),
                expected[offset + k].len()
            );
        }
        assert_eq!(num(&body, "nextOffset"), (offset + got.len()) as u64);
        offset += got.len();
    }
}

// ---------------------------------------------------------------- paging while running

/// Prints three lines and a partial one, waits (bounded) for `<dir>/release`, then finishes
/// the partial line and prints two more.
const RUNNING_SCRIPT: &str = r#"printf 'a1\na2\na3\npart'
release="$(dirname "$0")/../release"
i=0
while [ ! -e "$release" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
printf 'ial\nb1\nb2\n'"#;

#[test]
fn byte_paging_of_a_running_job_serves_everything_written_so_far() {
    let server = Builder::new().script_entry("slow", RUNNING_SCRIPT, json!({ "mode": "async" })).start();
    let id = server.run_async("slow", &[]);
    let body = wait_page(&server, &id, "", |b| b["data"] == json!("a1\na2\na3\npart"));
    assert_eq!(server.job(&id)["status"], json!("running"));
    assert_eq!(num(&body, "totalSize"), 13);
    assert_eq!(num(&body, "nextOffset"), 13);
    let end = page(&server, &id, "offset=13");
    assert_eq!(data(&end), "");
    assert_eq!(num(&end, "nextOffset"), 13);
    assert_eq!(data(&page(&server, &id, "offset=9")), "part");

    std::fs::write(server.dir().join("release"), "go").unwrap();
    let job = server.wait_terminal(&id, WAIT);
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    let body = page(&server, &id, "");
    assert_eq!(data(&body), "a1\na2\na3\npartial\nb1\nb2\n");
    assert_eq!(num(&body, "totalSize"), 23);
}

#[test]
fn line_paging_of_a_running_job_serves_only_complete_lines() {
    let server = Builder::new().script_entry("slow", RUNNING_SCRIPT, json!({ "mode": "async" })).start();
    let id = server.run_async("slow", &[]);
    // Wait until the partial line is stored, then page by lines.
    wait_page(&server, &id, "", |b| b["data"] == json!("a1\na2\na3\npart"));
    let body = wait_page(&server, &id, "unit=lines", |b| b["totalLines"].as_u64().unwrap_or(0) >= 3);
    assert_eq!(server.job(&id)["status"], json!("running"));
    assert_eq!(lines(&body), ["a1", "a2", "a3"], "the unfinished line was served: {body}");
    assert_eq!(num(&body, "totalLines"), 3);
    assert_eq!(num(&body, "nextOffset"), 3);
    let past = page(&server, &id, "unit=lines&offset=3");
    assert!(lines(&past).is_empty(), "the unfinished line was served: {past}");
    assert_eq!(num(&past, "nextOffset"), 3);

    std::fs::write(server.dir().join("release"), "go").unwrap();
    let job = server.wait_terminal(&id, WAIT);
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    let body = page(&server, &id, "unit=lines");
    assert_eq!(lines(&body), ["a1", "a2", "a3", "partial", "b1", "b2"]);
    assert_eq!(num(&body, "totalLines"), 6);
    let body = page(&server, &id, "unit=lines&offset=3");
    assert_eq!(lines(&body), ["partial", "b1", "b2"]);
}

// ---------------------------------------------------------------- log cap and previews

/// 20,000 lines `row 00001`..`row 20000` (200,000 bytes), then a marker file beside scripts/.
const CAPPED_SCRIPT: &str = r#"awk 'BEGIN { for (i = 1; i <= 20000; i++) printf "row %05d\n", i }'
echo done > "$(dirname "$0")/../marker""#;

fn capped_expected() -> String {
    (1..=20000).map(|i| format!("row {i:05}\n")).collect()
}

fn capped_server() -> TestServer {
    Builder::new()
        .runner("maxLogBytesPerStream", json!(1000))
        .runner("previewMaxBytes", json!(64))
        .script("capped", CAPPED_SCRIPT)
        .start()
}

#[test]
fn log_cap_keeps_the_first_bytes_and_marks_the_stream_truncated() {
    let server = capped_server();
    let job = run_sync(&server, "capped");
    let id = job["jobId"].as_str().unwrap();
    let expected = capped_expected();
    assert_eq!(job["stdoutSize"], json!(1000));
    assert_eq!(job["stdoutTruncated"], json!(true));
    assert_eq!(job["stderrTruncated"], json!(false));
    let body = page(&server, id, "limit=99999");
    assert_eq!(num(&body, "totalSize"), 1000);
    assert_eq!(body["truncated"], json!(true));
    assert_eq!(data(&body), &expected[..1000]);
    let stored = std::fs::read(server.dir().join("logs").join(job["stdoutRef"].as_str().unwrap())).unwrap();
    assert_eq!(stored, expected.as_bytes()[..1000]);
    let body = page(&server, id, "offset=1000");
    assert_eq!(data(&body), "");
    assert_eq!(num(&body, "nextOffset"), 1000);
}

#[test]
fn log_cap_lets_the_script_run_to_its_end() {
    let server = capped_server();
    let job = run_sync(&server, "capped");
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    assert_eq!(job["code"], json!(0));
    assert_eq!(std::fs::read_to_string(server.dir().join("marker")).unwrap(), "done\n");
}

#[test]
fn preview_is_the_tail_of_everything_written_even_past_the_cap() {
    let server = capped_server();
    let job = run_sync(&server, "capped");
    let expected = capped_expected();
    assert_eq!(job["stdoutPreview"], json!(&expected[expected.len() - 64..]));
    assert!(job["stdoutPreview"].as_str().unwrap().ends_with("row 20000\n"));
    let id = job["jobId"].as_str().unwrap();
    assert_eq!(server.job(id)["stdoutPreview"], job["stdoutPreview"]);
}

#[test]
fn sync_response_stdout_is_the_stored_text_of_a_capped_log() {
    let server = capped_server();
    let job = run_sync(&server, "capped");
    assert_eq!(job["stdout"], json!(&capped_expected()[..1000]));
}

#[test]
fn line_paging_of_a_capped_log_serves_the_stored_lines() {
    let server = capped_server();
    let id = run_sync(&server, "capped")["jobId"].as_str().unwrap().to_string();
    // 1000 bytes = 100 whole lines of 10 bytes.
    let body = page(&server, &id, "unit=lines&limit=1000");
    let expected: Vec<String> = (1..=100).map(|i| format!("row {i:05}")).collect();
    assert_eq!(lines(&body), expected);
    assert_eq!(num(&body, "totalLines"), 100);
    assert_eq!(body["truncated"], json!(true));
}

#[test]
fn preview_smaller_than_the_output_is_its_last_bytes() {
    // 100 bytes: ten lines of "line-N...\n" with 10 bytes each.
    let server = Builder::new()
        .runner("previewMaxBytes", json!(16))
        .script("hundred", r#"for i in 0 1 2 3 4 5 6 7 8 9; do echo "line-$i..."; done"#)
        .start();
    let job = run_sync(&server, "hundred");
    let expected: String = (0..10).map(|i| format!("line-{i}...\n")).collect();
    assert_eq!(expected.len(), 100);
    assert_eq!(job["stdoutSize"], json!(100));
    assert_eq!(job["stdoutTruncated"], json!(false));
    assert_eq!(job["stdoutPreview"], json!(&expected[84..]));
    assert_eq!(job["stdout"], json!(expected));
    assert_eq!(data(&page(&server, job["jobId"].as_str().unwrap(), "")), expected);
}

// ---------------------------------------------------------------- non-UTF-8 and empty logs

#[test]
fn invalid_utf8_comes_back_as_replacement_characters_in_byte_pages() {
    let server = Builder::new().script("bin", r"printf 'ok \377\376 caf\303\251\nnext\n'").start();
    let id = run_sync(&server, "bin")["jobId"].as_str().unwrap().to_string();
    let body = page(&server, &id, "");
    assert_eq!(data(&body), "ok \u{FFFD}\u{FFFD} café\nnext\n");
    // totalSize counts the stored bytes, not the characters.
    assert_eq!(num(&body, "totalSize"), 17);
    assert_eq!(num(&body, "nextOffset"), 17);
}

#[test]
fn invalid_utf8_comes_back_as_replacement_characters_in_line_pages() {
    let server = Builder::new().script("bin", r"printf 'ok \377\376 caf\303\251\n\200\nnext\n'").start();
    let id = run_sync(&server, "bin")["jobId"].as_str().unwrap().to_string();
    let body = page(&server, &id, "unit=lines");
    assert_eq!(lines(&body), ["ok \u{FFFD}\u{FFFD} café", "\u{FFFD}", "next"]);
    assert_eq!(num(&body, "totalLines"), 3);
}

#[test]
fn sync_stdout_holds_every_stored_byte_when_invalid_utf8_widens_the_preview() {
    // 20 bytes stored, preview of the last 16 (all invalid, so 48 bytes as text): the sync
    // response must still carry the whole stored stream, not the preview.
    let server = Builder::new()
        .runner("previewMaxBytes", json!(16))
        .script("bin", r"printf 'abcd\377\377\377\377\377\377\377\377\377\377\377\377\377\377\377\377'")
        .start();
    let job = run_sync(&server, "bin");
    assert_eq!(job["stdoutSize"], json!(20));
    assert_eq!(job["stdoutPreview"], json!("\u{FFFD}".repeat(16)));
    let expected = format!("abcd{}", "\u{FFFD}".repeat(16));
    assert_eq!(data(&page(&server, job["jobId"].as_str().unwrap(), "")), expected);
    assert_eq!(job["stdout"], json!(expected), "sync stdout lost stored bytes");
}

#[test]
fn a_job_that_wrote_nothing_pages_as_empty() {
    let server = Builder::new().script("quiet", ":").start();
    let job = run_sync(&server, "quiet");
    let id = job["jobId"].as_str().unwrap();
    assert_eq!(job["stdout"], json!(""));
    assert_eq!(job["stdoutSize"], json!(0));
    for stream in ["stdout", "stderr"] {
        let body = page(&server, id, &format!("stream={stream}"));
        assert_eq!(data(&body), "", "{stream}");
        assert_eq!(num(&body, "totalSize"), 0);
        assert_eq!(num(&body, "nextOffset"), 0);
        let body = page(&server, id, &format!("stream={stream}&unit=lines"));
        assert!(lines(&body).is_empty(), "{stream}: {body}");
        assert_eq!(num(&body, "totalLines"), 0);
        assert_eq!(num(&body, "nextOffset"), 0);
    }
}

#[test]
fn line_pages_deep_in_the_log_of_a_running_job_return_the_right_lines() {
    let script = format!(
        r#"awk 'BEGIN {{ for (i = 1; i <= {BIG_LINES}; i++) print "line " i }}'
release="$(dirname "$0")/../release"
i=0
while [ ! -e "$release" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done"#
    );
    let server = Builder::new()
        .runner("maxLogBytesPerStream", json!(8 * 1024 * 1024))
        .script_entry("numbered", &script, json!({ "mode": "async" }))
        .start();
    let id = server.run_async("numbered", &[]);
    wait_page(&server, &id, "unit=lines", |b| b["totalLines"] == json!(BIG_LINES));
    assert_eq!(server.job(&id)["status"], json!("running"));
    for offset in [1023u64, 1024, 65535, 150_000, 299_990] {
        let body = page(&server, &id, &format!("unit=lines&offset={offset}&limit=10"));
        let expected: Vec<String> = (offset + 1..=offset + 10).map(|n| format!("line {n}")).collect();
        assert_eq!(lines(&body), expected, "offset {offset}");
        assert_eq!(num(&body, "nextOffset"), offset + 10);
    }
    std::fs::write(server.dir().join("release"), "go").unwrap();
    let job = server.wait_terminal(&id, WAIT);
    assert_eq!(job["status"], json!("succeeded"), "{job}");
}

#[test]
fn a_log_capped_mid_line_serves_the_cut_last_line_once_ended() {
    let server = Builder::new().runner("maxLogBytesPerStream", json!(1005)).script("capped", CAPPED_SCRIPT).start();
    let id = run_sync(&server, "capped")["jobId"].as_str().unwrap().to_string();
    let body = page(&server, &id, "unit=lines&offset=98");
    assert_eq!(lines(&body), ["row 00099", "row 00100", "row 0"]);
    assert_eq!(num(&body, "totalLines"), 101);
    assert_eq!(num(&body, "nextOffset"), 101);
    assert_eq!(body["truncated"], json!(true));
}

// ---------------------------------------------------------------- output that cannot be stored

/// Makes a folder unwritable, even for root (`chattr +i` as root, mode 0555 otherwise), until
/// dropped. `None` (with the reason printed) where neither is possible.
struct Unwritable(std::path::PathBuf, bool);

impl Unwritable {
    fn make(dir: &Path) -> Option<Unwritable> {
        std::fs::create_dir_all(dir).unwrap();
        let root = unsafe_free_is_root();
        let ok = if root {
            Command::new("chattr").arg("+i").arg(dir).status().is_ok_and(|s| s.success())
        } else {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).is_ok()
        };
        if !ok || std::fs::write(dir.join("probe"), b"x").is_ok() {
            println!("skipped: cannot make {} unwritable here (chattr +i failed)", dir.display());
            let _ = std::fs::remove_file(dir.join("probe"));
            return None;
        }
        Some(Unwritable(dir.to_path_buf(), root))
    }

    fn undo(&self) {
        if self.1 {
            let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        } else {
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
        }
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        self.undo();
    }
}

fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[test]
fn output_that_cannot_be_stored_is_said_on_the_job_and_its_pages_not_hidden_as_truncated() {
    let builder = Builder::new();
    let logs = builder.dir().join("logs");
    // Each stream longer than its preview (4096 bytes), so it needs its log file (a shorter
    // one is kept with the job: see the next test).
    let long = "printf '%5000s\\n' '' | tr ' ' o";
    let mut server = builder
        .script("say", &format!("{long}; echo out-line; {{ {long}; echo err-line; }} >&2"))
        .script_entry("say-async", &format!("{long}; echo async-line"), json!({ "mode": "async" }))
        .start();
    let Some(guard) = Unwritable::make(&logs) else { return };
    let sync = server.run("say", &[], Some("sync"));
    assert_eq!(sync.status, 200, "{}", sync.text);
    assert_eq!(sync.body["status"], "succeeded", "the job's status is what its process did: {}", sync.text);
    let error = sync.body["outputError"].as_str().unwrap_or_else(|| panic!("no outputError: {}", sync.text));
    assert!(error.contains("stdout: cannot write") && error.contains("stderr: cannot write"), "{error}");
    assert!(error.contains(".stdout.log"), "names the file: {error}");
    assert_eq!(sync.body["stdoutTruncated"], false, "truncated means only the cap: {}", sync.text);
    assert_eq!(sync.body["stdoutSize"], 0);
    let id = sync.body["jobId"].as_str().unwrap().to_string();
    let async_id = server.run_async("say-async", &[]);
    let job = server.wait_terminal(&async_id, WAIT);
    assert!(job["outputError"].as_str().is_some_and(|e| e.starts_with("stdout: cannot write")), "{job}");
    assert!(job["stdoutPreview"].as_str().is_some_and(|p| p.ends_with("oooo\nasync-line\n")), "{job}");
    for unit in ["bytes", "lines"] {
        let page = server.get(&format!("/jobs/{id}/logs?unit={unit}"));
        assert_eq!(page.status, 200, "{}", page.text);
        assert_eq!(page.body["outputError"], sync.body["outputError"], "{unit}: {}", page.text);
        assert_eq!(page.body["truncated"], false, "{}", page.text);
    }
    // Writable again: the next jobs store their output; the error stays with the job.
    guard.undo();
    let after = server.run("say", &[], Some("sync"));
    assert_eq!(after.body["outputError"], Value::Null, "{}", after.text);
    assert!(
        after.body["stdout"].as_str().is_some_and(|o| o.len() == 5010 && o.ends_with("out-line\n")),
        "{}",
        after.text
    );
    server.terminate(WAIT);
    server.restart();
    assert_eq!(server.job(&id)["outputError"], sync.body["outputError"], "kept across a restart");
}

#[test]
fn a_short_output_is_kept_with_the_job_without_a_file_and_reads_like_one() {
    let builder = Builder::new();
    let logs = builder.dir().join("logs");
    let server = builder.script("say", "echo one; echo two; printf three; echo err >&2").start();
    // Kept with the job, a short output needs no file: an unwritable folder loses nothing.
    let Some(_guard) = Unwritable::make(&logs) else { return };
    let r = server.run("say", &[], Some("sync"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["outputError"], Value::Null, "{}", r.text);
    assert_eq!(r.body["stdout"], "one\ntwo\nthree", "{}", r.text);
    assert_eq!(r.body["stderr"], "err\n", "{}", r.text);
    let id = r.body["jobId"].as_str().unwrap();
    assert!(!logs.join(format!("{id}.stdout.log")).exists(), "no file for a short output");
    let bytes = server.get(&format!("/jobs/{id}/logs?offset=4&limit=3"));
    assert_eq!(
        (bytes.body["data"].as_str(), bytes.body["totalSize"].as_u64()),
        (Some("two"), Some(13)),
        "{}",
        bytes.text
    );
    assert_eq!(bytes.body["nextOffset"], 7);
    let lines = server.get(&format!("/jobs/{id}/logs?unit=lines&offset=1&limit=5"));
    assert_eq!(lines.body["lines"], json!(["two", "three"]), "{}", lines.text);
    assert_eq!(lines.body["totalLines"], 3);
    let err = server.get(&format!("/jobs/{id}/logs?stream=stderr&unit=lines"));
    assert_eq!(err.body["lines"], json!(["err"]), "{}", err.text);
}

#[test]
fn a_full_filesystem_is_said_on_the_job() {
    let builder = Builder::new();
    let logs = builder.dir().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&logs)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("skipped: cannot mount a small tmpfs here (needs root and mount rights)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(logs.clone());
    let server = builder.script("big", "head -c 300000 /dev/zero | tr '\\0' y").start();
    let r = server.run("big", &[], Some("sync"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    let error = r.body["outputError"].as_str().unwrap_or_else(|| panic!("no outputError: {}", r.text));
    assert!(error.starts_with("stdout: cannot write") && error.contains("No space left"), "{error}");
    assert_eq!(r.body["stdoutTruncated"], false, "{}", r.text);
    assert!(r.body["stdoutSize"].as_u64().unwrap() < 300_000, "{}", r.body["stdoutSize"]);
    drop(server);
}

#[test]
fn a_workflow_executions_output_that_cannot_be_stored_is_said_on_the_run() {
    let server = Builder::new().workflows(json!({})).start();
    let gate_path = server.dir().join("go");
    let gate = crate::common::wait_for_gate(&gate_path);
    let source = format!("{gate}\necho '{{\"done\": true}}'\necho oops >&2");
    let r = server.launch_run(json!({ "source": source, "interpreter": "bash" }));
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["run"]["id"].as_str().unwrap().to_string();
    // Its process runs (its files are written) before the folder is made unwritable.
    server.wait_run_body(&id, "a pid", WAIT, |b| b["run"]["pid"].is_number());
    let Some(_guard) = Unwritable::make(&server.dir().join("logs").join("runs").join(&id)) else { return };
    crate::common::open_gate(&gate_path);
    let run = server.wait_run_terminal(&id, WAIT);
    let warnings = run["run"]["warnings"].as_array().cloned().unwrap_or_default();
    for stream in ["stdout", "stderr"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.as_str().is_some_and(|w| w.starts_with(&format!("execution 1: {stream}: cannot write")))),
            "{stream}: {run}"
        );
    }
    for unit in ["bytes", "lines"] {
        let page = server.get(&format!("/api/script-runs/{id}/logs?unit={unit}"));
        assert_eq!(page.status, 200, "{}", page.text);
        let error = page.body["outputError"].as_str().unwrap_or_else(|| panic!("{unit}: {}", page.text));
        assert!(error.starts_with("stdout: cannot write") && error.contains("; stderr: cannot write"), "{error}");
    }
}
