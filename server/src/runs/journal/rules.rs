//! The journal's rules, as pure functions: what a label may be, when a replayed label has
//! diverged, what a client may record, which script steps wait for their job, what a fork
//! copies, and the step guardrails of an execution ([`Budget`]). No I/O, no locks: the
//! journal room applies them under the run's lock, and they are unit-tested here.

use std::collections::HashSet;

use serde_json::Value;

use crate::runs::error::RunError;
use crate::runs::model::{JournalEntry, StepRequest, StepStatus, StepType};
use crate::runs::MAX_NAME_CHARS;

/// A step label is 1 to [`MAX_NAME_CHARS`] characters without control characters.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.chars().count() > MAX_NAME_CHARS || label.chars().any(char::is_control) {
        return Err(format!("a step label must be 1 to {MAX_NAME_CHARS} characters without control characters"));
    }
    Ok(())
}

/// A journaled label requested as a different step diverges (and the journal is not
/// changed). A value step's config is what computed it, not what it is: it never diverges
/// on that.
pub fn check_divergence(entry: &JournalEntry, request: &StepRequest) -> Result<(), String> {
    let same_config = request.step_type == StepType::Value || entry.config == request.config;
    if entry.step_type != request.step_type || !same_config {
        return Err(format!(
            "STEP_DIVERGED: step {:?} was journaled as {} {} but is now requested as {} {}",
            entry.label,
            entry.step_type.as_str(),
            entry.config,
            request.step_type.as_str(),
            request.config
        ));
    }
    Ok(())
}

/// An input step's value must match the step's JSON schema (`config.schema`; none or `null`
/// takes any value). The refusal names the first mismatch's place in the value as a JSON
/// pointer (`/` for the value itself) and what the schema wanted there.
pub fn check_input(label: &str, config: &Value, value: &Value) -> Result<(), RunError> {
    let Some(schema) = config.get("schema").filter(|s| !s.is_null()) else {
        return Ok(());
    };
    let invalid = |path: String, reason: String| RunError::InputInvalid { label: label.to_string(), path, reason };
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| invalid("/".into(), format!("the step's schema is not a JSON schema: {e}")))?;
    match validator.validate(value) {
        Ok(()) => Ok(()),
        Err(e) => {
            let path = e.instance_path.as_str();
            Err(invalid(if path.is_empty() { "/".into() } else { path.to_string() }, e.to_string()))
        }
    }
}

/// An event name is what a label is (it is a path segment of `POST .../events/{name}`).
pub fn check_event_name(name: &str) -> Result<(), String> {
    check_label(name)
        .map_err(|_| format!("an event name must be 1 to {MAX_NAME_CHARS} characters without control characters"))
}

/// A step client may record only an ended step (`None`: a spelling that is no step status).
pub fn check_recorded_status(status: Option<StepStatus>) -> Result<StepStatus, String> {
    match status {
        Some(status @ (StepStatus::Completed | StepStatus::Failed)) => Ok(status),
        Some(StepStatus::Started) | None => Err("status must be completed or failed".into()),
    }
}

/// Most retries of one step (`--retry N`).
pub const MAX_RETRIES: u64 = 100;
/// Longest backoff, backoff cap or step time-out, in ms (a day).
pub const MAX_STEP_DURATION_MS: u64 = 24 * 3600 * 1000;
/// The backoff without `backoffMs`: 1 s before the first retry.
pub const DEFAULT_BACKOFF_MS: u64 = 1000;
/// The backoff cap without `backoffMaxMs`: 1 min.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 60_000;

/// How a command or script step is tried again (`config.retry`, `backoffMs`, `backoffMaxMs`):
/// after the n-th failed try, the next waits `backoff * 2^(n-1)`, at most `backoff_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries after the first (1 to [`MAX_RETRIES`]).
    pub retries: u32,
    /// The wait before the first retry, ms.
    pub backoff_ms: u64,
    /// The longest wait, ms.
    pub backoff_max_ms: u64,
}

impl RetryPolicy {
    /// The policy of a step's config: `None` without `retry`; a refusal for a value out of
    /// bounds (`retry` 1 to 100, durations 1 ms to a day, the cap not below the backoff) or a
    /// backoff without `retry`.
    pub fn of(config: &Value) -> Result<Option<RetryPolicy>, String> {
        let ms = |key: &str, default: u64| -> Result<u64, String> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_u64().filter(|ms| (1..=MAX_STEP_DURATION_MS).contains(ms)).ok_or_else(|| {
                    format!("{key} must be a whole number of milliseconds from 1 to {MAX_STEP_DURATION_MS}, got {v}")
                }),
            }
        };
        let retries = match config.get("retry") {
            None | Some(Value::Null) => {
                if config.get("backoffMs").is_some() || config.get("backoffMaxMs").is_some() {
                    return Err("backoffMs and backoffMaxMs go with retry".into());
                }
                return Ok(None);
            }
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=MAX_RETRIES).contains(n))
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("retry must be a whole number from 1 to {MAX_RETRIES}, got {v}"))?,
        };
        let backoff_ms = ms("backoffMs", DEFAULT_BACKOFF_MS)?;
        let backoff_max_ms = ms("backoffMaxMs", DEFAULT_BACKOFF_MAX_MS.max(backoff_ms))?;
        if backoff_max_ms < backoff_ms {
            return Err(format!("backoffMaxMs ({backoff_max_ms}) is below backoffMs ({backoff_ms})"));
        }
        Ok(Some(RetryPolicy { retries, backoff_ms, backoff_max_ms }))
    }

    /// Tries in all (the first and its retries).
    pub fn attempts(&self) -> u32 {
        self.retries + 1
    }

    /// How long the try after failed try `n` (from 1) waits, ms.
    pub fn delay_ms(&self, n: u32) -> u64 {
        let doublings = n.saturating_sub(1).min(40);
        self.backoff_ms.saturating_mul(1u64 << doublings).min(self.backoff_max_ms)
    }
}

/// A command or script step's time-out (`config.timeoutMs`, 1 ms to a day), ms; `None`
/// without one.
pub fn step_timeout_ms(config: &Value) -> Result<Option<u64>, String> {
    match config.get("timeoutMs") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().filter(|ms| (1..=MAX_STEP_DURATION_MS).contains(ms)).map(Some).ok_or_else(|| {
            format!("timeoutMs must be a whole number of milliseconds from 1 to {MAX_STEP_DURATION_MS}, got {v}")
        }),
    }
}

/// Checks the retry and time-out settings of a command or script step's config.
pub fn check_step_options(config: &Value) -> Result<(Option<RetryPolicy>, Option<u64>), String> {
    Ok((RetryPolicy::of(config)?, step_timeout_ms(config)?))
}

/// Whether a script step's config waits for its job (all but a start-only `wait: false`).
pub fn waits_for_job(config: &Value) -> bool {
    config.get("wait") != Some(&Value::Bool(false))
}

/// Where a fork of `original` (run `original_id`) cuts its journal: before `from_step` (all
/// of it without one); the message of a refusal if no entry has that label.
pub fn fork_cut(journal: &[JournalEntry], from_step: Option<&str>, original_id: &str) -> Result<usize, String> {
    match from_step {
        Some(label) => journal
            .iter()
            .position(|s| s.label == label)
            .ok_or_else(|| format!("run {original_id} has no journal entry labelled {label:?}")),
        None => Ok(journal.len()),
    }
}

/// The journal a fork starts with: copies of the original's completed entries before `cut`
/// (see [`fork_cut`]), under the new run's id.
pub fn fork_journal(journal: &[JournalEntry], cut: usize, run_id: &str) -> Vec<JournalEntry> {
    journal[..cut.min(journal.len())]
        .iter()
        .filter(|s| s.status == StepStatus::Completed)
        .map(|s| JournalEntry { run_id: run_id.to_string(), ..s.clone() })
        .collect()
}

/// The step guardrails of one execution: what the journal holds and what this execution has
/// begun but not journaled yet (those count too, so parallel steps cannot overshoot).
#[derive(Debug, Default)]
pub struct Budget {
    /// Entries in the journal.
    pub total: u64,
    /// Script-step entries in the journal.
    pub scripts: u64,
    /// Next journal sequence number.
    pub next_seq: i64,
    /// New labels begun by this execution and not journaled yet.
    pub reserved: HashSet<String>,
    /// The script steps among `reserved` (they count for `maxScriptSteps`).
    pub reserved_scripts: HashSet<String>,
    /// Labels requested by this execution (a second request gets a warning).
    pub requested: HashSet<String>,
}

impl Budget {
    /// Counts a new label against `max_steps` and `max_script_steps` before it executes; the
    /// guardrail message if it would exceed one (the label is then not reserved). A label
    /// already reserved passes again.
    pub fn reserve(
        &mut self,
        label: &str,
        step_type: StepType,
        max_steps: u64,
        max_script_steps: u64,
    ) -> Result<(), String> {
        if self.reserved.contains(label) {
            return Ok(());
        }
        let steps = self.total + self.reserved.len() as u64 + 1;
        if steps > max_steps {
            return Err(format!("SCRIPT_RUN_MAX_STEPS exceeded ({steps}/{max_steps})"));
        }
        let is_script = step_type == StepType::Script;
        let scripts = self.scripts + self.reserved_scripts.len() as u64 + 1;
        if is_script && scripts > max_script_steps {
            return Err(format!("SCRIPT_RUN_MAX_SCRIPT_STEPS exceeded ({scripts}/{max_script_steps})"));
        }
        self.reserved.insert(label.to_string());
        if is_script {
            self.reserved_scripts.insert(label.to_string());
        }
        Ok(())
    }

    /// Ends a label's reservation (refused); whether it had one.
    pub fn release(&mut self, label: &str) -> bool {
        self.reserved_scripts.remove(label);
        self.reserved.remove(label)
    }

    /// A label was journaled: its reservation becomes a journal entry.
    pub fn journaled(&mut self, label: &str, step_type: StepType) {
        if self.release(label) {
            self.total += 1;
            if step_type == StepType::Script {
                self.scripts += 1;
            }
        }
    }

    /// Takes the next journal sequence number.
    pub fn next_seq(&mut self) -> i64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_retry_policy_doubles_its_backoff_up_to_the_cap_and_refuses_bad_values() {
        assert_eq!(RetryPolicy::of(&json!({ "command": ["x"] })), Ok(None));
        let p = RetryPolicy::of(&json!({ "retry": 5, "backoffMs": 1000, "backoffMaxMs": 3000 }))
            .expect("valid")
            .expect("a policy");
        assert_eq!(
            (p.attempts(), p.delay_ms(1), p.delay_ms(2), p.delay_ms(3), p.delay_ms(99)),
            (6, 1000, 2000, 3000, 3000)
        );
        let d = RetryPolicy::of(&json!({ "retry": 1 })).expect("valid").expect("a policy");
        assert_eq!((d.backoff_ms, d.backoff_max_ms), (DEFAULT_BACKOFF_MS, DEFAULT_BACKOFF_MAX_MS));
        // A backoff above the default cap raises the cap to itself.
        let long = RetryPolicy::of(&json!({ "retry": 1, "backoffMs": 120_000 })).expect("valid").expect("a policy");
        assert_eq!(long.backoff_max_ms, 120_000);
        for bad in [
            json!({ "retry": 0 }),
            json!({ "retry": 101 }),
            json!({ "retry": "3" }),
            json!({ "retry": 2, "backoffMs": 0 }),
            json!({ "retry": 2, "backoffMs": 2000, "backoffMaxMs": 1000 }),
            json!({ "backoffMs": 10 }),
        ] {
            assert!(RetryPolicy::of(&bad).is_err(), "{bad}");
        }
        assert_eq!(step_timeout_ms(&json!({ "timeoutMs": 2000 })), Ok(Some(2000)));
        assert!(step_timeout_ms(&json!({ "timeoutMs": 0 })).is_err());
        assert!(step_timeout_ms(&json!({ "timeoutMs": MAX_STEP_DURATION_MS + 1 })).is_err());
    }

    fn entry(label: &str, step_type: StepType, config: Value, status: StepStatus) -> JournalEntry {
        JournalEntry::for_test(label, step_type, config, status)
    }

    #[test]
    fn an_input_is_checked_against_its_schema_and_a_mismatch_names_its_place() {
        let config = json!({ "prompt": "who?", "schema": {
            "type": "object", "required": ["age"],
            "properties": { "age": { "type": "integer", "minimum": 0 } } } });
        assert!(check_input("who", &config, &json!({ "age": 3 })).is_ok());
        match check_input("who", &config, &json!({ "age": "three" })) {
            Err(RunError::InputInvalid { path, .. }) => assert_eq!(path, "/age"),
            other => panic!("expected InputInvalid, got {other:?}"),
        }
        match check_input("who", &config, &json!(7)) {
            Err(RunError::InputInvalid { path, .. }) => assert_eq!(path, "/"),
            other => panic!("expected InputInvalid, got {other:?}"),
        }
        // No schema (or null) takes anything.
        assert!(check_input("who", &json!({ "prompt": "?" }), &json!([1])).is_ok());
        assert!(check_input("who", &json!({ "prompt": "?", "schema": null }), &json!(null)).is_ok());
    }

    #[test]
    fn labels_are_bounded_and_free_of_control_characters() {
        assert!(check_label("fetch").is_ok());
        assert!(check_label(&"x".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(check_label(&"é".repeat(MAX_NAME_CHARS)).is_ok(), "counted in characters, not bytes");
        for bad in [String::new(), "x".repeat(MAX_NAME_CHARS + 1), "a\nb".into(), "tab\t".into()] {
            assert!(check_label(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_replayed_label_must_be_the_same_step_but_a_value_may_change() {
        let journaled = entry("a", StepType::Command, json!({"argv": ["true"]}), StepStatus::Completed);
        let same = StepRequest { label: "a".into(), step_type: StepType::Command, config: json!({"argv": ["true"]}) };
        assert!(check_divergence(&journaled, &same).is_ok());
        let other_config = StepRequest { config: json!({"argv": ["false"]}), ..same.clone() };
        let message = check_divergence(&journaled, &other_config).expect_err("another config diverges");
        assert!(message.starts_with("STEP_DIVERGED: step \"a\" was journaled as command"), "{message}");
        let other_type = StepRequest { step_type: StepType::Script, ..same.clone() };
        assert!(check_divergence(&journaled, &other_type).is_err());
        let value = entry("v", StepType::Value, json!({"from": 1}), StepStatus::Completed);
        let recomputed = StepRequest { label: "v".into(), step_type: StepType::Value, config: json!({"from": 2}) };
        assert!(check_divergence(&value, &recomputed).is_ok());
        assert!(check_divergence(&value, &StepRequest { step_type: StepType::Command, ..recomputed }).is_err());
    }

    #[test]
    fn a_client_records_only_ended_steps() {
        assert_eq!(check_recorded_status(Some(StepStatus::Completed)), Ok(StepStatus::Completed));
        assert_eq!(check_recorded_status(Some(StepStatus::Failed)), Ok(StepStatus::Failed));
        assert_eq!(check_recorded_status(Some(StepStatus::Started)), Err("status must be completed or failed".into()));
        assert_eq!(check_recorded_status(None), Err("status must be completed or failed".into()));
    }

    #[test]
    fn only_a_start_only_script_step_does_not_wait_for_its_job() {
        assert!(waits_for_job(&json!({"scriptId": "s"})));
        assert!(waits_for_job(&json!({"wait": true})));
        assert!(waits_for_job(&json!({"wait": "false"})));
        assert!(!waits_for_job(&json!({"wait": false})));
    }

    #[test]
    fn a_fork_copies_the_completed_entries_before_its_step() {
        let journal = vec![
            entry("a", StepType::Value, json!(1), StepStatus::Completed),
            entry("b", StepType::Command, json!(2), StepStatus::Failed),
            entry("c", StepType::Value, json!(3), StepStatus::Completed),
            entry("d", StepType::Sleep, json!(4), StepStatus::Started),
        ];
        let labels = |copied: Vec<JournalEntry>| {
            assert!(copied.iter().all(|e| e.run_id == "run_2_2"));
            copied.into_iter().map(|e| e.label).collect::<Vec<_>>()
        };
        let fork = |from: Option<&str>| {
            fork_journal(&journal, fork_cut(&journal, from, "run_1_1").expect("a journaled label"), "run_2_2")
        };
        assert_eq!(labels(fork(None)), ["a", "c"]);
        assert_eq!(labels(fork(Some("c"))), ["a"]);
        assert_eq!(labels(fork(Some("a"))), Vec::<String>::new());
        assert_eq!(
            fork_cut(&journal, Some("zz"), "run_1_1"),
            Err("run run_1_1 has no journal entry labelled \"zz\"".into())
        );
        assert_eq!(fork_cut(&[], Some("a"), "run_9_9"), Err("run run_9_9 has no journal entry labelled \"a\"".into()));
    }

    #[test]
    fn the_step_budget_counts_reserved_labels_and_refuses_past_each_limit() {
        let mut budget = Budget { total: 1, ..Budget::default() };
        assert!(budget.reserve("a", StepType::Command, 3, 1).is_ok());
        assert!(budget.reserve("a", StepType::Command, 3, 1).is_ok(), "a reserved label passes again");
        assert!(budget.reserve("s", StepType::Script, 3, 1).is_ok());
        assert_eq!(budget.reserve("b", StepType::Command, 3, 1), Err("SCRIPT_RUN_MAX_STEPS exceeded (4/3)".into()));
        assert!(!budget.reserved.contains("b"), "a refused label is not reserved");
        budget.release("a");
        assert_eq!(
            budget.reserve("t", StepType::Script, 3, 1),
            Err("SCRIPT_RUN_MAX_SCRIPT_STEPS exceeded (2/1)".into())
        );
        budget.journaled("s", StepType::Script);
        assert_eq!((budget.total, budget.scripts), (2, 1));
        budget.journaled("never-reserved", StepType::Script);
        assert_eq!((budget.total, budget.scripts), (2, 1), "only a reservation becomes an entry");
        assert_eq!((budget.next_seq(), budget.next_seq()), (0, 1));
    }
}
