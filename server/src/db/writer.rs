//! The single database writer: queued writes committed in groups, in the order they were sent.
//!
//! Callers order a write ([`Writer::enqueue`]) and wait for its commit when they need it
//! ([`Pending`]); writes are applied in the order they were sent, so a later write's commit
//! also means every earlier one is committed. A write nobody waits for still reports a
//! failure: its error is logged.
//!
//! Who commits: the caller that waits. A waiter that finds nobody committing takes every
//! queued write (its own and those of others), commits them in one transaction on its own
//! thread and acknowledges them; waiters that find a commit under way wait for its
//! acknowledgement, and their writes go in the next group. A short job so costs no hand-off
//! to another thread and back, which on a small machine costs more than the commit itself
//! (two wake-ups of sleeping threads). A background thread commits what nobody waits for
//! (a [`Pending`] dropped unawaited), takes over after a waiter has committed
//! [`MAX_ROUNDS`] groups for others, and runs the WAL checkpoints on its own connection, so
//! a waiter never pays for a checkpoint's fsyncs.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use log::{error, warn};
use tokio::sync::oneshot;

use super::models::{JobRow, NewImport, RunRow, StepRow};
use super::schema::{imports, jobs, script_run_journal, script_runs};
use super::StoreError;

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
    /// Nothing: waiting for it waits for every earlier write.
    Flush,
}

impl WriteOp {
    /// Whether the write is a single statement, which SQLite commits atomically on its own.
    fn is_one_statement(&self) -> bool {
        match self {
            WriteOp::Import { .. } => false,
            WriteOp::InsertSteps(rows) => rows.len() <= 1,
            _ => true,
        }
    }
}

type Ack = oneshot::Sender<Result<(), String>>;

struct Request {
    op: WriteOp,
    ack: Ack,
}

/// The queue and who is committing it.
#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    /// A thread is committing a group (only one at a time: that keeps the order).
    committing: bool,
    /// Commits since the last checkpoint, and when the first of them happened.
    since_checkpoint: u64,
    first_since_checkpoint: Option<Instant>,
    /// The background thread has been asked to commit what is queued.
    handed_off: bool,
    /// Every [`Writer`] handle is gone: the background thread drains the queue and stops.
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writing connection; only the thread that set `committing` uses it.
    conn: Mutex<SqliteConnection>,
    /// Wakes the background thread (hand-off, checkpoint due, close).
    background: Condvar,
    /// Wakes senders blocked on a full queue.
    space: Condvar,
}

/// Handle to the writer; cheap to clone. The background thread stops when every handle is
/// dropped.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
    _open: Arc<OpenToken>,
}

/// Dropped with the last [`Writer`] handle: closes the queue.
struct OpenToken(Arc<Shared>);

impl Drop for OpenToken {
    fn drop(&mut self) {
        lock(&self.0.queue).closed = true;
        self.0.background.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the data as consistent as each step left it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    /// Starts the writer on its connection; `checkpointer` is a second connection to the same
    /// database, used by the background thread for WAL checkpoints.
    pub fn start(mut conn: SqliteConnection, checkpointer: SqliteConnection) -> std::io::Result<Writer> {
        // Checkpoints are the background thread's (see the module doc).
        if let Err(e) = conn.batch_execute("PRAGMA wal_autocheckpoint = 0;") {
            warn!("cannot move WAL checkpoints off the commit path: {e}");
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            conn: Mutex::new(conn),
            background: Condvar::new(),
            space: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new().name("db-writer".into()).spawn(move || background(&thread_shared, checkpointer))?;
        Ok(Writer { _open: Arc::new(OpenToken(Arc::clone(&shared))), shared })
    }

    /// Writes and waits until the write is committed.
    pub async fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        self.enqueue(op)?.wait().await
    }

    /// Like [`Writer::write`], for code that is not async (startup, supervisor threads).
    pub fn write_blocking(&self, op: WriteOp) -> Result<(), StoreError> {
        self.enqueue(op)?.wait_blocking()
    }

    /// Orders a write now and lets the caller wait for its commit later (for example after
    /// releasing a lock under which the order of writes was decided). Blocks while the queue
    /// is full.
    pub fn enqueue(&self, op: WriteOp) -> Result<Pending, StoreError> {
        let (ack, rx) = oneshot::channel();
        let mut queue = lock(&self.shared.queue);
        while queue.requests.len() >= QUEUE_DEPTH && !queue.closed {
            // Whoever commits frees space; make sure someone does.
            queue.handed_off = true;
            self.shared.background.notify_one();
            queue = self.shared.space.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
        if queue.closed {
            return Err(StoreError::WriterGone);
        }
        queue.requests.push_back(Request { op, ack });
        Ok(Pending { rx: Some(rx), shared: Arc::clone(&self.shared) })
    }
}

/// A write that was ordered; its commit can be awaited. Dropping it unawaited is fine: the
/// background thread commits the write (and logs a failure).
pub struct Pending {
    rx: Option<oneshot::Receiver<Result<(), String>>>,
    shared: Arc<Shared>,
}

impl Pending {
    /// Waits for the commit, committing the queue on this thread if nobody else is.
    pub async fn wait(mut self) -> Result<(), StoreError> {
        let Some(rx) = self.rx.take() else { return Err(StoreError::WriterGone) };
        commit_queued(&self.shared, MAX_ROUNDS);
        Self::result(rx.await)
    }

    /// Waits for the commit, blocking the thread (never call it on an async worker).
    pub fn wait_blocking(mut self) -> Result<(), StoreError> {
        let Some(rx) = self.rx.take() else { return Err(StoreError::WriterGone) };
        commit_queued(&self.shared, MAX_ROUNDS);
        Self::result(rx.blocking_recv())
    }

    fn result(received: Result<Result<(), String>, oneshot::error::RecvError>) -> Result<(), StoreError> {
        match received {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Write(message)),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.rx.is_some() {
            // Nobody will wait for this write: the background thread commits it.
            lock(&self.shared.queue).handed_off = true;
            self.shared.background.notify_one();
        }
    }
}

/// Commits queued groups on this thread unless another thread is committing: at most
/// `rounds` groups, then what is left goes to the background thread.
fn commit_queued(shared: &Shared, rounds: usize) {
    let mut batch = {
        let mut queue = lock(&shared.queue);
        if queue.committing || queue.requests.is_empty() {
            return;
        }
        queue.committing = true;
        take_batch(&mut queue)
    };
    shared.space.notify_all();
    let mut round = 1;
    loop {
        commit(&mut lock(&shared.conn), batch);
        let mut queue = lock(&shared.queue);
        queue.since_checkpoint += 1;
        let first = *queue.first_since_checkpoint.get_or_insert_with(Instant::now);
        if queue.since_checkpoint >= CHECKPOINT_EVERY_COMMITS || first.elapsed() >= CHECKPOINT_AFTER {
            shared.background.notify_one();
        }
        if queue.requests.is_empty() {
            queue.committing = false;
            return;
        }
        if round >= rounds {
            queue.committing = false;
            queue.handed_off = true;
            shared.background.notify_one();
            return;
        }
        round += 1;
        batch = take_batch(&mut queue);
        drop(queue);
        shared.space.notify_all();
    }
}

fn take_batch(queue: &mut Queue) -> Vec<Request> {
    let n = queue.requests.len().min(MAX_BATCH);
    queue.requests.drain(..n).collect()
}

/// The background thread: commits what was handed to it, runs checkpoints, and drains the
/// queue once every handle is gone.
fn background(shared: &Shared, mut checkpointer: SqliteConnection) {
    loop {
        let (work, checkpoint, closed) = {
            let mut queue = lock(&shared.queue);
            loop {
                let work = queue.handed_off || (queue.closed && !queue.requests.is_empty());
                let due = queue.since_checkpoint >= CHECKPOINT_EVERY_COMMITS
                    || queue.first_since_checkpoint.is_some_and(|f| f.elapsed() >= CHECKPOINT_AFTER);
                if work || due || queue.closed {
                    queue.handed_off = false;
                    if due {
                        queue.since_checkpoint = 0;
                        queue.first_since_checkpoint = None;
                    }
                    break (work, due, queue.closed);
                }
                // Wake for a due checkpoint even if no commit rings.
                let timeout = queue.first_since_checkpoint.map_or(CHECKPOINT_AFTER, |f| {
                    CHECKPOINT_AFTER.saturating_sub(f.elapsed()) + Duration::from_millis(1)
                });
                queue = shared.background.wait_timeout(queue, timeout).unwrap_or_else(|e| e.into_inner()).0;
            }
        };
        if work {
            // If a waiter is committing, it sees what is queued when it is done, and commits
            // it or hands it back here.
            commit_queued(shared, usize::MAX);
        }
        if checkpoint {
            // PASSIVE: never blocks the writer or readers; what readers still use is copied
            // at a later checkpoint.
            if let Err(e) = checkpointer.batch_execute("PRAGMA wal_checkpoint(PASSIVE);") {
                warn!("WAL checkpoint failed: {e}");
            }
        }
        if closed && lock(&shared.queue).requests.is_empty() {
            return;
        }
    }
}

/// Commits one group and acknowledges each write.
fn commit(conn: &mut SqliteConnection, batch: Vec<Request>) {
    // A lone single-statement write commits on its own (SQLite's implicit transaction),
    // sparing the parse and execution of BEGIN and COMMIT.
    let grouped = match batch.as_slice() {
        [one] if one.op.is_one_statement() => apply(conn, &one.op),
        _ => conn.immediate_transaction(|c| batch.iter().try_for_each(|r| apply(c, &r.op))),
    };
    match grouped {
        Ok(()) => {
            for request in batch {
                acknowledge(request, Ok(()));
            }
        }
        // One bad write must not fail its neighbours: retry each on its own.
        Err(_) => {
            for request in batch {
                let result = conn.immediate_transaction(|c| apply(c, &request.op)).map_err(|e| format!("{e}"));
                acknowledge(request, result);
            }
        }
    }
}

fn acknowledge(request: Request, result: Result<(), String>) {
    if let Err(e) = &result {
        error!("database write failed ({}): {e}", describe(&request.op));
    }
    // The waiter may be gone (a write ordered and not awaited); the error is logged above.
    let _ = request.ack.send(result);
}

fn describe(op: &WriteOp) -> String {
    match op {
        WriteOp::InsertJob(row) => format!("insert job {}", row.id),
        WriteOp::UpdateJob(row) => format!("update job {}", row.id),
        WriteOp::Import { record, .. } => format!("import {}", record.source),
        WriteOp::InsertRun(row) => format!("insert run {}", row.id),
        WriteOp::UpdateRun(row) => format!("update run {}", row.id),
        WriteOp::InsertSteps(rows) => format!("insert {} journal entries", rows.len()),
        WriteOp::FinishStep(row) => format!("finish step {} of run {}", row.step_key, row.run_id),
        WriteOp::Flush => "flush".to_string(),
    }
}

fn apply(conn: &mut SqliteConnection, op: &WriteOp) -> QueryResult<()> {
    match op {
        WriteOp::InsertJob(row) => {
            diesel::insert_into(jobs::table).values(row.as_ref()).execute(conn)?;
        }
        WriteOp::UpdateJob(row) => {
            let n = diesel::update(jobs::table.filter(jobs::id.eq(&row.id))).set(row.as_ref()).execute(conn)?;
            if n == 0 {
                return Err(diesel::result::Error::NotFound);
            }
        }
        WriteOp::Import { rows, record } => {
            for row in rows {
                diesel::insert_or_ignore_into(jobs::table).values(row).execute(conn)?;
            }
            diesel::insert_or_ignore_into(imports::table).values(record).execute(conn)?;
        }
        WriteOp::InsertRun(row) => {
            diesel::insert_into(script_runs::table).values(row.as_ref()).execute(conn)?;
        }
        WriteOp::UpdateRun(row) => {
            let n = diesel::update(script_runs::table.filter(script_runs::id.eq(&row.id)))
                .set(row.as_ref())
                .execute(conn)?;
            if n == 0 {
                return Err(diesel::result::Error::NotFound);
            }
        }
        WriteOp::InsertSteps(rows) => {
            for row in rows {
                diesel::insert_or_ignore_into(script_run_journal::table).values(row).execute(conn)?;
            }
        }
        WriteOp::FinishStep(row) => {
            use script_run_journal::dsl as j;
            diesel::update(
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
        WriteOp::Flush => {}
    }
    Ok(())
}
