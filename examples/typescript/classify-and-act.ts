// Classify-and-act triage: a cheap classifier decides whether an inbound item is worth a
// follow-up task. Ported from the seed pattern; the LLM classifier and the agent task are the
// offline stand-in scripts examples/agents/classify.sh and follow-up.sh, configured in
// scripts.json as "classify" and "follow-up" (see examples/typescript/README.md).
//
// Launch: {"source": <this file>, "interpreter": "tsx", "args": {"item": "The API is down"}}
import type { Context, ScriptResult } from "../../sdk/typescript/index.mjs";

interface Args {
  item: string;
}

interface Classification {
  kind: "bug" | "docs" | "question" | "ops";
  urgency: "low" | "medium" | "high";
  nextAction: string;
}

interface FollowUp {
  taskId: string;
  kind: string;
  priority: number;
  status: string;
}

/** A stand-in script's stdout, one JSON object. */
function parsed<T>(job: ScriptResult): T {
  return JSON.parse(job.stdout) as T;
}

export default async function main(args: Args, ctx: Context<Args>) {
  const classification = parsed<Classification>(await ctx.step.script("classify-item", "classify", [args.item]));
  // A visible while, so a test can kill -9 the process here and see the classification replay.
  await ctx.step.sleep("cool-down", "1s");
  if (classification.urgency !== "high") {
    return { classification, createdTask: false };
  }
  const followUp = parsed<FollowUp>(
    await ctx.step.script("high-urgency-follow-up", "follow-up", [classification.kind, args.item, classification.nextAction]),
  );
  return { classification, createdTask: true, followUp };
}
