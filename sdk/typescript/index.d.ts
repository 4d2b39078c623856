// Declarations of @script-runner/sdk (index.mjs), written by hand: the whole public API, so a
// TypeScript workflow is checked against what the SDK really does. Contract: sdk/README.md.

/** Any JSON value: what a step journals and a replay returns. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/**
 * A duration: a number is milliseconds; a string is `"500ms"`, `"10s"`, `"5m"`, `"1h"` (parts
 * may be combined, `"1m30s"`), or a bare number of seconds as the CLI reads it.
 */
export type Duration = number | string;

/**
 * What a value looks like after its JSON round trip through the journal (a `Date` comes back
 * as a string, `undefined` fields are dropped, a function is not JSON): the first execution
 * returns the journaled value too, so first run and replay agree.
 */
export type Jsonified<T> = 0 extends 1 & T
  ? any // eslint-disable-line @typescript-eslint/no-explicit-any -- `any` in, `any` out
  : unknown extends T
    ? JsonValue
    : JsonifiedKnown<T>;

/** `Jsonified` of a type that is neither `any` nor `unknown`. */
type JsonifiedKnown<T> = T extends string | number | boolean | null
  ? T
  : T extends undefined | void
    ? null
    : T extends { toJSON(): infer R }
      ? R
      : T extends (...args: never[]) => unknown
        ? never
        : T extends readonly (infer E)[]
          ? Jsonified<E>[]
          : T extends object
            ? { [K in keyof T as T[K] extends (...args: never[]) => unknown ? never : K]: Jsonified<T[K]> }
            : never;

/** The options of a command or script step, journaled in its config as the CLI's flags are. */
export interface StepOptions {
  /** Tries after the first when a try fails, 1 to 100 (the default: none). */
  retry?: number;
  /** The wait before the first retry, doubled each retry (the server's default: 1 s). Needs `retry`. */
  backoff?: Duration;
  /** The longest wait between tries (the server's default: 1 min, or `backoff` if longer). Needs `backoff`. */
  backoffMax?: Duration;
  /** A try still running this long is stopped and fails as timed out (1 ms to 24 h). */
  timeout?: Duration;
}

/** What a command step did (now, or when it was journaled). */
export interface CommandResult {
  /** Exit code (124 timed out, 128 + signal when killed by a signal, 127 if it could not start). */
  exitCode: number;
  /** Its stdout (at most 16 MiB kept). */
  stdout: string;
  /** Its stderr (at most 16 MiB kept). */
  stderr: string;
  /** True when this came from the journal. */
  replayed: boolean;
}

/** A script step's job, as journaled. */
export interface ScriptResult {
  /** The job id (the same on every replay). */
  jobId: string;
  /** The job's final status (`succeeded`, `failed`, ...). */
  status: string;
  /** Its exit code, if it exited. */
  exitCode: number | null;
  /** Its stdout. */
  stdout: string;
  /** Its stderr. */
  stderr: string;
}

/** An approval decision. */
export interface Approval {
  /** Approved or denied. */
  approved: boolean;
  /** Who decided. */
  by: string | null;
  /** Their comment. */
  comment: string | null;
}

/** The options of `waitEvent`. */
export interface WaitEventOptions {
  /** Past this (1 ms to 24 h) the server fails the step. */
  timeout?: Duration;
}

/**
 * The durable steps of a run: each is keyed by its label; the first execution runs it and
 * journals the result, every replay returns the journaled result without running it.
 */
export interface Steps {
  /**
   * Runs `fn` once and journals its JSON result, or its thrown error; every replay returns the
   * result or throws the same error (`StepFailedError`) without calling `fn`.
   */
  run<T>(label: string, fn: () => T | Promise<T>): Promise<Jsonified<Awaited<T>>>;
  /**
   * Journals a value once (a function is called for it); a function that throws journals
   * nothing (its error is thrown as it is).
   */
  value<T>(label: string, valueOrFn: T | (() => T | Promise<T>)): Promise<Jsonified<Awaited<T>>>;
  /**
   * Runs a local command once (no shell, own process group, `SCRIPT_STEP_KEY`); a non-zero exit
   * is journaled as failed and returned, not thrown.
   */
  command(label: string, argv: readonly [string, ...(string | number | boolean)[]], options?: StepOptions): Promise<CommandResult>;
  /** A configured script as a server-side job; a failed job throws `StepFailedError` (its job in `.result`). */
  script(label: string, scriptId: string, args?: readonly (string | number | boolean)[], options?: StepOptions): Promise<ScriptResult>;
  /** Starts a configured script's job without waiting: its job id, the same on every replay. */
  scriptStart(label: string, scriptId: string, args?: readonly (string | number | boolean)[]): Promise<string>;
  /** A durable sleep (a restart sleeps only what is left). */
  sleep(label: string, duration: Duration): Promise<void>;
  /** Waits for a human decision (`POST /api/script-runs/{id}/approvals/{label}`). */
  approval(label: string, message: string): Promise<Approval>;
  /** Waits for a value posted to `.../inputs/{label}`, checked against `schema`; a denied input throws `StepFailedError`. */
  input<T = JsonValue>(label: string, prompt: string, schema?: { [key: string]: JsonValue }): Promise<T>;
  /** Waits for the event `name` and returns its payload; past `timeout`, `StepFailedError`. */
  waitEvent<T = JsonValue>(label: string, name: string, options?: WaitEventOptions): Promise<T>;
}

/** What `new Context(...)` takes: the run to speak to (tests, tools). */
export interface ContextOptions {
  /** The server address. */
  url: string;
  /** The run id. */
  runId: string;
  /** The run token. */
  token: string;
  /** The run's launch arguments. */
  args?: unknown;
  /** This execution's number, from 1. */
  attempt?: number;
}

/** A workflow run's context: its arguments, ids and durable steps. */
export class Context<Args = JsonValue> {
  constructor(options: ContextOptions);
  /** The server address (`SCRIPT_RUNNER_URL`). */
  readonly url: string;
  /** The run id (`SCRIPT_RUN_ID`). */
  readonly runId: string;
  /** The run's launch arguments (`SCRIPT_RUN_ARGS`), `null` when unset. */
  readonly args: Args;
  /** This execution's number, from 1 (`SCRIPT_RUN_ATTEMPT`). */
  readonly attempt: number;
  /** The durable steps. */
  readonly step: Steps;
  /** Reports the run's progress (`current` of `total`, 0 when unknown). */
  progress(current: number, total: number, message?: string): Promise<void>;
}

/** A workflow's entry point, as the loader calls it. */
export type Main<Args = JsonValue, Output = unknown> = (args: Args, ctx: Context<Args>) => Output | Promise<Output>;

/** The context of this process's run, from the environment; `NotInRunError` names a missing variable. */
export function fromEnv<Args = JsonValue>(env?: Record<string, string | undefined>): Context<Args>;
/** The context of this process's run, made once from the environment (for a plain script). */
export function context<Args = JsonValue>(): Context<Args>;
/** `context().step`, for a plain script without `main`. */
export const step: Steps;
/** `context().progress(...)`, for a plain script. */
export function progress(current: number, total: number, message?: string): Promise<void>;

/** A duration in milliseconds (see `Duration`); `UsageError` when it is none. */
export function parseDuration(duration: Duration, what?: string): number;
/** A duration as a step's error shows it: `2s`, `1500ms`. */
export function showDuration(ms: number): string;

/** Most bytes of a command step's stdout or stderr kept: 16 MiB. */
export const MAX_CAPTURE_BYTES: number;
/** Between SIGTERM and SIGKILL to a timed-out command's process group: 2000 ms. */
export const KILL_GRACE_MS: number;
/** The exit code of a timed-out command step: 124. */
export const TIMED_OUT_EXIT_CODE: 124;
/** Most retries of a step: 100. */
export const MAX_RETRIES: 100;
/** Longest step option duration: 24 h in ms. */
export const MAX_STEP_DURATION_MS: number;

/** Every error code the SDK's own classes use (a `ServerError` carries the server's code). */
export type ErrorCode =
  | "STEP_FAILED"
  | "USAGE"
  | "STEP_DIVERGED"
  | "LIMIT_EXCEEDED"
  | "NOT_IN_RUN"
  | "UNREACHABLE"
  | "PROTOCOL";

/** The base of every error the SDK throws. */
export class ScriptRunnerError extends Error {
  constructor(code: string, message: string);
  /** The error's kind. */
  readonly code: string;
}

/** A journaled step failed (now, or on the execution that journaled it): loader exit 1. */
export class StepFailedError extends ScriptRunnerError {
  constructor(label: string, message: string, result: unknown, errorName?: string | null);
  readonly code: "STEP_FAILED";
  /** The step's label. */
  readonly label: string;
  /** The journaled result (`{name, message}` of a `run` step, the job of a script step). */
  readonly result: JsonValue;
  /** The name of the error a `run` step's function threw (`TypeError`, ...); `null` for a
   * failed script job, a denied input or an event past its time-out, which threw nothing. */
  readonly errorName: string | null;
}

/** A call refused before any request: loader exit 2. */
export class UsageError extends ScriptRunnerError {
  constructor(message: string);
  readonly code: "USAGE";
}

/** A journaled label requested as another step: loader exit 3. */
export class StepDivergedError extends ScriptRunnerError {
  constructor(status: number, message: string);
  readonly code: "STEP_DIVERGED";
  /** The HTTP status. */
  readonly status: number;
}

/** A guardrail stopped the run: loader exit 3. */
export class LimitExceededError extends ScriptRunnerError {
  constructor(status: number, message: string);
  readonly code: "LIMIT_EXCEEDED";
  /** The HTTP status. */
  readonly status: number;
}

/** Any other error answer of the server: loader exit 3. */
export class ServerError extends ScriptRunnerError {
  constructor(status: number, code: string, message: string);
  /** The HTTP status. */
  readonly status: number;
  /** The server's message without code and status. */
  readonly serverMessage: string;
}

/** A variable of the run is missing: loader exit 3. */
export class NotInRunError extends ScriptRunnerError {
  constructor(variable: string);
  readonly code: "NOT_IN_RUN";
  /** The missing variable. */
  readonly variable: string;
}

/** The server does not answer: loader exit 3. */
export class UnreachableError extends ScriptRunnerError {
  constructor(url: string, message: string);
  readonly code: "UNREACHABLE";
  /** The server address. */
  readonly url: string;
}

/** An answer the protocol does not allow: loader exit 3. */
export class ProtocolError extends ScriptRunnerError {
  constructor(message: string);
  readonly code: "PROTOCOL";
}
