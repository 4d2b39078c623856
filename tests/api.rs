//! The job API as a client sees it: runs, errors, validation, listing, auth.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::common::{assert_error, Builder, Resp, TestServer};
use serde_json::{json, Value};

/// Upper bound for any job in this file to reach a final state.
const WAIT: Duration = Duration::from_secs(10);

/// Asserts the error envelope with an exact message.
fn assert_error_msg(r: &Resp, status: u16, code: &str, message: &str) {
    assert_error(r, status, code);
    assert_eq!(r.body["error"]["message"], json!(message), "{}", r.text);
}

/// POSTs raw bytes to `/run`.
fn post_raw(server: &TestServer, body: &[u8]) -> Resp {
    server.request("POST", "/run", Some(body), &[("Content-Type", "application/json")])
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn is_iso_ms_z(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Milliseconds of an ISO timestamp of the form above, for ordering (days approximated by a
/// fixed month length: fine for comparing times a few seconds apart on the same day).
fn iso_ms(s: &str) -> i64 {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    ((((n(0, 4) * 12 + n(5, 7)) * 31 + n(8, 10)) * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000
        + n(17, 19) * 1000
        + n(20, 23)
}

/// A script entry without a `mode` key (the harness always writes one).
fn without_mode(builder: Builder, id: &str, body: &str) -> Builder {
    let path = builder.write_executable(&format!("scripts/{id}.sh"), &format!("#!/bin/sh\n{body}\n"));
    builder.raw_script(json!({ "id": id, "path": path.to_str().unwrap() }))
}

/// Sends one raw HTTP/1.1 request and returns the status code of the answer. Write errors are
/// ignored: a server may answer and close before reading a body it refuses.
fn raw_http(server: &TestServer, head: &str, body_chunks: &[&[u8]]) -> (u16, String) {
    let addr = server.base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut write = || -> std::io::Result<()> {
        stream.write_all(head.as_bytes())?;
        for chunk in body_chunks {
            stream.write_all(chunk)?;
        }
        stream.flush()
    };
    let _ = write();
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                // The status line and the headers are enough, plus a little of the body.
                let text = String::from_utf8_lossy(&answer);
                if let Some(end) = text.find("\r\n\r\n") {
                    if text.len() > end + 4 {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

// ---------------------------------------------------------------------------------------------
// Sync and async runs, modes
// ---------------------------------------------------------------------------------------------

#[test]
fn sync_run_returns_the_finished_job_with_its_output() {
    let server = Builder::new().script("hello", "echo hello; echo oops >&2").start();
    let r = server.run("hello", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"));
    assert_eq!(r.body["code"], json!(0));
    assert_eq!(r.body["stdout"], json!("hello\n"));
    assert_eq!(r.body["stderr"], json!("oops\n"));
    assert_eq!(r.body["stdoutPreview"], json!("hello\n"));
}

#[test]
fn async_run_answers_202_with_a_job_id_then_the_job_succeeds() {
    let server = Builder::new().script("slowish", "sleep 0.2; echo done").start();
    let r = server.run("slowish", &[], Some("async"));
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["ok"], json!(true));
    let status = r.body["status"].as_str().unwrap();
    assert!(status == "queued" || status == "running", "{}", r.text);
    let id = r.body["jobId"].as_str().unwrap();
    assert!(id.starts_with("job_"), "{id}");
    let job = server.wait_terminal(id, WAIT);
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    assert_eq!(job["code"], json!(0));
    assert_eq!(job["mode"], json!("async"));
    assert_eq!(job["stdoutPreview"], json!("done\n"));
}

#[test]
fn running_job_has_no_code_and_no_end_yet() {
    let builder = Builder::new();
    let gate = builder.dir().join("go");
    let server =
        builder.script("gated", &format!("while [ ! -e '{}' ]; do sleep 0.02; done; echo out", gate.display())).start();
    let id = server.run_async("gated", &[]);
    let job = server.wait_job(&id, WAIT, |s| s == "running");
    assert_eq!(job["code"], Value::Null, "{job}");
    assert_eq!(job["endedAt"], Value::Null, "{job}");
    assert_eq!(job["durationMs"], Value::Null, "{job}");
    assert!(is_iso_ms_z(job["startedAt"].as_str().unwrap()), "{job}");
    std::fs::write(&gate, "").unwrap();
    let job = server.wait_terminal(&id, WAIT);
    assert_eq!(job["status"], json!("succeeded"), "{job}");
}

#[test]
fn request_without_mode_uses_the_scripts_async_mode() {
    let server = Builder::new().script_entry("bg", "echo bg", json!({ "mode": "async" })).start();
    let r = server.run("bg", &[], None);
    assert_eq!(r.status, 202, "{}", r.text);
    let job = server.wait_terminal(r.body["jobId"].as_str().unwrap(), WAIT);
    assert_eq!(job["mode"], json!("async"));
    assert_eq!(job["status"], json!("succeeded"));
}

#[test]
fn request_without_mode_uses_the_scripts_sync_mode() {
    let server = Builder::new().script("fg", "echo fg").start();
    let r = server.run("fg", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["mode"], json!("sync"));
    assert_eq!(r.body["stdout"], json!("fg\n"));
}

#[test]
fn request_mode_sync_overrides_an_async_script() {
    let server = Builder::new().script_entry("bg", "echo bg", json!({ "mode": "async" })).start();
    let r = server.run("bg", &[], Some("sync"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["mode"], json!("sync"));
    assert_eq!(r.body["status"], json!("succeeded"));
    assert_eq!(r.body["stdout"], json!("bg\n"));
}

#[test]
fn request_mode_async_overrides_a_sync_script() {
    let server = Builder::new().script("fg", "echo fg").start();
    let r = server.run("fg", &[], Some("async"));
    assert_eq!(r.status, 202, "{}", r.text);
    let job = server.wait_terminal(r.body["jobId"].as_str().unwrap(), WAIT);
    assert_eq!(job["mode"], json!("async"));
    assert_eq!(job["status"], json!("succeeded"));
}

#[test]
fn script_without_mode_uses_runner_default_mode_async() {
    let server = without_mode(Builder::new().runner("defaultMode", json!("async")), "plain", "echo plain").start();
    let r = server.run("plain", &[], None);
    assert_eq!(r.status, 202, "{}", r.text);
    let job = server.wait_terminal(r.body["jobId"].as_str().unwrap(), WAIT);
    assert_eq!(job["mode"], json!("async"));
    assert_eq!(job["status"], json!("succeeded"));
}

#[test]
fn script_without_mode_and_no_default_mode_runs_sync() {
    let server = without_mode(Builder::new(), "plain", "echo plain").start();
    let r = server.run("plain", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["mode"], json!("sync"));
    assert_eq!(r.body["stdout"], json!("plain\n"));
}

#[test]
fn omitted_args_run_the_script_with_no_arguments() {
    let server = Builder::new().script("count", "echo \"$#\"").start();
    let r = server.post("/run", json!({ "scriptId": "count" }));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["stdout"], json!("0\n"));
    assert_eq!(r.body["args"], json!([]));
}

// ---------------------------------------------------------------------------------------------
// Exit codes, stderr, signals
// ---------------------------------------------------------------------------------------------

#[test]
fn non_zero_exit_fails_the_job_with_that_code() {
    let server = Builder::new().script("bad", "exit 3").start();
    let r = server.run("bad", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("failed"));
    assert_eq!(r.body["code"], json!(3));
    assert_eq!(r.body["error"], Value::Null, "{}", r.text);
}

#[test]
fn exit_code_255_is_reported_as_is() {
    let server = Builder::new().script("bad", "exit 255").start();
    let r = server.run("bad", &[], None);
    assert_eq!(r.body["status"], json!("failed"), "{}", r.text);
    assert_eq!(r.body["code"], json!(255));
}

#[test]
fn stderr_is_captured_separately_from_stdout() {
    let server = Builder::new().script("noisy", "echo to-out; echo to-err >&2; echo more-err >&2; exit 2").start();
    let r = server.run("noisy", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["code"], json!(2));
    assert_eq!(r.body["stdout"], json!("to-out\n"));
    assert_eq!(r.body["stderr"], json!("to-err\nmore-err\n"));
    assert_eq!(r.body["stderrPreview"], json!("to-err\nmore-err\n"));
    assert_eq!(r.body["stderrSize"], json!(16));
    assert_eq!(r.body["stdoutSize"], json!(7));
}

#[test]
fn script_killed_by_a_signal_fails_with_code_minus_one() {
    let server = Builder::new().script("suicide", "echo before; kill -9 $$; echo after").start();
    let r = server.run("suicide", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("failed"));
    assert_eq!(r.body["code"], json!(-1));
    assert_eq!(r.body["error"], json!("killed by signal 9"));
    assert_eq!(r.body["stdout"], json!("before\n"));
}

// ---------------------------------------------------------------------------------------------
// argv verbatim, no shell
// ---------------------------------------------------------------------------------------------

#[test]
fn args_reach_the_script_verbatim_without_a_shell() {
    let builder = Builder::new();
    let dir = builder.dir().to_path_buf();
    let pwned =
        [dir.join("pwned-subst"), dir.join("pwned-backtick"), dir.join("pwned-semicolon"), dir.join("pwned-nl")];
    let args: Vec<String> = vec![
        "hello world".into(),
        "it's".into(),
        "say \"hi\"".into(),
        format!("$(touch {})", pwned[0].display()),
        format!("`touch {}`", pwned[1].display()),
        format!("x; touch {}", pwned[2].display()),
        "*".into(),
        format!("line1\ntouch {}\nline3", pwned[3].display()),
        String::new(),
        "$HOME".into(),
        "  padded  ".into(),
        "back\\slash".into(),
        "--flag=1".into(),
        "'single'".into(),
    ];
    let server = builder
        .script_entry(
            "argv",
            "echo \"count=$#\"; for a in \"$@\"; do printf '<<%s>>\\n' \"$a\"; done",
            json!({ "args": { "maxItems": 50 } }),
        )
        .start();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = server.run("argv", &refs, None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    let mut expected = format!("count={}\n", args.len());
    for a in &args {
        expected.push_str(&format!("<<{a}>>\n"));
    }
    assert_eq!(r.body["stdout"].as_str().unwrap(), expected);
    assert_eq!(r.body["args"], json!(args));
    for p in &pwned {
        assert!(!p.exists(), "{} was created: a shell interpreted an argument", p.display());
    }
}

#[test]
fn args_with_shell_syntax_create_no_files() {
    let builder = Builder::new();
    let marker = builder.dir().join("made-by-shell");
    let server = builder.script("quiet", "exit 0").start();
    let evil = format!("$(touch {m})`touch {m}`;touch {m}|touch {m}&&touch {m}", m = marker.display());
    let r = server.run("quiet", &[&evil, &format!("'; touch {} '", marker.display())], None);
    assert_eq!(r.body["status"], json!("succeeded"), "{}", r.text);
    assert!(!marker.exists(), "{} was created", marker.display());
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_script_id_is_400_script_not_found() {
    let server = Builder::new().script("s", "true").start();
    let r = server.post("/run", json!({ "args": [] }));
    assert_error(&r, 400, "SCRIPT_NOT_FOUND");
    assert!(r.body["error"]["message"].as_str().unwrap().starts_with("script not found"), "{}", r.text);
}

#[test]
fn unknown_script_is_400_script_not_found() {
    let server = Builder::new().script("s", "true").start();
    let r = server.run("nope", &[], None);
    assert_error_msg(&r, 400, "SCRIPT_NOT_FOUND", "script not found: nope");
}

#[test]
fn args_not_an_array_is_400_invalid_args() {
    let server = Builder::new().script("s", "true").start();
    for args in [json!("a b"), json!({ "0": "a" }), json!(5)] {
        let r = server.post("/run", json!({ "scriptId": "s", "args": args }));
        assert_error_msg(&r, 400, "INVALID_ARGS", "args must be an array of strings");
    }
}

#[test]
fn too_many_args_is_400_invalid_args() {
    let server = Builder::new().script_entry("s", "true", json!({ "args": { "maxItems": 2 } })).start();
    assert_eq!(server.run("s", &["a", "b"], None).status, 200);
    let r = server.run("s", &["a", "b", "c"], None);
    assert_error_msg(&r, 400, "INVALID_ARGS", "too many args: max 2");
}

#[test]
fn default_max_items_is_ten() {
    let server = Builder::new().script("s", "true").start();
    let ten = ["a"; 10];
    assert_eq!(server.run("s", &ten, None).status, 200);
    let r = server.run("s", &["a"; 11], None);
    assert_error_msg(&r, 400, "INVALID_ARGS", "too many args: max 10");
}

#[test]
fn non_string_arg_is_400_invalid_args() {
    let server = Builder::new().script("s", "true").start();
    for bad in [json!(5), json!(null), json!(true), json!(["x"]), json!({ "a": 1 })] {
        let r = server.post("/run", json!({ "scriptId": "s", "args": ["ok", bad] }));
        assert_error_msg(&r, 400, "INVALID_ARGS", "arg[1] must be string");
    }
}

#[test]
fn too_long_arg_is_400_invalid_args() {
    let server = Builder::new().script_entry("s", "true", json!({ "args": { "itemMaxLength": 4 } })).start();
    assert_eq!(server.run("s", &["abcd"], None).status, 200);
    let r = server.run("s", &["ok", "abcde"], None);
    assert_error_msg(&r, 400, "INVALID_ARGS", "arg[1] too long: max 4");
}

#[test]
fn arg_not_matching_the_pattern_is_400_invalid_args() {
    let server = Builder::new().script_entry("s", "true", json!({ "args": { "itemPattern": "^[a-z]+$" } })).start();
    assert_eq!(server.run("s", &["abc"], None).status, 200);
    let r = server.run("s", &["abc", "ab c"], None);
    assert_error_msg(&r, 400, "INVALID_ARGS", "arg[1] does not match pattern");
}

#[test]
fn bad_mode_is_400_invalid_args() {
    let server = Builder::new().script("s", "true").start();
    for mode in [json!("fast"), json!("SYNC"), json!(1)] {
        let r = server.post("/run", json!({ "scriptId": "s", "args": [], "mode": mode }));
        assert_error(&r, 400, "INVALID_ARGS");
        assert!(r.body["error"]["message"].as_str().unwrap().contains("mode"), "{}", r.text);
    }
}

#[test]
fn rejected_runs_create_no_jobs() {
    let server = Builder::new().script_entry("s", "true", json!({ "args": { "maxItems": 1 } })).start();
    assert_eq!(server.run("nope", &[], None).status, 400);
    assert_eq!(server.run("s", &["a", "b"], None).status, 400);
    assert_eq!(server.run("s", &[], Some("later")).status, 400);
    assert_eq!(post_raw(&server, b"{oops").status, 400);
    let r = server.get("/jobs");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], json!(0), "{}", r.text);
    assert_eq!(r.body["jobs"], json!([]));
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

#[test]
fn body_that_is_not_json_is_400_invalid_json() {
    let server = Builder::new().script("s", "true").start();
    for body in [&b"{not json"[..], b"scriptId=s", b"{\"scriptId\": \"s\",}", b"\xff\xfe"] {
        let r = post_raw(&server, body);
        assert_error(&r, 400, "INVALID_JSON");
    }
}

#[test]
fn json_body_that_is_not_an_object_is_400_invalid_json() {
    let server = Builder::new().script("s", "true").start();
    for body in [&b"[]"[..], b"[{\"scriptId\":\"s\"}]", b"\"s\"", b"42", b"null", b"true"] {
        let r = post_raw(&server, body);
        assert_error(&r, 400, "INVALID_JSON");
    }
}

#[test]
fn empty_body_is_400() {
    let server = Builder::new().script("s", "true").start();
    let r = post_raw(&server, b"");
    assert_error(&r, 400, "INVALID_JSON");
}

#[test]
fn body_over_2_mib_is_413_payload_too_large() {
    let server = Builder::new().script("s", "true").start();
    let mut body = b"{\"scriptId\":\"s\",\"pad\":\"".to_vec();
    body.resize(2 * 1024 * 1024 - 1, b'x');
    body.extend_from_slice(b"\"}");
    assert_eq!(body.len(), 2 * 1024 * 1024 + 1);
    let head = format!(
        "POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (status, text) = raw_http(&server, &head, &[&body]);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("PAYLOAD_TOO_LARGE"), "{text}");
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn chunked_body_over_2_mib_is_413_payload_too_large() {
    let server = Builder::new().script("s", "true").start();
    let chunk = vec![b'x'; 256 * 1024];
    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
    framed.extend_from_slice(&chunk);
    framed.extend_from_slice(b"\r\n");
    let mut pieces: Vec<&[u8]> = vec![b"7\r\n{\"pad\":\r\n"];
    for _ in 0..9 {
        pieces.push(&framed);
    }
    pieces.push(b"0\r\n\r\n");
    let head = "POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let (status, text) = raw_http(&server, head, &pieces);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("PAYLOAD_TOO_LARGE"), "{text}");
}

#[test]
fn body_of_exactly_2_mib_is_accepted() {
    let server = Builder::new().script("s", "echo ran").start();
    let mut body = b"{\"scriptId\":\"s\",\"pad\":\"".to_vec();
    body.resize(2 * 1024 * 1024 - 2, b'x');
    body.extend_from_slice(b"\"}");
    assert_eq!(body.len(), 2 * 1024 * 1024);
    let r = post_raw(&server, &body);
    assert_eq!(r.status, 200, "{}", r.text.chars().take(300).collect::<String>());
    assert_eq!(r.body["stdout"], json!("ran\n"));
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_route_is_404_not_found_naming_it() {
    let server = Builder::new().script("s", "true").start();
    let r = server.get("/nope");
    assert_error_msg(&r, 404, "NOT_FOUND", "route not found: GET /nope");
    let r = server.request("POST", "/nope/deeper", Some(b"{}"), &[]);
    assert_error_msg(&r, 404, "NOT_FOUND", "route not found: POST /nope/deeper");
}

#[test]
fn get_on_run_is_405_method_not_allowed() {
    let server = Builder::new().script("s", "true").start();
    assert_error(&server.get("/run"), 405, "METHOD_NOT_ALLOWED");
}

#[test]
fn delete_on_a_job_is_405_method_not_allowed() {
    let server = Builder::new().script("s", "true").start();
    assert_error(&server.request("DELETE", "/jobs/x", None, &[]), 405, "METHOD_NOT_ALLOWED");
}

#[test]
fn wrong_methods_on_other_known_routes_are_405() {
    let server = Builder::new().script("s", "true").start();
    for (method, path) in [("POST", "/healthz"), ("POST", "/jobs"), ("PUT", "/scripts"), ("GET", "/jobs/x/cancel")] {
        let r = server.request(method, path, Some(b"{}"), &[]);
        assert_error(&r, 405, "METHOD_NOT_ALLOWED");
    }
}

#[test]
fn unknown_job_is_404_job_not_found() {
    let server = Builder::new().script("s", "true").start();
    let r = server.get("/jobs/job_1_1");
    assert_error_msg(&r, 404, "JOB_NOT_FOUND", "job not found: job_1_1");
}

#[test]
fn cancel_of_an_unknown_job_is_404_job_not_found() {
    let server = Builder::new().script("s", "true").start();
    let r = server.post("/jobs/job_1_1/cancel", json!({}));
    assert_error_msg(&r, 404, "JOB_NOT_FOUND", "job not found: job_1_1");
}

#[test]
fn healthz_answers_ok_true() {
    let server = Builder::new().script("s", "true").start();
    let r = server.get("/healthz");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({ "ok": true }));
}

#[test]
fn scripts_lists_the_catalog_with_modes_timeouts_rules_and_descriptions() {
    let builder = Builder::new().runner("defaultMode", json!("async")).script_entry(
        "ruled",
        "true",
        json!({
            "mode": "sync",
            "timeoutSec": 7,
            "description": "does ruled things",
            "args": { "maxItems": 3, "itemPattern": "^[a-z]+$", "itemMaxLength": 12 }
        }),
    );
    let server = without_mode(builder, "bare", "true").start();
    let r = server.get("/scripts");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ok"], json!(true));
    let scripts = r.body["scripts"].as_array().unwrap();
    assert_eq!(scripts.len(), 2, "{}", r.text);
    let find = |id: &str| scripts.iter().find(|s| s["id"] == json!(id)).unwrap().clone();
    assert_eq!(
        find("ruled"),
        json!({
            "id": "ruled",
            "mode": "sync",
            "timeoutSec": 7,
            "args": { "maxItems": 3, "itemPattern": "^[a-z]+$", "itemMaxLength": 12 },
            "description": "does ruled things",
            "concurrency": null
        })
    );
    assert_eq!(
        find("bare"),
        json!({
            "id": "bare",
            "mode": "async",
            "timeoutSec": 0,
            "args": { "maxItems": 10, "itemPattern": "^[\\s\\S]*$", "itemMaxLength": 1024 },
            "description": null,
            "concurrency": null
        })
    );
}

// ---------------------------------------------------------------------------------------------
// GET /jobs
// ---------------------------------------------------------------------------------------------

/// A server with three finished jobs: ok (exit 0), bad (exit 1), ok; returns their ids in order.
fn three_jobs() -> (TestServer, Vec<String>) {
    let server = Builder::new().script("ok", "echo ok").script("bad", "exit 1").start();
    let mut ids = Vec::new();
    for id in ["ok", "bad", "ok"] {
        let r = server.run(id, &[], None);
        assert_eq!(r.status, 200, "{}", r.text);
        ids.push(r.body["jobId"].as_str().unwrap().to_string());
    }
    (server, ids)
}

fn listed_ids(r: &Resp) -> Vec<String> {
    r.body["jobs"].as_array().unwrap().iter().map(|j| j["jobId"].as_str().unwrap().to_string()).collect()
}

#[test]
fn jobs_are_listed_newest_first_with_a_total() {
    let (server, ids) = three_jobs();
    let r = server.get("/jobs");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ok"], json!(true));
    assert_eq!(r.body["total"], json!(3));
    assert_eq!(listed_ids(&r), vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]);
    let first = &r.body["jobs"][0];
    assert_eq!(first["scriptId"], json!("ok"));
    assert_eq!(first["status"], json!("succeeded"));
}

#[test]
fn jobs_filter_by_status() {
    let (server, ids) = three_jobs();
    let r = server.get("/jobs?status=failed");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], json!(1));
    assert_eq!(listed_ids(&r), vec![ids[1].clone()]);
    let r = server.get("/jobs?status=succeeded");
    assert_eq!(r.body["total"], json!(2));
    assert_eq!(listed_ids(&r), vec![ids[2].clone(), ids[0].clone()]);
    let r = server.get("/jobs?status=canceled");
    assert_eq!(r.body["total"], json!(0));
    assert_eq!(r.body["jobs"], json!([]));
}

#[test]
fn jobs_filter_by_script_id() {
    let (server, ids) = three_jobs();
    let r = server.get("/jobs?scriptId=ok");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], json!(2));
    assert_eq!(listed_ids(&r), vec![ids[2].clone(), ids[0].clone()]);
    let r = server.get("/jobs?scriptId=ok&status=failed");
    assert_eq!(r.body["total"], json!(0));
    let r = server.get("/jobs?scriptId=unknown");
    assert_eq!(r.body["total"], json!(0));
}

#[test]
fn jobs_page_with_limit_and_offset() {
    let (server, ids) = three_jobs();
    let r = server.get("/jobs?limit=1&offset=1");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], json!(3));
    assert_eq!(listed_ids(&r), vec![ids[1].clone()]);
    let r = server.get("/jobs?limit=2");
    assert_eq!(listed_ids(&r), vec![ids[2].clone(), ids[1].clone()]);
    let r = server.get("/jobs?offset=2");
    assert_eq!(listed_ids(&r), vec![ids[0].clone()]);
    let r = server.get("/jobs?offset=3");
    assert_eq!(r.body["total"], json!(3));
    assert_eq!(r.body["jobs"], json!([]));
}

#[test]
fn jobs_limit_is_clamped_to_500() {
    let server = Builder::new().script("t", "exit 0").start();
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..4).map(|_| s.spawn(|| (0..128).map(|_| server.run_async("t", &[])).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(ids.len(), 512);
    let r = server.get("/jobs?limit=1000");
    assert_eq!(r.status, 200, "{}", r.text.chars().take(300).collect::<String>());
    assert_eq!(r.body["total"], json!(512));
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 500);
    let r = server.get("/jobs?limit=99999999999999999999999");
    assert_eq!(r.status, 200, "{}", r.text.chars().take(300).collect::<String>());
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 500);
}

#[test]
fn jobs_limit_defaults_to_50() {
    let server = Builder::new().script("t", "exit 0").start();
    for _ in 0..55 {
        server.run_async("t", &[]);
    }
    let r = server.get("/jobs");
    assert_eq!(r.body["total"], json!(55));
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 50);
}

#[test]
fn jobs_with_an_unknown_status_is_400_invalid_args() {
    let server = Builder::new().script("s", "true").start();
    for status in ["done", "cancelled", "SUCCEEDED"] {
        let r = server.get(&format!("/jobs?status={status}"));
        assert_error(&r, 400, "INVALID_ARGS");
    }
}

// ---------------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------------

fn authed() -> TestServer {
    Builder::new().server("authToken", json!("s3cret-token")).script("s", "echo authed").start()
}

#[test]
fn with_a_token_configured_requests_without_it_are_401() {
    let server = authed();
    assert_error(&server.run("s", &[], None), 401, "UNAUTHORIZED");
    assert_error(&server.get("/jobs"), 401, "UNAUTHORIZED");
    assert_error(&server.get("/jobs/job_1_1"), 401, "UNAUTHORIZED");
    assert_error(&server.get("/jobs/job_1_1/logs"), 401, "UNAUTHORIZED");
    assert_error(&server.post("/jobs/job_1_1/cancel", json!({})), 401, "UNAUTHORIZED");
    assert_error(&server.get("/scripts"), 401, "UNAUTHORIZED");
    assert_error(&server.get("/nope"), 401, "UNAUTHORIZED");
    // Nothing ran.
    let jobs = server.request("GET", "/jobs", None, &[("Authorization", "Bearer s3cret-token")]);
    assert_eq!(jobs.body["total"], json!(0), "{}", jobs.text);
}

#[test]
fn with_a_token_configured_a_wrong_token_is_401() {
    let server = authed();
    let body = serde_json::to_vec(&json!({ "scriptId": "s" })).unwrap();
    for auth in
        ["Bearer wrong", "Bearer s3cret-toke", "Bearer s3cret-token2", "s3cret-token", "Basic s3cret-token", "Bearer "]
    {
        let r = server.request("POST", "/run", Some(&body), &[("Authorization", auth)]);
        assert_error(&r, 401, "UNAUTHORIZED");
        let r = server.request("GET", "/jobs", None, &[("Authorization", auth)]);
        assert_error(&r, 401, "UNAUTHORIZED");
    }
}

#[test]
fn with_a_token_configured_the_right_token_works() {
    let server = authed();
    let auth = [("Authorization", "Bearer s3cret-token"), ("Content-Type", "application/json")];
    let body = serde_json::to_vec(&json!({ "scriptId": "s" })).unwrap();
    let r = server.request("POST", "/run", Some(&body), &auth);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["stdout"], json!("authed\n"));
    let id = r.body["jobId"].as_str().unwrap();
    let r = server.request("GET", &format!("/jobs/{id}"), None, &auth);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = server.request("GET", "/jobs", None, &auth);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], json!(1));
}

#[test]
fn with_a_token_configured_healthz_stays_open() {
    let server = authed();
    let r = server.get("/healthz");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({ "ok": true }));
}

// ---------------------------------------------------------------------------------------------
// Environment and working directory
// ---------------------------------------------------------------------------------------------

#[test]
fn script_env_map_is_added_to_the_environment() {
    let server = Builder::new()
        .script_entry(
            "env",
            "printf 'FOO=%s\\nBAR=%s\\nPATHSET=%s\\n' \"$FOO\" \"$BAR\" \"${PATH:+yes}\"",
            json!({ "env": { "FOO": "foo value with spaces", "BAR": "$(not expanded)" } }),
        )
        .start();
    let r = server.run("env", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["stdout"], json!("FOO=foo value with spaces\nBAR=$(not expanded)\nPATHSET=yes\n"));
}

#[test]
fn script_sees_its_job_id_in_script_runner_job_id() {
    let server = Builder::new().script("who", "echo \"$SCRIPT_RUNNER_JOB_ID\"").start();
    let r = server.run("who", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.body["jobId"].as_str().unwrap();
    assert_eq!(r.body["stdout"], json!(format!("{id}\n")));
    let async_id = server.run_async("who", &[]);
    let job = server.wait_terminal(&async_id, WAIT);
    assert_eq!(job["stdoutPreview"], json!(format!("{async_id}\n")));
}

fn canonical(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap().display().to_string()
}

#[test]
fn default_cwd_is_the_scripts_folder() {
    let builder = Builder::new();
    let folder = builder.dir().join("scripts");
    let server = builder.script("where", "pwd -P").start();
    let r = server.run("where", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["stdout"], json!(format!("{}\n", canonical(&folder))));
}

#[test]
fn configured_cwd_is_used() {
    let builder = Builder::new();
    let work = builder.dir().join("work area");
    std::fs::create_dir_all(&work).unwrap();
    let server = builder.script_entry("where", "pwd -P", json!({ "cwd": work.to_str().unwrap() })).start();
    let r = server.run("where", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["stdout"], json!(format!("{}\n", canonical(&work))));
}

#[test]
fn relative_cwd_resolves_against_the_scripts_file_folder() {
    let builder = Builder::new();
    let work = builder.dir().join("rel");
    std::fs::create_dir_all(&work).unwrap();
    let server = builder.script_entry("where", "pwd -P", json!({ "cwd": "./rel" })).start();
    let r = server.run("where", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["stdout"], json!(format!("{}\n", canonical(&work))));
}

#[test]
fn script_stdin_is_empty() {
    let server = Builder::new().script("reader", "cat; echo \"rc=$?\"").start();
    let r = server.run("reader", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["stdout"], json!("rc=0\n"));
}

// ---------------------------------------------------------------------------------------------
// Output encoding
// ---------------------------------------------------------------------------------------------

#[test]
fn non_utf8_output_is_shown_with_replacement_characters_and_sized_in_bytes() {
    let server = Builder::new().script("bin", "printf '\\377\\376abc'").start();
    let r = server.run("bin", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["stdoutSize"], json!(5), "{}", r.text);
    let stdout = r.body["stdout"].as_str().unwrap();
    assert!(stdout.contains('\u{FFFD}') && stdout.ends_with("abc"), "{stdout:?}");
    let job = server.job(r.body["jobId"].as_str().unwrap());
    assert_eq!(job["stdoutSize"], json!(5));
    let preview = job["stdoutPreview"].as_str().unwrap();
    assert!(preview.contains('\u{FFFD}') && preview.ends_with("abc"), "{preview:?}");
}

#[test]
fn sync_stdout_holds_all_non_utf8_output_not_only_the_preview() {
    // 5 ASCII bytes then 5000 bytes 0xFF: more than previewMaxBytes (4096), so the preview holds
    // only the tail, while the sync `stdout` must hold everything stored.
    let server = Builder::new().script("bin", "printf START; head -c 5000 /dev/zero | tr '\\0' '\\377'").start();
    let r = server.run("bin", &[], None);
    assert_eq!(r.status, 200, "{}", r.text.chars().take(300).collect::<String>());
    assert_eq!(r.body["stdoutSize"], json!(5005));
    let stdout = r.body["stdout"].as_str().unwrap();
    let expected = format!("START{}", "\u{FFFD}".repeat(5000));
    assert!(
        stdout == expected,
        "stdout is not all the output: starts {:?}, {} chars (expected {})",
        stdout.chars().take(8).collect::<String>(),
        stdout.chars().count(),
        expected.chars().count()
    );
}

// ---------------------------------------------------------------------------------------------
// Spawn failures
// ---------------------------------------------------------------------------------------------

#[test]
fn script_deleted_after_startup_fails_with_code_minus_one_and_an_error() {
    let server = Builder::new().script("gone", "echo never").script("fine", "echo fine").start();
    std::fs::remove_file(server.dir().join("scripts/gone.sh")).unwrap();
    let r = server.run("gone", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("failed"), "{}", r.text);
    assert_eq!(r.body["code"], json!(-1));
    assert!(!r.body["error"].as_str().unwrap_or("").is_empty(), "{}", r.text);
    let job = server.job(r.body["jobId"].as_str().unwrap());
    assert_eq!(job["status"], json!("failed"));
    assert_eq!(job["code"], json!(-1));
    assert!(is_iso_ms_z(job["endedAt"].as_str().unwrap()), "{job}");
    // The server is still healthy and runs other scripts.
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.run("fine", &[], None).body["stdout"], json!("fine\n"));
}

#[test]
fn script_made_non_executable_after_startup_fails_with_code_minus_one() {
    let server = Builder::new().script("noexec", "echo never").script("fine", "echo fine").start();
    let path = server.dir().join("scripts/noexec.sh");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let id = server.run_async("noexec", &[]);
    let job = server.wait_terminal(&id, WAIT);
    assert_eq!(job["status"], json!("failed"), "{job}");
    assert_eq!(job["code"], json!(-1));
    assert!(!job["error"].as_str().unwrap_or("").is_empty(), "{job}");
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.run("fine", &[], None).body["stdout"], json!("fine\n"));
}

#[test]
fn configured_cwd_removed_after_startup_fails_the_job_with_code_minus_one() {
    let builder = Builder::new();
    let work = builder.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let server = builder
        .script_entry("lost", "echo never", json!({ "cwd": work.to_str().unwrap() }))
        .script("fine", "echo fine")
        .start();
    std::fs::remove_dir(&work).unwrap();
    let r = server.run("lost", &[], None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("failed"), "{}", r.text);
    assert_eq!(r.body["code"], json!(-1));
    assert!(!r.body["error"].as_str().unwrap_or("").is_empty(), "{}", r.text);
    assert_eq!(r.body["stdout"], json!(""));
    assert_eq!(server.run("fine", &[], None).body["stdout"], json!("fine\n"));
}

// ---------------------------------------------------------------------------------------------
// The job object
// ---------------------------------------------------------------------------------------------

/// Every field of the job object: `ok`, upstream's fields, and our `args` and `error`.
fn job_fields() -> Vec<&'static str> {
    let mut fields = vec!["ok"];
    fields.extend(crate::common::UPSTREAM_JOB_FIELDS);
    fields.extend(["args", "error"]);
    fields
}

#[test]
fn job_object_has_every_upstream_field_with_the_right_types() {
    let server = Builder::new().script("shape", "sleep 0.2; echo out; echo err >&2").start();
    let id = server.run_async("shape", &["one", "two"]);
    let job = server.wait_terminal(&id, WAIT);
    let obj = job.as_object().unwrap();
    for field in job_fields() {
        assert!(obj.contains_key(field), "missing {field}: {job}");
    }
    assert_eq!(job["ok"], json!(true));
    assert_eq!(job["jobId"], json!(id));
    assert_eq!(job["scriptId"], json!("shape"));
    assert_eq!(job["status"], json!("succeeded"));
    assert_eq!(job["code"], json!(0));
    assert_eq!(job["mode"], json!("async"));
    assert_eq!(job["args"], json!(["one", "two"]));
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["stdoutRef"], json!(format!("{id}.stdout.log")));
    assert_eq!(job["stderrRef"], json!(format!("{id}.stderr.log")));
    assert_eq!(job["stdoutSize"], json!(4));
    assert_eq!(job["stderrSize"], json!(4));
    assert_eq!(job["stdoutTruncated"], json!(false));
    assert_eq!(job["stderrTruncated"], json!(false));
    assert_eq!(job["stdoutPreview"], json!("out\n"));
    assert_eq!(job["stderrPreview"], json!("err\n"));
    let created = job["createdAt"].as_str().unwrap();
    let started = job["startedAt"].as_str().unwrap();
    let ended = job["endedAt"].as_str().unwrap();
    for t in [created, started, ended] {
        assert!(is_iso_ms_z(t), "not ISO with ms and Z: {t}");
    }
    assert!(iso_ms(created) <= iso_ms(started), "{job}");
    assert!(iso_ms(started) <= iso_ms(ended), "{job}");
    let duration = job["durationMs"].as_i64().unwrap();
    assert!(job["durationMs"].is_u64(), "{job}");
    assert!((150..10_000).contains(&duration), "{job}");
    // The same interval, up to the server reading its two clocks a few statements apart (a
    // loaded machine can stretch that).
    assert!((duration - (iso_ms(ended) - iso_ms(started))).abs() <= 1000, "{job}");
    assert!(server.dir().join("logs").join(format!("{id}.stdout.log")).is_file());
    assert!(server.dir().join("logs").join(format!("{id}.stderr.log")).is_file());
}

#[test]
fn sync_result_and_get_job_agree() {
    let server = Builder::new().script("same", "echo same").start();
    let r = server.run("same", &["x"], None);
    assert_eq!(r.status, 200, "{}", r.text);
    let mut sync = r.body.clone();
    let obj = sync.as_object_mut().unwrap();
    for field in job_fields() {
        assert!(obj.contains_key(field), "missing {field}: {}", r.text);
    }
    obj.remove("stdout");
    obj.remove("stderr");
    let mut got = server.job(r.body["jobId"].as_str().unwrap());
    got.as_object_mut().unwrap().remove("stdout");
    got.as_object_mut().unwrap().remove("stderr");
    assert_eq!(sync, got);
}

#[test]
fn listed_jobs_carry_the_job_fields() {
    let (server, ids) = three_jobs();
    let r = server.get("/jobs?limit=1");
    let item = &r.body["jobs"][0];
    for field in job_fields().into_iter().filter(|f| *f != "ok") {
        assert!(item.get(field).is_some(), "missing {field}: {item}");
    }
    assert_eq!(item["jobId"], json!(ids[2]));
    assert_eq!(item["stdoutRef"], json!(format!("{}.stdout.log", ids[2])));
}

#[test]
fn error_envelope_puts_ok_first_as_upstream_does() {
    let server = Builder::new().script("noop", "true").start();
    let r = server.get("/nope");
    assert_eq!(r.status, 404);
    assert!(r.text.starts_with(r#"{"ok":false,"error":{"code":"NOT_FOUND","message":"#), "{}", r.text);
}

// ---------------------------------------------------------------- idempotencyKey on POST /run

/// `POST /run` with an idempotency key.
fn run_keyed(server: &TestServer, script: &str, args: &[&str], mode: &str, key: &str) -> Resp {
    server.post("/run", json!({ "scriptId": script, "args": args, "mode": mode, "idempotencyKey": key }))
}

/// A deployment whose `count` script appends one line per start to `<dir>/starts`.
fn counting_server() -> TestServer {
    let builder = Builder::new();
    let starts = builder.dir().join("starts");
    let body = format!("echo \"start $*\" >> '{}'\necho \"out $*\"\nsleep ${{SLEEP:-0}}", starts.display());
    builder.script("count", &body).script("other", "echo other").start()
}

fn starts(server: &TestServer) -> usize {
    std::fs::read_to_string(server.dir().join("starts")).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn an_async_run_with_a_used_idempotency_key_answers_the_first_job_and_starts_nothing() {
    let server = counting_server();
    let first = run_keyed(&server, "count", &["a"], "async", "oocana:s1:j1");
    assert_eq!(first.status, 202, "{}", first.text);
    let id = first.body["jobId"].as_str().unwrap().to_string();
    assert!(first.body.get("deduplicated").is_none(), "{}", first.text);
    server.wait_terminal(&id, WAIT);
    let again = run_keyed(&server, "count", &["a"], "async", "oocana:s1:j1");
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["jobId"], json!(id));
    assert_eq!(again.body["deduplicated"], json!(true));
    assert_eq!(again.body["status"], json!("succeeded"));
    assert_eq!(starts(&server), 1);
    assert_eq!(server.job(&id)["idempotencyKey"], json!("oocana:s1:j1"));
    let list = server.get("/jobs?scriptId=count");
    assert_eq!(list.body["total"], json!(1), "{}", list.text);
}

#[test]
fn a_sync_run_with_a_used_idempotency_key_waits_for_and_answers_the_first_job() {
    let server = counting_server();
    // The first request is still running when the second arrives.
    let first = {
        let base = server.base.clone();
        std::thread::spawn(move || {
            let body = json!({ "scriptId": "count", "args": ["b"], "mode": "sync", "idempotencyKey": "k-sync" });
            let answer = ureq::post(&format!("{base}/run")).send_json(body).unwrap();
            answer.into_json::<Value>().unwrap()
        })
    };
    crate::common::wait_until(|| "the first job to start".into(), WAIT, || (starts(&server) == 1).then_some(()));
    let again = run_keyed(&server, "count", &["b"], "sync", "k-sync");
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["deduplicated"], json!(true));
    assert_eq!(again.body["status"], json!("succeeded"));
    assert_eq!(again.body["stdout"], json!("out b\n"));
    let first = first.join().unwrap();
    assert_eq!(first["jobId"], again.body["jobId"]);
    assert!(first.get("deduplicated").is_none(), "{first}");
    assert_eq!(starts(&server), 1);
}

#[test]
fn an_idempotency_key_used_for_another_script_or_args_is_a_conflict() {
    let server = counting_server();
    let first = run_keyed(&server, "count", &["a"], "async", "k1");
    assert_eq!(first.status, 202, "{}", first.text);
    let id = first.body["jobId"].as_str().unwrap();
    for (script, args) in [("count", vec!["b"]), ("other", vec!["a"]), ("count", vec![])] {
        let r = run_keyed(&server, script, &args, "async", "k1");
        assert_error(&r, 409, "IDEMPOTENCY_CONFLICT");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("\"k1\"") && message.contains(id), "{message}");
    }
    // Another mode is not a conflict: the sync request gets the job at its end.
    let sync = run_keyed(&server, "count", &["a"], "sync", "k1");
    assert_eq!(sync.status, 200, "{}", sync.text);
    assert_eq!(sync.body["jobId"], json!(id));
    assert_eq!(sync.body["stdout"], json!("out a\n"));
    server.wait_terminal(id, WAIT);
    assert_eq!(starts(&server), 1);
}

#[test]
fn a_bad_idempotency_key_is_refused_and_a_refused_run_leaves_its_key_unused() {
    let server = counting_server();
    for key in [json!(12), json!(""), json!("x".repeat(201)), json!(["k"])] {
        let r = server.post("/run", json!({ "scriptId": "count", "idempotencyKey": key }));
        assert_error_msg(&r, 400, "INVALID_ARGS", "idempotencyKey must be a string of 1 to 200 characters");
    }
    let unknown = run_keyed(&server, "nope", &[], "async", "k2");
    assert_error(&unknown, 400, "SCRIPT_NOT_FOUND");
    let bad_args = server.post("/run", json!({ "scriptId": "count", "args": [1], "idempotencyKey": "k2" }));
    assert_error(&bad_args, 400, "INVALID_ARGS");
    // The key is still free: this run starts a job.
    let ok = run_keyed(&server, "other", &[], "async", "k2");
    assert_eq!(ok.status, 202, "{}", ok.text);
    assert_eq!(starts(&server), 0);
}

#[test]
fn concurrent_runs_with_one_idempotency_key_start_one_job() {
    let server = counting_server();
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let base = server.base.clone();
                scope.spawn(move || {
                    let body = json!({ "scriptId": "count", "args": ["c"], "mode": "async", "idempotencyKey": "race" });
                    match ureq::post(&format!("{base}/run")).send_json(body) {
                        Ok(r) => r.into_json::<Value>().unwrap(),
                        Err(e) => panic!("{e}"),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: std::collections::BTreeSet<_> = answers.iter().map(|a| a["jobId"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| a["deduplicated"] == json!(true)).count(), 7, "{answers:?}");
    let id = ids.into_iter().next().unwrap();
    server.wait_terminal(&id, WAIT);
    assert_eq!(starts(&server), 1);
}

#[test]
fn idempotency_keys_are_kept_with_the_job_history_across_a_restart() {
    let mut server = counting_server();
    let first = run_keyed(&server, "count", &["d"], "async", "kept");
    let id = first.body["jobId"].as_str().unwrap().to_string();
    server.wait_terminal(&id, WAIT);
    server.terminate(WAIT);
    server.restart();
    let again = run_keyed(&server, "count", &["d"], "async", "kept");
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["jobId"], json!(id));
    assert_eq!(again.body["deduplicated"], json!(true));
    let conflict = run_keyed(&server, "count", &["e"], "async", "kept");
    assert_error(&conflict, 409, "IDEMPOTENCY_CONFLICT");
    assert_eq!(starts(&server), 1);
}

#[test]
fn jobs_can_be_looked_up_by_idempotency_key() {
    let server = counting_server();
    let running =
        server.post("/run", json!({ "scriptId": "count", "args": ["f"], "mode": "async", "idempotencyKey": "look" }));
    let id = running.body["jobId"].as_str().unwrap().to_string();
    let found = server.get("/jobs?idempotencyKey=look");
    assert_eq!(found.status, 200, "{}", found.text);
    assert_eq!(found.body["total"], json!(1), "{}", found.text);
    assert_eq!(found.body["jobs"][0]["jobId"], json!(id));
    server.wait_terminal(&id, WAIT);
    let found = server.get("/jobs?idempotencyKey=look&status=succeeded");
    assert_eq!(found.body["jobs"][0]["jobId"], json!(id), "{}", found.text);
    let none = server.get("/jobs?idempotencyKey=look&status=failed");
    assert_eq!(none.body["total"], json!(0), "{}", none.text);
    let none = server.get("/jobs?idempotencyKey=nobody");
    assert_eq!(none.body["jobs"], json!([]), "{}", none.text);
}
