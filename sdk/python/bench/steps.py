"""Benchmark workflow: ``args["steps"]`` (default 1000) command steps ``["true"]`` labelled
``s-1`` .. ``s-N``, run one after another; returns ``{"steps": n, "ms": elapsed_ms}``, the
step throughput of the Python SDK against a real server (first execution, or a replay when the
run restarts). The TypeScript twin is ``sdk/typescript/bench/steps.mjs``.

Launch: ``{"source": <this file>, "interpreter": "python", "args": {"steps": 1000}}``
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from script_runner import Context


def main(args: Optional[Dict[str, Any]], ctx: Context) -> Dict[str, Any]:
    """Runs the steps and times them."""
    n = int((args or {}).get("steps", 1000))
    began = time.perf_counter()
    for i in range(1, n + 1):
        ctx.step.command(f"s-{i}", ["true"])
    return {"steps": n, "ms": round((time.perf_counter() - began) * 1000, 1)}
