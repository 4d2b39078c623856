//! The rules of a run's life, as pure functions: a state and an event in, the new state and
//! what to do out. No I/O, no locks, no clock (callers pass `now`): every rule is unit-tested
//! here, each transition allowed and refused, and the rest of the engine only applies them.

use super::journal::rules::waits_for_job;
use super::model::{JournalEntry, RetryPolicy, Run, RunStatus, StepStatus, StepType};
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

/// What a restart makes of a run the previous server left unfinished, given its journal.
#[derive(Debug, PartialEq)]
pub struct Recovered {
    /// The run changed and must be written before anything else happens to it.
    pub changed: bool,
    /// Jobs its started script steps wait for (they may still run: queued ones run after the
    /// restart), canceled with the run even before a replay reaches their steps. A start-only
    /// step's job is not among them: it outlives its run.
    pub jobs: Vec<String>,
}

/// Recovers a run at start. Crash recovery (which runs first) killed every process of the
/// previous server, so a pid left on the run names a process that is gone; an `awaiting` run
/// whose approval was decided (journaled) just before the crash, without the status change
/// that follows, goes on (it is resumed with the running ones).
pub fn recover(run: &mut Run, journal: &[JournalEntry]) -> Recovered {
    let started =
        |kind: StepType| journal.iter().filter(move |e| e.step_type == kind && e.status == StepStatus::Started);
    let mut changed = run.pid.take().is_some();
    let awaited = journal.iter().any(|e| e.step_type.awaits_outside() && e.status == StepStatus::Started);
    if run.status == RunStatus::Awaiting && !awaited {
        run.status = RunStatus::Running;
        changed = true;
    }
    let jobs =
        started(StepType::Script).filter(|e| waits_for_job(&e.config)).filter_map(|e| e.job_id.clone()).collect();
    Recovered { changed, jobs }
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

/// When a run whose execution settled as `settlement` executes again under its retry option
/// (`failed_before`: its executions that failed and were retried already), or `None` when the
/// settlement stands. Only a failure of the run's own making is retried: a non-zero exit (a
/// step failure the workflow did not handle), a spawn failure, repeated foreign signals.
/// A cancel, a pause, a park, a guardrail (`aborted_limit`) or a shutdown never is: those are
/// not `End(Failed, _)`. `retry.attempts` counts every execution, the first one included.
pub fn retry_at(retry: Option<RetryPolicy>, failed_before: usize, settlement: &Settlement, now: i64) -> Option<i64> {
    let retry = retry?;
    if !matches!(settlement, Settlement::End(RunStatus::Failed, _)) {
        return None;
    }
    // This execution is failure number `failed_before + 1`; another execution is allowed
    // while that is below the total.
    let failures = u64::try_from(failed_before).unwrap_or(u64::MAX).saturating_add(1);
    (failures < u64::from(retry.attempts))
        .then(|| now.saturating_add(i64::try_from(retry.delay_ms).unwrap_or(i64::MAX)))
}

/// How long an execution about to start waits first: what is left of its retry delay (the
/// next execution's start is stored, so a restart waits only the remainder); `None` when it
/// starts at once.
pub fn retry_wait(next_attempt_at: Option<i64>, now: i64) -> Option<u64> {
    let left = next_attempt_at? - now;
    (left > 0).then(|| u64::try_from(left).unwrap_or(0))
}

/// The wall time a run may still execute for, or the guardrail message if it is spent.
pub fn wall_time_left(first_start: i64, now: i64, max_wall_ms: u64) -> Result<u64, String> {
    let spent = u64::try_from(now - first_start).unwrap_or(0);
    if spent >= max_wall_ms {
        return Err(format!("SCRIPT_RUN_MAX_WALL_MS exceeded ({spent}/{max_wall_ms})"));
    }
    Ok(max_wall_ms - spent)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ALL: [RunStatus; 7] = RunStatus::ALL;

    /// An entry whose script step (if it is one) names the job `job_<label>`.
    fn entry(label: &str, step_type: StepType, config: serde_json::Value, status: StepStatus) -> JournalEntry {
        JournalEntry {
            job_id: Some(format!("job_{label}")),
            ..JournalEntry::for_test(label, step_type, config, status)
        }
    }

    #[test]
    fn a_restart_drops_the_gone_pid_and_knows_the_jobs_the_run_waits_for() {
        let journal = [
            entry("waited", StepType::Script, json!({"scriptId": "s"}), StepStatus::Started),
            entry("start-only", StepType::Script, json!({"wait": false}), StepStatus::Started),
            entry("done", StepType::Script, json!({}), StepStatus::Completed),
        ];
        let mut run = Run { pid: Some(9), ..Run::fresh("run_1_1".into(), 0) };
        assert_eq!(recover(&mut run, &journal), Recovered { changed: true, jobs: vec!["job_waited".into()] });
        assert_eq!((run.pid, run.status), (None, RunStatus::Running));
        assert_eq!(recover(&mut run, &[]), Recovered { changed: false, jobs: Vec::new() }, "nothing left to change");
    }

    #[test]
    fn a_restart_lets_an_awaiting_run_go_on_only_if_its_approval_was_decided() {
        let pending = [entry("gate", StepType::Approval, serde_json::Value::Null, StepStatus::Started)];
        let decided = [entry("gate", StepType::Approval, serde_json::Value::Null, StepStatus::Completed)];
        let awaiting = Run { status: RunStatus::Awaiting, ..Run::fresh("run_1_1".into(), 0) };
        let mut run = awaiting.clone();
        assert!(!recover(&mut run, &pending).changed);
        assert_eq!(run.status, RunStatus::Awaiting, "still waiting for its decision");
        let mut run = awaiting.clone();
        assert!(recover(&mut run, &decided).changed);
        assert_eq!(run.status, RunStatus::Running, "its decision landed before the crash");
        for status in [RunStatus::Paused, RunStatus::Running] {
            let mut run = Run { status, ..awaiting.clone() };
            recover(&mut run, &decided);
            assert_eq!(run.status, status, "only an awaiting run goes on");
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
    fn a_failed_execution_is_retried_while_the_total_attempts_allow_it_and_only_a_failure() {
        let retry = Some(RetryPolicy { attempts: 3, delay_ms: 200 });
        let failed = Settlement::End(RunStatus::Failed, Some("exit code 1".into()));
        assert_eq!(retry_at(retry, 0, &failed, 1000), Some(1200), "the first failure of three attempts");
        assert_eq!(retry_at(retry, 1, &failed, 5000), Some(5200), "the second");
        assert_eq!(retry_at(retry, 2, &failed, 5000), None, "the third execution was the last");
        assert_eq!(retry_at(retry, 7, &failed, 5000), None, "past the total (a hand-edited history)");
        assert_eq!(retry_at(None, 0, &failed, 1000), None, "no retry option: the run fails");
        let once = Some(RetryPolicy { attempts: 1, delay_ms: 0 });
        assert_eq!(retry_at(once, 0, &failed, 1000), None, "one attempt in all: never re-run");
        let at_once = Some(RetryPolicy { attempts: 2, delay_ms: 0 });
        assert_eq!(retry_at(at_once, 0, &failed, 1000), Some(1000), "no delay");
        for settlement in [
            Settlement::Keep,
            Settlement::Complete,
            Settlement::Restart("crash".into()),
            Settlement::End(RunStatus::Cancelled, Some("cancelled".into())),
            Settlement::End(RunStatus::AbortedLimit, Some("SCRIPT_RUN_MAX_STEPS exceeded".into())),
            Settlement::End(RunStatus::Paused, None),
        ] {
            assert_eq!(retry_at(retry, 0, &settlement, 1000), None, "{settlement:?} is not retried");
        }
    }

    #[test]
    fn every_failure_of_the_runs_own_making_is_retried_and_no_stop_the_server_asked_for() {
        let retry = Some(RetryPolicy { attempts: 2, delay_ms: 0 });
        for ending in [Ending::Exited(1), Ending::SpawnFailed("no such file".into())] {
            assert!(retry_at(retry, 0, &settle(None, &ending, end(0, false)), 0).is_some(), "{ending:?}");
        }
        let crashed = settle(None, &Ending::Signaled(9), end(crate::runs::MAX_CRASH_RESTARTS + 1, false));
        assert!(retry_at(retry, 0, &crashed, 0).is_some(), "a run killed too often is retried as a failure");
        for stop in [Stop::Cancel, Stop::Pause, Stop::Park, Stop::Shutdown, Stop::Limit("L".into())] {
            let settlement = settle(Some(stop.clone()), &Ending::Exited(1), end(0, false));
            assert_eq!(retry_at(retry, 0, &settlement, 0), None, "{stop:?}");
        }
        assert_eq!(retry_at(retry, 0, &settle(None, &Ending::TimedOut, end(0, false)), 0), None, "wall clock");
        assert_eq!(retry_at(retry, 0, &settle(None, &Ending::Canceled, end(0, false)), 0), None);
    }

    #[test]
    fn an_execution_waits_only_what_is_left_of_its_retry_delay() {
        assert_eq!(retry_wait(None, 1000), None);
        assert_eq!(retry_wait(Some(1500), 1000), Some(500));
        assert_eq!(retry_wait(Some(1000), 1000), None, "due now");
        assert_eq!(retry_wait(Some(900), 1000), None, "overdue (a restart after the delay)");
    }

    #[test]
    fn a_retry_option_is_bounded() {
        assert_eq!(RetryPolicy::new(3, 200), Ok(RetryPolicy { attempts: 3, delay_ms: 200 }));
        assert_eq!(RetryPolicy::new(1, 0), Ok(RetryPolicy { attempts: 1, delay_ms: 0 }));
        assert!(RetryPolicy::new(100, 86_400_000).is_ok());
        assert_eq!(RetryPolicy::new(0, 0), Err("retry.attempts must be 1 to 100".into()));
        assert_eq!(RetryPolicy::new(101, 0), Err("retry.attempts must be 1 to 100".into()));
        assert_eq!(RetryPolicy::new(u64::MAX, 0), Err("retry.attempts must be 1 to 100".into()));
        assert_eq!(RetryPolicy::new(2, 86_400_001), Err("retry.delayMs must be 0 to 86400000".into()));
    }

    #[test]
    fn the_wall_clock_guardrail_counts_from_the_first_start() {
        assert_eq!(wall_time_left(1000, 1400, 1000), Ok(600));
        assert_eq!(wall_time_left(1000, 2000, 1000), Err("SCRIPT_RUN_MAX_WALL_MS exceeded (1000/1000)".into()));
        assert_eq!(wall_time_left(1000, 900, 1000), Ok(1000), "a clock that went back spends nothing");
    }
}
