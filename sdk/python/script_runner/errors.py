"""The errors of the step SDK.

Every error the SDK raises is a :class:`ScriptRunnerError` with a ``code``, so a workflow (and
the loader, which turns them into exit codes) can tell a failed step (exit 1) from a refused
call (exit 2) from a step that could not be run at all (exit 3), as ``script-runner step`` does.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = [
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


class ScriptRunnerError(Exception):
    """The base of every SDK error, so one ``except ScriptRunnerError`` catches them all.

    ``code`` names the kind (``STEP_FAILED``, ``USAGE``, ...) and ``message`` is the text
    without it, as the loader prints them.
    """

    code: str = "SCRIPT_RUNNER"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: The human-readable reason, without the code.
        self.message = message


class StepFailedError(ScriptRunnerError):
    """A journaled step failed: the same error comes back on every replay of the run.

    Raised for a ``run`` whose function raised (``error_name`` is the original exception's
    class name), a failed script job (``result`` holds its ``jobId``, ``exitCode``, ``stdout``,
    ``stderr``), a denied input and an event past its time-out.
    """

    code = "STEP_FAILED"

    def __init__(self, label: str, message: str, result: Any = None, error_name: Optional[str] = None) -> None:
        super().__init__(message)
        #: The step's label.
        self.label = label
        #: The journaled result (``{name, message}`` for a ``run`` step).
        self.result = result
        #: The class name of the error ``fn`` raised (``run`` steps), else ``None``.
        self.error_name = error_name

    @property
    def errorName(self) -> Optional[str]:  # noqa: N802 - the contract's cross-language name
        """The contract's (TypeScript) spelling of :attr:`error_name`."""
        return self.error_name

    def __str__(self) -> str:
        return f"step {_quote(self.label)} failed: {self.message}"


class UsageError(ScriptRunnerError):
    """A call the SDK refuses before asking the server (an empty label, a retry out of 1-100,
    a duration out of 1 ms-24 h, negative progress): a bug in the workflow, not in the run."""

    code = "USAGE"


class StepDivergedError(ScriptRunnerError):
    """A journaled label was requested as another step (another type or config): the source
    changed under a run, and replaying would mix two programs. The journal is unchanged."""

    code = "STEP_DIVERGED"

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        #: The HTTP status the server answered with.
        self.status = status


class LimitExceededError(ScriptRunnerError):
    """A guardrail (``maxSteps``, ``maxResultBytes``, ...) stopped the run: the step over the
    limit never ran, and the server is ending the run as ``aborted_limit``."""

    code = "LIMIT_EXCEEDED"

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        #: The HTTP status the server answered with.
        self.status = status


class ServerError(ScriptRunnerError):
    """Any other error answer of the server; ``code`` is the server's own (``INVALID_REQUEST``,
    ``RUN_NOT_ACTIVE``, ``FORBIDDEN``, ...) so a caller can branch on it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        #: The HTTP status.
        self.status = status
        #: The server's error code (``HTTP_ERROR`` when the answer had none).
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message} (HTTP {self.status})"


class NotInRunError(ScriptRunnerError):
    """The process is not a workflow run: ``SCRIPT_RUNNER_URL``, ``SCRIPT_RUN_ID`` or
    ``SCRIPT_RUN_TOKEN`` is missing from its environment."""

    code = "NOT_IN_RUN"

    def __init__(self, variable: str) -> None:
        super().__init__(f"not inside a script-runner workflow run: {variable} is not set")
        #: The missing variable.
        self.variable = variable


class UnreachableError(ScriptRunnerError):
    """The server did not answer (refused, reset, or no answer in time): the step's outcome
    is unknown, so the run must not go on as if it had run."""

    code = "UNREACHABLE"


class ProtocolError(ScriptRunnerError):
    """The server answered something the step protocol does not allow (not JSON, an unknown
    action, a missing field): a version mismatch or a bug, never guessed around."""

    code = "PROTOCOL"


def _quote(text: str) -> str:
    """A label quoted as the CLI and the Rust client quote it in messages."""
    import json

    return json.dumps(text, ensure_ascii=False)
