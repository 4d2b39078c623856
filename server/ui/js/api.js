/**
 * API access: the API base (from the page's own location, so the page works under
 * `server.basePath`), the bearer token (kept in `sessionStorage`, never in a URL), JSON requests
 * with the server's error envelope, and server-sent events read with `fetch()` streams (an
 * `EventSource` can not send the bearer header), resumed with `Last-Event-ID`.
 */

/** `/sr/ui/` -> `/sr`, `/ui/` -> ``: every API path is appended to this. */
export const base = location.pathname.replace(/\/ui\/.*$/, "").replace(/\/ui$/, "");

const TOKEN_KEY = "script-runner-token";

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** An answer that was not `ok`: the HTTP status and the server's `{code, message}`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let unauthorized = () => {};

/** Sets what happens when the server answers 401 (the shell shows the login form). */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

function headers(extra) {
  const out = { ...extra };
  const token = getToken();
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

/**
 * One JSON request. GET has no body; every other method sends a JSON body (`{}` when there is
 * nothing to say). Resolves to the parsed answer; rejects with an `ApiError` for any answer that
 * is not 2xx (and calls the 401 handler first for a 401).
 */
export async function api(method, path, body, { signal } = {}) {
  const init = { method, signal, cache: "no-store", headers: headers({ Accept: "application/json" }) };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
  }
  const res = await fetch(base + path, init);
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (res.status === 401) {
    unauthorized();
    throw new ApiError(401, "UNAUTHORIZED", data?.error?.message || "a token is needed");
  }
  if (!res.ok || data?.ok === false) {
    throw new ApiError(res.status, data?.error?.code || `HTTP_${res.status}`, data?.error?.message || res.statusText);
  }
  return data;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body, opts);
export const del = (path, body, opts) => api("DELETE", path, body, opts);

/** Builds a query string from the defined, non-empty values of `params`. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * Follows a server-sent event stream. `onEvent({event, data, id})` gets each event (`data` parsed
 * as JSON when it is JSON); `onBatch()` is called after each chunk read from the network, so a
 * caller can draw many events at once. The stream is opened again (with `Last-Event-ID`, after
 * a second) when it ends without `isDone()` saying so, until `signal` aborts. Resolves when done.
 */
export async function follow(path, { signal, onEvent, onBatch, isDone, lastEventId, onError }) {
  let lastId = lastEventId ?? null;
  while (!signal.aborted) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (lastId !== null && lastId !== undefined) extra["Last-Event-ID"] = String(lastId);
      const res = await fetch(base + path, { signal, cache: "no-store", headers: headers(extra) });
      if (res.status === 401) {
        unauthorized();
        return;
      }
      if (!res.ok) {
        let data = null;
        try {
          data = await res.json();
        } catch {
          data = null;
        }
        throw new ApiError(res.status, data?.error?.code || `HTTP_${res.status}`, data?.error?.message || res.statusText);
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let event = { event: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          let line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {
            if (event.data.length) {
              if (event.id !== null) lastId = event.id;
              const text = event.data.join("\n");
              let data = text;
              try {
                data = JSON.parse(text);
              } catch {
                data = text;
              }
              onEvent({ event: event.event, data, id: event.id });
            }
            event = { event: "message", data: [], id: null };
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (name === "event") event.event = val;
          else if (name === "data") event.data.push(val);
          else if (name === "id") event.id = val;
        }
        onBatch?.();
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError) {
        onError?.(err);
        if (err.status >= 400 && err.status < 500 && err.status !== 429) return;
      }
    }
    if (isDone?.() || signal.aborted) return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}
