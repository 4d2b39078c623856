//! The single database writer: a thread that commits queued writes in groups.
//!
//! Callers order a write ([`Writer::enqueue`]) and wait for its commit when they need it
//! ([`Pending`]); writes are applied in the order they were sent, so a later write's commit
//! also means every earlier one is committed. A write nobody waits for still reports a
//! failure: its error is logged.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use diesel::prelude::*;
use log::error;
use tokio::sync::oneshot;

use super::models::{JobRow, NewImport, RunRow, StepRow};
use super::schema::{imports, jobs, script_run_journal, script_runs};
use super::StoreError;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Writes that may wait for the writer before senders block (backpressure, bounded memory).
const QUEUE_DEPTH: usize = 16 * 1024;

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

/// Handle to the writer thread; cheap to clone. The thread stops when every handle is dropped.
#[derive(Clone)]
pub struct Writer {
    tx: SyncSender<Request>,
}

impl Writer {
    /// Starts the writer thread on its own connection.
    pub fn start(conn: SqliteConnection) -> std::io::Result<Writer> {
        let (tx, rx) = sync_channel(QUEUE_DEPTH);
        std::thread::Builder::new().name("db-writer".into()).spawn(move || run(conn, rx))?;
        Ok(Writer { tx })
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
    /// releasing a lock under which the order of writes was decided).
    pub fn enqueue(&self, op: WriteOp) -> Result<Pending, StoreError> {
        let (ack, rx) = oneshot::channel();
        self.send(Request { op, ack })?;
        Ok(Pending(rx))
    }

    fn send(&self, request: Request) -> Result<(), StoreError> {
        match self.tx.try_send(request) {
            Ok(()) => Ok(()),
            // Full: block this thread until the writer catches up (bounded queue).
            Err(TrySendError::Full(request)) => self.tx.send(request).map_err(|_| StoreError::WriterGone),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::WriterGone),
        }
    }
}

/// A write that was ordered; its commit can be awaited.
pub struct Pending(oneshot::Receiver<Result<(), String>>);

impl Pending {
    /// Waits for the commit.
    pub async fn wait(self) -> Result<(), StoreError> {
        Self::result(self.0.await)
    }

    /// Waits for the commit, blocking the thread (never call it on an async worker).
    pub fn wait_blocking(self) -> Result<(), StoreError> {
        Self::result(self.0.blocking_recv())
    }

    fn result(received: Result<Result<(), String>, oneshot::error::RecvError>) -> Result<(), StoreError> {
        match received {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Write(message)),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

fn run(mut conn: SqliteConnection, rx: Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        // A lone single-statement write commits on its own (SQLite's implicit transaction),
        // sparing the parse and execution of BEGIN and COMMIT.
        let grouped = match batch.as_slice() {
            [one] if one.op.is_one_statement() => apply(&mut conn, &one.op),
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
