//! Starting and stopping the service: open storage, import, recover, bind, serve, drain.

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{middleware, App, HttpServer};
use anyhow::Context;
use log::info;

use crate::cluster::Node;
use crate::config::Config;
use crate::db::{Location, Store};
use crate::http::{self, AppState};
use crate::jobs::{import, recovery, JobManager};
use crate::process::supervisor;
use crate::runs::RunManager;

/// Runs the service until SIGTERM or SIGINT, then drains and returns.
///
/// Start-up order matters: migrations, the upstream import and crash recovery all finish
/// before requests are served (the port is bound before recovery, so a cluster node knows its
/// address, but nothing is accepted until it is done), so no request sees a half-recovered
/// state. The bound address is printed on stdout as `script-runner listening on http://ADDR`
/// (useful with port 0), followed by `server.basePath` when there is one.
///
/// A database that cannot be used at start (unreachable, refused, missing, too old) is an
/// error of one line naming the problem and the database (never its password). On PostgreSQL
/// the server is a node of a cluster ([`crate::cluster`]); a node that lost its lease (fenced)
/// kills its processes and returns that as its error at once, without draining.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // Before anything is counted (opening the store commits): the scripts' series exist from
    // the first count.
    crate::metrics::init(&config);
    // SQLite: one server per file (a lock file). PostgreSQL: every server is a node of a
    // cluster (see crate::cluster), with a lease instead of a lock.
    let clustered = matches!(config.database.location, Location::Postgres(_));
    let lock = if clustered { None } else { Some(config.database.location.lock().map_err(anyhow::Error::msg)?) };
    // The error names the database (a SQLite path, a URL without its password) and the problem.
    let store = Store::open_sized(&config.database.location, config.database.pool_size)?;
    import::import_job_store(&config.runner.job_store_file, &store)?;

    // Bound before joining a cluster (the node's default id and address are the bound ones);
    // requests wait in the backlog until recovery is done.
    let listener = TcpListener::bind((config.server.host.as_str(), config.server.port))
        .with_context(|| format!("cannot listen on {}:{}", config.server.host, config.server.port))?;
    let address = listener.local_addr()?;
    let node = if clustered { Some(Node::join(&config, &store, address)?) } else { None };
    let fenced = node.as_ref().map(Node::fenced);

    let jobs = JobManager::on_node(Arc::clone(&config), store.clone(), node.clone())?;
    // A node's recovery was done by joining: its previous run's jobs failed, its orphans killed.
    match &node {
        None => {
            recovery::recover(&jobs)?;
        }
        Some(node) => recovery::refresh_interrupted(&jobs, node.take_interrupted())?,
    }
    jobs.log_start();
    // After job recovery: it killed the processes of the executions a crash interrupted.
    let runs = RunManager::new(Arc::clone(&config), store.clone(), jobs.clone())?;

    // Workflow processes call back on loopback when the server listens on every interface.
    let callback = if address.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), address.port())
    } else {
        address
    };
    // Under `server.basePath`, like every route (resume URLs default to it too).
    runs.set_url(format!("http://{callback}{}", config.server.base_path));
    // Under `server.basePath`: the URL a client (and the test harness) starts from.
    let base_path = &config.server.base_path;
    println!("script-runner listening on http://{address}{base_path}");
    std::io::stdout().flush()?;
    info!(
        "listening on http://{address}{base_path} with {} script(s); the dashboard is at http://{address}{base_path}/ui/",
        config.scripts.len()
    );

    let streams = http::sse::Streams::new(config.server.max_streams, config.server.stream_heartbeat);
    let state = AppState {
        jobs: jobs.clone(),
        runs: runs.clone(),
        auth_token: config.server.auth_token.clone(),
        streams: streams.clone(),
        metrics_public: config.metrics.public,
        callbacks: config.callbacks.clone(),
        flows_dir: config.workflows.flows_dir.clone(),
        base_path: config.server.base_path.clone(),
    };
    let stopped_for = Arc::new(std::sync::OnceLock::<String>::new());
    let stop_reason = Arc::clone(&stopped_for);
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let server = HttpServer::new(move || {
            // Without a token there is nothing to check: the middleware is not in the way.
            let auth = middleware::Condition::new(state.auth_token.is_some(), middleware::from_fn(http::authenticate));
            // Outermost: every request is counted, a refused one too. Inside it, in order: the
            // path loses `server.basePath`, a cross-site change is refused, the token checked.
            App::new()
                .wrap(auth)
                .wrap(middleware::from_fn(http::refuse_cross_site))
                .wrap(middleware::from_fn(http::strip_base_path))
                .wrap(middleware::from_fn(http::observe))
                .configure(http::routes(state.clone()))
        })
        // Spawning blocks a worker until the child has exec'd (vfork), so two workers per
        // core keep requests and other jobs moving meanwhile (measured best on 2 cores).
        .workers(2 * std::thread::available_parallelism().map_or(1, |n| n.get()))
        .on_connect(http::sse::on_connect)
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)?
        .run();
        let handle = server.handle();
        // Jobs requeued by recovery start now, supervised on this (the main) runtime; a node
        // claims from the cluster's queue and takes free runs on it too.
        jobs.dispatch();
        runs.resume_all();
        jobs.start_claiming();
        runs.start_taking();
        // Completion callbacks: pending ones of a previous run resume now (on every node of a
        // cluster: they share the outbox). Not without a secret to sign them with.
        if config.callbacks.secret.is_some() {
            let body: crate::callbacks::Body = Arc::new(|owner| {
                let json = match owner {
                    crate::callbacks::Owner::Job(job) => serde_json::to_vec(&http::wire::job_view(job.clone())),
                    crate::callbacks::Owner::Run(run) => serde_json::to_vec(&crate::runs::view::run_view_of(run)),
                };
                json.unwrap_or_default()
            });
            let deliverer = crate::callbacks::Deliverer::new(store.clone(), config.callbacks.clone(), body);
            actix_web::rt::spawn(deliverer.run());
        }
        let grace = Duration::from_secs(config.runner.shutdown_grace_sec);
        actix_web::rt::spawn(async move {
            tokio::select! {
                () = wait_for_signal() => {}
                reason = fenced_for(fenced) => {
                    // Its processes are killed; nothing of it may be recorded any more.
                    let _ = stop_reason.set(format!("this node was fenced: {reason}"));
                    streams.shut_down();
                    handle.stop(false).await;
                    return;
                }
            }
            info!("shutting down: no new runs; waiting up to {grace:?} for running jobs");
            // Event streams end first: each would hold its connection (and the stop) open.
            streams.shut_down();
            let node = jobs.node().cloned();
            if let Some(node) = &node {
                let node = node.clone();
                let _ = crate::sync::blocking(move || node.drain()).await;
            }
            // The HTTP workers keep serving reads (and supervising their jobs) meanwhile.
            // Workflow executions stop first (they stay running and resume at the next start,
            // or on another node at once);
            // the jobs their script steps started then drain like any other.
            runs.shutdown(supervisor::stop_bound(config.runner.kill_grace())).await;
            if let Some(node) = &node {
                store.writer().write(crate::db::WriteOp::Flush).await.ok();
                let node = node.clone();
                let _ = crate::sync::blocking(move || node.release_runs()).await;
            }
            jobs.shutdown(grace).await;
            // Everything into the database file: the next start has no WAL to replay.
            store.writer().close();
            if let Some(node) = node {
                let _ = crate::sync::blocking(move || node.leave()).await;
            }
            handle.stop(true).await;
        });
        server.await
    })?;
    info!("stopped");
    drop(lock);
    match stopped_for.get() {
        Some(reason) => Err(anyhow::Error::msg(reason.clone())),
        None => Ok(()),
    }
}

/// Resolves with why this node was fenced; never, if it is not a node.
async fn fenced_for(fenced: Option<tokio::sync::watch::Receiver<Option<String>>>) -> String {
    if let Some(mut fenced) = fenced {
        if let Ok(reason) = fenced.wait_for(Option::is_some).await {
            return reason.clone().unwrap_or_default();
        }
    }
    std::future::pending().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        log::error!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
