"""The workflow loader: ``python3 loader.py <source>`` (or ``python3 -m script_runner.loader
<source>``) runs a workflow source's ``main(args, ctx)`` inside a run.

The server appends the run's source file (named ``source``, without an extension) to the
interpreter argv configured for inline runs, so putting this file in that argv runs the source
with the SDK, no install needed. The return value of ``main`` is the run's output: written as
JSON to the file ``$SCRIPT_RUN_OUTPUT`` names (so the workflow's own prints stay out of it),
else printed on stdout. Exit codes are the CLI's: 0 done, 1 a failed step (or any other error:
its traceback), 2 a usage error (or a source without ``main``), 3 a step that could not be run.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as a file: import the package from the folder above this one, and keep this folder
    # (client.py, errors.py) from shadowing the workflow's own imports.
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == _here:
        sys.path.pop(0)
    sys.path.insert(0, os.path.dirname(_here))

import asyncio  # noqa: E402
import importlib.machinery  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import traceback  # noqa: E402
from typing import Any, List, Optional  # noqa: E402

from script_runner.client import context  # noqa: E402
from script_runner.errors import ScriptRunnerError, StepFailedError, UsageError  # noqa: E402

#: Exit codes, as ``script-runner step``'s.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUN = 3


def _say(line: str) -> None:
    """One line on stderr, where the run's error tail is read from."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def describe(error: ScriptRunnerError) -> str:
    """The one stderr line for an SDK error: ``script-runner: step "<label>" failed: <message>``
    or ``script-runner: <CODE>: <message>``."""
    if isinstance(error, StepFailedError):
        return f"script-runner: {error}"
    message = error.message
    if message.startswith(error.code + ": "):
        message = message[len(error.code) + 2 :]
    return f"script-runner: {error.code}: {message}"


def exit_code_of(error: ScriptRunnerError) -> int:
    """The exit code of an SDK error out of ``main``: 1 a failed step, 2 usage, 3 the rest."""
    if isinstance(error, StepFailedError):
        return EXIT_FAILED
    if isinstance(error, UsageError):
        return EXIT_USAGE
    return EXIT_NOT_RUN


def load(path: str) -> Any:
    """Imports the workflow source at ``path`` as the module ``workflow`` (any file name: the
    server's copy has no ``.py``), with its folder first on ``sys.path`` as Python would."""
    loader = importlib.machinery.SourceFileLoader("workflow", path)
    spec = importlib.util.spec_from_loader("workflow", loader)
    if spec is None:  # pragma: no cover - SourceFileLoader always gives a spec
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    sys.modules["workflow"] = module
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    loader.exec_module(module)
    return module


def _call_main(main: Any, args: Any, ctx: Any) -> Any:
    """Calls ``main(args, ctx)`` (fewer parameters get fewer arguments); a coroutine function
    (or a returned awaitable) is run to its end with ``asyncio.run``."""
    try:
        params = [
            p
            for p in inspect.signature(main).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
        takes = 2 if any(p.kind == p.VAR_POSITIONAL for p in params) else len(params)
    except (TypeError, ValueError):
        takes = 2
    call_args = [args, ctx][: min(takes, 2)]
    value = main(*call_args)
    if inspect.iscoroutine(value):
        value = asyncio.run(value)
    elif inspect.isawaitable(value):

        async def wait() -> Any:
            return await value

        value = asyncio.run(wait())
    return value


def run(argv: Optional[List[str]] = None) -> int:
    """Runs the source named in ``argv`` and returns the process's exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        _say("usage: loader.py <workflow source>  (a Python file defining main(args, ctx))")
        return EXIT_USAGE
    path = argv[0]
    if not os.path.isfile(path):
        _say(f"script-runner: USAGE: no workflow source at {path}")
        return EXIT_USAGE
    try:
        module = load(path)
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - the source's own error, shown whole
        traceback.print_exc()
        return EXIT_FAILED
    main = getattr(module, "main", None)
    if not callable(main):
        _say(f"script-runner: USAGE: {path} defines no main(args, ctx)")
        return EXIT_USAGE
    try:
        ctx = context()
        value = _call_main(main, ctx.args, ctx)
    except ScriptRunnerError as e:
        _say(describe(e))
        return exit_code_of(e)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:  # noqa: BLE001 - any other error: its stack, exit 1
        traceback.print_exc()
        return EXIT_FAILED
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        _say(f"script-runner: main's return value is not JSON: {e}")
        return EXIT_FAILED
    target = os.environ.get("SCRIPT_RUN_OUTPUT")
    if target:
        try:
            with open(target, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            _say(f"script-runner: cannot write the output to {target}: {e}")
            return EXIT_FAILED
    else:
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return 0


def _main() -> None:
    """The command: exits with :func:`run`'s code."""
    sys.exit(run())


if __name__ == "__main__":
    _main()
