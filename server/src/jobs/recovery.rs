//! Recovery after a crash: jobs the database still shows in flight are settled before serving.
//!
//! - Every process that carries this deployment's database path in `SCRIPT_RUNNER_DB` is killed:
//!   recovery runs before this server starts any job, so such a process can only be left from
//!   the previous run (a lock file keeps two servers off one database). This also finds sync
//!   jobs that had not been written yet, and processes that left their group. Recorded leaders
//!   are killed with their whole group, but only if they are the same process (same pid *and*
//!   same start time, so a reused pid is never signalled).
//! - `running` jobs end `failed` with a message saying the server restarted.
//! - `queued` async jobs run again, in their original order: an async job's start is committed
//!   before its process is spawned, so one still `queued` never started. (A process found for
//!   one anyway still makes it end `failed`, never start a second time.)
//! - `queued` sync jobs end `failed`: the caller that waited for them is gone.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use log::{info, warn};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::model::{Job, JobStatus};
use super::{JobError, JobManager};
use crate::config::Mode;
use crate::db::WriteOp;
use crate::process::logs::{self, preview_text};
use crate::process::supervisor::{start_ticks, DEPLOYMENT_ENV, OWNER_ID_ENV};
use crate::time::now_ms;

/// What recovery did, for the start-up log and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Jobs ended `failed` because they were running when the server stopped.
    pub interrupted: usize,
    /// Processes killed.
    pub killed: usize,
    /// Queued async jobs put back in the queue.
    pub requeued: usize,
    /// Queued sync jobs (or jobs of scripts no longer configured) ended `failed`.
    pub abandoned: usize,
}

/// Settles every job left in flight. Must run before the server accepts requests, outside the
/// async runtime (it blocks on database commits).
pub fn recover(manager: &JobManager) -> Result<Recovery, JobError> {
    let store = manager.store();
    let jobs: Vec<Job> = store.unfinished_jobs()?;
    let mut report = Recovery::default();
    let (found, killed) = kill_processes(&jobs, &manager.deployment_marker());
    report.killed = killed;
    let jobs_seen = jobs.len();
    for mut job in jobs {
        let now = now_ms();
        let started = job.status == JobStatus::Running || found.contains(&job.id);
        let script = manager.config().script(&job.script_id).cloned();
        if started {
            job.end(
                JobStatus::Failed,
                Some("the server restarted while the job was running; its processes were stopped".into()),
                now,
            );
            refresh_streams(manager, &mut job);
            report.interrupted += 1;
        } else if job.mode == Mode::Sync {
            job.end(
                JobStatus::Failed,
                Some("the server restarted before this sync job started; its caller is gone".into()),
                now,
            );
            report.abandoned += 1;
        } else if let Some(script) = script {
            manager.requeue(job, script);
            report.requeued += 1;
            continue;
        } else {
            job.end(JobStatus::Failed, Some(format!("script {} is no longer configured", job.script_id)), now);
            report.abandoned += 1;
        }
        store.writer().write_blocking(WriteOp::update_job(&job))?;
    }
    if jobs_seen == 0 && report.killed == 0 {
        return Ok(report);
    }
    info!(
        "recovery: {} interrupted job(s) failed, {} process(es) killed, {} queued job(s) requeued, {} abandoned",
        report.interrupted, report.killed, report.requeued, report.abandoned
    );
    Ok(report)
}

/// Reads back the size and preview of each job of a cluster node's previous run that joining
/// ended `failed` (see `crate::cluster`), from its log files on this machine, and saves them.
pub fn refresh_interrupted(manager: &JobManager, ids: Vec<String>) -> Result<(), JobError> {
    let store = manager.store();
    for id in ids {
        if let Some(mut job) = store.get_job(&id)? {
            refresh_streams(manager, &mut job);
            store.writer().write_blocking(WriteOp::update_job(&job))?;
        }
    }
    Ok(())
}

/// Size and preview of an interrupted job's logs, read back from the files (its in-memory
/// counters and preview died with the server).
fn refresh_streams(manager: &JobManager, job: &mut Job) {
    let runner = &manager.config().runner;
    for info in [&mut job.stdout, &mut job.stderr] {
        info.lines = None;
        let Some(path) = manager.log_path(&info.log_ref) else { continue };
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let tail = runner.preview_max_bytes as u64;
        if let Ok(page) = logs::read_bytes(&path, size.saturating_sub(tail), tail) {
            info.preview = preview_text(&page.data, size > page.data.len() as u64);
        }
        info.size = size;
        info.truncated = info.truncated || size >= runner.max_log_bytes_per_stream;
    }
}

/// Kills what the previous run of this deployment left: the recorded groups of these jobs and
/// every process carrying the deployment's marker. Returns the ids of the jobs those processes
/// belonged to, and how many processes were signalled.
fn kill_processes(jobs: &[Job], deployment: &str) -> (HashSet<String>, usize) {
    let mut found = HashSet::new();
    let mut victims = Vec::new();
    for job in jobs {
        if let (Some(pid), Some(ticks)) = (job.pid, job.proc_start_ticks) {
            if pid > 0 && start_ticks(pid) == Some(ticks) && killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                found.insert(job.id.clone());
                victims.push(pid);
            }
        }
    }
    let me = std::process::id() as i32;
    if let Ok(all) = procfs::process::all_processes() {
        for process in all.flatten() {
            if process.pid == me {
                continue;
            }
            let Ok(env) = process.environ() else { continue };
            if env.get(OsStr::new(DEPLOYMENT_ENV)).and_then(|v| v.to_str()) != Some(deployment) {
                continue;
            }
            if kill(Pid::from_raw(process.pid), Signal::SIGKILL).is_ok() {
                victims.push(process.pid);
                if let Some(id) = env.get(OsStr::new(OWNER_ID_ENV)).and_then(|v| v.to_str()) {
                    found.insert(id.to_string());
                }
            }
        }
    }
    wait_gone(&victims, Duration::from_secs(3));
    (found, victims.len())
}

/// Waits until these processes are gone (or zombies waiting for init), at most `bound`.
fn wait_gone(pids: &[i32], bound: Duration) {
    let deadline = Instant::now() + bound;
    let alive =
        |pid: i32| procfs::process::Process::new(pid).and_then(|p| p.stat()).map(|s| s.state != 'Z').unwrap_or(false);
    while pids.iter().any(|&p| alive(p)) {
        if Instant::now() >= deadline {
            warn!("recovery: some killed processes are still present after {bound:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
