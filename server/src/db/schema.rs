//! Diesel table definitions, written by hand to match `migrations/sqlite`.
//!
//! Only portable types are used (BigInt, Integer, Text, Bool, Nullable), so a PostgreSQL
//! backend can share this file.
#![allow(missing_docs, reason = "the table! macro generates one type per column")]

diesel::table! {
    /// One row per job.
    jobs (seq) {
        seq -> BigInt,
        id -> Text,
        script_id -> Text,
        mode -> Text,
        status -> Text,
        args -> Text,
        code -> Nullable<Integer>,
        error -> Nullable<Text>,
        created_at -> BigInt,
        started_at -> Nullable<BigInt>,
        ended_at -> Nullable<BigInt>,
        duration_ms -> Nullable<BigInt>,
        stdout_ref -> Text,
        stderr_ref -> Text,
        stdout_size -> BigInt,
        stderr_size -> BigInt,
        stdout_truncated -> Bool,
        stderr_truncated -> Bool,
        stdout_preview -> Text,
        stderr_preview -> Text,
        stdout_lines -> Nullable<BigInt>,
        stderr_lines -> Nullable<BigInt>,
        pid -> Nullable<Integer>,
        proc_start_ticks -> Nullable<BigInt>,
        idempotency_key -> Nullable<Text>,
        stdout_error -> Nullable<Text>,
        stderr_error -> Nullable<Text>,
        node -> Nullable<Text>,
        step_key -> Nullable<Text>,
    }
}

diesel::table! {
    /// Upstream job stores already imported.
    imports (source) {
        source -> Text,
        imported_at -> BigInt,
        jobs -> Integer,
    }
}

diesel::table! {
    /// One row per durable workflow run.
    script_runs (seq) {
        seq -> BigInt,
        id -> Text,
        script_name -> Text,
        workflow_id -> Nullable<Text>,
        interpreter -> Nullable<Text>,
        flow -> Nullable<Text>,
        status -> Text,
        args -> Text,
        source -> Text,
        source_sha256 -> Text,
        output -> Nullable<Text>,
        error -> Nullable<Text>,
        warnings -> Text,
        idempotency_key -> Nullable<Text>,
        request_sha256 -> Text,
        token_sha256 -> Text,
        forked_from -> Nullable<Text>,
        pid -> Nullable<Integer>,
        attempt -> Integer,
        progress_current -> Nullable<BigInt>,
        progress_total -> Nullable<BigInt>,
        progress_message -> Nullable<Text>,
        created_at -> BigInt,
        started_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
        last_heartbeat_at -> Nullable<BigInt>,
        node -> Nullable<Text>,
        waiting_for -> Nullable<Text>,
        retry -> Nullable<Text>,
        attempts -> Text,
        next_attempt_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// The step journal: one row per (run, label).
    script_run_journal (run_id, step_key) {
        run_id -> Text,
        step_key -> Text,
        seq -> BigInt,
        step_type -> Text,
        config -> Text,
        status -> Text,
        result -> Nullable<Text>,
        error -> Nullable<Text>,
        job_id -> Nullable<Text>,
        started_at -> BigInt,
        completed_at -> Nullable<BigInt>,
        duration_ms -> Nullable<BigInt>,
        attempts -> Text,
    }
}

diesel::table! {
    /// What happened to each run, in order: one row per event, `seq` per run from 1.
    script_run_events (run_id, seq) {
        run_id -> Text,
        seq -> BigInt,
        kind -> Text,
        body -> Text,
        at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(script_runs, script_run_journal, script_run_events);

diesel::table! {
    /// The outbox of completion callbacks: one row per callback asked for (see
    /// migrations/*/..._callbacks).
    callbacks (id) {
        id -> Text,
        owner_kind -> Text,
        owner_id -> Text,
        url -> Text,
        events -> Text,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        last_status -> Nullable<Integer>,
        last_error -> Nullable<Text>,
        attempt_log -> Text,
        created_at -> BigInt,
        delivered_at -> Nullable<BigInt>,
        status_seq -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(jobs, callbacks);
diesel::allow_tables_to_appear_in_same_query!(script_runs, callbacks);

diesel::table! {
    /// The resume URLs used, by the SHA-256 of their token (see migrations/*/..._resume_tokens).
    resume_tokens (token_hash) {
        token_hash -> Text,
        run_id -> Text,
        step_key -> Text,
        action -> Text,
        use_id -> Text,
        used_at -> BigInt,
    }
}
