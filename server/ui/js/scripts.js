/**
 * The scripts page (`#/scripts`): the catalog (`GET /scripts`) with each script's rules, and a
 * run form per script (`POST /run`, sync or async) that shows the result: status, exit code,
 * stdout and stderr for a sync run, a link to the job page for an async one.
 */
import { post, get } from "./api.js";
import { fill, formatDuration, h, link, statusBadge } from "./dom.js";

export async function render(root, _params, ctx) {
  const { scripts } = await get("/scripts", { signal: ctx.signal });
  root.append(h("h1", null, "Scripts"));
  if (!scripts.length) root.append(h("p", { class: "empty" }, "No scripts are configured."));
  for (const s of scripts) root.append(scriptCard(s, root, ctx));
}

function scriptCard(s, root, ctx) {
  const args = s.args || {};
  const argsInput = h("textarea", { testid: `run-args-${s.id}`, rows: 3, placeholder: "one argument per line", "aria-label": "arguments" });
  const mode = h("select", { testid: `run-mode-${s.id}`, "aria-label": "mode" },
    ["sync", "async"].map((m) => h("option", { value: m, selected: m === s.mode }, m)));
  const submit = h("button", { type: "submit", class: "primary", testid: `run-submit-${s.id}` }, "Run");
  const slot = h("div", { class: "result-slot" });
  const form = h("form", { class: "run-form" },
    h("label", null, "Arguments", argsInput),
    h("div", { class: "form-row" }, h("label", null, "Mode ", mode), submit));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    // One argument per line; a last newline does not add an empty argument.
    const text = argsInput.value.replace(/\r/g, "").replace(/\n$/, "");
    const lines = text === "" ? [] : text.split("\n");
    submit.disabled = true;
    for (const old of root.querySelectorAll('[data-testid="run-result"]')) old.remove();
    const result = h("div", { class: "result", testid: "run-result" }, h("p", { class: "muted" }, "Running…"));
    slot.append(result);
    try {
      const answer = await post("/run", { scriptId: s.id, args: lines, mode: mode.value }, { signal: ctx.signal });
      fill(result, ...renderResult(answer));
    } catch (err) {
      result.remove();
      ctx.fail(err);
    } finally {
      submit.disabled = false;
    }
  });

  return h("section", { class: "card script", testid: `script-${s.id}` },
    h("h2", null, s.id, " ", h("span", { class: "tag" }, s.mode)),
    s.description ? h("p", null, s.description) : null,
    h("dl", { class: "facts" },
      h("dt", null, "mode"), h("dd", null, s.mode),
      h("dt", null, "timeout"), h("dd", null, s.timeoutSec ? formatDuration(s.timeoutSec * 1000) : "none"),
      h("dt", null, "max args"), h("dd", null, String(args.maxItems ?? "—")),
      h("dt", null, "arg pattern"), h("dd", null, h("code", null, args.itemPattern ?? "—")),
      h("dt", null, "arg max length"), h("dd", null, String(args.itemMaxLength ?? "—")),
      h("dt", null, "concurrency"), h("dd", null, s.concurrency == null ? "no limit" : String(s.concurrency))),
    form,
    slot);
}

function renderResult(answer) {
  if (answer.stdout === undefined && answer.jobId) {
    // async: 202 {jobId, status}
    return [
      h("p", null, "Started ", statusBadge(answer.status, "run-status"), " ",
        link("jobs", answer.jobId, `job ${answer.jobId}`, "run-job-link")),
    ];
  }
  return [
    h("p", null, statusBadge(answer.status, "run-status"), " exit code ",
      h("strong", { testid: "run-exit-code" }, answer.code == null ? "—" : String(answer.code)),
      " in ", formatDuration(answer.durationMs), " · ", link("jobs", answer.jobId, `job ${answer.jobId}`)),
    answer.error ? h("p", { class: "error-text" }, answer.error) : null,
    h("h3", null, "stdout"),
    h("pre", { class: "log small-log", testid: "run-stdout" }, answer.stdout ?? ""),
    h("h3", null, "stderr"),
    h("pre", { class: "log small-log", testid: "run-stderr" }, answer.stderr ?? ""),
  ];
}
