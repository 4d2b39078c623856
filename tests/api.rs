//! The job API as a client sees it: runs, errors, validation, listing, auth.

mod common;

use common::Builder;
use serde_json::json;

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
