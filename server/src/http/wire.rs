//! From the domain to the wire: the job API's answers are `script_runner_wire` types (defined
//! once, read by the clients too); this file maps jobs and scripts onto them.

use script_runner_wire::jobs::{ArgsView, CallbackAttempt, CallbackView, JobView, ScriptView};

use crate::callbacks::Callback;

use crate::config::Script;
use crate::jobs::model::Job;
use crate::time::iso;

/// A job's callback and its attempts (`GET /jobs/:id/callbacks`).
pub fn callback_view(c: Callback) -> CallbackView {
    CallbackView {
        next_attempt_at: (c.state == "pending").then(|| iso(c.next_attempt_at)),
        attempt_log: c
            .attempt_log
            .into_iter()
            .map(|a| CallbackAttempt {
                at: iso(a.at),
                status: a.status,
                error: a.error,
                duration_ms: a.duration_ms,
                event: a.event,
            })
            .collect(),
        id: c.id,
        url: c.url,
        events: c.events,
        state: c.state,
        attempts: c.attempts,
        last_status: c.last_status,
        last_error: c.last_error,
        created_at: iso(c.created_at),
        delivered_at: c.delivered_at.map(iso),
    }
}

/// The job object with `ok: true` (`GET /jobs/:id`, the sync run result, the cancel result).
pub fn job_view(job: Job) -> JobView {
    JobView { ok: Some(true), ..job_item(job) }
}

/// The job object inside a list (the envelope carries `ok`).
pub fn job_item(job: Job) -> JobView {
    let output_error = job.output_error();
    JobView {
        output_error,
        ok: None,
        status: job.status.as_str().to_string(),
        code: job.code,
        started_at: job.started_at.map(iso),
        ended_at: job.ended_at.map(iso),
        duration_ms: job.duration_ms,
        created_at: iso(job.created_at),
        mode: job.mode.as_str().to_string(),
        stdout_size: job.stdout.size,
        stderr_size: job.stderr.size,
        stdout_truncated: job.stdout.truncated,
        stderr_truncated: job.stderr.truncated,
        stdout_ref: job.stdout.log_ref,
        stderr_ref: job.stderr.log_ref,
        stdout_preview: job.stdout.preview,
        stderr_preview: job.stderr.preview,
        job_id: job.id,
        script_id: job.script_id,
        args: job.args,
        error: job.error,
        node: job.node,
        stdout: None,
        stderr: None,
        idempotency_key: job.idempotency_key,
        deduplicated: None,
        queue_position: None,
    }
}

/// The catalog entry of a script.
pub fn script_view(script: &Script, default_mode: crate::config::Mode) -> ScriptView {
    ScriptView {
        id: script.id.clone(),
        mode: script.effective_mode(default_mode).as_str().to_string(),
        timeout_sec: script.timeout_sec,
        args: ArgsView {
            max_items: script.args.max_items,
            item_pattern: script.args.item_pattern.as_str().to_string(),
            item_max_length: script.args.item_max_length,
        },
        description: script.description.clone(),
        concurrency: script.concurrency,
    }
}
