//! script-runner: runs a whitelist of configured scripts as child processes over HTTP.
//!
//! Layers, each knowing only the one below: [`http`] (routes, wire types, error mapping) over
//! [`jobs`] (queue, supervision, logs, recovery) over [`db`] (storage: the only module that names the database engine). [`config`] is
//! read by all of them.

pub mod config;
pub mod db;
pub mod http;
pub mod jobs;
pub mod process;
pub mod runs;
pub mod server;
pub mod sync;
pub mod time;
