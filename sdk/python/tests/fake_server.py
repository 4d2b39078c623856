"""An in-process fake of script-runner's internal step routes, for the SDK's unit tests.

It keeps a tiny in-memory journal and answers begin / record / wait / attempts / progress /
GET step as the server does (replay, divergence, a step limit, server-ended steps), plus
switches to answer ``503 STORE_UNAVAILABLE`` a few times, to override the next answer, and to
drop a kept-alive connection silently.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple

RUN_ID = "run_1"
TOKEN = "tok"


def now_ms() -> int:
    return int(time.time() * 1000)


class FakeServer:
    """The fake server; ``url`` to reach it, ``journal`` / ``requests`` to assert on."""

    def __init__(self) -> None:
        self.journal: Dict[str, Dict[str, Any]] = {}
        self.requests: List[Tuple[str, str, Any]] = []
        self.progress: List[Any] = []
        self.lock = threading.Condition()
        self.fail_503 = 0
        self.max_steps = 1000
        self.override: Optional[Tuple[int, Any]] = None
        self.drop_after_answer = False
        self.scripts: Dict[str, Callable[[List[str]], Tuple[int, str, str]]] = {}
        self.jobs = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                status, answer = fake.handle(method, self.path, body, self.headers.get("Authorization"))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                if fake.drop_after_answer:
                    # Closed without "Connection: close": the client finds out on its next call.
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- test helpers ---------------------------------------------------------------------

    def env(self, **extra: str) -> Dict[str, str]:
        """The environment a workflow process of this fake run gets."""
        env = {"SCRIPT_RUNNER_URL": self.url, "SCRIPT_RUN_ID": RUN_ID, "SCRIPT_RUN_TOKEN": TOKEN}
        env.update(extra)
        return env

    def decide(self, label: str, result: Any, status: str = "completed", error: Optional[str] = None) -> None:
        """Ends a started server-side step (an approval decision, an input, an event)."""
        with self.lock:
            entry = self.journal[label]
            entry.update(status=status, result=result, error=error)
            self.lock.notify_all()

    def step_requests(self, suffix: str) -> List[Tuple[str, str, Any]]:
        return [r for r in self.requests if r[1].split("?")[0].endswith(suffix)]

    # -- the routes -----------------------------------------------------------------------

    def handle(self, method: str, path: str, body: Any, auth: Optional[str]) -> Tuple[int, Any]:
        with self.lock:
            self.requests.append((method, path, body))
            if self.override is not None:
                answer, self.override = self.override, None
                return answer
            if self.fail_503 > 0:
                self.fail_503 -= 1
                return 503, {"ok": False, "error": {"code": "STORE_UNAVAILABLE", "message": "the database is away"}}
        if auth != f"Bearer {TOKEN}":
            return 403, {"ok": False, "error": {"code": "FORBIDDEN", "message": "not this run's token"}}
        parsed = urllib.parse.urlsplit(path)
        prefix = f"/api/internal/script-runs/{RUN_ID}/"
        if not parsed.path.startswith(prefix):
            return 404, {"ok": False, "error": {"code": "NOT_FOUND", "message": path}}
        rest = parsed.path[len(prefix) :]
        query = urllib.parse.parse_qs(parsed.query)
        parts = rest.split("/")
        if method == "POST" and rest == "progress":
            self.progress.append(body)
            return 200, {"ok": True}
        if method == "POST" and rest == "steps":
            return self.record(body)
        if parts[0] != "steps" or len(parts) < 2:
            return 404, {"ok": False, "error": {"code": "NOT_FOUND", "message": path}}
        label = urllib.parse.unquote(parts[1])
        action = parts[2] if len(parts) > 2 else ""
        if method == "POST" and action == "begin":
            return self.begin(label, body)
        if method == "POST" and action == "attempts":
            return self.attempt(label, body)
        if method == "GET" and action == "wait":
            return self.wait(label, int(query.get("timeoutMs", ["25000"])[0]))
        if method == "GET" and action == "":
            with self.lock:
                entry = self.journal.get(label)
                if entry is None:
                    return 404, {"ok": False, "error": {"code": "STEP_NOT_FOUND", "message": label}}
                return 200, {"ok": True, "step": dict(entry)}
        return 404, {"ok": False, "error": {"code": "NOT_FOUND", "message": path}}

    @staticmethod
    def diverges(entry: Dict[str, Any], step_type: str, config: Any) -> Optional[Tuple[int, Any]]:
        same = step_type == "value" or entry["config"] == config
        if entry["stepType"] != step_type or not same:
            message = (
                f"STEP_DIVERGED: step {json.dumps(entry['stepKey'])} was journaled as {entry['stepType']} "
                f"{json.dumps(entry['config'])} but is now requested as {step_type} {json.dumps(config)}"
            )
            return 409, {"ok": False, "error": {"code": "STEP_DIVERGED", "message": message}}
        return None

    def insert(self, label: str, step_type: str, config: Any, status: str, result: Any, error: Any = None,
               job_id: Any = None) -> Dict[str, Any]:
        entry = {
            "stepKey": label, "stepType": step_type, "config": config, "status": status, "result": result,
            "error": error, "jobId": job_id, "startedAt": "2026-01-01T00:00:00.000Z", "completedAt": None,
            "durationMs": None, "attempts": [],
        }
        self.journal[label] = entry
        self.lock.notify_all()
        return entry

    def begin(self, label: str, body: Dict[str, Any]) -> Tuple[int, Any]:
        step_type, config = body["stepType"], body.get("config")
        with self.lock:
            entry = self.journal.get(label)
            if entry is not None:
                diverged = self.diverges(entry, step_type, config)
                if diverged:
                    return diverged
                action = "resume" if entry["status"] == "started" else "done"
                return 200, {"ok": True, "action": action, "step": dict(entry)}
            if len(self.journal) >= self.max_steps:
                message = f"SCRIPT_RUN_MAX_STEPS exceeded ({len(self.journal) + 1}/{self.max_steps})"
                return 409, {"ok": False, "error": {"code": "LIMIT_EXCEEDED", "message": message}}
            if step_type == "value" or (step_type == "command" and "retry" not in config):
                return 200, {"ok": True, "action": "execute", "step": None}
            if step_type == "command":
                entry = self.insert(label, step_type, config, "started", None)
            elif step_type == "sleep":
                at = now_ms() + config["durationMs"]
                entry = self.insert(label, step_type, config, "started", {"wakeAtMs": at})
            elif step_type in ("approval", "input"):
                entry = self.insert(label, step_type, config, "started", None)
            elif step_type == "event":
                result = None
                if "timeoutMs" in config:
                    result = {"deadlineAtMs": now_ms() + config["timeoutMs"]}
                entry = self.insert(label, step_type, config, "started", result)
            elif step_type == "script":
                if config["scriptId"] not in self.scripts:
                    return 400, {"ok": False, "error": {"code": "SCRIPT_NOT_FOUND", "message": config["scriptId"]}}
                self.jobs += 1
                job = f"job_{self.jobs}"
                if config.get("wait") is False:
                    entry = self.insert(label, step_type, config, "started", {"jobId": job}, job_id=job)
                    return 200, {"ok": True, "action": "resume", "step": dict(entry)}
                code, out, err = self.scripts[config["scriptId"]](config["args"])
                result = {"jobId": job, "status": "succeeded" if code == 0 else "failed", "exitCode": code,
                          "stdout": out, "stderr": err}
                error = None if code == 0 else f"job {job} failed with exit code {code}"
                entry = self.insert(label, step_type, config, "completed" if code == 0 else "failed", result,
                                    error, job)
                return 200, {"ok": True, "action": "done", "step": dict(entry)}
            else:
                return 400, {"ok": False, "error": {"code": "INVALID_REQUEST", "message": step_type}}
            return 200, {"ok": True, "action": "resume", "step": dict(entry)}

    def record(self, body: Dict[str, Any]) -> Tuple[int, Any]:
        label = body["stepKey"]
        if body.get("status") not in ("completed", "failed"):
            return 400, {"ok": False, "error": {"code": "INVALID_REQUEST", "message": "status"}}
        with self.lock:
            entry = self.journal.get(label)
            if entry is not None:
                diverged = self.diverges(entry, body["stepType"], body.get("config"))
                if diverged:
                    return diverged
                if entry["status"] != "started":
                    return 200, {"ok": True, "step": dict(entry)}
                entry.update(status=body["status"], result=body.get("result"), error=body.get("error"))
                self.lock.notify_all()
                return 200, {"ok": True, "step": dict(entry)}
            if len(self.journal) >= self.max_steps:
                message = f"SCRIPT_RUN_MAX_STEPS exceeded ({len(self.journal) + 1}/{self.max_steps})"
                return 409, {"ok": False, "error": {"code": "LIMIT_EXCEEDED", "message": message}}
            entry = self.insert(label, body["stepType"], body.get("config"), body["status"], body.get("result"),
                                body.get("error"))
            entry["durationMs"] = body.get("durationMs")
            return 200, {"ok": True, "step": dict(entry)}

    def attempt(self, label: str, body: Dict[str, Any]) -> Tuple[int, Any]:
        with self.lock:
            entry = self.journal.get(label)
            if entry is None:
                return 404, {"ok": False, "error": {"code": "STEP_NOT_FOUND", "message": label}}
            diverged = self.diverges(entry, body["stepType"], body.get("config"))
            if diverged:
                return diverged
            n = len(entry["attempts"])
            if entry["status"] != "started" or 1 <= body["attempt"] <= n:
                return 200, {"ok": True, "step": dict(entry)}
            if body["attempt"] != n + 1 or body["attempt"] >= entry["config"]["retry"] + 1:
                return 400, {"ok": False, "error": {"code": "INVALID_REQUEST", "message": "not the next attempt"}}
            entry["attempts"] = entry["attempts"] + [{
                "attempt": body["attempt"], "status": "failed", "exitCode": body.get("exitCode"),
                "error": body["error"], "stderrTail": body.get("stderrTail", ""),
            }]
            backoff = entry["config"].get("backoffMs", 1000) * (2 ** n)
            entry["result"] = {"nextAttemptAtMs": now_ms() + backoff}
            return 200, {"ok": True, "step": dict(entry)}

    def wait(self, label: str, timeout_ms: int) -> Tuple[int, Any]:
        end = time.monotonic() + min(timeout_ms, 2000) / 1000.0
        with self.lock:
            while True:
                entry = self.journal.get(label)
                if entry is None:
                    return 404, {"ok": False, "error": {"code": "STEP_NOT_FOUND", "message": label}}
                if entry["status"] == "started" and entry["stepType"] == "event" and entry["result"]:
                    if now_ms() >= entry["result"]["deadlineAtMs"]:
                        entry.update(status="failed", error=(
                            f"event {json.dumps(entry['config']['event'])} did not arrive within "
                            f"{entry['config']['timeoutMs']} ms"))
                left = end - time.monotonic()
                if entry["status"] != "started" or left <= 0:
                    return 200, {"ok": True, "step": dict(entry)}
                self.lock.wait(min(left, 0.02))
