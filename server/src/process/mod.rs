//! Process infrastructure: starting a script's process ([`spawn`]), supervising it to its end
//! (group kill, reaping, time-outs: [`supervisor`]) and capturing its output ([`logs`]).
//!
//! Jobs and workflow executions both run their processes through this layer. It knows nothing
//! of jobs, runs, HTTP or the database: a caller hands it a [`supervisor::Launch`] (what to run,
//! where its logs go, an owner id exported for crash recovery) and gets an
//! [`supervisor::Outcome`] back, with [`supervisor::Events`] along the way.

pub mod logs;
pub mod spawn;
pub mod supervisor;
pub mod sweep;
