/**
 * The jobs pages: the list (`#/jobs`, filtered by status and script, paged with
 * `limit`/`offset`, redrawn on lifecycle events) and one job (`#/jobs/<id>`: its facts, a cancel
 * button while it is queued or running, and its stdout and stderr, each showing the last page of
 * lines, following live while the job runs, with "load earlier" for the lines before).
 */
import { follow, get, post, query } from "./api.js";
import { debounce, elapsed, field, fill, formatDuration, formatTime, h, link, pager, statusBadge, table } from "./dom.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "timed_out", "canceled"];
const PAGE = 50;
const LOG_PAGE = 500;
const MAX_SHOWN = 5000;

/** Filters survive leaving the list and coming back (not a reload). */
const state = { status: "", script: "", offset: 0 };

export async function renderList(root, _params, ctx) {
  const opts = { signal: ctx.signal };
  const statusSel = h("select", { testid: "jobs-filter-status", "aria-label": "status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === state.status }, s)));
  const scriptSel = h("select", { testid: "jobs-filter-script", "aria-label": "script" }, h("option", { value: "" }, "any script"));
  const { prev, next, info, show } = pager(state, PAGE, () => load(), ctx.fail,
    { prev: "jobs-prev", next: "jobs-next", info: "jobs-page-info" });
  const holder = h("div", { class: "table-wrap" });
  root.append(
    h("h1", null, "Jobs"),
    h("div", { class: "toolbar" }, h("label", null, "Status ", statusSel), h("label", null, "Script ", scriptSel),
      h("span", { class: "spacer" }), prev, info, next),
    holder,
  );

  get("/scripts", opts).then(({ scripts }) => {
    for (const s of scripts) scriptSel.append(h("option", { value: s.id, selected: s.id === state.script }, s.id));
  }).catch(ctx.fail);

  async function load() {
    const page = await get(`/jobs${query({ status: state.status, scriptId: state.script, limit: PAGE, offset: state.offset })}`, opts);
    if (page.jobs.length === 0 && state.offset > 0 && page.total > 0) {
      state.offset = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE);
      return load();
    }
    const rows = page.jobs.map((j) =>
      h("tr", { testid: "job-row", "data-job-id": j.jobId },
        h("td", null, link("jobs", j.jobId)),
        h("td", null, j.scriptId),
        h("td", null, statusBadge(j.status)),
        h("td", { class: "num" }, j.code == null ? "—" : String(j.code)),
        h("td", null, formatTime(j.createdAt)),
        h("td", { class: "num" }, formatDuration(j.durationMs ?? (j.startedAt ? elapsed(j.startedAt, j.endedAt) : null)))));
    fill(holder, table("jobs-table", ["id", "script", "status", "exit code", "created", "duration"], rows));
    if (!rows.length) holder.append(h("p", { class: "empty" }, "No jobs match."));
    show(page.jobs.length, page.total);
  }

  const reload = debounce(() => load().catch(ctx.fail), 300);
  ctx.signal.addEventListener("abort", () => reload.cancel());
  statusSel.addEventListener("change", () => { state.status = statusSel.value; state.offset = 0; load().catch(ctx.fail); });
  scriptSel.addEventListener("change", () => { state.script = scriptSel.value; state.offset = 0; load().catch(ctx.fail); });
  await load();
  follow("/events?kind=job", { signal: ctx.signal, onEvent: (e) => e.event.startsWith("job.") && reload() }).catch(ctx.fail);
}

const ACTIVE = new Set(["queued", "running"]);

export async function renderJob(root, { id }, ctx) {
  const opts = { signal: ctx.signal };
  const enc = encodeURIComponent(id);
  let job = await get(`/jobs/${enc}`, opts);
  document.title = `Job ${id} · script-runner`;

  const els = {
    status: h("dd", { testid: "job-status" }),
    code: h("dd", { testid: "job-exit-code" }),
    duration: h("dd", { testid: "job-duration" }),
    started: h("dd", { testid: "job-started" }),
    args: h("dd", { testid: "job-args" }),
    error: h("dd", { testid: "job-error" }),
  };
  const cancel = h("button", { type: "button", class: "danger", testid: "job-cancel" }, "Cancel job");
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      update(await post(`/jobs/${enc}/cancel`, {}, opts));
    } catch (err) {
      ctx.fail(err);
      cancel.disabled = false;
    }
  });

  root.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", id),
    h("div", { class: "title-row" }, h("h1", null, "Job ", h("code", null, id)), cancel),
    h("section", { class: "card" },
      h("dl", { class: "facts" },
        h("dt", null, "script"), h("dd", null, job.scriptId),
        h("dt", null, "status"), els.status,
        h("dt", null, "exit code"), els.code,
        h("dt", null, "duration"), els.duration,
        h("dt", null, "created"), h("dd", null, formatTime(job.createdAt)),
        h("dt", null, "started"), els.started,
        h("dt", null, "mode"), h("dd", null, job.mode ?? "—"),
        h("dt", null, "args"), els.args,
        h("dt", null, "error"), els.error)),
  );

  function update(j) {
    job = j;
    fill(els.status, statusBadge(j.status));
    els.code.textContent = j.code == null ? "—" : String(j.code);
    els.duration.textContent = formatDuration(j.durationMs ?? elapsed(j.startedAt, j.endedAt));
    els.started.textContent = formatTime(j.startedAt);
    fill(els.args, j.args?.length ? j.args.map((a) => [h("code", { class: "arg" }, a), " "]) : "none");
    els.error.textContent = [j.error, j.outputError].filter(Boolean).join("; ") || "—";
    els.error.classList.toggle("error-text", Boolean(j.error || j.outputError));
    cancel.hidden = !ACTIVE.has(j.status);
    cancel.disabled = false;
    if (!ACTIVE.has(j.status)) feed.abort();
  }
  // The lifecycle feed is needed only until the job ends (a browser has few connections per host).
  const feed = new AbortController();
  ctx.signal.addEventListener("abort", () => feed.abort());
  update(job);

  // A running job's duration ticks; the lifecycle feed tells when it starts and ends.
  const tick = setInterval(() => {
    if (job.status === "running" && job.startedAt) els.duration.textContent = formatDuration(elapsed(job.startedAt));
  }, 1000);
  ctx.signal.addEventListener("abort", () => clearInterval(tick));
  const refresh = debounce(() => get(`/jobs/${enc}`, opts).then(update).catch(ctx.fail), 100);
  ctx.signal.addEventListener("abort", () => refresh.cancel());
  if (ACTIVE.has(job.status)) {
    follow(`/events?kind=job&script=${encodeURIComponent(job.scriptId)}`, {
      signal: feed.signal,
      onEvent: (e) => e.data?.id === id && refresh(),
    }).catch(ctx.fail);
  }

  for (const stream of ["stdout", "stderr"]) {
    root.append(logBox(id, stream, ctx, (j) => update(j), () => job));
  }
}

/**
 * One log stream: the last `LOG_PAGE` lines, then the follow stream from there (unit=lines, the
 * event id is the next line's index), and a "load earlier" button that prepends the page before
 * the first line shown, keeping the reader's scroll position.
 */
function logBox(id, stream, ctx, onEnd, currentJob) {
  const opts = { signal: ctx.signal };
  const enc = encodeURIComponent(id);
  const pre = h("pre", { class: "log", testid: `job-${stream}`, tabindex: 0 });
  const earlier = h("button", { type: "button", class: "link-button", testid: `job-${stream}-load-earlier`, hidden: true }, "Load earlier lines");
  const count = h("span", { class: "muted small" });
  const box = h("section", { class: "card log-card" },
    h("div", { class: "log-head" }, h("h2", null, stream), count, h("span", { class: "spacer" }), earlier),
    pre);

  let first = 0; // index of the first line shown
  let next = 0; // index of the next line to follow
  let pending = [];
  let total = 0; // lines stored when the page was loaded
  const chunks = []; // [text node, lines in it], top to bottom: the box holds only these

  function atBottom() {
    return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
  }
  function flush() {
    if (!pending.length) return;
    const stick = atBottom();
    const node = document.createTextNode(pending.join("\n") + "\n");
    pre.append(node);
    chunks.push([node, pending.length]);
    pending = [];
    if (stick) {
      // Following at the bottom: keep at most MAX_SHOWN lines in the page (the ones above stay
      // a "load earlier" away), so a job that prints without end does not slow the tab down.
      let shown = next - first;
      while (shown > MAX_SHOWN && chunks.length > 1) {
        const [oldest, lines] = chunks.shift();
        oldest.remove();
        first += lines;
        shown -= lines;
      }
      pre.scrollTop = pre.scrollHeight;
    }
    showCount();
  }
  function showCount() {
    count.textContent = next === 0 ? "no lines" : `lines ${first + 1}–${next}${total > next ? ` of ${total}` : ""}`;
    earlier.hidden = first === 0;
  }

  earlier.addEventListener("click", async () => {
    earlier.disabled = true;
    try {
      const from = Math.max(0, first - LOG_PAGE);
      const lines = [];
      // A line page holds at most 1 MiB of text: read on until the first line shown.
      for (let at = from; at < first; ) {
        const page = await get(`/jobs/${enc}/logs${query({ stream, unit: "lines", offset: at, limit: first - at })}`, opts);
        if (page.nextOffset <= at) break;
        lines.push(...page.lines);
        at = page.nextOffset;
      }
      const before = pre.scrollHeight;
      const top = pre.scrollTop;
      if (lines.length) {
        const node = document.createTextNode(lines.join("\n") + "\n");
        pre.prepend(node);
        chunks.unshift([node, lines.length]);
      }
      first = from;
      pre.scrollTop = top + (pre.scrollHeight - before);
      showCount();
    } catch (err) {
      ctx.fail(err);
    } finally {
      earlier.disabled = false;
    }
  });

  (async () => {
    const probe = await get(`/jobs/${enc}/logs${query({ stream, unit: "lines", offset: 0, limit: 1 })}`, opts);
    const start = Math.max(0, probe.totalLines - LOG_PAGE);
    const page = start === 0 && probe.totalLines <= 1
      ? probe
      : await get(`/jobs/${enc}/logs${query({ stream, unit: "lines", offset: start, limit: LOG_PAGE })}`, opts);
    first = page.offset;
    next = page.nextOffset;
    total = page.totalLines;
    pending = page.lines.slice();
    flush();
    pre.scrollTop = pre.scrollHeight;
    showCount();
    let ended = !ACTIVE.has(currentJob().status) && next >= page.totalLines;
    if (ended) return;
    await follow(`/jobs/${enc}/logs${query({ follow: 1, stream, unit: "lines", offset: next })}`, {
      signal: ctx.signal,
      lastEventId: next,
      isDone: () => ended,
      onEvent: (e) => {
        if (e.event === "line") {
          pending.push(typeof e.data === "string" ? e.data : e.data.line ?? e.data.text ?? "");
          if (e.id !== null) next = Number(e.id);
          else next += 1;
        } else if (e.event === "end") {
          ended = true;
          if (stream === "stdout") onEnd(e.data);
        } else if (e.event === "truncated") {
          pending.push(`[output past ${e.data.storedBytes} bytes was not stored]`);
        } else if (e.event === "error") {
          ended = true;
        }
      },
      onBatch: flush,
    });
    flush();
  })().catch(ctx.fail);

  return box;
}
