//! Run and step vocabulary: statuses and step types, with their stored spellings.

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// A process executes it, or will as soon as the server resumes it.
    Running,
    /// Waiting for an approval decision (the process may have been parked).
    Awaiting,
    /// Stopped on request; `resume` re-executes it from the top with replay.
    Paused,
    /// The process exited 0.
    Completed,
    /// The process failed (non-zero exit, spawn failure, failed step it did not handle).
    Failed,
    /// Cancelled on request.
    Cancelled,
    /// A guardrail stopped it.
    AbortedLimit,
}

impl RunStatus {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Awaiting => "awaiting",
            RunStatus::Paused => "paused",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::AbortedLimit => "aborted_limit",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<RunStatus> {
        [
            RunStatus::Running,
            RunStatus::Awaiting,
            RunStatus::Paused,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
            RunStatus::AbortedLimit,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }

    /// Whether the run is over for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled | RunStatus::AbortedLimit)
    }
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepType {
    /// A local command the step client runs.
    Command,
    /// A configured script run as a server-side job.
    Script,
    /// A value recorded once.
    Value,
    /// A durable sleep.
    Sleep,
    /// A human decision.
    Approval,
    /// A flow node (durable flows).
    Node,
}

impl StepType {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StepType::Command => "command",
            StepType::Script => "script",
            StepType::Value => "value",
            StepType::Sleep => "sleep",
            StepType::Approval => "approval",
            StepType::Node => "node",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<StepType> {
        [StepType::Command, StepType::Script, StepType::Value, StepType::Sleep, StepType::Approval, StepType::Node]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// Journal entry statuses.
pub mod step_status {
    /// Begun and not ended (a script step's job, a sleep, an approval).
    pub const STARTED: &str = "started";
    /// Ended with a result.
    pub const COMPLETED: &str = "completed";
    /// Ended with an error; replays fail the same way.
    pub const FAILED: &str = "failed";
}
