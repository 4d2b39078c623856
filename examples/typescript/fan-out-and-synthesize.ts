// Fan-out-and-synthesize verification: each claim is checked by its own step (all at once),
// then one step summarises the checks. Ported from the seed pattern; the agent and LLM calls
// are the offline stand-in scripts examples/agents/verify-claim.sh and synthesize.sh,
// configured as "verify-claim" and "synthesize" (see examples/typescript/README.md).
//
// Launch: {"source": <this file>, "interpreter": "tsx", "args": {"claims": ["Runs journal every step.", "..."]}}
import type { Context, ScriptResult } from "../../sdk/typescript/index.mjs";

interface Args {
  claims: string[];
}

interface Check {
  index: number;
  claim: string;
  pass: boolean;
  evidence: string;
}

interface Synthesis {
  passed: number;
  failed: number;
  summary: string;
}

function parsed<T>(job: ScriptResult): T {
  return JSON.parse(job.stdout) as T;
}

export default async function main(args: Args, ctx: Context<Args>) {
  // One label per claim: the label is the step's durability key, so it carries the index.
  const checks: Check[] = await Promise.all(
    args.claims.map(async (claim, i) =>
      parsed<Check>(await ctx.step.script(`verify-claim-${i + 1}`, "verify-claim", [i + 1, claim])),
    ),
  );
  await ctx.progress(checks.length, checks.length, "claims checked");
  // A visible while before the synthesis: kill -9 here and the checks replay from the journal.
  await ctx.step.sleep("before-synthesis", "1s");
  const synthesis = parsed<Synthesis>(await ctx.step.script("synthesize-verification", "synthesize", [JSON.stringify(checks)]));
  return { checks, synthesis };
}
