//! The single database writer: queued writes committed in groups, in the order they were sent.
//!
//! Callers order a write ([`Writer::enqueue`]) and wait for its commit when they need it
//! ([`Pending`]); writes are applied in the order they were sent, so a later write's commit
//! also means every earlier one is committed. A write nobody waits for still reports a
//! failure: its error is logged.
//!
//! Who commits: the caller that waits. A waiter that finds nobody committing takes the
//! committer's role, commits every queued write (its own and those of others) in one
//! transaction on its own thread and acknowledges them; a waiter that finds a commit under way
//! waits for its acknowledgement, and its write goes in the next group. A short job so costs no
//! hand-off to another thread and back, which on a small machine costs more than the commit
//! itself (two wake-ups of sleeping threads). A background thread commits what is left when a
//! committer has done [`MAX_ROUNDS`] groups for others, and what nobody waits for (a
//! [`Pending`] dropped unawaited), and runs the WAL checkpoints. A checkpoint holds the role,
//! so no commit lands in the WAL while it copies it back (the WAL is then rewound at the next
//! commit instead of growing): writes that arrive meanwhile wait for it, and are committed in
//! one group after it, but no caller's thread is blocked by it.
//!
//! The role is released by a guard, also when a commit panics: the queue then goes on with
//! the next committer (the writes of the group that panicked report [`StoreError::WriterGone`]).
//!
//! Lanes: all of the above is one *lane* (a queue, a connection, a background thread). SQLite
//! has one writer at a time and gets one lane. PostgreSQL gets several, committing in parallel
//! on their own connections: a write goes to the lane of the object it changes ([`WriteOp::key`]:
//! a job's id, a run's id for the run and its journal), so the writes of one object are still
//! committed in the order they were sent; writes of different objects are not ordered with each
//! other unless the caller awaited the first. [`WriteOp::Flush`] goes to every lane.
//!
//! A lost connection (PostgreSQL only: a server restarted, a network cut): the lane that finds
//! it reconnects once at once and commits again. If the server is still away, the lane is
//! *down*: its writes stay queued, in order, and its background thread reconnects with backoff
//! and commits them when the server is back. A write is retried like this for at most
//! [`RETRY_BOUND`] after it was sent; past that it is given up, logged at error level with the
//! job or run it was for, and its waiter gets [`StoreError::Unavailable`]. A write sent with
//! [`OnOutage::Refuse`] (a new job or run, whose request can be answered `503` with nothing
//! started) is not retried: it fails at once while its lane is down, unless the database has
//! answered since the lane lost it (a read or another lane's commit: the server is back); then
//! the lane reconnects at once and the write waits for that one attempt. Waiters never commit on
//! a lane that is down, so no request's thread is held by the retries. A SQLite write error is
//! never a lost connection: it fails the write as before.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use log::{error, info, warn};
use tokio::sync::oneshot;

use super::health::Health;
use super::models::{CallbackRow, EventRow, JobRow, NewImport, ResumeTokenRow, RunRow, StepRow};
use super::schema::{callbacks, imports, jobs, resume_tokens, script_run_events, script_run_journal, script_runs};
use super::{postgres, DbConnection, Location, StoreError};
use crate::sync::lock;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Writes that may wait to be committed before senders block (backpressure, bounded memory).
const QUEUE_DEPTH: usize = 16 * 1024;
/// Groups a waiter commits in a row before it leaves the rest to the background thread (its
/// own thread has other work).
const MAX_ROUNDS: usize = 2;
/// A checkpoint is run after this many commits...
const CHECKPOINT_EVERY_COMMITS: u64 = 256;
/// ... or this long after the first commit since the last checkpoint.
const CHECKPOINT_AFTER: Duration = Duration::from_secs(1);
/// How long a write is retried while its lane has lost the database (see the module doc):
/// ten minutes, counted from when it was sent. Long enough for a server restart or a failover;
/// short enough that a database gone for good does not hold the writes (and the memory) of the
/// jobs that keep ending meanwhile. Past it, each write given up is logged at error level.
pub const RETRY_BOUND: Duration = Duration::from_secs(600);
/// The first wait of a lane that is down before it tries to reconnect; doubled after each
/// failed attempt, up to [`RECONNECT_MAX_WAIT`].
const RECONNECT_FIRST_WAIT: Duration = Duration::from_millis(250);
/// The longest wait between two attempts to reconnect: the database is back in service at
/// most this long after it answers again.
const RECONNECT_MAX_WAIT: Duration = Duration::from_secs(4);

/// What a write does when its lane has lost the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOutage {
    /// Waits, retried until the database is back (at most [`RETRY_BOUND`]): for a state that
    /// already happened (a job started or ended) and must be recorded.
    Retry,
    /// Fails at once with [`StoreError::Unavailable`]: for a write its request waits on before
    /// anything is started (a new job or run), whose caller can be told `503` instead.
    Refuse,
}

/// One write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Insert a new job.
    InsertJob(Box<JobRow>),
    /// Rewrite the job row with the same id.
    UpdateJob(Box<JobRow>),
    /// Insert imported jobs (existing ids are skipped) and record the import.
    Import {
        /// The jobs read from the upstream store.
        rows: Vec<JobRow>,
        /// The import record.
        record: NewImport,
    },
    /// Insert a new workflow run.
    InsertRun(Box<RunRow>),
    /// Rewrite the run row with the same id.
    UpdateRun(Box<RunRow>),
    /// Insert journal entries; an entry whose (run, label) exists is left as it is (the
    /// caller reads the stored one back: the first writer wins).
    InsertSteps(Vec<StepRow>),
    /// End a `started` journal entry; an entry already ended is left as it is.
    FinishStep(Box<StepRow>),
    /// Rewrite the run row (as [`WriteOp::UpdateRun`]) and delete its `failed` journal entries
    /// with these labels, in one transaction: a run-level retry moves its failed steps into the
    /// run's attempt history, so a crash never leaves them in both places or in neither.
    RetryRun {
        /// The run, with the failed entries in its attempts.
        run: Box<RunRow>,
        /// The labels of the failed entries moved out of the journal.
        dropped: Vec<String>,
    },
    /// Journal a failed attempt of a `started` entry (its `attempts`, `result` and `job_id`),
    /// only while it is started with the attempts `before` (JSON text): the first writer of
    /// an attempt wins.
    RetryStep {
        /// The entry with its new attempts.
        row: Box<StepRow>,
        /// Its stored attempts the change was made from.
        before: String,
    },
    /// Nothing: waiting for it waits for every earlier write.
    Flush,
    /// A write and the events that report it, in one transaction: the events are stored only
    /// if the write changed a row (a journal entry that was already there, or already ended,
    /// announces nothing), so an event is never lost nor announces what was not stored. Each
    /// event takes the next number of its run (see [`insert_event`]).
    WithEvents {
        /// The write reported.
        op: Box<WriteOp>,
        /// What it means for readers of the runs' events.
        events: Vec<NewEvent>,
    },
    /// A write (a job's insert) and the outbox row of its completion callback, in one
    /// transaction (see `crate::callbacks`).
    WithCallback {
        /// The write.
        op: Box<WriteOp>,
        /// The callback's row.
        callback: Box<CallbackRow>,
    },
    /// Rewrite a callback's row (an attempt made).
    UpdateCallback(Box<CallbackRow>),
    /// A write (the end of a started step) and the record of the resume URL that decided it,
    /// in one transaction; the record is stored only if the write changed a row.
    WithResumeToken {
        /// The write.
        op: Box<WriteOp>,
        /// The used token's row (its SHA-256, never the token).
        token: Box<ResumeTokenRow>,
    },
}

/// An event to store with the write it reports ([`WriteOp::WithEvents`]).
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The run it is an event of (a fork's is the source run, not the new one).
    pub run_id: String,
    /// Its name, e.g. `step.record`.
    pub kind: &'static str,
    /// JSON text.
    pub body: String,
    /// Unix ms.
    pub at: i64,
    /// Whether it makes the run's earlier events of its kind worthless (progress): they are
    /// deleted when it is stored, so a run reporting progress often keeps one such row.
    pub supersedes: bool,
}

/// Called after a commit with the id of each run that got events in it (see
/// [`Writer::on_events`]).
pub type EventBell = Box<dyn Fn(&str) + Send + Sync>;

impl WriteOp {
    /// The object whose writes must stay in order: they share a lane.
    fn key(&self) -> &str {
        match self {
            WriteOp::InsertJob(row) | WriteOp::UpdateJob(row) => &row.id,
            WriteOp::InsertRun(row) | WriteOp::UpdateRun(row) => &row.id,
            WriteOp::RetryRun { run, .. } => &run.id,
            // A run's journal goes with the run (its rows reference the run's row).
            WriteOp::InsertSteps(rows) => rows.first().map_or("", |row| row.run_id.as_str()),
            WriteOp::FinishStep(row) | WriteOp::RetryStep { row, .. } => &row.run_id,
            WriteOp::Import { .. } | WriteOp::Flush => "",
            WriteOp::WithEvents { op, .. } | WriteOp::WithCallback { op, .. } | WriteOp::WithResumeToken { op, .. } => {
                op.key()
            }
            // With its job's writes: an attempt is recorded after the job's end.
            WriteOp::UpdateCallback(row) => &row.owner_id,
        }
    }

    /// Whether the write is a single statement, which SQLite commits atomically on its own.
    fn is_one_statement(&self) -> bool {
        match self {
            WriteOp::Import { .. }
            | WriteOp::WithEvents { .. }
            | WriteOp::WithCallback { .. }
            | WriteOp::RetryRun { .. }
            | WriteOp::WithResumeToken { .. } => false,
            WriteOp::InsertSteps(rows) => rows.len() <= 1,
            _ => true,
        }
    }
}

type Ack = oneshot::Sender<Result<(), StoreError>>;

struct Request {
    op: WriteOp,
    ack: Ack,
    /// When it was sent ([`RETRY_BOUND`] counts from here).
    sent: Instant,
    on_outage: OnOutage,
}

/// A lane without its connection.
struct Down {
    /// When the connection was found lost.
    since: Instant,
    /// When the lane last failed to reach the database (Unix ms, to compare with the store's
    /// [`Health::last_ok_ms`]).
    since_ms: i64,
    /// What the last attempt said (for the logs and the errors of writes given up).
    reason: String,
    /// When to try to reconnect next, and the wait after that if it fails.
    next_attempt: Instant,
    wait: Duration,
}

/// The queue and who is committing it.
#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    /// A thread holds the committer's role (one at a time: that keeps the order).
    committing: bool,
    /// Threads blocked until the role is free (the background thread, [`Writer::close`]);
    /// waiters do not take the role meanwhile.
    role_wanted: usize,
    /// Commits since the last checkpoint, and when the first of them happened.
    since_checkpoint: u64,
    first_since_checkpoint: Option<Instant>,
    /// The background thread has been told a checkpoint is due.
    checkpoint_asked: bool,
    /// The background thread has been asked to commit what is queued.
    handed_off: bool,
    /// Senders blocked on a full queue (only then is there anyone to wake on `space`).
    senders_blocked: usize,
    /// Every [`Writer`] handle is gone: the background thread drains the queue and stops.
    closed: bool,
    /// The lane has lost its connection (see the module doc); nobody but the background
    /// thread commits meanwhile.
    down: Option<Down>,
}

impl Queue {
    fn checkpoint_due(&self) -> bool {
        self.since_checkpoint >= CHECKPOINT_EVERY_COMMITS
            || self.first_since_checkpoint.is_some_and(|f| f.elapsed() >= CHECKPOINT_AFTER)
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Whether the connection is SQLite's, whose WAL this lane checkpoints.
    wal: bool,
    /// The writing connection; only the holder of the role uses it.
    conn: Mutex<DbConnection>,
    /// Wakes the background thread (hand-off, checkpoint due, close).
    background: Condvar,
    /// Wakes threads waiting for the role.
    role_free: Condvar,
    /// Wakes senders blocked on a full queue.
    space: Condvar,
    /// Where to reconnect when the connection is lost; `None` for SQLite, whose errors are
    /// never a lost connection.
    reconnect: Option<Location>,
    /// What the store's reads and the lanes saw of the database last.
    health: Arc<Health>,
    /// The lane's number, for the logs.
    number: usize,
    /// [`RETRY_BOUND`] (shorter in tests).
    retry_bound: Duration,
    /// The cluster node's lease every commit checks, once set (see [`Fence`]).
    fence: Arc<OnceLock<Fence>>,
    /// The epoch the lane's connection is tagged with (0: not tagged; see [`tag`]).
    tagged: std::sync::atomic::AtomicI64,
    /// Told which runs got events, after each commit (see [`Writer::on_events`]).
    bell: Arc<OnceLock<EventBell>>,
}

/// Fencing in a cluster: every write of a node carries its node id and epoch, and the database
/// refuses it when the node is no longer `up` or `draining` under that epoch (its lease
/// expired: a pause, a partition). Each lane's connection is tagged with them (session settings
/// `script_runner.node` and `script_runner.epoch`, see [`tag`]), and a trigger on the jobs, runs
/// and journal tables (migration `cluster`) takes the node's advisory lock shared and checks its
/// row before each row written: the sweep that declares a node dead takes that lock
/// exclusively first, so no node is declared dead while one of its commits is under way. A lone
/// write stays one statement (no BEGIN, COMMIT or check of its own to send). A refused write
/// fails its group with [`StoreError::Fenced`] and `on_fenced` is called (the server kills its
/// processes and exits).
pub struct Fence {
    /// The node's id.
    pub node: String,
    /// Its epoch (new at every start).
    pub epoch: i64,
    /// Called with the reason when a commit was refused.
    pub on_fenced: Box<dyn Fn(&str) + Send + Sync>,
}

/// Handle to the writer; cheap to clone. The background thread stops when every handle is
/// dropped.
#[derive(Clone)]
pub struct Writer {
    lanes: Arc<[Arc<Shared>]>,
    _open: Arc<OpenToken>,
}

/// Dropped with the last [`Writer`] handle: closes the queues.
struct OpenToken(Arc<[Arc<Shared>]>);

impl Drop for OpenToken {
    fn drop(&mut self) {
        for lane in self.0.iter() {
            lock(&lane.queue).closed = true;
            lane.background.notify_all();
        }
    }
}

fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    /// Starts the writer, one lane per connection (at least one). With `reconnect`, a lane that
    /// loses its connection opens another on that location (see the module doc).
    pub fn start(
        conns: Vec<DbConnection>,
        reconnect: Option<Location>,
        health: Arc<Health>,
    ) -> std::io::Result<Writer> {
        Writer::start_bounded(conns, reconnect, health, RETRY_BOUND)
    }

    /// [`Writer::start`] with another retry bound than [`RETRY_BOUND`].
    fn start_bounded(
        conns: Vec<DbConnection>,
        reconnect: Option<Location>,
        health: Arc<Health>,
        retry_bound: Duration,
    ) -> std::io::Result<Writer> {
        let mut lanes = Vec::with_capacity(conns.len());
        let fence = Arc::new(OnceLock::new());
        let bell = Arc::new(OnceLock::new());
        for (n, mut conn) in conns.into_iter().enumerate() {
            // Checkpoints are the background thread's (see the module doc); a WAL that grew
            // past 64 MiB (a burst) is cut back when it is rewound.
            let wal = matches!(conn, DbConnection::Sqlite(_));
            if let DbConnection::Sqlite(conn) = &mut conn {
                let pragmas = "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;";
                if let Err(e) = conn.batch_execute(pragmas) {
                    warn!("cannot move WAL checkpoints off the commit path: {e}");
                }
            }
            let shared = Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                wal,
                conn: Mutex::new(conn),
                background: Condvar::new(),
                role_free: Condvar::new(),
                space: Condvar::new(),
                reconnect: reconnect.clone(),
                health: Arc::clone(&health),
                number: n,
                retry_bound,
                fence: Arc::clone(&fence),
                tagged: std::sync::atomic::AtomicI64::new(0),
                bell: Arc::clone(&bell),
            });
            let thread_shared = Arc::clone(&shared);
            let name = if n == 0 { "db-writer".to_string() } else { format!("db-writer-{n}") };
            std::thread::Builder::new().name(name).spawn(move || background(&thread_shared))?;
            lanes.push(shared);
        }
        if lanes.is_empty() {
            return Err(std::io::Error::other("a writer needs a connection"));
        }
        let lanes: Arc<[Arc<Shared>]> = lanes.into();
        Ok(Writer { _open: Arc::new(OpenToken(Arc::clone(&lanes))), lanes })
    }

    /// Makes every later commit check the node's lease (PostgreSQL clusters; see [`Fence`]).
    /// Set once; a second call is ignored.
    pub fn set_fence(&self, fence: Fence) {
        if let Some(lane) = self.lanes.first() {
            let _ = lane.fence.set(fence);
        }
    }

    /// Calls `bell` after every commit with the id of each run that got events in it, on the
    /// committing thread: it must be quick and never block (the run service wakes the
    /// streams of that run). Set once; a second call is ignored.
    pub fn on_events(&self, bell: EventBell) {
        if let Some(lane) = self.lanes.first() {
            let _ = lane.bell.set(bell);
        }
    }

    /// The lane of the object a write changes.
    fn lane(&self, op: &WriteOp) -> &Arc<Shared> {
        if self.lanes.len() == 1 {
            return &self.lanes[0];
        }
        // FNV-1a: stable and cheap; the ids differ in their last digits.
        let hash =
            op.key().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let n = self.lanes.len() as u64;
        &self.lanes[usize::try_from(hash % n).unwrap_or(0)]
    }

    /// Writes and waits until the write is committed.
    pub async fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        self.enqueue(op)?.wait().await
    }

    /// Like [`Writer::write`], for code that is not async (startup, supervisor threads).
    pub fn write_blocking(&self, op: WriteOp) -> Result<(), StoreError> {
        self.enqueue(op)?.wait_blocking()
    }

    /// [`Writer::write`] with [`OnOutage::Refuse`]: fails at once with
    /// [`StoreError::Unavailable`] when the database is lost, instead of waiting for it.
    pub async fn write_or_refuse(&self, op: WriteOp) -> Result<(), StoreError> {
        self.enqueue_with(op, OnOutage::Refuse)?.wait().await
    }

    /// Orders a write now and lets the caller wait for its commit later (for example after
    /// releasing a lock under which the order of writes was decided). Blocks while the queue
    /// is full. Retried while the database is lost ([`OnOutage::Retry`]).
    pub fn enqueue(&self, op: WriteOp) -> Result<Pending, StoreError> {
        self.enqueue_with(op, OnOutage::Retry)
    }

    /// [`Writer::enqueue`], choosing what the write does when the database is lost.
    pub fn enqueue_with(&self, op: WriteOp, on_outage: OnOutage) -> Result<Pending, StoreError> {
        if matches!(op, WriteOp::Flush) && self.lanes.len() > 1 {
            let parts =
                self.lanes.iter().map(|lane| enqueue_on(lane, WriteOp::Flush, on_outage)).collect::<Result<_, _>>()?;
            return Ok(Pending { parts });
        }
        Ok(Pending { parts: vec![enqueue_on(self.lane(&op), op, on_outage)?] })
    }

    /// Commits everything queued and checkpoints the WAL into the database file, truncating
    /// it (at shutdown: the next start then has no WAL to read). Blocks the calling thread. A
    /// lane still without the database tries once more to reconnect; what it cannot commit
    /// then is given up, each write logged at error level.
    pub fn close(&self) {
        for lane in self.lanes.iter() {
            let role = Role::acquire(lane);
            role.commit_all();
            if lock(&lane.queue).down.is_some() && role.restore() {
                role.commit_all();
            }
            if lock(&lane.queue).down.is_some() {
                role.give_up_all("the server stopped while the database was unreachable");
            }
        }
        let mut conn = lock(&self.lanes[0].conn);
        let DbConnection::Sqlite(conn) = &mut *conn else { return };
        match diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)").get_result::<Checkpoint>(conn) {
            Ok(Checkpoint { busy: 0, .. }) => {}
            // Nothing is lost: the next start reads the WAL (and checkpoints it).
            Ok(c) => warn!("final WAL checkpoint incomplete ({} of {} pages): a reader was still open", c.done, c.log),
            Err(e) => warn!("final WAL checkpoint failed: {e}"),
        }
    }
}

/// Puts a write on one lane's queue; blocks while it is full. A write that refuses an outage
/// fails at once on a lane that is down, unless the database answered since the lane lost it:
/// then it waits for an attempt to reconnect, made at once (see the module doc).
fn enqueue_on(shared: &Arc<Shared>, op: WriteOp, on_outage: OnOutage) -> Result<Part, StoreError> {
    let (ack, rx) = oneshot::channel();
    let mut queue = lock(&shared.queue);
    loop {
        if let (OnOutage::Refuse, Some(down)) = (on_outage, queue.down.as_mut()) {
            if shared.health.last_ok_ms() <= down.since_ms {
                return Err(StoreError::Unavailable(down.reason.clone()));
            }
            down.next_attempt = down.next_attempt.min(Instant::now());
            shared.background.notify_one();
        }
        if queue.requests.len() < QUEUE_DEPTH || queue.closed {
            break;
        }
        // Whoever commits frees space; make sure someone does.
        queue.handed_off = true;
        shared.background.notify_one();
        queue.senders_blocked += 1;
        queue = wait(&shared.space, queue);
        queue.senders_blocked -= 1;
    }
    if queue.closed {
        return Err(StoreError::WriterGone);
    }
    queue.requests.push_back(Request { op, ack, sent: Instant::now(), on_outage });
    Ok(Part { rx: Some(rx), shared: Arc::clone(shared) })
}

/// The answer of `PRAGMA wal_checkpoint`: whether it was blocked, the WAL's pages, and how many
/// were copied into the database.
#[derive(QueryableByName)]
struct Checkpoint {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    busy: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    log: i32,
    #[diesel(sql_type = diesel::sql_types::Integer, column_name = checkpointed)]
    done: i32,
}

/// A write that was ordered; its commit can be awaited. Dropping it unawaited is fine: the
/// background thread commits the write (and logs a failure).
pub struct Pending {
    /// One write on one lane; a flush has one on every lane.
    parts: Vec<Part>,
}

/// A write on one lane.
struct Part {
    rx: Option<oneshot::Receiver<Result<(), StoreError>>>,
    shared: Arc<Shared>,
}

impl Pending {
    /// Waits for the commit, committing the queue on this thread if nobody else is.
    pub async fn wait(self) -> Result<(), StoreError> {
        for mut part in self.parts {
            match part.commit_here() {
                ControlFlow::Break(result) => result?,
                ControlFlow::Continue(rx) => Part::result(rx.await)?,
            }
        }
        Ok(())
    }

    /// Waits for the commit, blocking the thread (never call it on an async worker).
    pub fn wait_blocking(self) -> Result<(), StoreError> {
        for mut part in self.parts {
            match part.commit_here() {
                ControlFlow::Break(result) => result?,
                ControlFlow::Continue(rx) => Part::result(rx.blocking_recv())?,
            }
        }
        Ok(())
    }
}

impl Part {
    /// What both waits do first: the result if it is already known; otherwise commits the
    /// queue on this thread if nobody else is, and returns the receiver to wait on.
    fn commit_here(&mut self) -> ControlFlow<Result<(), StoreError>, oneshot::Receiver<Result<(), StoreError>>> {
        let Some(mut rx) = self.rx.take() else { return ControlFlow::Break(Err(StoreError::WriterGone)) };
        if let Ok(result) = rx.try_recv() {
            return ControlFlow::Break(Self::result(Ok(result)));
        }
        if let Some(role) = Role::try_take(&self.shared) {
            role.commit_rounds(MAX_ROUNDS);
        }
        ControlFlow::Continue(rx)
    }

    fn result(received: Result<Result<(), StoreError>, oneshot::error::RecvError>) -> Result<(), StoreError> {
        received.unwrap_or(Err(StoreError::WriterGone))
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if self.rx.is_some() {
            // Nobody will wait for this write: the background thread commits it.
            lock(&self.shared.queue).handed_off = true;
            self.shared.background.notify_one();
        }
    }
}

/// The committer's role, held by one thread at a time; released when dropped (also by a
/// panic), handing what is left in the queue to the background thread.
struct Role<'a> {
    shared: &'a Shared,
}

impl<'a> Role<'a> {
    /// The role if it is free, nobody is blocked waiting for it and the lane is not down (then
    /// only the background thread commits, when it has reconnected).
    fn try_take(shared: &'a Shared) -> Option<Role<'a>> {
        let mut queue = lock(&shared.queue);
        if queue.committing || queue.role_wanted > 0 || queue.requests.is_empty() || queue.down.is_some() {
            return None;
        }
        queue.committing = true;
        Some(Role { shared })
    }

    /// Blocks until the role is free, and takes it.
    fn acquire(shared: &'a Shared) -> Role<'a> {
        let mut queue = lock(&shared.queue);
        queue.role_wanted += 1;
        while queue.committing {
            queue = wait(&shared.role_free, queue);
        }
        queue.role_wanted -= 1;
        queue.committing = true;
        Role { shared }
    }

    /// Commits at most `rounds` groups (fewer if the queue empties first); true if there is
    /// nothing more to commit now (the queue is empty, or the lane is down).
    fn commit_rounds(&self, rounds: usize) -> bool {
        for _ in 0..rounds {
            let batch = {
                let mut queue = lock(&self.shared.queue);
                if queue.requests.is_empty() || queue.down.is_some() {
                    return true;
                }
                let n = queue.requests.len().min(MAX_BATCH);
                if queue.senders_blocked > 0 {
                    self.shared.space.notify_all();
                }
                queue.requests.drain(..n).collect::<Vec<_>>()
            };
            if let Err((unsent, reason)) = commit(self.shared, &mut lock(&self.shared.conn), batch) {
                self.went_down(unsent, reason);
                return true;
            }
            if !self.shared.wal {
                continue;
            }
            let mut queue = lock(&self.shared.queue);
            queue.since_checkpoint += 1;
            queue.first_since_checkpoint.get_or_insert_with(Instant::now);
            if queue.checkpoint_due() && !queue.checkpoint_asked {
                queue.checkpoint_asked = true;
                self.shared.background.notify_one();
            }
        }
        lock(&self.shared.queue).requests.is_empty()
    }

    /// Commits until the queue is empty (or the lane is down).
    fn commit_all(&self) {
        while !self.commit_rounds(MAX_ROUNDS) {}
    }

    /// The lane lost its connection and could not get it back at once: `unsent` (the group
    /// being committed) goes back to the head of the queue, in order, to be retried; writes
    /// that refuse an outage fail now, these and any queued.
    fn went_down(&self, unsent: Vec<Request>, reason: String) {
        let shared = self.shared;
        let refused = {
            let mut queue = lock(&shared.queue);
            if queue.down.is_none() {
                warn!(
                    "database writer lane {}: connection lost ({reason}); its writes wait and are retried for up to \
                     {} s while it reconnects",
                    shared.number,
                    shared.retry_bound.as_secs()
                );
                shared.health.lane_down();
                let now = Instant::now();
                queue.down = Some(Down {
                    since: now,
                    since_ms: crate::time::now_ms(),
                    reason: reason.clone(),
                    next_attempt: now + RECONNECT_FIRST_WAIT,
                    wait: RECONNECT_FIRST_WAIT,
                });
            }
            for request in unsent.into_iter().rev() {
                queue.requests.push_front(request);
            }
            let (refused, kept) = std::mem::take(&mut queue.requests)
                .into_iter()
                .partition::<VecDeque<_>, _>(|r| r.on_outage == OnOutage::Refuse);
            queue.requests = kept;
            refused
        };
        shared.background.notify_one();
        for request in refused {
            // Its caller answers `503` and started nothing: not an error of the service.
            warn!("database write refused, the database is unreachable ({})", describe(&request.op));
            let _ = request.ack.send(Err(StoreError::Unavailable(reason.clone())));
        }
    }

    /// On a lane that is down: gives up the writes sent more than [`RETRY_BOUND`] ago (each
    /// logged at error level, naming its job or run), then tries to reconnect. True if the lane
    /// is up again.
    fn restore(&self) -> bool {
        let shared = self.shared;
        let expired: VecDeque<Request> = {
            let mut queue = lock(&shared.queue);
            let (expired, kept): (VecDeque<_>, _) =
                std::mem::take(&mut queue.requests).into_iter().partition(|r| r.sent.elapsed() >= shared.retry_bound);
            queue.requests = kept;
            if !expired.is_empty() && queue.senders_blocked > 0 {
                shared.space.notify_all();
            }
            expired
        };
        let reason = lock(&shared.queue).down.as_ref().map(|d| d.reason.clone()).unwrap_or_default();
        for request in expired {
            let bound = shared.retry_bound.as_secs_f64();
            give_up(request, &format!("the database was unreachable for {bound} s ({reason})"));
        }
        let Some(location) = &shared.reconnect else { return true };
        match DbConnection::open(location) {
            Ok(conn) => {
                *lock(&shared.conn) = conn;
                shared.tagged.store(0, std::sync::atomic::Ordering::Release);
                let mut queue = lock(&shared.queue);
                if let Some(down) = queue.down.take() {
                    shared.health.lane_up();
                    info!(
                        "database writer lane {}: reconnected after {:.1} s; committing {} waiting write(s)",
                        shared.number,
                        down.since.elapsed().as_secs_f64(),
                        queue.requests.len()
                    );
                }
                true
            }
            Err(e) => {
                let message = postgres::one_line(&location.redact(&e.to_string()));
                let refused = {
                    let mut queue = lock(&shared.queue);
                    if let Some(down) = queue.down.as_mut() {
                        down.reason = format!("reconnecting: {message}");
                        down.wait = (down.wait * 2).min(RECONNECT_MAX_WAIT);
                        down.next_attempt = Instant::now() + down.wait;
                        down.since_ms = crate::time::now_ms();
                    }
                    // Writes let wait for this attempt (the database had answered meanwhile).
                    let (refused, kept): (VecDeque<_>, _) =
                        std::mem::take(&mut queue.requests).into_iter().partition(|r| r.on_outage == OnOutage::Refuse);
                    queue.requests = kept;
                    refused
                };
                for request in refused {
                    warn!("database write refused, the database is unreachable ({})", describe(&request.op));
                    let _ = request.ack.send(Err(StoreError::Unavailable(format!("reconnecting: {message}"))));
                }
                false
            }
        }
    }

    /// Gives up every queued write (at shutdown, on a lane still down), each logged.
    fn give_up_all(&self, why: &str) {
        let left: Vec<Request> = lock(&self.shared.queue).requests.drain(..).collect();
        for request in left {
            give_up(request, why);
        }
    }

    /// Checkpoints the WAL (passive: what a reader still uses is copied at a later one).
    fn checkpoint(&self) {
        {
            let mut queue = lock(&self.shared.queue);
            queue.since_checkpoint = 0;
            queue.first_since_checkpoint = None;
            queue.checkpoint_asked = false;
        }
        if let DbConnection::Sqlite(conn) = &mut *lock(&self.shared.conn) {
            if let Err(e) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE);") {
                warn!("WAL checkpoint failed: {e}");
            }
        }
    }
}

impl Drop for Role<'_> {
    fn drop(&mut self) {
        let mut queue = lock(&self.shared.queue);
        queue.committing = false;
        if queue.role_wanted > 0 {
            self.shared.role_free.notify_all();
        }
        if !queue.requests.is_empty() {
            // Waiters of these writes may have found the role taken and are only waiting for
            // their acknowledgement: someone must commit them.
            queue.handed_off = true;
            self.shared.background.notify_one();
        }
    }
}

/// The background thread: commits what was handed to it, runs checkpoints, and drains the
/// queue once every handle is gone.
fn background(shared: &Shared) {
    loop {
        let (due, closed, retry) = {
            let mut queue = lock(&shared.queue);
            loop {
                if let Some(down) = &queue.down {
                    // Down: only the time of the next attempt matters (commits cannot happen).
                    let now = Instant::now();
                    if now >= down.next_attempt {
                        break (false, queue.closed, true);
                    }
                    let timeout = down.next_attempt - now;
                    queue = shared.background.wait_timeout(queue, timeout).unwrap_or_else(|e| e.into_inner()).0;
                    continue;
                }
                let due = queue.checkpoint_due();
                if queue.handed_off || due || queue.closed {
                    queue.handed_off = false;
                    break (due, queue.closed, false);
                }
                // Wake for a due checkpoint even if no commit rings.
                let timeout = queue.first_since_checkpoint.map_or(CHECKPOINT_AFTER, |f| {
                    CHECKPOINT_AFTER.saturating_sub(f.elapsed()) + Duration::from_millis(1)
                });
                queue = shared.background.wait_timeout(queue, timeout).unwrap_or_else(|e| e.into_inner()).0;
            }
        };
        let role = Role::acquire(shared);
        if retry && !role.restore() {
            drop(role);
            if closed && lock(&shared.queue).requests.is_empty() {
                return;
            }
            continue;
        }
        if due {
            role.checkpoint();
        }
        // Between groups, a checkpoint that falls due runs too (a long burst).
        while !role.commit_rounds(MAX_ROUNDS) {
            if lock(&shared.queue).checkpoint_due() {
                role.checkpoint();
            }
        }
        drop(role);
        if closed && lock(&shared.queue).requests.is_empty() {
            return;
        }
    }
}

/// Commits one group and acknowledges each write. On a lost connection (a lane that can
/// reconnect) it reconnects at once and tries again (a server restarted while the lane was idle
/// leaves it a dead connection); if that fails too, the writes not acknowledged come back with
/// the reason, for the lane to retry later.
fn commit(shared: &Shared, conn: &mut DbConnection, batch: Vec<Request>) -> Result<(), (Vec<Request>, String)> {
    let (unsent, reason) = match commit_group(shared, conn, batch) {
        Ok(()) => return Ok(()),
        Err(lost) => lost,
    };
    let Some(location) = &shared.reconnect else { return Err((unsent, reason)) };
    match DbConnection::open(location) {
        Ok(fresh) => {
            *conn = fresh;
            shared.tagged.store(0, std::sync::atomic::Ordering::Release);
            commit_group(shared, conn, unsent)
        }
        Err(e) => {
            let message = postgres::one_line(&location.redact(&e.to_string()));
            Err((unsent, format!("{reason}; reconnecting: {message}")))
        }
    }
}

/// One attempt of [`commit`]: the writes it could not try, and why, if the connection is lost.
fn commit_group(shared: &Shared, conn: &mut DbConnection, batch: Vec<Request>) -> Result<(), (Vec<Request>, String)> {
    let fence = shared.fence.get();
    if let Some(fence) = fence {
        if let Err(e) = tag(shared, conn, fence) {
            if lost(shared, conn, &e) {
                return Err((batch, connection_lost(shared, &e)));
            }
        }
    }
    // A lone single-statement write commits on its own (the database's implicit transaction),
    // sparing the parse and execution of BEGIN and COMMIT.
    let started = Instant::now();
    let grouped = match batch.as_slice() {
        [one] if one.op.is_one_statement() => apply(conn, &one.op),
        _ => write_transaction(conn, |c| batch.iter().try_for_each(|r| apply(c, &r.op))),
    };
    if let (Some(why), Some(fence)) = (grouped.as_ref().err().and_then(fenced_reason), fence) {
        for request in batch {
            acknowledge(request, Err(StoreError::Fenced(why.clone())));
        }
        (fence.on_fenced)(&why);
        return Ok(());
    }
    match grouped {
        Ok(()) => {
            crate::metrics::get().db_committed(started.elapsed());
            shared.health.saw_ok();
            for request in batch {
                ring(shared, &request.op);
                acknowledge(request, Ok(()));
            }
            Ok(())
        }
        Err(e) if lost(shared, conn, &e) => Err((batch, connection_lost(shared, &e))),
        // One bad write must not fail its neighbours: retry each on its own.
        Err(_) => {
            let mut requests = batch.into_iter();
            while let Some(request) = requests.next() {
                let written = write_transaction(conn, |c| apply(c, &request.op));
                if let (Some(why), Some(fence)) = (written.as_ref().err().and_then(fenced_reason), fence) {
                    acknowledge(request, Err(StoreError::Fenced(why.clone())));
                    for request in requests {
                        acknowledge(request, Err(StoreError::Fenced(why.clone())));
                    }
                    (fence.on_fenced)(&why);
                    return Ok(());
                }
                match written {
                    Err(e) if lost(shared, conn, &e) => {
                        let reason = connection_lost(shared, &e);
                        return Err((std::iter::once(request).chain(requests).collect(), reason));
                    }
                    result => {
                        if result.is_ok() {
                            ring(shared, &request.op);
                        }
                        acknowledge(request, result.map_err(|e| StoreError::Write(format!("{e}"))))
                    }
                }
            }
            Ok(())
        }
    }
}

/// What the fence trigger raises (migration `cluster`, function `script_runner_fence`).
const FENCED_MARK: &str = "script-runner fence:";

/// Tags the lane's connection with the node and epoch its writes carry (see [`Fence`]), once
/// per connection.
fn tag(shared: &Shared, conn: &mut DbConnection, fence: &Fence) -> QueryResult<()> {
    use diesel::sql_types::Text;
    use std::sync::atomic::Ordering;
    if shared.tagged.load(Ordering::Acquire) == fence.epoch {
        return Ok(());
    }
    diesel::sql_query(
        "SELECT set_config('script_runner.node', $1, false), set_config('script_runner.epoch', $2, false)",
    )
    .bind::<Text, _>(&fence.node)
    .bind::<Text, _>(fence.epoch.to_string())
    .execute(conn)?;
    shared.tagged.store(fence.epoch, Ordering::Release);
    Ok(())
}

/// Whether an error is a refused lease check, and its reason.
fn fenced_reason(e: &diesel::result::Error) -> Option<String> {
    let text = e.to_string();
    let at = text.find(FENCED_MARK)?;
    Some(text[at + FENCED_MARK.len()..].trim().to_string())
}

/// Whether a failed write failed because the lane's connection is gone: never on SQLite; on
/// PostgreSQL, an error of a lost connection, or a connection that no longer answers.
fn lost(shared: &Shared, conn: &mut DbConnection, e: &diesel::result::Error) -> bool {
    use diesel::r2d2::R2D2Connection;
    shared.reconnect.is_some() && (postgres::is_connection_error(e) || conn.ping().is_err())
}

/// The reason given for a lost connection, without a password and on one line.
fn connection_lost(shared: &Shared, e: &diesel::result::Error) -> String {
    let message = postgres::one_line(&e.to_string());
    match &shared.reconnect {
        Some(location) => location.redact(&message),
        None => message,
    }
}

/// A transaction that writes: SQLite's takes the write lock at BEGIN (IMMEDIATE), so it never
/// fails half-way on a lock upgrade; PostgreSQL's locks rows as it goes.
fn write_transaction(conn: &mut DbConnection, f: impl FnOnce(&mut DbConnection) -> QueryResult<()>) -> QueryResult<()> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    type Manager = <DbConnection as Connection>::TransactionManager;
    // The enum's transaction manager is its variant's; only BEGIN differs.
    match conn {
        DbConnection::Sqlite(sqlite) => AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?,
        DbConnection::Pg(_) => Manager::begin_transaction(conn)?,
    }
    match f(conn) {
        Ok(()) => Manager::commit_transaction(conn),
        Err(e) => {
            Manager::rollback_transaction(conn)?;
            Err(e)
        }
    }
}

/// Tells the bell about the runs a committed write stored events of.
fn ring(shared: &Shared, op: &WriteOp) {
    // A step decided through a resume URL: its events are inside.
    if let WriteOp::WithResumeToken { op, .. } = op {
        return ring(shared, op);
    }
    let (WriteOp::WithEvents { events, .. }, Some(bell)) = (op, shared.bell.get()) else { return };
    for (n, event) in events.iter().enumerate() {
        // Once per run (a write's events are of one run, or of a run and its fork's source).
        if !events[..n].iter().any(|e| e.run_id == event.run_id) {
            bell(&event.run_id);
        }
    }
}

fn acknowledge(request: Request, result: Result<(), StoreError>) {
    if let Err(e) = &result {
        error!("database write failed ({}): {e}", describe(&request.op));
    }
    // The waiter may be gone (a write ordered and not awaited); the error is logged above.
    let _ = request.ack.send(result);
}

/// A write that will not be committed because the database could not be reached: logged at
/// error level naming its job or run (nothing is dropped silently), its waiter told
/// [`StoreError::Unavailable`].
fn give_up(request: Request, why: &str) {
    error!("database write given up, {why}: {} was not saved", describe(&request.op));
    let _ = request.ack.send(Err(StoreError::Unavailable(why.to_string())));
}

fn describe(op: &WriteOp) -> String {
    match op {
        WriteOp::InsertJob(row) => format!("insert job {}", row.id),
        WriteOp::UpdateJob(row) => format!("update job {} (status {})", row.id, row.status),
        WriteOp::Import { record, .. } => format!("import {}", record.source),
        WriteOp::InsertRun(row) => format!("insert run {}", row.id),
        WriteOp::UpdateRun(row) => format!("update run {} (status {})", row.id, row.status),
        WriteOp::InsertSteps(rows) => {
            format!("insert {} journal entries of run {}", rows.len(), rows.first().map_or("", |r| r.run_id.as_str()))
        }
        WriteOp::FinishStep(row) => format!("finish step {} of run {}", row.step_key, row.run_id),
        WriteOp::RetryRun { run, dropped } => {
            format!("retry run {} (dropping {} failed journal entries)", run.id, dropped.len())
        }
        WriteOp::RetryStep { row, .. } => format!("journal an attempt of step {} of run {}", row.step_key, row.run_id),
        WriteOp::Flush => "flush".to_string(),
        WriteOp::WithCallback { op, callback } => format!("{} with callback {}", describe(op), callback.id),
        WriteOp::UpdateCallback(row) => format!("update callback {} (state {})", row.id, row.state),
        WriteOp::WithResumeToken { op, token } => format!("{} through a resume URL ({})", describe(op), token.action),
        WriteOp::WithEvents { op, events } => {
            let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
            format!("{} with event(s) {}", describe(op), kinds.join(", "))
        }
    }
}

fn apply(conn: &mut DbConnection, op: &WriteOp) -> QueryResult<()> {
    apply_counted(conn, op).map(drop)
}

/// Stores an event with the next number of its run. On PostgreSQL the run's number is taken
/// under a transaction-scoped advisory lock on the run, so two writers (two lanes: a fork's
/// event on its source; two nodes) never take the same one; SQLite has one writer.
fn insert_event(conn: &mut DbConnection, event: &NewEvent) -> QueryResult<()> {
    use diesel::sql_types::Text;
    use script_run_events::dsl as e;
    if let DbConnection::Pg(pg) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))")
            .bind::<Text, _>(&event.run_id)
            .execute(pg)?;
    }
    let last: Option<i64> =
        e::script_run_events.filter(e::run_id.eq(&event.run_id)).select(diesel::dsl::max(e::seq)).first(conn)?;
    let seq = last.unwrap_or(0) + 1;
    let row = EventRow {
        run_id: event.run_id.clone(),
        seq,
        kind: event.kind.to_string(),
        body: event.body.clone(),
        at: event.at,
    };
    diesel::insert_into(e::script_run_events).values(&row).execute(conn)?;
    if event.supersedes {
        // Only rows below the new one: the run's highest number never goes down, so a number
        // is never given twice.
        diesel::delete(
            e::script_run_events
                .filter(e::run_id.eq(&event.run_id))
                .filter(e::kind.eq(event.kind))
                .filter(e::seq.lt(seq)),
        )
        .execute(conn)?;
    }
    Ok(())
}

/// Applies a write; how many rows it changed.
fn apply_counted(conn: &mut DbConnection, op: &WriteOp) -> QueryResult<usize> {
    let mut changed = 0;
    match op {
        WriteOp::InsertJob(row) => {
            changed += diesel::insert_into(jobs::table).values(row.as_ref()).execute(conn)?;
        }
        WriteOp::UpdateJob(row) => {
            let n = diesel::update(jobs::table.filter(jobs::id.eq(&row.id))).set(row.as_ref()).execute(conn)?;
            if n == 0 {
                return Err(diesel::result::Error::NotFound);
            }
            changed += n;
        }
        WriteOp::Import { rows, record } => match conn {
            DbConnection::Sqlite(c) => {
                for row in rows {
                    diesel::insert_or_ignore_into(jobs::table).values(row).execute(c)?;
                }
                diesel::insert_or_ignore_into(imports::table).values(record).execute(c)?;
            }
            DbConnection::Pg(c) => {
                for row in rows {
                    diesel::insert_into(jobs::table).values(row).on_conflict_do_nothing().execute(c)?;
                }
                diesel::insert_into(imports::table).values(record).on_conflict_do_nothing().execute(c)?;
            }
        },
        WriteOp::InsertRun(row) => {
            changed += diesel::insert_into(script_runs::table).values(row.as_ref()).execute(conn)?;
        }
        WriteOp::UpdateRun(row) => {
            let n = diesel::update(script_runs::table.filter(script_runs::id.eq(&row.id)))
                .set(row.as_ref())
                .execute(conn)?;
            if n == 0 {
                return Err(diesel::result::Error::NotFound);
            }
            changed += n;
        }
        WriteOp::InsertSteps(rows) => {
            for row in rows {
                match conn {
                    DbConnection::Sqlite(c) => {
                        changed += diesel::insert_or_ignore_into(script_run_journal::table).values(row).execute(c)?;
                    }
                    DbConnection::Pg(c) => {
                        changed += diesel::insert_into(script_run_journal::table)
                            .values(row)
                            .on_conflict_do_nothing()
                            .execute(c)?;
                    }
                }
            }
        }
        WriteOp::FinishStep(row) => {
            use script_run_journal::dsl as j;
            changed += diesel::update(
                j::script_run_journal
                    .filter(j::run_id.eq(&row.run_id))
                    .filter(j::step_key.eq(&row.step_key))
                    .filter(j::status.eq("started")),
            )
            .set((
                j::status.eq(&row.status),
                j::result.eq(&row.result),
                j::error.eq(&row.error),
                j::job_id.eq(&row.job_id),
                j::completed_at.eq(row.completed_at),
                j::duration_ms.eq(row.duration_ms),
            ))
            .execute(conn)?;
        }
        WriteOp::RetryRun { run, dropped } => {
            use script_run_journal::dsl as j;
            changed += apply_counted(conn, &WriteOp::UpdateRun(run.clone()))?;
            diesel::delete(
                j::script_run_journal
                    .filter(j::run_id.eq(&run.id))
                    .filter(j::step_key.eq_any(dropped))
                    .filter(j::status.eq("failed")),
            )
            .execute(conn)?;
        }
        WriteOp::RetryStep { row, before } => {
            use script_run_journal::dsl as j;
            changed += diesel::update(
                j::script_run_journal
                    .filter(j::run_id.eq(&row.run_id))
                    .filter(j::step_key.eq(&row.step_key))
                    .filter(j::status.eq("started"))
                    .filter(j::attempts.eq(before)),
            )
            .set((j::attempts.eq(&row.attempts), j::result.eq(&row.result), j::job_id.eq(&row.job_id)))
            .execute(conn)?;
        }
        WriteOp::Flush => {}
        WriteOp::WithEvents { op, events } => {
            changed = apply_counted(conn, op)?;
            if changed > 0 {
                events.iter().try_for_each(|event| insert_event(conn, event))?;
            }
        }
        WriteOp::WithCallback { op, callback } => {
            changed = apply_counted(conn, op)?;
            diesel::insert_into(callbacks::table).values(callback.as_ref()).execute(conn)?;
        }
        WriteOp::UpdateCallback(row) => {
            changed +=
                diesel::update(callbacks::table.filter(callbacks::id.eq(&row.id))).set(row.as_ref()).execute(conn)?;
        }
        WriteOp::WithResumeToken { op, token } => {
            changed = apply_counted(conn, op)?;
            if changed > 0 {
                // A token decides one started step once: its key cannot be there already, but
                // a conflict must not fail the other writes of the group.
                match conn {
                    DbConnection::Sqlite(c) => {
                        diesel::insert_or_ignore_into(resume_tokens::table).values(token.as_ref()).execute(c)?;
                    }
                    DbConnection::Pg(c) => {
                        diesel::insert_into(resume_tokens::table)
                            .values(token.as_ref())
                            .on_conflict_do_nothing()
                            .execute(c)?;
                    }
                }
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use crate::db::{Location, Store};
    use crate::jobs::model::Job;

    fn job(n: u64) -> WriteOp {
        WriteOp::insert_job(&Job::new(format!("job_1_{n}"), "s", Mode::Sync, Vec::new(), 1))
    }

    /// A write whose `Pending` is dropped unawaited is still committed (by the background
    /// thread).
    #[test]
    fn a_write_nobody_waits_for_is_committed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&crate::db::Location::Sqlite(dir.path().join("t.db"))).expect("open");
        drop(store.writer().enqueue(job(1)).expect("enqueue"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.get_job("job_1_1").expect("read").is_none() {
            assert!(Instant::now() < deadline, "the dropped write was never committed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// On PostgreSQL (the PostgreSQL test pass; skipped in the SQLite one) writes go to several
    /// lanes, and one job's writes, enqueued without waiting (insert, then updates), still land
    /// in order; a flush waits for every lane.
    #[test]
    fn one_jobs_writes_stay_in_order_across_lanes() {
        let Some(location) = crate::db::tests::pg_location("lanes") else { return };
        let store = Store::open_sized(&location, 8).expect("open postgres");
        assert_eq!(store.writer().lanes.len(), 4);
        let id = |n: u64| format!("job_lanes_{n}_{}", std::process::id());
        let mut pending = Vec::new();
        for n in 0..200 {
            let mut job = Job::new(id(n), "s", Mode::Async, Vec::new(), 1);
            pending.push(store.writer().enqueue(WriteOp::insert_job(&job)).expect("enqueue"));
            for pid in 1..=3 {
                job.pid = Some(pid);
                pending.push(store.writer().enqueue(WriteOp::update_job(&job)).expect("enqueue"));
            }
        }
        drop(pending);
        store.writer().write_blocking(WriteOp::Flush).expect("flush");
        for n in 0..200 {
            assert_eq!(store.get_job(&id(n)).expect("read").expect("written").pid, Some(3));
        }
    }

    /// A lane made to lose its database, whose reconnection fails (nothing listens on port 1):
    /// a write that refuses an outage fails at once; one that waits is given up after the
    /// retry bound, with `Unavailable`, and the store is not vouched for meanwhile.
    #[test]
    fn a_lane_without_its_database_refuses_new_work_and_gives_up_waiting_writes_after_the_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = DbConnection::open(&Location::Sqlite(dir.path().join("t.db"))).expect("open");
        let unreachable = Location::Postgres("postgres://u@127.0.0.1:1/db".into());
        let health = Arc::new(Health::new(true));
        let bound = Duration::from_millis(300);
        let writer = Writer::start_bounded(vec![conn], Some(unreachable), Arc::clone(&health), bound).expect("start");
        Role::acquire(&writer.lanes[0]).went_down(Vec::new(), "cut by the test".into());
        assert!(!health.vouched());
        assert!(matches!(writer.enqueue_with(job(1), OnOutage::Refuse), Err(StoreError::Unavailable(_))));
        let started = Instant::now();
        let result = writer.write_blocking(job(2));
        assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
        assert!(started.elapsed() >= bound && started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    }

    /// A store on a SQLite file in `dir`, and a writer on it (reconnecting to the same file,
    /// standing in for a server that came back) whose one lane has just lost its database.
    fn lane_down(dir: &tempfile::TempDir) -> (Store, Arc<Health>, Writer) {
        let location = Location::Sqlite(dir.path().join("t.db"));
        let store = Store::open(&location).expect("open");
        let health = Arc::new(Health::new(true));
        let conn = DbConnection::open(&location).expect("open");
        let writer = Writer::start(vec![conn], Some(location), Arc::clone(&health)).expect("start");
        Role::acquire(&writer.lanes[0]).went_down(Vec::new(), "cut by the test".into());
        (store, health, writer)
    }

    /// Writes sent while a lane is without its database are committed, in order, once it
    /// reconnects (here to the same SQLite file, standing in for a server that came back).
    #[test]
    fn writes_sent_while_a_lane_is_down_are_committed_in_order_once_it_reconnects() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, health, writer) = lane_down(&dir);
        let mut job = Job::new("job_1_7".into(), "s", Mode::Async, Vec::new(), 1);
        let insert = writer.enqueue(WriteOp::insert_job(&job)).expect("enqueue");
        job.pid = Some(42);
        let update = writer.enqueue(WriteOp::update_job(&job)).expect("enqueue");
        insert.wait_blocking().expect("insert committed after the reconnection");
        update.wait_blocking().expect("update committed after the reconnection");
        assert_eq!(store.get_job("job_1_7").expect("read").expect("written").pid, Some(42));
        assert!(health.vouched());
    }

    /// A refusing write on a lane without its database fails at once, unless the database has
    /// answered since (a read, another lane): then the lane reconnects at once and commits it.
    #[test]
    fn a_refusing_write_waits_for_a_reconnection_once_the_database_answered_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, health, writer) = lane_down(&dir);
        assert!(matches!(writer.enqueue_with(job(1), OnOutage::Refuse), Err(StoreError::Unavailable(_))));
        std::thread::sleep(Duration::from_millis(5));
        health.saw_ok();
        writer.enqueue_with(job(2), OnOutage::Refuse).expect("enqueue").wait_blocking().expect("committed");
        assert!(store.get_job("job_1_2").expect("read").is_some());
        assert!(store.get_job("job_1_1").expect("read").is_none());
    }

    /// SQLite only (its WAL): under a steady stream of commits from several threads, checkpoints
    /// still rewind the WAL: it stays a few MiB instead of growing with every commit.
    #[test]
    fn the_wal_stays_bounded_under_sustained_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let store = Store::open(&crate::db::Location::Sqlite(path.clone())).expect("open");
        // Writes go on until both the time (two and a half checkpoint periods) and the count
        // (twice the commits after which a checkpoint is due, counted in writes) are reached,
        // however slow the machine; the deadline only bounds a writer that makes no progress.
        let start = Instant::now();
        let min_time = CHECKPOINT_AFTER * 2 + Duration::from_millis(500);
        let deadline = start + Duration::from_secs(120);
        let total = std::sync::atomic::AtomicU64::new(0);
        let enough = || {
            start.elapsed() >= min_time
                && total.load(std::sync::atomic::Ordering::Relaxed) > 2 * CHECKPOINT_EVERY_COMMITS
        };
        let written: u64 = std::thread::scope(|s| {
            let threads: Vec<_> = (0..3u64)
                .map(|t| {
                    let writer = store.writer().clone();
                    let (total, enough) = (&total, &enough);
                    s.spawn(move || {
                        let mut n = 0;
                        while !enough() && Instant::now() < deadline {
                            writer.write_blocking(job(t * 1_000_000 + n)).expect("write");
                            total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().expect("thread")).sum()
        });
        let wal = std::fs::metadata(dir.path().join("t.db-wal")).map(|m| m.len()).unwrap_or(0);
        assert!(written > CHECKPOINT_EVERY_COMMITS, "only {written} writes: the test proves nothing");
        assert!(wal < 16 << 20, "WAL is {wal} bytes after {written} writes");
        assert_eq!(store.max_seq().expect("max seq"), i64::try_from(written).expect("count"));
    }
}
