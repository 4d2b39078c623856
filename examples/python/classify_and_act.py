"""Classify-and-act triage: a cheap classifier decides whether an inbound item is worth a
follow-up task. Ported from the seed pattern; the LLM classifier and the agent task are the
offline stand-in scripts ``examples/agents/classify.sh`` and ``follow-up.sh``, configured in
scripts.json as ``classify`` and ``follow-up`` (see ``examples/python/README.md``).

Launch: ``{"source": <this file>, "interpreter": "python", "args": {"item": "The API is down"}}``
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
    """Classifies ``args["item"]``; only a high-urgency item gets a follow-up task."""
    classification = parsed(ctx.step.script("classify-item", "classify", [args["item"]]))
    # A visible while, so a test can kill -9 the process here and see the classification replay.
    ctx.step.sleep("cool-down", "1s")
    if classification["urgency"] != "high":
        return {"classification": classification, "createdTask": False}
    follow_up = parsed(
        ctx.step.script(
            "high-urgency-follow-up",
            "follow-up",
            [classification["kind"], args["item"], classification["nextAction"]],
        )
    )
    return {"classification": classification, "createdTask": True, "followUp": follow_up}
