//! script-runner: runs a whitelist of configured scripts as child processes over HTTP, and
//! durable multi-step workflow runs over a step journal.
//!
//! Layers, each depending only on those below it (ARCHITECTURE.md has a paragraph per room):
//! [`http`] (routes, error mapping, domain -> wire) over the two domain services [`jobs`] and
//! [`runs`] (runs use jobs for script steps), over [`process`] (spawn, supervision, logs) and
//! [`db`] (storage: the only module that names the database engine). [`config`], [`sync`] and
//! [`time`] are read by all of them, and [`metrics`] is counted into by all of them; [`server`]
//! wires them together at start.

pub mod callbacks;
pub mod cluster;
pub mod config;
pub mod db;
pub mod events;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod names;
pub mod process;
pub mod runs;
pub mod server;
pub mod sync;
pub mod time;
