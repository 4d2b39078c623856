"""Loop-until-done refinement: revise and review a draft, pass after pass, until the reviewer
says it is done (or the passes run out), keeping each pass in the journal. Ported from the seed
pattern; the LLM calls are the offline stand-in scripts ``examples/agents/revise.sh`` and
``review.sh``, configured as ``revise`` and ``review`` (see ``examples/python/README.md``).

Launch: ``{"source": <this file>, "interpreter": "python",
"args": {"rubric": "Clear, specific.", "startingDraft": "Durable workflows.", "maxPasses": 3}}``
"""

from __future__ import annotations

import json
from typing import Any, Dict

from script_runner import Context, ScriptResult


def parsed(job: ScriptResult) -> Dict[str, Any]:
    """A stand-in script's stdout: one JSON object."""
    value: Dict[str, Any] = json.loads(job.stdout)
    return value


def main(args: Dict[str, Any], ctx: Context) -> Dict[str, Any]:
    """Revises ``args["startingDraft"]`` against ``args["rubric"]`` until a review passes it."""
    draft: str = args["startingDraft"]
    max_passes: int = args.get("maxPasses", 3)
    for n in range(1, max_passes + 1):
        # Labels carry the pass number: each pass is its own journaled step.
        revision = parsed(ctx.step.script(f"revise-pass-{n}", "revise", [str(n), args["rubric"], draft]))
        draft = revision["draft"]
        # A visible while between revising and reviewing.
        ctx.step.sleep(f"think-pass-{n}", "1s")
        review = parsed(ctx.step.script(f"review-pass-{n}", "review", [str(n), args["rubric"], draft]))
        ctx.progress(n, max_passes, review["feedback"])
        if review["done"]:
            return {"done": True, "pass": n, "draft": draft, "feedback": review["feedback"]}
    return {"done": False, "passes": max_passes, "draft": draft}
