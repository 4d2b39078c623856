// Loop-until-done refinement: revise and review a draft, pass after pass, until the reviewer
// says it is done (or the passes run out), keeping each pass in the journal. Ported from the
// seed pattern; the LLM calls are the offline stand-in scripts examples/agents/revise.sh and
// review.sh, configured as "revise" and "review" (see examples/typescript/README.md).
//
// Launch: {"source": <this file>, "interpreter": "tsx",
//          "args": {"rubric": "Clear, specific.", "startingDraft": "Durable workflows.", "maxPasses": 3}}
import type { Context, ScriptResult } from "../../sdk/typescript/index.mjs";

interface Args {
  rubric: string;
  startingDraft: string;
  maxPasses?: number;
}

interface Revision {
  pass: number;
  draft: string;
}

interface Review {
  pass: number;
  done: boolean;
  feedback: string;
}

function parsed<T>(job: ScriptResult): T {
  return JSON.parse(job.stdout) as T;
}

export default async function main(args: Args, ctx: Context<Args>) {
  let draft = args.startingDraft;
  const maxPasses = args.maxPasses ?? 3;
  for (let pass = 1; pass <= maxPasses; pass++) {
    // Labels carry the pass number: each pass is its own journaled step.
    const revision = parsed<Revision>(await ctx.step.script(`revise-pass-${pass}`, "revise", [pass, args.rubric, draft]));
    draft = revision.draft;
    // A visible while between revising and reviewing.
    await ctx.step.sleep(`think-pass-${pass}`, "1s");
    const review = parsed<Review>(await ctx.step.script(`review-pass-${pass}`, "review", [pass, args.rubric, draft]));
    await ctx.progress(pass, maxPasses, review.feedback);
    if (review.done) {
      return { done: true, pass, draft, feedback: review.feedback };
    }
  }
  return { done: false, passes: maxPasses, draft };
}
