"""The step SDK against an in-process fake of the server's step routes."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from unittest import mock

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import script_runner  # noqa: E402
from script_runner import (  # noqa: E402
    Context,
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
from script_runner import client as sdk  # noqa: E402
from fake_server import RUN_ID, TOKEN, FakeServer  # noqa: E402


class SdkTest(unittest.TestCase):
    def setUp(self) -> None:
        self.server = FakeServer()
        self.addCleanup(self.server.close)
        self.ctx = self.new_ctx()
        self.tmp = tempfile.mkdtemp()

    def new_ctx(self, token: str = TOKEN) -> Context:
        """A context as a new execution of the run would have (fresh connections)."""
        ctx = Context(self.server.url, RUN_ID, token, {"n": 1}, 1)
        self.addCleanup(ctx.close)
        return ctx

    def marker(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def lines(self, name: str) -> list:
        try:
            with open(self.marker(name)) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []


class ValueSteps(SdkTest):
    def test_run_journals_the_result_and_a_replay_does_not_call_fn(self) -> None:
        calls = []

        def fn() -> dict:
            calls.append(1)
            return {"a": (1, 2)}

        self.assertEqual(self.ctx.step.run("r", fn), {"a": [1, 2]})
        self.assertEqual(self.server.journal["r"]["result"], {"a": [1, 2]})
        self.assertEqual(self.server.journal["r"]["config"], None)
        self.assertEqual(self.new_ctx().step.run("r", fn), {"a": [1, 2]})
        self.assertEqual(len(calls), 1)

    def test_a_raised_error_is_journaled_and_replayed_as_step_failed(self) -> None:
        calls = []

        def fn() -> None:
            calls.append(1)
            raise ValueError("boom")

        with self.assertRaises(StepFailedError) as first:
            self.ctx.step.run("r", fn)
        entry = self.server.journal["r"]
        self.assertEqual((entry["status"], entry["error"]), ("failed", "boom"))
        self.assertEqual(entry["result"], {"name": "ValueError", "message": "boom"})
        with self.assertRaises(StepFailedError) as replay:
            self.new_ctx().step.run("r", fn)
        for e in (first.exception, replay.exception):
            self.assertEqual((e.label, e.message, e.error_name, e.errorName), ("r", "boom", "ValueError", "ValueError"))
            self.assertEqual(e.code, "STEP_FAILED")
            self.assertEqual(str(e), 'step "r" failed: boom')
        self.assertEqual(len(calls), 1)

    def test_a_server_error_inside_fn_is_not_journaled(self) -> None:
        def fn() -> None:
            raise UnreachableError("away")

        with self.assertRaises(UnreachableError):
            self.ctx.step.run("r", fn)
        self.assertNotIn("r", self.server.journal)

    def test_value_with_a_failing_fn_journals_nothing_and_is_called_again(self) -> None:
        calls = []

        def fn() -> int:
            calls.append(1)
            if len(calls) == 1:
                raise KeyError("first")
            return 7

        with self.assertRaises(KeyError):
            self.ctx.step.value("v", fn)
        self.assertEqual(self.server.step_requests("/steps"), [])
        self.assertNotIn("v", self.server.journal)
        self.assertEqual(self.new_ctx().step.value("v", fn), 7)
        self.assertEqual(len(calls), 2)

    def test_a_second_writer_of_a_label_gets_the_first_writers_value(self) -> None:
        def fn() -> str:
            with self.server.lock:  # another execution journals the label meanwhile
                self.server.insert("race", "value", None, "completed", "theirs")
            return "mine"

        self.assertEqual(self.ctx.step.run("race", fn), "theirs")

    def test_value_replays_the_first_value(self) -> None:
        self.assertEqual(self.ctx.step.value("v", "first"), "first")
        self.assertEqual(self.new_ctx().step.value("v", "second"), "first")

    def test_an_async_step_function_is_refused_and_journals_nothing(self) -> None:
        async def fn() -> int:
            return 1

        with self.assertRaises(UsageError) as e:
            self.ctx.step.run("a", fn)
        self.assertIn("awaitable", e.exception.message)
        self.assertNotIn("a", self.server.journal)

    def test_the_module_level_decorator_outside_a_run(self) -> None:
        @script_runner.step("later")
        def later() -> int:
            return 1

        with mock.patch.dict(os.environ, {}, clear=True), mock.patch.object(sdk, "_context", None):
            with self.assertRaises(NotInRunError):
                later()

    def test_a_value_that_is_not_json_is_refused_and_journals_nothing(self) -> None:
        with self.assertRaises(UsageError):
            self.ctx.step.value("v", {1, 2})
        self.assertNotIn("v", self.server.journal)

    def test_decorators_run_the_step_when_called(self) -> None:
        calls = []

        @self.ctx.step("deco")
        def fetch(x: int) -> int:
            calls.append(x)
            return x * 2

        self.assertEqual(fetch(4), 8)
        self.assertEqual(fetch(5), 8)  # one label, one journaled result
        self.assertEqual(calls, [4])
        with mock.patch.dict(os.environ, self.server.env(SCRIPT_RUN_ARGS='{"k": 1}')), \
                mock.patch.object(sdk, "_context", None):

            @script_runner.step("module-level")
            def other() -> str:
                return "ok"

            self.assertEqual(other(), "ok")
            self.assertEqual(script_runner.context().args, {"k": 1})
            self.assertIs(script_runner.context(), script_runner.context())
            script_runner.context().close()
        self.assertEqual(self.server.journal["module-level"]["result"], "ok")


class Errors(SdkTest):
    def test_divergence_is_typed(self) -> None:
        self.ctx.step.value("a", 1)
        with self.assertRaises(StepDivergedError) as e:
            self.ctx.step.command("a", ["true"])
        self.assertEqual((e.exception.code, e.exception.status), ("STEP_DIVERGED", 409))
        self.assertIsInstance(e.exception, ScriptRunnerError)

    def test_a_limit_is_typed(self) -> None:
        self.server.max_steps = 1
        self.ctx.step.value("a", 1)
        with self.assertRaises(LimitExceededError) as e:
            self.ctx.step.value("b", 2)
        self.assertEqual(e.exception.code, "LIMIT_EXCEEDED")
        self.assertIn("SCRIPT_RUN_MAX_STEPS", e.exception.message)

    def test_other_error_answers_are_server_errors_with_the_servers_code(self) -> None:
        with self.assertRaises(ServerError) as e:
            self.new_ctx(token="wrong").step.value("a", 1)
        self.assertEqual((e.exception.status, e.exception.code), (403, "FORBIDDEN"))

    def test_usage_errors_are_raised_before_any_request(self) -> None:
        s = self.ctx.step
        bad = [
            lambda: s.value("", 1),
            lambda: s.run("x\n", lambda: 1),
            lambda: s.run("x" * 201, lambda: 1),
            lambda: s.command("c", []),
            lambda: s.command("c", "true"),
            lambda: s.command("c", ["true"], retry=0),
            lambda: s.command("c", ["true"], retry=101),
            lambda: s.command("c", ["true"], retry=True),
            lambda: s.command("c", ["true"], timeout="0ms"),
            lambda: s.command("c", ["true"], timeout="25h"),
            lambda: s.command("c", ["true"], timeout="soon"),
            lambda: s.command("c", ["true"], backoff="1s"),
            lambda: s.command("c", ["true"], retry=2, backoff="2s", backoff_max="1s"),
            lambda: s.script("c", "echo", [1.5]),
            lambda: s.script("c", "echo", [None]),
            lambda: s.wait_event("e", "ev", timeout=0),
            lambda: s.script("c", ""),
            lambda: s.sleep("z", -1),
            lambda: s.wait_event("e", ""),
            lambda: self.ctx.progress(-1, 3),
            lambda: self.ctx.progress(1, 3, message=5),
        ]
        for i, call in enumerate(bad):
            with self.subTest(i=i), self.assertRaises(UsageError) as e:
                call()
            self.assertEqual(e.exception.code, "USAGE")
        self.assertEqual(self.server.requests, [])

    def test_protocol_violations_are_typed(self) -> None:
        self.server.override = (200, {"ok": True, "action": "jump"})
        with self.assertRaises(ProtocolError) as e:
            self.ctx.step.value("a", 1)
        self.assertEqual(e.exception.code, "PROTOCOL")

    def test_an_unreachable_server(self) -> None:
        port = self.server.port
        self.server.close()
        ctx = Context(f"http://127.0.0.1:{port}", RUN_ID, TOKEN)
        self.addCleanup(ctx.close)
        with self.assertRaises(UnreachableError) as e:
            ctx.step.value("a", 1)
        self.assertEqual(e.exception.code, "UNREACHABLE")

    def test_not_in_run(self) -> None:
        with mock.patch.dict(os.environ, {}, clear=True), self.assertRaises(NotInRunError) as e:
            script_runner.from_env()
        self.assertEqual(e.exception.code, "NOT_IN_RUN")
        self.assertIn("SCRIPT_RUNNER_URL", str(e.exception))


class Transport(SdkTest):
    def test_503_store_unavailable_is_retried(self) -> None:
        self.server.fail_503 = 3
        with mock.patch.object(sdk, "STORE_RETRY_FIRST_PAUSE", 0.01):
            self.assertEqual(self.ctx.step.value("a", 5), 5)
        self.assertEqual(self.server.journal["a"]["result"], 5)
        self.assertEqual(len(self.server.step_requests("/begin")), 4)

    def test_503_past_the_bound_is_a_server_error(self) -> None:
        self.server.fail_503 = 1000
        with mock.patch.object(sdk, "STORE_RETRY_FIRST_PAUSE", 0.01), mock.patch.object(sdk, "STORE_RETRY_BOUND", 0.1):
            with self.assertRaises(ServerError) as e:
                self.ctx.step.value("a", 5)
        self.assertEqual((e.exception.status, e.exception.code), (503, "STORE_UNAVAILABLE"))

    def test_a_kept_alive_connection_the_server_closed_is_retried_on_a_new_one(self) -> None:
        self.server.drop_after_answer = True
        for i in range(5):
            self.assertEqual(self.ctx.step.value(f"v-{i}", i), i)
        self.assertEqual(len(self.server.journal), 5)

    def test_steps_from_many_threads(self) -> None:
        def work(i: int) -> int:
            return self.ctx.step.run(f"item-{i}", lambda: i * i)

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(work, range(80)))
        self.assertEqual(results, [i * i for i in range(80)])
        self.assertEqual(len(self.server.journal), 80)

    def test_a_finished_threads_connection_is_not_kept(self) -> None:
        import gc

        for round_ in range(3):
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(lambda i: self.ctx.step.value(f"r{round_}-{i}", i), range(8)))
        gc.collect()
        self.assertLessEqual(len(self.ctx._http._all), 1)

    def test_labels_are_one_percent_encoded_segment(self) -> None:
        self.ctx.step.value("a/b c?d", 1)
        self.assertIn("a/b c?d", self.server.journal)
        self.assertTrue(any("/steps/a%2Fb%20c%3Fd/begin" in r[1] for r in self.server.requests))

    def test_durations(self) -> None:
        cases = {"500ms": 500, "10s": 10_000, "5m": 300_000, "1h": 3_600_000, "1m30s": 90_000,
                 "1.5": 1500, 1.5: 1500, 2: 2000, 0.3: 300, timedelta(milliseconds=250): 250}
        for given, ms in cases.items():
            self.assertEqual(sdk.duration_ms(given), ms, given)
        self.assertEqual(sdk.show_duration(200), "200ms")
        self.assertEqual(sdk.show_duration(2000), "2s")


class CommandSteps(SdkTest):
    def test_captures_output_exit_code_and_the_step_key_and_replays(self) -> None:
        log = self.marker("runs")
        argv = ["sh", "-c", f'echo ran >> {log}; echo "out $SCRIPT_STEP_KEY"; echo err >&2; exit 3']
        first = self.ctx.step.command("cmd", argv)
        self.assertEqual((first.exit_code, first.stdout, first.stderr, first.replayed),
                         (3, f"out {RUN_ID}:cmd\n", "err\n", False))
        self.assertEqual(first["exitCode"], 3)
        entry = self.server.journal["cmd"]
        self.assertEqual((entry["status"], entry["error"], entry["config"]), ("failed", "exit code 3", {"command": argv}))
        again = self.new_ctx().step.command("cmd", argv)
        self.assertEqual((again.exit_code, again.stdout, again.replayed), (3, f"out {RUN_ID}:cmd\n", True))
        self.assertEqual(self.lines("runs"), ["ran"])

    def test_a_timeout_stops_the_group_with_exit_124(self) -> None:
        began = time.monotonic()
        r = self.ctx.step.command("slow", ["sh", "-c", "sleep 5 & sleep 5; echo never"], timeout="200ms")
        # Not the 5 s of the sleeps: SIGTERM at 200 ms (at worst SIGKILL 2 s later, when the
        # reaper of the orphaned background sleep is slow to reap it).
        self.assertLess(time.monotonic() - began, 3.5)
        self.assertEqual(r.exit_code, 124)
        entry = self.server.journal["slow"]
        self.assertEqual(entry["error"], "timed out after 200ms")
        self.assertEqual(entry["config"]["timeoutMs"], 200)

    def test_the_timeout_holds_while_a_background_child_keeps_the_pipes_open(self) -> None:
        began = time.monotonic()
        r = self.ctx.step.command("bg", ["sh", "-c", "sleep 5 & echo started"], timeout="300ms")
        self.assertLess(time.monotonic() - began, 3.5)
        self.assertEqual((r.exit_code, r.stdout), (124, "started\n"))
        self.assertEqual(self.server.journal["bg"]["error"], "timed out after 300ms")

    def test_retries_go_through_the_attempts_route(self) -> None:
        count = self.marker("count")
        script = f'n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; echo try $n >&2; [ $n -ge 3 ]'
        r = self.ctx.step.command("flaky", ["sh", "-c", script], retry=3, backoff="10ms", backoff_max="50ms")
        self.assertEqual((r.exit_code, r.stderr), (0, "try 3\n"))
        attempts = self.server.step_requests("/attempts")
        self.assertEqual([a[2]["attempt"] for a in attempts], [1, 2])
        self.assertEqual(attempts[0][2]["error"], "exit code 1")
        self.assertEqual(attempts[0][2]["stderrTail"], "try 1\n")
        entry = self.server.journal["flaky"]
        self.assertEqual(entry["status"], "completed")
        self.assertEqual(entry["config"], {"command": ["sh", "-c", script], "retry": 3, "backoffMs": 10, "backoffMaxMs": 50})

    def test_a_restarted_run_resumes_a_retried_command_at_its_next_attempt(self) -> None:
        argv = ["sh", "-c", "echo attempt; exit 0"]
        config = {"command": argv, "retry": 2, "backoffMs": 10}
        with self.server.lock:
            entry = self.server.insert("resumed", "command", config, "started",
                                       {"nextAttemptAtMs": int(time.time() * 1000) + 100})
            entry["attempts"] = [{"attempt": 1, "status": "failed", "exitCode": 1, "error": "exit code 1"}]
        r = self.ctx.step.command("resumed", argv, retry=2, backoff="10ms")
        self.assertEqual((r.exit_code, r.stdout, r.replayed), (0, "attempt\n", False))
        self.assertEqual(self.server.step_requests("/attempts"), [])
        self.assertEqual(self.server.journal["resumed"]["status"], "completed")

    def test_the_last_failed_try_is_the_steps_result(self) -> None:
        r = self.ctx.step.command("never", ["false"], retry=1, backoff="5ms")
        self.assertEqual(r.exit_code, 1)
        self.assertEqual(len(self.server.journal["never"]["attempts"]), 1)
        self.assertEqual(self.server.journal["never"]["status"], "failed")

    def test_a_command_that_cannot_start_is_127(self) -> None:
        r = self.ctx.step.command("nope", ["/nonexistent/cmd"])
        self.assertEqual(r.exit_code, 127)
        self.assertTrue(r.stderr.startswith("cannot start /nonexistent/cmd: "), r.stderr)
        self.assertTrue(r.stderr.endswith("\n"))

    def test_killed_by_a_signal_is_128_plus_it(self) -> None:
        self.assertEqual(self.ctx.step.command("kill", ["sh", "-c", "kill -9 $$"]).exit_code, 137)

    def test_each_stream_is_capped(self) -> None:
        with mock.patch.object(sdk, "MAX_CAPTURE_BYTES", 1000):
            r = self.ctx.step.command("big", ["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' a"])
        self.assertEqual((r.exit_code, len(r.stdout)), (0, 1000))


class ServerSideSteps(SdkTest):
    def test_sleep_is_durable(self) -> None:
        began = time.monotonic()
        self.ctx.step.sleep("nap", "300ms")
        self.assertGreaterEqual(time.monotonic() - began, 0.25)
        self.assertEqual(self.server.journal["nap"]["status"], "completed")
        self.assertEqual(self.server.journal["nap"]["config"], {"durationMs": 300})
        began = time.monotonic()
        self.new_ctx().step.sleep("nap", "300ms")
        self.assertLess(time.monotonic() - began, 0.2)

    def test_a_resumed_sleep_waits_only_what_is_left(self) -> None:
        with self.server.lock:
            self.server.insert("nap", "sleep", {"durationMs": 10_000}, "started",
                               {"wakeAtMs": int(time.time() * 1000) + 150})
        began = time.monotonic()
        self.ctx.step.sleep("nap", 10)
        self.assertLess(time.monotonic() - began, 1.0)
        self.assertEqual(self.server.journal["nap"]["status"], "completed")

    def test_approval(self) -> None:
        threading.Timer(0.1, self.server.decide, ("ship", {"approved": True, "by": "alice", "comment": None})).start()
        a = self.ctx.step.approval("ship", "Ship it?")
        self.assertEqual((a.approved, a.by, a.comment), (True, "alice", None))
        self.assertEqual(dict(a), {"approved": True, "by": "alice", "comment": None})
        self.assertEqual(self.server.journal["ship"]["config"], {"message": "Ship it?"})

    def test_input_and_a_denied_input(self) -> None:
        threading.Timer(0.1, self.server.decide, ("age", {"value": {"age": 3}, "by": "bob"})).start()
        self.assertEqual(self.ctx.step.input("age", "How old?", {"type": "object"}), {"age": 3})
        self.assertEqual(self.server.journal["age"]["config"], {"prompt": "How old?", "schema": {"type": "object"}})
        threading.Timer(0.1, self.server.decide, ("name", None, "failed", "denied by carol")).start()
        with self.assertRaises(StepFailedError) as e:
            self.ctx.step.input("name", "Name?")
        self.assertEqual(e.exception.message, "denied by carol")
        with self.assertRaises(StepFailedError):
            self.new_ctx().step.input("name", "Name?")

    def test_wait_event_and_its_timeout(self) -> None:
        threading.Timer(0.1, self.server.decide, ("hook", {"payload": {"x": 1}})).start()
        self.assertEqual(self.ctx.step.wait_event("hook", "deploy"), {"x": 1})
        with self.assertRaises(StepFailedError) as e:
            self.ctx.step.wait_event("late", "never", timeout="100ms")
        self.assertIn("did not arrive within 100 ms", e.exception.message)
        self.assertEqual(self.server.journal["late"]["config"], {"event": "never", "timeoutMs": 100})

    def test_script_steps(self) -> None:
        self.server.scripts["echo"] = lambda args: (0, '{"said": "%s"}\n' % " ".join(args), "")
        self.server.scripts["fail"] = lambda args: (2, "partial\n", "bad\n")
        r = self.ctx.step.script("s", "echo", ["a", "b"])
        self.assertEqual((r.job_id, r.status, r.exit_code, r.stdout), ("job_1", "succeeded", 0, '{"said": "a b"}\n'))
        self.assertEqual(self.server.journal["s"]["config"], {"scriptId": "echo", "args": ["a", "b"]})
        self.assertEqual(self.new_ctx().step.script("s", "echo", ["a", "b"]).job_id, "job_1")
        # ints and bools are written as the TypeScript SDK writes them.
        self.ctx.step.script("n", "echo", [3, True, False])
        self.assertEqual(self.server.journal["n"]["config"]["args"], ["3", "true", "false"])
        for ctx in (self.ctx, self.new_ctx()):
            with self.assertRaises(StepFailedError) as e:
                ctx.step.script("f", "fail", timeout="5s", retry=1)
            self.assertEqual(e.exception.result["exitCode"], 2)
            self.assertEqual(e.exception.message, "job job_3 failed with exit code 2")
            self.assertIsNone(e.exception.error_name)
        self.assertEqual(self.server.jobs, 3)
        self.assertEqual(self.ctx.step.script_start("bg", "echo", ["x"]), "job_4")
        self.assertEqual(self.server.journal["bg"]["config"], {"scriptId": "echo", "args": ["x"], "wait": False})

    def test_progress(self) -> None:
        self.ctx.progress(2, 5, "two")
        self.ctx.progress(3, 0)
        self.assertEqual(self.server.progress, [{"current": 2, "total": 5, "message": "two"},
                                                {"current": 3, "total": 0, "message": None}])


if __name__ == "__main__":
    unittest.main()
