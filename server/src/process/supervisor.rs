//! Supervising one process (a job's or a workflow execution's): spawn, stream its output to the
//! logs, stop it, reap it.
//!
//! The script is executed directly (argv, never a shell) as the leader of a new process group,
//! with stdin from `/dev/null`. Its supervision is an async task on the runtime that started
//! it (no thread per job): it waits on both output pipes and a pidfd (readable when the leader
//! exits) through tokio's reactor, on a `Notify` for cancel, and on timers:
//!
//! - cancel or timeout: SIGTERM to the whole group, then SIGKILL to the group after the grace;
//! - when the leader exits, its exit status is read without reaping it (`WNOWAIT`), the group
//!   is sent SIGKILL (processes the script left behind are ended too), and only then is the
//!   leader reaped. Because the unreaped leader keeps its pid, and so the group id, allocated,
//!   a signal to the group can never reach an unrelated process that reused the number;
//! - output is drained until both pipes close, or [`DRAIN_AFTER_EXIT`] after the leader's exit
//!   when a process that left the group still holds a pipe open;
//! - for its first [`RECORD_RUNNING_AFTER`], a job's pipes are not watched: they are read when
//!   the leader exits, or when that time is up and they start being watched. Most jobs are
//!   over sooner, and then wake their supervisor once (the exit) instead of once per write
//!   and once per closed pipe; on a small machine a wake-up of a sleeping thread costs more
//!   than the reads. A script that fills a pipe (64 KiB) in that time waits for the rest of
//!   it, once, and a log read in that time shows nothing yet.
//!
//! Spawning (see [`spawn`], like `posix_spawn`) and log writes (to the page cache) are short
//! blocking calls made on the task's thread, as `tokio::process` also does for spawning.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use crate::process::logs::{LiveStream, LogSink, StreamSummary};
use crate::process::spawn;

/// How long output is still drained after the leader exited and its group was killed.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How long a caller waits for a canceled process to be over: the kill grace (SIGTERM to
/// SIGKILL), the drain after the exit, and slack for the final commit. A cancel, a shutdown and
/// a run's stop all wait this long at most, then answer with the state as it is.
pub fn stop_bound(kill_grace: Duration) -> Duration {
    kill_grace + DRAIN_AFTER_EXIT + Duration::from_secs(3)
}
/// The environment variable every supervised process gets, holding its owner's id (a job id or
/// a run id). Recovery after a crash finds an owner's processes by it (also those that left the
/// process group). The name is kept from when only jobs had processes: scripts may read it.
pub const OWNER_ID_ENV: &str = "SCRIPT_RUNNER_JOB_ID";
/// The environment variable holding the deployment's database path. Recovery only touches
/// processes that carry this deployment's value, so two deployments on one machine (whose job
/// ids may coincide) never stop each other's jobs.
pub const DEPLOYMENT_ENV: &str = "SCRIPT_RUNNER_DB";
const READ_CHUNK: usize = 64 * 1024;
/// Most chunks read from a quiet pipe at once.
const QUIET_READS: usize = 16;

thread_local! {
    /// One read buffer per thread, shared by the jobs it supervises (it is only borrowed
    /// between awaits): no allocation per job.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_CHUNK]);
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The id of what the process runs for (a job or a run), exported as [`OWNER_ID_ENV`].
    pub owner_id: String,
    /// Deployment marker, exported as [`DEPLOYMENT_ENV`].
    pub deployment: Arc<str>,
    /// The executable.
    pub program: PathBuf,
    /// argv[1..], passed verbatim.
    pub args: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
    /// File read as stdin; `/dev/null` when `None`.
    pub stdin: Option<PathBuf>,
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
    /// Keep a stream that fits in the preview with the owner instead of a file, unless the
    /// process runs past [`RECORD_RUNNING_AFTER`] (see [`LogSink::keep_inline`]): for a job,
    /// whose preview is stored with it.
    pub inline_small_output: bool,
}

/// The handle other tasks use to cancel a supervised job.
#[derive(Default)]
pub struct Control {
    wake: Notify,
    cancel: AtomicBool,
}

impl Control {
    /// A fresh control.
    pub fn new() -> Arc<Control> {
        Arc::new(Control::default())
    }

    /// Asks the supervisor to stop the job (idempotent). A job not yet spawned never starts.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        // Stores a permit if the supervisor is not waiting right now: the wake is not lost.
        self.wake.notify_one();
    }

    /// Whether cancel was asked.
    pub fn is_canceled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Resolves once cancel has been asked (at once if it was already). For a caller that
    /// waits before it supervises (a run's retry delay): it takes the wake-up, so it must not
    /// wait while a supervisor runs the same control.
    pub async fn canceled(&self) {
        while !self.is_canceled() {
            self.wake.notified().await;
        }
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

impl Outcome {
    /// A job whose process was never started, and why.
    pub fn not_started(message: String) -> Outcome {
        Outcome {
            ending: Ending::SpawnFailed(message),
            spawned: None,
            ended_at: crate::time::now_ms(),
            duration_ms: 0,
            stdout: StreamSummary::default(),
            stderr: StreamSummary::default(),
        }
    }
}

/// Live counters of both streams, available once the process started.
pub type LiveStreams = [Arc<LiveStream>; 2];

/// How long a process runs before [`Events::still_running`] asks the caller to record it.
///
/// Most jobs are over sooner: they are then recorded once, finished, instead of twice. A crash
/// inside this window is still recovered: recovery finds the processes by [`OWNER_ID_ENV`].
pub const RECORD_RUNNING_AFTER: Duration = Duration::from_millis(20);

/// What the supervisor tells its caller while the job runs.
pub trait Events {
    /// The process exists; called before any output is read.
    fn spawned(&mut self, spawned: Spawned, live: LiveStreams);
    /// The process has been running for [`RECORD_RUNNING_AFTER`]; called at most once, with
    /// the leader's start time (read only now: most jobs never need it).
    fn still_running(&mut self, start_ticks: Option<u64>);
}

/// Runs the job to its end, reporting through `events`. Must run inside a tokio runtime with
/// I/O and time enabled.
pub async fn supervise(launch: &Launch, control: &Control, events: &mut impl Events) -> Outcome {
    let attempt = Instant::now();
    let fail = |message: String| Outcome { duration_ms: elapsed_ms(attempt), ..Outcome::not_started(message) };
    if control.is_canceled() {
        let mut outcome = fail(String::new());
        outcome.ending = Ending::Canceled;
        return outcome;
    }
    let sink = |path: &Path| {
        let sink = LogSink::new(path, launch.log_cap, launch.preview_max);
        if launch.inline_small_output {
            sink.keep_inline()
        } else {
            sink
        }
    };
    let (out_sink, err_sink) = (sink(&launch.stdout_log), sink(&launch.stderr_log));
    let child = match start(launch) {
        Ok(c) => c,
        Err(e) => {
            crate::metrics::get().spawn_failed();
            return fail(format!("cannot start {}: {e}", launch.program.display()));
        }
    };
    let started = Instant::now();
    let pid = child.pid;
    let spawned = Spawned { pid, started_at: crate::time::now_ms() };
    events.spawned(spawned, [out_sink.live(), err_sink.live()]);

    let mut run = Running::new(launch, child, out_sink, err_sink);
    let ending = run.event_loop(control, events).await;
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

/// Starts the job's process, leading its own process group (see [`spawn`]).
fn start(launch: &Launch) -> io::Result<spawn::Child> {
    let stdin = launch.stdin.as_ref().map(File::open).transpose()?;
    let mut env: Vec<(&str, &str)> = launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push((OWNER_ID_ENV, &launch.owner_id));
    env.push((DEPLOYMENT_ENV, &launch.deployment));
    spawn::spawn(&spawn::Spec {
        program: &launch.program,
        args: &launch.args,
        cwd: &launch.cwd,
        env: &env,
        stdin: stdin.as_ref(),
    })
}

/// The read end of an output pipe.
enum Reader {
    /// Non-blocking and not watched: read when the supervisor decides (see the module doc).
    Quiet(File),
    /// Registered with the reactor: read when it has data.
    Watched(pipe::Receiver),
}

/// One output pipe and where it goes.
struct Pipe {
    reader: Option<Reader>,
    sink: LogSink,
}

impl Pipe {
    fn new(fd: OwnedFd, sink: LogSink, quiet: bool) -> Pipe {
        let flags = nix::fcntl::OFlag::O_NONBLOCK;
        let reader = if quiet && nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).is_ok() {
            Some(Reader::Quiet(File::from(fd)))
        } else {
            // from_owned_fd makes the pipe non-blocking and registers it with the reactor.
            pipe::Receiver::from_owned_fd(fd).ok().map(Reader::Watched)
        };
        Pipe { reader, sink }
    }

    /// Reads what is available: one chunk from a watched pipe; from a quiet one, until it
    /// would block (at most [`QUIET_READS`] chunks: a writer that never pauses is then
    /// watched instead). Closes the pipe at end of file or on error.
    fn pump(&mut self, buf: &mut [u8]) {
        for _ in 0..QUIET_READS {
            let read = match self.reader.as_mut() {
                None => return,
                Some(Reader::Watched(reader)) => reader.try_read(buf),
                Some(Reader::Quiet(file)) => file.read(buf),
            };
            let more = match read {
                Ok(0) => {
                    self.reader = None;
                    false
                }
                Ok(n) => {
                    self.sink.write(&buf[..n]);
                    true
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => true,
                    io::ErrorKind::WouldBlock => false,
                    _ => {
                        self.reader = None;
                        false
                    }
                },
            };
            if !more || !matches!(self.reader, Some(Reader::Quiet(_))) {
                return;
            }
        }
    }

    /// Reads what a quiet pipe holds, then watches it if it is still open.
    fn watch(&mut self, buf: &mut [u8]) {
        if !matches!(self.reader, Some(Reader::Quiet(_))) {
            return;
        }
        self.pump(buf);
        if let Some(Reader::Quiet(file)) = self.reader.take() {
            // A pipe that cannot be registered (out of descriptors for epoll) is dropped: the
            // script then gets EPIPE rather than blocking forever.
            self.reader = pipe::Receiver::from_file(file).ok().map(Reader::Watched);
        }
    }

    /// Resolves when a watched pipe has data or is closed; never for a quiet or closed one.
    async fn readable(&self) {
        match &self.reader {
            Some(Reader::Watched(reader)) => {
                let _ = reader.readable().await;
            }
            _ => std::future::pending().await,
        }
    }
}

struct Running {
    pgid: Pid,
    pidfd: Option<AsyncFd<OwnedFd>>,
    out: Pipe,
    err: Pipe,
    timeout_at: Option<Instant>,
    kill_grace: Duration,
}

/// Why we are stopping the job, and when SIGKILL is due (None once sent).
struct Stopping {
    reason: Ending,
    kill_at: Option<Instant>,
}

/// What woke the supervisor.
#[derive(Default)]
struct Ready {
    out: bool,
    err: bool,
    exit: Option<WaitStatus>,
}

impl Running {
    fn new(launch: &Launch, child: spawn::Child, out_sink: LogSink, err_sink: LogSink) -> Running {
        let pid = child.pid;
        let pidfd = rustix::process::Pid::from_raw(pid)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            .and_then(register_pidfd);
        // Without a pidfd the exit is polled for: watch the pipes from the start.
        let quiet = pidfd.is_some();
        let out = Pipe::new(child.stdout, out_sink, quiet);
        let err = Pipe::new(child.stderr, err_sink, quiet);
        Running {
            pgid: Pid::from_raw(pid),
            pidfd,
            out,
            err,
            timeout_at: launch.timeout.map(|t| Instant::now() + t),
            kill_grace: launch.kill_grace,
        }
    }

    async fn event_loop(&mut self, control: &Control, events: &mut impl Events) -> Ending {
        let mut record_at = Some(Instant::now() + RECORD_RUNNING_AFTER);
        let mut stopping: Option<Stopping> = None;
        let mut exit: Option<WaitStatus> = None;
        let mut drain_until: Option<Instant> = None;
        loop {
            let pipes_open = self.out.reader.is_some() || self.err.reader.is_some();
            if exit.is_some() && (!pipes_open || drain_until.is_some_and(|d| Instant::now() >= d)) {
                break;
            }
            let mut deadline = [
                stopping.as_ref().map_or(self.timeout_at, |_| None),
                stopping.as_ref().and_then(|s| s.kill_at),
                drain_until,
                record_at,
            ]
            .into_iter()
            .flatten()
            .min();
            if self.pidfd.is_none() && exit.is_none() {
                // No pidfd (very old kernel): look for the exit every 20 ms.
                let poll_at = Instant::now() + Duration::from_millis(20);
                deadline = Some(deadline.map_or(poll_at, |d| d.min(poll_at)));
            }
            let ready = self.wait(deadline, exit.is_none(), control).await;
            READ_BUFFER.with_borrow_mut(|buf| {
                if ready.out {
                    self.out.pump(buf);
                }
                if ready.err {
                    self.err.pump(buf);
                }
            });
            let now = Instant::now();
            if record_at.is_some_and(|r| now >= r) {
                record_at = None;
                self.watch_pipes();
                if exit.is_none() {
                    // Running on: its output so far goes to its files, readable there.
                    self.out.sink.spill();
                    self.err.sink.spill();
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
            let exited = match ready.exit {
                Some(status) => Some(status),
                None if exit.is_none() && self.pidfd.is_none() => self.peek_exit(),
                None => None,
            };
            if let (Some(status), None) = (exited, exit) {
                // Leader is a zombie: its group id cannot be reused yet, so this reaches
                // exactly the processes it left behind.
                self.signal_group(Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(self.pgid, None);
                // Quiet pipes: read what the script wrote; a pipe still held open (by a
                // process that left the group) is watched and drained like any other.
                self.watch_pipes();
                exit = Some(status);
                record_at = None;
                drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
        }
        match (stopping, exit) {
            (Some(s), _) => s.reason,
            (None, Some(WaitStatus::Exited(_, code))) => Ending::Exited(code),
            (None, Some(WaitStatus::Signaled(_, sig, _))) => Ending::Signaled(sig as i32),
            (None, _) => Ending::Signaled(0),
        }
    }

    /// Reads what the quiet pipes hold and watches those still open (see [`Pipe::watch`]).
    fn watch_pipes(&mut self) {
        READ_BUFFER.with_borrow_mut(|buf| {
            self.out.watch(buf);
            self.err.watch(buf);
        });
    }

    /// Waits until a pipe is readable, the leader exits, cancel is asked or `deadline` passes.
    async fn wait(&self, deadline: Option<Instant>, want_exit: bool, control: &Control) -> Ready {
        let mut ready = Ready::default();
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let leader_exit = async {
            match (&self.pidfd, want_exit) {
                (Some(pidfd), true) => loop {
                    let Ok(mut guard) = pidfd.readable().await else { return std::future::pending().await };
                    match self.peek_exit() {
                        Some(status) => return status,
                        None => guard.clear_ready(),
                    }
                },
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.out.readable() => ready.out = true,
            () = self.err.readable() => ready.err = true,
            status = leader_exit => ready.exit = Some(status),
            () = control.wake.notified() => {}
            () = timer => {}
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

/// Registers a pidfd with the reactor (readable once the process has exited).
#[allow(unsafe_code, reason = "tokio's registration is unsafe for arbitrary AsRawFd types")]
fn register_pidfd(fd: OwnedFd) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, which keeps the descriptor open and
    // returns the same raw fd from as_raw_fd until it is dropped together with the AsyncFd.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
}

/// The start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_ticks(pid: i32) -> Option<u64> {
    procfs::process::Process::new(pid).and_then(|p| p.stat()).map(|s| s.starttime).ok()
}

fn elapsed_ms(since: Instant) -> i64 {
    i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX)
}
