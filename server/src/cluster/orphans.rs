//! Processes of nodes that are gone: found on this machine by the marker every process of a node
//! carries ([`crate::process::supervisor::DEPLOYMENT_ENV`]) and killed with SIGKILL.

use std::ffi::OsStr;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::process::supervisor::DEPLOYMENT_ENV;

/// Kills every process of this machine (but this one) whose marker `condemned` says so; the
/// number killed. Processes this user cannot read are left alone (they are not ours).
pub fn kill_marked(condemned: impl Fn(&str) -> bool) -> usize {
    let me = std::process::id() as i32;
    let Ok(all) = procfs::process::all_processes() else { return 0 };
    let mut killed = 0;
    for process in all.flatten() {
        if process.pid == me {
            continue;
        }
        let Ok(env) = process.environ() else { continue };
        let Some(marker) = env.get(OsStr::new(DEPLOYMENT_ENV)).and_then(|v| v.to_str()) else { continue };
        if condemned(marker) && kill(Pid::from_raw(process.pid), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    killed
}
