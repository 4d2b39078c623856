// @script-runner/sdk: durable steps for a script-runner workflow written in JavaScript or
// TypeScript. It speaks the same internal step routes as `script-runner step` and the Rust
// client (client/src/workflow.rs), so a workflow gets the same journal, replay and errors in
// any language. No runtime dependency: Node 18+ built-ins only.
//
// Contract: sdk/README.md. Where the contract leaves a detail open, this module does what the
// Rust client does.

import http from "node:http";
import https from "node:https";
import os from "node:os";
import { spawn } from "node:child_process";
import { setTimeout as delay } from "node:timers/promises";

// ---------------------------------------------------------------------------------------------
// Errors

/**
 * The base of every error this SDK throws, so a caller can tell them from its own with one
 * `instanceof`; `code` says which kind it is without importing the classes.
 */
export class ScriptRunnerError extends Error {
  /**
   * @param {string} code the error's kind (`STEP_FAILED`, `USAGE`, ...)
   * @param {string} message what happened
   */
  constructor(code, message) {
    super(message);
    /** The error's kind, stable across SDKs (the loader's exit code follows it). */
    this.code = code;
    this.name = new.target.name;
  }
}

/**
 * A journaled step failed: thrown now and on every replay with the same `message` and
 * `errorName`, so a workflow behaves the same whether the failure is fresh or replayed.
 */
export class StepFailedError extends ScriptRunnerError {
  /**
   * @param {string} label the step's label
   * @param {string} message the journaled error
   * @param {unknown} result the journaled result (`{name, message}` for a `run` step, the job
   *   for a script step)
   * @param {string} [errorName] the name of the original error (`TypeError`, ...)
   */
  constructor(label, message, result, errorName) {
    super("STEP_FAILED", message);
    /** The step's label. */
    this.label = label;
    /** The journaled result. */
    this.result = result === undefined ? null : result;
    /** The original error's name (from a `run` step's journaled `{name, message}`). */
    this.errorName = errorName ?? null;
  }
}

/** A call the SDK refuses before asking the server (a programming error in the workflow). */
export class UsageError extends ScriptRunnerError {
  /** @param {string} message what is wrong with the call */
  constructor(message) {
    super("USAGE", message);
  }
}

/**
 * A server error answer: its HTTP status and the server's code, so a caller can tell a refused
 * request (`INVALID_REQUEST`, `RUN_NOT_ACTIVE`, `FORBIDDEN`, ...) from a transport problem.
 */
export class ServerError extends ScriptRunnerError {
  /**
   * @param {number} status HTTP status
   * @param {string} code the server's error code
   * @param {string} message the server's message
   */
  constructor(status, code, message) {
    super(code, `${message} (HTTP ${status})`);
    /** The HTTP status. */
    this.status = status;
    /** The server's message, without the code and status. */
    this.serverMessage = message;
  }
}

/**
 * A journaled label requested as another step (another type or config): the workflow's code
 * changed under a run, and replaying on would mix two programs.
 */
export class StepDivergedError extends ScriptRunnerError {
  /**
   * @param {number} status HTTP status (409)
   * @param {string} message the server's message (names the label, the journaled and the
   *   requested step)
   */
  constructor(status, message) {
    super("STEP_DIVERGED", message);
    /** The HTTP status. */
    this.status = status;
  }
}

/** A guardrail (`maxSteps`, `maxResultBytes`, ...) stopped the run: the step did not run. */
export class LimitExceededError extends ScriptRunnerError {
  /**
   * @param {number} status HTTP status
   * @param {string} message the server's message
   */
  constructor(status, message) {
    super("LIMIT_EXCEEDED", message);
    /** The HTTP status. */
    this.status = status;
  }
}

/** The process is not a workflow run: a variable the server sets is missing. */
export class NotInRunError extends ScriptRunnerError {
  /** @param {string} variable the missing environment variable */
  constructor(variable) {
    super("NOT_IN_RUN", `not inside a script-runner workflow run: ${variable} is not set`);
    /** The missing variable. */
    this.variable = variable;
  }
}

/** The server does not answer (refused, reset, or no answer within the route's time limit). */
export class UnreachableError extends ScriptRunnerError {
  /**
   * @param {string} url the server address
   * @param {string} message why
   */
  constructor(url, message) {
    super("UNREACHABLE", `cannot reach script-runner at ${url}: ${message}`);
    /** The server address. */
    this.url = url;
  }
}

/** An answer the protocol does not allow (not JSON, a missing field, an impossible action). */
export class ProtocolError extends ScriptRunnerError {
  /** @param {string} message what is wrong */
  constructor(message) {
    super("PROTOCOL", `unexpected answer from script-runner: ${message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Constants (the Rust client's)

/** Most bytes of a command step's stdout or stderr kept (the rest is read and dropped). */
export const MAX_CAPTURE_BYTES = 16 * 1024 * 1024;
/** Time between SIGTERM and SIGKILL to a timed-out command step's process group, ms. */
export const KILL_GRACE_MS = 2000;
/** The exit code of a command step try stopped by its time-out (as coreutils' `timeout`). */
export const TIMED_OUT_EXIT_CODE = 124;
/** Most retries of a step (the server's bound too). */
export const MAX_RETRIES = 100;
/** Longest backoff, backoff cap or time-out of a step (the server's bound too): a day, ms. */
export const MAX_STEP_DURATION_MS = 24 * 3600 * 1000;
/** The other step routes answer at once (a wait within its 25 s long poll): 60 s. */
const ROUTE_LIMIT_MS = 60_000;
/** How long a call waits out `503 STORE_UNAVAILABLE` (the server's writer's retry bound). */
const STORE_RETRY_BOUND_MS = 600_000;
/** How long a connection may take to open. */
const CONNECT_LIMIT_MS = 5_000;

// ---------------------------------------------------------------------------------------------
// Durations

const UNITS = {
  ms: 1, msec: 1, millis: 1, millisecond: 1, milliseconds: 1,
  s: 1000, sec: 1000, secs: 1000, second: 1000, seconds: 1000,
  m: 60_000, min: 60_000, mins: 60_000, minute: 60_000, minutes: 60_000,
  h: 3_600_000, hr: 3_600_000, hrs: 3_600_000, hour: 3_600_000, hours: 3_600_000,
  d: 86_400_000, day: 86_400_000, days: 86_400_000,
};

/**
 * A duration in milliseconds: a number is milliseconds; a string is `500ms`, `10s`, `5m`, `1h`
 * (parts may be combined, `1m30s`), or a bare number of seconds as the CLI reads it. Whole
 * milliseconds, truncated as the Rust client's `as_millis`, so the journaled config is the same.
 *
 * @param {number|string} duration
 * @param {string} what names the duration in an error
 * @returns {number}
 */
export function parseDuration(duration, what = "duration") {
  if (typeof duration === "number") {
    if (!Number.isFinite(duration) || duration < 0) {
      throw new UsageError(`${what} ${duration}: expected a number of milliseconds >= 0`);
    }
    return Math.trunc(duration);
  }
  if (typeof duration !== "string") {
    throw new UsageError(`${what}: expected a number of milliseconds or a string like "10s", got ${typeof duration}`);
  }
  const text = duration.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Math.trunc(Number(text) * 1000);
  const part = /(\d+(?:\.\d+)?)\s*([a-z]+)\s*/gy;
  let total = 0;
  let matched = 0;
  let m;
  while ((m = part.exec(text)) !== null) {
    const unit = UNITS[m[2]];
    if (unit === undefined) break;
    total += Number(m[1]) * unit;
    matched = part.lastIndex;
  }
  if (text === "" || matched !== text.length) {
    throw new UsageError(`${what} ${JSON.stringify(duration)} is no duration (e.g. 500ms, 10s, 5m, 1h)`);
  }
  return Math.trunc(total);
}

/** A step option's duration, refused out of 1 ms to 24 h (as the CLI and the server do). */
function boundedDuration(duration, what) {
  const ms = parseDuration(duration, what);
  if (ms < 1 || ms > MAX_STEP_DURATION_MS) {
    throw new UsageError(`${what} ${JSON.stringify(duration)}: must be from 1ms to 24h`);
  }
  return ms;
}

/**
 * A duration as a step's error shows it (`2s`, `1500ms`), as the Rust client does, so a
 * time-out's journaled error is the same whichever client ran the step.
 *
 * @param {number} ms
 * @returns {string}
 */
export function showDuration(ms) {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

// ---------------------------------------------------------------------------------------------
// Argument checks (usage errors, before any request)

function checkLabel(label) {
  if (typeof label !== "string" || label === "") {
    throw new UsageError(`a step needs a label (a non-empty string), got ${JSON.stringify(label)}`);
  }
}

function checkText(value, what) {
  if (typeof value !== "string") throw new UsageError(`${what} must be a string, got ${typeof value}`);
}

/** The step options of a command or script step, added to its config as the CLI's flags are. */
function addOptions(config, options, label) {
  if (options === undefined || options === null) return config;
  if (typeof options !== "object") throw new UsageError(`step ${JSON.stringify(label)}: options must be an object`);
  const known = new Set(["retry", "backoff", "backoffMax", "timeout"]);
  for (const key of Object.keys(options)) {
    if (!known.has(key)) throw new UsageError(`step ${JSON.stringify(label)}: unknown option ${JSON.stringify(key)}`);
  }
  const { retry, backoff, backoffMax, timeout } = options;
  let retries = 0;
  if (retry !== undefined && retry !== null) {
    if (!Number.isInteger(retry) || retry < 1 || retry > MAX_RETRIES) {
      throw new UsageError(`retry ${JSON.stringify(retry)}: expected a whole number from 1 to ${MAX_RETRIES}`);
    }
    retries = retry;
  }
  const hasBackoff = backoff !== undefined && backoff !== null;
  const hasMax = backoffMax !== undefined && backoffMax !== null;
  if ((hasBackoff || hasMax) && retries === 0) throw new UsageError("backoff goes with retry");
  if (hasMax && !hasBackoff) throw new UsageError("backoffMax goes with backoff");
  if (retries > 0) {
    config.retry = retries;
    if (hasBackoff) {
      const first = boundedDuration(backoff, "backoff");
      config.backoffMs = first;
      if (hasMax) {
        const max = boundedDuration(backoffMax, "backoffMax");
        if (max < first) throw new UsageError(`backoffMax ${JSON.stringify(backoffMax)} is below backoff ${JSON.stringify(backoff)}`);
        config.backoffMaxMs = max;
      }
    }
  }
  if (timeout !== undefined && timeout !== null) config.timeoutMs = boundedDuration(timeout, "timeout");
  return config;
}

/** A command or script step's argument list: strings (numbers and booleans written as text). */
function stringArgs(args, what) {
  if (args === undefined || args === null) return [];
  if (!Array.isArray(args)) throw new UsageError(`${what} must be an array`);
  return args.map((a, i) => {
    if (typeof a === "string") return a;
    if (typeof a === "number" || typeof a === "boolean" || typeof a === "bigint") return String(a);
    throw new UsageError(`${what}[${i}] must be a string, number or boolean, got ${a === null ? "null" : typeof a}`);
  });
}

// ---------------------------------------------------------------------------------------------
// Transport

/** A label, run id or other text as one percent-encoded path segment (as the Rust client). */
function segment(text) {
  let out = "";
  for (const b of Buffer.from(String(text), "utf8")) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9\-._~]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** One keep-alive pool per protocol, shared by every context, so steps reuse connections. */
const agents = {
  "http:": new http.Agent({ keepAlive: true, maxSockets: 16 }),
  "https:": new https.Agent({ keepAlive: true, maxSockets: 16 }),
};

/** Sends one request; resolves `{status, text}` or rejects with an UnreachableError. */
function send(base, method, path, body, token, limitMs) {
  const url = new URL(base.replace(/\/+$/, "") + path);
  const lib = url.protocol === "https:" ? https : http;
  const agent = agents[url.protocol];
  if (!agent) return Promise.reject(new UsageError(`SCRIPT_RUNNER_URL ${base}: expected http:// or https://`));
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body), "utf8");
  const headers = { Accept: "application/json", Authorization: `Bearer ${token}` };
  if (payload) {
    headers["Content-Type"] = "application/json";
    headers["Content-Length"] = String(payload.length);
  }
  const attempt = (again) =>
    new Promise((resolve, reject) => {
      let settled = false;
      const done = (f, v) => {
        if (!settled) {
          settled = true;
          clearTimeout(connectTimer);
          f(v);
        }
      };
      let answered = false;
      const req = lib.request(url, { method, headers, agent }, (res) => {
        answered = true;
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => done(resolve, { status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }));
        res.on("error", (e) => done(reject, new UnreachableError(base, e.message)));
      });
      // A route limit covers the whole answer; begin has none (it answers when a script job ends).
      if (limitMs !== null) {
        req.setTimeout(limitMs, () => {
          req.destroy();
          done(reject, new UnreachableError(base, `no answer within ${Math.round(limitMs / 1000)} s`));
        });
      }
      const connectTimer = setTimeout(() => {
        if (!req.socket || req.socket.connecting) {
          req.destroy();
          done(reject, new UnreachableError(base, `no connection within ${CONNECT_LIMIT_MS / 1000} s`));
        }
      }, CONNECT_LIMIT_MS);
      connectTimer.unref();
      req.on("error", (e) => {
        // A kept-alive connection the server closed meanwhile, before any answer: the request
        // never reached it, so it is sent once more on a new connection.
        if (req.reusedSocket && !answered && !again && (e.code === "ECONNRESET" || e.code === "EPIPE")) {
          settled = true;
          clearTimeout(connectTimer);
          attempt(true).then(resolve, reject);
          return;
        }
        done(reject, new UnreachableError(base, e.message));
      });
      req.end(payload);
    });
  return attempt(false);
}

/** The SDK error for an error answer of the server. */
function answerError(status, text) {
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: the text is the message
  }
  const code = typeof body?.error?.code === "string" ? body.error.code : "HTTP_ERROR";
  let message = typeof body?.error?.message === "string" ? body.error.message : text.slice(0, 500);
  // Some messages start with their code already (`STEP_DIVERGED: step ...`): said once.
  if (message.startsWith(`${code}: `)) message = message.slice(code.length + 2);
  if (code === "STEP_DIVERGED") return new StepDivergedError(status, message);
  if (code === "LIMIT_EXCEEDED") return new LimitExceededError(status, message);
  return new ServerError(status, code, message);
}

// ---------------------------------------------------------------------------------------------
// Command steps

/** Process groups of running command steps, stopped when this process is told to stop. */
const runningGroups = new Set();
const STOP_SIGNALS = ["SIGTERM", "SIGINT", "SIGHUP"];
/** @type {Map<string, () => void>} */
const stopHandlers = new Map();

function onStopSignal(signal) {
  for (const pid of runningGroups) killGroup(pid, "SIGTERM");
  for (const [sig, handler] of stopHandlers) process.removeListener(sig, handler);
  stopHandlers.clear();
  process.kill(process.pid, signal);
}

function watchStopSignals() {
  if (stopHandlers.size > 0) return;
  for (const sig of STOP_SIGNALS) {
    const handler = () => onStopSignal(sig);
    stopHandlers.set(sig, handler);
    process.on(sig, handler);
  }
}

function unwatchStopSignals() {
  if (runningGroups.size > 0) return;
  for (const [sig, handler] of stopHandlers) process.removeListener(sig, handler);
  stopHandlers.clear();
}

function killGroup(pid, signal) {
  try {
    process.kill(-pid, signal);
  } catch {
    // the group is gone already
  }
}

/** Keeps at most MAX_CAPTURE_BYTES of a stream (the rest is read and dropped). */
function capture(stream) {
  const chunks = [];
  let kept = 0;
  stream.on("data", (chunk) => {
    const room = MAX_CAPTURE_BYTES - kept;
    if (room <= 0) return;
    const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
    chunks.push(part);
    kept += part.length;
  });
  return () => Buffer.concat(chunks).toString("utf8");
}

/**
 * Runs argv (no shell) as the leader of its own process group with stdin from /dev/null and
 * `SCRIPT_STEP_KEY`; resolves `{exitCode, stdout, stderr, timedOut}`. A time-out stops the
 * group (SIGTERM, SIGKILL after KILL_GRACE_MS) and gives exit code 124.
 */
function runCaptured(argv, stepKey, timeoutMs) {
  return new Promise((resolve) => {
    let child;
    try {
      child = spawn(argv[0], argv.slice(1), {
        detached: true,
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, SCRIPT_STEP_KEY: stepKey },
      });
    } catch (e) {
      resolve({ exitCode: 127, stdout: "", stderr: `cannot start ${argv[0]}: ${e.message}\n`, timedOut: false });
      return;
    }
    const out = capture(child.stdout);
    const err = capture(child.stderr);
    const pid = child.pid;
    let finished = false;
    let timedOut = false;
    let timer = null;
    let killTimer = null;
    const finish = (result) => {
      if (finished) return;
      finished = true;
      if (timer) clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      if (pid !== undefined) {
        runningGroups.delete(pid);
        if (timedOut) killGroup(pid, "SIGKILL");
      }
      unwatchStopSignals();
      resolve(result);
    };
    child.on("error", (e) => {
      if (pid === undefined) {
        finish({ exitCode: 127, stdout: "", stderr: `cannot start ${argv[0]}: ${e.message}\n`, timedOut: false });
      }
    });
    if (pid === undefined) return;
    runningGroups.add(pid);
    watchStopSignals();
    if (timeoutMs !== undefined) {
      timer = setTimeout(() => {
        timedOut = true;
        killGroup(pid, "SIGTERM");
        killTimer = setTimeout(() => killGroup(pid, "SIGKILL"), KILL_GRACE_MS);
      }, timeoutMs);
    }
    child.on("close", (code, signal) => {
      let exitCode;
      if (timedOut) exitCode = TIMED_OUT_EXIT_CODE;
      else if (code !== null) exitCode = code;
      else exitCode = 128 + (os.constants.signals[signal] ?? 0);
      finish({ exitCode, stdout: out(), stderr: err(), timedOut });
    });
  });
}

/** The last at most `max` bytes of `text`, cut at a character boundary. */
function tail(text, max) {
  const bytes = Buffer.from(text, "utf8");
  if (bytes.length <= max) return text;
  let start = bytes.length - max;
  while (start < bytes.length && (bytes[start] & 0xc0) === 0x80) start++;
  return bytes.subarray(start).toString("utf8");
}

function commandResult(result, replayed) {
  const r = result && typeof result === "object" ? result : {};
  return {
    exitCode: Number.isInteger(r.exitCode) ? r.exitCode : 1,
    stdout: typeof r.stdout === "string" ? r.stdout : "",
    stderr: typeof r.stderr === "string" ? r.stderr : "",
    replayed,
  };
}

function scriptResult(result) {
  const r = result && typeof result === "object" ? result : {};
  return {
    jobId: typeof r.jobId === "string" ? r.jobId : "",
    status: typeof r.status === "string" ? r.status : "",
    exitCode: Number.isInteger(r.exitCode) ? r.exitCode : null,
    stdout: typeof r.stdout === "string" ? r.stdout : "",
    stderr: typeof r.stderr === "string" ? r.stderr : "",
  };
}

function failed(label, step) {
  const result = step.result === undefined ? null : step.result;
  const name = result && typeof result === "object" && typeof result.name === "string" ? result.name : undefined;
  return new StepFailedError(label, step.error ?? "", result, name);
}

/** An error value's name and message, for a `run` step's journaled failure. */
function describe(error) {
  if (error instanceof Error) return { name: error.name || "Error", message: error.message };
  if (error && typeof error === "object" && typeof error.message === "string") {
    return { name: typeof error.name === "string" ? error.name : "Error", message: error.message };
  }
  return { name: "Error", message: String(error) };
}

/** A value as it is journaled (JSON; `undefined` is `null`), or a UsageError saying why not. */
function toJson(label, value) {
  let text;
  try {
    text = JSON.stringify(value === undefined ? null : value);
  } catch (e) {
    throw new UsageError(`step ${JSON.stringify(label)}: the value is not JSON: ${e.message}`);
  }
  if (text === undefined) throw new UsageError(`step ${JSON.stringify(label)}: the value is not JSON (${typeof value})`);
  return JSON.parse(text);
}

function isFunction(f) {
  return typeof f === "function";
}

// ---------------------------------------------------------------------------------------------
// The context

/**
 * A workflow run's context: its arguments, ids, and `step`, the durable steps. Built by the
 * loader for `main(args, ctx)`, or by `fromEnv()` in a plain script.
 */
export class Context {
  /**
   * @param {{url: string, runId: string, token: string, args?: unknown, attempt?: number}} options
   */
  constructor({ url, runId, token, args = null, attempt = 1 }) {
    /** The server address (`SCRIPT_RUNNER_URL`). */
    this.url = url;
    /** The run id (`SCRIPT_RUN_ID`). */
    this.runId = runId;
    /** The run's launch arguments (`SCRIPT_RUN_ARGS`), `null` when unset. */
    this.args = args;
    /** This execution's number, from 1 (`SCRIPT_RUN_ATTEMPT`). */
    this.attempt = attempt;
    Object.defineProperty(this, "token", { value: token, enumerable: false });
    /** The durable steps of this run. */
    this.step = new Steps(this);
    Object.freeze(this.step);
  }

  /**
   * Reports the run's progress (`current` of `total`, 0 when unknown).
   * @param {number} current
   * @param {number} total
   * @param {string} [message]
   */
  async progress(current, total, message) {
    for (const [what, n] of [["current", current], ["total", total]]) {
      if (!Number.isSafeInteger(n) || n < 0) {
        throw new UsageError(`progress ${what} ${JSON.stringify(n)}: expected a whole number >= 0`);
      }
    }
    if (message !== undefined && message !== null) checkText(message, "progress message");
    await this._call("POST", "progress", { current, total, message: message ?? null }, ROUTE_LIMIT_MS);
  }

  /**
   * One call to the run's internal routes; `503 STORE_UNAVAILABLE` is retried for up to 600 s
   * (250 ms doubling to 5 s), as the Rust client does: every call is keyed by its label.
   * @internal
   */
  async _call(method, path, body, limitMs) {
    const full = `/api/internal/script-runs/${segment(this.runId)}/${path}`;
    const deadline = Date.now() + STORE_RETRY_BOUND_MS;
    let pause = 250;
    for (;;) {
      const { status, text } = await send(this.url, method, full, body, this.token, limitMs);
      if (status >= 200 && status < 300) {
        try {
          return JSON.parse(text);
        } catch (e) {
          throw new ProtocolError(`${method} ${full}: not JSON: ${e.message}`);
        }
      }
      const error = answerError(status, text);
      if (status === 503 && error.code === "STORE_UNAVAILABLE" && Date.now() + pause < deadline) {
        await delay(pause);
        pause = Math.min(pause * 2, 5000);
        continue;
      }
      throw error;
    }
  }

  /** @internal the step in an `{ok, step}` answer. */
  static _stepOf(answer, what) {
    const step = answer?.step;
    if (!step || typeof step !== "object" || typeof step.status !== "string") {
      throw new ProtocolError(`${what}: no step in the answer`);
    }
    return step;
  }

  /** @internal `POST steps/{label}/begin`: `{action, step}`; a failed non-command step throws. */
  async _begin(label, stepType, config) {
    const answer = await this._call("POST", `steps/${segment(label)}/begin`, { stepType, config }, null);
    const action = answer?.action;
    if (action === "execute") return { action, step: null };
    if (action !== "done" && action !== "resume") {
      throw new ProtocolError(`begin of ${JSON.stringify(label)} answered action ${JSON.stringify(action)}`);
    }
    const step = Context._stepOf(answer, `begin of ${JSON.stringify(label)} answered ${action}`);
    if (action === "done" && step.status === "failed" && step.stepType !== "command") throw failed(label, step);
    return { action, step };
  }

  /** @internal `POST steps`: records a step; the stored entry (a second writer gets the first's). */
  async _record(label, stepType, config, status, result, error, startedAt) {
    const body = {
      stepKey: label,
      stepType,
      config,
      status,
      result: result === undefined ? null : result,
      error: error ?? null,
      durationMs: Math.max(0, Math.round(performance.now() - startedAt)),
    };
    return Context._stepOf(await this._call("POST", "steps", body, ROUTE_LIMIT_MS), `record of ${JSON.stringify(label)}`);
  }

  /** @internal the long poll while a step is `started`. */
  async _wait(label) {
    const answer = await this._call("GET", `steps/${segment(label)}/wait?timeoutMs=25000`, undefined, ROUTE_LIMIT_MS);
    return Context._stepOf(answer, `wait of ${JSON.stringify(label)}`);
  }
}

/** The attempt a resumed, retried command step runs, once its journaled time has come. */
async function nextAttempt(step) {
  const at = step.result?.nextAttemptAtMs;
  if (Number.isFinite(at)) {
    const left = at - Date.now();
    if (left > 0) await delay(left);
  }
  return (Array.isArray(step.attempts) ? step.attempts.length : 0) + 1;
}

/**
 * The durable steps of a run (`ctx.step`): each is keyed by its label; the first execution runs
 * it and journals the result, every replay returns the journaled result without running it.
 */
class Steps {
  /** @param {Context} ctx */
  constructor(ctx) {
    Object.defineProperty(this, "_ctx", { value: ctx, enumerable: false });
    for (const name of ["run", "value", "command", "script", "scriptStart", "sleep", "approval", "input", "waitEvent"]) {
      this[name] = this[name].bind(this);
    }
  }

  /**
   * Runs `fn` once and journals its JSON result or its thrown error; every replay returns the
   * result, or throws the same error as a StepFailedError, without calling `fn`.
   * @param {string} label
   * @param {() => unknown} fn
   */
  async run(label, fn) {
    checkLabel(label);
    if (!isFunction(fn)) throw new UsageError(`step ${JSON.stringify(label)}: run needs a function`);
    const ctx = this._ctx;
    const { action, step } = await ctx._begin(label, "value", null);
    if (action !== "execute") return step.result ?? null;
    const startedAt = performance.now();
    let value;
    try {
      value = await fn();
    } catch (e) {
      const { name, message } = describe(e);
      const stored = await ctx._record(label, "value", null, "failed", { name, message }, message, startedAt);
      throw stored.status === "failed" ? failed(label, stored) : new StepFailedError(label, message, { name, message }, name);
    }
    const stored = await ctx._record(label, "value", null, "completed", toJson(label, value), null, startedAt);
    if (stored.status === "failed") throw failed(label, stored);
    return stored.result ?? null;
  }

  /**
   * Journals a value once (a function is called for it, only when the step is not journaled);
   * every replay returns the first value. A function that throws journals nothing: its error
   * is thrown as it is, and the next execution calls it again.
   * @param {string} label
   * @param {unknown} valueOrFn
   */
  async value(label, valueOrFn) {
    checkLabel(label);
    const ctx = this._ctx;
    if (!isFunction(valueOrFn)) toJson(label, valueOrFn); // refuse a non-JSON value before asking
    const { action, step } = await ctx._begin(label, "value", null);
    if (action !== "execute") return step.result ?? null;
    const startedAt = performance.now();
    const value = isFunction(valueOrFn) ? await valueOrFn() : valueOrFn;
    const stored = await ctx._record(label, "value", null, "completed", toJson(label, value), null, startedAt);
    if (stored.status === "failed") throw failed(label, stored);
    return stored.result ?? null;
  }

  /**
   * Runs a local command once (argv, no shell, its own process group, `SCRIPT_STEP_KEY`) and
   * journals `{exitCode, stdout, stderr}`. A non-zero exit is journaled as failed and returned
   * (not thrown), now and on every replay.
   * @param {string} label
   * @param {string[]} argv
   * @param {{retry?: number, backoff?: number|string, backoffMax?: number|string, timeout?: number|string}} [options]
   */
  async command(label, argv, options) {
    checkLabel(label);
    if (!Array.isArray(argv) || argv.length === 0) {
      throw new UsageError(`step ${JSON.stringify(label)}: a command step needs a command (a non-empty array)`);
    }
    argv = stringArgs(argv, "argv");
    const config = addOptions({ command: argv }, options, label);
    const retry = config.retry ?? 0;
    const timeoutMs = config.timeoutMs;
    const ctx = this._ctx;
    const { action, step } = await ctx._begin(label, "command", config);
    let attempt;
    if (action === "done") return commandResult(step.result, true);
    if (action === "resume") {
      if (step.status !== "started") return commandResult(step.result, true);
      attempt = await nextAttempt(step);
    } else {
      attempt = 1;
    }
    const startedAt = performance.now();
    const key = `${ctx.runId}:${label}`;
    for (;;) {
      const began = Date.now();
      const ran = await runCaptured(argv, key, timeoutMs);
      let error = null;
      if (ran.timedOut && timeoutMs !== undefined) error = `timed out after ${showDuration(timeoutMs)}`;
      else if (ran.exitCode !== 0) error = `exit code ${ran.exitCode}`;
      const last = retry === 0 || attempt > retry;
      if (error === null || last) {
        const result = { exitCode: ran.exitCode, stdout: ran.stdout, stderr: ran.stderr };
        const stored = await ctx._record(label, "command", config, error === null ? "completed" : "failed", result, error, startedAt);
        // Another writer may have won the label: its result is the journaled one.
        return commandResult(stored.result, false);
      }
      const body = {
        stepType: "command",
        config,
        attempt,
        exitCode: ran.exitCode,
        error,
        stderrTail: tail(ran.stderr, 4096),
        startedAtMs: began,
        endedAtMs: Date.now(),
      };
      const after = Context._stepOf(await ctx._call("POST", `steps/${segment(label)}/attempts`, body, ROUTE_LIMIT_MS), "attempt");
      if (after.status !== "started") return commandResult(after.result, true);
      attempt = await nextAttempt(after);
      // The entry again, with this execution's token: a restarted server has replaced this
      // execution (its token refused) and another execution runs the next try, once.
      const now = Context._stepOf(await ctx._call("GET", `steps/${segment(label)}`, undefined, ROUTE_LIMIT_MS), "step");
      if (now.status !== "started") return commandResult(now.result, true);
      const journaled = Array.isArray(now.attempts) ? now.attempts.length : 0;
      if (journaled + 1 !== attempt) {
        throw new ProtocolError(`step ${JSON.stringify(label)}: attempt ${attempt} is no longer the next one (${journaled} journaled)`);
      }
    }
  }

  /**
   * Runs a configured script as a server-side job and waits for it; a replay waits for the
   * same job, never starts a second. A failed job throws StepFailedError (the job in `.result`).
   * @param {string} label
   * @param {string} scriptId
   * @param {Array<string|number|boolean>} [args]
   * @param {{retry?: number, backoff?: number|string, backoffMax?: number|string, timeout?: number|string}} [options]
   */
  async script(label, scriptId, args, options) {
    checkLabel(label);
    checkText(scriptId, "scriptId");
    const config = addOptions({ scriptId, args: stringArgs(args, "args") }, options, label);
    const { action, step } = await this._ctx._begin(label, "script", config);
    if (action === "execute") throw new ProtocolError("the server did not run the script step");
    if (step.status === "failed") throw failed(label, step);
    return scriptResult(step.result);
  }

  /**
   * Starts a configured script as a server-side job without waiting, once: its job id, the
   * same on every replay.
   * @param {string} label
   * @param {string} scriptId
   * @param {Array<string|number|boolean>} [args]
   */
  async scriptStart(label, scriptId, args) {
    checkLabel(label);
    checkText(scriptId, "scriptId");
    const config = { scriptId, args: stringArgs(args, "args"), wait: false };
    const { action, step } = await this._ctx._begin(label, "script", config);
    if (action === "execute") throw new ProtocolError("the server did not start the script");
    const jobId = step.result?.jobId ?? step.jobId;
    if (typeof jobId !== "string") throw new ProtocolError(`step ${JSON.stringify(label)} has no jobId`);
    return jobId;
  }

  /**
   * A durable sleep: the wake-up time is journaled, so a restarted run sleeps only what is left.
   * @param {string} label
   * @param {number|string} duration ms, or `"10s"`
   */
  async sleep(label, duration) {
    checkLabel(label);
    const durationMs = parseDuration(duration, "sleep");
    const config = { durationMs };
    const ctx = this._ctx;
    const { action, step } = await ctx._begin(label, "sleep", config);
    if (action === "done") return;
    if (action === "execute") throw new ProtocolError("the server did not journal the sleep");
    const startedAt = performance.now();
    const wakeAt = Number.isFinite(step.result?.wakeAtMs) ? step.result.wakeAtMs : 0;
    const left = wakeAt - Date.now();
    if (left > 0) await delay(left);
    await ctx._record(label, "sleep", config, "completed", step.result, null, startedAt);
  }

  /**
   * Waits for a human decision (`POST /api/script-runs/{id}/approvals/{label}`); the run is
   * `awaiting` meanwhile and may be parked and restarted, which replays to here.
   * @param {string} label
   * @param {string} message
   */
  async approval(label, message) {
    checkLabel(label);
    checkText(message, "approval message");
    const step = await this._awaited(label, "approval", { message });
    const r = step.result && typeof step.result === "object" ? step.result : {};
    return {
      approved: r.approved === true,
      by: typeof r.by === "string" ? r.by : null,
      comment: typeof r.comment === "string" ? r.comment : null,
    };
  }

  /**
   * Waits for a value posted to `.../inputs/{label}` (checked by the server against `schema`);
   * a denied input throws StepFailedError, now and on every replay.
   * @param {string} label
   * @param {string} prompt
   * @param {object} [schema] a JSON schema
   */
  async input(label, prompt, schema) {
    checkLabel(label);
    checkText(prompt, "input prompt");
    const config = schema === undefined || schema === null ? { prompt } : { prompt, schema: toJson(label, schema) };
    const step = await this._awaited(label, "input", config);
    if (step.status === "failed") throw failed(label, step);
    return step.result?.value ?? null;
  }

  /**
   * Waits for the event `name` (`POST /api/script-runs/{id}/events/{name}`) and returns its
   * payload; past `timeout` the server fails the step (StepFailedError, and on every replay).
   * @param {string} label
   * @param {string} name
   * @param {{timeout?: number|string}} [options]
   */
  async waitEvent(label, name, options) {
    checkLabel(label);
    checkText(name, "event name");
    if (options !== undefined && options !== null && typeof options !== "object") {
      throw new UsageError(`step ${JSON.stringify(label)}: waitEvent options must be an object`);
    }
    const config = { event: name };
    if (options?.timeout !== undefined && options?.timeout !== null) config.timeoutMs = boundedDuration(options.timeout, "timeout");
    const step = await this._awaited(label, "event", config);
    if (step.status === "failed") throw failed(label, step);
    return step.result?.payload ?? null;
  }

  /** @internal begins a step the server completes, and long-polls until it has. */
  async _awaited(label, stepType, config) {
    const ctx = this._ctx;
    let { action, step } = await ctx._begin(label, stepType, config);
    if (action === "execute") throw new ProtocolError(`the server did not journal the ${stepType} step`);
    while (step.status === "started") step = await ctx._wait(label);
    return step;
  }
}

// ---------------------------------------------------------------------------------------------
// From the environment

/**
 * The context of the run this process belongs to, from the environment the server gives it
 * (`SCRIPT_RUNNER_URL`, `SCRIPT_RUN_ID`, `SCRIPT_RUN_TOKEN`, `SCRIPT_RUN_ARGS`,
 * `SCRIPT_RUN_ATTEMPT`); NotInRunError names a missing variable.
 * @param {NodeJS.ProcessEnv} [env]
 * @returns {Context}
 */
export function fromEnv(env = process.env) {
  const need = (name) => {
    const v = env[name];
    if (v === undefined || v === "") throw new NotInRunError(name);
    return v;
  };
  const url = need("SCRIPT_RUNNER_URL");
  const runId = need("SCRIPT_RUN_ID");
  const token = need("SCRIPT_RUN_TOKEN");
  let args = null;
  if (env.SCRIPT_RUN_ARGS !== undefined) {
    try {
      args = JSON.parse(env.SCRIPT_RUN_ARGS);
    } catch {
      args = null; // not JSON: as the Rust client, no args
    }
  }
  const attempt = Number.parseInt(env.SCRIPT_RUN_ATTEMPT ?? "1", 10);
  return new Context({ url, runId, token, args, attempt: Number.isSafeInteger(attempt) && attempt > 0 ? attempt : 1 });
}

let shared = null;

/**
 * The context of this process's run, made from the environment once: for a plain script
 * without `main`, which uses `step` and `progress` below.
 * @returns {Context}
 */
export function context() {
  if (shared === null) shared = fromEnv();
  return shared;
}

/**
 * The steps of this process's run (`context().step`), for a plain script without `main`; the
 * context is made at the first call, so importing the SDK outside a run does not fail.
 */
export const step = Object.freeze({
  run: (label, fn) => context().step.run(label, fn),
  value: (label, valueOrFn) => context().step.value(label, valueOrFn),
  command: (label, argv, options) => context().step.command(label, argv, options),
  script: (label, scriptId, args, options) => context().step.script(label, scriptId, args, options),
  scriptStart: (label, scriptId, args) => context().step.scriptStart(label, scriptId, args),
  sleep: (label, duration) => context().step.sleep(label, duration),
  approval: (label, message) => context().step.approval(label, message),
  input: (label, prompt, schema) => context().step.input(label, prompt, schema),
  waitEvent: (label, name, options) => context().step.waitEvent(label, name, options),
});

/**
 * Reports this process's run's progress (`context().progress`), for a plain script.
 * @param {number} current
 * @param {number} total
 * @param {string} [message]
 */
export function progress(current, total, message) {
  return context().progress(current, total, message);
}
