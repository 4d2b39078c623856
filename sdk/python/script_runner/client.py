"""The step SDK: durable steps for a workflow process, in Python.

A workflow run's process finds its run in the environment the server gives it
(``SCRIPT_RUNNER_URL``, ``SCRIPT_RUN_ID``, ``SCRIPT_RUN_TOKEN``, ``SCRIPT_RUN_ARGS``,
``SCRIPT_RUN_ATTEMPT``). Every step is keyed by its label: the first execution runs it and
journals its result in the server's database; every later execution of the run (after a crash,
a pause, an approval that parked it) gets the journaled result back without running it again.
This speaks the same internal routes as ``script-runner step`` and the Rust client
(``client/src/workflow.rs``), with the same semantics, so a workflow may move between them.

Only the standard library is used, so a workflow needs nothing installed beyond this package.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import weakref
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union, cast

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
    "Context",
    "Steps",
    "CommandResult",
    "ScriptResult",
    "Approval",
    "Duration",
    "from_env",
    "context",
    "step",
    "MAX_CAPTURE_BYTES",
    "KILL_GRACE",
    "TIMED_OUT_EXIT_CODE",
]

T = TypeVar("T")

#: A duration: a number of seconds, a string such as ``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``
#: (as the CLI takes), or a :class:`datetime.timedelta`.
Duration = Union[int, float, str, timedelta]

#: Most bytes of a command step's stdout or stderr kept (the rest is read and dropped), as the
#: Rust client: the server's ``maxResultBytes`` guardrail applies to what is kept.
MAX_CAPTURE_BYTES = 16 * 1024 * 1024

#: Seconds between SIGTERM and SIGKILL to a stopped command step's process group.
KILL_GRACE = 2.0

#: The exit code of a command step try stopped by its time-out (as coreutils' ``timeout``).
TIMED_OUT_EXIT_CODE = 124

#: Most retries of a command or script step (the server's and the CLI's bound too).
MAX_RETRIES = 100

#: Longest label or event name, in characters (the server's bound).
MAX_LABEL_CHARS = 200

#: Shortest and longest backoff, backoff cap or time-out, in ms (the server's bound too).
MIN_OPTION_MS = 1
MAX_OPTION_MS = 24 * 3600 * 1000

#: The other step routes answer at once (a wait within its 25 s long poll): seconds.
STEP_ROUTE_LIMIT = 60.0

#: Seconds connecting to the server may take.
CONNECT_TIMEOUT = 5.0

#: How long a call waits out ``503 STORE_UNAVAILABLE`` (the server's database away), in
#: seconds: as long as the server keeps writes it could not make (as the Rust client).
STORE_RETRY_BOUND = 600.0
#: The first pause before retrying after a 503, doubled each time up to
#: :data:`STORE_RETRY_MAX_PAUSE`.
STORE_RETRY_FIRST_PAUSE = 0.25
#: The longest pause between retries after a 503.
STORE_RETRY_MAX_PAUSE = 5.0

#: Largest answer body read from the server (a protocol error beyond): bounds memory even if
#: something else answers on the port.
MAX_ANSWER_BYTES = 256 * 1024 * 1024

#: The environment variable that gives a command step's process its idempotency key.
STEP_KEY_ENV = "SCRIPT_STEP_KEY"

#: How often a running command step looks for a stop signal and its deadline, in seconds.
WATCH_EVERY = 0.02


# ---------------------------------------------------------------------------------------------
# Results


class CommandResult(Dict[str, Any]):
    """What a command step did (now, or when it was journaled).

    A ``dict`` with the contract's keys ``exitCode``, ``stdout``, ``stderr``, ``replayed`` (so
    it can be returned from ``main`` as JSON), plus attribute access in Python's spelling.
    A non-zero exit is returned, not raised: the caller decides what a failure means.
    """

    @property
    def exit_code(self) -> int:
        """Exit code (124 timed out, 128 + signal if killed by one, 127 if it could not start)."""
        return cast(int, self["exitCode"])

    @property
    def stdout(self) -> str:
        """Its stdout, as text (at most 16 MiB kept)."""
        return cast(str, self["stdout"])

    @property
    def stderr(self) -> str:
        """Its stderr, as text (at most 16 MiB kept)."""
        return cast(str, self["stderr"])

    @property
    def replayed(self) -> bool:
        """True when this came from the journal (the command did not run now)."""
        return cast(bool, self["replayed"])


class ScriptResult(Dict[str, Any]):
    """A script step's job, as journaled: a ``dict`` with ``jobId``, ``status``, ``exitCode``,
    ``stdout``, ``stderr``, plus attribute access in Python's spelling."""

    @property
    def job_id(self) -> str:
        """The job id (the same on every replay)."""
        return cast(str, self["jobId"])

    @property
    def status(self) -> str:
        """The job's final status."""
        return cast(str, self["status"])

    @property
    def exit_code(self) -> Optional[int]:
        """Its exit code, if it exited."""
        return cast(Optional[int], self["exitCode"])

    @property
    def stdout(self) -> str:
        """Its stdout."""
        return cast(str, self["stdout"])

    @property
    def stderr(self) -> str:
        """Its stderr."""
        return cast(str, self["stderr"])

    @staticmethod
    def of(result: Any) -> "ScriptResult":
        """Reads a journaled script result; a missing or mistyped field is empty (``None`` for
        the exit code), as the Rust client reads it."""
        r = result if isinstance(result, dict) else {}

        def text(key: str) -> str:
            v = r.get(key)
            return v if isinstance(v, str) else ""

        code = r.get("exitCode")
        return ScriptResult(
            jobId=text("jobId"),
            status=text("status"),
            exitCode=code if isinstance(code, int) and not isinstance(code, bool) else None,
            stdout=text("stdout"),
            stderr=text("stderr"),
        )


class Approval(Dict[str, Any]):
    """An approval decision: a ``dict`` with ``approved``, ``by``, ``comment``, plus attribute
    access."""

    @property
    def approved(self) -> bool:
        """Approved (True) or denied."""
        return cast(bool, self["approved"])

    @property
    def by(self) -> Optional[str]:
        """Who decided."""
        return cast(Optional[str], self["by"])

    @property
    def comment(self) -> Optional[str]:
        """Their comment."""
        return cast(Optional[str], self["comment"])


# ---------------------------------------------------------------------------------------------
# Checks made before asking the server (UsageError)


def _check_label(label: Any, what: str = "a step label") -> str:
    """A label is the step's durability key: refused here, before any request, when the
    server would refuse it anyway."""
    if not isinstance(label, str) or not label:
        raise UsageError(f"{what} must be a non-empty string, got {label!r}")
    if len(label) > MAX_LABEL_CHARS or any(_is_control(c) for c in label):
        raise UsageError(f"{what} must be 1 to {MAX_LABEL_CHARS} characters without control characters: {label!r}")
    return label


def _is_control(c: str) -> bool:
    """Rust's ``char::is_control`` (Unicode category Cc)."""
    o = ord(c)
    return o < 0x20 or 0x7F <= o < 0xA0


_UNIT_MS = {
    "ms": 1.0,
    "msec": 1.0,
    "s": 1000.0,
    "sec": 1000.0,
    "secs": 1000.0,
    "m": 60_000.0,
    "min": 60_000.0,
    "mins": 60_000.0,
    "h": 3_600_000.0,
    "hr": 3_600_000.0,
    "hrs": 3_600_000.0,
    "d": 86_400_000.0,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*")


def duration_ms(value: Any, what: str = "a duration") -> int:
    """A duration in whole milliseconds: a number is seconds, a string is ``"500ms"``,
    ``"10s"``, ``"5m"``, ``"1h"`` (parts may add up: ``"1m30s"``) or a plain number of seconds,
    as the CLI reads ``--sleep`` and ``--timeout``. Anything else is a :class:`UsageError`."""
    if isinstance(value, bool):
        raise UsageError(f"{what}: expected seconds or a string like '500ms', got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            total, pos = 0.0, 0
            while pos < len(text):
                m = _PART.match(text, pos)
                if not m or m.group(2) not in _UNIT_MS:
                    raise UsageError(f"{what}: {value!r} is no duration (e.g. 500ms, 10s, 5m, 1h)") from None
                total += float(m.group(1)) * _UNIT_MS[m.group(2)]
                pos = m.end()
            if not text:
                raise UsageError(f"{what}: {value!r} is no duration (e.g. 500ms, 10s, 5m, 1h)") from None
            return int(total)
    else:
        raise UsageError(f"{what}: expected seconds or a string like '500ms', got {value!r}")
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        raise UsageError(f"{what}: {value!r} is no duration (it must be finite and not negative)")
    # Rounded to a microsecond first, so 0.3 s is 300 ms, not 299.
    return int(round(seconds * 1000.0, 3))


def _bounded_ms(value: Any, what: str) -> int:
    """A step option's duration, which the CLI and the server take from 1 ms to 24 h."""
    ms = duration_ms(value, what)
    if ms < MIN_OPTION_MS or ms > MAX_OPTION_MS:
        raise UsageError(f"{what} {value!r}: must be from 1ms to 24h")
    return ms


def _options(
    retry: Optional[int], backoff: Optional[Duration], backoff_max: Optional[Duration], timeout: Optional[Duration]
) -> Dict[str, Any]:
    """A command or script step's options as journaled in its config, exactly as the CLI's
    ``--retry``, ``--backoff FIRST[:MAX]`` and ``--timeout`` write them (nothing for the
    defaults), so a workflow may move between the CLI and the SDK without diverging."""
    config: Dict[str, Any] = {}
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or not 1 <= retry <= MAX_RETRIES:
            raise UsageError(f"retry {retry!r}: expected a whole number from 1 to {MAX_RETRIES}")
    if backoff is not None and retry is None:
        raise UsageError("backoff goes with retry")
    if backoff_max is not None and backoff is None:
        raise UsageError("backoff_max goes with backoff")
    if retry is not None:
        config["retry"] = retry
        if backoff is not None:
            config["backoffMs"] = _bounded_ms(backoff, "backoff")
            if backoff_max is not None:
                cap = _bounded_ms(backoff_max, "backoff_max")
                if cap < config["backoffMs"]:
                    raise UsageError(f"backoff_max {backoff_max!r}: the cap is below the first wait {backoff!r}")
                config["backoffMaxMs"] = cap
    if timeout is not None:
        config["timeoutMs"] = _bounded_ms(timeout, "timeout")
    return config


def _check_strings(items: Any, what: str, allow_empty: bool) -> List[str]:
    """A list of strings (argv, script args). An int or a bool is written as text the way the
    TypeScript SDK writes it (``3``, ``true``), so both journal the same config; anything else
    (a float, ``None``, an object) is refused before any request, since the server compares
    configs exactly on replay and a guessed spelling could diverge."""
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)):
        raise UsageError(f"{what} must be a list of strings, got {items!r}")
    out: List[str] = []
    for item in items:
        if isinstance(item, bool):
            out.append("true" if item else "false")
        elif isinstance(item, int):
            out.append(str(item))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise UsageError(f"{what} must be a list of strings; {item!r} is not a string (pass str(x))")
    if not out and not allow_empty:
        raise UsageError(f"{what} must not be empty")
    return out


def show_duration(ms: int) -> str:
    """A duration as a step's error shows it: ``2s``, ``1500ms`` (as the Rust client)."""
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _now_ms() -> int:
    """Milliseconds since the Unix epoch (wake-up and retry times are journaled in them)."""
    return int(time.time() * 1000)


def _tail(text: str, max_bytes: int) -> str:
    """The last at most ``max_bytes`` bytes of ``text`` (UTF-8), cut at a character boundary."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= max_bytes:
        return text
    return data[len(data) - max_bytes :].decode("utf-8", errors="ignore")


# ---------------------------------------------------------------------------------------------
# Transport


class _Transport:
    """The run's internal routes over ``http.client``: one persistent connection per thread
    (steps may run from several threads at once), bearer token, JSON bodies, and the server's
    error answers turned into the SDK's error classes."""

    def __init__(self, url: str, token: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"SCRIPT_RUNNER_URL {url!r} is not an http:// or https:// address")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._token = token
        self._local = threading.local()
        # Every live thread's connection, so close() can close them all; weak, so a finished
        # thread's connection goes (and its socket closes) with the thread's local storage.
        self._all: "weakref.WeakSet[http.client.HTTPConnection]" = weakref.WeakSet()
        self._all_lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=CONNECT_TIMEOUT)
            self._local.conn = conn
            self._local.used = False
            with self._all_lock:
                self._all.add(conn)
        return conn

    def close(self) -> None:
        """Closes every thread's connection (a later call opens new ones)."""
        with self._all_lock:
            conns = list(self._all)
            self._all.clear()
        for conn in conns:
            try:
                conn.close()
            except OSError:
                pass
        self._local = threading.local()

    def _drop(self) -> None:
        """Closes and forgets this thread's connection (the next call opens a new one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with self._all_lock:
                self._all.discard(conn)
            try:
                conn.close()
            except OSError:
                pass
        self._local.conn = None

    def _once(self, method: str, path: str, body: Optional[bytes], timeout: Optional[float]) -> Tuple[int, bytes]:
        """One request on this thread's connection; a reused connection the server has closed
        meanwhile is retried once on a new one (every step route is keyed by label, so a
        second delivery is answered from the journal)."""
        for fresh_try in (False, True):
            conn = self._connection()
            reused = bool(getattr(self._local, "used", False))
            try:
                if conn.sock is None:
                    conn.connect()
                    # Headers and body may go in two writes (Python < 3.11): without this,
                    # Nagle's algorithm and delayed ACKs add ~40 ms to each step call.
                    cast(socket.socket, conn.sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                cast(socket.socket, conn.sock).settimeout(timeout)
                headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
                if body is not None:
                    headers["Content-Type"] = "application/json"
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = _read_bounded(resp)
                self._local.used = True
                if resp.will_close:
                    self._drop()
                if len(data) > MAX_ANSWER_BYTES:
                    self._drop()
                    raise ProtocolError(f"{method} {path}: the answer is larger than {MAX_ANSWER_BYTES} bytes")
                return resp.status, data
            except (socket.timeout, TimeoutError):
                self._drop()
                limit = "the time limit" if timeout is None else f"{timeout:g} s"
                raise UnreachableError(f"cannot reach script-runner at {self.url}: no answer within {limit}") from None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ConnectionAbortedError, http.client.BadStatusLine) as e:
                self._drop()
                if reused and not fresh_try:
                    continue
                raise UnreachableError(f"cannot reach script-runner at {self.url}: {e or type(e).__name__}") from None
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                raise UnreachableError(f"cannot reach script-runner at {self.url}: {e or type(e).__name__}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def call(self, method: str, path: str, body: Any = None, timeout: Optional[float] = STEP_ROUTE_LIMIT) -> Dict[str, Any]:
        """``method path`` with an optional JSON body; the answer's JSON object. ``503
        STORE_UNAVAILABLE`` (the database away) is retried for up to
        :data:`STORE_RETRY_BOUND` seconds, pauses doubling from 250 ms to 5 s."""
        payload = None if body is None else json.dumps(body, allow_nan=False).encode("utf-8")
        deadline = time.monotonic() + STORE_RETRY_BOUND
        pause = STORE_RETRY_FIRST_PAUSE
        while True:
            status, data = self._once(method, path, payload, timeout)
            try:
                answer = json.loads(data.decode("utf-8")) if data else None
            except ValueError:
                answer = None
            if 200 <= status < 300:
                if not isinstance(answer, dict):
                    raise ProtocolError(f"{method} {path}: the answer is not a JSON object: {data[:200]!r}")
                return answer
            error = answer.get("error") if isinstance(answer, dict) else None
            error = error if isinstance(error, dict) else {}
            code: str = error["code"] if isinstance(error.get("code"), str) else "HTTP_ERROR"
            message = error.get("message")
            if not isinstance(message, str):
                message = data[:500].decode("utf-8", errors="replace")
            if status == 503 and code == "STORE_UNAVAILABLE" and time.monotonic() + pause < deadline:
                time.sleep(pause)
                pause = min(pause * 2, STORE_RETRY_MAX_PAUSE)
                continue
            if code == "STEP_DIVERGED":
                raise StepDivergedError(message, status)
            if code == "LIMIT_EXCEEDED":
                raise LimitExceededError(message, status)
            raise ServerError(status, code, message)


def _read_bounded(resp: http.client.HTTPResponse) -> bytes:
    """An answer's body, at most :data:`MAX_ANSWER_BYTES` + 1 bytes (the caller refuses more).
    Read in chunks: ``read(n)`` of Python < 3.11 allocates ``n`` bytes up front."""
    if resp.length is not None and resp.length <= MAX_ANSWER_BYTES:
        return resp.read()
    chunks: List[bytes] = []
    size = 0
    while size <= MAX_ANSWER_BYTES:
        chunk = resp.read(1024 * 1024)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _segment(text: str) -> str:
    """A label or id percent-encoded as one path segment (as the Rust client encodes it)."""
    return urllib.parse.quote(text, safe="")


# ---------------------------------------------------------------------------------------------
# Command steps


class _Captured:
    """What a command printed and how it ended."""

    def __init__(self, exit_code: int, stdout: str, stderr: str, timed_out: bool) -> None:
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out


def _read_capped(pipe: Any, into: List[bytes]) -> None:
    """Reads a pipe to its end, keeping at most :data:`MAX_CAPTURE_BYTES` (the rest is read and
    dropped, so the command never blocks on a full pipe)."""
    kept = 0
    try:
        while True:
            chunk = pipe.read(64 * 1024)
            if not chunk:
                break
            room = MAX_CAPTURE_BYTES - kept
            if room > 0:
                into.append(chunk[:room])
                kept += min(len(chunk), room)
    except (OSError, ValueError):
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


_STOP_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGINT", None), getattr(signal, "SIGHUP", None)) if s
)


def _run_captured(argv: List[str], key: str, timeout_ms: Optional[int]) -> _Captured:
    """Runs argv (no shell) as the leader of a new process group, stdin from /dev/null, with
    ``SCRIPT_STEP_KEY`` set, keeping at most 16 MiB of each stream. Past ``timeout_ms`` its
    group gets SIGTERM, SIGKILL after :data:`KILL_GRACE` (exit code 124). On the main thread,
    SIGTERM, SIGINT or SIGHUP to this process meanwhile (a cancelled run) stops the group the
    same way, then this process ends by that signal: the command's group is not the run's, so
    it would not get the run's signal itself."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env={**os.environ, STEP_KEY_ENV: key},
        )
    except OSError as e:
        reason = f"{e.strerror} (os error {e.errno})" if e.strerror else str(e)
        return _Captured(127, "", f"cannot start {argv[0]}: {reason}\n", False)
    out: List[bytes] = []
    err: List[bytes] = []
    readers = [
        threading.Thread(target=_read_capped, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=_read_capped, args=(proc.stderr, err), daemon=True),
    ]
    for r in readers:
        r.start()
    received: List[int] = []
    old_handlers: Dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def note(signum: int, _frame: Any) -> None:
            received.append(signum)

        for s in _STOP_SIGNALS:
            try:
                old_handlers[s] = signal.signal(s, note)
            except (ValueError, OSError):
                pass
    timed_out = False
    try:
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
        # Until the leader has exited and both pipes are closed (a background child may hold
        # them after the leader's exit): the deadline and the stop signals hold meanwhile.
        while True:
            watch = WATCH_EVERY if deadline is None else max(0.0, min(WATCH_EVERY, deadline - time.monotonic()))
            if proc.returncode is None:
                try:
                    proc.wait(timeout=watch)
                except subprocess.TimeoutExpired:
                    pass
            else:
                for r in readers:
                    r.join(timeout=watch)
            if proc.returncode is not None and not any(r.is_alive() for r in readers):
                break
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
            if timed_out or received:
                _stop_group(proc)
                break
        # The group is gone; a process that left it (setsid) and still holds a pipe is not
        # waited for past the grace: what was read so far is the output.
        for r in readers:
            r.join(timeout=KILL_GRACE)
    finally:
        for s, old in old_handlers.items():
            try:
                signal.signal(s, old)
            except (ValueError, OSError):
                pass
    if received:
        os.kill(os.getpid(), received[0])
    rc = proc.returncode
    if timed_out:
        code = TIMED_OUT_EXIT_CODE
    elif rc is None:
        code = 1
    elif rc < 0:
        code = 128 - rc
    else:
        code = rc
    return _Captured(
        code,
        b"".join(out).decode("utf-8", errors="replace"),
        b"".join(err).decode("utf-8", errors="replace"),
        timed_out,
    )


def _stop_group(proc: "subprocess.Popen[bytes]") -> None:
    """Stops a command's process group: SIGTERM, then SIGKILL once the group is gone or
    :data:`KILL_GRACE` has passed. The leader exiting does not mean the group has: its
    children are waited for too."""
    group = proc.pid
    try:
        os.killpg(group, signal.SIGTERM)
    except OSError:
        pass
    grace = time.monotonic() + KILL_GRACE
    while time.monotonic() < grace:
        if proc.returncode is None:
            try:
                proc.wait(timeout=WATCH_EVERY)
            except subprocess.TimeoutExpired:
                pass
            continue
        try:
            os.killpg(group, 0)
        except OSError:
            break  # no process of the group remains
        time.sleep(WATCH_EVERY)
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


# ---------------------------------------------------------------------------------------------
# Steps


class _Next:
    """What ``begin`` found: ``execute``, ``done`` or ``resume``, with the journal entry."""

    def __init__(self, action: str, step: Optional[Dict[str, Any]]) -> None:
        self.action = action
        self.step = step if step is not None else {}


class Steps:
    """The run's durable steps, as ``ctx.step``. Each method takes the step's label (its
    durability key: put a loop's item in it) and returns the same thing on the first execution
    and on every replay.

    ``ctx.step("label")`` is also a decorator: ``@ctx.step("fetch")`` on a function makes
    calling it run ``ctx.step.run("fetch", fn)``.
    """

    def __init__(self, http: _Transport, run_id: str) -> None:
        self._http = http
        self._run_id = run_id
        self._base = f"/api/internal/script-runs/{_segment(run_id)}/"

    # -- decorator --------------------------------------------------------------------------

    def __call__(self, label: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """A decorator: calling the decorated function runs it as the step ``label`` (see
        :meth:`run`). Its arguments are passed through but are not part of the key: one label,
        one journaled result."""
        _check_label(label)

        def decorate(fn: Callable[..., T]) -> Callable[..., T]:
            import functools

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> T:
                return self.run(label, lambda: fn(*args, **kwargs))

            return wrapper

        return decorate

    # -- value steps ------------------------------------------------------------------------

    def run(self, label: str, fn: Callable[[], T]) -> T:
        """Runs ``fn`` once and journals its JSON result, **or its raised error**: every replay
        returns the result, or raises :class:`StepFailedError` with the original's message
        and class name (``error_name``), without calling ``fn``. A ``ScriptRunnerError`` other
        than ``StepFailedError`` (the server away, a divergence) and a ``BaseException`` that
        is not an ``Exception`` propagate unjournaled: they say nothing about ``fn``'s work."""
        _check_label(label)
        if not callable(fn):
            raise UsageError(f"step {label!r}: run takes a function, got {fn!r}")
        nxt = self._begin(label, "value", None)
        if nxt.action != "execute":
            return cast(T, nxt.step.get("result"))
        started = time.monotonic()
        try:
            value = fn()
        except StepFailedError as e:
            # A failed step inside fn fails fn: deterministic, so journaled like any error.
            self._record_failure(label, type(e).__name__, str(e), started)
        except ScriptRunnerError:
            # The server away, a divergence, a refused call: nothing is known of fn's work.
            raise
        except Exception as e:  # noqa: BLE001 - every other error of fn is the step's result
            self._record_failure(label, type(e).__name__, str(e), started)
        value = self._check_not_coroutine(label, value)
        entry = self._record(label, "value", None, "completed", self._json(label, value), None, started)
        return cast(T, self._value_of(label, entry))

    def _record_failure(self, label: str, name: str, message: str, started: float) -> None:
        """Journals ``fn``'s error as the step's failure and raises it as every replay will."""
        entry = self._record(
            label, "value", None, "failed", {"name": name, "message": message}, message, started
        )
        self._value_of(label, entry)  # raises StepFailedError for a failed entry
        # Another writer of the label won with a completed value: fn's error still stands.
        raise StepFailedError(label, message, {"name": name, "message": message}, name)

    def value(self, label: str, value_or_fn: Union[T, Callable[[], T]]) -> T:
        """Journals a value once (a function is called for it) and returns it; every replay
        returns the first value. A function that raises journals **nothing**: its error
        propagates as it is, and the next execution calls it again."""
        _check_label(label)
        nxt = self._begin(label, "value", None)
        if nxt.action != "execute":
            return cast(T, nxt.step.get("result"))
        started = time.monotonic()
        value = value_or_fn() if callable(value_or_fn) else value_or_fn
        value = self._check_not_coroutine(label, value)
        entry = self._record(label, "value", None, "completed", self._json(label, value), None, started)
        return cast(T, self._value_of(label, entry))

    @staticmethod
    def _check_not_coroutine(label: str, value: Any) -> Any:
        """A coroutine is no value: this SDK's steps are synchronous (call them from async code
        as they are), so an ``async def`` step function is refused, clearly."""
        import inspect

        if inspect.isawaitable(value):
            close = getattr(value, "close", None)
            if close:
                close()
            raise UsageError(f"step {label!r}: the function returned an awaitable; step functions must be plain (sync) functions")
        return value

    @staticmethod
    def _json(label: str, value: Any) -> Any:
        """The value as JSON will carry it; a value that is not JSON is refused (nothing is
        journaled)."""
        try:
            return json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise UsageError(f"step {label!r}: the value is not JSON: {e}") from None

    @staticmethod
    def _value_of(label: str, entry: Dict[str, Any]) -> Any:
        """A journaled value entry's result; a failed one raises as a replay does."""
        if entry.get("status") == "failed":
            raise _failed(label, entry)
        return entry.get("result")

    # -- command steps ----------------------------------------------------------------------

    def command(
        self,
        label: str,
        argv: Sequence[str],
        retry: Optional[int] = None,
        backoff: Optional[Duration] = None,
        backoff_max: Optional[Duration] = None,
        timeout: Optional[Duration] = None,
    ) -> CommandResult:
        """Runs a local command once (argv, no shell, a process group of its own, stdin from
        /dev/null, ``SCRIPT_STEP_KEY=<runId>:<label>``) and journals ``{exitCode, stdout,
        stderr}``. A non-zero exit is journaled as failed and returned, not raised, on every
        replay. ``retry`` (1-100) tries again after a failed try, waiting ``backoff`` (doubled
        each time, up to ``backoff_max``; the server's 1 s and 1 min by default); ``timeout``
        stops a try (its group: SIGTERM, SIGKILL 2 s later) as exit code 124. A restarted run
        resumes a retried step at its next attempt, waiting only what is left."""
        _check_label(label)
        args = _check_strings(argv, "a command step's argv", allow_empty=False)
        config: Dict[str, Any] = {"command": args}
        config.update(_options(retry, backoff, backoff_max, timeout))
        timeout_ms = config.get("timeoutMs")
        retries = retry or 0
        nxt = self._begin(label, "command", config)
        if nxt.action == "done" or (nxt.action == "resume" and nxt.step.get("status") != "started"):
            return _command_result(nxt.step.get("result"), True)
        attempt = self._next_attempt(nxt.step) if nxt.action == "resume" else 1
        started = time.monotonic()
        key = f"{self._run_id}:{label}"
        while True:
            began = _now_ms()
            ran = _run_captured(args, key, timeout_ms)
            if ran.timed_out and timeout_ms is not None:
                error: Optional[str] = f"timed out after {show_duration(timeout_ms)}"
            elif ran.exit_code != 0:
                error = f"exit code {ran.exit_code}"
            else:
                error = None
            last = retries == 0 or attempt > retries
            if error is None or last:
                result = {"exitCode": ran.exit_code, "stdout": ran.stdout, "stderr": ran.stderr}
                status = "completed" if error is None else "failed"
                entry = self._record(label, "command", config, status, result, error, started)
                # Another writer may have won the label: its result is the journaled one.
                return _command_result(entry.get("result"), False)
            body = {
                "stepType": "command",
                "config": config,
                "attempt": attempt,
                "exitCode": ran.exit_code,
                "error": error,
                "stderrTail": _tail(ran.stderr, 4096),
                "startedAtMs": began,
                "endedAtMs": _now_ms(),
            }
            entry = self._step_answer(self._http.call("POST", self._path(label, "/attempts"), body))
            if entry.get("status") != "started":
                return _command_result(entry.get("result"), True)
            attempt = self._next_attempt(entry)
            # Before the next try, the entry again, with this execution's token: a server that
            # restarted meanwhile has replaced this execution (its token is refused) and
            # another execution runs the next try, once.
            now = self._step_answer(self._http.call("GET", self._path(label, "")))
            if now.get("status") != "started":
                return _command_result(now.get("result"), True)
            if len(_attempts(now)) + 1 != attempt:
                raise ProtocolError(
                    f"step {label!r}: attempt {attempt} is no longer the next one ({len(_attempts(now))} journaled)"
                )

    @staticmethod
    def _next_attempt(entry: Dict[str, Any]) -> int:
        """The attempt a resumed, retried command step runs: the one after those journaled,
        once the journaled time for it has come (a restart waits only what is left)."""
        result = entry.get("result")
        at = result.get("nextAttemptAtMs") if isinstance(result, dict) else None
        if isinstance(at, (int, float)) and not isinstance(at, bool):
            left = at - _now_ms()
            if left > 0:
                time.sleep(left / 1000.0)
        return len(_attempts(entry)) + 1

    # -- script steps -----------------------------------------------------------------------

    def script(
        self,
        label: str,
        script_id: str,
        args: Optional[Sequence[str]] = None,
        retry: Optional[int] = None,
        backoff: Optional[Duration] = None,
        backoff_max: Optional[Duration] = None,
        timeout: Optional[Duration] = None,
    ) -> ScriptResult:
        """Runs a configured script as a server-side job (same queue, limits and logs as
        ``POST /run``; its process gets ``SCRIPT_STEP_KEY``) and returns ``{jobId, status,
        exitCode, stdout, stderr}``. A failed job raises :class:`StepFailedError` (the result in
        ``.result``), as every replay does; a replay while the job still runs waits for that
        job and never starts a second one. Retries and the time-out are run by the server."""
        _check_label(label)
        if not isinstance(script_id, str) or not script_id:
            raise UsageError(f"step {label!r}: a script id must be a non-empty string, got {script_id!r}")
        config: Dict[str, Any] = {
            "scriptId": script_id,
            "args": _check_strings([] if args is None else args, "a script step's args", allow_empty=True),
        }
        config.update(_options(retry, backoff, backoff_max, timeout))
        nxt = self._begin(label, "script", config)
        if nxt.action == "execute":
            raise ProtocolError(f"step {label!r}: the server did not run the script step")
        return ScriptResult.of(nxt.step.get("result"))

    def script_start(self, label: str, script_id: str, args: Optional[Sequence[str]] = None) -> str:
        """Starts a configured script as a server-side job without waiting for it, once: the
        job id is journaled with the start, so a replay returns the same id and never starts a
        second job."""
        _check_label(label)
        if not isinstance(script_id, str) or not script_id:
            raise UsageError(f"step {label!r}: a script id must be a non-empty string, got {script_id!r}")
        config = {
            "scriptId": script_id,
            "args": _check_strings([] if args is None else args, "a script step's args", allow_empty=True),
            "wait": False,
        }
        nxt = self._begin(label, "script", config)
        if nxt.action == "execute":
            raise ProtocolError(f"step {label!r}: the server did not start the script")
        result = nxt.step.get("result")
        job_id = result.get("jobId") if isinstance(result, dict) else None
        if not isinstance(job_id, str):
            raise ProtocolError(f"step {label!r} has no jobId")
        return job_id

    # -- server-side waits ------------------------------------------------------------------

    def sleep(self, label: str, duration: Duration) -> None:
        """A durable sleep: the wake-up time is journaled, so a restarted run sleeps only what
        is left of it (a number is seconds; ``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``)."""
        _check_label(label)
        config = {"durationMs": duration_ms(duration, f"sleep {label!r}")}
        nxt = self._begin(label, "sleep", config)
        if nxt.action == "done":
            return
        if nxt.action == "execute":
            raise ProtocolError(f"step {label!r}: the server did not journal the sleep")
        result = nxt.step.get("result")
        wake_at = result.get("wakeAtMs") if isinstance(result, dict) else None
        started = time.monotonic()
        if isinstance(wake_at, (int, float)) and not isinstance(wake_at, bool):
            left = wake_at - _now_ms()
            if left > 0:
                time.sleep(left / 1000.0)
        self._record(label, "sleep", config, "completed", result, None, started)

    def approval(self, label: str, message: str) -> Approval:
        """Waits for a human decision (``POST /api/script-runs/{id}/approvals/{label}``) and
        returns ``{approved, by, comment}``. The run is ``awaiting`` meanwhile; the server may
        stop this process and restart the run once the decision lands, which replays to here."""
        _check_label(label)
        if not isinstance(message, str):
            raise UsageError(f"step {label!r}: an approval's message must be a string")
        entry = self._until_ended(label, "approval", {"message": message})
        result = entry.get("result")
        r: Dict[str, Any] = result if isinstance(result, dict) else {}
        by, comment = r.get("by"), r.get("comment")
        return Approval(
            approved=r.get("approved") is True,
            by=by if isinstance(by, str) else None,
            comment=comment if isinstance(comment, str) else None,
        )

    def input(self, label: str, prompt: str, schema: Optional[Dict[str, Any]] = None) -> Any:
        """Waits for a value posted to ``/api/script-runs/{id}/inputs/{label}`` (checked by the
        server against the JSON ``schema``, if any) and returns it; an input denied through its
        resume URL raises :class:`StepFailedError`, on every replay too."""
        _check_label(label)
        if not isinstance(prompt, str):
            raise UsageError(f"step {label!r}: an input's prompt must be a string")
        config: Dict[str, Any] = {"prompt": prompt}
        if schema is not None:
            config["schema"] = schema
        entry = self._until_ended(label, "input", config)
        if entry.get("status") == "failed":
            raise _failed(label, entry)
        r = entry.get("result")
        return r.get("value") if isinstance(r, dict) else None

    def wait_event(self, label: str, name: str, timeout: Optional[Duration] = None) -> Any:
        """Waits for the event ``name`` (``POST /api/script-runs/{id}/events/{name}``, any JSON)
        and returns its payload. Past ``timeout`` (1 ms to 24 h) the server fails the step:
        :class:`StepFailedError`, on every replay too."""
        _check_label(label)
        _check_label(name, "an event name")
        config: Dict[str, Any] = {"event": name}
        if timeout is not None:
            config["timeoutMs"] = _bounded_ms(timeout, f"wait_event {label!r} timeout")
        entry = self._until_ended(label, "event", config)
        if entry.get("status") == "failed":
            raise _failed(label, entry)
        r = entry.get("result")
        return r.get("payload") if isinstance(r, dict) else None

    def _until_ended(self, label: str, step_type: str, config: Dict[str, Any]) -> Dict[str, Any]:
        """Begins a step the server ends (approval, input, event) and long-polls until it has."""
        nxt = self._begin(label, step_type, config)
        if nxt.action == "execute":
            raise ProtocolError(f"step {label!r}: the server did not journal the {step_type} step")
        entry = nxt.step
        while entry.get("status") == "started":
            entry = self._step_answer(self._http.call("GET", self._path(label, "/wait?timeoutMs=25000")))
        return entry

    # -- protocol ---------------------------------------------------------------------------

    def _path(self, label: str, rest: str) -> str:
        return f"{self._base}steps/{_segment(label)}{rest}"

    def _begin(self, label: str, step_type: str, config: Any) -> _Next:
        """``POST steps/{label}/begin``; no read time-out (a script step answers when its job
        has ended). A failed journaled step other than a command raises as a replay does."""
        answer = self._http.call(
            "POST", self._path(label, "/begin"), {"stepType": step_type, "config": config}, timeout=None
        )
        action = answer.get("action")
        if action == "execute":
            return _Next("execute", None)
        if action not in ("done", "resume"):
            raise ProtocolError(f"step {label!r}: begin answered the unknown action {action!r}")
        step = answer.get("step")
        if not isinstance(step, dict):
            raise ProtocolError(f"step {label!r}: begin answered {action} without a step")
        if action == "done" and step.get("status") == "failed" and step.get("stepType") != "command":
            raise _failed(label, step)
        return _Next(action, step)

    def _record(
        self,
        label: str,
        step_type: str,
        config: Any,
        status: str,
        result: Any,
        error: Optional[str],
        started: float,
    ) -> Dict[str, Any]:
        """``POST steps``: journals the step; the answer is the stored entry (a second writer of
        the label gets the first one's)."""
        body = {
            "stepKey": label,
            "stepType": step_type,
            "config": config,
            "status": status,
            "result": result,
            "error": error,
            "durationMs": int((time.monotonic() - started) * 1000),
        }
        return self._step_answer(self._http.call("POST", self._base + "steps", body))

    @staticmethod
    def _step_answer(answer: Dict[str, Any]) -> Dict[str, Any]:
        step = answer.get("step")
        if not isinstance(step, dict):
            raise ProtocolError(f"the answer has no step: {json.dumps(answer)[:200]}")
        return step


def _attempts(entry: Dict[str, Any]) -> List[Any]:
    a = entry.get("attempts")
    return a if isinstance(a, list) else []


def _failed(label: str, entry: Dict[str, Any]) -> StepFailedError:
    """The error a failed journal entry is, now and on every replay."""
    result = entry.get("result")
    message = entry.get("error")
    name = result.get("name") if isinstance(result, dict) and isinstance(result.get("name"), str) else None
    return StepFailedError(label, message if isinstance(message, str) else "", result, name)


def _command_result(result: Any, replayed: bool) -> CommandResult:
    """A command step's journaled result (a missing exit code reads as 1, as the Rust client)."""
    r = result if isinstance(result, dict) else {}
    code = r.get("exitCode")

    def text(key: str) -> str:
        v = r.get(key)
        return v if isinstance(v, str) else ""

    return CommandResult(
        exitCode=code if isinstance(code, int) and not isinstance(code, bool) else 1,
        stdout=text("stdout"),
        stderr=text("stderr"),
        replayed=replayed,
    )


# ---------------------------------------------------------------------------------------------
# The context


class Context:
    """A workflow run's context: its arguments, id and execution number, its steps
    (``ctx.step``) and progress. The loader makes one from the environment and passes it to
    ``main(args, ctx)``; a plain script makes it with :func:`from_env`."""

    def __init__(self, url: str, run_id: str, token: str, args: Any = None, attempt: int = 1) -> None:
        self._http = _Transport(url, token)
        #: The run's launch arguments (``SCRIPT_RUN_ARGS``, JSON; ``None`` when unset).
        self.args: Any = args
        #: The run id (``SCRIPT_RUN_ID``).
        self.run_id: str = run_id
        #: This execution's number, from 1 (``SCRIPT_RUN_ATTEMPT``).
        self.attempt: int = attempt
        #: The durable steps; also a decorator: ``@ctx.step("label")``.
        self.step: Steps = Steps(self._http, run_id)

    @property
    def url(self) -> str:
        """The server this context talks to."""
        return self._http.url

    def close(self) -> None:
        """Closes the context's connections to the server (steps after it open new ones)."""
        self._http.close()

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def progress(self, current: int, total: int, message: Optional[str] = None) -> None:
        """Reports the run's progress (``current`` of ``total``, 0 when unknown)."""
        for name, n in (("current", current), ("total", total)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise UsageError(f"progress {name} must be a whole number >= 0, got {n!r}")
        if message is not None and not isinstance(message, str):
            raise UsageError(f"progress message must be a string, got {message!r}")
        self._http.call(
            "POST",
            f"/api/internal/script-runs/{_segment(self.run_id)}/progress",
            {"current": current, "total": total, "message": message},
        )


def from_env() -> Context:
    """The context of the run this process belongs to, from its environment; raises
    :class:`NotInRunError` naming the first missing variable."""
    values = []
    for name in ("SCRIPT_RUNNER_URL", "SCRIPT_RUN_ID", "SCRIPT_RUN_TOKEN"):
        value = os.environ.get(name)
        if not value:
            raise NotInRunError(name)
        values.append(value)
    args: Any = None
    text = os.environ.get("SCRIPT_RUN_ARGS")
    if text is not None:
        try:
            args = json.loads(text)
        except ValueError:
            args = None
    try:
        attempt = int(os.environ.get("SCRIPT_RUN_ATTEMPT", "1"))
    except ValueError:
        attempt = 1
    return Context(values[0], values[1], values[2], args, attempt)


_context: Optional[Context] = None
_context_lock = threading.Lock()


def context() -> Context:
    """The context of the current run, made from the environment once (the loader passes the
    same one to ``main``)."""
    global _context
    with _context_lock:
        if _context is None:
            _context = from_env()
        return _context


def step(label: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """``@step("label")``: calling the decorated function runs it as a step of the current
    run (:func:`context`), as ``@ctx.step("label")`` does. The context is looked up at call
    time, so decorating needs no run."""
    _check_label(label)

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        import functools

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            return context().step.run(label, lambda: fn(*args, **kwargs))

        return wrapper

    return decorate
