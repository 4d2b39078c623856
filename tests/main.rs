//! The integration tests, one binary (linked once): each module starts the real
//! `script-runner` binary on `127.0.0.1:0` through the shared harness in `common`.
//!
//! Run one module or test with a filter: `cargo test --test integration durability::`.
#![allow(missing_docs, reason = "test modules")]

mod common;

mod api;
mod blocks_flows;
mod callbacks;
mod cluster;
mod concurrency;
mod durability;
mod inputs;
mod logs;
mod metrics;
mod migrate_db;
mod oomol_worker;
mod openapi;
mod postgres;
mod processes;
mod resume_urls;
mod run_events;
mod run_retry;
mod runs_api;
mod runs_replay;
mod sdk;
mod spawn_pipes;
mod step_key;
mod step_retry;
mod streams;
mod ui;
