/**
 * The flows page (`#/flows`): the shipped OOMOL flows (`GET /api/flows`) as a node list and
 * their connections, with a "run durable" button (`POST /api/script-runs {"flow"}`) that shows
 * the launched run's status and progress live, linking to its run page. A server without the
 * route (404) shows an empty list.
 */
import { ApiError, get, post } from "./api.js";
import { debounce, fill, h, link, statusBadge } from "./dom.js";
import { followRun, progressView } from "./runs.js";

const TERMINAL = new Set(["completed", "failed", "cancelled", "aborted_limit"]);

export async function render(root, _params, ctx) {
  root.append(h("h1", null, "Flows"));
  let flows = [];
  try {
    flows = (await get("/api/flows", { signal: ctx.signal })).flows || [];
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err;
  }
  if (!flows.length) root.append(h("p", { class: "empty" }, "This server has no flows."));
  for (const f of flows) root.append(flowCard(f, ctx));
}

function describeInput(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function flowCard(f, ctx) {
  const status = h("div", { class: "flow-status", testid: "flow-run-status" });
  const runButton = h("button", { type: "button", class: "primary", testid: "flow-run" }, "Run durable");
  runButton.addEventListener("click", async () => {
    runButton.disabled = true;
    try {
      const { run } = await post("/api/script-runs", { flow: f.name }, { signal: ctx.signal });
      watch(run, status, ctx, () => { runButton.disabled = false; });
    } catch (err) {
      ctx.fail(err);
      runButton.disabled = false;
    }
  });
  const nodes = f.nodes || [];
  const connections = f.connections || [];
  return h("section", { class: "card flow", testid: `flow-${f.name}` },
    h("div", { class: "title-row" }, h("h2", null, f.name), runButton),
    f.description ? h("p", null, f.description) : null,
    // A flow that does not load says why (its nodes and connections are then empty).
    f.error ? h("pre", { class: "error-text", testid: "flow-error" }, f.error) : null,
    h("div", { class: "columns" },
      h("div", null, h("h3", null, `Nodes (${nodes.length})`),
        h("ul", { class: "list nodes", testid: "flow-nodes" }, nodes.map((n) =>
          h("li", null, h("strong", null, n.id), " ", h("span", { class: "tag" }, n.block ?? "value"),
            Object.keys(n.inputs || {}).length
              ? h("div", { class: "muted small" }, Object.entries(n.inputs).map(([k, v]) => `${k} = ${describeInput(v)}`).join(", "))
              : null)))),
      h("div", null, h("h3", null, `Connections (${connections.length})`),
        h("ul", { class: "list connections", testid: "flow-connections" }, connections.length
          ? connections.map((c) => h("li", null, h("code", null, `${c.from?.node}.${c.from?.output} -> ${c.to?.node}.${c.to?.input}`)))
          : h("li", { class: "empty" }, "none")))),
    status);
}

/** Shows a launched run's status and progress, following its event stream until it ends. */
function watch(run, status, ctx, done) {
  const draw = (r) => {
    fill(status, "Run ", link("runs", r.id), " ", statusBadge(r.status), " ", progressView(r.progress));
    if (TERMINAL.has(r.status)) done();
  };
  draw(run);
  let ended = TERMINAL.has(run.status);
  const enc = encodeURIComponent(run.id);
  const reload = debounce(() => get(`/api/script-runs/${enc}`, { signal: ctx.signal }).then((a) => {
    ended = TERMINAL.has(a.run.status);
    draw(a.run);
  }).catch(ctx.fail), 150);
  ctx.signal.addEventListener("abort", () => reload.cancel());
  followRun(run.id, ctx, () => ended, reload);
}
