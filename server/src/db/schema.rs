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
