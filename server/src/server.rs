//! Starting and stopping the service: open storage, import, recover, bind, serve, drain.

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{middleware, App, HttpServer};
use anyhow::Context;
use log::info;

use crate::config::Config;
use crate::db::Store;
use crate::http::{self, AppState};
use crate::jobs::{import, recovery, JobManager};
use crate::process::supervisor;
use crate::runs::RunManager;

/// Runs the service until SIGTERM or SIGINT, then drains and returns.
///
/// Start-up order matters: migrations, the upstream import and crash recovery all finish
/// before the port is bound, so no request sees a half-recovered state. The bound address is
/// printed on stdout as `script-runner listening on http://ADDR` (useful with port 0).
///
/// A database that cannot be used at start (unreachable, refused, missing, too old) is an
/// error of one line naming the problem and the database (never its password). On PostgreSQL,
/// if the database's advisory lock is lost to another server while serving (see
/// [`crate::db::PgLock`]), the server stops as at SIGTERM and returns that as its error.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let lock = config.database.location.lock().map_err(anyhow::Error::msg)?;
    let lock_lost = lock.lost();
    // The error names the database (a SQLite path, a URL without its password) and the problem.
    let store = Store::open_sized(&config.database.location, config.database.pool_size)?;
    import::import_job_store(&config.runner.job_store_file, &store)?;

    let jobs = JobManager::new(Arc::clone(&config), store.clone())?;
    recovery::recover(&jobs)?;
    jobs.log_start();
    // After job recovery: it killed the processes of the executions a crash interrupted.
    let runs = RunManager::new(Arc::clone(&config), store.clone(), jobs.clone())?;

    let listener = TcpListener::bind((config.server.host.as_str(), config.server.port))
        .with_context(|| format!("cannot listen on {}:{}", config.server.host, config.server.port))?;
    let address = listener.local_addr()?;
    // Workflow processes call back on loopback when the server listens on every interface.
    let callback = if address.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), address.port())
    } else {
        address
    };
    runs.set_url(format!("http://{callback}"));
    println!("script-runner listening on http://{address}");
    std::io::stdout().flush()?;
    info!("listening on http://{address} with {} script(s)", config.scripts.len());

    let state = AppState { jobs: jobs.clone(), runs: runs.clone(), auth_token: config.server.auth_token.clone() };
    let stopped_for = Arc::new(std::sync::OnceLock::<String>::new());
    let stop_reason = Arc::clone(&stopped_for);
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let server = HttpServer::new(move || {
            // Without a token there is nothing to check: the middleware is not in the way.
            let auth = middleware::Condition::new(state.auth_token.is_some(), middleware::from_fn(http::authenticate));
            App::new().wrap(auth).configure(http::routes(state.clone()))
        })
        // Spawning blocks a worker until the child has exec'd (vfork), so two workers per
        // core keep requests and other jobs moving meanwhile (measured best on 2 cores).
        .workers(2 * std::thread::available_parallelism().map_or(1, |n| n.get()))
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)?
        .run();
        let handle = server.handle();
        // Jobs requeued by recovery start now, supervised on this (the main) runtime.
        jobs.dispatch();
        runs.resume_all();
        let grace = Duration::from_secs(config.runner.shutdown_grace_sec);
        actix_web::rt::spawn(async move {
            tokio::select! {
                () = wait_for_signal() => {}
                reason = lock_lost_to_another(lock_lost) => {
                    let _ = stop_reason.set(reason);
                }
            }
            info!("shutting down: no new runs; waiting up to {grace:?} for running jobs");
            // The HTTP workers keep serving reads (and supervising their jobs) meanwhile.
            // Workflow executions stop first (they stay running and resume at the next start);
            // the jobs their script steps started then drain like any other.
            runs.shutdown(supervisor::stop_bound(config.runner.kill_grace())).await;
            jobs.shutdown(grace).await;
            // Everything into the database file: the next start has no WAL to replay.
            store.writer().close();
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

/// Resolves with why the database lock was lost to another server; never, if it is not (or
/// cannot be: a SQLite file's lock).
async fn lock_lost_to_another(lost: Option<tokio::sync::watch::Receiver<Option<String>>>) -> String {
    if let Some(mut lost) = lost {
        if let Ok(reason) = lost.wait_for(Option::is_some).await {
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
