//! The OpenAPI document (`GET /openapi.json`, `script-runner openapi`): served without a token,
//! the same as the command prints, and every operation in it answered by its route. (Every
//! answer of the whole suite is validated against it in `common::Contract::check`.)

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{contract, Builder};

#[test]
fn every_documented_operation_is_answered_by_its_route_not_the_fallback() {
    let server = Builder::new().start();
    let paths = contract().doc["paths"].as_object().expect("the document has paths");
    assert!(paths.len() > 20, "{paths:?}");
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    for (template, item) in paths {
        // Placeholder ids: the route must answer them itself (a 4xx of its own at most).
        let path = template.replace("{action}", "cancel").replace("{id}", "none").replace("{label}", "none");
        for method in item.as_object().expect("a path item is an object").keys() {
            let method = method.to_uppercase();
            let request =
                agent.request(&method, &format!("{}{path}", server.base)).set("Content-Type", "application/json");
            let response = match if method == "GET" { request.call() } else { request.send_bytes(b"{}") } {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("{method} {path}: {e}"),
            };
            let status = response.status();
            // A stream (`text/event-stream`) is not read: its status and type are the answer.
            let content_type = response.content_type().to_string();
            let text = if content_type == "application/json" {
                response.into_string().expect("a JSON answer")
            } else {
                String::new()
            };
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if !text.is_empty() {
                contract().check(&method, &path, status, &content_type, &text, &body);
            }
            let fallback = status == 404
                && body["error"]["code"] == json!("NOT_FOUND")
                && body["error"]["message"].as_str().is_some_and(|m| m.starts_with("route not found"));
            assert!(
                !fallback && status != 405,
                "{method} {template} is in the OpenAPI document but no route answers it ({method} {path}: {status} {text})"
            );
        }
    }
}

#[test]
fn the_document_is_served_without_a_token_and_is_what_the_command_prints() {
    let server = Builder::new().server("authToken", json!("s3cret")).start();
    let r = server.get("/openapi.json");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, contract().doc);
    assert_eq!(r.body["openapi"], json!("3.1.0"));
    // Any other route still needs the token.
    assert_eq!(server.get("/jobs").status, 401);
}

#[test]
fn an_unknown_route_answers_the_error_body_the_document_defines() {
    let server = Builder::new().start();
    // `request` checks an undocumented route's answer against `ErrorBody`.
    let r = server.get("/no/such/route");
    assert_eq!(r.status, 404, "{}", r.text);
    let r = server.request("PUT", "/jobs", Some(b"{}"), &[]);
    assert_eq!(r.status, 405, "{}", r.text);
}

#[test]
#[should_panic(expected = "does not match the document's schema")]
fn an_answer_with_a_field_the_document_does_not_name_fails_the_check() {
    let body = json!({ "ok": true, "jobs": [], "total": 0, "extra": 1 });
    contract().check("GET", "/jobs", 200, "application/json", &body.to_string(), &body);
}

#[test]
#[should_panic(expected = "does not match the document's schema")]
fn an_error_answer_with_a_code_the_document_does_not_enumerate_fails_the_check() {
    let body = json!({ "ok": false, "error": { "code": "NO_SUCH_CODE", "message": "m" } });
    contract().check("GET", "/jobs/job_1", 404, "application/json", &body.to_string(), &body);
}

#[test]
#[should_panic(expected = "a status the document does not list")]
fn an_undocumented_status_fails_the_check() {
    let body = json!({ "ok": false, "error": { "code": "QUEUE_FULL", "message": "m" } });
    contract().check("GET", "/jobs/job_1", 429, "application/json", &body.to_string(), &body);
}

#[test]
fn a_job_list_as_the_server_writes_it_passes_the_check() {
    let body = json!({ "ok": true, "jobs": [], "total": 0 });
    contract().check("GET", "/jobs?limit=1", 200, "application/json", &body.to_string(), &body);
}
