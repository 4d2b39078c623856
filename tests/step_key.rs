//! Step idempotency keys: every command, value-from and script step's process gets
//! `SCRIPT_STEP_KEY=<runId>:<label>` (the same on every replay), so a script can make an
//! external write exactly once; a job started by `POST /run` gets none. (A script step's job
//! keeps its key in the database: on the PostgreSQL pass it is queued and claimed through it.)
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::{entry, Builder};
use serde_json::json;

/// Bound for anything a test waits for.
const WAIT: Duration = Duration::from_secs(20);

/// A script that prints its step key (or `none`).
const PRINT_KEY: &str = r#"echo "key=${SCRIPT_STEP_KEY:-none}""#;

#[test]
fn command_value_from_and_script_steps_get_run_id_colon_label() {
    let b = Builder::new().script_entry("print-key", PRINT_KEY, json!({ "mode": "async" })).workflows(json!({}));
    let server = b.start();
    let source = format!(
        r#"set -e
script-runner step cmd -- sh -c '{PRINT_KEY}' > /dev/null
script-runner step job --script print-key > /dev/null
v=$(script-runner step val --value-from -- sh -c 'echo "$SCRIPT_STEP_KEY"')
echo "{{\"val\":\"$v\"}}"
"#
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    assert_eq!(entry(&body, "cmd")["result"]["stdout"], json!(format!("key={id}:cmd\n")), "{body}");
    assert_eq!(entry(&body, "job")["result"]["stdout"], json!(format!("key={id}:job\n")), "{body}");
    assert_eq!(body["run"]["output"], json!({ "val": format!("{id}:val") }), "{body}");

    // The same script run by `POST /run` is no step: no key.
    let r = server.run("print-key", &[], Some("sync"));
    assert_eq!((r.status, r.body["stdout"].as_str()), (200, Some("key=none\n")), "{}", r.text);
}

/// Every try of a retried step, command or script, gets the same key: a script can tell a
/// retry of its write from a new one.
#[test]
fn every_try_of_a_retried_step_gets_the_same_key() {
    let b = Builder::new();
    let dir = b.dir().to_path_buf();
    let keys = dir.join("keys");
    // Appends its key; fails the first time it sees a given marker name.
    let flaky = format!(
        r#"echo "$SCRIPT_STEP_KEY" >> '{keys}'; [ -e '{dir}/seen.'"$1" ] && exit 0; touch '{dir}/seen.'"$1"; exit 3"#,
        keys = keys.display(),
        dir = dir.display()
    );
    let server = b.script_entry("flaky", &flaky, json!({ "mode": "async" })).workflows(json!({})).start();
    let source = format!(
        "set -e\nscript-runner step cmd --retry 2 --backoff 10ms -- sh -c '{}' sh c > /dev/null\n\
         script-runner step job --script flaky --retry 2 --backoff 10ms j > /dev/null\n",
        flaky.replace('\'', r"'\''")
    );
    let id = server.launch_bash(&source, json!({}));
    let body = server.wait_run_terminal(&id, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    let (cmd, job) = (format!("{id}:cmd"), format!("{id}:job"));
    assert_eq!(crate::common::lines(&keys), [cmd.as_str(), &cmd, &job, &job], "{body}");
    assert_eq!(entry(&body, "cmd")["attempts"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(entry(&body, "job")["attempts"].as_array().map(Vec::len), Some(1), "{body}");
}
