/**
 * The dashboard's entry: the shell (navigation, the error banner, log in and log out) and the
 * hash router. Each page module exports `render(root, params, ctx)`; `ctx.signal` aborts when
 * the reader leaves the page (closing its event streams and pending requests), `ctx.fail(err)`
 * shows an API error in the banner.
 */
import { ApiError, base, clearToken, getToken, onUnauthorized, setToken } from "./js/api.js";
import { clear } from "./js/dom.js";
import * as overview from "./js/overview.js";
import * as scripts from "./js/scripts.js";
import * as jobs from "./js/jobs.js";
import * as runs from "./js/runs.js";
import * as flows from "./js/flows.js";

const page = document.getElementById("page");
const banner = document.getElementById("error-banner");
const login = document.getElementById("login");
const loginError = document.getElementById("login-error");
let current = null;

/** Shows an error (an `ApiError`'s code and message) in the banner; aborts are not errors. */
function fail(err) {
  if (err?.name === "AbortError") return;
  if (err instanceof ApiError && err.status === 401) return;
  banner.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : `Error: ${err?.message ?? err}`;
  banner.hidden = false;
}

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [name = "", id] = hash.split("/");
  let param = id;
  try {
    param = id === undefined || id === "" ? undefined : decodeURIComponent(id);
  } catch {
    param = id; // a malformed escape: look the id up as it is written
  }
  switch (name) {
    case "scripts":
      return [scripts.render, {}, "scripts"];
    case "jobs":
      return param ? [jobs.renderJob, { id: param }, "jobs"] : [jobs.renderList, {}, "jobs"];
    case "runs":
      return param ? [runs.renderRun, { id: param }, "runs"] : [runs.renderList, {}, "runs"];
    case "flows":
      return [flows.render, {}, "flows"];
    default:
      return [overview.render, {}, ""];
  }
}

/** Leaves the current page (aborting its streams) and draws the one the hash names. */
function show() {
  current?.abort();
  current = new AbortController();
  banner.hidden = true;
  clear(page);
  const [render, params, nav] = route();
  document.title = `${nav ? nav[0].toUpperCase() + nav.slice(1) : "Overview"} · script-runner`;
  for (const a of document.querySelectorAll(".nav a[data-route]")) {
    a.classList.toggle("active", a.dataset.route === nav);
  }
  if (!login.hidden) return;
  const root = document.createElement("div");
  root.className = "page";
  page.append(root);
  const signal = current.signal;
  // An error of a page the reader has left is not shown on the next one.
  const ctx = { signal, fail: (err) => signal.aborted || fail(err) };
  Promise.resolve()
    .then(() => render(root, params, ctx))
    .catch(ctx.fail);
}

/** A 401 anywhere: stop the page and ask for the token. */
onUnauthorized(() => {
  if (!login.hidden) return;
  current?.abort();
  clear(page);
  banner.hidden = true;
  login.hidden = false;
  loginError.hidden = !getToken();
  loginError.textContent = getToken() ? "The server refused the stored token; enter it again." : "";
  document.getElementById("token-input").focus();
});

document.getElementById("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("token-input");
  const token = input.value.trim();
  if (!token) return;
  setToken(token);
  try {
    await fetchCheck();
    input.value = "";
    login.hidden = true;
    loginError.hidden = true;
    show();
  } catch (err) {
    clearToken();
    loginError.textContent = err instanceof ApiError && err.status === 401 ? "That token was refused." : `Could not check the token: ${err.message}`;
    loginError.hidden = false;
  }
});

/** Checks the stored token with a cheap call, without tripping the global 401 handler. */
async function fetchCheck() {
  const res = await fetch(`${base}/jobs?limit=1`, {
    cache: "no-store",
    headers: { Accept: "application/json", Authorization: `Bearer ${getToken()}` },
  });
  if (res.status === 401) throw new ApiError(401, "UNAUTHORIZED", "refused");
  if (!res.ok) throw new ApiError(res.status, `HTTP_${res.status}`, res.statusText);
}

document.getElementById("logout").addEventListener("click", (e) => {
  e.preventDefault();
  clearToken();
  // Straight to the form: without a token every call of the next page would answer 401 anyway.
  current?.abort();
  clear(page);
  banner.hidden = true;
  loginError.hidden = true;
  login.hidden = false;
  document.getElementById("token-input").focus();
});

window.addEventListener("hashchange", show);
show();
