//! Resume URLs (`resume.secret` in config.json): an `awaiting` run shows, for the approval,
//! input or event step it waits for, `waitingFor.resumeUrl` and `denyUrl`, which an outside
//! system calls without the server's token. Each works once, until it expires; a forged or
//! altered one is `404` without saying why; the token is never logged.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{assert_error, entry, wait_until, Builder, Resp, TestServer};
use serde_json::{json, Value};

/// Bound for anything a test waits for.
const WAIT: Duration = Duration::from_secs(20);
/// The server's token, in the tests that configure one.
const ADMIN: &str = "admin-token-for-resume-tests";
/// The input tests' schema: an object with a string `name`.
const SCHEMA: &str = r#"{"type":"object","required":["name"],"properties":{"name":{"type":"string"}}}"#;

/// A deployment with inline bash workflows and resume URLs signed with a test secret;
/// `resume` adds keys to the `resume` section (`ttlSec`).
fn builder(resume: Value) -> (Builder, PathBuf) {
    let mut section = json!({ "secret": "resume-test-secret" });
    for (k, v) in resume.as_object().unwrap() {
        section[k] = v.clone();
    }
    let b = Builder::new().workflows(json!({})).top("resume", section);
    let dir = b.dir().to_path_buf();
    (b, dir)
}

/// A workflow source with `@D` replaced by the deployment folder and `@S` by [`SCHEMA`].
fn src(dir: &Path, template: &str) -> String {
    template.replace("@D", dir.to_str().unwrap()).replace("@S", SCHEMA)
}

/// The admin token's header, when the server has one.
fn admin(with_token: bool) -> Vec<(&'static str, &'static str)> {
    let mut headers = vec![("Content-Type", "application/json")];
    if with_token {
        headers.push(("Authorization", "Bearer admin-token-for-resume-tests"));
    }
    headers
}

/// Launches an inline bash run (with the admin token if `with_token`); returns its id.
fn launch(server: &TestServer, source: &str, with_token: bool) -> String {
    let body = serde_json::to_vec(&json!({ "source": source, "interpreter": "bash" })).unwrap();
    let r = server.request("POST", "/api/script-runs", Some(&body), &admin(with_token));
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["run"]["id"].as_str().unwrap().to_string()
}

/// `GET /api/script-runs/{id}` (with the admin token if `with_token`).
fn read_run(server: &TestServer, id: &str, with_token: bool) -> Value {
    let r = server.request("GET", &format!("/api/script-runs/{id}"), None, &admin(with_token));
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

/// Polls the run until `pred` holds; returns `{ok, run, journal}`.
fn wait_run(server: &TestServer, id: &str, with_token: bool, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    wait_until(
        || format!("run {id}: {what} not seen within {WAIT:?}: {}", last.borrow()),
        WAIT,
        || {
            let body = read_run(server, id, with_token);
            if pred(&body) {
                return Some(body);
            }
            *last.borrow_mut() = body;
            None
        },
    )
}

/// Waits until the run is `awaiting` and returns its `waitingFor`.
fn waiting_for(server: &TestServer, id: &str, with_token: bool) -> Value {
    let body = wait_run(server, id, with_token, "awaiting", |b| b["run"]["status"] == json!("awaiting"));
    body["run"]["waitingFor"].clone()
}

fn terminal(server: &TestServer, id: &str, with_token: bool) -> Value {
    wait_run(server, id, with_token, "the end", |b| {
        matches!(b["run"]["status"].as_str(), Some("completed" | "failed" | "cancelled" | "aborted_limit"))
    })
}

/// The path of a resume URL the server issued (its base is the server's own address).
fn path_of(server: &TestServer, url: &Value) -> String {
    let url = url.as_str().unwrap_or_else(|| panic!("not a URL: {url}"));
    let path = url.strip_prefix(&server.base).unwrap_or_else(|| panic!("{url} is not under {}", server.base));
    assert!(path.starts_with("/api/resume/"), "{url}");
    path.to_string()
}

/// The token of a resume URL's path.
fn token_of(path: &str) -> &str {
    path.strip_prefix("/api/resume/").unwrap()
}

/// A request to a resume URL, without any token of the server.
fn call(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> Resp {
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
    server.request(method, path, bytes.as_deref(), &[("Content-Type", "application/json")])
}

fn assert_ok(r: &Resp) {
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ok"], json!(true), "{}", r.text);
}

/// A workflow that asks approval `ship` and prints whether it was approved.
const APPROVAL: &str = r#"if script-runner step ship --approval "ship it?" > @D/decision; then
  echo '"approved"'
else
  echo '"denied"'
fi
"#;

#[test]
fn an_approval_is_approved_through_its_url_without_the_server_token_and_only_once() {
    let (b, d) = builder(json!({}));
    let server = b.server("authToken", json!(ADMIN)).start();
    let id = launch(&server, &src(&d, APPROVAL), true);
    let waiting = waiting_for(&server, &id, true);
    assert_eq!(waiting["label"], json!("ship"), "{waiting}");
    assert_eq!(waiting["kind"], json!("approval"), "{waiting}");
    let (resume, deny) = (path_of(&server, &waiting["resumeUrl"]), path_of(&server, &waiting["denyUrl"]));
    assert_ne!(resume, deny);
    assert!(waiting["expiresAt"].is_string(), "{waiting}");
    // The same URLs on every read: computed from the step, never stored.
    assert_eq!(read_run(&server, &id, true)["run"]["waitingFor"], waiting);
    // The run API still needs the server's token; the resume URL does not.
    assert_error(&server.get(&format!("/api/script-runs/{id}")), 401, "UNAUTHORIZED");

    let r = call(&server, "POST", &resume, Some(json!({"by": "chat", "comment": "lgtm"})));
    assert_ok(&r);
    assert_eq!(r.body["runId"], json!(id), "{}", r.text);
    assert_eq!(r.body["effect"], json!("approve"), "{}", r.text);
    assert_eq!(r.body["decided"], json!(true), "{}", r.text);
    assert!(r.body["usedAt"].is_string(), "{}", r.text);

    let body = terminal(&server, &id, true);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!("approved"), "{body}");
    let ship = entry(&body, "ship");
    assert_eq!(ship["result"]["approved"], json!(true), "{ship}");
    assert_eq!(ship["result"]["by"], json!("chat"), "{ship}");
    assert_eq!(ship["result"]["comment"], json!("lgtm"), "{ship}");
    assert_eq!(ship["result"]["via"], json!("resumeUrl"), "{ship}");

    // Used once: again, or its pair, is refused, and the decision stands.
    assert_error(&call(&server, "POST", &resume, None), 409, "ALREADY_DECIDED");
    assert_error(&call(&server, "POST", &deny, None), 409, "ALREADY_DECIDED");
    let r = call(&server, "GET", &resume, None);
    assert_ok(&r);
    assert_eq!(r.body["decided"], json!(true), "{}", r.text);
    assert!(r.body["usedAt"].is_string(), "{}", r.text);
    let r = call(&server, "GET", &deny, None);
    assert_ok(&r);
    assert_eq!(r.body["decided"], json!(true), "{}", r.text);
    assert!(r.body.get("usedAt").is_none(), "the deny URL was never used: {}", r.text);
    assert_eq!(entry(&read_run(&server, &id, true), "ship")["result"]["approved"], json!(true));
}

#[test]
fn the_deny_url_denies_an_approval_and_then_the_resume_url_is_refused() {
    let (b, d) = builder(json!({}));
    let server = b.start();
    let id = launch(&server, &src(&d, APPROVAL), false);
    let waiting = waiting_for(&server, &id, false);
    let (resume, deny) = (path_of(&server, &waiting["resumeUrl"]), path_of(&server, &waiting["denyUrl"]));
    // No body at all: a link clicked in a chat.
    let r = call(&server, "POST", &deny, None);
    assert_ok(&r);
    assert_eq!(r.body["effect"], json!("deny"), "{}", r.text);
    let body = terminal(&server, &id, false);
    assert_eq!(body["run"]["output"], json!("denied"), "{body}");
    assert_eq!(entry(&body, "ship")["result"]["approved"], json!(false), "{body}");
    assert_error(&call(&server, "POST", &resume, Some(json!({}))), 409, "ALREADY_DECIDED");
    assert_error(&call(&server, "POST", &deny, None), 409, "ALREADY_DECIDED");
}

#[test]
fn an_input_through_its_url_is_checked_against_its_schema_then_taken() {
    let (b, d) = builder(json!({}));
    let server = b.start();
    let source = src(
        &d,
        r#"set -e
v=$(script-runner step ask --input "who are you?" --schema '@S')
echo "{\"got\":$v}"
"#,
    );
    let id = launch(&server, &source, false);
    let waiting = waiting_for(&server, &id, false);
    assert_eq!(waiting["kind"], json!("input"), "{waiting}");
    let resume = path_of(&server, &waiting["resumeUrl"]);
    let r = call(&server, "GET", &resume, None);
    assert_ok(&r);
    assert_eq!(r.body["effect"], json!("submit"), "{}", r.text);
    assert_eq!(r.body["prompt"], json!("who are you?"), "{}", r.text);
    assert_eq!(r.body["schema"], serde_json::from_str::<Value>(SCHEMA).unwrap(), "{}", r.text);

    let r = call(&server, "POST", &resume, Some(json!({"value": {"name": 7}})));
    assert_error(&r, 400, "INPUT_INVALID");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("/name"), "{}", r.text);
    assert_error(&call(&server, "POST", &resume, Some(json!({"by": "no value"}))), 400, "INVALID_REQUEST");
    // Nothing journaled, and the URL still works.
    let body = read_run(&server, &id, false);
    assert_eq!(body["run"]["status"], json!("awaiting"), "{body}");
    assert_eq!(entry(&body, "ask")["status"], json!("started"), "{body}");

    let r = call(&server, "POST", &resume, Some(json!({"value": {"name": "ada"}, "by": "form"})));
    assert_ok(&r);
    let body = terminal(&server, &id, false);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(body["run"]["output"], json!({"got": {"name": "ada"}}), "{body}");
    assert_eq!(entry(&body, "ask")["result"]["by"], json!("form"), "{body}");
    assert_error(&call(&server, "POST", &resume, Some(json!({"value": {"name": "bob"}}))), 409, "ALREADY_DECIDED");
}

#[test]
fn an_event_through_its_url_delivers_the_body_as_its_payload() {
    let (b, d) = builder(json!({}));
    let server = b.start();
    let source = src(
        &d,
        r#"set -e
p=$(script-runner step wait-pay --wait-event paid)
echo "{\"paid\":$p}"
"#,
    );
    let id = launch(&server, &source, false);
    let waiting = waiting_for(&server, &id, false);
    assert_eq!(waiting["kind"], json!("event"), "{waiting}");
    let resume = path_of(&server, &waiting["resumeUrl"]);
    let r = call(&server, "POST", &resume, Some(json!({"amount": 5, "currency": "EUR"})));
    assert_ok(&r);
    assert_eq!(r.body["effect"], json!("deliver"), "{}", r.text);
    let body = terminal(&server, &id, false);
    assert_eq!(body["run"]["output"], json!({"paid": {"amount": 5, "currency": "EUR"}}), "{body}");
    assert_error(&call(&server, "POST", &resume, Some(json!({"amount": 6}))), 409, "ALREADY_DECIDED");
}

#[test]
fn the_deny_url_of_an_input_fails_the_step_and_its_replay_fails_the_same_way() {
    let (b, d) = builder(json!({}));
    let server = b.start();
    // The step runs twice: once as the run's first execution, once replayed after a pause.
    let source = src(
        &d,
        &format!(
            r#"if script-runner step ask --input "name?" 2>> @D/errors; then echo ok >> @D/outcomes; else echo "failed $?" >> @D/outcomes; fi
{gate}
echo '"done"'
"#,
            gate = crate::common::wait_for_gate(&d.join("go"))
        ),
    );
    let id = launch(&server, &source, false);
    let waiting = waiting_for(&server, &id, false);
    let deny = path_of(&server, &waiting["denyUrl"]);
    let r = call(&server, "POST", &deny, Some(json!({"by": "reviewer"})));
    assert_ok(&r);
    assert_eq!(r.body["effect"], json!("fail"), "{}", r.text);
    crate::common::wait_file(&d.join("outcomes"), WAIT);
    let body = read_run(&server, &id, false);
    let ask = entry(&body, "ask");
    assert_eq!(ask["status"], json!("failed"), "{ask}");
    assert_eq!(ask["error"], json!("denied through its resume URL"), "{ask}");
    assert_eq!(ask["result"]["by"], json!("reviewer"), "{ask}");

    // A replay of the journaled failure fails the same way.
    assert_ok(&server.post(&format!("/api/script-runs/{id}/pause"), json!({})));
    wait_run(&server, &id, false, "paused", |b| b["run"]["status"] == json!("paused"));
    assert_ok(&server.post(&format!("/api/script-runs/{id}/resume"), json!({})));
    wait_until(
        || format!("no second outcome: {:?}", std::fs::read_to_string(d.join("outcomes"))),
        WAIT,
        || (crate::common::lines(&d.join("outcomes")).len() == 2).then_some(()),
    );
    crate::common::open_gate(&d.join("go"));
    let body = terminal(&server, &id, false);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(crate::common::lines(&d.join("outcomes")), vec!["failed 1", "failed 1"]);
    let errors = std::fs::read_to_string(d.join("errors")).unwrap();
    assert_eq!(errors.matches("denied through its resume URL").count(), 2, "{errors}");
}

#[test]
fn an_expired_url_is_410_and_decides_nothing() {
    let (b, d) = builder(json!({"ttlSec": 1}));
    let server = b.start();
    let id = launch(&server, &src(&d, APPROVAL), false);
    let waiting = waiting_for(&server, &id, false);
    let resume = path_of(&server, &waiting["resumeUrl"]);
    // Expired one second after the step began.
    wait_until(
        || "the URL did not expire".to_string(),
        WAIT,
        || (call(&server, "GET", &resume, None).status == 410).then_some(()),
    );
    assert_error(&call(&server, "GET", &resume, None), 410, "RESUME_URL_EXPIRED");
    assert_error(&call(&server, "POST", &resume, None), 410, "RESUME_URL_EXPIRED");
    let deny = path_of(&server, &waiting["denyUrl"]);
    assert_error(&call(&server, "POST", &deny, None), 410, "RESUME_URL_EXPIRED");
    let body = read_run(&server, &id, false);
    assert_eq!(body["run"]["status"], json!("awaiting"), "{body}");
    assert_eq!(entry(&body, "ship")["status"], json!("started"), "{body}");
    // The run API still decides it.
    assert_ok(&server.post(&format!("/api/script-runs/{id}/approvals/ship"), json!({"approved": true})));
    assert_eq!(terminal(&server, &id, false)["run"]["output"], json!("approved"));
}

#[test]
fn a_forged_or_altered_token_is_404_without_saying_why() {
    let (b, d) = builder(json!({}));
    let server = b.start();
    let id = launch(&server, &src(&d, APPROVAL), false);
    let waiting = waiting_for(&server, &id, false);
    let (resume, deny) = (path_of(&server, &waiting["resumeUrl"]), path_of(&server, &waiting["denyUrl"]));
    let (resume_payload, resume_mac) = token_of(&resume).split_once('.').unwrap();
    let (deny_payload, _) = token_of(&deny).split_once('.').unwrap();
    // Another character in the payload: a change of the claims.
    let mut altered = resume_payload.as_bytes().to_vec();
    altered[3] = if altered[3] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let forged = [
        // The deny claims under the resume URL's signature.
        format!("{deny_payload}.{resume_mac}"),
        format!("{altered}.{resume_mac}"),
        format!("{resume_payload}.{}", &resume_mac[..resume_mac.len() - 2]),
        resume_payload.to_string(),
        "not-a-token".to_string(),
        "a".repeat(3000),
    ];
    let mut messages = Vec::new();
    for token in &forged {
        for method in ["GET", "POST"] {
            let r = call(&server, method, &format!("/api/resume/{token}"), None);
            assert_error(&r, 404, "RESUME_URL_NOT_FOUND");
            messages.push(r.body["error"]["message"].clone());
        }
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "the answers differ: {messages:?}");
    let body = read_run(&server, &id, false);
    assert_eq!(entry(&body, "ship")["status"], json!("started"), "{body}");
    // The genuine one still works.
    assert_ok(&call(&server, "POST", &resume, None));
}

#[test]
fn get_describes_and_changes_nothing() {
    let (b, d) = builder(json!({}));
    let server = b.start();
    let id = launch(&server, &src(&d, APPROVAL), false);
    let waiting = waiting_for(&server, &id, false);
    let (resume, deny) = (path_of(&server, &waiting["resumeUrl"]), path_of(&server, &waiting["denyUrl"]));
    for _ in 0..3 {
        let r = call(&server, "GET", &resume, None);
        assert_ok(&r);
        assert_eq!(r.body["kind"], json!("approval"), "{}", r.text);
        assert_eq!(r.body["action"], json!("resume"), "{}", r.text);
        assert_eq!(r.body["message"], json!("ship it?"), "{}", r.text);
        assert_eq!(r.body["decided"], json!(false), "{}", r.text);
        assert_eq!(r.body["expiresAt"], waiting["expiresAt"], "{}", r.text);
        let r = call(&server, "GET", &deny, None);
        assert_ok(&r);
        assert_eq!(r.body["effect"], json!("deny"), "{}", r.text);
        assert_eq!(r.body["decided"], json!(false), "{}", r.text);
    }
    let body = read_run(&server, &id, false);
    assert_eq!(body["run"]["status"], json!("awaiting"), "{body}");
    assert_eq!(entry(&body, "ship")["status"], json!("started"), "{body}");
    // Both URLs still work: the deny one decides.
    assert_ok(&call(&server, "POST", &deny, None));
    assert_eq!(terminal(&server, &id, false)["run"]["output"], json!("denied"));
}

#[test]
fn the_token_never_appears_in_the_server_log() {
    let (b, d) = builder(json!({}));
    let server = b.write().start_with_env(&[("RUST_LOG", "debug")]);
    let source = src(
        &d,
        r#"set -e
v=$(script-runner step ask --input "who?" --schema '@S')
echo "{\"got\":$v}"
"#,
    );
    let id = launch(&server, &source, false);
    let waiting = waiting_for(&server, &id, false);
    let (resume, deny) = (path_of(&server, &waiting["resumeUrl"]), path_of(&server, &waiting["denyUrl"]));
    // Every kind of answer: a description, a refused value, a use, a second use, a forgery.
    assert_ok(&call(&server, "GET", &resume, None));
    assert_error(&call(&server, "POST", &resume, Some(json!({"value": 1}))), 400, "INPUT_INVALID");
    assert_ok(&call(&server, "POST", &resume, Some(json!({"value": {"name": "ada"}}))));
    assert_error(&call(&server, "POST", &resume, Some(json!({"value": {"name": "ada"}}))), 409, "ALREADY_DECIDED");
    assert_error(&call(&server, "POST", &deny, None), 409, "ALREADY_DECIDED");
    let forged = format!("{}x", token_of(&resume));
    assert_error(&call(&server, "POST", &format!("/api/resume/{forged}"), None), 404, "RESUME_URL_NOT_FOUND");
    // Nor in an answer that names the path.
    let r = call(&server, "PUT", &resume, None);
    assert_error(&r, 405, "METHOD_NOT_ALLOWED");
    assert!(!r.text.contains(token_of(&resume)) && r.text.contains("/api/resume/<token>"), "{}", r.text);
    let r = call(&server, "GET", &format!("{resume}/more"), None);
    assert_error(&r, 404, "NOT_FOUND");
    assert!(!r.text.contains(token_of(&resume)) && r.text.contains("/api/resume/<token>/more"), "{}", r.text);
    terminal(&server, &id, false);
    let log = server.server_log();
    // The use is logged, by run and step: what the token stands for, not the token.
    assert!(
        log.contains(&format!("run {id}: step \"ask\" decided through its resume URL")),
        "the use is not logged, so the log proves nothing:\n{log}"
    );
    for token in [token_of(&resume), token_of(&deny)] {
        let (_, mac) = token.split_once('.').unwrap();
        assert!(!log.contains(mac), "a token is in the server log:\n{log}");
    }
}

#[test]
fn without_a_secret_no_url_is_issued_and_none_is_accepted() {
    let b = Builder::new().workflows(json!({}));
    let d = b.dir().to_path_buf();
    let server = b.start();
    let id = launch(&server, &src(&d, APPROVAL), false);
    let waiting = waiting_for(&server, &id, false);
    assert_eq!(waiting, json!({"label": "ship", "kind": "approval", "message": "ship it?"}));
    assert_error(&call(&server, "GET", "/api/resume/abc.def", None), 404, "RESUME_URL_NOT_FOUND");
    assert_error(&call(&server, "POST", "/api/resume/abc.def", None), 404, "RESUME_URL_NOT_FOUND");
}

#[test]
fn a_used_url_is_stored_as_the_sha256_of_its_token_and_the_token_nowhere() {
    use sha2::{Digest, Sha256};
    let (b, d) = builder(json!({}));
    let server = b.start();
    let id = launch(&server, &src(&d, APPROVAL), false);
    let waiting = waiting_for(&server, &id, false);
    let (resume, deny) = (path_of(&server, &waiting["resumeUrl"]), path_of(&server, &waiting["denyUrl"]));
    let touch = "UPDATE resume_tokens SET used_at = used_at WHERE token_hash = $1";
    let hash = |token: &str| format!("{:x}", Sha256::digest(token.as_bytes()));
    assert_eq!(server.deployment.execute_sql(touch, &hash(token_of(&resume))), 0, "stored before its use");
    assert_ok(&call(&server, "POST", &resume, None));
    terminal(&server, &id, false);
    let db = &server.deployment;
    assert_eq!(db.execute_sql(touch, &hash(token_of(&resume))), 1, "the use is not recorded by its hash");
    assert_eq!(db.execute_sql(touch, &hash(token_of(&deny))), 0, "the unused URL is recorded");
    assert_eq!(db.execute_sql(touch, token_of(&resume)), 0, "the token itself is stored");
    // Nor anywhere else the run is kept: its row (`waitingFor`), its journal, its events.
    for token in [token_of(&resume), token_of(&deny)] {
        let (_, mac) = token.split_once('.').unwrap();
        let pattern = format!("%{mac}%");
        for sql in [
            "UPDATE script_runs SET id = id WHERE waiting_for LIKE $1",
            "UPDATE script_run_journal SET run_id = run_id WHERE result LIKE $1",
            "UPDATE script_run_events SET at = at WHERE body LIKE $1",
        ] {
            assert_eq!(db.execute_sql(sql, &pattern), 0, "{sql}: a token is stored");
        }
    }
}

/// In a cluster, a resume URL used on a node that does not hold the run is decided by the node
/// that does (forwarded, the token checked again there), once.
#[test]
fn in_a_cluster_a_url_used_on_another_node_is_decided_by_the_holder() {
    if !crate::common::on_postgres() {
        println!("skipped: a cluster needs the PostgreSQL pass (tests/run)");
        return;
    }
    let cluster = crate::common::Cluster::builder()
        .workflows(json!({}))
        .top("resume", json!({ "secret": "resume-test-secret" }))
        .start(2);
    let (holder, other) = (&cluster.nodes[0], &cluster.nodes[1]);
    let id = holder.launch_bash("script-runner step gate --approval 'go?' && echo '\"approved\"'", json!({}));
    let waiting = waiting_for(other, &id, false);
    // Without `resume.baseUrl`, a node shows URLs to itself.
    let resume = path_of(other, &waiting["resumeUrl"]);
    let r = call(other, "POST", &resume, Some(json!({"by": "n2"})));
    assert_ok(&r);
    assert_eq!(r.body["decided"], json!(true), "{}", r.text);
    let body = terminal(holder, &id, false);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}\n{}", cluster.logs());
    assert_eq!(body["run"]["node"], json!("n1"), "{body}");
    assert_eq!(entry(&body, "gate")["result"]["by"], json!("n2"), "{body}");
    assert_error(&call(holder, "POST", &resume, None), 409, "ALREADY_DECIDED");
    assert_error(&call(other, "POST", &resume, None), 409, "ALREADY_DECIDED");
}

#[test]
fn a_resume_section_out_of_bounds_or_with_an_unknown_key_is_refused_at_start() {
    let refused = [
        (json!({"secret": "s", "ttlSec": 0}), "resume.ttlSec: must be 1 to 31536000"),
        (json!({"secret": "s", "ttlSec": 31_536_001}), "resume.ttlSec: must be 1 to 31536000"),
        (json!({"secret": "s", "baseUrl": "ftp://x"}), "resume.baseUrl: must be an http:// or https:// address"),
        (json!({"secret": "s", "baseUrl": "https://x/?q=1"}), "resume.baseUrl"),
        (json!({"secret": "s", "ttl": 5}), "unknown field `ttl`"),
    ];
    for (section, expected) in refused {
        let out = Builder::new().top("resume", section.clone()).write().check_config();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{section}: {stderr}");
        assert!(stderr.contains(expected), "{section}: {stderr}");
    }
    let fine = json!({"secret": "s", "ttlSec": 1, "baseUrl": "https://runner.example.com/"});
    let out = Builder::new().top("resume", fine).write().check_config();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn with_a_base_url_the_urls_start_with_it() {
    let (b, d) = builder(json!({"baseUrl": "https://runner.example.com/hooks/"}));
    let server = b.start();
    let id = launch(&server, &src(&d, APPROVAL), false);
    let waiting = waiting_for(&server, &id, false);
    for key in ["resumeUrl", "denyUrl"] {
        let url = waiting[key].as_str().unwrap();
        let token = url.strip_prefix("https://runner.example.com/hooks/api/resume/").unwrap_or_else(|| panic!("{url}"));
        // The same token is served here, whatever address the callers reach it by.
        assert_ok(&call(&server, "GET", &format!("/api/resume/{token}"), None));
    }
}

#[test]
fn the_deny_url_of_an_event_step_fails_it() {
    let (b, d) = builder(json!({}));
    let server = b.start();
    let source = src(
        &d,
        r#"if p=$(script-runner step wait-pay --wait-event paid 2> @D/error); then echo "{\"paid\":$p}"; else echo '"not paid"'; fi
"#,
    );
    let id = launch(&server, &source, false);
    let waiting = waiting_for(&server, &id, false);
    let deny = path_of(&server, &waiting["denyUrl"]);
    let r = call(&server, "POST", &deny, None);
    assert_ok(&r);
    assert_eq!(r.body["effect"], json!("fail"), "{}", r.text);
    let body = terminal(&server, &id, false);
    assert_eq!(body["run"]["output"], json!("not paid"), "{body}");
    let step = entry(&body, "wait-pay");
    assert_eq!(step["status"], json!("failed"), "{step}");
    assert_eq!(step["error"], json!("denied through its resume URL"), "{step}");
    let error = std::fs::read_to_string(d.join("error")).unwrap();
    assert!(error.contains("denied through its resume URL"), "{error}");
}

#[test]
fn of_many_uses_at_once_of_a_pair_exactly_one_decides() {
    let (b, d) = builder(json!({}));
    let server = b.start();
    let id = launch(&server, &src(&d, APPROVAL), false);
    let waiting = waiting_for(&server, &id, false);
    let (resume, deny) = (path_of(&server, &waiting["resumeUrl"]), path_of(&server, &waiting["denyUrl"]));
    let answers: Vec<(String, u16)> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|n| {
                let path = if n % 2 == 0 { resume.clone() } else { deny.clone() };
                let server = &server;
                scope.spawn(move || {
                    let r = call(server, "POST", &path, None);
                    if r.status != 200 {
                        assert_error(&r, 409, "ALREADY_DECIDED");
                    }
                    (path, r.status)
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let won: Vec<&String> = answers.iter().filter(|(_, status)| *status == 200).map(|(path, _)| path).collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    let approved = *won[0] == resume;
    let body = terminal(&server, &id, false);
    assert_eq!(entry(&body, "ship")["result"]["approved"], json!(approved), "{body}");
    assert_eq!(body["run"]["output"], json!(if approved { "approved" } else { "denied" }), "{body}");
}
