/**
 * The overview page (`#/`): counts and lists of running and queued jobs, runs waiting for a
 * person (approval, input or event), and recent failures of jobs and runs; redrawn when the
 * server's lifecycle feed (`GET /events`) reports a change.
 */
import { follow, get } from "./api.js";
import { debounce, fill, h, link, shortTime, statusBadge } from "./dom.js";

const FAILED_JOBS = ["failed", "timed_out"];
const FAILED_RUNS = ["failed", "aborted_limit"];

export async function render(root, _params, ctx) {
  const counts = {
    running: h("div", { class: "count-value", testid: "overview-running" }, "…"),
    queued: h("div", { class: "count-value", testid: "overview-queued" }, "…"),
    waiting: h("div", { class: "count-value", testid: "overview-waiting" }, "…"),
    failures: h("div", { class: "count-value", testid: "overview-failures" }, "…"),
  };
  const lists = {
    running: h("ul", { class: "list", testid: "overview-running-list" }),
    waiting: h("ul", { class: "list", testid: "overview-waiting-list" }),
    failures: h("ul", { class: "list", testid: "overview-failures-list" }),
  };
  const tile = (label, el) => h("div", { class: "count card" }, el, h("div", { class: "count-label" }, label));
  root.append(
    h("h1", null, "Overview"),
    h("div", { class: "counts" },
      tile("running jobs", counts.running),
      tile("queued jobs", counts.queued),
      tile("runs waiting", counts.waiting),
      tile("recent failures", counts.failures)),
    h("div", { class: "columns" },
      h("section", { class: "card" }, h("h2", null, "Running and queued jobs"), lists.running),
      h("section", { class: "card" }, h("h2", null, "Runs waiting for a person"), lists.waiting),
      h("section", { class: "card wide" }, h("h2", null, "Recent failures"), lists.failures)),
  );

  const opts = { signal: ctx.signal };
  async function load() {
    const since = Date.now() - 24 * 3600 * 1000;
    const [running, queued, waiting, ...failed] = await Promise.all([
      get("/jobs?status=running&limit=50", opts),
      get("/jobs?status=queued&limit=50", opts),
      get("/api/script-runs?status=awaiting&limit=50", opts),
      ...FAILED_JOBS.map((s) => get(`/jobs?status=${s}&limit=10`, opts)),
      ...FAILED_RUNS.map((s) => get(`/api/script-runs?status=${s}&limit=10`, opts)),
    ]);
    counts.running.textContent = String(running.total);
    counts.queued.textContent = String(queued.total);
    counts.waiting.textContent = String(waiting.total);

    const jobItem = (j) =>
      h("li", null, statusBadge(j.status), " ", link("jobs", j.jobId), " ", h("span", { class: "muted" }, j.scriptId), " ",
        shortTime(j.startedAt || j.createdAt));
    const runItem = (r, extra) =>
      h("li", null, statusBadge(r.status), " ", link("runs", r.id), " ", h("span", { class: "muted" }, r.scriptName || r.workflowId || ""), " ",
        extra, " ", shortTime(r.finishedAt || r.createdAt));
    const active = [...running.jobs, ...queued.jobs];
    fill(lists.running, active.length ? active.map(jobItem) : h("li", { class: "empty" }, "Nothing running."));
    fill(lists.waiting, waiting.runs.length
      ? waiting.runs.map((r) => runItem(r, r.waitingFor ? h("span", null, `${r.waitingFor.kind} `, h("strong", null, r.waitingFor.label)) : null))
      : h("li", { class: "empty" }, "No run is waiting."));

    const failures = [
      ...failed.slice(0, FAILED_JOBS.length).flatMap((p) => p.jobs.map((j) => ({ at: j.endedAt || j.createdAt, el: jobItem(j) }))),
      ...failed.slice(FAILED_JOBS.length).flatMap((p) => p.runs.map((r) => ({ at: r.finishedAt || r.createdAt, el: runItem(r, null) }))),
    ]
      .filter((f) => new Date(f.at).getTime() >= since)
      .sort((a, b) => String(b.at).localeCompare(String(a.at)))
      .slice(0, 15);
    counts.failures.textContent = String(failures.length);
    fill(lists.failures, failures.length ? failures.map((f) => f.el) : h("li", { class: "empty" }, "No failures in the last 24 hours."));
  }

  await load();
  const reload = debounce(() => load().catch(ctx.fail), 250);
  ctx.signal.addEventListener("abort", () => reload.cancel());
  follow("/events", { signal: ctx.signal, onEvent: (e) => e.event !== "message" && reload() }).catch(ctx.fail);
}
