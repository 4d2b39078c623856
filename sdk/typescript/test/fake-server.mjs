// An in-process fake of the server's internal step routes with a tiny in-memory journal, so
// the SDK's unit tests see exactly which requests it makes and what it does with each answer.
// Not the server's rules in full: just begin/record/wait/attempts/get/progress, divergence,
// a step guardrail, the run token, and switches for 503 STORE_UNAVAILABLE and errors.

import http from "node:http";

/** JSON with sorted keys, to compare configs as the server does (by value). */
function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v && typeof v === "object") {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")}}`;
  }
  return JSON.stringify(v ?? null);
}

export class FakeServer {
  constructor({ runId = "run_test_1", token = "tok" } = {}) {
    this.runId = runId;
    this.token = token;
    /** @type {Map<string, any>} label -> journal entry */
    this.journal = new Map();
    /** Every request: {method, path, label, route, body}. */
    this.requests = [];
    /** Answer this many requests with 503 STORE_UNAVAILABLE first. */
    this.unavailable = 0;
    /** Most steps begun (a guardrail: LIMIT_EXCEEDED beyond). */
    this.maxSteps = Infinity;
    /** Fake configured scripts: id -> (args, key) => {status, exitCode, stdout, stderr}. */
    this.scripts = {};
    this.progress = [];
    this.jobs = 0;
    this.waiters = new Set();
    this.server = http.createServer((req, res) => this.handle(req, res));
  }

  async start() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  async stop() {
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(resolve));
  }

  /** The environment a workflow process of this run gets. */
  env(extra = {}) {
    return { SCRIPT_RUNNER_URL: this.url, SCRIPT_RUN_ID: this.runId, SCRIPT_RUN_TOKEN: this.token, ...extra };
  }

  /** Requests of one route (`begin`, `record`, `wait`, `attempts`, `get`, `progress`). */
  calls(route, label) {
    return this.requests.filter((r) => r.route === route && (label === undefined || r.label === label));
  }

  /** Ends a started step from outside (a decision, an input, an event). */
  settle(label, status, result, error = null) {
    const step = this.journal.get(label);
    if (!step) throw new Error(`no step ${label}`);
    Object.assign(step, { status, result, error, completedAt: new Date().toISOString() });
    for (const wake of this.waiters) wake();
  }

  entry(label, stepType, config, status, result = null, error = null) {
    return {
      stepKey: label, stepType, config, status, result, error, jobId: null,
      startedAt: new Date().toISOString(), completedAt: null, durationMs: null, attempts: [],
    };
  }

  handle(req, res) {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const text = Buffer.concat(chunks).toString("utf8");
      const url = new URL(req.url, "http://x");
      const prefix = `/api/internal/script-runs/${encodeURIComponent(this.runId)}/`;
      const send = (status, body) => {
        const data = JSON.stringify(body);
        res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) });
        res.end(data);
      };
      const error = (status, code, message) => send(status, { ok: false, error: { code, message } });
      if (!url.pathname.startsWith(prefix)) return error(404, "NOT_FOUND", url.pathname);
      const rest = url.pathname.slice(prefix.length);
      const m = /^steps\/([^/]+)(?:\/(begin|wait|attempts))?$/.exec(rest);
      const label = m ? decodeURIComponent(m[1]) : undefined;
      let route;
      if (rest === "steps" && req.method === "POST") route = "record";
      else if (rest === "progress" && req.method === "POST") route = "progress";
      else if (m && m[2]) route = m[2];
      else if (m && req.method === "GET") route = "get";
      let body = null;
      try {
        body = text ? JSON.parse(text) : null;
      } catch {
        return error(400, "INVALID_REQUEST", "not JSON");
      }
      this.requests.push({ method: req.method, path: url.pathname + url.search, rawLabel: m?.[1], label, route, body });
      if (req.headers.authorization !== `Bearer ${this.token}`) return error(403, "FORBIDDEN", "not this run's token");
      if (this.unavailable > 0) {
        this.unavailable--;
        return error(503, "STORE_UNAVAILABLE", "the database is away");
      }
      try {
        switch (route) {
          case "begin": return await this.begin(label, body, send, error);
          case "record": return this.record(body, send);
          case "wait": return await this.wait(label, Number(url.searchParams.get("timeoutMs")), send, error);
          case "attempts": return this.attempt(label, body, send, error);
          case "get": {
            const step = this.journal.get(label);
            return step ? send(200, { ok: true, step }) : error(404, "STEP_NOT_FOUND", label);
          }
          case "progress":
            this.progress.push(body);
            return send(200, { ok: true });
          default:
            return error(404, "NOT_FOUND", rest);
        }
      } catch (e) {
        return error(500, "INTERNAL", String(e));
      }
    });
  }

  async begin(label, { stepType, config }, send, error) {
    const old = this.journal.get(label);
    if (old) {
      if (old.stepType !== stepType || canonical(old.config) !== canonical(config)) {
        return error(409, "STEP_DIVERGED", `STEP_DIVERGED: step ${JSON.stringify(label)} was journaled as ${old.stepType} ${canonical(old.config)} but is now requested as ${stepType} ${canonical(config)}`);
      }
      return send(200, { ok: true, action: old.status === "started" ? "resume" : "done", step: old });
    }
    if (this.journal.size + 1 > this.maxSteps) {
      return error(409, "LIMIT_EXCEEDED", `SCRIPT_RUN_MAX_STEPS exceeded (${this.journal.size + 1}/${this.maxSteps})`);
    }
    const now = Date.now();
    switch (stepType) {
      case "value":
        return send(200, { ok: true, action: "execute", step: null });
      case "command":
        if (config.retry) {
          const step = this.entry(label, stepType, config, "started");
          this.journal.set(label, step);
          return send(200, { ok: true, action: "resume", step });
        }
        return send(200, { ok: true, action: "execute", step: null });
      case "sleep": {
        const step = this.entry(label, stepType, config, "started", { wakeAtMs: now + config.durationMs });
        this.journal.set(label, step);
        return send(200, { ok: true, action: "resume", step });
      }
      case "script": {
        const script = this.scripts[config.scriptId];
        if (!script) return error(400, "SCRIPT_NOT_FOUND", config.scriptId);
        const jobId = `job_${++this.jobs}`;
        if (config.wait === false) {
          const step = this.entry(label, stepType, config, "completed", { jobId, status: "queued" });
          step.jobId = jobId;
          this.journal.set(label, step);
          return send(200, { ok: true, action: "done", step });
        }
        const ran = await script(config.args, `${this.runId}:${label}`);
        const ok = ran.status === "succeeded";
        const step = this.entry(label, stepType, config, ok ? "completed" : "failed", { jobId, ...ran },
          ok ? null : `job ${jobId} ${ran.status} with exit code ${ran.exitCode}`);
        step.jobId = jobId;
        this.journal.set(label, step);
        return send(200, { ok: true, action: "done", step });
      }
      case "approval":
      case "input":
      case "event": {
        const step = this.entry(label, stepType, config, "started");
        this.journal.set(label, step);
        if (stepType === "event" && config.timeoutMs) {
          setTimeout(() => {
            if (step.status === "started") {
              this.settle(label, "failed", null, `event ${JSON.stringify(config.event)} did not arrive within ${config.timeoutMs} ms`);
            }
          }, config.timeoutMs).unref();
        }
        return send(200, { ok: true, action: "resume", step });
      }
      default:
        return error(400, "INVALID_REQUEST", `unknown step type ${stepType}`);
    }
  }

  record(body, send) {
    const old = this.journal.get(body.stepKey);
    if (old && old.status !== "started") return send(200, { ok: true, step: old });
    const step = old ?? this.entry(body.stepKey, body.stepType, body.config, body.status);
    Object.assign(step, {
      status: body.status, result: body.result ?? null, error: body.error ?? null,
      durationMs: body.durationMs ?? null, completedAt: new Date().toISOString(),
    });
    delete step.nextAttemptAt;
    this.journal.set(body.stepKey, step);
    return send(200, { ok: true, step });
  }

  async wait(label, timeoutMs, send, error) {
    const step = this.journal.get(label);
    if (!step) return error(404, "STEP_NOT_FOUND", label);
    if (step.status === "started") {
      await new Promise((resolve) => {
        const wake = () => {
          this.waiters.delete(wake);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(timeoutMs || 25_000, 25_000));
        this.waiters.add(wake);
      });
    }
    return send(200, { ok: true, step });
  }

  attempt(label, body, send, error) {
    const step = this.journal.get(label);
    if (!step) return error(404, "STEP_NOT_FOUND", label);
    if (canonical(step.config) !== canonical(body.config)) return error(409, "STEP_DIVERGED", label);
    if (body.attempt !== step.attempts.length + 1) return error(400, "INVALID_REQUEST", `attempt ${body.attempt} is not the next`);
    step.attempts.push({
      attempt: body.attempt, status: "failed", exitCode: body.exitCode, error: body.error, stderrTail: body.stderrTail,
      startedAt: new Date(body.startedAtMs).toISOString(), endedAt: new Date(body.endedAtMs).toISOString(),
    });
    const backoff = step.config.backoffMs ?? 1000;
    const max = step.config.backoffMaxMs ?? Math.max(60_000, backoff);
    const wait = Math.min(backoff * 2 ** (body.attempt - 1), max);
    step.result = { ...(step.result ?? {}), nextAttemptAtMs: Date.now() + wait };
    step.nextAttemptAt = new Date(Date.now() + wait).toISOString();
    return send(200, { ok: true, step });
  }
}
