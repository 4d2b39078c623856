"""The loader, run as a child process against the in-process fake server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

_HERE = os.path.dirname(os.path.abspath(__file__))
_SDK = os.path.dirname(_HERE)
sys.path.insert(0, _SDK)
sys.path.insert(0, _HERE)

from fake_server import FakeServer  # noqa: E402

LOADER = os.path.join(_SDK, "script_runner", "loader.py")


class LoaderTest(unittest.TestCase):
    def setUp(self) -> None:
        self.server = FakeServer()
        self.addCleanup(self.server.close)
        self.tmp = tempfile.mkdtemp()
        self.output = os.path.join(self.tmp, "output.json")

    def source(self, text: str) -> str:
        """A source file named as the server names it: ``source``, no extension."""
        path = os.path.join(self.tmp, "source")
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    def load(self, text: str, output: bool = True, module: bool = False, env: dict = None,
             in_run: bool = True) -> subprocess.CompletedProcess:
        path = self.source(text)
        full = {k: v for k, v in os.environ.items() if not k.startswith("SCRIPT_RUN")}
        full["PYTHONPATH"] = ""
        if in_run:
            full.update(self.server.env(SCRIPT_RUN_ARGS='{"who": "you"}', SCRIPT_RUN_ATTEMPT="2"))
        if output:
            full["SCRIPT_RUN_OUTPUT"] = self.output
        full.update(env or {})
        if module:
            argv = [sys.executable, "-m", "script_runner.loader", path]
        else:
            argv = [sys.executable, LOADER, path]
        return subprocess.run(argv, capture_output=True, text=True, env=full, cwd=_SDK if module else self.tmp,
                              timeout=30)

    def read_output(self) -> object:
        with open(self.output) as f:
            return json.load(f)

    def test_main_return_value_goes_to_script_run_output(self) -> None:
        p = self.load("""
            def main(args, ctx):
                print("chatter on stdout")
                v = ctx.step.value("v", 41)
                return {"hello": args["who"], "v": v + 1, "attempt": ctx.attempt, "run": ctx.run_id}
        """)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.read_output(), {"hello": "you", "v": 42, "attempt": 2, "run": "run_1"})
        self.assertEqual(p.stdout, "chatter on stdout\n")

    def test_without_script_run_output_it_prints_the_value(self) -> None:
        p = self.load("def main(args, ctx):\n    return [1, None]\n", output=False)
        self.assertEqual((p.returncode, p.stdout), (0, "[1, null]\n"), p.stderr)

    def test_async_main_and_the_module_form(self) -> None:
        p = self.load("""
            import asyncio
            async def main(args, ctx):
                await asyncio.sleep(0.01)
                return ctx.step.run("r", lambda: "async ok")
        """, module=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.read_output(), "async ok")

    def test_a_failed_step_exits_1(self) -> None:
        p = self.load("""
            def main(args, ctx):
                def boom():
                    raise RuntimeError("it broke")
                ctx.step.run("explode", boom)
        """)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stderr, 'script-runner: step "explode" failed: it broke\n')
        self.assertFalse(os.path.exists(self.output))

    def test_a_usage_error_exits_2(self) -> None:
        p = self.load("def main(args, ctx):\n    ctx.step.command('c', ['true'], retry=500)\n")
        self.assertEqual(p.returncode, 2)
        self.assertTrue(p.stderr.startswith("script-runner: USAGE: retry 500"), p.stderr)

    def test_a_step_that_could_not_be_run_exits_3(self) -> None:
        p = self.load("""
            def main(args, ctx):
                ctx.step.value("a", 1)
                ctx.step.sleep("a", "1s")
        """)
        self.assertEqual(p.returncode, 3)
        self.assertTrue(p.stderr.startswith("script-runner: STEP_DIVERGED: step \"a\" was journaled"), p.stderr)
        self.server.max_steps = 0
        p = self.load("def main(args, ctx):\n    ctx.step.value('b', 1)\n")
        self.assertEqual(p.returncode, 3)
        self.assertTrue(p.stderr.startswith("script-runner: LIMIT_EXCEEDED: "), p.stderr)

    def test_not_in_a_run_exits_3(self) -> None:
        p = self.load("def main(args, ctx):\n    return 1\n", in_run=False)
        self.assertEqual(p.returncode, 3)
        self.assertIn("script-runner: NOT_IN_RUN: not inside a script-runner workflow run", p.stderr)

    def test_a_source_without_main_exits_2(self) -> None:
        p = self.load("x = 1\n")
        self.assertEqual(p.returncode, 2)
        self.assertIn("defines no main(args, ctx)", p.stderr)

    def test_any_other_error_prints_its_stack_and_exits_1(self) -> None:
        p = self.load("def main(args, ctx):\n    raise KeyError('missing')\n")
        self.assertEqual(p.returncode, 1)
        self.assertIn("Traceback", p.stderr)
        self.assertIn("KeyError: 'missing'", p.stderr)

    def test_a_return_value_that_is_not_json_exits_1(self) -> None:
        p = self.load("def main(args, ctx):\n    return object()\n")
        self.assertEqual(p.returncode, 1)
        self.assertIn("not JSON", p.stderr)
        self.assertFalse(os.path.exists(self.output))

    def test_the_loaders_folder_does_not_shadow_the_workflows_imports(self) -> None:
        p = self.load("import errors\ndef main(args, ctx):\n    return 1\n")
        self.assertEqual(p.returncode, 1)  # no module named errors, not script_runner/errors.py
        self.assertIn("ModuleNotFoundError", p.stderr)

    def test_a_stop_signal_stops_the_command_step_group_then_the_loader(self) -> None:
        pidfile = os.path.join(self.tmp, "pid")
        path = self.source(f"""
            def main(args, ctx):
                ctx.step.command("long", ["sh", "-c", "echo $$ > {pidfile}; exec sleep 30"])
        """)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCRIPT_RUN")}
        env.update(self.server.env())
        proc = subprocess.Popen([sys.executable, LOADER, path], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while not _read(pidfile):
                self.assertLess(time.monotonic(), deadline, "the command step never started")
                time.sleep(0.02)
            child = int(_read(pidfile))
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        self.assertEqual(proc.returncode, -signal.SIGTERM)
        self.assertFalse(_alive(child), "the command's group was not stopped")
        self.assertNotIn("long", self.server.journal)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


if __name__ == "__main__":
    unittest.main()
