"""script-runner's step SDK for Python: durable, journaled steps for a workflow run.

A workflow source defines ``def main(args, ctx)``; the loader (``script_runner/loader.py``)
runs it with the run's context, and every ``ctx.step.*`` call is journaled by label so a
restarted run replays completed steps instead of running them again. See ``sdk/README.md``.
"""

from __future__ import annotations

from .client import (
    KILL_GRACE,
    MAX_CAPTURE_BYTES,
    TIMED_OUT_EXIT_CODE,
    Approval,
    CommandResult,
    Context,
    Duration,
    ScriptResult,
    Steps,
    context,
    from_env,
    step,
)
from .errors import (
    LimitExceededError,
    NotInRunError,
    ProtocolError,
    ScriptRunnerError,
    ServerError,
    StepDivergedError,
    StepFailedError,
    UnreachableError,
    UsageError,
)

__all__ = [
    "Approval",
    "CommandResult",
    "Context",
    "Duration",
    "ScriptResult",
    "Steps",
    "context",
    "from_env",
    "step",
    "KILL_GRACE",
    "MAX_CAPTURE_BYTES",
    "TIMED_OUT_EXIT_CODE",
    "ScriptRunnerError",
    "StepFailedError",
    "UsageError",
    "StepDivergedError",
    "LimitExceededError",
    "ServerError",
    "NotInRunError",
    "UnreachableError",
    "ProtocolError",
]

__version__ = "0.1.0"
