//! What the bench binaries share: a `script-runner` server in a temporary folder, the scripts
//! it runs, and an HTTP client for it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Server {
    /// Writes `config.json` and `scripts.json` into `dir` and starts the `script-runner` binary
    /// built beside this one on them; returns once it has printed its address. The server runs
    /// on the database `database_url` names (given as `DATABASE_URL`, which wins over the
    /// config), or with `None` on its default (SQLite beside the config), any `DATABASE_URL` of
    /// the bench's own environment removed.
    pub fn start_on(dir: &Path, config: &Value, scripts: &Value, database_url: Option<&str>) -> Result<Server> {
        std::fs::write(dir.join("scripts.json"), serde_json::to_vec(scripts)?)?;
        std::fs::write(dir.join("config.json"), serde_json::to_vec(config)?)?;
        let exe = std::env::current_exe()?.with_file_name("script-runner");
        let mut command = Command::new(&exe);
        match database_url {
            Some(url) => command.env("DATABASE_URL", url),
            None => command.env_remove("DATABASE_URL"),
        };
        let mut child = command
            .args(["serve", "--config"])
            .arg(dir.join("config.json"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {} (build it with --release first)", exe.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let base = line.trim().strip_prefix("script-runner listening on ").context("no address line")?.to_string();
        Ok(Server { child, base })
    }

    /// The server's pid.
    #[allow(dead_code, reason = "bench-follow does not read the server's CPU")]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server with SIGTERM (it stops its jobs' processes as it shuts down), waiting
    /// up to `limit` for it to exit; then SIGKILL (when dropped).
    #[allow(dead_code, reason = "only bench-cluster stops its servers this way")]
    pub fn terminate(&mut self, limit: Duration) {
        let Ok(pid) = i32::try_from(self.child.id()) else { return };
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an executable script `name` into `dir`; returns its path.
pub fn write_script(dir: &Path, name: &str, body: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, body)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// An HTTP client for the server (long timeout: a request may wait for a whole job or run).
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(600)).max_idle_connections_per_host(64).build()
}
