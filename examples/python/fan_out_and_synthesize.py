"""Fan-out-and-synthesize verification: each claim is checked by its own step (all at once, on
a thread pool), then one step summarises the checks. Ported from the seed pattern; the agent
and LLM calls are the offline stand-in scripts ``examples/agents/verify-claim.sh`` and
``synthesize.sh``, configured as ``verify-claim`` and ``synthesize`` (see
``examples/python/README.md``).

Launch: ``{"source": <this file>, "interpreter": "python", "args": {"claims": ["Runs journal every step.", "..."]}}``
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

from script_runner import Context, ScriptResult


def parsed(job: ScriptResult) -> Dict[str, Any]:
    """A stand-in script's stdout: one JSON object."""
    value: Dict[str, Any] = json.loads(job.stdout)
    return value


def main(args: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    """Checks every claim of ``args["claims"]`` concurrently, then synthesises the checks."""
    claims: List[str] = args["claims"]

    def check(index: int) -> Dict[str, Any]:
        # One label per claim: the label is the step's durability key, so it carries the index.
        return parsed(ctx.step.script(f"verify-claim-{index}", "verify-claim", [str(index), claims[index - 1]]))

    # Steps may run from several threads at once; map keeps the claims' order.
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(claims)))) as pool:
        checks = list(pool.map(check, range(1, len(claims) + 1)))
    ctx.progress(len(checks), len(checks), "claims checked")
    # A visible while before the synthesis: kill -9 here and the checks replay from the journal.
    ctx.step.sleep("before-synthesis", "1s")
    synthesis = parsed(
        ctx.step.script("synthesize-verification", "synthesize", [json.dumps(checks, separators=(",", ":"))])
    )
    return {"checks": checks, "synthesis": synthesis}
