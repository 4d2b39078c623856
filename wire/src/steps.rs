//! The step protocol: what a workflow process (`script-runner step`, or any client) sends to
//! the server's internal routes under `/api/internal/script-runs/{runId}/`, authorised by the
//! run token, and what it gets back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::runs::StepView;

/// The environment variable that gives the processes of command and script steps their
/// step's idempotency key, [`step_key`]: the same on every replay and retry of the step, so a
/// script can make an external write exactly once.
pub const STEP_KEY_ENV: &str = "SCRIPT_STEP_KEY";

/// A step's idempotency key: `<runId>:<label>` (one place spells it, for the client's command
/// steps and the server's script-step jobs alike).
pub fn step_key(run_id: &str, label: &str) -> String {
    format!("{run_id}:{label}")
}

/// `POST steps/{label}/begin`: a step is about to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BeginRequest {
    /// `command`, `script`, `value`, `sleep`, `approval` or `node`.
    pub step_type: String,
    /// What the step does (a replay with another config is `STEP_DIVERGED`).
    #[serde(default)]
    pub config: Value,
}

/// What the client does next with a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The step is journaled: its result is in `step`, nothing runs.
    Done,
    /// Not journaled: the client runs it and records it.
    Execute,
    /// Started and not ended (a sleep, an approval, a script's job): the client goes on
    /// with the entry in `step`.
    Resume,
}

/// The answer to [`BeginRequest`] (fields in the order the server has always written them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BeginAnswer {
    /// What to do.
    pub action: Action,
    /// Always true.
    pub ok: bool,
    /// The journal entry (`done` and `resume`).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub step: Option<StepView>,
}

/// `POST steps`: records a step the client ran (or finishes a started one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RecordRequest {
    /// The label.
    pub step_key: String,
    /// The step type, as begun.
    pub step_type: String,
    /// The config, as begun.
    #[serde(default)]
    pub config: Value,
    /// `completed` or `failed`.
    pub status: String,
    /// What the step produced.
    #[serde(default)]
    pub result: Option<Value>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// How long it ran.
    #[serde(default)]
    pub duration_ms: Option<i64>,
}

/// `POST steps/{label}/attempts`: a try of a retried command step (`config.retry`) failed and
/// another is due. The server journals it with the next try's time (from the step's backoff)
/// and answers the entry ([`StepAnswer`], `nextAttemptAt` set); the client waits until then and
/// runs attempt `attempt + 1`. The last try is recorded as the step (`POST steps`), not here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AttemptRequest {
    /// The step type, as begun (`command`).
    pub step_type: String,
    /// The config, as begun.
    #[serde(default)]
    pub config: Value,
    /// The number of the try that failed, from 1; the step's journaled attempts plus one (a
    /// number already journaled is answered with the entry as it is).
    pub attempt: u32,
    /// Its exit code.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Why it failed.
    pub error: String,
    /// The end of its stderr (the server keeps the last 4096 bytes).
    #[serde(default)]
    pub stderr_tail: String,
    /// When it started, Unix ms.
    pub started_at_ms: i64,
    /// When it ended, Unix ms.
    pub ended_at_ms: i64,
}

/// `{ok, step}`: the answer of `GET steps/{label}`, `POST steps` and `GET steps/{label}/wait`
/// (a second writer of a label gets the first one's entry back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepAnswer {
    /// Always true.
    pub ok: bool,
    /// The journal entry as stored.
    pub step: StepView,
}

/// `POST progress`: the run's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProgressRequest {
    /// Units done.
    pub current: u64,
    /// Units in all (0 when unknown).
    pub total: u64,
    /// What it is doing.
    #[serde(default)]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn begin_answers_read_every_action_and_a_missing_step() {
        let answer: BeginAnswer =
            serde_json::from_value(json!({ "ok": true, "action": "execute", "step": null })).expect("execute answer");
        assert_eq!((answer.action, answer.step), (Action::Execute, None));
        let step = json!({ "stepKey": "a", "stepType": "value", "config": null, "status": "completed",
            "result": 42, "error": null, "jobId": null, "startedAt": "2026-01-01T00:00:00.000Z",
            "completedAt": null, "durationMs": 3 });
        let answer: BeginAnswer =
            serde_json::from_value(json!({ "ok": true, "action": "done", "step": step })).expect("done answer");
        assert_eq!(answer.action, Action::Done);
        assert_eq!(answer.step.map(|s| s.result), Some(json!(42)));
        assert!(serde_json::from_value::<BeginAnswer>(json!({ "ok": true, "action": "jump" })).is_err());
    }

    #[test]
    fn a_record_request_is_written_with_the_protocols_names_and_read_back_equal() {
        let record = RecordRequest {
            step_key: "build".into(),
            step_type: "command".into(),
            config: json!({ "command": ["make"] }),
            status: "failed".into(),
            result: Some(json!({ "exitCode": 2 })),
            error: Some("exit code 2".into()),
            duration_ms: Some(15),
        };
        let text = serde_json::to_value(&record).expect("serialise");
        assert_eq!(text["stepKey"], "build");
        assert_eq!(text["durationMs"], 15);
        assert_eq!(serde_json::from_value::<RecordRequest>(text).expect("read back"), record);
        // Only the label, type and status are required.
        let minimal: RecordRequest =
            serde_json::from_value(json!({ "stepKey": "v", "stepType": "value", "status": "completed" }))
                .expect("minimal");
        assert_eq!((minimal.config, minimal.result, minimal.duration_ms), (Value::Null, None, None));
    }

    #[test]
    fn an_attempt_request_is_written_with_the_protocols_names() {
        let attempt = AttemptRequest {
            step_type: "command".into(),
            config: json!({ "command": ["false"], "retry": 2 }),
            attempt: 1,
            exit_code: Some(1),
            error: "exit code 1".into(),
            stderr_tail: "boom\n".into(),
            started_at_ms: 10,
            ended_at_ms: 20,
        };
        let text = serde_json::to_value(&attempt).expect("serialise");
        assert_eq!(
            (&text["stderrTail"], &text["startedAtMs"], &text["exitCode"]),
            (&json!("boom\n"), &json!(10), &json!(1))
        );
        assert_eq!(serde_json::from_value::<AttemptRequest>(text).expect("read back"), attempt);
        // A negative attempt number is no attempt.
        let bad = json!({ "stepType": "command", "attempt": -1, "error": "x", "startedAtMs": 0, "endedAtMs": 0 });
        assert!(serde_json::from_value::<AttemptRequest>(bad).is_err());
    }

    #[test]
    fn progress_takes_no_negative_numbers() {
        assert!(serde_json::from_value::<ProgressRequest>(json!({ "current": -1, "total": 3 })).is_err());
        let p: ProgressRequest = serde_json::from_value(json!({ "current": 1, "total": 3 })).expect("progress");
        assert_eq!(p, ProgressRequest { current: 1, total: 3, message: None });
    }
}
