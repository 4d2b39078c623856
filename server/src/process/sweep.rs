//! Stops what an ended workflow execution left in process groups of its own.
//!
//! A workflow's command steps run as leaders of their own process groups (so a step's
//! time-out can stop a command's children), outside the execution's group that the
//! supervisor stops. The step client stops its command's group when it is signalled, but the
//! supervisor SIGKILLs the execution's group as soon as its leader has gone, which can be
//! before the step client has acted. So when an execution has ended, every process that still
//! carries its run token (and this deployment's marker) in its environment is stopped too:
//! SIGTERM to its group, SIGKILL after the grace. A token is unique to one execution, so a
//! later execution of the same run is never hit, nor a process of another deployment.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::supervisor::DEPLOYMENT_ENV;

/// The environment variable that names a workflow execution's processes (its run token).
pub const EXECUTION_ENV: &str = "SCRIPT_RUN_TOKEN";

/// Stops the process groups of every process whose environment has `EXECUTION_ENV=token` and
/// `DEPLOYMENT_ENV=deployment`: SIGTERM, then SIGKILL to the groups still there after
/// `grace`. Returns how many groups were signalled. Blocking (reads `/proc`): call it off the
/// async workers.
pub fn stop_execution_leftovers(deployment: &str, token: &str, grace: Duration) -> usize {
    let groups = marked_groups(deployment, token);
    for &group in &groups {
        let _ = killpg(Pid::from_raw(group), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    loop {
        let left: Vec<i32> = groups.iter().copied().filter(|&g| killpg(Pid::from_raw(g), None).is_ok()).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for group in left {
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    groups.len()
}

/// The process groups of the processes carrying both markers (never this server's own).
fn marked_groups(deployment: &str, token: &str) -> HashSet<i32> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut groups = HashSet::new();
    let Ok(all) = procfs::process::all_processes() else { return groups };
    for process in all.flatten() {
        if process.pid == me {
            continue;
        }
        let Ok(env) = process.environ() else { continue };
        let has = |key: &str, value: &str| env.get(OsStr::new(key)).and_then(|v| v.to_str()) == Some(value);
        if !has(DEPLOYMENT_ENV, deployment) || !has(EXECUTION_ENV, token) {
            continue;
        }
        if let Ok(stat) = process.stat() {
            // A zombie is gone already; group 0 or this server's own group is never signalled.
            if stat.state != 'Z' && stat.pgrp > 0 && stat.pgrp != me {
                groups.insert(stat.pgrp);
            }
        }
    }
    groups
}
