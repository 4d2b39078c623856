/**
 * The workflow run pages: the list (`#/runs`, redrawn on lifecycle events) and one run
 * (`#/runs/<id>`): its facts, output, what it waits for, the actions its status allows
 * (approve or deny with a note, pause, resume, cancel), and its journal as a timeline with a
 * "fork from here" button per step; redrawn on the run's own event stream.
 */
import { del, follow, get, post, query } from "./api.js";
import { debounce, elapsed, fill, formatDuration, formatTime, h, link, pager, pretty, statusBadge, table } from "./dom.js";

const STATUSES = ["running", "awaiting", "paused", "completed", "failed", "cancelled", "aborted_limit"];
const TERMINAL = new Set(["completed", "failed", "cancelled", "aborted_limit"]);
const PAGE = 50;
const RUN_LOG_LINES = 200;
const state = { status: "", offset: 0 };

/** "2/3 testing done", or an em dash. */
export function progressText(p) {
  if (!p) return "—";
  return `${p.current}/${p.total}${p.message ? ` ${p.message}` : ""}`;
}

/** A progress bar and its text (the bar is a `<progress>`, so no inline style is needed). */
export function progressView(p, testid) {
  const wrap = h("span", { class: "progress", testid });
  if (p && p.total > 0) wrap.append(h("progress", { max: p.total, value: Math.min(p.current, p.total) }), " ");
  wrap.append(progressText(p));
  return wrap;
}

export async function renderList(root, _params, ctx) {
  const opts = { signal: ctx.signal };
  const statusSel = h("select", { "aria-label": "status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === state.status }, s)));
  const { prev, next, info, show } = pager(state, PAGE, () => load(), ctx.fail);
  const holder = h("div", { class: "table-wrap" });
  root.append(h("h1", null, "Workflow runs"),
    h("div", { class: "toolbar" }, h("label", null, "Status ", statusSel), h("span", { class: "spacer" }), prev, info, next),
    holder);

  async function load() {
    const page = await get(`/api/script-runs${query({ status: state.status, limit: PAGE, offset: state.offset })}`, opts);
    const rows = page.runs.map((r) =>
      h("tr", { testid: "run-row", "data-run-id": r.id },
        h("td", null, link("runs", r.id)),
        h("td", null, r.scriptName || r.workflowId || r.flow || "inline"),
        h("td", null, statusBadge(r.status)),
        h("td", { class: "num" }, String(r.attempt ?? "—")),
        h("td", null, formatTime(r.createdAt)),
        h("td", null, progressView(r.progress))));
    fill(holder, table("runs-table", ["id", "name", "status", "attempt", "created", "progress"], rows));
    if (!rows.length) holder.append(h("p", { class: "empty" }, "No runs."));
    show(page.runs.length, page.total);
  }
  const reload = debounce(() => load().catch(ctx.fail), 300);
  ctx.signal.addEventListener("abort", () => reload.cancel());
  statusSel.addEventListener("change", () => { state.status = statusSel.value; state.offset = 0; load().catch(ctx.fail); });
  await load();
  follow("/events?kind=run", { signal: ctx.signal, onEvent: (e) => e.event.startsWith("run.") && reload() }).catch(ctx.fail);
}

export async function renderRun(root, { id }, ctx) {
  const opts = { signal: ctx.signal };
  const enc = encodeURIComponent(id);
  const els = {
    status: h("dd", { testid: "run-status" }),
    attempt: h("dd", { testid: "run-attempt" }),
    progress: h("dd", { testid: "run-progress" }),
    waiting: h("dd", { testid: "run-waiting" }),
    error: h("dd", { testid: "run-error" }),
    duration: h("dd", null),
    facts: h("dl", { class: "facts" }),
    output: h("pre", { class: "json", testid: "run-output" }),
    actions: h("div", { class: "actions" }),
    journal: h("ol", { class: "journal", testid: "journal" }),
    warnings: h("ul", { class: "list warnings" }),
    stdout: h("pre", { class: "log" }),
    stderr: h("pre", { class: "log" }),
  };
  // The latest execution's own output (what the workflow printed), read when opened.
  els.logs = h("details", { class: "card run-logs" },
    h("summary", null, h("h2", null, `Execution log (last ${RUN_LOG_LINES} lines)`)),
    h("h3", null, "stderr"), els.stderr, h("h3", null, "stdout"), els.stdout);
  async function loadLogs() {
    if (!els.logs.open) return;
    for (const stream of ["stderr", "stdout"]) {
      const path = `/api/script-runs/${enc}/logs`;
      const probe = await get(`${path}${query({ stream, unit: "lines", offset: 0, limit: 1 })}`, opts);
      const from = Math.max(0, probe.totalLines - RUN_LOG_LINES);
      const page = await get(`${path}${query({ stream, unit: "lines", offset: from, limit: RUN_LOG_LINES })}`, opts);
      els[stream].textContent = page.lines.length ? `${page.lines.join("\n")}\n` : "";
      els[stream].scrollTop = els[stream].scrollHeight;
    }
  }
  els.logs.addEventListener("toggle", () => loadLogs().catch(ctx.fail));
  const note = h("textarea", { testid: "run-note", rows: 2, placeholder: "a note for the decision (optional)", "aria-label": "note" });
  const title = h("h1", null, "Run ", h("code", null, id));
  root.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/runs" }, "Runs"), " / ", id),
    h("div", { class: "title-row" }, title),
    h("section", { class: "card" }, els.facts, els.warnings),
    els.actions,
    h("section", { class: "card" }, h("h2", null, "Output"), els.output),
    h("section", { class: "card" }, h("h2", null, "Journal"), els.journal),
    els.logs,
  );
  document.title = `Run ${id} · script-runner`;

  let run = null;
  async function act(promise) {
    for (const b of els.actions.querySelectorAll("button")) b.disabled = true;
    try {
      const answer = await promise();
      if (answer?.run && answer.run.id === id) draw(answer.run, null);
      await load();
    } catch (err) {
      ctx.fail(err);
    } finally {
      // Buttons are rebuilt only when the allowed actions change (a test holding one stays valid).
      for (const b of els.actions.querySelectorAll("button")) b.disabled = false;
    }
  }

  function button(label, testid, cls, fn) {
    const b = h("button", { type: "button", class: cls, testid }, label);
    b.addEventListener("click", () => act(fn));
    return b;
  }

  let actionsKey = null;
  function drawActions(r) {
    // Rebuilt only when what is allowed changes, so a note being typed keeps its focus.
    const key = `${r.status}|${r.waitingFor?.kind ?? ""}|${r.waitingFor?.label ?? ""}`;
    if (key === actionsKey) return;
    actionsKey = key;
    const parts = [];
    const w = r.waitingFor;
    if (r.status === "awaiting" && w?.kind === "approval") {
      const decide = (approved) => async () => {
        const answer = await post(`/api/script-runs/${enc}/approvals/${encodeURIComponent(w.label)}`,
          { approved, by: "dashboard", comment: note.value || undefined }, opts);
        note.value = "";
        return answer;
      };
      parts.push(h("div", { class: "decision" },
        h("p", null, "Approval ", h("strong", null, w.label), w.message ? [": ", w.message] : null),
        note,
        h("div", { class: "buttons" },
          button("Approve", "run-approve", "primary", decide(true)),
          button("Deny", "run-deny", "danger", decide(false)))));
    }
    if (r.status === "awaiting" && w?.kind === "input") {
      const value = h("textarea", { testid: "run-input-value", rows: 3, placeholder: "the value as JSON (text that is not JSON is sent as a string)", "aria-label": "value" });
      const submit = async () => {
        let v;
        try {
          v = JSON.parse(value.value);
        } catch {
          v = value.value;
        }
        return post(`/api/script-runs/${enc}/inputs/${encodeURIComponent(w.label)}`, { value: v, by: "dashboard" }, opts);
      };
      parts.push(h("div", { class: "decision" },
        h("p", null, "Input ", h("strong", null, w.label), w.prompt ? [": ", w.prompt] : null),
        w.schema ? h("pre", { class: "json" }, pretty(w.schema)) : null,
        value,
        h("div", { class: "buttons" }, button("Submit input", "run-input-submit", "primary", submit))));
    }
    const row = [];
    if (r.status === "running" || r.status === "awaiting") row.push(button("Pause", "run-pause", "", () => post(`/api/script-runs/${enc}/pause`, {}, opts)));
    if (r.status === "paused") row.push(button("Resume", "run-resume", "primary", () => post(`/api/script-runs/${enc}/resume`, {}, opts)));
    if (!TERMINAL.has(r.status)) row.push(button("Cancel run", "run-cancel", "danger", () => del(`/api/script-runs/${enc}`, {}, opts)));
    if (row.length) parts.push(h("div", { class: "buttons" }, row));
    fill(els.actions, parts.length ? h("section", { class: "card" }, h("h2", null, "Actions"), parts) : null);
  }

  function draw(r, journal) {
    run = r;
    fill(els.status, statusBadge(r.status));
    els.attempt.textContent = String(r.attempt ?? "—");
    fill(els.progress, progressView(r.progress));
    const w = r.waitingFor;
    els.waiting.textContent = w
      ? `${w.kind} “${w.label}”${w.message ? `: ${w.message}` : ""}${w.prompt ? `: ${w.prompt}` : ""}${w.event ? ` (event ${w.event})` : ""}${w.deadlineAt ? `, until ${formatTime(w.deadlineAt)}` : ""}`
      : "—";
    els.error.textContent = r.error ?? "—";
    els.error.classList.toggle("error-text", Boolean(r.error));
    fill(els.facts,
      h("dt", null, "status"), els.status,
      h("dt", null, "attempt"), els.attempt,
      h("dt", null, "progress"), els.progress,
      h("dt", null, "waiting for"), els.waiting,
      h("dt", null, "error"), els.error,
      h("dt", null, "workflow"), h("dd", null, r.scriptName || r.workflowId || r.flow || "inline"),
      h("dt", null, "created"), h("dd", null, formatTime(r.createdAt)),
      h("dt", null, "started"), h("dd", null, formatTime(r.startedAt)),
      h("dt", null, "finished"), h("dd", null, formatTime(r.finishedAt)),
      h("dt", null, "duration"), els.duration,
      h("dt", null, "args"), h("dd", null, h("code", null, JSON.stringify(r.args ?? null))),
      r.forkedFrom ? [h("dt", null, "forked from"), h("dd", null, link("runs", r.forkedFrom.runId ?? r.forkedFrom.id ?? r.forkedFrom, null))] : null,
      r.nextAttemptAt ? [h("dt", null, "next attempt"), h("dd", null, formatTime(r.nextAttemptAt))] : null);
    fill(els.warnings, (r.warnings || []).map((w) => h("li", { class: "warning" }, typeof w === "string" ? w : JSON.stringify(w))));
    els.duration.textContent = formatDuration(elapsed(r.startedAt, r.finishedAt));
    els.output.textContent = pretty(r.output);
    drawActions(r);
    if (journal) drawJournal(journal);
  }

  function drawJournal(journal) {
    if (!journal.length) {
      fill(els.journal, h("li", { class: "empty" }, "No steps journaled yet."));
      return;
    }
    fill(els.journal, journal.map((s) => {
      const fork = h("button", { type: "button", class: "small", testid: "step-fork", title: `a new run that replays the steps before “${s.stepKey}” and runs from it` }, "Fork from here");
      fork.addEventListener("click", async () => {
        fork.disabled = true;
        try {
          const answer = await post(`/api/script-runs/${enc}/fork`, { fromStep: s.stepKey }, opts);
          location.hash = `#/runs/${encodeURIComponent(answer.run.id)}`;
        } catch (err) {
          ctx.fail(err);
          fork.disabled = false;
        }
      });
      const attempts = (s.attempts?.length ?? 0) + 1;
      return h("li", { class: `journal-step step-${s.status}`, testid: "journal-step", "data-label": s.stepKey },
        h("div", { class: "step-head" },
          h("strong", { class: "step-label", testid: "step-label" }, s.stepKey),
          h("span", { class: "tag", testid: "step-kind" }, s.stepType),
          statusBadge(s.status, "step-status"),
          h("span", { class: "muted", testid: "step-duration" }, formatDuration(s.durationMs ?? elapsed(s.startedAt, s.completedAt))),
          h("span", { class: "muted", testid: "step-attempt" }, `${attempts} ${attempts === 1 ? "attempt" : "attempts"}`),
          s.jobId ? link("jobs", s.jobId, `job ${s.jobId}`) : null,
          h("span", { class: "spacer" }),
          h("span", { class: "muted small" }, formatTime(s.startedAt)),
          fork),
        h("pre", { class: "step-output", testid: "step-output" }, s.result === null || s.result === undefined ? "—" : pretty(s.result)),
        h("div", { class: s.error ? "step-error error-text" : "step-error muted", testid: "step-error" }, s.error ? pretty(s.error) : ""),
        s.attempts?.length
          ? h("ul", { class: "list small" }, s.attempts.map((a) => h("li", null, `attempt ${a.attempt}: ${a.status}${a.exitCode != null ? ` (exit ${a.exitCode})` : ""}${a.error ? ` — ${a.error}` : ""}`)))
          : null);
    }));
  }

  async function load() {
    const answer = await get(`/api/script-runs/${enc}`, opts);
    draw(answer.run, answer.journal);
    await loadLogs();
  }
  await load();

  // A live run's duration ticks between events.
  const tick = setInterval(() => {
    if (run && !TERMINAL.has(run.status)) els.duration.textContent = formatDuration(elapsed(run.startedAt, run.finishedAt));
  }, 1000);
  ctx.signal.addEventListener("abort", () => clearInterval(tick));
  const reload = debounce(() => load().catch(ctx.fail), 120);
  ctx.signal.addEventListener("abort", () => reload.cancel());
  followRun(run.id, ctx, () => TERMINAL.has(run.status), reload);
}

/**
 * Follows a run's event stream until the run ends (its `end` event, or `ended()` saying so
 * after a reload), calling `changed()` on every event but a log message.
 */
export function followRun(id, ctx, ended, changed) {
  let over = false;
  follow(`/api/script-runs/${encodeURIComponent(id)}/events`, {
    signal: ctx.signal,
    isDone: () => over || ended(),
    onEvent: (e) => {
      if (e.event === "end") over = true;
      if (e.event !== "message") changed();
    },
  }).catch(ctx.fail);
}
