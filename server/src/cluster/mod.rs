//! A cluster on PostgreSQL: every server on one PostgreSQL database is a *node*. PostgreSQL is
//! the only coordinator (row leases, `FOR UPDATE SKIP LOCKED`, `LISTEN/NOTIFY`, its clock);
//! there is no consensus of our own and no second service. The statements are in
//! [`crate::db::cluster`]; this module holds the rules and the threads:
//! - a node registers with a new *epoch* and renews its lease every `leaseSec / 3`
//!   ([`heartbeat`]); a lease it can no longer renew because another node declared it dead
//!   *fences* it: it kills its processes and stops (so does a commit the writer refused, see
//!   [`crate::db::Fence`]);
//! - every node sweeps ([`heartbeat`]): a node whose lease expired is declared dead, its running
//!   jobs end `failed` (never started twice), its runs are let go, and its processes on this
//!   machine are killed; a node only sweeps once it has held its own lease for a whole lease
//!   since it last lost the database, so an outage of the database itself declares nobody dead;
//! - a listener ([`listen`]) hears `NOTIFY`s: a job queued (claim), a cancel for a job this
//!   node runs, runs let go (take them); it also polls the cancel flags every second, so a
//!   missed notification delays a cancel by a second at most;
//! - [`peer`]: asking another node (a log page of a job it ran).

mod listen;
pub mod orphans;
pub mod peer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::db::cluster::{self as store, NodeKey, NodeRow};
use crate::db::{Fence, Location, Store, StoreError};
use crate::sync::lock;
use crate::time::now_ms;

/// Who acts on a notification for this node (set by the job and run services at start).
type Hook = Box<dyn Fn(&str) + Send + Sync>;

/// This server as a node of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    key: NodeKey,
    advertise: String,
    token: String,
    lease: Duration,
    store: Store,
    location: Location,
    /// `<deployment>#`: every process of a node of this cluster carries it, then its node id.
    marker_prefix: String,
    /// Rung when queued jobs may be waiting to be claimed.
    work: Notify,
    /// Queued jobs may be waiting (a notification or a poll said so, or the last claim took
    /// all it asked for); cleared before each claim. A freed slot rings the claimer only then,
    /// so a node running sync jobs does not query the queue at every job's end.
    maybe_work: AtomicBool,
    /// Rung when runs may be free to take.
    runs_free: Notify,
    /// Cancels a job this node runs, by id.
    cancel: Mutex<Option<Hook>>,
    /// Why this node was fenced, once it is.
    fenced: watch::Sender<Option<String>>,
    /// SIGTERM: claim nothing more.
    draining: AtomicBool,
    /// Jobs of this node's previous run that joining ended `failed` (their logs are here).
    interrupted: Mutex<Vec<String>>,
    /// The threads stop.
    stopping: AtomicBool,
}

impl Node {
    /// Joins the cluster on `store` (PostgreSQL): registers this node, takes over what a
    /// previous run under the same id left, kills what dead nodes left on this machine, fences
    /// the writer, and starts the heartbeat and listener threads. `listening` is the bound
    /// address (the default node id and advertised address come from it).
    pub fn join(config: &Config, store: &Store, listening: std::net::SocketAddr) -> Result<Node, StoreError> {
        let location = config.database.location.clone();
        let lease = Duration::from_secs(config.cluster.lease_sec);
        let reachable = if listening.ip().is_unspecified() {
            std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listening.port())
        } else {
            listening
        };
        // The other nodes call this one's routes, which are under `server.basePath`.
        let base_path = &config.server.base_path;
        let advertise = match &config.cluster.advertise {
            Some(address) if address.starts_with("http://") => {
                format!("{}{base_path}", address.trim_end_matches('/'))
            }
            Some(address) => format!("http://{address}{base_path}"),
            None => format!("http://{reachable}{base_path}"),
        };
        let id = match &config.cluster.node_id {
            Some(id) => id.clone(),
            None => {
                let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
                let host: String =
                    host.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).collect();
                format!("{}:{}", if host.is_empty() { "node" } else { &host }, listening.port())
            }
        };
        let pid = std::process::id() as i32;
        let me = store::Registration {
            token: random_token()?,
            capacity: i32::try_from(config.runner.max_concurrent).unwrap_or(i32::MAX),
            host: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default(),
            pid,
            start_ticks: crate::process::supervisor::start_ticks(pid).and_then(|t| i64::try_from(t).ok()).unwrap_or(0),
            id: id.clone(),
            advertise: advertise.clone(),
        };
        let mut conn = store::own_connection(&location)?;
        refuse_a_live_namesake(&mut conn, &me, lease)?;
        let (key, interrupted) = store::register(&mut conn, &me, lease, now_ms())?;
        let token = me.token;
        let failed = store::fail_legacy(&mut conn, &key, now_ms())?;
        // What a previous run under this id left (declared dead at registration) goes now.
        let reaped = store::reap(&mut conn, &key.id, now_ms(), false)?;
        let (fenced, _) = watch::channel(None);
        let node = Node {
            inner: Arc::new(Inner {
                marker_prefix: format!("{}#", store.deployment()),
                key,
                advertise,
                token,
                lease,
                store: store.clone(),
                location,
                work: Notify::new(),
                maybe_work: AtomicBool::new(true),
                runs_free: Notify::new(),
                cancel: Mutex::new(None),
                fenced,
                draining: AtomicBool::new(false),
                interrupted: Mutex::new(interrupted),
                stopping: AtomicBool::new(false),
            }),
        };
        let weak = Arc::downgrade(&node.inner);
        store.writer().set_fence(Fence {
            node: node.inner.key.id.clone(),
            epoch: node.inner.key.epoch,
            on_fenced: Box::new(move |why| {
                if let Some(inner) = weak.upgrade() {
                    Node { inner }.fence(why);
                }
            }),
        });
        // This node's previous run's processes carry its own marker, which is live again: at
        // start, they are orphans too.
        let killed = node.kill_orphans(&mut conn, true);
        info!(
            "cluster: joined as node {} (epoch {}), reachable at {}, lease {:?}",
            node.inner.key.id, node.inner.key.epoch, node.inner.advertise, lease
        );
        if failed > 0 || killed > 0 || reaped.as_ref().is_some_and(|r| !r.failed_jobs.is_empty() || r.freed_runs > 0) {
            let (jobs, runs) = reaped.map_or((0, 0), |r| (r.failed_jobs.len(), r.freed_runs));
            info!(
                "cluster: recovery: {} job(s) failed, {} run(s) let go, {} orphaned process(es) killed",
                failed + jobs,
                runs,
                killed
            );
        }
        let beating = node.clone();
        std::thread::Builder::new()
            .name("cluster-heartbeat".into())
            .spawn(move || heartbeat(&beating, conn))
            .map_err(|e| StoreError::Setup(format!("cannot start the heartbeat thread: {e}")))?;
        let listening = node.clone();
        std::thread::Builder::new()
            .name("cluster-listen".into())
            .spawn(move || listen::run(&listening))
            .map_err(|e| StoreError::Setup(format!("cannot start the listener thread: {e}")))?;
        Ok(node)
    }

    /// The jobs of this node's previous run that joining ended `failed` (once).
    pub fn take_interrupted(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.inner.interrupted))
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.inner.key.id
    }

    /// This node's id and epoch.
    pub fn key(&self) -> &NodeKey {
        &self.inner.key
    }

    /// The lease.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// The marker this node's processes carry ([`crate::process::supervisor::DEPLOYMENT_ENV`]):
    /// the deployment's, then `#` and the node id, so a node's orphans are told from another
    /// live node's processes on the same machine.
    pub fn marker(&self) -> Arc<str> {
        format!("{}{}", self.inner.marker_prefix, self.inner.key.id).into()
    }

    /// The secret other nodes present on this node's internal routes.
    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// Rung when queued jobs may be waiting (a notification, a poll).
    pub fn work(&self) -> &Notify {
        &self.inner.work
    }

    /// Queued jobs may be waiting: rings the claimer.
    pub fn note_work(&self) {
        self.inner.maybe_work.store(true, Ordering::Release);
        self.inner.work.notify_one();
    }

    /// Marks that queued jobs may be waiting without ringing the claimer now: a claim passed
    /// over the jobs of a script at its `concurrency` here, so the next freed slot rings it.
    pub fn mark_work(&self) {
        self.inner.maybe_work.store(true, Ordering::Release);
    }

    /// Rings the claimer if queued jobs may be waiting (a slot was freed).
    pub fn wake_claimer_if_work(&self) {
        if self.inner.maybe_work.load(Ordering::Acquire) {
            self.inner.work.notify_one();
        }
    }

    /// Clears the mark of [`Node::note_work`] (before a claim).
    pub fn take_work(&self) {
        self.inner.maybe_work.store(false, Ordering::Release);
    }

    /// Rung when runs may be free to take.
    pub fn runs_free(&self) -> &Notify {
        &self.inner.runs_free
    }

    /// Sets who cancels a job this node runs when a cancel is asked elsewhere.
    pub fn on_cancel(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        *lock(&self.inner.cancel) = Some(Box::new(hook));
    }

    /// Resolves with why this node was fenced.
    pub fn fenced(&self) -> watch::Receiver<Option<String>> {
        self.inner.fenced.subscribe()
    }

    /// Whether this node is draining (it claims nothing more).
    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Claims up to `n` queued async jobs (blocking), of each script in `room` (a script with
    /// a `concurrency`, and how many more of its jobs may run here) no more than its room.
    pub fn claim_jobs(&self, n: usize, room: &[(String, usize)]) -> Result<Vec<crate::jobs::model::Job>, StoreError> {
        if self.draining() || n == 0 {
            return Ok(Vec::new());
        }
        self.inner.store.claim_jobs(&self.inner.key, n, room, now_ms())
    }

    /// Takes up to `n` runs no node holds (blocking).
    pub fn claim_runs(&self, n: usize) -> Result<Vec<crate::runs::model::Run>, StoreError> {
        if self.draining() {
            return Ok(Vec::new());
        }
        self.inner.store.claim_runs(&self.inner.key, n)
    }

    /// A cancel of a job this node does not hold (blocking).
    pub fn ask_cancel(&self, id: &str) -> Result<store::CancelAsked, StoreError> {
        self.inner.store.ask_cancel(&self.inner.key, id, now_ms())
    }

    /// Every node of the cluster (blocking).
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        self.inner.store.nodes()
    }

    /// One node (blocking).
    pub fn node(&self, id: &str) -> Result<Option<NodeRow>, StoreError> {
        self.inner.store.node(id)
    }

    /// SIGTERM, first step: claims nothing more (its row says `draining`).
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.with_own_connection("drain", |conn| store::set_state(conn, &self.inner.key, "draining").map(drop));
    }

    /// SIGTERM, once the run executions stopped: lets go of this node's runs, so a live node
    /// resumes them at once (blocking).
    pub fn release_runs(&self) {
        match self.inner.store.release_runs(&self.inner.key) {
            Ok(0) => {}
            Ok(n) => info!("cluster: handed {n} run(s) over to the other nodes"),
            Err(e) => warn!("cluster: cannot hand the runs over (they are taken once this node's lease expires): {e}"),
        }
    }

    /// SIGTERM, last step: this node is `stopped`; its threads end.
    pub fn leave(&self) {
        self.with_own_connection("leave", |conn| store::set_state(conn, &self.inner.key, "stopped").map(drop));
        self.inner.stopping.store(true, Ordering::Release);
    }

    fn with_own_connection(&self, what: &str, f: impl FnOnce(&mut diesel::PgConnection) -> diesel::QueryResult<()>) {
        let result = store::own_connection(&self.inner.location).and_then(|mut conn| Ok(f(&mut conn)?));
        if let Err(e) = result {
            warn!("cluster: {what}: {e}");
        }
    }

    /// This node lost its lease: it must not run anything more. Its processes are killed at
    /// once (another node may already have failed their jobs and resumed their runs), and the
    /// server stops.
    fn fence(&self, why: &str) {
        if self.inner.fenced.borrow().is_some() {
            return;
        }
        error!("cluster: node {} fenced: {why}; killing its processes and stopping", self.inner.key.id);
        self.inner.draining.store(true, Ordering::Release);
        self.inner.stopping.store(true, Ordering::Release);
        let killed = orphans::kill_marked(|marker| marker == &*self.marker());
        if killed > 0 {
            info!("cluster: killed {killed} process(es) of this fenced node");
        }
        self.inner.fenced.send_replace(Some(why.to_string()));
    }

    /// Kills this machine's processes of nodes of this cluster that are not live, and with
    /// `mine` this node's own (at start, before it has run anything: its previous run's); the
    /// number killed. One pass over the processes.
    fn kill_orphans(&self, conn: &mut diesel::PgConnection, mine: bool) -> usize {
        let live = match store::live_nodes(conn) {
            Ok(live) => live,
            Err(e) => {
                warn!("cluster: cannot list the live nodes to find orphaned processes: {e}");
                return 0;
            }
        };
        let (prefix, me) = (&self.inner.marker_prefix, self.id());
        orphans::kill_marked(|marker| {
            marker
                .strip_prefix(prefix.as_str())
                .is_some_and(|node| (mine && node == me) || !live.iter().any(|id| id == node))
        })
    }
}

/// Refuses to start under an id a live node holds (two nodes under one id would take each
/// other's work for a crashed run's). A holder on this machine is live if its process is (same
/// pid and start time); on another machine, if its heartbeat moves within a third of the lease.
/// A holder that is not live crashed: this start takes over what it left.
fn refuse_a_live_namesake(
    conn: &mut diesel::PgConnection,
    me: &store::Registration,
    lease: Duration,
) -> Result<(), StoreError> {
    let Some(holder) = store::holder(conn, &me.id)? else { return Ok(()) };
    let live = if holder.host == me.host {
        let ticks = crate::process::supervisor::start_ticks(holder.pid).and_then(|t| i64::try_from(t).ok());
        holder.pid != me.pid && ticks == Some(holder.proc_start_ticks)
    } else {
        std::thread::sleep(lease / 3 + Duration::from_millis(500));
        store::holder(conn, &me.id)?.is_some_and(|now| now.heartbeat_at != holder.heartbeat_at)
    };
    if live {
        return Err(StoreError::Setup(format!(
            "node id {} is in use by a live node (pid {} on {}, at {}): give each node its own cluster.nodeId",
            me.id, holder.pid, holder.host, holder.advertise
        )));
    }
    Ok(())
}

/// A random secret, hex.
fn random_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Setup(format!("randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The heartbeat thread: renews the lease every `lease / 3` and sweeps (see the module doc).
fn heartbeat(node: &Node, conn: diesel::PgConnection) {
    let inner = &node.inner;
    let period = (inner.lease / 3).max(Duration::from_millis(200));
    let mut conn = Some(conn);
    // Since when this node has held its lease without losing the database.
    let mut holding_since = Some(Instant::now());
    let mut last_complaint: Option<Instant> = None;
    while !inner.stopping.load(Ordering::Acquire) {
        std::thread::sleep(period);
        if inner.stopping.load(Ordering::Acquire) {
            return;
        }
        let connection = match conn.as_mut() {
            Some(c) => c,
            None => match store::own_connection(&inner.location) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    holding_since = None;
                    complain(&mut last_complaint, &format!("cannot reach the database to renew the lease: {e}"));
                    continue;
                }
            },
        };
        match store::heartbeat(connection, &inner.key, inner.lease) {
            Ok(true) => {
                holding_since.get_or_insert_with(Instant::now);
            }
            Ok(false) => {
                node.fence("another node declared this node dead (its lease expired)");
                return;
            }
            Err(e) => {
                holding_since = None;
                conn = None;
                complain(&mut last_complaint, &format!("cannot renew the lease: {e}"));
                continue;
            }
        }
        if holding_since.is_some_and(|since| since.elapsed() >= inner.lease) {
            let Some(connection) = conn.as_mut() else { continue };
            match store::reap(connection, &inner.key.id, now_ms(), true) {
                Ok(Some(reaped)) => {
                    if !reaped.dead.is_empty() {
                        warn!("cluster: declared dead (lease expired): {}", reaped.dead.join(", "));
                    }
                    if !reaped.failed_jobs.is_empty() {
                        warn!(
                            "cluster: {} job(s) of lost nodes ended failed: {}",
                            reaped.failed_jobs.len(),
                            reaped.failed_jobs.join(", ")
                        );
                    }
                    if reaped.freed_runs > 0 {
                        info!("cluster: {} run(s) of lost nodes are free to resume", reaped.freed_runs);
                        inner.runs_free.notify_one();
                    }
                    if !reaped.dead.is_empty() {
                        let killed = node.kill_orphans(connection, false);
                        if killed > 0 {
                            info!("cluster: killed {killed} process(es) left by lost nodes on this machine");
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => complain(&mut last_complaint, &format!("sweep failed: {e}")),
            }
        }
    }
}

/// Logs a problem at most every 30 s.
fn complain(last: &mut Option<Instant>, message: &str) {
    if last.map_or(true, |at| at.elapsed() >= Duration::from_secs(30)) {
        warn!("cluster: {message}");
        *last = Some(Instant::now());
    }
}
