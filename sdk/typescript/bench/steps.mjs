// The step SDK's throughput: `args.steps` (default 1000) command steps `["true"]`, labelled
// s-1..s-N, one after another, as the Rust client's bench-workflow does, so the figures compare.
// Run it as an inline workflow with the loader; its output is {steps, ms} (a replay of a
// finished run measures replay speed instead).

/**
 * @param {{steps?: number} | null} args
 * @param {import("../index.mjs").Context} ctx
 */
export default async function main(args, ctx) {
  const steps = Number.isSafeInteger(args?.steps) && args.steps > 0 ? args.steps : 1000;
  const t0 = performance.now();
  for (let i = 1; i <= steps; i++) {
    const r = await ctx.step.command(`s-${i}`, ["true"]);
    if (r.exitCode !== 0) throw new Error(`step s-${i} exited ${r.exitCode}`);
  }
  const ms = Math.round(performance.now() - t0);
  return { steps, ms };
}
