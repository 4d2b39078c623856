/**
 * DOM helpers shared by every page: an element builder that only ever sets text with
 * `textContent` and attributes with `setAttribute` (never `innerHTML`, so a value from the server
 * can not become markup), the status badge, and how times, durations and JSON are shown.
 */

/**
 * Builds an element. `attrs` keys: `class`, `testid` (-> `data-testid`), `data-*`, any other
 * attribute; `on` is an object of event listeners. Children are nodes, strings (text nodes),
 * numbers, or null/false (skipped), or arrays of those.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "on") {
      for (const [type, fn] of Object.entries(value)) el.addEventListener(type, fn);
    } else if (key === "testid") {
      el.setAttribute("data-testid", value);
    } else if (key === "class") {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.append(child);
    else el.append(document.createTextNode(String(child)));
  }
}

/** Removes every child of `el`. */
export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
}

/** Replaces the children of `el` with `children`. */
export function fill(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

/** A status badge: colour from the class, and always the status as text (never colour alone). */
export function statusBadge(status, testid) {
  const name = String(status ?? "unknown");
  const cls = name.replace(/[^a-z0-9_-]/gi, "");
  return h("span", { class: `status status-${cls}`, testid }, name);
}

/** An ISO time in the reader's time zone, or an em dash. */
export function formatTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** A time element for lists: only the time of day when it is today, the full time on hover. */
export function shortTime(iso) {
  if (!iso) return h("span", { class: "muted small" }, "—");
  const d = new Date(iso);
  const today = d.toDateString() === new Date().toDateString();
  return h("time", { class: "muted small", datetime: iso, title: d.toLocaleString() }, today ? d.toLocaleTimeString() : d.toLocaleString());
}

/** A duration in ms as people say it: `850 ms`, `12.3 s`, `4 min 5 s`, `2 h 3 min`. */
export function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(Number(ms))) return "—";
  ms = Math.max(0, Number(ms));
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1).replace(/\.0$/, "")} s`;
  const s = Math.floor(ms / 1000);
  const two = (big, bigUnit, small, smallUnit) => (small ? `${big} ${bigUnit} ${small} ${smallUnit}` : `${big} ${bigUnit}`);
  if (s < 3600) return two(Math.floor(s / 60), "min", s % 60, "s");
  if (s < 86400) return two(Math.floor(s / 3600), "h", Math.floor((s % 3600) / 60), "min");
  return two(Math.floor(s / 86400), "d", Math.floor((s % 86400) / 3600), "h");
}

/** Milliseconds between two ISO times (the end defaulting to now), or null. */
export function elapsed(startIso, endIso) {
  if (!startIso) return null;
  const end = endIso ? new Date(endIso).getTime() : Date.now();
  return end - new Date(startIso).getTime();
}

/** Any value as readable text: strings as they are, everything else as indented JSON. */
export function pretty(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}

/** A hash link inside the page; ids are encoded so no value can change the route's shape. */
export function link(route, id, text, testid) {
  return h("a", { href: `#/${route}/${encodeURIComponent(id)}`, testid }, text ?? id);
}

/** Calls `fn` at most once per `ms`, after the last call (coalesces bursts of events). */
export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/** A table with a header row; `rows` are `tr` elements. */
export function table(testid, headers, rows) {
  return h(
    "table",
    { class: "table", testid },
    h("thead", null, h("tr", null, headers.map((t) => h("th", null, t)))),
    h("tbody", null, rows),
  );
}

/** A labelled value for the detail grids (`dt`/`dd` pairs). */
export function field(label, value, testid) {
  return [h("dt", null, label), h("dd", { testid }, value)];
}

/**
 * A list's pager: "newer"/"older" buttons and the "a–b of n" text, moving `state.offset` by
 * `size` and calling `load()` (errors to `fail`). `show(count, total)` updates them after a
 * page of `count` rows arrived.
 */
export function pager(state, size, load, fail, testids = {}) {
  const prev = h("button", { testid: testids.prev, type: "button" }, "← Newer");
  const next = h("button", { testid: testids.next, type: "button" }, "Older →");
  const info = h("span", { testid: testids.info, class: "muted" });
  prev.addEventListener("click", () => { state.offset = Math.max(0, state.offset - size); load().catch(fail); });
  next.addEventListener("click", () => { state.offset += size; load().catch(fail); });
  const show = (count, total) => {
    const last = Math.min(state.offset + count, total);
    info.textContent = total ? `${state.offset + 1}–${last} of ${total}` : "0 of 0";
    prev.disabled = state.offset === 0;
    next.disabled = state.offset + size >= total;
  };
  return { prev, next, info, show };
}
