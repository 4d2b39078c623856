//! Running one job's process: spawn, stream its output to the logs, stop it, reap it.
//!
//! The script is executed directly (argv, never a shell) as the leader of a new process group,
//! with stdin from `/dev/null`. One thread supervises it with `poll(2)` over both output pipes,
//! a pidfd (readable when the leader exits) and an eventfd (rung on cancel):
//!
//! - cancel or timeout: SIGTERM to the whole group, then SIGKILL to the group after the grace;
//! - when the leader exits, its exit status is read without reaping it (`WNOWAIT`), the group
//!   is sent SIGKILL (processes the script left behind are ended too), and only then is the
//!   leader reaped. Because the unreaped leader keeps its pid, and so the group id, allocated,
//!   a signal to the group can never reach an unrelated process that reused the number;
//! - output is drained until both pipes close, or [`DRAIN_AFTER_EXIT`] after the leader's exit
//!   when a process that left the group still holds a pipe open.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::logs::{LiveStream, LogSink, StreamSummary};

/// How long output is still drained after the leader exited and its group was killed.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// The environment variable every job process gets, holding its job id. Recovery after a crash
/// finds a job's processes by it (also those that left the process group).
pub const JOB_ID_ENV: &str = "SCRIPT_RUNNER_JOB_ID";
/// The environment variable holding the deployment's database path. Recovery only touches
/// processes that carry this deployment's value, so two deployments on one machine (whose job
/// ids may coincide) never stop each other's jobs.
pub const DEPLOYMENT_ENV: &str = "SCRIPT_RUNNER_DB";
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// One read buffer per supervisor thread, reused by every job the thread runs (a fresh
    /// 64 KiB allocation per job costs mmap/munmap and TLB shootdowns on the other cores).
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_CHUNK]);
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Job id, exported as [`JOB_ID_ENV`].
    pub job_id: String,
    /// Deployment marker, exported as [`DEPLOYMENT_ENV`].
    pub deployment: String,
    /// The executable.
    pub program: PathBuf,
    /// argv[1..], passed verbatim.
    pub args: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
    /// Stop the job as timed out after this long.
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Log file for stdout.
    pub stdout_log: PathBuf,
    /// Log file for stderr.
    pub stderr_log: PathBuf,
    /// Bytes stored per stream.
    pub log_cap: u64,
    /// Bytes of preview per stream.
    pub preview_max: usize,
}

/// The handle another thread uses to cancel a supervised job.
pub struct Control {
    wake: EventFd,
    cancel: AtomicBool,
}

impl Control {
    /// A fresh control; fails only if the system is out of file descriptors.
    pub fn new() -> io::Result<Arc<Control>> {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Arc::new(Control { wake, cancel: AtomicBool::new(false) }))
    }

    /// Asks the supervisor to stop the job (idempotent). A job not yet spawned never starts.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    /// Whether cancel was asked.
    pub fn is_canceled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// The spawned leader, as recorded for crash recovery.
#[derive(Debug, Clone, Copy)]
pub struct Spawned {
    /// Leader pid, which is also the process group id.
    pub pid: i32,
    /// Wall-clock start, Unix ms.
    pub started_at: i64,
}

/// How the job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// The leader exited with this code.
    Exited(i32),
    /// The leader was killed by this signal (not by us).
    Signaled(i32),
    /// Stopped by us after its timeout.
    TimedOut,
    /// Stopped by us on request.
    Canceled,
    /// It could not be started; the message says why.
    SpawnFailed(String),
}

/// Everything the supervisor learned.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How it ended.
    pub ending: Ending,
    /// When the process started, if it did.
    pub spawned: Option<Spawned>,
    /// Unix ms.
    pub ended_at: i64,
    /// Milliseconds from spawn (or from the attempt) to the end.
    pub duration_ms: i64,
    /// Stdout summary.
    pub stdout: StreamSummary,
    /// Stderr summary.
    pub stderr: StreamSummary,
}

/// Live counters of both streams, available once the process started.
pub type LiveStreams = [Arc<LiveStream>; 2];

/// How long a process runs before [`Events::still_running`] asks the caller to record it.
///
/// Most jobs are over sooner: they are then recorded once, finished, instead of twice. A crash
/// inside this window is still recovered: recovery finds the processes by [`JOB_ID_ENV`].
pub const RECORD_RUNNING_AFTER: Duration = Duration::from_millis(20);

/// What the supervisor tells its caller while the job runs.
pub trait Events {
    /// The process exists; called before any output is read.
    fn spawned(&mut self, spawned: Spawned, live: LiveStreams);
    /// The process has been running for [`RECORD_RUNNING_AFTER`]; called at most once, with
    /// the leader's start time (read only now: most jobs never need it).
    fn still_running(&mut self, start_ticks: Option<u64>);
}

/// Runs the job to its end on the calling thread, reporting through `events`.
pub fn supervise(launch: &Launch, control: &Control, events: &mut impl Events) -> Outcome {
    let attempt = Instant::now();
    let fail = |message: String| Outcome {
        ending: Ending::SpawnFailed(message),
        spawned: None,
        ended_at: crate::time::now_ms(),
        duration_ms: elapsed_ms(attempt),
        stdout: StreamSummary::default(),
        stderr: StreamSummary::default(),
    };
    if control.is_canceled() {
        let mut outcome = fail(String::new());
        outcome.ending = Ending::Canceled;
        return outcome;
    }
    let out_sink = LogSink::new(&launch.stdout_log, launch.log_cap, launch.preview_max);
    let err_sink = LogSink::new(&launch.stderr_log, launch.log_cap, launch.preview_max);
    let mut child = match command(launch).spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {}: {e}", launch.program.display())),
    };
    let started = Instant::now();
    let pid = child.id() as i32;
    let spawned = Spawned { pid, started_at: crate::time::now_ms() };
    events.spawned(spawned, [out_sink.live(), err_sink.live()]);

    let mut run = Running::new(launch, &mut child, out_sink, err_sink);
    let ending = run.event_loop(control, events);
    let (stdout, stderr) = (run.out.sink.finish(), run.err.sink.finish());
    Outcome {
        ending,
        spawned: Some(spawned),
        ended_at: crate::time::now_ms(),
        duration_ms: elapsed_ms(started),
        stdout,
        stderr,
    }
}

fn command(launch: &Launch) -> Command {
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
        .current_dir(&launch.cwd)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .env(JOB_ID_ENV, &launch.job_id)
        .env(DEPLOYMENT_ENV, &launch.deployment)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A new group led by the child; std still uses posix_spawn for this (no pre_exec).
        .process_group(0);
    cmd
}

/// One output pipe and where it goes.
struct Pipe<R> {
    reader: Option<R>,
    sink: LogSink,
}

impl<R: Read> Pipe<R> {
    /// Reads what is available; closes the pipe at end of file or on error.
    fn pump(&mut self, buf: &mut [u8]) {
        let Some(reader) = self.reader.as_mut() else { return };
        match reader.read(buf) {
            Ok(0) => self.reader = None,
            Ok(n) => self.sink.write(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.reader = None,
        }
    }
}

struct Running<'a> {
    child: &'a mut Child,
    pgid: Pid,
    pidfd: Option<OwnedFd>,
    out: Pipe<ChildStdout>,
    err: Pipe<ChildStderr>,
    timeout_at: Option<Instant>,
    kill_grace: Duration,
}

/// Why we are stopping the job, and when SIGKILL is due (None once sent).
struct Stopping {
    reason: Ending,
    kill_at: Option<Instant>,
}

impl<'a> Running<'a> {
    fn new(launch: &Launch, child: &'a mut Child, out_sink: LogSink, err_sink: LogSink) -> Running<'a> {
        let pid = child.id() as i32;
        let pidfd = rustix::process::Pid::from_raw(pid)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
        let out = Pipe { reader: child.stdout.take(), sink: out_sink };
        let err = Pipe { reader: child.stderr.take(), sink: err_sink };
        Running {
            child,
            pgid: Pid::from_raw(pid),
            pidfd,
            out,
            err,
            timeout_at: launch.timeout.map(|t| Instant::now() + t),
            kill_grace: launch.kill_grace,
        }
    }

    fn event_loop(&mut self, control: &Control, events: &mut impl Events) -> Ending {
        READ_BUFFER.with_borrow_mut(|buf| self.run_loop(control, events, buf))
    }

    fn run_loop(&mut self, control: &Control, events: &mut impl Events, buf: &mut [u8]) -> Ending {
        let mut record_at = Some(Instant::now() + RECORD_RUNNING_AFTER);
        let mut stopping: Option<Stopping> = None;
        let mut exit: Option<WaitStatus> = None;
        let mut drain_until: Option<Instant> = None;
        loop {
            let pipes_open = self.out.reader.is_some() || self.err.reader.is_some();
            if exit.is_some() && (!pipes_open || drain_until.is_some_and(|d| Instant::now() >= d)) {
                break;
            }
            let deadline = [
                stopping.as_ref().map_or(self.timeout_at, |_| None),
                stopping.as_ref().and_then(|s| s.kill_at),
                drain_until,
                record_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let mut timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if self.pidfd.is_none() && exit.is_none() {
                // No pidfd (very old kernel): look for the exit every 20 ms.
                timeout = Some(timeout.map_or(Duration::from_millis(20), |t| t.min(Duration::from_millis(20))));
            }
            let ready = self.wait_ready(timeout, exit.is_none(), control);
            if ready.out {
                self.out.pump(buf);
            }
            if ready.err {
                self.err.pump(buf);
            }
            let now = Instant::now();
            if record_at.is_some_and(|r| now >= r) {
                record_at = None;
                if exit.is_none() {
                    // The leader is not reaped yet, so this pid is still the job's.
                    events.still_running(start_ticks(self.pgid.as_raw()));
                }
            }
            if exit.is_none() && stopping.is_none() {
                let reason = if control.is_canceled() {
                    Some(Ending::Canceled)
                } else if self.timeout_at.is_some_and(|t| now >= t) {
                    Some(Ending::TimedOut)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    self.signal_group(Signal::SIGTERM);
                    stopping = Some(Stopping { reason, kill_at: Some(now + self.kill_grace) });
                }
            }
            if let Some(s) = stopping.as_mut() {
                if s.kill_at.is_some_and(|k| now >= k) {
                    self.signal_group(Signal::SIGKILL);
                    s.kill_at = None;
                }
            }
            if exit.is_none() && (ready.exited || self.pidfd.is_none()) {
                if let Some(status) = self.peek_exit() {
                    // Leader is a zombie: its group id cannot be reused yet, so this reaches
                    // exactly the processes it left behind.
                    self.signal_group(Signal::SIGKILL);
                    let _ = self.child.wait();
                    exit = Some(status);
                    record_at = None;
                    drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                }
            }
        }
        match (stopping, exit) {
            (Some(s), _) => s.reason,
            (None, Some(WaitStatus::Exited(_, code))) => Ending::Exited(code),
            (None, Some(WaitStatus::Signaled(_, sig, _))) => Ending::Signaled(sig as i32),
            (None, _) => Ending::Signaled(0),
        }
    }

    fn wait_ready(&self, timeout: Option<Duration>, want_exit: bool, control: &Control) -> Ready {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(4);
        let mut slots = [usize::MAX; 4];
        let input = PollFlags::POLLIN;
        if let Some(r) = &self.out.reader {
            slots[0] = fds.len();
            fds.push(PollFd::new(r.as_fd(), input));
        }
        if let Some(r) = &self.err.reader {
            slots[1] = fds.len();
            fds.push(PollFd::new(r.as_fd(), input));
        }
        if let (Some(p), true) = (&self.pidfd, want_exit) {
            slots[2] = fds.len();
            fds.push(PollFd::new(p.as_fd(), input));
        }
        slots[3] = fds.len();
        fds.push(PollFd::new(control.wake.as_fd(), input));
        let timeout = match timeout {
            None => PollTimeout::NONE,
            // Round up so a deadline is never polled for 0 ms repeatedly before it is reached.
            Some(t) => PollTimeout::try_from(t.as_millis().saturating_add(1).min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX),
        };
        let mut ready = Ready::default();
        match poll(&mut fds, timeout) {
            Ok(n) if n > 0 => {}
            _ => return ready,
        }
        let hit = |slot: usize| {
            fds.get(slot)
                .and_then(|f| f.revents())
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR))
        };
        ready.out = hit(slots[0]);
        ready.err = hit(slots[1]);
        ready.exited = hit(slots[2]);
        if hit(slots[3]) {
            let _ = control.wake.read();
        }
        ready
    }

    /// The leader's exit status if it has exited, without reaping it.
    fn peek_exit(&self) -> Option<WaitStatus> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
        match waitid(Id::Pid(self.pgid), flags) {
            Ok(WaitStatus::StillAlive) | Err(_) => None,
            Ok(status) => Some(status),
        }
    }

    fn signal_group(&self, signal: Signal) {
        // ESRCH (the group is already empty) is the normal case after the leader's exit.
        let _ = killpg(self.pgid, signal);
    }
}

#[derive(Default)]
struct Ready {
    out: bool,
    err: bool,
    exited: bool,
}

/// The start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_ticks(pid: i32) -> Option<u64> {
    procfs::process::Process::new(pid).and_then(|p| p.stat()).map(|s| s.starttime).ok()
}

fn elapsed_ms(since: Instant) -> i64 {
    i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX)
}
