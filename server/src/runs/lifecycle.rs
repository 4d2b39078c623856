//! The rules of a run's life, as pure functions: a state and an event in, the new state and
//! what to do out. No I/O, no locks, no clock (callers pass `now`): every rule is unit-tested
//! here, each transition allowed and refused, and the rest of the engine only applies them.

use std::collections::HashSet;

use serde_json::Value;

use super::model::{JournalEntry, Run, RunStatus, StepRequest, StepStatus, StepType};
use super::MAX_NAME_CHARS;
use crate::process::supervisor::Ending;

/// Why an execution is being stopped by the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// `POST .../cancel`: the run ends `cancelled`.
    Cancel,
    /// `POST .../pause`: the run is `paused` until resumed.
    Pause,
    /// An awaiting run's process is stopped after `parkAfterSec`; the decision restarts it.
    Park,
    /// A guardrail: the run ends `aborted_limit` with the message.
    Limit(String),
    /// The server stops: the run stays `running` and resumes at the next start.
    Shutdown,
}

impl Stop {
    /// Which reason wins when several arrive while the process stops: a cancel or a limit
    /// (the first of them) over a pause, a pause over a shutdown, anything over a park.
    pub fn rank(&self) -> u8 {
        match self {
            Stop::Park => 0,
            Stop::Shutdown => 1,
            Stop::Pause => 2,
            Stop::Cancel | Stop::Limit(_) => 3,
        }
    }

    /// Whether `self` replaces `current` as the reason an execution stops.
    pub fn overrides(&self, current: Option<&Stop>) -> bool {
        current.map_or(true, |current| self.rank() > current.rank())
    }

    /// The status a run with no process takes for this reason (none for a park or a
    /// shutdown, which leave it as it is).
    pub fn ending(self) -> Option<(RunStatus, Option<String>)> {
        match self {
            Stop::Cancel => Some((RunStatus::Cancelled, Some("cancelled".to_string()))),
            Stop::Limit(message) => Some((RunStatus::AbortedLimit, Some(message))),
            Stop::Pause => Some((RunStatus::Paused, None)),
            Stop::Park | Stop::Shutdown => None,
        }
    }
}

/// Changes `run` to `status` (with `error` and the finish time when it is terminal).
pub fn change_status(run: &mut Run, status: RunStatus, error: Option<String>, now: i64) {
    run.status = status;
    if status.is_terminal() {
        run.finished_at = Some(now);
        run.error = error;
    }
    // Only a running or awaiting run may have a process (a pause stops it).
    if status.is_terminal() || status == RunStatus::Paused {
        run.pid = None;
    }
}

/// What a stop reason does to a run that has no process: the status it takes, or `None`
/// when the reason leaves it as it is (a park, a shutdown) or the run has already ended.
pub fn idle_end(status: RunStatus, why: Stop) -> Option<(RunStatus, Option<String>)> {
    if status.is_terminal() {
        return None;
    }
    why.ending()
}

/// What `pause` does to a run in `status`.
#[derive(Debug, PartialEq, Eq)]
pub enum PauseAction {
    /// Already paused: nothing.
    Nothing,
    /// Stop its execution (or mark it paused if it has none).
    Stop,
}

/// Whether a run in `status` may be paused, and how; `None` if it may not.
pub fn pause(status: RunStatus) -> Option<PauseAction> {
    match status {
        RunStatus::Paused => Some(PauseAction::Nothing),
        RunStatus::Running | RunStatus::Awaiting => Some(PauseAction::Stop),
        _ => None,
    }
}

/// Whether a run in `status` goes on (becomes `running` with a new execution) when it is
/// resumed from `from`: a resume goes on from `paused`, a decision from `awaiting`.
pub fn goes_on(status: RunStatus, from: RunStatus) -> bool {
    status == from && matches!(from, RunStatus::Paused | RunStatus::Awaiting)
}

/// Whether a step client call may be served for a run in `status` (one that executes).
pub fn takes_steps(status: RunStatus) -> bool {
    matches!(status, RunStatus::Running | RunStatus::Awaiting)
}

/// Whether a started approval puts the run in `awaiting`: only a running run, and only for
/// the step client of its current execution (`requester` is the asking token's sha256), so a
/// request of an execution that has been replaced cannot make the new one wait.
pub fn awaits(run: &Run, requester: &str) -> bool {
    run.status == RunStatus::Running && run.token_sha256 == requester
}

/// What an ended execution means for its run.
#[derive(Debug, PartialEq)]
pub enum Settlement {
    /// Nothing changes but the pid: a park (still awaiting), a shutdown (resumes at the next
    /// start).
    Keep,
    /// It exited 0: the run is `completed` with its output.
    Complete,
    /// A signal nobody here sent killed it: restart it with replay, with this warning.
    Restart(String),
    /// The run ends (or pauses) with this status and error.
    End(RunStatus, Option<String>),
}

/// What the execution's end needs to know besides how it ended.
#[derive(Debug, Clone, Copy)]
pub struct ExecutionEnd<'a> {
    /// The execution (attempt) that ended.
    pub attempt: i32,
    /// Foreign-signal deaths in a row, this one included.
    pub crashes: i32,
    /// Whether the server is stopping (nothing restarts then).
    pub stopping: bool,
    /// Milliseconds of wall time the run has spent.
    pub spent_ms: i64,
    /// `workflows.maxWallMs`.
    pub max_wall_ms: u64,
    /// The end of its stderr, for the error of a failed exit.
    pub stderr_tail: &'a str,
}

/// Decides what an execution's end means: a stop the server asked for wins over how the
/// process ended; otherwise its exit, signal or time-out decides.
pub fn settle(stop: Option<Stop>, ending: &Ending, end: ExecutionEnd<'_>) -> Settlement {
    match (stop.map(Stop::ending), ending) {
        (Some(Some((status, error))), _) => Settlement::End(status, error),
        (Some(None), _) => Settlement::Keep,
        (None, Ending::TimedOut) => Settlement::End(
            RunStatus::AbortedLimit,
            Some(format!("SCRIPT_RUN_MAX_WALL_MS exceeded ({}/{})", end.spent_ms, end.max_wall_ms)),
        ),
        (None, Ending::Exited(0)) => Settlement::Complete,
        (None, Ending::Exited(code)) => {
            let tail = if end.stderr_tail.is_empty() { String::new() } else { format!(": {}", end.stderr_tail) };
            Settlement::End(RunStatus::Failed, Some(format!("exit code {code}{tail}")))
        }
        (None, Ending::Signaled(signal)) => {
            if end.crashes <= super::MAX_CRASH_RESTARTS && !end.stopping {
                Settlement::Restart(format!(
                    "execution {} was killed by signal {signal}; restarted with replay ({}/{})",
                    end.attempt,
                    end.crashes,
                    super::MAX_CRASH_RESTARTS
                ))
            } else {
                Settlement::End(
                    RunStatus::Failed,
                    Some(format!("killed by signal {signal} {} times in a row", end.crashes)),
                )
            }
        }
        (None, Ending::Canceled) => Settlement::End(RunStatus::Cancelled, Some("cancelled".into())),
        (None, Ending::SpawnFailed(message)) => Settlement::End(RunStatus::Failed, Some(message.clone())),
    }
}

/// The wall time a run may still execute for, or the guardrail message if it is spent.
pub fn wall_time_left(first_start: i64, now: i64, max_wall_ms: u64) -> Result<u64, String> {
    let spent = u64::try_from(now - first_start).unwrap_or(0);
    if spent >= max_wall_ms {
        return Err(format!("SCRIPT_RUN_MAX_WALL_MS exceeded ({spent}/{max_wall_ms})"));
    }
    Ok(max_wall_ms - spent)
}

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

/// A step client may record only an ended step (`None`: a spelling that is no step status).
pub fn check_recorded_status(status: Option<StepStatus>) -> Result<StepStatus, String> {
    match status {
        Some(status @ (StepStatus::Completed | StepStatus::Failed)) => Ok(status),
        Some(StepStatus::Started) | None => Err("status must be completed or failed".into()),
    }
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

    const ALL: [RunStatus; 7] = [
        RunStatus::Running,
        RunStatus::Awaiting,
        RunStatus::Paused,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::AbortedLimit,
    ];

    fn entry(label: &str, step_type: StepType, config: Value, status: StepStatus) -> JournalEntry {
        JournalEntry {
            run_id: "run_1_1".into(),
            label: label.into(),
            seq: 0,
            step_type,
            config,
            status,
            result: None,
            error: None,
            job_id: None,
            started_at: 0,
            completed_at: None,
            duration_ms: None,
        }
    }

    fn end(crashes: i32, stopping: bool) -> ExecutionEnd<'static> {
        ExecutionEnd { attempt: 2, crashes, stopping, spent_ms: 1500, max_wall_ms: 1000, stderr_tail: "boom" }
    }

    #[test]
    fn a_stronger_stop_reason_overrides_a_weaker_one_and_never_the_reverse() {
        let order = [Stop::Park, Stop::Shutdown, Stop::Pause, Stop::Cancel];
        for (i, weaker) in order.iter().enumerate() {
            for stronger in &order[i + 1..] {
                assert!(stronger.overrides(Some(weaker)), "{stronger:?} over {weaker:?}");
                assert!(!weaker.overrides(Some(stronger)), "{weaker:?} not over {stronger:?}");
            }
            assert!(!weaker.overrides(Some(weaker)), "{weaker:?} does not override itself");
            assert!(weaker.overrides(None));
        }
        // The first of a cancel and a limit wins.
        assert!(!Stop::Limit("x".into()).overrides(Some(&Stop::Cancel)));
        assert!(!Stop::Cancel.overrides(Some(&Stop::Limit("x".into()))));
    }

    #[test]
    fn a_run_without_a_process_ends_for_a_cancel_limit_or_pause_unless_it_has_ended() {
        for status in ALL {
            let cancel = idle_end(status, Stop::Cancel);
            let limit = idle_end(status, Stop::Limit("SCRIPT_RUN_MAX_STEPS exceeded".into()));
            let pause = idle_end(status, Stop::Pause);
            if status.is_terminal() {
                assert_eq!((cancel, limit, pause), (None, None, None), "{status:?}");
            } else {
                assert_eq!(cancel, Some((RunStatus::Cancelled, Some("cancelled".into()))));
                assert_eq!(limit, Some((RunStatus::AbortedLimit, Some("SCRIPT_RUN_MAX_STEPS exceeded".into()))));
                assert_eq!(pause, Some((RunStatus::Paused, None)));
            }
            assert_eq!(idle_end(status, Stop::Park), None);
            assert_eq!(idle_end(status, Stop::Shutdown), None);
        }
    }

    #[test]
    fn a_status_change_sets_the_end_only_for_a_terminal_status_and_drops_the_pid_when_stopped() {
        for status in ALL {
            let mut run = Run { pid: Some(42), ..Run::fresh("run_1_1".into(), 10) };
            change_status(&mut run, status, Some("why".into()), 99);
            assert_eq!(run.status, status);
            assert_eq!(run.finished_at.is_some(), status.is_terminal(), "{status:?}");
            assert_eq!(run.error.is_some(), status.is_terminal(), "{status:?}");
            let keeps_pid = matches!(status, RunStatus::Running | RunStatus::Awaiting);
            assert_eq!(run.pid.is_some(), keeps_pid, "{status:?}");
        }
    }

    #[test]
    fn only_a_running_or_awaiting_run_may_be_paused_and_a_paused_one_stays_as_it_is() {
        for status in ALL {
            let expected = match status {
                RunStatus::Paused => Some(PauseAction::Nothing),
                RunStatus::Running | RunStatus::Awaiting => Some(PauseAction::Stop),
                _ => None,
            };
            assert_eq!(pause(status), expected, "{status:?}");
        }
    }

    #[test]
    fn a_run_goes_on_only_from_the_status_it_was_expected_in() {
        for status in ALL {
            assert_eq!(goes_on(status, RunStatus::Paused), status == RunStatus::Paused, "resume {status:?}");
            assert_eq!(goes_on(status, RunStatus::Awaiting), status == RunStatus::Awaiting, "decide {status:?}");
            // Nothing goes on "from" a running or terminal status.
            assert!(!goes_on(status, RunStatus::Running));
            assert!(!goes_on(status, RunStatus::Completed));
        }
    }

    #[test]
    fn only_an_executing_run_takes_steps() {
        for status in ALL {
            assert_eq!(takes_steps(status), matches!(status, RunStatus::Running | RunStatus::Awaiting), "{status:?}");
        }
    }

    #[test]
    fn an_approval_makes_only_the_current_execution_of_a_running_run_wait() {
        let run = Run { token_sha256: "current".into(), ..Run::fresh("run_1_1".into(), 0) };
        assert!(awaits(&run, "current"));
        assert!(!awaits(&run, "replaced"), "an old execution's request");
        for status in ALL.into_iter().filter(|s| *s != RunStatus::Running) {
            assert!(!awaits(&Run { status, ..run.clone() }, "current"), "{status:?}");
        }
    }

    #[test]
    fn a_stop_the_server_asked_for_decides_the_end_whatever_the_process_did() {
        for ending in [Ending::Exited(0), Ending::Exited(3), Ending::Canceled, Ending::TimedOut, Ending::Signaled(15)] {
            assert_eq!(
                settle(Some(Stop::Cancel), &ending, end(0, false)),
                Settlement::End(RunStatus::Cancelled, Some("cancelled".into()))
            );
            assert_eq!(settle(Some(Stop::Pause), &ending, end(0, false)), Settlement::End(RunStatus::Paused, None));
            assert_eq!(
                settle(Some(Stop::Limit("L".into())), &ending, end(0, false)),
                Settlement::End(RunStatus::AbortedLimit, Some("L".into()))
            );
            assert_eq!(settle(Some(Stop::Park), &ending, end(0, false)), Settlement::Keep);
            assert_eq!(settle(Some(Stop::Shutdown), &ending, end(0, false)), Settlement::Keep);
        }
    }

    #[test]
    fn an_execution_that_ended_by_itself_settles_by_how_it_ended() {
        assert_eq!(settle(None, &Ending::Exited(0), end(0, false)), Settlement::Complete);
        assert_eq!(
            settle(None, &Ending::Exited(2), end(0, false)),
            Settlement::End(RunStatus::Failed, Some("exit code 2: boom".into()))
        );
        let quiet = ExecutionEnd { stderr_tail: "", ..end(0, false) };
        assert_eq!(
            settle(None, &Ending::Exited(2), quiet),
            Settlement::End(RunStatus::Failed, Some("exit code 2".into()))
        );
        assert_eq!(
            settle(None, &Ending::TimedOut, end(0, false)),
            Settlement::End(RunStatus::AbortedLimit, Some("SCRIPT_RUN_MAX_WALL_MS exceeded (1500/1000)".into()))
        );
        assert_eq!(
            settle(None, &Ending::Canceled, end(0, false)),
            Settlement::End(RunStatus::Cancelled, Some("cancelled".into()))
        );
        assert_eq!(
            settle(None, &Ending::SpawnFailed("no such file".into()), end(0, false)),
            Settlement::End(RunStatus::Failed, Some("no such file".into()))
        );
    }

    #[test]
    fn a_foreign_signal_restarts_the_run_a_bounded_number_of_times_and_never_while_stopping() {
        for crashes in 1..=crate::runs::MAX_CRASH_RESTARTS {
            let Settlement::Restart(warning) = settle(None, &Ending::Signaled(9), end(crashes, false)) else {
                panic!("crash {crashes} restarts");
            };
            assert!(warning.starts_with("execution 2 was killed by signal 9; restarted with replay"), "{warning}");
        }
        let over = crate::runs::MAX_CRASH_RESTARTS + 1;
        assert_eq!(
            settle(None, &Ending::Signaled(9), end(over, false)),
            Settlement::End(RunStatus::Failed, Some(format!("killed by signal 9 {over} times in a row")))
        );
        assert!(matches!(settle(None, &Ending::Signaled(9), end(1, true)), Settlement::End(RunStatus::Failed, _)));
    }

    #[test]
    fn the_wall_clock_guardrail_counts_from_the_first_start() {
        assert_eq!(wall_time_left(1000, 1400, 1000), Ok(600));
        assert_eq!(wall_time_left(1000, 2000, 1000), Err("SCRIPT_RUN_MAX_WALL_MS exceeded (1000/1000)".into()));
        assert_eq!(wall_time_left(1000, 900, 1000), Ok(1000), "a clock that went back spends nothing");
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
